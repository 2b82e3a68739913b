//! Hostile or broken input from the datastore, end to end: three weftd nodes on vxlan
//! (network namespaces on an underlay bridge, a real etcd, pods through the CNI plugin),
//! then values a buggy or hostile client could write. Every node reads every lease, so
//! each of these once took down or partitioned the whole cluster. Asserted: no crash,
//! no foreign route touched, the node's own subnet intact, other peers unaffected, the
//! reason logged once, readiness unaffected.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::cluster::{CONFIG_KEY, Cluster};
use support::kernel_state::{fdb_entries, json, peer_routes, rows};
use support::netns::Netns;
use support::pods::{add_pod, ping};
use support::vxlan::{LIMIT, VxlanCluster, cluster, published};
use support::wait_for;

const SUBNETS: &str = "/coreos.com/network/subnets";

fn put_lease(v: &VxlanCluster, key: &str, value: &str) {
    v.c.etcd
        .etcdctl(&["put", &format!("{SUBNETS}/{key}"), value]);
}

fn vxlan_lease(public_ip: &str, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    )
}

/// Every pod pings every other pod.
fn all_pods_talk(v: &VxlanCluster) {
    for (i, from) in v.pods.iter().enumerate() {
        for (j, to) in v.pods.iter().enumerate() {
            if i != j {
                assert!(ping(&from.ns, &to.ip, 2), "pod {i} -> pod {j} ({})", to.ip);
            }
        }
    }
}

/// Every node is running and ready.
fn all_ready(v: &mut VxlanCluster) {
    for host in 0..v.pods.len() {
        assert!(v.c.nodes[host].is_running(), "weftd on node {host} exited");
        wait_for("/readyz 200", LIMIT, || {
            (v.c.readyz(host).0 == 200).then_some(())
        });
    }
}

/// Waits until every node has logged `needle` once, and checks that it stays once.
fn logged_once_everywhere(v: &VxlanCluster, needle: &str) {
    for node in &v.c.nodes {
        node.wait_log(needle, LIMIT);
    }
    // Several reconcile passes later, still once.
    std::thread::sleep(Duration::from_millis(2500));
    for (host, node) in v.c.nodes.iter().enumerate() {
        assert_eq!(
            node.log_count(needle),
            1,
            "node {host} logged {needle:?} more than once:\n{}",
            node.log()
        );
    }
}

/// The connected route of the underlay, as `ip -j route show exact`.
fn route_exact(ns: &Netns, prefix: &str) -> Vec<String> {
    let routes = json(ns, &["ip", "-j", "route", "show", "exact", prefix]);
    rows(&routes)
        .iter()
        .map(|r| {
            format!(
                "{} dev {} proto {}",
                r["dst"].as_str().unwrap_or(""),
                r["dev"].as_str().unwrap_or(""),
                // iproute2 leaves out the default protocol, boot.
                r["protocol"].as_str().unwrap_or("boot")
            )
        })
        .collect()
}

#[test]
fn a_lease_value_that_used_to_panic_every_node_is_skipped() {
    let mut v = cluster(3);
    // Reproduction 1: a wrong-typed field holding a long non-ASCII string.
    let value = format!(
        r#"{{"PublicIP":["{}éééé"],"BackendType":"vxlan"}}"#,
        "a".repeat(58)
    );
    put_lease(&v, "10.244.200.0-24", &value);
    logged_once_everywhere(&v, "skipping malformed entry in etcd");
    all_ready(&mut v);
    all_pods_talk(&v);
    // A restart lists the same value again: no crash loop.
    assert!(v.c.nodes[0].terminate().success());
    let n = v.c.start(0, &["--reconcile-interval=1"]);
    v.c.nodes.swap(0, n);
    v.c.nodes.truncate(3);
    v.c.nodes[0].wait_log("weftd is ready", LIMIT);
    assert!(v.c.nodes[0].is_running());
    all_pods_talk(&v);
}

#[test]
fn leases_outside_the_network_never_touch_the_underlay() {
    let mut v = cluster(3);
    let ns0 = &v.c.underlay.hosts[0].ns;
    let underlay_before = route_exact(ns0, "198.18.0.0/24");
    assert_eq!(underlay_before, ["198.18.0.0/24 dev eth0 proto kernel"]);
    let default_before = route_exact(ns0, "0.0.0.0/0");
    // Reproduction 2: the underlay's own /24, a /8 and the default route as leases.
    for (key, mac) in [
        ("198.18.0.0-24", "0a:00:00:00:00:51"),
        ("10.0.0.0-8", "0a:00:00:00:00:52"),
        ("0.0.0.0-0", "0a:00:00:00:00:53"),
    ] {
        put_lease(&v, key, &vxlan_lease("198.18.0.99", mac));
    }
    for needle in [
        "its subnet 198.18.0.0/24 is outside the cluster network 10.244.0.0/16",
        "its subnet 10.0.0.0/8 is outside the cluster network 10.244.0.0/16",
        "its subnet 0.0.0.0/0 is outside the cluster network 10.244.0.0/16",
    ] {
        logged_once_everywhere(&v, needle);
    }
    for host in 0..3 {
        let ns = &v.c.underlay.hosts[host].ns;
        assert_eq!(
            route_exact(ns, "198.18.0.0/24"),
            underlay_before,
            "node {host}"
        );
        assert_eq!(route_exact(ns, "0.0.0.0/0"), default_before, "node {host}");
        assert!(route_exact(ns, "10.0.0.0/8").is_empty(), "node {host}");
        assert_eq!(peer_routes(ns).len(), 2, "node {host}: only the real peers");
    }
    all_ready(&mut v);
    all_pods_talk(&v);
}

#[test]
fn a_lease_inside_a_nodes_own_subnet_is_rejected() {
    let mut v = cluster(3);
    let leases = published(&v.c);
    let own0 = leases
        .iter()
        .find(|l| l.2 == v.c.underlay.hosts[0].ip)
        .unwrap()
        .clone();
    // Reproduction 3: the upper half of node 0's /24 as someone else's /25.
    let octets: Vec<&str> = own0.0.split('.').collect();
    let half = format!("{}.{}.{}.128", octets[0], octets[1], octets[2]);
    put_lease(
        &v,
        &format!("{half}-25"),
        &vxlan_lease("198.18.0.99", "0a:00:00:00:00:61"),
    );
    logged_once_everywhere(&v, &format!("its subnet {half}/25 is not a /24"));
    for host in 0..3 {
        let ns = &v.c.underlay.hosts[host].ns;
        assert!(
            route_exact(ns, &format!("{half}/25")).is_empty(),
            "node {host} routes half of node 0's pods away"
        );
    }
    all_ready(&mut v);
    all_pods_talk(&v);
}

#[test]
fn a_lease_claiming_another_nodes_vtep_mac_is_rejected() {
    let mut v = cluster(3);
    let leases = published(&v.c);
    let node1 = leases
        .iter()
        .find(|l| l.2 == v.c.underlay.hosts[1].ip)
        .unwrap()
        .clone();
    // Reproduction 4: node 1's VTEP MAC at another public IP.
    put_lease(&v, "10.244.201.0-24", &vxlan_lease("198.18.0.99", &node1.3));
    for host in [0, 2] {
        v.c.nodes[host].wait_log(
            &format!("its VTEP MAC {} is already used by the peer lease", node1.3),
            LIMIT,
        );
    }
    std::thread::sleep(Duration::from_millis(2500));
    for host in [0, 2] {
        let fdb = fdb_entries(&v.c.underlay.hosts[host].ns);
        assert!(
            fdb.contains(&(node1.3.clone(), node1.2.clone())),
            "node {host}: node 1's FDB entry was repointed: {fdb:?}"
        );
        assert!(!fdb.iter().any(|e| e.1 == "198.18.0.99"), "{fdb:?}");
    }
    all_ready(&mut v);
    all_pods_talk(&v);
}

#[test]
fn leases_with_broadcast_addresses_are_rejected_and_nodes_stay_ready() {
    let mut v = cluster(3);
    // Reproduction 5: public IPs and VTEP MACs that would broadcast pod traffic or make
    // every pass fail.
    let bad = [
        ("10.244.210.0-24", "255.255.255.255", "0a:00:00:00:00:71"),
        ("10.244.211.0-24", "224.0.0.1", "0a:00:00:00:00:72"),
        ("10.244.212.0-24", "127.0.0.1", "0a:00:00:00:00:73"),
        ("10.244.213.0-24", "198.18.0.98", "ff:ff:ff:ff:ff:ff"),
        ("10.244.214.0-24", "198.18.0.97", "01:00:5e:00:00:01"),
        ("10.244.215.0-24", "198.18.0.96", "00:00:00:00:00:00"),
    ];
    for (key, ip, mac) in bad {
        put_lease(&v, key, &vxlan_lease(ip, mac));
    }
    logged_once_everywhere(&v, "its public IP 255.255.255.255 is the broadcast address");
    logged_once_everywhere(
        &v,
        "its VTEP MAC ff:ff:ff:ff:ff:ff is not a unicast address",
    );
    for host in 0..3 {
        let ns = &v.c.underlay.hosts[host].ns;
        let fdb = fdb_entries(ns);
        for (_, ip, mac) in bad {
            assert!(
                !fdb.iter().any(|e| e.0 == mac || e.1 == ip),
                "node {host}: {fdb:?}"
            );
        }
        assert_eq!(peer_routes(ns).len(), 2, "node {host}");
        assert!(
            !v.c.nodes[host].log().contains("datapath change failed"),
            "node {host}: a pass failed:\n{}",
            v.c.nodes[host].log()
        );
    }
    all_ready(&mut v);
    all_pods_talk(&v);
}

#[test]
fn a_foreign_route_on_a_peer_prefix_is_left_alone_and_config_changes_are_logged() {
    let mut v = cluster(3);
    let ns0 = &v.c.underlay.hosts[0].ns;
    // An admin's static route on node 0 for a prefix a (legitimate-looking) peer claims.
    ns0.ip(&[
        "route",
        "add",
        "10.244.220.0/24",
        "via",
        "198.18.0.1",
        "dev",
        "eth0",
    ]);
    let before = route_exact(ns0, "10.244.220.0/24");
    assert_eq!(before, ["10.244.220.0/24 dev eth0 proto boot"]);
    put_lease(
        &v,
        "10.244.220.0-24",
        &vxlan_lease("198.18.0.99", "0a:00:00:00:00:81"),
    );
    v.c.nodes[0].wait_log(
        "not installing the route for peer subnet 10.244.220.0/24: the foreign route \
         `10.244.220.0/24 via 198.18.0.1 dev eth0 proto boot` is there",
        LIMIT,
    );
    // Node 1 has no such route, so it programs the peer as usual.
    wait_for("node 1 to program the peer", LIMIT, || {
        (peer_routes(&v.c.underlay.hosts[1].ns).len() == 3).then_some(())
    });
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        route_exact(&v.c.underlay.hosts[0].ns, "10.244.220.0/24"),
        before
    );
    assert_eq!(
        v.c.nodes[0].log_count("not installing the route for peer subnet 10.244.220.0/24"),
        1
    );
    // A changed network config: logged, the node keeps the one it started with.
    v.c.etcd.etcdctl(&[
        "put",
        CONFIG_KEY,
        r#"{"Network":"10.99.0.0/16","Backend":{"Type":"vxlan"}}"#,
    ]);
    for node in &v.c.nodes {
        node.wait_log("keeps running on the config it started with", LIMIT);
    }
    all_ready(&mut v);
    all_pods_talk(&v);
}

#[test]
fn a_network_over_the_underlay_or_an_impossible_vni_is_refused() {
    // Reproduction 8: a Network that contains the underlay.
    let mut c = Cluster::new(1, true);
    c.etcd.etcdctl(&[
        "put",
        CONFIG_KEY,
        r#"{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan"}}"#,
    ]);
    c.start(0, &[]);
    let status = c.nodes[0].wait_exit(LIMIT);
    assert!(!status.success());
    let log = c.nodes[0].log();
    assert!(
        log.contains(
            "the cluster network 198.18.0.0/16 overlaps 198.18.0.0/24 on eth0, this node's \
             external interface"
        ),
        "{log}"
    );
    assert!(c.subnets_in_etcd().is_empty(), "no lease taken");
    // A VNI whose device name cannot exist: not ready, with the reason.
    c.etcd.etcdctl(&[
        "put",
        CONFIG_KEY,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":10000000}}"#,
    ]);
    c.start(0, &[]);
    let body = wait_for("/readyz to name the VNI", LIMIT, || {
        let (code, body) = c.readyz(0);
        (code == 503 && body.contains("VNI")).then_some(body)
    });
    assert!(
        body.contains("expected at most 9999999, so that the device name flannel.<VNI> fits"),
        "{body}"
    );
    assert!(c.nodes[1].is_running());
}

/// Pings from pod 0 to every other pod, every 200 ms, until stopped; counts failures.
struct ContinuousPing {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ContinuousPing {
    fn start(v: &VxlanCluster) -> ContinuousPing {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(AtomicUsize::new(0));
        let from = v.pods[0].ns.name.clone();
        let targets: Vec<String> = v.pods[1..].iter().map(|p| p.ip.clone()).collect();
        let (s, f, n) = (stop.clone(), failures.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            // Bounded: at most 5 minutes, whatever happens to the test.
            while !s.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(300) {
                for target in &targets {
                    let ok = std::process::Command::new("ip")
                        .args([
                            "netns", "exec", &from, "ping", "-c", "1", "-W", "1", "-q", target,
                        ])
                        .output()
                        .is_ok_and(|o| o.status.success());
                    n.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        ContinuousPing {
            stop,
            failures,
            sent,
            thread: Some(thread),
        }
    }

    /// Stops and returns (sent, failed).
    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }
}

/// The subnet keys in etcd, sorted.
fn subnet_keys(c: &Cluster) -> Vec<String> {
    let mut keys: Vec<String> = c.subnets_in_etcd().into_iter().map(|(k, _)| k).collect();
    keys.sort();
    keys
}

#[test]
fn pods_keep_talking_through_an_etcd_restore_and_an_emptied_etcd() {
    let mut v = cluster(3);
    let before = subnet_keys(&v.c);
    assert_eq!(before.len(), 3);
    let backup = tempfile::tempdir().unwrap();
    let restore_backup = backup.path().join("backup.db");

    // Reproduction 6a: etcd restored from a backup. Writes after the backup push the
    // revision past it; the restore takes it back, so a watch resuming at the old
    // revision would wait for a revision that is now in the future.
    let pinging = ContinuousPing::start(&v);
    v.c.etcd.snapshot_save(&restore_backup);
    for i in 0..5 {
        v.c.etcd
            .etcdctl(&["put", "/coreos.com/network/marker", &format!("write {i}")]);
    }
    v.c.etcd.restore_from(&restore_backup);
    for node in &v.c.nodes {
        node.wait_log("etcd went back in time", LIMIT);
    }
    wait_for("leases as before the restore", LIMIT, || {
        (subnet_keys(&v.c) == before).then_some(())
    });
    all_ready(&mut v);

    // Reproduction 6b: etcd restarted with an empty data directory.
    v.c.etcd.restart_empty();
    wait_for(
        "every node to re-create its lease in the empty etcd",
        LIMIT,
        || (subnet_keys(&v.c) == before).then_some(()),
    );
    let (sent, failed) = pinging.finish();
    assert!(sent >= 6, "the pinger ran ({sent} pings)");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} pings failed across the resets"
    );
    all_ready(&mut v);
    // New leases are seen again: a fourth node joins (the operator puts the config back).
    v.c.etcd
        .etcdctl(&["put", CONFIG_KEY, support::vxlan::VXLAN_CONFIG]);
    v.c.underlay.add_host(
        &format!("{}-n4", v.c.underlay.ns.name.trim_end_matches("-ul")),
        "198.18.0.14",
    );
    let n = v.c.start(3, &["--reconcile-interval=30"]);
    v.c.nodes[n].wait_log("weftd is ready", LIMIT);
    wait_for("node 0 to program the new node", LIMIT, || {
        (peer_routes(&v.c.underlay.hosts[0].ns).len() == 3).then_some(())
    });
    let pod = add_pod(
        &v.c.underlay.hosts[3].ns,
        &format!("{}-p", v.c.underlay.hosts[3].ns.name),
        &v.c.node_dir(3),
    );
    assert!(
        ping(&v.pods[0].ns, &pod.ip, 2),
        "pod 0 -> the new node's pod"
    );
    // A node restarted after the reset sees every peer and cuts nobody off.
    assert!(v.c.nodes[2].terminate().success());
    let n = v.c.start(2, &["--reconcile-interval=30"]);
    v.c.nodes[n].wait_log("weftd is ready", LIMIT);
    assert_eq!(peer_routes(&v.c.underlay.hosts[2].ns).len(), 3);
    all_pods_talk(&v);
    v.pods.push(pod);
}
