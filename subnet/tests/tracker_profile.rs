//! Where the Node tracker's time goes per Node change at 15,000 Nodes (issue 28: weftd's
//! CPU per Node deleted grew from 1.11 ms at 5,000 Nodes to 2.28 ms at 15,000 against a
//! real API server). Not a timed test: run under callgrind, which counts instructions,
//!
//!     valgrind --tool=callgrind --toggle-collect='*delete_series*' \
//!         target/release/deps/tracker_profile-* --ignored --exact changes_at_15000_nodes
//!
//! (or `*add_series*`) and read the inclusive counts with `callgrind_annotate
//! --inclusive=yes`. Figures in docs/benchmarks.md ("Kube mode against a real API server").

mod tracker_setup;

use kube::runtime::watcher::Event;
use serde_json::json;
use tracker_setup::{PREFIX, tracker};
use weft_subnet::kube::{Node, NodeTracker};

fn node(i: usize) -> Node {
    let name = format!("node-{i:05}");
    let ip = format!("198.19.{}.{}", i / 250, 1 + i % 250);
    let cidr = format!("10.{}.{}.0/24", 1 + i / 256, i % 256);
    serde_json::from_value(json!({
        "metadata": {
            "name": name, "resourceVersion": format!("{}", 1000 + i),
            "annotations": {
                format!("{PREFIX}kube-subnet-manager"): "true",
                format!("{PREFIX}backend-type"): "vxlan",
                format!("{PREFIX}backend-data"): format!(r#"{{"VNI":1,"VtepMAC":"0a:58:c6:13:{:02x}:{:02x}"}}"#, i >> 8 & 255, i & 255),
                format!("{PREFIX}public-ip"): ip,
            },
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    }))
    .unwrap()
}

/// Nodes deleted, one event at a time; the batches of peer events they gave.
#[inline(never)]
fn delete_series(tracker: &mut NodeTracker, nodes: &[Node]) -> usize {
    nodes
        .iter()
        .filter(|node| {
            tracker
                .apply(Event::Delete((*node).clone()))
                .batch
                .is_some()
        })
        .count()
}

/// Nodes added, one event at a time; the batches of peer events they gave.
#[inline(never)]
fn add_series(tracker: &mut NodeTracker, nodes: &[Node]) -> usize {
    nodes
        .iter()
        .filter(|node| tracker.apply(Event::Apply((*node).clone())).batch.is_some())
        .count()
}

#[test]
#[ignore = "a profile: run under callgrind (see the module docs)"]
fn changes_at_15000_nodes() {
    const NODES: usize = 15_000;
    let mut tracker = tracker();
    tracker.apply(Event::Init);
    for i in 0..NODES {
        tracker.apply(Event::InitApply(node(i)));
    }
    tracker.apply(Event::InitDone);
    assert_eq!(tracker.peer_count(), NODES - 1);
    let changed: Vec<Node> = (1..=100).map(|i| node(i * 100)).collect();
    assert_eq!(delete_series(&mut tracker, &changed), 100);
    assert_eq!(add_series(&mut tracker, &changed), 100);
}
