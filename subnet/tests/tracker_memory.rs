//! What the Node tracker holds while an initial listing arrives, counted by the allocator
//! (found against the real API server, issue 28: weftd kept every listed Node whole until
//! the listing ended, labels, conditions and managedFields included, and at 15,000 Nodes
//! that was most of its peak memory). Its own test binary: it reads the process's resident
//! memory, so nothing else may run beside it.

mod tracker_setup;

use kube::runtime::watcher::Event;
use serde_json::json;
use tracker_setup::{PREFIX, tracker};
use weft_subnet::kube::Node;

/// This process's resident memory (kB).
fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Node `i` as a real API server lists it: a kubelet's labels, addresses and conditions,
/// weft's annotations, and the managedFields of the two writers.
fn listed_node(i: usize) -> String {
    let name = format!("node-{i:05}");
    let ip = format!("198.19.{}.{}", i / 250, 1 + i % 250);
    let cidr = format!("10.{}.{}.0/24", 1 + i / 256, i % 256);
    let time = "2026-01-01T00:00:00Z";
    let conditions: Vec<_> = ["NetworkUnavailable", "MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
        .iter()
        .map(|kind| json!({"type": kind, "status": "False", "reason": format!("{kind}Reason"),
            "message": format!("kubelet reports {kind}"), "lastHeartbeatTime": time, "lastTransitionTime": time}))
        .collect();
    let fields = |keys: &[&str]| {
        let map: serde_json::Map<String, serde_json::Value> = keys
            .iter()
            .map(|k| {
                (
                    format!("f:{k}"),
                    json!({".": {}, "f:type": {}, "f:status": {}}),
                )
            })
            .collect();
        json!({"f:metadata": {"f:annotations": map.clone(), "f:labels": map.clone()}, "f:status": {"f:conditions": map}})
    };
    json!({
        "metadata": {
            "name": name, "uid": format!("{i:032x}"), "resourceVersion": format!("{}", 1000 + i),
            "creationTimestamp": time,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "m5.large", "topology.kubernetes.io/zone": "zone-a"},
            "annotations": {
                format!("{PREFIX}kube-subnet-manager"): "true",
                format!("{PREFIX}backend-type"): "vxlan",
                format!("{PREFIX}backend-data"): format!(r#"{{"VNI":1,"VtepMAC":"0a:58:c6:13:{:02x}:{:02x}"}}"#, i >> 8 & 255, i & 255),
                format!("{PREFIX}public-ip"): ip,
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
            "managedFields": [
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": time,
                 "fieldsType": "FieldsV1", "fieldsV1": fields(&["a", "b", "c", "d", "e", "f", "g", "h"])},
                {"manager": "weftd", "operation": "Update", "apiVersion": "v1", "time": time,
                 "fieldsType": "FieldsV1", "fieldsV1": fields(&["p", "q", "r", "s"]), "subresource": "status"},
            ],
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "conditions": conditions,
        },
    })
    .to_string()
}

/// A listing of 5,000 Nodes held by the tracker until `InitDone`: each Node read into its
/// lease as it arrives (a few hundred bytes), not kept (about 10 kB as parsed here, 50 MB
/// for the listing: what the process's resident memory would grow by).
#[test]
fn a_listing_in_progress_holds_leases_not_nodes() {
    const NODES: usize = 5_000;
    let mut tracker = tracker();
    let texts: Vec<String> = (0..NODES).map(listed_node).collect();
    tracker.apply(Event::Init);
    let before = rss_kb();
    for text in &texts {
        let node: Node = serde_json::from_str(text).unwrap();
        assert!(tracker.apply(Event::InitApply(node)).is_empty());
    }
    let grown = rss_kb().saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "resident memory grew by {grown} kB while the tracker took {NODES} listed Nodes"
    );
    let out = tracker.apply(Event::InitDone);
    assert_eq!(tracker.peer_count(), NODES - 1, "{:?}", out.notices);
}
