//! End to end: flannel's traffic rules installed by the weftd binary (etcd mode, vxlan),
//! seen from packets. Pods are created through the CNI plugin; "the internet" is a
//! namespace behind the underlay gateway. Masquerade rewrites only traffic that leaves
//! the cluster network; without `--ip-masq` nothing is rewritten; a node whose FORWARD
//! policy is DROP still forwards pod traffic with the forward rules, and not without.
//! Rules deleted by an admin are repaired by the `--iptables-resync` check.

mod support;

use std::time::Duration;
use support::cluster::{CONFIG_KEY, Cluster};
use support::netns::{INTERNET_HOST, INTERNET_HOST_V6, Netns, internet};
use support::pods::{ping, tcp_source_seen, udp_source_seen};
use support::prometheus::{Scrape, scrape};
use support::rules::{
    Tools, flannel_forward, flannel_lines, flannel_masq, flannel_save, nft_table, run_ok, tool_dir,
};
use support::unique;
use support::vxlan::{LIMIT, VXLAN_CONFIG, VxlanCluster, cluster_with, published};
use support::wait_for;

const NETWORK: &str = "10.244.0.0/16";

/// Bound for a repair by the 1 s resync (generous: the machine is shared).
const REPAIR: Duration = Duration::from_secs(10);

/// Node `host`'s subnet, as published in etcd.
fn own_subnet(v: &VxlanCluster, host: usize) -> String {
    let ip = &v.c.underlay.hosts[host].ip;
    published(&v.c)
        .into_iter()
        .find(|l| &l.2 == ip)
        .map(|l| l.1)
        .expect("the node's lease")
}

fn internet_ns(v: &VxlanCluster) -> Netns {
    internet(&v.c.underlay, &unique("wi-net"))
}

#[test]
fn masquerade_rewrites_only_traffic_that_leaves_the_cluster() {
    let v = cluster_with(2, VXLAN_CONFIG, &["--ip-masq", "--iptables-resync=1"]);
    let net = internet_ns(&v);
    let node0 = &v.c.underlay.hosts[0];
    let env = std::fs::read_to_string(&v.c.nodes[0].subnet_file).unwrap();
    assert!(env.contains("FLANNEL_IPMASQ=true\n"), "{env}");

    // Pod → internet: arrives with the node's address, and gets answers.
    assert_eq!(
        udp_source_seen(&net, INTERNET_HOST, &v.pods[0].ns, 9001).as_deref(),
        Some(node0.ip.as_str())
    );
    assert!(ping(&v.pods[0].ns, INTERNET_HOST, 2), "pod → internet");
    // Pod → pod on another node keeps the pod address.
    assert_eq!(
        tcp_source_seen(&v.pods[1].ns, &v.pods[1].ip, &v.pods[0].ns, 7001),
        v.pods[0].ip
    );

    // The rules are flannel's, for this node's subnet.
    let p = own_subnet(&v, 0);
    let want = flannel_save(
        &flannel_forward(NETWORK),
        &flannel_masq(NETWORK, &p, "224.0.0.0/4", true),
    );
    assert_eq!(flannel_lines(&node0.ns, "iptables-save"), want);
    let rule_repairs = |m: &Scrape| {
        m.value(
            "weft_datapath_changes_total",
            &[("kind", "rule"), ("cause", "drift_repair")],
        )
    };
    let before = scrape(&node0.ns);
    assert_eq!(rule_repairs(&before), 0.0, "a healthy node repairs nothing");
    assert!(
        before.value(
            "weft_datapath_changes_total",
            &[("kind", "rule"), ("cause", "startup")]
        ) >= 1.0,
        "installing the rules counts as startup"
    );

    // An admin flushes the chain: repaired by the next check, pods masqueraded again.
    run_ok(
        &node0.ns,
        &["iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"],
    );
    wait_for("FLANNEL-POSTRTG refilled", REPAIR, || {
        (flannel_lines(&node0.ns, "iptables-save") == want).then_some(())
    });
    v.c.nodes[0].wait_log(
        "traffic rules: set iptables nat/FLANNEL-POSTRTG (IPv4)",
        LIMIT,
    );
    // One chain rewritten: one rule repair in /metrics.
    assert_eq!(rule_repairs(&scrape(&node0.ns)), 1.0);
    assert_eq!(
        udp_source_seen(&net, INTERNET_HOST, &v.pods[0].ns, 9002).as_deref(),
        Some(node0.ip.as_str())
    );
}

#[test]
fn without_ip_masq_nothing_is_rewritten() {
    let v = cluster_with(2, VXLAN_CONFIG, &[]);
    let net = internet_ns(&v);
    let node0 = &v.c.underlay.hosts[0];
    let env = std::fs::read_to_string(&v.c.nodes[0].subnet_file).unwrap();
    assert!(env.contains("FLANNEL_IPMASQ=false\n"), "{env}");
    assert_eq!(
        udp_source_seen(&net, INTERNET_HOST, &v.pods[0].ns, 9003).as_deref(),
        Some(v.pods[0].ip.as_str()),
        "the internet sees the pod's own address"
    );
    assert_eq!(
        tcp_source_seen(&v.pods[1].ns, &v.pods[1].ip, &v.pods[0].ns, 7003),
        v.pods[0].ip
    );
    // Only the forward rules (on by default).
    assert_eq!(
        flannel_lines(&node0.ns, "iptables-save"),
        flannel_forward(NETWORK)
    );
}

#[test]
fn forward_rules_carry_pod_traffic_through_a_drop_policy() {
    let mut v = cluster_with(2, VXLAN_CONFIG, &["--iptables-resync=1"]);
    // Docker's default on a node: FORWARD policy DROP.
    for host in &v.c.underlay.hosts {
        run_ok(&host.ns, &["iptables", "-P", "FORWARD", "DROP"]);
    }
    assert!(
        ping(&v.pods[0].ns, &v.pods[1].ip, 2),
        "pod → pod across nodes with FORWARD DROP and the forward rules"
    );
    assert!(ping(&v.pods[1].ns, &v.pods[0].ip, 2), "and back");

    // The chain removed by an admin: the check puts it back.
    let node0 = v.c.underlay.hosts[0].ns.name.clone();
    let ns0 = &v.c.underlay.hosts[0].ns;
    run_ok(ns0, &["iptables", "-F", "FLANNEL-FWD"]);
    wait_for("FLANNEL-FWD refilled", REPAIR, || {
        (flannel_lines(ns0, "iptables-save") == flannel_forward(NETWORK)).then_some(())
    });
    assert!(ping(&v.pods[0].ns, &v.pods[1].ip, 2), "after the repair");

    // Restarted with --iptables-forward-rules=false: weftd removes flannel's chain, and
    // the DROP policy stops pod traffic between nodes.
    for host in 0..2 {
        assert!(v.c.nodes[host].terminate().success());
    }
    for host in 0..2 {
        let n = v.c.start(
            host,
            &["--reconcile-interval=30", "--iptables-forward-rules=false"],
        );
        v.c.nodes[n].wait_log("weftd is ready", LIMIT);
    }
    for host in &v.c.underlay.hosts {
        assert!(
            flannel_lines(&host.ns, "iptables-save").is_empty(),
            "FLANNEL-FWD left in {}",
            host.ns.name
        );
    }
    assert!(
        !ping(&v.pods[0].ns, &v.pods[1].ip, 2),
        "pod traffic crossed {node0} although FORWARD is DROP and there are no forward rules"
    );
}

#[test]
fn dual_stack_masquerade_covers_both_families() {
    let v = cluster_with(
        2,
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
        &["--ip-masq"],
    );
    let net = internet_ns(&v);
    let node0 = &v.c.underlay.hosts[0];
    let pod = &v.pods[0];
    let pod6 = pod.ipv6().expect("the pod has an IPv6 address").to_string();
    // IPv6 addresses are usable once duplicate address detection is done (bounded).
    wait_for("the pod reaching the internet over IPv6", LIMIT, || {
        ping(&pod.ns, INTERNET_HOST_V6, 1).then_some(())
    });
    assert_eq!(
        udp_source_seen(&net, INTERNET_HOST_V6, &pod.ns, 9006).as_deref(),
        Some("fd00:198:18::11"),
        "IPv6 leaves with the node's address"
    );
    assert_eq!(
        udp_source_seen(&net, INTERNET_HOST, &pod.ns, 9007).as_deref(),
        Some(node0.ip.as_str())
    );
    // Pod to pod over IPv6 keeps the pod's address.
    let peer6 = v.pods[1].ipv6().expect("peer IPv6").to_string();
    wait_for("IPv6 pod to pod", LIMIT, || {
        ping(&pod.ns, &peer6, 1).then_some(())
    });
    assert_eq!(tcp_source_seen(&v.pods[1].ns, &peer6, &pod.ns, 7006), pod6);
    // ip6tables holds flannel's rules for the v6 network.
    let lines = flannel_lines(&node0.ns, "ip6tables-save");
    assert!(
        lines.contains(
            &r#"-A FLANNEL-POSTRTG -s fc00::/48 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#
                .to_string()
        ),
        "{lines:?}"
    );
}

const NFT_CONFIG: &str =
    r#"{"Network":"10.244.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#;

#[test]
fn nftables_mode_masquerades_repairs_and_removes_iptables_leftovers() {
    let v = cluster_with(2, NFT_CONFIG, &["--ip-masq", "--iptables-resync=1"]);
    let net = internet_ns(&v);
    let node0 = &v.c.underlay.hosts[0];
    let p = own_subnet(&v, 0);

    let table = nft_table(&node0.ns, "ip", "flannel-ipv4").expect("flannel-ipv4");
    for rule in [
        format!("ip saddr {p} ip daddr {NETWORK} return"),
        format!("ip saddr {NETWORK} ip daddr != 224.0.0.0/4 masquerade fully-random"),
        format!("ip saddr {NETWORK} accept"),
    ] {
        assert!(table.contains(&rule), "{rule} missing from\n{table}");
    }
    assert!(flannel_lines(&node0.ns, "iptables-save").is_empty());
    assert_eq!(
        udp_source_seen(&net, INTERNET_HOST, &v.pods[0].ns, 9004).as_deref(),
        Some(node0.ip.as_str())
    );
    assert_eq!(
        tcp_source_seen(&v.pods[1].ns, &v.pods[1].ip, &v.pods[0].ns, 7004),
        v.pods[0].ip
    );

    // An admin deletes the table: recreated by the next check.
    run_ok(&node0.ns, &["nft", "delete", "table", "ip", "flannel-ipv4"]);
    wait_for("flannel-ipv4 recreated", REPAIR, || {
        (nft_table(&node0.ns, "ip", "flannel-ipv4").as_deref() == Some(table.as_str()))
            .then_some(())
    });

    // flannel's iptables chains (say, from a run in iptables mode) are removed.
    run_ok(
        &node0.ns,
        &["iptables", "-t", "nat", "-N", "FLANNEL-POSTRTG"],
    );
    run_ok(
        &node0.ns,
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-j",
            "FLANNEL-POSTRTG",
        ],
    );
    wait_for("iptables leftovers removed", REPAIR, || {
        let save = node0.ns.exec(&["iptables-save", "-t", "nat"]);
        (!String::from_utf8_lossy(&save.stdout).contains("FLANNEL")).then_some(())
    });
    assert_eq!(
        udp_source_seen(&net, INTERNET_HOST, &v.pods[0].ns, 9005).as_deref(),
        Some(node0.ip.as_str())
    );
}

#[test]
fn rules_that_cannot_be_installed_keep_the_node_unready_until_fixed() {
    let mut c = Cluster::new(1, true);
    c.etcd.etcdctl(&["put", CONFIG_KEY, VXLAN_CONFIG]);
    let ns = &c.underlay.hosts[0].ns;
    // iptables-nft's nat table holding a native nftables rule iptables cannot read.
    run_ok(ns, &["nft", "add", "table", "ip", "nat"]);
    run_ok(
        ns,
        &[
            "nft",
            "add chain ip nat POSTROUTING { type nat hook postrouting priority 100; }",
        ],
    );
    run_ok(
        ns,
        &[
            "nft",
            "add rule ip nat POSTROUTING tcp dport { 1, 2 } masquerade",
        ],
    );
    let n = c.start(0, &["--ip-masq", "--iptables-resync=1"]);
    let body = wait_for("/readyz to name the traffic rules", LIMIT, || {
        let (code, body) = c.readyz(0);
        (code == 503 && body.contains("cannot install the traffic rules")).then_some(body)
    });
    assert!(body.contains("cannot read the nat table"), "{body}");
    c.nodes[n].wait_log("cannot install the traffic rules, retrying", LIMIT);
    c.nodes[n].wait_subnet_env(LIMIT);

    // The foreign rule goes: the next check installs the rules and the node is ready.
    run_ok(
        &c.underlay.hosts[0].ns,
        &["nft", "delete", "table", "ip", "nat"],
    );
    wait_for("ready once the rules are in", LIMIT, || {
        (c.readyz(0).0 == 200).then_some(())
    });
    let lines = flannel_lines(&c.underlay.hosts[0].ns, "iptables-save");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("-j MASQUERADE --random-fully")),
        "{lines:?}"
    );
}

/// A legacy-iptables host where something else holds the xtables lock: weftd waits for
/// it (`iptables-restore --wait`) instead of failing, and installs the rules once the
/// lock is free. The lock file is the test's own (`XTABLES_LOCKFILE`), not the host's.
#[test]
fn a_legacy_host_waits_for_the_xtables_lock() {
    let mut c = Cluster::new(1, true);
    c.etcd.etcdctl(&["put", CONFIG_KEY, VXLAN_CONFIG]);
    let tools = tool_dir(Tools::LegacyAsDefault);
    let lock = c.dir.path().join("xtables.lock");
    // Held by this test (flock, as iptables takes it) until released below.
    let holder = std::fs::File::create(&lock).unwrap();
    holder.lock().expect("take the test's xtables lock");
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", tools.path().display());
    let lock_text = lock.display().to_string();
    let n = c.start_with_env(
        0,
        &["--ip-masq", "--iptables-resync=1"],
        &[
            ("PATH", path.as_str()),
            ("XTABLES_LOCKFILE", lock_text.as_str()),
        ],
    );
    // weftd's iptables-restore is waiting for the lock (it shows up as a process in
    // the node's namespace), and the node is not ready meanwhile.
    let node = c.underlay.hosts[0].ns.name.clone();
    wait_for("iptables-restore waiting for the lock", LIMIT, || {
        let pids = std::process::Command::new("ip")
            .args(["netns", "pids", &node])
            .output()
            .ok()?;
        String::from_utf8_lossy(&pids.stdout)
            .split_whitespace()
            .any(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.starts_with("iptables-resto"))
            })
            .then_some(())
    });
    assert_eq!(c.readyz(0).0, 503);
    holder.unlock().expect("release the lock");
    wait_for("ready once the lock is free", LIMIT, || {
        (c.readyz(0).0 == 200).then_some(())
    });
    let ns = &c.underlay.hosts[0].ns;
    let p = {
        let env = std::fs::read_to_string(&c.nodes[n].subnet_file).unwrap();
        let subnet = env
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
            .expect("FLANNEL_SUBNET")
            .to_string();
        // 10.244.X.1/24 -> 10.244.X.0/24
        let (ip, len) = subnet.split_once('/').unwrap();
        let (head, _) = ip.rsplit_once('.').unwrap();
        format!("{head}.0/{len}")
    };
    assert_eq!(
        flannel_lines(ns, "iptables-legacy-save"),
        flannel_save(
            &flannel_forward(NETWORK),
            &flannel_masq(NETWORK, &p, "224.0.0.0/4", true)
        )
    );
    assert!(flannel_lines(ns, "iptables-nft-save").is_empty());
    assert_eq!(
        c.nodes[n].log_count("cannot install the traffic rules"),
        0,
        "{}",
        c.nodes[n].log()
    );
}
