//! The fake Kubernetes API server of `support::kube_api`, driven through a real
//! `kube::Client`: paging, the watcher (including bookmarks and 410 re-lists), patch
//! semantics, errors and unreachability.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use support::kube_api::{FakeApiServer, node_json};

const LIMIT: Duration = Duration::from_secs(10);

fn client(server: &FakeApiServer) -> kube::Client {
    let config = kube::Config::new(server.url().parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn nodes(server: &FakeApiServer) -> Api<Node> {
    Api::all(client(server))
}

fn node(name: &str) -> Value {
    node_json(name, &["10.244.0.0/24"], "192.0.2.1")
}

fn rv(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn api_error<T: std::fmt::Debug>(result: kube::Result<T>) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

type Watcher = BoxStream<'static, Result<Event<Node>, watcher::Error>>;

fn start_watcher(server: &FakeApiServer) -> Watcher {
    watcher::watcher(nodes(server), watcher::Config::default().page_size(2)).boxed()
}

/// The next watcher event as "Init", "InitApply a", "InitDone", "Apply a" or "Delete a".
/// Errors are collected in `errors` (the watcher retries on the next poll).
async fn next_event(watcher: &mut Watcher, errors: &mut Vec<watcher::Error>) -> String {
    let next = async {
        loop {
            match watcher.next().await.expect("the watcher stream never ends") {
                Ok(event) => return event,
                Err(error) => {
                    errors.push(error);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    let event = tokio::time::timeout(LIMIT, next)
        .await
        .expect("watcher event");
    let name = |node: &Node| node.metadata.name.clone().unwrap();
    match event {
        Event::Init => "Init".into(),
        Event::InitApply(node) => format!("InitApply {}", name(&node)),
        Event::InitDone => "InitDone".into(),
        Event::Apply(node) => format!("Apply {}", name(&node)),
        Event::Delete(node) => format!("Delete {}", name(&node)),
    }
}

async fn next_events(
    watcher: &mut Watcher,
    errors: &mut Vec<watcher::Error>,
    n: usize,
) -> Vec<String> {
    let mut events = Vec::new();
    for _ in 0..n {
        events.push(next_event(watcher, errors).await);
    }
    events
}

#[tokio::test]
async fn lists_page_with_continue_tokens_and_report_the_resource_version() {
    let server = FakeApiServer::start_local();
    for name in ["node-c", "node-a", "node-e", "node-b", "node-d"] {
        server.create_node(node(name));
    }
    let api = nodes(&server);

    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let first_rv = first.metadata.resource_version.clone().unwrap();
    let mut names: Vec<String> = first
        .items
        .iter()
        .map(|n| n.metadata.name.clone().unwrap())
        .collect();
    let mut token = first.metadata.continue_.clone();
    assert!(token.is_some(), "a continue token after a partial page");
    let mut pages = 1;
    while let Some(continue_token) = token {
        let page = api
            .list(
                &ListParams::default()
                    .limit(2)
                    .continue_token(&continue_token),
            )
            .await
            .unwrap();
        assert_eq!(
            page.metadata.resource_version.as_deref(),
            Some(first_rv.as_str())
        );
        names.extend(page.items.iter().map(|n| n.metadata.name.clone().unwrap()));
        token = page.metadata.continue_.clone();
        pages += 1;
    }
    assert_eq!(names, ["node-a", "node-b", "node-c", "node-d", "node-e"]);
    assert_eq!(pages, 3);

    let all = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 5);
    assert!(all.metadata.continue_.is_none());
    let before: u64 = all.metadata.resource_version.unwrap().parse().unwrap();
    server.update_node("node-b", |node| {
        node["metadata"]["labels"] = json!({"x": "y"})
    });
    let after = api.list(&ListParams::default().limit(0)).await.unwrap();
    let after: u64 = after.metadata.resource_version.unwrap().parse().unwrap();
    assert!(after > before, "{after} > {before}");

    let requests = server.requests();
    assert_eq!(requests[0], "GET /api/v1/nodes?&limit=2", "{requests:?}");
    assert!(
        requests[1].starts_with("GET /api/v1/nodes?&limit=2&continue="),
        "{requests:?}"
    );
}

#[tokio::test]
async fn watcher_sees_the_initial_list_then_updates_and_deletes() {
    let server = FakeApiServer::start_local();
    server.set_bookmark_interval(Duration::from_millis(100));
    for name in ["a", "b", "c"] {
        server.create_node(node(name));
    }
    let mut watcher = start_watcher(&server);
    let mut errors = Vec::new();
    let events = next_events(&mut watcher, &mut errors, 5).await;
    assert_eq!(
        events,
        [
            "Init",
            "InitApply a",
            "InitApply b",
            "InitApply c",
            "InitDone"
        ]
    );

    // Several bookmarks arrive meanwhile; they are not events.
    tokio::time::sleep(Duration::from_millis(350)).await;
    server.update_node("a", |node| node["metadata"]["labels"] = json!({"x": "y"}));
    assert_eq!(next_event(&mut watcher, &mut errors).await, "Apply a");
    server.delete_node("b").unwrap();
    assert_eq!(next_event(&mut watcher, &mut errors).await, "Delete b");
    server.create_node(node("d"));
    assert_eq!(next_event(&mut watcher, &mut errors).await, "Apply d");
    assert!(errors.is_empty(), "{errors:?}");

    let requests = server.requests();
    let watches: Vec<&String> = requests
        .iter()
        .filter(|r| r.contains("watch=true"))
        .collect();
    assert_eq!(watches.len(), 1, "{requests:?}");
    assert!(
        watches[0].contains("allowWatchBookmarks=true"),
        "{watches:?}"
    );
    assert_eq!(requests.iter().filter(|r| r.contains("limit=2")).count(), 2);
}

#[tokio::test]
async fn raw_watch_replays_sends_bookmarks_and_ends_after_timeout_seconds() {
    let server = FakeApiServer::start_local();
    server.set_bookmark_interval(Duration::from_millis(200));
    let created = server.create_node(node("a"));
    let modified = server.update_node("a", |node| node["metadata"]["labels"] = json!({"x": "y"}));
    let api = nodes(&server);

    let start = Instant::now();
    let stream = api
        .watch(
            &WatchParams::default().timeout(1),
            &rv(&created).to_string(),
        )
        .await
        .unwrap();
    let events: Vec<_> = tokio::time::timeout(LIMIT, stream.collect::<Vec<_>>())
        .await
        .unwrap();
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    match &events[0] {
        Ok(WatchEvent::Modified(node)) => {
            assert_eq!(
                node.metadata.resource_version,
                Some(rv(&modified).to_string())
            );
        }
        other => panic!("expected MODIFIED first, got {other:?}"),
    }
    let bookmarks: Vec<String> = events[1..]
        .iter()
        .map(|event| match event {
            Ok(WatchEvent::Bookmark(bookmark)) => bookmark.metadata.resource_version.clone(),
            other => panic!("expected only bookmarks, got {other:?}"),
        })
        .collect();
    assert!(bookmarks.len() >= 3, "{bookmarks:?}");
    assert!(
        bookmarks.iter().all(|b| *b == rv(&modified).to_string()),
        "{bookmarks:?}"
    );

    // Without a resourceVersion: an ADDED per node, no bookmarks unless asked for.
    let stream = api
        .watch(&WatchParams::default().timeout(1).disable_bookmarks(), "0")
        .await
        .unwrap();
    let events: Vec<_> = tokio::time::timeout(LIMIT, stream.collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        matches!(&events[0], Ok(WatchEvent::Added(node)) if node.metadata.name.as_deref() == Some("a"))
    );
}

#[tokio::test]
async fn a_watch_from_a_compacted_version_gets_410_and_the_watcher_relists() {
    let server = FakeApiServer::start_local();
    server.set_bookmark_interval(Duration::from_millis(100));
    server.create_node(node("a"));
    server.create_node(node("b"));
    let mut watcher = start_watcher(&server);
    let mut errors = Vec::new();
    let events = next_events(&mut watcher, &mut errors, 4).await;
    assert_eq!(events, ["Init", "InitApply a", "InitApply b", "InitDone"]);

    // The watch is cut; meanwhile a node appears and the history is compacted, so the
    // watcher's resume point is gone when it reconnects.
    server.set_reachable(false);
    server.create_node(node("c"));
    server.compact();
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.set_reachable(true);

    let events = next_events(&mut watcher, &mut errors, 5).await;
    assert_eq!(
        events,
        [
            "Init",
            "InitApply a",
            "InitApply b",
            "InitApply c",
            "InitDone"
        ]
    );
    let expired = errors.iter().find_map(|error| match error {
        watcher::Error::WatchError(status) => Some(status),
        _ => None,
    });
    let expired = expired.unwrap_or_else(|| panic!("no 410 among {errors:?}"));
    assert_eq!((expired.code, expired.reason.as_str()), (410, "Expired"));
    assert!(
        expired.message.starts_with("too old resource version: "),
        "{}",
        expired.message
    );

    // And it keeps watching from the new list.
    server.update_node("c", |node| node["metadata"]["labels"] = json!({"x": "y"}));
    assert_eq!(next_event(&mut watcher, &mut errors).await, "Apply c");
}

#[tokio::test]
async fn patches_follow_kubernetes_semantics() {
    let server = FakeApiServer::start_local();
    let mut n1 = node("n1");
    n1["metadata"]["annotations"] = json!({"keep": "x"});
    n1["status"]["conditions"] = json!([
        {"type": "Ready", "status": "True", "reason": "KubeletReady"},
        {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"},
    ]);
    let created = server.create_node(n1);
    let api = nodes(&server);

    let patch = json!({
        "metadata": {"annotations": {"a/b": "1"}},
        "status": {"conditions": [{"type": "NetworkUnavailable", "status": "False"}]},
        "spec": {"podCIDR": "10.9.9.0/24"},
    });
    let patched = api
        .patch_status("n1", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    let patched = serde_json::to_value(patched).unwrap();
    assert_eq!(
        patched["metadata"]["annotations"],
        json!({"keep": "x", "a/b": "1"})
    );
    assert_eq!(
        patched["status"]["conditions"],
        json!([
            {"type": "Ready", "status": "True", "reason": "KubeletReady"},
            // Merged field by field, as a real strategic merge does.
            {"type": "NetworkUnavailable", "status": "False", "reason": "NoRouteCreated"},
        ])
    );
    assert_eq!(
        patched["status"]["addresses"],
        created["status"]["addresses"]
    );
    assert_eq!(
        patched["spec"], created["spec"],
        "spec is ignored on /status"
    );
    assert!(rv(&patched) > rv(&created));
    assert_eq!(server.node("n1").unwrap(), patched);
    assert!(
        server.requests().contains(
            &"PATCH /api/v1/nodes/n1/status? application/strategic-merge-patch+json".to_string()
        ),
        "{:?}",
        server.requests()
    );

    // A condition of a new type is appended.
    let added = json!({"status": {"conditions": [{"type": "Weft", "status": "True"}]}});
    let appended = api
        .patch_status("n1", &PatchParams::default(), &Patch::Strategic(&added))
        .await
        .unwrap();
    let types: Vec<String> = appended
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .map(|c| c.type_)
        .collect();
    assert_eq!(types, ["Ready", "NetworkUnavailable", "Weft"]);

    // A merge patch replaces lists and deletes with null.
    let merge = json!({"metadata": {"annotations": {"a/b": null}}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
    let merged = api
        .patch_status("n1", &PatchParams::default(), &Patch::Merge(&merge))
        .await
        .unwrap();
    let merged = serde_json::to_value(merged).unwrap();
    assert_eq!(merged["metadata"]["annotations"], json!({"keep": "x"}));
    assert_eq!(
        merged["status"]["conditions"],
        json!([{"type": "Ready", "status": "False"}])
    );
    assert!(rv(&merged) > rv(&patched));

    // No-op patches (including status changes through the main resource) keep the version.
    let same = api
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {"keep": "x"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        same.metadata.resource_version,
        Some(rv(&merged).to_string())
    );
    let ignored = api
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"conditions": []}})),
        )
        .await
        .unwrap();
    assert_eq!(serde_json::to_value(ignored).unwrap(), merged);
    // While the main resource does change the spec.
    let spec = api
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Strategic(&json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    assert_eq!(spec.spec.unwrap().unschedulable, Some(true));

    // Optimistic concurrency.
    let stale =
        json!({"metadata": {"resourceVersion": rv(&created).to_string(), "labels": {"x": "y"}}});
    let status = api_error(
        api.patch("n1", &PatchParams::default(), &Patch::Merge(&stale))
            .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Operation cannot be fulfilled on nodes \"n1\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let current = server.node("n1").unwrap();
    let fresh = json!({"metadata": {"resourceVersion": current["metadata"]["resourceVersion"], "labels": {"x": "y"}}});
    let labelled = api
        .patch("n1", &PatchParams::default(), &Patch::Merge(&fresh))
        .await
        .unwrap();
    assert_eq!(labelled.metadata.labels.unwrap()["x"], "y");

    let status = api_error(
        api.patch_status("nope", &PatchParams::default(), &Patch::Merge(&json!({})))
            .await,
    );
    assert_eq!(status.code, 404);
}

#[tokio::test]
async fn gets_creates_deletes_and_errors_are_status_objects() {
    let server = FakeApiServer::start_local();
    let client = client(&server);
    let api: Api<Node> = Api::all(client.clone());

    let status = api_error(api.get("nope").await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(status.message, "nodes \"nope\" not found");
    assert_eq!(
        status
            .details
            .as_ref()
            .map(|d| (d.name.as_str(), d.kind.as_str())),
        Some(("nope", "nodes"))
    );

    let created = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(node("n1")).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        created.metadata.resource_version,
        server.node("n1").unwrap()["metadata"]["resourceVersion"]
            .as_str()
            .map(String::from)
    );
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    let got = api.get("n1").await.unwrap();
    assert_eq!(got.spec.unwrap().pod_cidr.as_deref(), Some("10.244.0.0/24"));
    let status = api_error(
        api.create(
            &PostParams::default(),
            &serde_json::from_value(node("n1")).unwrap(),
        )
        .await,
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists")
    );

    let deleted = api.delete("n1", &DeleteParams::default()).await.unwrap();
    let deleted = deleted.left().expect("the deleted node");
    assert!(
        deleted
            .metadata
            .resource_version
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > rv(&serde_json::to_value(&created).unwrap())
    );
    assert_eq!(api_error(api.get("n1").await).code, 404);
    assert!(server.node("n1").is_none());

    server.create_pod("kube-system", "weft-abc", "n1");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let pod = pods.get("weft-abc").await.unwrap();
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("n1"));
    let status = api_error(pods.get("other").await);
    assert_eq!(
        (status.code, status.message.as_str()),
        (404, "pods \"other\" not found")
    );

    // JSON patches are not supported; unknown paths are 404; all answers are JSON.
    let request = |method: &str, uri: &str, content_type: &str| {
        hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", content_type)
            .body(b"[]".to_vec())
            .unwrap()
    };
    server.create_node(node("n2"));
    let json_patch = request("PATCH", "/api/v1/nodes/n2", "application/json-patch+json");
    let status = match client.request_text(json_patch).await {
        Err(kube::Error::Api(status)) => status,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (status.code, status.reason.as_str()),
        (415, "UnsupportedMediaType")
    );
    for uri in [
        "/api/v1/services",
        "/apis/apps/v1/deployments",
        "/api/v1/nodes/n2/proxy",
    ] {
        let status = match client
            .request_text(request("GET", uri, "application/json"))
            .await
        {
            Err(kube::Error::Api(status)) => status,
            other => panic!("{uri}: {other:?}"),
        };
        assert_eq!(status.code, 404, "{uri}");
    }
    let mut response =
        std::net::TcpStream::connect(server.url().trim_start_matches("http://")).unwrap();
    response
        .write_all(b"GET /api/v1/nodes/n2 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    response.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.contains("content-type: application/json\r\n"),
        "{text}"
    );
}

#[tokio::test]
async fn an_unreachable_server_fails_requests_quickly_until_it_is_back() {
    let server = FakeApiServer::start_local();
    server.create_node(node("a"));
    let api = nodes(&server);
    api.get("a").await.unwrap();

    server.set_reachable(false);
    for _ in 0..3 {
        let start = Instant::now();
        let result = tokio::time::timeout(LIMIT, api.get("a"))
            .await
            .expect("no hang");
        assert!(result.is_err(), "{result:?}");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }

    server.set_reachable(true);
    let node = tokio::time::timeout(LIMIT, api.get("a"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(node.metadata.name.as_deref(), Some("a"));
}
