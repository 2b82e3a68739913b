//! End to end: the real weftd binary in network-namespace "nodes" on an underlay bridge,
//! against a real etcd running in the underlay namespace (alloc backend: lease +
//! subnet.env, no datapath). Faults: restarts, a deleted lease, etcd down at start and
//! during operation, malformed config and leases.

mod support;

use std::collections::HashSet;
use std::time::Duration;
use support::cluster::Cluster;
use support::wait_for;

use support::cluster::CONFIG_KEY;

const ALLOC_CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}"#;
const LIMIT: Duration = Duration::from_secs(30);

/// FLANNEL_SUBNET of a subnet.env, e.g. "10.244.7.1/24".
fn flannel_subnet(env: &str) -> String {
    env.lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .expect("FLANNEL_SUBNET line")
        .to_string()
}

#[test]
fn three_nodes_lease_distinct_subnets_restart_and_recover_a_deleted_lease() {
    let mut c = Cluster::new(3, true);
    c.etcd.etcdctl(&["put", CONFIG_KEY, ALLOC_CONFIG]);
    for host in 0..3 {
        c.start(host, &[]);
    }
    let mut subnets = HashSet::new();
    for node in &c.nodes {
        let env = node.wait_subnet_env(LIMIT);
        let lines: Vec<&str> = env.lines().collect();
        let subnet = flannel_subnet(&env);
        assert_eq!(
            lines,
            [
                "FLANNEL_NETWORK=10.244.0.0/16",
                &format!("FLANNEL_SUBNET={subnet}"),
                "FLANNEL_MTU=1500",
                "FLANNEL_IPMASQ=false"
            ]
        );
        assert!(
            subnet.starts_with("10.244.") && subnet.ends_with(".1/24"),
            "{subnet}"
        );
        assert!(subnets.insert(subnet));
        // No --iface: the interface that reaches the etcd endpoint (the underlay).
        node.wait_log(
            "using interface eth0: the kernel routes the etcd endpoint 198.18.0.1 through it",
            LIMIT,
        );
        node.wait_log("weftd is ready", LIMIT);
    }
    // etcd holds flannel's exact JSON for each node, keyed by its subnet.
    let stored = c.subnets_in_etcd();
    assert_eq!(stored.len(), 3);
    for (i, host) in c.underlay.hosts.iter().enumerate() {
        let expected = format!(r#"{{"PublicIP":"{}","PublicIPv6":null}}"#, host.ip);
        assert!(
            stored.iter().any(|(_, v)| *v == expected),
            "node {i}: {expected} not in {stored:?}"
        );
    }
    // Each node sees the two others.
    for node in &c.nodes {
        wait_for("two peers", LIMIT, || {
            (node.log_count("peer added") >= 2).then_some(())
        });
    }
    assert_eq!(c.readyz(0), (200, "weftd is ready\n".to_string()));

    // SIGTERM: clean exit, nothing torn down; a restart gets the same subnet back.
    let before = c.nodes[2].wait_subnet_env(LIMIT);
    let status = c.nodes[2].terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(c.nodes[2].log().contains("Exiting cleanly"));
    assert_eq!(
        std::fs::read_to_string(&c.nodes[2].subnet_file).unwrap(),
        before
    );
    assert_eq!(c.subnets_in_etcd().len(), 3, "the lease stays in etcd");
    let restarted = c.start(2, &[]);
    c.nodes[restarted].wait_log(
        "reusing the lease that carries this node's public IP",
        LIMIT,
    );
    c.nodes[restarted].wait_log("weftd is ready", LIMIT);
    assert_eq!(
        std::fs::read_to_string(&c.nodes[restarted].subnet_file).unwrap(),
        before
    );

    // An operator deletes node 1's lease: node 1 takes the same subnet back, and the
    // others see the peer go and come back.
    let subnet1 = flannel_subnet(&c.nodes[1].wait_subnet_env(LIMIT));
    let key = format!(
        "/coreos.com/network/subnets/{}",
        subnet1.replace(".1/24", ".0-24")
    );
    c.etcd.etcdctl(&["del", &key]);
    c.nodes[1].wait_log(
        "this node's lease was deleted from etcd; re-acquiring it",
        LIMIT,
    );
    c.nodes[1].wait_log("lease re-acquired", LIMIT);
    wait_for("lease key restored", LIMIT, || {
        c.subnets_in_etcd()
            .iter()
            .any(|(k, _)| *k == key)
            .then_some(())
    });
    c.nodes[0].wait_log("peer removed", LIMIT);
    assert_eq!(flannel_subnet(&c.nodes[1].wait_subnet_env(LIMIT)), subnet1);
    for node in &c.nodes {
        assert!(!node.log().contains("panicked"), "{}", node.log());
    }
}

#[test]
fn etcd_down_at_start_then_bad_config_then_recovery() {
    let mut c = Cluster::new(1, false);
    c.start(0, &[]);
    c.nodes[0].wait_log("cannot read the network config", LIMIT);
    let (code, body) = c.readyz(0);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("cannot read the network config"), "{body}");
    assert!(c.nodes[0].is_running());

    c.etcd.launch();
    c.etcd.etcdctl(&[
        "put",
        CONFIG_KEY,
        r#"{"Network":"10.244.0.0/16","SubnetLen":31,"Backend":{"Type":"alloc"}}"#,
    ]);
    let message = "invalid network config in etcd key /coreos.com/network/config: SubnetLen must be less than /31";
    c.nodes[0].wait_log(message, LIMIT);
    wait_for("readyz to explain the bad config", LIMIT, || {
        c.readyz(0).1.contains(message).then_some(())
    });
    assert!(c.nodes[0].is_running());

    c.etcd.etcdctl(&[
        "put",
        CONFIG_KEY,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"ipsec"}}"#,
    ]);
    c.nodes[0].wait_log(
        "backend type ipsec is not implemented in this weftd build (implemented: vxlan, \
         host-gw, wireguard, alloc)",
        LIMIT,
    );
    // A wireguard Backend with a bad field is named, its PSK never shown.
    c.etcd.etcdctl(&[
        "put",
        CONFIG_KEY,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","PSK":"not-a-key-secret"}}"#,
    ]);
    c.nodes[0].wait_log(
        "invalid wireguard Backend field PSK: expected a 32-byte key in base64, as `wg genpsk` \
         prints it, got a value that is not one (it is not base64; the value is not shown)",
        LIMIT,
    );
    assert!(!c.nodes[0].log().contains("not-a-key-secret"));

    c.etcd.etcdctl(&["put", CONFIG_KEY, ALLOC_CONFIG]);
    c.nodes[0].wait_subnet_env(LIMIT);
    wait_for("ready", LIMIT, || (c.readyz(0).0 == 200).then_some(()));
    assert!(!c.nodes[0].log().contains("panicked"));
}

#[test]
fn survives_an_etcd_outage_and_skips_malformed_leases() {
    let mut c = Cluster::new(2, true);
    c.etcd.etcdctl(&["put", CONFIG_KEY, ALLOC_CONFIG]);
    c.start(0, &["--subnet-lease-ttl=6"]);
    c.nodes[0].wait_log("weftd is ready", LIMIT);

    // Garbage from the datastore is logged once with its key and skipped.
    c.etcd.etcdctl(&[
        "put",
        "/coreos.com/network/subnets/10.244.200.0-24",
        "garbage",
    ]);
    c.etcd.etcdctl(&[
        "put",
        "/coreos.com/network/subnets/not-a-subnet",
        r#"{"PublicIP":"198.18.0.99"}"#,
    ]);
    c.nodes[0].wait_log("key=\"/coreos.com/network/subnets/10.244.200.0-24\"", LIMIT);
    c.nodes[0].wait_log("key=\"/coreos.com/network/subnets/not-a-subnet\"", LIMIT);

    // etcd goes away for a while: weftd keeps running and stays ready (it holds its
    // lease and changes nothing), then picks up where it left off.
    c.etcd.stop();
    std::thread::sleep(Duration::from_secs(4));
    assert!(c.nodes[0].is_running());
    assert_eq!(c.readyz(0).0, 200);
    c.etcd.launch();
    c.start(1, &[]);
    c.nodes[1].wait_log("weftd is ready", LIMIT);
    wait_for("node 0 to see node 1", LIMIT, || {
        (c.nodes[0].log_count("peer added") >= 1).then_some(())
    });
    assert_eq!(
        c.nodes[0].log_count("skipping malformed entry"),
        2,
        "{}",
        c.nodes[0].log()
    );

    // With a 6 s TTL the lease is renewed (margin capped at half the TTL) and survives
    // well past its first expiry.
    c.nodes[0].wait_log("lease renewed", LIMIT);
    std::thread::sleep(Duration::from_secs(7));
    let ip = &c.underlay.hosts[0].ip;
    assert!(
        c.subnets_in_etcd()
            .iter()
            .any(|(_, v)| v.contains(ip.as_str())),
        "lease of {ip} expired"
    );
    assert!(!c.nodes[0].log().contains("panicked"));
}
