//! A node's underlay address changed under a running weftd (vxlan, three namespace nodes,
//! a real etcd, pods through weft's CNI plugin): weftd chooses its interface again by the
//! same rules, re-creates its VXLAN device with the new `local`, publishes the new public
//! IP in its lease, and the other nodes follow; no restart, nothing stale anywhere. A
//! continuous ping across measures how long pods could not talk.

mod support;

use std::time::{Duration, Instant};
use support::kernel_state::{fdb_entries, json};
use support::pods::ping;
use support::vxlan::cluster;
use support::wait_for;

const FOLLOW: Duration = Duration::from_secs(20);

/// Waits until `flannel.1` in `node` has `local` as its local address.
fn wait_for_local(node: &support::netns::Netns, local: &str) {
    wait_for("flannel.1's local address to follow", FOLLOW, || {
        let link = json(
            node,
            &["ip", "-d", "-j", "link", "show", "dev", "flannel.1"],
        );
        (link[0]["linkinfo"]["info_data"]["local"] == local).then_some(())
    });
}

/// The leases in etcd: one carries `present` as its PublicIP, none `absent`.
fn assert_published(c: &support::cluster::Cluster, present: &str, absent: &str) {
    let leases = c.subnets_in_etcd();
    let has = |ip: &str| {
        leases
            .iter()
            .any(|(_, value)| value.contains(&format!("\"PublicIP\":\"{ip}\"")))
    };
    assert!(has(present), "{leases:?}");
    assert!(!has(absent), "{leases:?}");
}
const OLD: &str = "198.18.0.11";
const NEW: &str = "198.18.0.111";

#[test]
fn an_underlay_address_change_is_followed_live_and_peers_follow() {
    let v = cluster(3);
    let node = &v.c.underlay.hosts[0].ns;
    assert_eq!(v.c.underlay.hosts[0].ip, OLD, "the test's addressing");
    let subnet_env = std::fs::read_to_string(&v.c.nodes[0].subnet_file).unwrap();
    // A continuous ping from a pod on node 1 to the pod on node 0: 20 per second for
    // 15 s; what it loses measures the outage.
    let target = v.pods[0].ip.clone();
    let pinger = {
        let ns = v.pods[1].ns.name.clone();
        let target = target.clone();
        std::thread::spawn(move || {
            std::process::Command::new("ip")
                .args([
                    "netns", "exec", &ns, "ping", "-i", "0.05", "-c", "300", "-W", "1", "-q",
                    &target,
                ])
                .output()
                .expect("ping")
        })
    };

    std::thread::sleep(Duration::from_secs(1));
    let changed = Instant::now();
    node.ip(&["addr", "del", &format!("{OLD}/24"), "dev", "eth0"]);
    node.ip(&["addr", "add", &format!("{NEW}/24"), "dev", "eth0"]);
    // Node 0's device follows: local is the new address.
    wait_for_local(node, NEW);
    // The peers' FDB entries for node 0's VTEP point to the new address, none to the old.
    for peer in [1, 2] {
        let ns = &v.c.underlay.hosts[peer].ns;
        let followed = support::wait_for_result("the peers' FDB entries to follow", FOLLOW, || {
            let dsts: Vec<String> = fdb_entries(ns).into_iter().map(|(_, dst)| dst).collect();
            (dsts.iter().any(|d| d == NEW) && !dsts.iter().any(|d| d == OLD)).then_some(())
        });
        assert!(
            followed.is_some(),
            "node {peer}'s FDB entries did not follow: {:?}\nnode 0's log:\n{}\nnode {peer}'s log:\n{}",
            fdb_entries(ns),
            v.c.nodes[0].log(),
            v.c.nodes[peer].log()
        );
    }
    wait_for("pods to talk across again", FOLLOW, || {
        ping(&v.pods[1].ns, &target, 1).then_some(())
    });
    let resumed = changed.elapsed();
    let output = pinger.join().expect("the pinger");
    let summary = String::from_utf8_lossy(&output.stdout).into_owned();
    let received: u32 = summary
        .split(", ")
        .find_map(|part| part.strip_suffix(" received")?.parse().ok())
        .unwrap_or_else(|| panic!("no ping summary: {summary}"));
    let lost = 300 - received;
    println!(
        "BENCH readdress: pods talked across again {:.2} s after the address change \
         ({lost} of 300 pings at 50 ms lost, ~{:.2} s)",
        resumed.as_secs_f64(),
        f64::from(lost) * 0.05
    );
    assert!(received > 200, "most pings answered: {summary}");

    // The lease in etcd carries the new public IP; no restart; it said why.
    assert_published(&v.c, NEW, OLD);
    assert_eq!(v.c.nodes[0].log_count("lease acquired"), 1, "no restart");
    assert_eq!(
        v.c.nodes[0].log_count("lease re-acquired"),
        0,
        "the same subnet: {}",
        v.c.nodes[0].log()
    );
    assert_eq!(
        std::fs::read_to_string(&v.c.nodes[0].subnet_file).unwrap(),
        subnet_env,
        "subnet.env unchanged"
    );
    v.c.nodes[0].wait_log(
        &format!("this node's external interface changed: eth0 {OLD} (public {OLD}) -> eth0 {NEW} (public {NEW})"),
        FOLLOW,
    );
}

#[test]
fn a_public_ip_given_by_flag_is_kept_and_weftd_says_so() {
    let v = support::vxlan::cluster_with_flags(2, |host| match host {
        // A public address behind NAT, as --public-ip is meant for; the interface named.
        0 => vec!["--iface=eth0".to_string(), format!("--public-ip={OLD}")],
        _ => Vec::new(),
    });
    let node = &v.c.underlay.hosts[0].ns;
    node.ip(&["addr", "del", &format!("{OLD}/24"), "dev", "eth0"]);
    node.ip(&["addr", "add", &format!("{NEW}/24"), "dev", "eth0"]);
    v.c.nodes[0].wait_log(
        &format!("this node's external interface changed: eth0 {OLD} (public {OLD}) -> eth0 {NEW} (public {OLD})"),
        FOLLOW,
    );
    v.c.nodes[0].wait_log(
        "the public IP stays as --public-ip/--public-ipv6 set it",
        FOLLOW,
    );
    // The device's local address follows the interface; the published address does not.
    wait_for_local(node, NEW);
    assert_published(&v.c, OLD, NEW);
}

/// Kubernetes mode: the interface is chosen by the Node's InternalIP; weftd waits for
/// kubelet to name the new address (never falling back to another interface meanwhile),
/// then follows and publishes the new `public-ip` annotation, and the peers follow.
#[test]
fn in_kube_mode_the_node_follows_once_its_node_names_the_new_address() {
    use support::kube_cluster::KubeCluster;
    let mut c = KubeCluster::new(2);
    for host in 0..2 {
        c.register(host, &[&format!("10.244.{}.0/24", host + 1)]);
        c.start(host, &[]);
    }
    for host in 0..2 {
        c.nodes[host].wait_log("weftd is ready", FOLLOW);
    }
    let old = c.underlay.hosts[0].ip.clone();
    let new = "198.18.0.111";
    let node = &c.underlay.hosts[0].ns;
    node.ip(&["addr", "del", &format!("{old}/24"), "dev", "eth0"]);
    node.ip(&["addr", "add", &format!("{new}/24"), "dev", "eth0"]);
    // The Node still names the old address: nothing is followed (in particular not the
    // NAT interface the default route goes through).
    c.nodes[0].wait_log("waiting for kubelet to update it before following", FOLLOW);
    assert_eq!(c.annotation(0, "public-ip").as_deref(), Some(old.as_str()));
    // kubelet updates the Node's InternalIP.
    let name = c.node_name(0);
    c.api.update_node(&name, |node| {
        node["status"]["addresses"] = serde_json::json!([{"type": "InternalIP", "address": new}]);
    });
    wait_for("the public-ip annotation to follow", FOLLOW, || {
        (c.annotation(0, "public-ip").as_deref() == Some(new)).then_some(())
    });
    // The peer's FDB entry for node 0 follows.
    let peer = &c.underlay.hosts[1].ns;
    wait_for("the peer's FDB entries to follow", FOLLOW, || {
        let dsts: Vec<String> = fdb_entries(peer).into_iter().map(|(_, dst)| dst).collect();
        (dsts.iter().any(|d| d == new) && !dsts.contains(&old)).then_some(())
    });
    assert_eq!(c.nodes[0].log_count("lease acquired"), 1, "no restart");
}
