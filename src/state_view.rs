//! The node's state as a person debugging it wants to see it: `/debug/state` (JSON, see
//! `state_wire`) and `weftd status` (a table of the same, `status_table`). Per peer: the kernel entries weft wants for it,
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
//! requests), one request at a time (`state_channel`). Answers are pages: `offset` (default 0),
//! `limit` (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]) and `only=problems` (peers
//! whose verdict is not `ok`); the summary always counts every peer.

use std::time::{Duration, SystemTime};
pub use weft_backend::reconcile::view::{EntryView, PeerView, REPAIRED_SHOWN_FOR, Verdict};
use weft_backend::tunnel::TunnelImplementation;
use weft_subnet::SubnetKey;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

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

/// Why a `/debug/state` query was refused (answered with 400 and this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("{key}={value}: not a number")]
    NotANumber { key: String, value: String },
    #[error("only={0}: expected problems or all")]
    BadOnly(String),
    #[error("unknown parameter {0:?} (offset, limit, only=problems)")]
    Unknown(String),
}

impl StateQuery {
    /// Parses `offset=N&limit=N&only=problems|all`; unknown keys are refused.
    pub fn parse(query: Option<&str>) -> Result<StateQuery, QueryError> {
        let mut q = StateQuery::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || {
                value.parse::<usize>().map_err(|_| QueryError::NotANumber {
                    key: key.to_string(),
                    value: value.to_string(),
                })
            };
            match key {
                "offset" => q.offset = number()?,
                "limit" => q.limit = number()?.clamp(1, MAX_LIMIT),
                "only" => {
                    q.problems_only = match value {
                        "problems" => true,
                        "all" => false,
                        _ => return Err(QueryError::BadOnly(value.to_string())),
                    }
                }
                _ => return Err(QueryError::Unknown(key.to_string())),
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
    /// Where the traffic rules live (nftables, or which iptables and why).
    pub traffic_rules: Option<String>,
    /// The VXLAN devices' TX checksum offload, and why.
    pub vxlan_tx_checksum: Option<String>,
    /// The WireGuard devices and which implementation serves each (wireguard backend).
    pub wireguard: Option<Vec<(String, TunnelImplementation)>>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_wire::StateDoc;
    use crate::status_table;
    use serde_json::Value;
    use weft_backend::reconcile::drift::{ChangeKind, EntryState};

    fn json_of(view: &StateView, now: SystemTime) -> Value {
        serde_json::to_value(StateDoc::from_view(view, now)).unwrap()
    }

    fn over_the_wire(doc: StateDoc) -> StateDoc {
        let text = serde_json::to_string_pretty(&doc).unwrap();
        let back: StateDoc = serde_json::from_str(&text).unwrap();
        assert_eq!(back, doc);
        back
    }

    const NOW: SystemTime = SystemTime::UNIX_EPOCH;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn entry(kind: ChangeKind, desired: &str, state: EntryState) -> EntryView {
        EntryView::new(kind, desired, state)
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
            tunnel: Vec::new(),
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
                traffic_rules: Some(
                    "iptables-legacy v1.8.9 (Legacy): kubelet's chains are in iptables-legacy \
                     (the host's variant)"
                        .into(),
                ),
                vxlan_tx_checksum: None,
                wireguard: None,
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
        assert_eq!(
            StateQuery::parse(Some("limit=ten"))
                .unwrap_err()
                .to_string(),
            "limit=ten: not a number"
        );
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
        let json = json_of(&sample(), at(1012));
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
        assert_eq!(json_of(&last, NOW)["page"]["next_offset"], Value::Null);
    }

    #[test]
    fn the_table_says_which_wireguard_serves_each_device() {
        let mut view = sample();
        view.node.wireguard = Some(vec![("flannel-wg".into(), TunnelImplementation::Kernel)]);
        let table = status_table::render(&over_the_wire(StateDoc::from_view(&view, at(1012))));
        assert!(
            table
                .lines()
                .any(|l| l == "WireGuard: flannel-wg: the kernel's WireGuard"),
            "{table}"
        );
    }

    #[test]
    fn the_table_has_one_row_per_peer_with_its_verdict_and_entries() {
        // Printed from the document as `weftd status` receives it: serialized by the
        // server, deserialized by the client.
        let table = status_table::render(&over_the_wire(StateDoc::from_view(&sample(), at(1012))));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "node 10.244.1.0/24 (vxlan, etcd): ready; lease expires 1970-01-02T00:00:00Z"
        );
        assert_eq!(
            lines[1],
            "traffic rules: iptables-legacy v1.8.9 (Legacy): kubelet's chains are in \
             iptables-legacy (the host's variant)"
        );
        let lines = &lines[1..];
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
    fn a_wireguard_peer_shows_its_handshake_and_bytes_never_a_secret() {
        use weft_backend::reconcile::tunnels::TunnelPeerView;
        let mut view = sample();
        view.node.backend = "wireguard".into();
        let peer = &mut view.peers[0];
        peer.entries.clear();
        let seen = |handshake: Option<u64>, rx, tx| TunnelPeerView {
            device: "flannel-wg".into(),
            public_key: weft_backend::tunnel::key::PublicKey([2; 32]),
            endpoint: Some("198.18.0.12:51820".parse().unwrap()),
            allowed_ips: vec!["10.244.2.0/24".parse().unwrap()],
            last_handshake: handshake.map(at),
            rx_bytes: rx,
            tx_bytes: tx,
        };
        peer.tunnel = vec![seen(Some(1000), 1_536, 100)];
        let doc = over_the_wire(StateDoc::from_view(&view, at(1012)));
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(
            json["peers"][0]["wireguard"][0],
            serde_json::json!({
                "device": "flannel-wg",
                "public_key": "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=",
                "endpoint": "198.18.0.12:51820",
                "allowed_ips": ["10.244.2.0/24"],
                "latest_handshake_at": "1970-01-01T00:16:40Z",
                "latest_handshake_seconds_ago": 12,
                "rx_bytes": 1536,
                "tx_bytes": 100,
            })
        );
        let table = status_table::render(&doc);
        assert!(
            table.contains("flannel-wg handshake 12s ago, rx 1.50 KiB, tx 100 B"),
            "{table}"
        );
        // Never a handshake: said so, not a date in 1970.
        view.peers[0].tunnel = vec![seen(None, 0, 92)];
        let table = status_table::render(&over_the_wire(StateDoc::from_view(&view, at(1012))));
        assert!(
            table.contains("flannel-wg no handshake yet, rx 0 B, tx 92 B"),
            "{table}"
        );
    }

    #[test]
    fn a_starting_node_says_why_it_has_nothing_to_show() {
        let doc = over_the_wire(StateDoc::starting(&Err("no subnet lease yet".into())));
        assert_eq!(
            serde_json::to_value(&doc).unwrap(),
            serde_json::json!({
                "node": null,
                "starting": true,
                "not_ready_reason": "no subnet lease yet",
                "peers": [],
            })
        );
        assert!(!doc.healthy());
        assert_eq!(
            status_table::render(&doc),
            "weftd is starting: no subnet lease yet\n"
        );
    }
}
