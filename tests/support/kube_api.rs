//! A small, stateful fake Kubernetes API server over real HTTP/1.1, for tests that drive a
//! real `kube::Client` (and therefore the real request building, error parsing and
//! `kube::runtime::watcher` state machine).
//!
//! It serves what weftd uses:
//! - `GET /api/v1/nodes`: a `NodeList` sorted by name, with `limit`/`continue` paging;
//! - `GET /api/v1/nodes?watch=true&resourceVersion=N`: a chunked stream of JSON lines
//!   (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` when `allowWatchBookmarks=true`, and a
//!   410 `Expired` `ERROR` when `N` is older than the retained history), ended after
//!   `timeoutSeconds`; without a resourceVersion (or `0`) it starts with an `ADDED` event
//!   per node, as a real apiserver does;
//! - `GET`/`PATCH`/`DELETE /api/v1/nodes/{name}`, `GET`/`PATCH /api/v1/nodes/{name}/status`
//!   and `POST /api/v1/nodes`;
//! - `GET /api/v1/namespaces/{ns}/pods/{name}` for pods added with
//!   [`FakeApiServer::create_pod`].
//!
//! Like Kubernetes, there is one cluster-wide resourceVersion counter; every write bumps it,
//! no-op patches do not. Patching `/status` ignores `spec`, patching the main resource
//! ignores `status`; a patch carrying a different `metadata.resourceVersion` gets 409.
//! Errors are `Status` objects with the real reasons, codes and messages.
//!
//! Not covered (simplifications, on purpose):
//! - no authentication, authorization, admission, validation or defaulting; no API
//!   discovery (`/api`, `/apis`, `/version` are 404), no other resources or verbs (`PUT`,
//!   `deletecollection`, server-side apply);
//! - `labelSelector`/`fieldSelector` are rejected with 400 rather than ignored, so a test
//!   relying on them fails loudly; `resourceVersionMatch` and list `resourceVersion` are
//!   ignored (lists are always current);
//! - continue tokens are not snapshot-consistent: later pages show current objects, but
//!   every page reports the resourceVersion of the first page, so a watch started from it
//!   replays whatever changed in between (nothing is lost, some changes arrive twice);
//! - strategic merge patch knows only the merge keys weftd relies on (`status.conditions`
//!   and `status.addresses` by `type`); other lists are replaced, merged list elements keep
//!   their order and new ones are appended, and `$patch`/`$retainKeys`/
//!   `$deleteFromPrimitiveList`/`$setElementOrder` directives are not supported;
//!   `application/json-patch+json` and apply patches get 415;
//! - the event history is unbounded until [`FakeApiServer::compact`] drops it.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc as body_channel;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

type Body = BoxBody<Bytes, Infallible>;
/// An HTTP status code and a JSON body (an object, or a `Status` for failures).
type Reply = (StatusCode, Value);

/// The fake apiserver. Serves on a background thread with its own tokio runtime; dropping
/// it stops the thread and closes every connection.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Counts `set_reachable(false)` calls; every connection is cut when it changes.
    cuts: watch::Sender<u64>,
    requests: Mutex<Vec<String>>,
}

struct State {
    reachable: bool,
    rv: u64,
    nodes: BTreeMap<String, Value>,
    pods: BTreeMap<(String, String), Value>,
    /// Watch events (resourceVersion, JSON line) newer than `compacted`.
    history: VecDeque<(u64, Bytes)>,
    /// Watches from a resourceVersion older than this get 410 Expired.
    compacted: u64,
    watchers: Vec<mpsc::UnboundedSender<Bytes>>,
    bookmark_interval: Duration,
}

impl FakeApiServer {
    /// Serves on `listener` (which may have been bound inside a network namespace).
    pub fn start(listener: TcpListener) -> FakeApiServer {
        let addr = listener.local_addr().expect("listener address");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                reachable: true,
                rv: 1,
                nodes: BTreeMap::new(),
                pods: BTreeMap::new(),
                history: VecDeque::new(),
                compacted: 1,
                watchers: Vec::new(),
                bookmark_interval: Duration::from_secs(1),
            }),
            cuts: watch::Sender::new(0),
            requests: Mutex::new(Vec::new()),
        });
        let (shutdown, stop) = oneshot::channel();
        let serving = shared.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("fake apiserver runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                tokio::select! {
                    () = serve(listener, serving) => {}
                    _ = stop => {}
                }
            });
            // Dropping the runtime cancels every connection task.
        });
        FakeApiServer {
            shared,
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// Serves on 127.0.0.1 with a free port.
    pub fn start_local() -> FakeApiServer {
        FakeApiServer::start(TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
    }

    /// `http://ip:port`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates a node (emits ADDED) and returns it as stored. Panics if it exists.
    pub fn create_node(&self, node: Value) -> Value {
        self.shared
            .state()
            .create_node(node)
            .unwrap_or_else(|(_, status)| panic!("create_node: {status}"))
    }

    pub fn node(&self, name: &str) -> Option<Value> {
        self.shared.state().nodes.get(name).cloned()
    }

    /// Changes a node in place, bumps its resourceVersion and emits MODIFIED (also when
    /// `change` changed nothing). Name, uid and creationTimestamp cannot be changed.
    /// Panics if the node does not exist.
    pub fn update_node(&self, name: &str, change: impl FnOnce(&mut Value)) -> Value {
        let mut state = self.shared.state();
        let old = state
            .nodes
            .get(name)
            .unwrap_or_else(|| panic!("update_node: no node {name}"))
            .clone();
        let mut node = old.clone();
        change(&mut node);
        keep_identity(&mut node, &old).expect("update_node: metadata must stay an object");
        state.store_node(node, "MODIFIED")
    }

    /// Deletes a node (emits DELETED at a new resourceVersion) and returns its final state.
    pub fn delete_node(&self, name: &str) -> Option<Value> {
        self.shared.state().delete_node(name).ok()
    }

    pub fn create_pod(&self, namespace: &str, name: &str, node_name: &str) {
        let mut state = self.shared.state();
        let rv = state.bump();
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": uid(rv),
                "resourceVersion": rv.to_string(),
                "creationTimestamp": now(),
            },
            "spec": {"nodeName": node_name, "containers": [{"name": "main", "image": "pause"}]},
        });
        state.pods.insert((namespace.into(), name.into()), pod);
    }

    /// `false`: cuts every connection (open watches included) and closes new ones right
    /// after accepting them, until set back to `true`.
    pub fn set_reachable(&self, reachable: bool) {
        let mut state = self.shared.state();
        state.reachable = reachable;
        if !reachable {
            // Ends the watches synchronously: no event written after this call reaches them.
            state.watchers.clear();
            self.shared.cuts.send_modify(|cuts| *cuts += 1);
        }
    }

    /// Drops the event history: watches from any resourceVersion older than the current
    /// one get 410 Expired.
    pub fn compact(&self) {
        let mut state = self.shared.state();
        state.history.clear();
        state.compacted = state.rv;
    }

    /// Interval of BOOKMARK events, for watches started afterwards (default 1 s).
    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.shared.state().bookmark_interval = interval;
    }

    /// One line per request: `METHOD path?query`, followed by ` content-type` if the
    /// request had one.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A Node with `spec.podCIDR(s)` and InternalIP + Hostname addresses.
pub fn node_json(name: &str, pod_cidrs: &[&str], internal_ip: &str) -> Value {
    let mut spec = json!({});
    if let Some(first) = pod_cidrs.first() {
        spec = json!({"podCIDR": first, "podCIDRs": pod_cidrs});
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": spec,
        "status": {"addresses": [
            {"type": "InternalIP", "address": internal_ip},
            {"type": "Hostname", "address": name},
        ]},
    })
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

impl State {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Stores `node` at a new resourceVersion and emits `event` for it.
    fn store_node(&mut self, mut node: Value, event: &str) -> Value {
        let rv = self.bump();
        node["metadata"]["resourceVersion"] = rv.to_string().into();
        let name = node["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.nodes.insert(name, node.clone());
        self.emit(rv, event, &node);
        node
    }

    fn emit(&mut self, rv: u64, kind: &str, object: &Value) {
        let line = event_line(kind, object);
        self.history.push_back((rv, line.clone()));
        self.watchers
            .retain(|watcher| watcher.send(line.clone()).is_ok());
    }

    fn create_node(&mut self, mut node: Value) -> Result<Value, Reply> {
        let Some(name) = node.pointer("/metadata/name").and_then(Value::as_str) else {
            return Err(failure(
                400,
                "BadRequest",
                "metadata.name is required".into(),
                None,
            ));
        };
        let name = name.to_string();
        if self.nodes.contains_key(&name) {
            let message = format!("nodes \"{name}\" already exists");
            return Err(failure(409, "AlreadyExists", message, Some(&name)));
        }
        node["apiVersion"] = "v1".into();
        node["kind"] = "Node".into();
        node["metadata"]["uid"] = uid(self.rv + 1).into();
        node["metadata"]["creationTimestamp"] = now();
        Ok(self.store_node(node, "ADDED"))
    }

    fn patch_node(
        &mut self,
        name: &str,
        status_subresource: bool,
        patch: &Value,
        strategic: bool,
    ) -> Result<Value, Reply> {
        let old = self.nodes.get(name).ok_or_else(|| not_found(name))?.clone();
        if let Some(rv) = patch
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            && old["metadata"]["resourceVersion"] != rv
        {
            let message = format!(
                "Operation cannot be fulfilled on nodes \"{name}\": the object has been \
                 modified; please apply your changes to the latest version and try again"
            );
            return Err(failure(409, "Conflict", message, Some(name)));
        }
        let mut node = old.clone();
        merge(&mut node, patch, "", strategic);
        // As in the real node strategies: the status subresource cannot change the spec,
        // the main resource cannot change the status.
        restore(
            &mut node,
            &old,
            if status_subresource { "spec" } else { "status" },
        );
        keep_identity(&mut node, &old)?;
        if node == old {
            return Ok(old);
        }
        Ok(self.store_node(node, "MODIFIED"))
    }

    fn delete_node(&mut self, name: &str) -> Result<Value, Reply> {
        let mut node = self.nodes.remove(name).ok_or_else(|| not_found(name))?;
        let rv = self.bump();
        node["metadata"]["resourceVersion"] = rv.to_string().into();
        self.emit(rv, "DELETED", &node);
        Ok(node)
    }

    fn list_nodes(&self, query: &Query) -> Result<Value, Reply> {
        let limit = match query.get("limit") {
            Some(limit) => limit.parse::<usize>().map_err(|_| bad_request("limit"))?,
            None => 0,
        };
        // Token "<rv of the first page>/<last name returned>".
        let (list_rv, after) = match query.get("continue") {
            Some(token) => {
                let (rv, after) = token
                    .split_once('/')
                    .ok_or_else(|| bad_request("continue"))?;
                (
                    rv.parse::<u64>().map_err(|_| bad_request("continue"))?,
                    Some(after),
                )
            }
            None => (self.rv, None),
        };
        let mut rest = self
            .nodes
            .iter()
            .filter(|(name, _)| after.is_none_or(|after| name.as_str() > after));
        let items: Vec<Value> = match limit {
            0 => rest.by_ref().map(|(_, node)| node.clone()).collect(),
            limit => rest
                .by_ref()
                .take(limit)
                .map(|(_, node)| node.clone())
                .collect(),
        };
        let mut metadata = json!({"resourceVersion": list_rv.to_string()});
        if rest.next().is_some()
            && let Some(last) = items.last()
        {
            let last = last["metadata"]["name"].as_str().unwrap_or_default();
            metadata["continue"] = format!("{list_rv}/{last}").into();
        }
        Ok(json!({"apiVersion": "v1", "kind": "NodeList", "metadata": metadata, "items": items}))
    }
}

async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Subscribe first: a cut after this point closes the connection.
        let mut cuts = shared.cuts.subscribe();
        if !shared.state().reachable {
            continue; // accepted and closed
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            // Biased: once set_reachable(false) has returned, the connection is dropped the
            // next time it is polled, before it can read or answer another request.
            tokio::select! {
                biased;
                _ = cuts.changed() => {}
                _ = connection => {}
            }
        });
    }
}

async fn handle(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let target = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let line = format!("{method} {target} {content_type}");
    shared
        .requests
        .lock()
        .unwrap()
        .push(line.trim_end().to_string());

    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return reply(failure(400, "BadRequest", "unreadable body".into(), None)),
    };
    let query = Query::parse(uri.query().unwrap_or_default());
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let result = match (&method, segments.as_slice()) {
        (&Method::GET, ["api", "v1", "nodes"]) if query.flag("watch") => {
            return watch_nodes(shared, &query);
        }
        (&Method::GET, ["api", "v1", "nodes"]) => match query.selectors() {
            Some(selector) => Err(unsupported_selector(selector)),
            None => shared.state().list_nodes(&query).map(ok),
        },
        (&Method::POST, ["api", "v1", "nodes"]) => match serde_json::from_slice(&body) {
            Ok(node) => shared
                .state()
                .create_node(node)
                .map(|node| (StatusCode::CREATED, node)),
            Err(e) => Err(failure(
                400,
                "BadRequest",
                format!("invalid body: {e}"),
                None,
            )),
        },
        (&Method::GET, ["api", "v1", "nodes", name] | ["api", "v1", "nodes", name, "status"]) => {
            let node = shared.state().nodes.get(*name).cloned();
            node.map(ok).ok_or_else(|| not_found(name))
        }
        (&Method::PATCH, ["api", "v1", "nodes", name, rest @ ..])
            if matches!(rest, [] | ["status"]) =>
        {
            patch_node(shared, name, rest == ["status"], &content_type, &body)
        }
        (&Method::DELETE, ["api", "v1", "nodes", name]) => shared.state().delete_node(name).map(ok),
        (&Method::GET, ["api", "v1", "namespaces", namespace, "pods", name]) => {
            let key = (namespace.to_string(), name.to_string());
            match shared.state().pods.get(&key) {
                Some(pod) => Ok(ok(pod.clone())),
                None => {
                    let message = format!("pods \"{name}\" not found");
                    Err(failure_of("pods", 404, "NotFound", message, Some(name)))
                }
            }
        }
        _ => Err(path_not_found()),
    };
    reply(result.unwrap_or_else(|failure| failure))
}

fn patch_node(
    shared: &Shared,
    name: &str,
    status_subresource: bool,
    content_type: &str,
    body: &[u8],
) -> Result<Reply, Reply> {
    let strategic = match content_type.split(';').next().unwrap_or_default().trim() {
        "application/merge-patch+json" => false,
        "application/strategic-merge-patch+json" => true,
        _ => {
            let message = "the body of the request was in an unknown format - accepted media \
                           types include: application/merge-patch+json, \
                           application/strategic-merge-patch+json";
            return Err(failure(415, "UnsupportedMediaType", message.into(), None));
        }
    };
    let patch: Value = match serde_json::from_slice(body) {
        Ok(patch @ Value::Object(_)) => patch,
        _ => {
            return Err(failure(
                400,
                "BadRequest",
                "the patch must be a JSON object".into(),
                None,
            ));
        }
    };
    let mut state = shared.state();
    state
        .patch_node(name, status_subresource, &patch, strategic)
        .map(ok)
}

/// Starts a watch: replays retained events newer than `resourceVersion` (or an ADDED per
/// node when it is absent or 0), then streams live events and bookmarks.
fn watch_nodes(shared: &Arc<Shared>, query: &Query) -> Response<Body> {
    if let Some(selector) = query.selectors() {
        return reply(unsupported_selector(selector));
    }
    let since = match query.get("resourceVersion").unwrap_or("0").parse::<u64>() {
        Ok(since) => since,
        Err(_) => return reply(bad_request("resourceVersion")),
    };
    let timeout = match query.get("timeoutSeconds").map(str::parse::<u64>) {
        None => None,
        Some(Ok(seconds)) => Some(Duration::from_secs(seconds)),
        Some(Err(_)) => return reply(bad_request("timeoutSeconds")),
    };
    let bookmarks = query.flag("allowWatchBookmarks");

    let (out, body) = body_channel::unbounded::<Bytes>();
    let (events_in, events) = mpsc::unbounded_channel();
    {
        let mut state = shared.state();
        if !state.reachable {
            return reply(failure(
                503,
                "ServiceUnavailable",
                "unreachable".into(),
                None,
            ));
        }
        if since == 0 {
            for node in state.nodes.values() {
                let _ = out.unbounded_send(event_line("ADDED", node));
            }
        } else if since < state.compacted {
            let message = format!("too old resource version: {since} ({})", state.compacted);
            let (_, status) = failure(410, "Expired", message, None);
            let _ = out.unbounded_send(event_line("ERROR", &status));
        } else {
            for (_, line) in state.history.iter().filter(|(rv, _)| *rv > since) {
                let _ = out.unbounded_send(line.clone());
            }
        }
        if since == 0 || since >= state.compacted {
            state.watchers.push(events_in);
            let shared = shared.clone();
            let bookmarks = bookmarks.then_some(state.bookmark_interval);
            tokio::spawn(forward(shared, events, out, bookmarks, timeout));
        }
        // After an ERROR, `out` is dropped here and the stream ends.
    }
    let body = StreamBody::new(body.map(|line| Ok(Frame::data(line))));
    let mut response = Response::new(BodyExt::boxed(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Feeds one watch: live events, a BOOKMARK every `bookmarks` interval, and the end of the
/// stream after `timeout`.
async fn forward(
    shared: Arc<Shared>,
    mut events: mpsc::UnboundedReceiver<Bytes>,
    out: body_channel::UnboundedSender<Bytes>,
    bookmarks: Option<Duration>,
    timeout: Option<Duration>,
) {
    let far = Duration::from_secs(365 * 24 * 3600);
    let deadline = Instant::now() + timeout.unwrap_or(far);
    let mut next_bookmark = Instant::now() + bookmarks.unwrap_or(far);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return,
            event = events.recv() => {
                // None: cut by set_reachable(false); a failed send: the client is gone.
                let Some(line) = event else { return };
                if out.unbounded_send(line).is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(next_bookmark) => {
                let rv = shared.state().rv;
                // Events up to `rv` are queued already: send them before the bookmark.
                while let Ok(line) = events.try_recv() {
                    let _ = out.unbounded_send(line);
                }
                let bookmark = json!({
                    "kind": "Node",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": rv.to_string()},
                });
                if out.unbounded_send(event_line("BOOKMARK", &bookmark)).is_err() {
                    return;
                }
                next_bookmark = Instant::now() + shared.state().bookmark_interval;
            }
        }
    }
}

/// RFC 7386 JSON merge patch; with `strategic`, lists at [`merge_key`] paths are merged
/// element by element instead of replaced.
fn merge(target: &mut Value, patch: &Value, path: &str, strategic: bool) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        unreachable!()
    };
    for (key, value) in patch {
        let path = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        if value.is_null() {
            target.remove(key);
            continue;
        }
        let slot = target.entry(key.clone()).or_insert(Value::Null);
        match (value, merge_key(&path)) {
            (Value::Array(items), Some(merge_key)) if strategic => {
                if !slot.is_array() {
                    *slot = Value::Array(Vec::new());
                }
                let Value::Array(list) = slot else {
                    unreachable!()
                };
                for item in items {
                    let key_value = item.get(merge_key);
                    match list
                        .iter_mut()
                        .find(|old| key_value.is_some() && old.get(merge_key) == key_value)
                    {
                        Some(old) => merge(old, item, &path, true),
                        None => {
                            let mut new = Value::Null;
                            merge(&mut new, item, &path, true);
                            list.push(new);
                        }
                    }
                }
            }
            _ => merge(slot, value, &path, strategic),
        }
    }
}

/// The strategic-merge keys (`patchMergeKey`) of the Node lists weftd patches.
fn merge_key(path: &str) -> Option<&'static str> {
    match path {
        "status.conditions" | "status.addresses" => Some("type"),
        _ => None,
    }
}

/// Sets `node[key]` back to `old[key]` (or removes it if `old` had none).
fn restore(node: &mut Value, old: &Value, key: &str) {
    match (node.as_object_mut(), old.get(key)) {
        (Some(node), Some(value)) => {
            node.insert(key.into(), value.clone());
        }
        (Some(node), None) => {
            node.remove(key);
        }
        (None, _) => *node = old.clone(),
    }
}

/// Keeps what a client cannot change: kind, name, uid, creationTimestamp, resourceVersion.
fn keep_identity(node: &mut Value, old: &Value) -> Result<(), Reply> {
    for key in ["apiVersion", "kind"] {
        restore(node, old, key);
    }
    let Some(metadata) = node.get_mut("metadata").filter(|m| m.is_object()) else {
        let message = "metadata must be an object".to_string();
        return Err(failure(422, "Invalid", message, None));
    };
    for key in ["name", "uid", "creationTimestamp", "resourceVersion"] {
        restore(metadata, &old["metadata"], key);
    }
    Ok(())
}

/// The query string, percent-decoded; empty values count as absent.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Query {
        let pairs = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(key), percent_decode(value))
            });
        Query(pairs.collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        let value = self
            .0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str());
        value.filter(|value| !value.is_empty())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    fn selectors(&self) -> Option<&'static str> {
        ["labelSelector", "fieldSelector"]
            .into_iter()
            .find(|key| self.get(key).is_some())
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok());
        match (
            bytes[i],
            hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()),
        ) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (byte, _) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
    line.push(b'\n');
    line.into()
}

fn ok(object: Value) -> Reply {
    (StatusCode::OK, object)
}

fn reply((status, body): Reply) -> Response<Body> {
    let mut response = Response::new(BodyExt::boxed(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A failure `Status` about a node.
fn failure(code: u16, reason: &str, message: String, name: Option<&str>) -> Reply {
    failure_of("nodes", code, reason, message, name)
}

fn failure_of(kind: &str, code: u16, reason: &str, message: String, name: Option<&str>) -> Reply {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(name) = name {
        status["details"] = json!({"name": name, "kind": kind});
    }
    (StatusCode::from_u16(code).unwrap(), status)
}

fn not_found(name: &str) -> Reply {
    failure(
        404,
        "NotFound",
        format!("nodes \"{name}\" not found"),
        Some(name),
    )
}

fn path_not_found() -> Reply {
    let message = "the server could not find the requested resource".to_string();
    failure(404, "NotFound", message, None)
}

fn bad_request(parameter: &str) -> Reply {
    failure(
        400,
        "BadRequest",
        format!("invalid {parameter} parameter"),
        None,
    )
}

fn unsupported_selector(selector: &str) -> Reply {
    let message = format!("the fake apiserver does not support {selector}");
    failure(400, "BadRequest", message, None)
}

fn uid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

fn now() -> Value {
    let time =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    serde_json::to_value(time).unwrap()
}
