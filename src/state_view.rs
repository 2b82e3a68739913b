//! The node's state as a person debugging it wants to see it: `/debug/state` (JSON) and
//! `weftd status` (a table of the same). Per peer: the kernel entries weft wants for it,
//! what the last reconcile pass found, and a verdict.
//!
//! ## Verdicts
//! - `ok`: every entry was in the kernel as desired at the last pass;
//! - `repaired`: as `ok`, but weft re-installed an entry within the last
//!   [`REPAIRED_SHOWN_FOR`] (the entry says when, and what it had found);
//! - `pending`: wanted since the last pass (a lease just arrived or changed);
//! - `missing`: a change failed (the entry carries the error; the next pass retries);
//! - `withdrawn`: a foreign route holds the prefix, and weft never replaces it;
//! - `skipped`: the backend cannot program the peer (the reason is given);
//! - `rejected`: the peer's lease broke an admission rule (the rule is given).
//!
//! ## Bounded
//! The state is computed by the node's event loop when asked (no copy is kept between
//! requests), one request at a time: the health server hands a request over a channel of
//! one slot and answers 503 when it is taken. Answers are pages: `offset` (default 0),
//! `limit` (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]) and `only=problems` (peers
//! whose verdict is not `ok`); the summary always counts every peer.

use serde_json::{Value, json};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot};
use weft_backend::reconcile::drift::EntryState;
pub use weft_backend::reconcile::view::{EntryView, PeerView, REPAIRED_SHOWN_FOR, Verdict};
use weft_subnet::SubnetKey;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;
/// How long the health server waits for the event loop's answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// What `/debug/state` was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateQuery {
    pub offset: usize,
    pub limit: usize,
    pub problems_only: bool,
}

impl Default for StateQuery {
    fn default() -> Self {
        StateQuery {
            offset: 0,
            limit: DEFAULT_LIMIT,
            problems_only: false,
        }
    }
}

impl StateQuery {
    /// Parses `offset=N&limit=N&only=problems|all`; unknown keys are refused.
    pub fn parse(query: Option<&str>) -> Result<StateQuery, String> {
        let mut q = StateQuery::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || {
                value
                    .parse::<usize>()
                    .map_err(|_| format!("{key}={value}: not a number"))
            };
            match key {
                "offset" => q.offset = number()?,
                "limit" => q.limit = number()?.clamp(1, MAX_LIMIT),
                "only" => {
                    q.problems_only = match value {
                        "problems" => true,
                        "all" => false,
                        _ => return Err(format!("only={value}: expected problems or all")),
                    }
                }
                _ => {
                    return Err(format!(
                        "unknown parameter {key:?} (offset, limit, only=problems)"
                    ));
                }
            }
        }
        Ok(q)
    }

    pub fn matches(&self, verdict: Verdict) -> bool {
        !self.problems_only || verdict != Verdict::Ok
    }
}

/// This node, for the head of the view.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub subnet: SubnetKey,
    pub backend: String,
    pub subnet_manager: String,
    pub lease_expires: Option<SystemTime>,
    pub ready: Result<(), String>,
    pub last_pass: Option<LastPass>,
}

/// The last reconcile pass.
#[derive(Debug, Clone, PartialEq)]
pub struct LastPass {
    pub at: SystemTime,
    pub trigger: &'static str,
    pub changes: u64,
    pub failed: u64,
    pub duration: Duration,
}

/// A page of the view, as computed by the event loop.
#[derive(Debug, Clone, PartialEq)]
pub struct StateView {
    pub node: NodeView,
    /// Every peer's verdict, counted.
    pub summary: Vec<(Verdict, usize)>,
    pub query: StateQuery,
    /// Peers matching the query (all pages).
    pub matching: usize,
    pub peers: Vec<PeerView>,
}

/// A subnet key as a person writes it: `10.244.1.0/24`, or `10.244.1.0/24,fc00::/64`.
pub fn subnet_text(key: &SubnetKey) -> String {
    [key.ipv4, key.ipv6]
        .into_iter()
        .flatten()
        .map(|net| net.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn timestamp(at: SystemTime) -> Value {
    let seconds = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match k8s_openapi::jiff::Timestamp::from_second(seconds as i64) {
        Ok(t) => Value::String(t.to_string()),
        Err(_) => Value::Null,
    }
}

fn ago(at: SystemTime, now: SystemTime) -> u64 {
    now.duration_since(at).unwrap_or_default().as_secs()
}

fn entry_json(e: &EntryView, now: SystemTime) -> Value {
    let mut v = json!({
        "kind": e.kind.label(),
        "desired": e.desired,
    });
    let fields: Vec<(&str, Value)> = match (&e.state, &e.withdrawn_by) {
        (_, Some(foreign)) => vec![
            ("state", "withdrawn".into()),
            ("observed", foreign.as_str().into()),
        ],
        (EntryState::Ok, _) => vec![
            ("state", "ok".into()),
            ("observed", e.desired.clone().into()),
        ],
        (EntryState::Repaired { at, found }, _) => vec![
            ("state", "repaired".into()),
            ("observed", e.desired.clone().into()),
            ("repaired_at", timestamp(*at)),
            ("repaired_seconds_ago", ago(*at, now).into()),
            ("found_before_repair", found.as_str().into()),
        ],
        (EntryState::Missing { at, found, error }, _) => vec![
            ("state", "missing".into()),
            ("observed", found.as_str().into()),
            ("failed_at", timestamp(*at)),
            ("error", error.as_str().into()),
        ],
        (EntryState::Pending, _) => vec![("state", "pending".into()), ("observed", Value::Null)],
    };
    for (key, value) in fields {
        v[key] = value;
    }
    v
}

/// The JSON of `/debug/state`.
pub fn render_json(view: &StateView, now: SystemTime) -> Value {
    let node = &view.node;
    let last_pass = node.last_pass.as_ref().map(|p| {
        json!({
            "at": timestamp(p.at),
            "seconds_ago": ago(p.at, now),
            "trigger": p.trigger,
            "changes": p.changes,
            "failed_changes": p.failed,
            "duration_ms": (p.duration.as_secs_f64() * 1e3 * 10.0).round() / 10.0,
        })
    });
    let mut summary = serde_json::Map::new();
    summary.insert(
        "peers".into(),
        view.summary.iter().map(|(_, n)| n).sum::<usize>().into(),
    );
    for verdict in Verdict::ALL {
        let n = view
            .summary
            .iter()
            .find(|(v, _)| *v == verdict)
            .map_or(0, |(_, n)| *n);
        summary.insert(verdict.label().into(), n.into());
    }
    let end = view.query.offset + view.peers.len();
    let peers: Vec<Value> = view
        .peers
        .iter()
        .map(|p| {
            json!({
                "subnet": subnet_text(&p.key),
                "public_ip": p.public_ip,
                "backend_type": p.backend_type,
                "verdict": p.verdict.label(),
                "why": p.why,
                "last_repair_at": p.last_repair.map_or(Value::Null, timestamp),
                "entries": p.entries.iter().map(|e| entry_json(e, now)).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "node": {
            "subnet": subnet_text(&node.subnet),
            "backend": node.backend,
            "subnet_manager": node.subnet_manager,
            "lease_expires_at": node.lease_expires.map_or(Value::Null, timestamp),
            "ready": node.ready.is_ok(),
            "not_ready_reason": node.ready.as_ref().err(),
        },
        "last_pass": last_pass,
        "summary": summary,
        "page": {
            "offset": view.query.offset,
            "limit": view.query.limit,
            "only": if view.query.problems_only { "problems" } else { "all" },
            "matching": view.matching,
            "returned": view.peers.len(),
            "next_offset": if end < view.matching { Value::from(end) } else { Value::Null },
        },
        "peers": peers,
    })
}

/// The JSON of `/debug/state` before the node holds a subnet.
pub fn starting_json(ready: &Result<(), String>) -> Value {
    json!({
        "node": null,
        "starting": true,
        "not_ready_reason": ready.as_ref().err(),
        "peers": [],
    })
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn number(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// One entry in the table: `route ok`, `route repaired 12s ago (found: missing)`, ...
fn entry_cell(e: &Value) -> String {
    let kind = text(e, "kind");
    match text(e, "state") {
        "repaired" => format!(
            "{kind} repaired {}s ago (found: {})",
            number(e, "repaired_seconds_ago"),
            text(e, "found_before_repair")
        ),
        "missing" => format!("{kind} missing: {}", text(e, "error")),
        "withdrawn" => format!("{kind} withdrawn (foreign: {})", text(e, "observed")),
        state => format!("{kind} {state}"),
    }
}

/// The table `weftd status` prints for a `/debug/state` answer.
pub fn status_table(state: &Value) -> String {
    let mut out = String::new();
    let node = &state["node"];
    if node.is_null() {
        let reason = text(state, "not_ready_reason");
        let _ = writeln!(out, "weftd is starting: {reason}");
        return out;
    }
    let ready = if node["ready"].as_bool() == Some(true) {
        "ready".to_string()
    } else {
        format!("NOT READY: {}", text(node, "not_ready_reason"))
    };
    let _ = write!(
        out,
        "node {} ({}, {}): {ready}",
        text(node, "subnet"),
        text(node, "backend"),
        text(node, "subnet_manager")
    );
    if let Some(expires) = node["lease_expires_at"].as_str() {
        let _ = write!(out, "; lease expires {expires}");
    }
    out.push('\n');
    let pass = &state["last_pass"];
    if pass.is_null() {
        out.push_str("no reconcile pass yet\n");
    } else {
        let _ = writeln!(
            out,
            "last pass {}s ago ({}): {} changes, {} failed, {} ms",
            number(pass, "seconds_ago"),
            text(pass, "trigger"),
            number(pass, "changes"),
            number(pass, "failed_changes"),
            pass["duration_ms"].as_f64().unwrap_or(0.0)
        );
    }
    let summary = &state["summary"];
    let counts: Vec<String> = Verdict::ALL
        .iter()
        .map(|v| format!("{} {}", v.label(), number(summary, v.label())))
        .collect();
    let _ = writeln!(
        out,
        "peers: {} ({})",
        number(summary, "peers"),
        counts.join(", ")
    );
    let rows: Vec<[String; 4]> = state["peers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let mut detail: Vec<String> = p["why"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect();
            detail.extend(
                p["entries"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(entry_cell),
            );
            [
                text(p, "subnet").to_string(),
                text(p, "public_ip").to_string(),
                text(p, "verdict").to_string(),
                detail.join("; "),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("no peers to show\n");
    } else {
        let header = ["SUBNET", "PUBLIC IP", "VERDICT", "DETAIL"].map(String::from);
        let widths: Vec<usize> = (0..3)
            .map(|i| {
                rows.iter()
                    .chain([&header])
                    .map(|r| r[i].len())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in [&header].into_iter().chain(&rows) {
            let _ = writeln!(
                out,
                "{:w0$}  {:w1$}  {:w2$}  {}",
                row[0],
                row[1],
                row[2],
                row[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            );
        }
    }
    let page = &state["page"];
    let offset = number(page, "offset");
    let returned = number(page, "returned");
    let matching = number(page, "matching");
    if returned > 0 {
        let _ = write!(
            out,
            "showing {}-{} of {matching}",
            offset + 1,
            offset + returned
        );
        if text(page, "only") == "problems" {
            out.push_str(" peers with problems");
        }
        if let Some(next) = page["next_offset"].as_u64() {
            let _ = write!(out, "; next page: --offset={next}");
        }
        out.push('\n');
    }
    out
}

/// A `/debug/state` request handed to the event loop.
#[derive(Debug)]
pub struct StateRequest {
    pub query: StateQuery,
    pub reply: oneshot::Sender<Value>,
}

/// The health server's side of the channel.
#[derive(Debug, Clone)]
pub struct StateClient {
    requests: mpsc::Sender<StateRequest>,
    serving: Arc<AtomicBool>,
}

/// The event loop's side: requests, and whether a node holds a subnet yet.
#[derive(Debug)]
pub struct StateInbox {
    pub requests: mpsc::Receiver<StateRequest>,
    serving: Arc<AtomicBool>,
}

impl StateInbox {
    /// The node holds a subnet: requests are answered from now on.
    pub fn start_serving(&self) {
        self.serving.store(true, Ordering::Relaxed);
    }
}

/// One request at a time (see the module docs).
pub fn channel() -> (StateClient, StateInbox) {
    let (tx, rx) = mpsc::channel(1);
    let serving = Arc::new(AtomicBool::new(false));
    (
        StateClient {
            requests: tx,
            serving: serving.clone(),
        },
        StateInbox {
            requests: rx,
            serving,
        },
    )
}

/// Why the health server could not get the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// No subnet yet: nothing to show but the readiness reason.
    Starting,
    /// Another request is being answered, or the loop did not answer in time.
    Busy,
}

impl StateClient {
    /// Asks the event loop for a page of the state.
    pub async fn ask(&self, query: StateQuery) -> Result<Value, Unavailable> {
        if !self.serving.load(Ordering::Relaxed) {
            return Err(Unavailable::Starting);
        }
        let (reply, answer) = oneshot::channel();
        self.requests
            .try_send(StateRequest { query, reply })
            .map_err(|_| Unavailable::Busy)?;
        match tokio::time::timeout(ANSWER_WITHIN, answer).await {
            Ok(Ok(value)) => Ok(value),
            _ => Err(Unavailable::Busy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_backend::reconcile::drift::ChangeKind;

    const NOW: SystemTime = SystemTime::UNIX_EPOCH;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn entry(kind: ChangeKind, desired: &str, state: EntryState) -> EntryView {
        EntryView {
            kind,
            desired: desired.into(),
            state,
            withdrawn_by: None,
        }
    }

    fn peer(key: &str, verdict: Verdict, entries: Vec<EntryView>, why: &[&str]) -> PeerView {
        PeerView {
            key: SubnetKey::parse(key).unwrap(),
            public_ip: "198.18.0.12".into(),
            backend_type: "vxlan".into(),
            verdict,
            why: why.iter().map(|s| s.to_string()).collect(),
            entries,
            last_repair: None,
        }
    }

    fn view(peers: Vec<PeerView>, query: StateQuery, matching: usize) -> StateView {
        StateView {
            node: NodeView {
                subnet: SubnetKey::parse("10.244.1.0-24").unwrap(),
                backend: "vxlan".into(),
                subnet_manager: "etcd".into(),
                lease_expires: Some(at(86_400)),
                ready: Ok(()),
                last_pass: Some(LastPass {
                    at: at(1000),
                    trigger: "kernel_event",
                    changes: 1,
                    failed: 0,
                    duration: Duration::from_micros(1234),
                }),
            },
            summary: vec![
                (Verdict::Ok, 1),
                (Verdict::Repaired, 1),
                (Verdict::Missing, 1),
                (Verdict::Skipped, 1),
            ],
            query,
            matching,
            peers,
        }
    }

    #[test]
    fn queries_are_bounded_and_strict() {
        assert_eq!(StateQuery::parse(None), Ok(StateQuery::default()));
        let q = StateQuery::parse(Some("offset=200&limit=50000&only=problems")).unwrap();
        assert_eq!((q.offset, q.limit, q.problems_only), (200, MAX_LIMIT, true));
        assert_eq!(StateQuery::parse(Some("limit=0")).unwrap().limit, 1);
        assert!(StateQuery::parse(Some("limit=ten")).is_err());
        assert!(StateQuery::parse(Some("only=some")).is_err());
        assert!(StateQuery::parse(Some("peer=10.0.0.0")).is_err());
        assert!(q.matches(Verdict::Skipped) && !q.matches(Verdict::Ok));
    }

    fn sample() -> StateView {
        let repaired = peer(
            "10.244.2.0-24",
            Verdict::Repaired,
            vec![
                entry(
                    ChangeKind::Route,
                    "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink",
                    EntryState::Repaired {
                        at: at(1000),
                        found: "missing".into(),
                    },
                ),
                entry(
                    ChangeKind::Neighbour,
                    "10.244.2.0 lladdr 02:00:00:00:00:02 dev flannel.1",
                    EntryState::Ok,
                ),
            ],
            &[],
        );
        let skipped = peer(
            "10.244.3.0-24",
            Verdict::Skipped,
            vec![],
            &["its backend type is \"host-gw\", not \"vxlan\""],
        );
        let query = StateQuery {
            offset: 1,
            limit: 2,
            problems_only: false,
        };
        view(vec![repaired, skipped], query, 4)
    }

    #[test]
    fn the_json_names_every_entry_with_its_state_and_pages_onwards() {
        let json = render_json(&sample(), at(1012));
        assert_eq!(json["node"]["subnet"], "10.244.1.0/24");
        assert_eq!(json["node"]["lease_expires_at"], "1970-01-02T00:00:00Z");
        assert_eq!(json["node"]["ready"], true);
        assert_eq!(json["last_pass"]["trigger"], "kernel_event");
        assert_eq!(json["last_pass"]["duration_ms"], 1.2);
        assert_eq!(json["summary"]["peers"], 4);
        assert_eq!(json["summary"]["repaired"], 1);
        assert_eq!(json["summary"]["missing"], 1);
        assert_eq!(json["page"]["next_offset"], 3);
        let route = &json["peers"][0]["entries"][0];
        assert_eq!(route["kind"], "route");
        assert_eq!(route["state"], "repaired");
        assert_eq!(route["repaired_seconds_ago"], 12);
        assert_eq!(route["found_before_repair"], "missing");
        assert_eq!(route["observed"], route["desired"]);
        assert_eq!(json["peers"][1]["verdict"], "skipped");
        assert_eq!(
            json["peers"][1]["why"][0],
            "its backend type is \"host-gw\", not \"vxlan\""
        );
        // The last page has no next offset.
        let mut last = sample();
        last.matching = 3;
        assert_eq!(render_json(&last, NOW)["page"]["next_offset"], Value::Null);
    }

    #[test]
    fn the_table_has_one_row_per_peer_with_its_verdict_and_entries() {
        let table = status_table(&render_json(&sample(), at(1012)));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "node 10.244.1.0/24 (vxlan, etcd): ready; lease expires 1970-01-02T00:00:00Z"
        );
        assert_eq!(
            lines[1],
            "last pass 12s ago (kernel_event): 1 changes, 0 failed, 1.2 ms"
        );
        assert_eq!(
            lines[2],
            "peers: 4 (ok 1, repaired 1, pending 0, withdrawn 0, missing 1, skipped 1, rejected 0)"
        );
        assert_eq!(lines[3], "SUBNET         PUBLIC IP    VERDICT   DETAIL");
        assert_eq!(
            lines[4],
            "10.244.2.0/24  198.18.0.12  repaired  route repaired 12s ago (found: missing); \
             neighbour ok"
        );
        assert_eq!(
            lines[5],
            "10.244.3.0/24  198.18.0.12  skipped   its backend type is \"host-gw\", not \"vxlan\""
        );
        assert_eq!(lines[6], "showing 2-3 of 4; next page: --offset=3");
        assert_eq!(lines.len(), 7);
    }

    #[test]
    fn a_starting_node_says_why_it_has_nothing_to_show() {
        let json = starting_json(&Err("no subnet lease yet".into()));
        assert_eq!(
            status_table(&json),
            "weftd is starting: no subnet lease yet\n"
        );
    }

    #[tokio::test]
    async fn one_request_at_a_time_and_none_before_a_subnet_is_held() {
        let (client, mut inbox) = channel();
        assert_eq!(
            client.ask(StateQuery::default()).await,
            Err(Unavailable::Starting)
        );
        inbox.start_serving();
        let asking = tokio::spawn({
            let client = client.clone();
            async move { client.ask(StateQuery::default()).await }
        });
        let request = inbox.requests.recv().await.unwrap();
        // The slot is free again once taken; a request waiting in it makes others busy.
        let (reply, _answer) = oneshot::channel();
        let parked = StateRequest {
            query: StateQuery::default(),
            reply,
        };
        client.requests.try_send(parked).unwrap();
        assert_eq!(
            client.ask(StateQuery::default()).await,
            Err(Unavailable::Busy)
        );
        request.reply.send(json!({"peers": []})).unwrap();
        assert_eq!(asking.await.unwrap(), Ok(json!({"peers": []})));
    }
}
