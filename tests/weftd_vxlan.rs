//! End to end with the vxlan backend: three nodes (network namespaces on an underlay
//! bridge), a real etcd, the real weftd binary per node, and pods created through weft's
//! CNI plugin with the real bridge and host-local plugins. Asserts delivered packets,
//! preserved source addresses, flannel's kernel state, and recovery from faults.

mod support;

use std::time::{Duration, Instant};
use support::cluster::{CONFIG_KEY, Cluster};
use support::kernel_state::{fdb_entries, json, neighbours, peer_routes, rows};
use support::netns::Netns;
use support::pods::{add_pod, ping, tcp_source_seen};
use support::vxlan::{LIMIT, VxlanCluster, cluster, published};
use support::wait_for;

/// The issue's bound for repairs and removals.
const REPAIR: Duration = Duration::from_secs(2);

#[test]
fn pods_talk_across_nodes_without_nat_and_kernel_state_is_flannels() {
    let v = cluster(3);
    // Ping between pods on every pair of nodes.
    for (i, from) in v.pods.iter().enumerate() {
        for (j, to) in v.pods.iter().enumerate() {
            if i != j {
                assert!(
                    ping(&from.ns, &to.ip, 2),
                    "pod {i} ({}) cannot ping pod {j} ({})",
                    from.ip,
                    to.ip
                );
            }
        }
    }
    // TCP, and the receiver sees the sender's pod IP (no NAT), both directions.
    assert_eq!(
        tcp_source_seen(&v.pods[1].ns, &v.pods[1].ip, &v.pods[0].ns, 7001),
        v.pods[0].ip
    );
    assert_eq!(
        tcp_source_seen(&v.pods[0].ns, &v.pods[0].ip, &v.pods[2].ns, 7002),
        v.pods[2].ip
    );
    // Node to remote pod, and pod to remote node.
    assert!(
        ping(&v.c.underlay.hosts[0].ns, &v.pods[1].ip, 2),
        "node 0 -> pod on node 1"
    );
    assert!(
        ping(&v.pods[0].ns, &v.c.underlay.hosts[2].ip, 2),
        "pod on node 0 -> node 2"
    );

    // Kernel state equals what flannel programs, built from what the peers published.
    let leases = published(&v.c);
    assert_eq!(leases.len(), 3);
    for (host, h) in v.c.underlay.hosts.iter().enumerate() {
        let peers: Vec<_> = leases.iter().filter(|l| l.2 != h.ip).collect();
        let mut want_routes: Vec<_> = peers
            .iter()
            .map(|l| (l.1.clone(), l.0.clone(), true))
            .collect();
        want_routes.sort();
        assert_eq!(peer_routes(&h.ns), want_routes, "routes on node {host}");
        let mut want_fdb: Vec<_> = peers.iter().map(|l| (l.3.clone(), l.2.clone())).collect();
        want_fdb.sort();
        assert_eq!(fdb_entries(&h.ns), want_fdb, "fdb on node {host}");
        let mut want_neigh: Vec<_> = peers.iter().map(|l| (l.0.clone(), l.3.clone())).collect();
        want_neigh.sort();
        assert_eq!(neighbours(&h.ns), want_neigh, "neighbours on node {host}");
        // The device: flannel.1, VNI 1, nolearning, MTU 1450, the MAC it published.
        let own = leases.iter().find(|l| l.2 == h.ip).unwrap();
        let link = &json(&h.ns, &["ip", "-d", "-j", "link", "show", "flannel.1"])[0];
        assert_eq!(link["mtu"], 1450);
        assert_eq!(link["address"], own.3.as_str());
        assert_eq!(link["linkinfo"]["info_data"]["id"], 1);
        assert_eq!(link["linkinfo"]["info_data"]["learning"], false);
        let env = std::fs::read_to_string(v.c.nodes[host].subnet_file.clone()).unwrap();
        assert!(env.contains("FLANNEL_MTU=1450\n"), "{env}");
    }
}

#[test]
fn node_leaving_device_deleted_and_entries_deleted_are_repaired_fast() {
    let mut v = cluster(3);
    let leases = published(&v.c);
    let gone_ip = v.c.underlay.hosts[2].ip.clone();
    let gone = leases.iter().find(|l| l.2 == gone_ip).unwrap().clone();

    // Node 2 leaves: its weftd stops and its lease is deleted. Within 2 s its route,
    // neighbour and FDB entries are gone from both other nodes.
    drop(v.c.nodes.remove(2));
    v.c.etcd.etcdctl(&[
        "del",
        &format!("/coreos.com/network/subnets/{}", gone.1.replace('/', "-")),
    ]);
    let start = Instant::now();
    for host in 0..2 {
        let ns = &v.c.underlay.hosts[host].ns;
        wait_for(
            "the departed node's entries to go",
            REPAIR
                .saturating_sub(start.elapsed())
                .max(Duration::from_millis(100)),
            || {
                let clean = !peer_routes(ns).iter().any(|r| r.0 == gone.1)
                    && !fdb_entries(ns).iter().any(|e| e.0 == gone.3)
                    && !neighbours(ns).iter().any(|n| n.0 == gone.0);
                clean.then_some(())
            },
        );
    }

    // flannel.1 deleted by hand on node 0: back with all peer entries within 2 s.
    let ns0 = &v.c.underlay.hosts[0].ns;
    let before = (peer_routes(ns0), fdb_entries(ns0), neighbours(ns0));
    ns0.ip(&["link", "del", "flannel.1"]);
    wait_for("flannel.1 and its entries to come back", REPAIR, || {
        ((peer_routes(ns0), fdb_entries(ns0), neighbours(ns0)) == before).then_some(())
    });
    assert!(
        ping(&v.pods[0].ns, &v.pods[1].ip, 2),
        "pods talk again after the device came back"
    );

    // A route and an FDB entry deleted by hand: restored.
    let route = before.0[0].clone();
    let fdb = before.1[0].clone();
    ns0.ip(&["route", "del", &route.0]);
    ns0.exec(&[
        "bridge",
        "fdb",
        "del",
        &fdb.0,
        "dev",
        "flannel.1",
        "dst",
        &fdb.1,
        "self",
    ]);
    wait_for("route and FDB entry restored", REPAIR, || {
        ((peer_routes(ns0), fdb_entries(ns0)) == (before.0.clone(), before.1.clone())).then_some(())
    });
    assert!(ping(&v.pods[0].ns, &v.pods[1].ip, 2));
    let log = v.c.nodes[0].log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn restart_under_continuous_ping_loses_nothing() {
    let mut v = cluster(2);
    let subnet_before = std::fs::read_to_string(&v.c.nodes[0].subnet_file).unwrap();
    // 100 packets per second for 4 s from the pod on node 0 to the pod on node 1, while
    // weftd on node 0 is stopped and started again.
    let pinger = {
        let ns = v.pods[0].ns.name.clone();
        let target = v.pods[1].ip.clone();
        std::thread::spawn(move || {
            std::process::Command::new("ip")
                .args([
                    "netns", "exec", &ns, "ping", "-i", "0.01", "-c", "400", "-W", "1", "-q",
                    &target,
                ])
                .output()
                .expect("ping")
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let status = v.c.nodes[0].terminate();
    assert!(status.success());
    let again = v.c.start(0, &["--reconcile-interval=30"]);
    v.c.nodes[again].wait_log("weftd is ready", LIMIT);
    let output = pinger.join().unwrap();
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(
        summary.contains("400 packets transmitted, 400 received"),
        "packets lost across a restart: {summary}"
    );
    // Same subnet, and the restart adopted the device and entries without changing them.
    assert_eq!(
        std::fs::read_to_string(&v.c.nodes[again].subnet_file).unwrap(),
        subnet_before
    );
    let log = v.c.nodes[again].log();
    assert!(log.contains("VTEP MAC from the existing device"), "{log}");
    assert!(
        !log.contains("datapath converged"),
        "a restart must not change the datapath:\n{log}"
    );
}

#[test]
fn etcd_outage_keeps_pods_talking_and_bad_leases_are_ignored() {
    let mut v = cluster(2);
    // A malformed lease and a lease of another backend type: ignored, nothing disturbed.
    v.c.etcd.etcdctl(&[
        "put",
        "/coreos.com/network/subnets/10.244.250.0-24",
        "{not json",
    ]);
    v.c.etcd.etcdctl(&[
        "put",
        "/coreos.com/network/subnets/10.244.251.0-24",
        r#"{"PublicIP":"198.18.0.99","PublicIPv6":null,"BackendType":"host-gw"}"#,
    ]);
    v.c.nodes[0].wait_log("ignoring peer lease", LIMIT);
    assert!(ping(&v.pods[0].ns, &v.pods[1].ip, 2));
    assert_eq!(peer_routes(&v.c.underlay.hosts[0].ns).len(), 1);

    // etcd stopped for 30 s: pods keep talking the whole time.
    v.c.etcd.stop();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        assert!(
            ping(&v.pods[0].ns, &v.pods[1].ip, 1),
            "pods stopped talking {:?} into the etcd outage",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(v.c.nodes[0].is_running() && v.c.nodes[1].is_running());
    // etcd returns; weftd picks up changes again: a third node joins and is programmed.
    v.c.etcd.launch();
    v.c.underlay.add_host(
        &format!("{}-n3", v.c.underlay.ns.name.trim_end_matches("-ul")),
        "198.18.0.13",
    );
    let n = v.c.start(2, &["--reconcile-interval=30"]);
    v.c.nodes[n].wait_log("weftd is ready", LIMIT);
    wait_for("node 0 to program the new node", LIMIT, || {
        (peer_routes(&v.c.underlay.hosts[0].ns).len() == 2).then_some(())
    });
    let pod = add_pod(
        &v.c.underlay.hosts[2].ns,
        &format!("{}-p", v.c.underlay.hosts[2].ns.name),
        &v.c.node_dir(2),
    );
    assert!(
        ping(&v.pods[0].ns, &pod.ip, 2),
        "pod on node 0 -> pod on the new node"
    );
    v.pods.push(pod);
}

fn cluster_with(config: &str, nodes: usize) -> VxlanCluster {
    let mut c = Cluster::new(nodes, true);
    c.etcd.etcdctl(&["put", CONFIG_KEY, config]);
    for host in 0..nodes {
        c.start(host, &[]);
    }
    let pods = c.pods_when_ready(nodes, LIMIT);
    VxlanCluster { pods, c }
}

/// New IPv6 addresses (the pods', the bridges' gateways) are unusable until duplicate
/// address detection finishes, about a second after CNI ADD; wait for it (bounded).
fn settle_v6(from: &Netns, to: &str) {
    wait_for(
        "IPv6 duplicate address detection to finish",
        Duration::from_secs(10),
        || ping(from, to, 1).then_some(()),
    );
}

fn v6_routes(ns: &Netns) -> usize {
    let routes = json(
        ns,
        &["ip", "-6", "-j", "route", "show", "dev", "flannel-v6.1"],
    );
    rows(&routes)
        .iter()
        .filter(|r| r.get("gateway").is_some())
        .count()
}

#[test]
fn dual_stack_pods_talk_over_both_families() {
    let v = cluster_with(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
        2,
    );
    for host in 0..2 {
        let ns = &v.c.underlay.hosts[host].ns;
        wait_for("v4 and v6 peer routes", LIMIT, || {
            (peer_routes(ns).len() == 1 && v6_routes(ns) == 1).then_some(())
        });
        let env = std::fs::read_to_string(&v.c.nodes[host].subnet_file).unwrap();
        assert!(
            env.contains("FLANNEL_IPV6_NETWORK=fc00::/48\n") && env.contains("FLANNEL_MTU=1430\n"),
            "{env}"
        );
        let link = &json(ns, &["ip", "-d", "-j", "link", "show", "flannel-v6.1"])[0];
        assert_eq!(link["mtu"], 1430, "IPv6 underlay overhead is 70 bytes");
    }
    let (a, b) = (&v.pods[0], &v.pods[1]);
    assert!(ping(&a.ns, &b.ip, 2), "v4 pod to pod");
    let b6 = b.ipv6().expect("pod has an IPv6 address");
    settle_v6(&a.ns, b6);
    assert!(ping(&a.ns, b6, 2), "v6 pod to pod");
    assert_eq!(
        tcp_source_seen(&b.ns, b6, &a.ns, 7003),
        a.ipv6().unwrap(),
        "v6 source preserved"
    );
    let leases = v.c.subnets_in_etcd();
    assert!(
        leases
            .iter()
            .all(|(k, v)| k.contains('&') && v.contains("\"BackendV6Data\"")),
        "{leases:?}"
    );
}

#[test]
fn ipv6_only_network_in_etcd_mode() {
    let v = cluster_with(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
        2,
    );
    for host in 0..2 {
        let ns = &v.c.underlay.hosts[host].ns;
        wait_for("v6 peer route", LIMIT, || {
            (v6_routes(ns) == 1).then_some(())
        });
        let env = std::fs::read_to_string(&v.c.nodes[host].subnet_file).unwrap();
        assert!(
            !env.contains("FLANNEL_NETWORK") && env.contains("FLANNEL_IPV6_SUBNET=fc00:"),
            "{env}"
        );
    }
    let (a, b) = (&v.pods[0], &v.pods[1]);
    settle_v6(&a.ns, &b.ip);
    assert!(
        ping(&a.ns, &b.ip, 2),
        "v6-only pod to pod: {} -> {}",
        a.ip,
        b.ip
    );
    // The lease key is the bare IPv6 form; PublicIP is 0.0.0.0 as flannel writes unset v4.
    let leases = v.c.subnets_in_etcd();
    for (key, value) in &leases {
        assert!(
            key.rsplit('/').next().unwrap().starts_with("fc00:"),
            "{key}"
        );
        assert!(
            value.starts_with(r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:198:18::"#),
            "{value}"
        );
    }
}

#[test]
fn entries_of_a_peer_that_left_while_weftd_was_down_are_swept_at_startup() {
    let mut v = cluster(3);
    let leases = published(&v.c);
    let gone = leases
        .iter()
        .find(|l| l.2 == v.c.underlay.hosts[2].ip)
        .unwrap()
        .clone();
    // weftd on node 0 stops; meanwhile node 2 leaves the cluster.
    assert!(v.c.nodes[0].terminate().success());
    drop(v.c.nodes.remove(2));
    v.c.etcd.etcdctl(&[
        "del",
        &format!("/coreos.com/network/subnets/{}", gone.1.replace('/', "-")),
    ]);
    assert!(
        peer_routes(&v.c.underlay.hosts[0].ns)
            .iter()
            .any(|r| r.0 == gone.1),
        "the stale route is still there while weftd is down"
    );
    // On start, the first pass removes what no lease wants any more, and only that.
    let n = v.c.start(0, &["--reconcile-interval=30"]);
    v.c.nodes[n].wait_log("weftd is ready", LIMIT);
    let ns0 = &v.c.underlay.hosts[0].ns;
    let routes = peer_routes(ns0);
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert!(!fdb_entries(ns0).iter().any(|e| e.0 == gone.3));
    assert!(!neighbours(ns0).iter().any(|e| e.0 == gone.0));
    assert!(ping(&v.pods[0].ns, &v.pods[1].ip, 2));
}
