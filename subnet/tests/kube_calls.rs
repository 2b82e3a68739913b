//! Exact-call tests of the Kubernetes subnet manager: which HTTP requests it sends, in
//! which order, with which bodies, and nothing else.
//!
//! The approach is kube-rs/controller-rs's `ApiServerVerifier`: the `kube::Client` under
//! test talks to a `tower_test::mock` service instead of a network, and the test plays
//! the API server on the other end of the mock. Each scenario runs the code under test
//! concurrently with a scripted conversation ([`converse`]) in which the [`ApiServer`]
//! takes the requests one by one, asserts each (method, path, query parameters, the
//! `content-type` of a PATCH and its exact JSON body) and answers it with a realistic
//! response (a full Node with a `resourceVersion`, or a `Status` for errors).
//!
//! A call that never comes fails the scenario through a timeout. An extra call fails it
//! either in [`converse`] (a request arriving after the script is over, while the code
//! under test still runs) or in [`ApiServer::assert_done`], which runs after the code
//! under test has been dropped: the mock must then report that its client is gone
//! without having seen another request. The tests start with tokio's clock paused, so
//! backoff sleeps and timeouts cost no real time.
//!
//! Responses use a body type of our own (`BoxBody<Bytes, Infallible>`): `kube`'s own
//! `Body` has no public streaming constructor, and a watch response must stay open after
//! its events, as a real API server's does, or the watcher would re-watch.

use bytes::Bytes;
use futures::StreamExt;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use kube::client::Body;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;
use tokio::sync::mpsc;
use weft_subnet::kube::Node;
use weft_subnet::kube::{
    AnnotationKeys, ClusterNetworks, KubeSubnetManager, NodeNameSource, OwnNode, RetryPolicy,
    TrackerOutput,
};
use weft_subnet::watch::DatastoreEvent;
use weft_subnet::watch::WatchBatch;
use weft_subnet::{Lease, LeaseAttrs, SubnetKey};

type ResponseBody = BoxBody<Bytes, Infallible>;
type Handle = tower_test::mock::Handle<Request<Body>, Response<ResponseBody>>;
type Responder = tower_test::mock::SendResponse<Response<ResponseBody>>;

/// How long the API server waits for the next expected call (virtual time).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a scenario may take in all (virtual time).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(600);

const PREFIX: &str = "flannel.alpha.coreos.com/";
const NODE: &str = "/api/v1/nodes/n1";
const NODE_STATUS: &str = "/api/v1/nodes/n1/status";
const STRATEGIC_MERGE: &str = "application/strategic-merge-patch+json";
const VTEP: &str = r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}"#;

// ---------------------------------------------------------------------------------------
// The mock API server.

/// A `kube::Client` whose requests arrive at the returned [`ApiServer`].
fn mock_client() -> (kube::Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<ResponseBody>>();
    (kube::Client::new(service, "default"), ApiServer(handle))
}

/// The test's side of the mock: takes and checks the requests, in order.
struct ApiServer(Handle);

/// One request the code under test sent, with the means to answer it.
struct Call {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    content_type: Option<String>,
    body: Value,
    responder: Responder,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {:?} {}",
            self.method, self.path, self.query, self.body
        )
    }
}

impl ApiServer {
    /// The next request; panics if none comes in time or the client is gone.
    async fn next_call(&mut self, expected: &str) -> Call {
        let (request, responder) = tokio::time::timeout(CALL_TIMEOUT, self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("expected {expected}, but no call came"))
            .unwrap_or_else(|| panic!("expected {expected}, but the client was dropped"));
        let (parts, body) = request.into_parts();
        let bytes = body.collect().await.expect("request body").to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON request body")
        };
        let query = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        Call {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query,
            content_type: parts
                .headers
                .get(CONTENT_TYPE)
                .map(|v| v.to_str().expect("ASCII content-type").to_string()),
            body,
            responder,
        }
    }

    /// Expects `GET path` with no query parameters.
    async fn expect_get(&mut self, path: &str) -> Call {
        let call = self.next_call(&format!("GET {path}")).await;
        assert_eq!(
            (&call.method, call.path.as_str()),
            (&Method::GET, path),
            "{call:?}"
        );
        assert!(call.query.is_empty(), "{call:?}");
        call
    }

    /// Expects a strategic-merge `PATCH path` whose body is exactly `body`.
    async fn expect_patch(&mut self, path: &str, body: Value) -> Call {
        let call = self.next_call(&format!("PATCH {path} {body}")).await;
        assert_eq!(
            (&call.method, call.path.as_str()),
            (&Method::PATCH, path),
            "{call:?}"
        );
        assert!(call.query.is_empty(), "{call:?}");
        assert_eq!(
            call.content_type.as_deref(),
            Some(STRATEGIC_MERGE),
            "{call:?}"
        );
        assert_eq!(call.body, body, "PATCH {path}");
        call
    }

    /// Expects the annotation patch of node n1 carrying exactly `annotations`.
    async fn expect_annotation_patch(&mut self, annotations: &[(&str, &str)]) -> Call {
        let body = json!({ "metadata": { "annotations": annotations_of(annotations) } });
        self.expect_patch(NODE_STATUS, body).await
    }

    /// Expects the first-start patch (all of vxlan's annotations for 198.18.0.11) and
    /// answers with node n1 (podCIDR 10.244.1.0/24) carrying them at resourceVersion `rv`.
    async fn expect_first_publish(&mut self, rv: u32) {
        let annotated = node("n1", Some("10.244.1.0/24"), &published("198.18.0.11"), rv);
        self.expect_annotation_patch(&published("198.18.0.11"))
            .await
            .ok(&annotated);
    }

    /// Expects flannel's `NetworkUnavailable=False` patch of node n1: every field exact
    /// except the two timestamps, which must be RFC 3339.
    async fn expect_condition_patch(&mut self) -> Call {
        let call = self
            .next_call("the NetworkUnavailable condition PATCH")
            .await;
        assert_eq!(
            (&call.method, call.path.as_str()),
            (&Method::PATCH, NODE_STATUS),
            "{call:?}"
        );
        assert!(call.query.is_empty(), "{call:?}");
        assert_eq!(
            call.content_type.as_deref(),
            Some(STRATEGIC_MERGE),
            "{call:?}"
        );
        let mut body = call.body.clone();
        let condition = body["status"]["conditions"][0]
            .as_object_mut()
            .unwrap_or_else(|| panic!("no condition in {call:?}"));
        for field in ["lastTransitionTime", "lastHeartbeatTime"] {
            let stamp = condition.remove(field);
            let text = stamp.as_ref().and_then(Value::as_str);
            assert!(
                text.is_some_and(|t| t.parse::<k8s_openapi::jiff::Timestamp>().is_ok()),
                "{field} is not an RFC 3339 time in {call:?}"
            );
        }
        assert_eq!(
            body,
            json!({ "status": { "conditions": [{
                "type": "NetworkUnavailable",
                "status": "False",
                "reason": "FlannelIsUp",
                "message": "Flannel is running on this node",
            }] } })
        );
        call
    }

    /// No call arrives for a while (the code under test is still running).
    async fn assert_idle(&mut self) {
        if let Ok(Some((request, _))) =
            tokio::time::timeout(Duration::from_secs(5), self.0.next_request()).await
        {
            panic!("unexpected call {} {}", request.method(), request.uri());
        }
    }

    /// After the code under test was dropped: it sent nothing more.
    async fn assert_done(mut self) {
        match tokio::time::timeout(CALL_TIMEOUT, self.0.next_request()).await {
            Ok(None) => {}
            Ok(Some((request, _))) => {
                panic!("unexpected call {} {}", request.method(), request.uri())
            }
            Err(_) => panic!("the client is still alive: drop the code under test first"),
        }
    }
}

impl Call {
    fn respond(self, status: StatusCode, body: &Value) {
        let body = Full::new(Bytes::from(body.to_string())).boxed();
        self.responder.send_response(json_response(status, body));
    }

    fn ok(self, body: &Value) {
        self.respond(StatusCode::OK, body);
    }

    /// A watch response: `events` as JSON lines, then the connection stays open.
    fn stream(self, events: &[Value]) {
        let lines: Vec<Bytes> = events.iter().map(|e| format!("{e}\n").into()).collect();
        let frames = futures::stream::iter(lines).flat_map(|line| BodyStream::new(Full::new(line)));
        let open = frames.chain(futures::stream::pending());
        let body = BodyExt::boxed(StreamBody::new(open));
        self.responder
            .send_response(json_response(StatusCode::OK, body));
    }
}

fn json_response(status: StatusCode, body: ResponseBody) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap()
}

/// Runs `code` while `script` plays the API server's side of the conversation; once the
/// script is over, `code` must finish without another call.
async fn converse<T>(
    server: &mut ApiServer,
    code: impl Future<Output = T>,
    script: impl AsyncFnOnce(&mut ApiServer),
) -> T {
    let run = async {
        let mut code = pin!(code);
        let mut output = None;
        {
            let mut script = pin!(script(&mut *server));
            loop {
                tokio::select! {
                    out = &mut code, if output.is_none() => output = Some(out),
                    () = &mut script => break,
                }
            }
        }
        match output {
            Some(out) => out,
            None => tokio::select! {
                out = &mut code => out,
                Some((request, _)) = server.0.next_request() => {
                    panic!("unexpected call {} {}", request.method(), request.uri())
                }
            },
        }
    };
    tokio::time::timeout(SCENARIO_TIMEOUT, run)
        .await
        .expect("the scenario did not finish")
}

// ---------------------------------------------------------------------------------------
// Objects.

/// Annotations by name; names without a `/` get flannel's prefix.
fn annotations_of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| {
            let name = if k.contains('/') {
                k.to_string()
            } else {
                format!("{PREFIX}{k}")
            };
            (name, v.to_string())
        })
        .collect()
}

/// The four annotations a vxlan node publishes.
fn published(public_ip: &str) -> Vec<(&'static str, &str)> {
    vec![
        ("backend-data", VTEP),
        ("backend-type", "vxlan"),
        ("kube-subnet-manager", "true"),
        ("public-ip", public_ip),
    ]
}

/// A Node as the API server returns it.
fn node(name: &str, pod_cidr: Option<&str>, annotations: &[(&str, &str)], rv: u32) -> Value {
    let spec = match pod_cidr {
        Some(cidr) => json!({ "podCIDR": cidr, "podCIDRs": [cidr] }),
        None => json!({}),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": format!("8d4c3a6e-5b1f-4c2d-9e7a-{name:0>12}"),
            "resourceVersion": rv.to_string(),
            "creationTimestamp": "2025-06-01T08:00:00Z",
            "labels": {
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
            },
            "annotations": annotations_of(annotations),
        },
        "spec": spec,
        "status": {
            "addresses": [
                { "type": "InternalIP", "address": "192.0.2.10" },
                { "type": "Hostname", "address": name },
            ],
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": "2025-06-01T08:05:00Z",
                "lastTransitionTime": "2025-06-01T08:01:00Z",
            }],
        },
    })
}

/// An error response body.
fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": { "name": "n1", "kind": "nodes" },
        "code": code,
    })
}

fn vxlan_attrs() -> LeaseAttrs {
    LeaseAttrs {
        public_ip: "198.18.0.11".parse().unwrap(),
        backend_type: "vxlan".into(),
        backend_data: Some(json!({"VNI": 1, "VtepMAC": "12:c6:65:89:b4:e3"}).into()),
        ..LeaseAttrs::default()
    }
}

fn key(text: &str) -> SubnetKey {
    SubnetKey::parse(text).unwrap()
}

fn manager(client: kube::Client) -> KubeSubnetManager {
    let networks = ClusterNetworks {
        ipv4: Some("10.244.0.0/16".parse().unwrap()),
        ipv6: None,
    };
    let keys = AnnotationKeys::new("flannel.alpha.coreos.com").unwrap();
    KubeSubnetManager::new(client, "n1".into(), keys, networks).with_retry(RetryPolicy {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(40),
    })
}

/// `acquire` against the scripted `server`; returns the lease and what was reported.
async fn acquire(
    mgr: &KubeSubnetManager,
    server: &mut ApiServer,
    script: impl AsyncFnOnce(&mut ApiServer),
) -> (Lease, Vec<String>) {
    let mut reports = Vec::new();
    let mut report = |problem: &str| reports.push(problem.to_string());
    let lease = converse(server, mgr.acquire(&vxlan_attrs(), &mut report), script).await;
    (lease, reports)
}

// ---------------------------------------------------------------------------------------
// Scenarios.

#[tokio::test(start_paused = true)]
async fn first_start_publishes_the_annotations_then_the_condition() {
    let (client, mut server) = mock_client();
    let mgr = manager(client);
    let (lease, reports) = acquire(&mgr, &mut server, async |server| {
        let fresh = node("n1", Some("10.244.1.0/24"), &[], 100);
        server.expect_get(NODE).await.ok(&fresh);
        server.expect_first_publish(101).await;
    })
    .await;
    assert_eq!(lease.key, key("10.244.1.0-24"));
    assert_eq!(lease.attrs, vxlan_attrs());
    assert_eq!(reports, Vec::<String>::new());

    let mut reports = Vec::new();
    let mut report = |problem: &str| reports.push(problem.to_string());
    converse(&mut server, mgr.complete(&mut report), async |server| {
        let available = node("n1", Some("10.244.1.0/24"), &published("198.18.0.11"), 102);
        server.expect_condition_patch().await.ok(&available);
    })
    .await;
    assert_eq!(reports, Vec::<String>::new());
    drop(mgr);
    server.assert_done().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_with_up_to_date_annotations_only_reads_the_node() {
    let (client, mut server) = mock_client();
    let mgr = manager(client);
    let (lease, reports) = acquire(&mgr, &mut server, async |server| {
        let current = node("n1", Some("10.244.1.0/24"), &published("198.18.0.11"), 200);
        server.expect_get(NODE).await.ok(&current);
    })
    .await;
    assert_eq!(lease.key, key("10.244.1.0-24"));
    assert!(reports.is_empty(), "{reports:?}");
    drop(mgr);
    server.assert_done().await;
}

#[tokio::test(start_paused = true)]
async fn only_the_differing_annotation_is_patched() {
    let (client, mut server) = mock_client();
    let mgr = manager(client);
    let (lease, reports) = acquire(&mgr, &mut server, async |server| {
        let mut stale = published("198.18.0.99");
        stale.push(("node.alpha.kubernetes.io/ttl", "0"));
        let current = node("n1", Some("10.244.1.0/24"), &stale, 300);
        server.expect_get(NODE).await.ok(&current);
        let mut fixed = published("198.18.0.11");
        fixed.push(("node.alpha.kubernetes.io/ttl", "0"));
        server
            .expect_annotation_patch(&[("public-ip", "198.18.0.11")])
            .await
            .ok(&node("n1", Some("10.244.1.0/24"), &fixed, 301));
    })
    .await;
    assert_eq!(lease.key, key("10.244.1.0-24"));
    assert!(reports.is_empty(), "{reports:?}");
    drop(mgr);
    server.assert_done().await;
}

#[tokio::test(start_paused = true)]
async fn the_public_ip_overwrite_is_published_once() {
    let overwrite = ("public-ip-overwrite", "203.0.113.7");

    // First start: the overwrite replaces the detected address.
    let (client, mut server) = mock_client();
    let mgr = manager(client);
    let mut after = published("203.0.113.7");
    after.push(overwrite);
    let (lease, _) = acquire(&mgr, &mut server, async |server| {
        let current = node("n1", Some("10.244.1.0/24"), &[overwrite], 400);
        server.expect_get(NODE).await.ok(&current);
        server
            .expect_annotation_patch(&published("203.0.113.7"))
            .await
            .ok(&node("n1", Some("10.244.1.0/24"), &after, 401));
    })
    .await;
    assert_eq!(lease.key, key("10.244.1.0-24"));
    drop(mgr);
    server.assert_done().await;

    // Second start: already published, nothing to patch.
    let (client, mut server) = mock_client();
    let mgr = manager(client);
    let (lease, reports) = acquire(&mgr, &mut server, async |server| {
        let current = node("n1", Some("10.244.1.0/24"), &after, 402);
        server.expect_get(NODE).await.ok(&current);
    })
    .await;
    assert_eq!(lease.key, key("10.244.1.0-24"));
    assert!(reports.is_empty(), "{reports:?}");
    drop(mgr);
    server.assert_done().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_annotation_patch_is_retried_from_the_get() {
    let (client, mut server) = mock_client();
    let mgr = manager(client);
    let fresh = node("n1", Some("10.244.1.0/24"), &[], 500);
    let failures = [
        status(500, "InternalError", "etcdserver: request timed out"),
        status(
            409,
            "Conflict",
            "Operation cannot be fulfilled on nodes \"n1\": the object has been modified; \
             please apply your changes to the latest version and try again",
        ),
    ];
    let (lease, reports) = acquire(&mgr, &mut server, async |server| {
        for failure in &failures {
            server.expect_get(NODE).await.ok(&fresh);
            let code = failure["code"].as_u64().unwrap() as u16;
            server
                .expect_annotation_patch(&published("198.18.0.11"))
                .await
                .respond(StatusCode::from_u16(code).unwrap(), failure);
        }
        server.expect_get(NODE).await.ok(&fresh);
        server.expect_first_publish(501).await;
    })
    .await;
    assert_eq!(lease.key, key("10.244.1.0-24"));
    assert_eq!(reports.len(), 2, "{reports:?}");
    for (report, failure) in reports.iter().zip(&failures) {
        assert!(
            report.starts_with("cannot patch the annotations of node n1: "),
            "{report}"
        );
        assert!(
            report.contains(failure["message"].as_str().unwrap()),
            "{report}"
        );
    }
    drop(mgr);
    server.assert_done().await;
}

#[tokio::test(start_paused = true)]
async fn a_missing_pod_cidr_is_waited_for() {
    let (client, mut server) = mock_client();
    let mgr = manager(client);
    let (lease, reports) = acquire(&mgr, &mut server, async |server| {
        for rv in [600, 601] {
            server.expect_get(NODE).await.ok(&node("n1", None, &[], rv));
        }
        let assigned = node("n1", Some("10.244.1.0/24"), &[], 602);
        server.expect_get(NODE).await.ok(&assigned);
        server.expect_first_publish(603).await;
    })
    .await;
    assert_eq!(lease.key, key("10.244.1.0-24"));
    assert_eq!(reports.len(), 2, "{reports:?}");
    for report in &reports {
        assert!(
            report.starts_with("node \"n1\" pod cidr not assigned; waiting for one"),
            "{report}"
        );
    }
    drop(mgr);
    server.assert_done().await;
}

#[tokio::test(start_paused = true)]
async fn a_pod_cidr_outside_the_network_is_reported_like_flannel() {
    let (client, mut server) = mock_client();
    let mgr = manager(client);
    let (lease, reports) = acquire(&mgr, &mut server, async |server| {
        let outside = node("n1", Some("10.99.0.0/24"), &[], 700);
        server.expect_get(NODE).await.ok(&outside);
        let fixed = node("n1", Some("10.244.1.0/24"), &[], 701);
        server.expect_get(NODE).await.ok(&fixed);
        server.expect_first_publish(702).await;
    })
    .await;
    assert_eq!(lease.key, key("10.244.1.0-24"));
    assert_eq!(
        reports,
        [
            "subnet \"10.244.0.0/16\" specified in the flannel net config doesn't contain \
             \"10.99.0.0/24\" PodCIDR of the \"n1\" node"
        ]
    );
    drop(mgr);
    server.assert_done().await;
}

#[tokio::test(start_paused = true)]
async fn the_condition_patch_is_retried() {
    let (client, mut server) = mock_client();
    let mgr = manager(client);
    let mut reports = Vec::new();
    let mut report = |problem: &str| reports.push(problem.to_string());
    converse(&mut server, mgr.complete(&mut report), async |server| {
        let unavailable = status(503, "ServiceUnavailable", "the server is currently unable");
        server
            .expect_condition_patch()
            .await
            .respond(StatusCode::SERVICE_UNAVAILABLE, &unavailable);
        let available = node("n1", Some("10.244.1.0/24"), &published("198.18.0.11"), 801);
        server.expect_condition_patch().await.ok(&available);
    })
    .await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(
        reports[0].starts_with("cannot set the NetworkUnavailable condition of node n1: "),
        "{}",
        reports[0]
    );
    drop(mgr);
    server.assert_done().await;
}

#[tokio::test(start_paused = true)]
async fn the_node_name_comes_from_the_pod() {
    let (client, mut server) = mock_client();
    let source = NodeNameSource {
        node_name: None,
        pod_name: Some("weft-abc".into()),
        pod_namespace: Some("kube-flannel".into()),
    };
    let name = converse(&mut server, source.resolve(&client), async |server| {
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "weft-abc",
                "namespace": "kube-flannel",
                "uid": "1f0e2d3c-4b5a-4968-8776-a5b4c3d2e1f0",
                "resourceVersion": "900",
                "labels": { "app": "flannel" },
            },
            "spec": {
                "nodeName": "n7",
                "hostNetwork": true,
                "serviceAccountName": "flannel",
                "containers": [{ "name": "kube-flannel", "image": "weft:latest" }],
            },
            "status": { "phase": "Running", "podIP": "192.0.2.17", "hostIP": "192.0.2.17" },
        });
        server
            .expect_get("/api/v1/namespaces/kube-flannel/pods/weft-abc")
            .await
            .ok(&pod);
    })
    .await;
    assert_eq!(name.unwrap(), "n7");
    drop(client);
    server.assert_done().await;
}

#[tokio::test(start_paused = true)]
async fn the_node_name_needs_node_name_or_the_pod() {
    let (client, server) = mock_client();
    let pod_only = NodeNameSource {
        pod_name: Some("weft-abc".into()),
        ..NodeNameSource::default()
    };
    for source in [NodeNameSource::default(), pod_only] {
        let error = source.resolve(&client).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "env variables POD_NAME and POD_NAMESPACE must be set"
        );
    }
    let named = NodeNameSource {
        node_name: Some("n9".into()),
        pod_name: Some("weft-abc".into()),
        pod_namespace: Some("kube-flannel".into()),
    };
    assert_eq!(named.resolve(&client).await.unwrap(), "n9");
    drop(client);
    server.assert_done().await;
}

#[tokio::test(start_paused = true)]
async fn the_node_watch_lists_then_watches() {
    let (client, mut server) = mock_client();
    let mgr = manager(client);
    let (sink, mut outputs) = mpsc::channel::<TrackerOutput>(8);
    let watch = tokio::spawn(async move { mgr.watch_nodes(sink).await });
    let mut next_output = async || {
        tokio::time::timeout(CALL_TIMEOUT, outputs.recv())
            .await
            .expect("no output from watch_nodes")
            .expect("watch_nodes stopped")
    };

    let n1 = node("n1", Some("10.244.1.0/24"), &published("198.18.0.11"), 8);
    let n2 = node("n2", Some("10.244.2.0/24"), &published("198.18.0.12"), 9);
    let mut unmanaged = published("198.18.0.13");
    unmanaged.retain(|(k, _)| *k != "kube-subnet-manager");
    let n3 = node("n3", Some("10.244.3.0/24"), &unmanaged, 7);
    let list = json!({
        "apiVersion": "v1",
        "kind": "NodeList",
        "metadata": { "resourceVersion": "10" },
        "items": [n1.clone(), n2, n3],
    });
    let call = server.next_call("the Node LIST").await;
    assert_eq!(
        (&call.method, call.path.as_str()),
        (&Method::GET, "/api/v1/nodes"),
        "{call:?}"
    );
    assert_eq!(call.query, BTreeMap::from([("limit".into(), "500".into())]));
    call.ok(&list);

    let lease = |public_ip: &str| Lease {
        key: key("10.244.2.0-24"),
        attrs: LeaseAttrs {
            public_ip: public_ip.parse().unwrap(),
            ..vxlan_attrs()
        },
        etcd_lease: 0,
        expiration: None,
        revision: 0,
    };
    let snapshot = next_output().await;
    assert_eq!(
        snapshot.batch,
        Some(WatchBatch::Snapshot(vec![lease("198.18.0.12")]))
    );
    let own: Node = serde_json::from_value(n1).unwrap();
    assert_eq!(snapshot.own, Some(OwnNode::Present(Box::new(own))));
    assert!(snapshot.notices.is_empty(), "{:?}", snapshot.notices);

    let call = server.next_call("the Node WATCH").await;
    assert_eq!(
        (&call.method, call.path.as_str()),
        (&Method::GET, "/api/v1/nodes"),
        "{call:?}"
    );
    for (param, value) in [
        ("watch", "true"),
        ("resourceVersion", "10"),
        ("allowWatchBookmarks", "true"),
    ] {
        assert_eq!(
            call.query.get(param).map(String::as_str),
            Some(value),
            "{call:?}"
        );
    }
    for param in ["labelSelector", "fieldSelector", "sendInitialEvents"] {
        assert!(!call.query.contains_key(param), "{call:?}");
    }
    let moved = node("n2", Some("10.244.2.0/24"), &published("198.18.0.22"), 11);
    let mut deleted = moved.clone();
    deleted["metadata"]["resourceVersion"] = json!("12");
    call.stream(&[
        json!({ "type": "MODIFIED", "object": moved }),
        json!({ "type": "DELETED", "object": deleted }),
    ]);

    let update = next_output().await;
    assert_eq!(
        update.batch,
        Some(WatchBatch::Events(vec![DatastoreEvent::Put(lease(
            "198.18.0.22"
        ))]))
    );
    assert_eq!(update.own, None);
    let removal = next_output().await;
    match removal.batch {
        Some(WatchBatch::Events(events)) => match &events[..] {
            [DatastoreEvent::Delete { key: k, .. }] => assert_eq!(*k, key("10.244.2.0-24")),
            other => panic!("expected one Delete, got {other:?}"),
        },
        other => panic!("expected Events, got {other:?}"),
    }
    assert_eq!(removal.own, None);

    // The watch stays open: nothing more is sent or called.
    server.assert_idle().await;
    watch.abort();
    let _ = watch.await;
    assert!(outputs.recv().await.is_none(), "an extra output");
    server.assert_done().await;
}

/// Found on the first real cluster: with no route to the API server, the error said only
/// "ServiceError: client error (Connect)" for minutes. The message now carries the cause
/// at the bottom of kube's chain (here, nothing listens on the port).
#[tokio::test]
async fn a_failed_request_says_why() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let config = kube::Config::new(format!("http://{address}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let error = manager(client).get_node().await.unwrap_err().to_string();
    assert!(error.starts_with("cannot get node n1: "), "{error}");
    assert!(error.contains("Connection refused"), "{error}");
}

/// Found against the real API server (issue 28): kube-rs sends no User-Agent, so the API
/// server's audit log showed weftd's requests with an empty one. The client weftd builds
/// names itself, as flanneld does (here seen by a socket playing the API server).
#[tokio::test]
async fn the_client_names_itself_weftd() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buffer = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buffer).await.unwrap();
            assert!(n > 0, "the request ended early");
            head.extend_from_slice(&buffer[..n]);
        }
        let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
        let answer = format!(
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(answer.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&head).to_lowercase()
    });
    let client = weft_subnet::kube::client(&url, "").await.unwrap();
    let _ = manager(client).get_node().await;
    let head = server.await.unwrap();
    let expected = format!("user-agent: {}\r\n", weft_subnet::kube::USER_AGENT);
    assert!(head.contains(&expected), "{head}");
    assert!(weft_subnet::kube::USER_AGENT.starts_with("weftd/"));
}
