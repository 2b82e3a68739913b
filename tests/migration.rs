//! Live migration from flannel, node by node, and back: three nodes start under a
//! flannel-like daemon (tests/support/flannel_like.rs: flannel's kernel shape, lease JSON
//! and subnet.env), pods ping each other at 100 packets/s, and each node's daemon is
//! replaced by weftd in turn. Asserted: not one packet lost, subnets and VTEP MACs kept,
//! flannel's routes adopted (re-marked as weft's), a peer that leaves afterwards fully
//! removed, and a node switched back to flannel without loss.

mod support;

use std::time::Duration;
use support::cluster::{CONFIG_KEY, Cluster};
use support::flannel_like::{FastPing, FlannelNode};
use support::kernel_state::{fdb_entries, json, neighbours, peer_routes, rows};
use support::netns::Netns;
use support::pods::{Pod, add_pod, ping};
use support::vxlan::{LIMIT, VXLAN_CONFIG};
use support::wait_for;

/// Route protocols of the routes on flannel.1 (iproute2 names 91 by number).
fn route_protocols(ns: &Netns) -> Vec<String> {
    let routes = json(ns, &["ip", "-j", "route", "show", "dev", "flannel.1"]);
    rows(&routes)
        .iter()
        .filter(|r| r.get("gateway").is_some())
        .map(|r| r["protocol"].as_str().unwrap_or("boot").to_string())
        .collect()
}

/// Asserts that every ping got every reply.
fn no_loss(pings: Vec<FastPing>) {
    for ping in pings {
        let target = ping.target.clone();
        let (sent, received) = ping.stop();
        assert!(sent >= 100, "the ping to {target} ran ({sent} sent)");
        assert_eq!(
            received,
            sent,
            "{} of {sent} pings to {target} lost",
            sent - received
        );
    }
}

/// Every node's entries for `gone` are removed.
fn entries_gone(ns: &Netns, gone: &FlannelNode) {
    wait_for("the departed peer's route and entries to go", LIMIT, || {
        let route = peer_routes(ns).iter().any(|r| r.0 == gone.subnet);
        let neigh = neighbours(ns).iter().any(|n| n.0 == gone.network());
        let fdb = fdb_entries(ns).iter().any(|e| e.0 == gone.mac);
        (!route && !neigh && !fdb).then_some(())
    });
}

#[test]
fn etcd_nodes_move_from_flannel_to_weft_and_back_without_losing_a_packet() {
    let mut c = Cluster::new(3, true);
    c.etcd.etcdctl(&["put", CONFIG_KEY, VXLAN_CONFIG]);
    let flannel: Vec<FlannelNode> = (0..3)
        .map(|i| FlannelNode::new(i as u8, &c.underlay.hosts[i].ip))
        .collect();
    for (i, node) in flannel.iter().enumerate() {
        node.publish(&c.etcd);
        node.write_subnet_env(&c.node_dir(i).join("subnet.env"));
    }
    for (i, node) in flannel.iter().enumerate() {
        let peers: Vec<&FlannelNode> = flannel.iter().filter(|p| *p != node).collect();
        node.program(&c.underlay.hosts[i].ns, &peers);
    }
    let pods: Vec<Pod> = (0..3)
        .map(|i| {
            let ns = &c.underlay.hosts[i].ns;
            add_pod(ns, &format!("{}-p", ns.name), &c.node_dir(i))
        })
        .collect();
    assert!(
        ping(&pods[0].ns, &pods[1].ip, 2),
        "flannel-like cluster works"
    );

    let pings: Vec<FastPing> = [(0, 1), (1, 2), (2, 0)]
        .iter()
        .map(|&(a, b)| FastPing::start(&pods[a].ns, &pods[b].ip))
        .collect();
    for i in 0..3 {
        let n = c.start(i, &["--reconcile-interval=30"]);
        c.nodes[n].wait_log("weftd is ready", LIMIT);
        std::thread::sleep(Duration::from_secs(1));
    }
    no_loss(pings);

    // Subnets, VTEP MACs and the lease format are kept.
    for (i, node) in flannel.iter().enumerate() {
        let value = c
            .etcd
            .etcdctl(&["get", "--print-value-only", &node.etcd_key()]);
        assert_eq!(value.trim(), node.lease_json(), "node {i}'s lease");
        let env = std::fs::read_to_string(c.node_dir(i).join("subnet.env")).unwrap();
        let host = node.network().rsplit_once('.').unwrap().0;
        assert!(
            env.contains(&format!("FLANNEL_SUBNET={host}.1/24")),
            "{env}"
        );
        let ns = &c.underlay.hosts[i].ns;
        let link = json(ns, &["ip", "-j", "link", "show", "flannel.1"]);
        assert_eq!(rows(&link)[0]["address"], node.mac.as_str());
        // flannel's routes are weft's now: marked with its route protocol.
        assert_eq!(route_protocols(ns), ["91", "91"], "node {i}");
    }

    // A peer leaves: its route, neighbour and FDB entry go everywhere.
    assert!(c.nodes[2].terminate().success());
    c.etcd.etcdctl(&["del", &flannel[2].etcd_key()]);
    for host in 0..2 {
        entries_gone(&c.underlay.hosts[host].ns, &flannel[2]);
    }

    // The way back: node 0 returns to flannel (weftd tears nothing down on exit).
    let pings = vec![
        FastPing::start(&pods[0].ns, &pods[1].ip),
        FastPing::start(&pods[1].ns, &pods[0].ip),
    ];
    std::thread::sleep(Duration::from_millis(500));
    assert!(c.nodes[0].terminate().success());
    flannel[0].publish(&c.etcd);
    flannel[0].program(&c.underlay.hosts[0].ns, &[&flannel[1]]);
    std::thread::sleep(Duration::from_secs(2));
    no_loss(pings);
    assert_eq!(route_protocols(&c.underlay.hosts[0].ns), ["boot"]);
    assert!(ping(&pods[1].ns, &pods[0].ip, 2));
}

#[test]
fn kube_nodes_move_from_flannel_to_weft_and_back_without_losing_a_packet() {
    use support::kube_api::node_json;
    use support::kube_cluster::KubeCluster;
    let mut c = KubeCluster::new(3);
    let flannel: Vec<FlannelNode> = (0..3)
        .map(|i| FlannelNode::new(i as u8, &c.underlay.hosts[i].ip))
        .collect();
    // The Nodes as flannel left them: podCIDR, InternalIP, flannel's annotations.
    for (i, node) in flannel.iter().enumerate() {
        let mut object = node_json(&c.node_name(i), &[&node.subnet], &node.public_ip);
        object["metadata"]["annotations"] = node.annotations();
        c.api.create_node(object);
        node.write_subnet_env(&c.node_dir(i).join("subnet.env"));
        let peers: Vec<&FlannelNode> = flannel.iter().filter(|p| *p != node).collect();
        node.program(&c.underlay.hosts[i].ns, &peers);
    }
    for i in 0..3 {
        let ns = &c.underlay.hosts[i].ns;
        let pod = add_pod(ns, &format!("{}-p", ns.name), &c.node_dir(i));
        c.pods.push(pod);
    }
    assert!(
        ping(&c.pods[0].ns, &c.pods[1].ip, 2),
        "flannel-like cluster works"
    );

    let pings: Vec<FastPing> = [(0, 1), (1, 2), (2, 0)]
        .iter()
        .map(|&(a, b)| FastPing::start(&c.pods[a].ns, &c.pods[b].ip))
        .collect();
    for i in 0..3 {
        let n = c.start(i, &[]);
        c.nodes[n].wait_log("weftd is ready", LIMIT);
        std::thread::sleep(Duration::from_secs(1));
    }
    no_loss(pings);
    for (i, node) in flannel.iter().enumerate() {
        // The annotations flannel published are weft's as they are: same MAC, no patch.
        let object = c.api.node(&c.node_name(i)).unwrap();
        for (key, value) in node.annotations().as_object().unwrap() {
            assert_eq!(
                &object["metadata"]["annotations"][key], value,
                "node {i}: {key}"
            );
        }
        assert_eq!(
            route_protocols(&c.underlay.hosts[i].ns),
            ["91", "91"],
            "node {i}"
        );
    }
    for node in &c.nodes {
        // Nothing to patch: flannel's annotations already say what weft would publish.
        assert!(
            node.log()
                .contains("this node's annotations are up to date")
        );
        assert!(!node.log().contains("published this node's annotations"));
    }

    // A peer leaves: its Node is deleted; its entries go everywhere.
    assert!(c.nodes[2].terminate().success());
    c.api.delete_node(&c.node_name(2));
    for host in 0..2 {
        entries_gone(&c.underlay.hosts[host].ns, &flannel[2]);
    }

    // The way back for node 0.
    let pings = vec![
        FastPing::start(&c.pods[0].ns, &c.pods[1].ip),
        FastPing::start(&c.pods[1].ns, &c.pods[0].ip),
    ];
    std::thread::sleep(Duration::from_millis(500));
    assert!(c.nodes[0].terminate().success());
    flannel[0].program(&c.underlay.hosts[0].ns, &[&flannel[1]]);
    std::thread::sleep(Duration::from_secs(2));
    no_loss(pings);
}
