//! End to end with the host-gw backend: nodes as network namespaces on one underlay
//! bridge (one L2 segment), a real etcd, the real weftd binary per node, pods through the
//! CNI plugin. Plus a node behind a router (another L2 segment), dual-stack, the
//! blackhole route, switching a node between vxlan and host-gw, and a route the kernel
//! refused retried soon (not at the reconcile timer).

mod support;

use std::time::Duration;
use support::cluster::{CONFIG_KEY, Cluster};
use support::kernel_state::{json, rows};
use support::netns::{Netns, UNDERLAY_GATEWAY};
use support::pods::{Pod, ping, tcp_source_seen};
use support::prometheus::scrape;
use support::vxlan::LIMIT;
use support::wait_for;

const HOSTGW_CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#;
const VXLAN_CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// weft's routes (protocol 91) of one family: "dst via gw dev d".
fn weft_routes(ns: &Netns, family: &str) -> Vec<String> {
    let routes = json(ns, &["ip", family, "-j", "route", "show", "proto", "91"]);
    let mut out: Vec<String> = rows(&routes)
        .iter()
        .filter(|r| r.get("gateway").is_some())
        .map(|r| {
            format!(
                "{} via {} dev {}",
                r["dst"].as_str().unwrap_or(""),
                r["gateway"].as_str().unwrap_or(""),
                r["dev"].as_str().unwrap_or("")
            )
        })
        .collect();
    out.sort();
    out
}

fn subnet_of(c: &Cluster, host: usize) -> String {
    let env = std::fs::read_to_string(&c.nodes[host].subnet_file).unwrap();
    let line = env
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .unwrap()
        .to_string();
    // 10.244.7.1/24 -> 10.244.7.0/24
    let (ip, len) = line.split_once('/').unwrap();
    let (prefix, _) = ip.rsplit_once('.').unwrap();
    format!("{prefix}.0/{len}")
}

struct HostGwCluster {
    pods: Vec<Pod>,
    c: Cluster,
}

fn start(config: &str, nodes: usize, extra: &[&str]) -> HostGwCluster {
    let mut c = Cluster::new(nodes, true);
    c.etcd.etcdctl(&["put", CONFIG_KEY, config]);
    for host in 0..nodes {
        let mut args = vec!["--reconcile-interval=30"];
        args.extend_from_slice(extra);
        c.start(host, &args);
    }
    let pods = c.pods_when_ready(nodes, LIMIT);
    for host in 0..nodes {
        let ns = &c.underlay.hosts[host].ns;
        wait_for("routes to all peers", LIMIT, || {
            (weft_routes(ns, "-4").len() == nodes - 1).then_some(())
        });
    }
    HostGwCluster { pods, c }
}

/// A second L2 segment behind a router namespace: 198.19.0.0/24, router at .1 there and
/// at 198.18.0.254 on the underlay; returns the router and the new node's namespace.
fn node_behind_a_router(c: &mut Cluster) -> (Netns, Netns) {
    let prefix = c.underlay.ns.name.trim_end_matches("-ul").to_string();
    let router = Netns::new(&format!("{prefix}-rt"));
    let ul = &c.underlay.ns;
    ul.ip(&[
        "link",
        "add",
        "prt",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &router.name,
    ]);
    ul.ip(&["link", "set", "prt", "master", "br0", "up"]);
    router.ip(&["addr", "add", "198.18.0.254/24", "dev", "eth0"]);
    router.ip(&["link", "set", "eth0", "up"]);
    assert!(
        router
            .exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .status
            .success()
    );
    ul.ip(&["route", "add", "198.19.0.0/24", "via", "198.18.0.254"]);
    let far = Netns::new(&format!("{prefix}-n9"));
    router.ip(&[
        "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", &far.name,
    ]);
    router.ip(&["addr", "add", "198.19.0.1/24", "dev", "eth1"]);
    router.ip(&["link", "set", "eth1", "up"]);
    far.ip(&["addr", "add", "198.19.0.14/24", "dev", "eth0"]);
    far.ip(&["link", "set", "eth0", "up"]);
    far.ip(&["route", "add", "default", "via", "198.19.0.1"]);
    assert!(
        far.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .status
            .success()
    );
    // The nodes on the underlay reach 198.19.0.0/24 through their default gateway
    // (the underlay namespace), which now routes it to the router.
    (router, far)
}

#[test]
fn host_gw_pods_talk_without_nat_and_a_node_behind_a_router_is_skipped() {
    let mut v = start(HOSTGW_CONFIG, 3, &[]);
    for (i, from) in v.pods.iter().enumerate() {
        for (j, to) in v.pods.iter().enumerate() {
            if i != j {
                assert!(ping(&from.ns, &to.ip, 2), "pod {i} -> pod {j}");
            }
        }
    }
    let (a, b) = (&v.pods[0], &v.pods[1]);
    assert_eq!(
        tcp_source_seen(&b.ns, &b.ip, &a.ns, 7101),
        a.ip,
        "source preserved"
    );
    // flannel's route shape: the peer subnet via the peer's public IP on eth0.
    let expected: Vec<String> = (1..3)
        .map(|h| {
            format!(
                "{} via {} dev eth0",
                subnet_of(&v.c, h),
                v.c.underlay.hosts[h].ip
            )
        })
        .collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(weft_routes(&v.c.underlay.hosts[0].ns, "-4"), expected);
    let lease = &v.c.subnets_in_etcd()[0].1;
    assert!(lease.ends_with(r#","BackendType":"host-gw"}"#), "{lease}");

    // A route deleted by hand comes back.
    let ns0 = &v.c.underlay.hosts[0].ns;
    ns0.ip(&["route", "del", &subnet_of(&v.c, 1)]);
    wait_for(
        "the deleted route to come back",
        Duration::from_secs(5),
        || (weft_routes(ns0, "-4") == expected).then_some(()),
    );

    // A fourth node on another L2 segment: reported and skipped, nobody else disturbed.
    let (_router, far) = node_behind_a_router(&mut v.c);
    let far_dir = v.c.dir.path().join("far");
    let mut weftd = support::weftd::Weftd::start(
        &far.name,
        &far_dir,
        &[
            &format!("--etcd-endpoints=http://{UNDERLAY_GATEWAY}:2379"),
            "--reconcile-interval=30",
        ],
    );
    weftd.wait_log("weftd is ready", LIMIT);
    for host in 0..3 {
        v.c.nodes[host].wait_log(
            "its public IP 198.19.0.14 is not on a network directly connected to eth0 \
             (198.18.0.0/24)",
            LIMIT,
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(weft_routes(&v.c.underlay.hosts[0].ns, "-4"), expected);
    assert_eq!(
        v.c.nodes[0].log_count("its public IP 198.19.0.14 is not on a network"),
        1,
        "reported once"
    );
    assert!(
        weft_routes(&far, "-4").is_empty(),
        "the far node skips the others too"
    );
    assert!(ping(&v.pods[0].ns, &v.pods[2].ip, 2));
    weftd.terminate();
}

#[test]
fn dual_stack_host_gw_and_the_blackhole_route() {
    let v = start(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"host-gw"}}"#,
        2,
        &["--ip-blackhole-route"],
    );
    let ns0 = &v.c.underlay.hosts[0].ns;
    wait_for("a v6 route", LIMIT, || {
        (weft_routes(ns0, "-6").len() == 1).then_some(())
    });
    assert!(weft_routes(ns0, "-6")[0].contains(" via fd00:198:18::12 dev eth0"));
    let (a, b) = (&v.pods[0], &v.pods[1]);
    assert!(ping(&a.ns, &b.ip, 2), "v4 pod to pod");
    let b6 = b.ipv6().expect("pod has an IPv6 address").to_string();
    wait_for("v6 pod to pod", Duration::from_secs(10), || {
        ping(&a.ns, &b6, 1).then_some(())
    });
    assert_eq!(tcp_source_seen(&b.ns, &b6, &a.ns, 7102), a.ipv6().unwrap());

    // --ip-blackhole-route: the node's own subnets, at the lowest preference, kept.
    let own = subnet_of(&v.c, 0);
    let blackholes = || {
        let routes = json(ns0, &["ip", "-j", "route", "show", "type", "blackhole"]);
        rows(&routes)
            .iter()
            .map(|r| format!("{} metric {}", r["dst"].as_str().unwrap_or(""), r["metric"]))
            .collect::<Vec<_>>()
    };
    wait_for("the blackhole route", LIMIT, || {
        (blackholes() == [format!("{own} metric 4294967295")]).then_some(())
    });
    ns0.ip(&["route", "del", "blackhole", &own, "metric", "4294967295"]);
    wait_for("the blackhole route back", Duration::from_secs(5), || {
        (blackholes().len() == 1).then_some(())
    });
    // The CNI bridge's route to the pods still wins.
    assert!(ping(&b.ns, &a.ip, 2));
}

#[test]
fn switching_between_vxlan_and_host_gw_leaves_nothing_behind() {
    let mut v = start(VXLAN_CONFIG, 2, &[]);
    let devices = |ns: &Netns| {
        let links = json(ns, &["ip", "-j", "link", "show", "type", "vxlan"]);
        rows(&links)
            .iter()
            .map(|l| l["ifname"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(devices(&v.c.underlay.hosts[0].ns), ["flannel.1"]);
    for (config, backend) in [(HOSTGW_CONFIG, "host-gw"), (VXLAN_CONFIG, "vxlan")] {
        v.c.etcd.etcdctl(&["put", CONFIG_KEY, config]);
        for host in 0..2 {
            assert!(v.c.nodes[host].terminate().success());
        }
        v.c.nodes.clear();
        for host in 0..2 {
            v.c.start(host, &["--reconcile-interval=30"]);
        }
        for host in 0..2 {
            v.c.nodes[host].wait_log("weftd is ready", LIMIT);
        }
        for host in 0..2 {
            let ns = &v.c.underlay.hosts[host].ns;
            let want_device: &[&str] = if backend == "vxlan" {
                &["flannel.1"]
            } else {
                &[]
            };
            wait_for("the old backend's state to go", LIMIT, || {
                let routes = weft_routes(ns, "-4");
                let dev = if backend == "vxlan" {
                    "flannel.1"
                } else {
                    "eth0"
                };
                (devices(ns) == want_device
                    && routes.len() == 1
                    && routes[0].ends_with(&format!("dev {dev}")))
                .then_some(())
            });
            if backend == "host-gw" {
                let neigh = json(ns, &["ip", "-j", "neigh", "show", "nud", "permanent"]);
                assert!(rows(&neigh).is_empty(), "no vxlan neighbour left");
            }
        }
        wait_for("pods to reconnect", LIMIT, || {
            ping(&v.pods[0].ns, &v.pods[1].ip, 1).then_some(())
        });
        assert!(ping(&v.pods[1].ns, &v.pods[0].ip, 2), "{backend}");
    }
}

#[test]
fn a_route_the_kernel_refused_is_retried_soon_not_at_the_timer() {
    // The timer is an hour away: only the retry of the failed pass can put the route in.
    let mut c = Cluster::new(2, true);
    c.etcd.etcdctl(&["put", CONFIG_KEY, HOSTGW_CONFIG]);
    c.start(0, &["--reconcile-interval=3600"]);
    c.nodes[0].wait_log("weftd is ready", LIMIT);
    // Without eth0's connected route the kernel refuses a gateway on it ("Nexthop has
    // invalid gateway"); weftd still sees the address, so the peer is not skipped.
    let own_ip = c.underlay.hosts[0].ip.clone();
    let connected = [
        "198.18.0.0/24",
        "dev",
        "eth0",
        "proto",
        "kernel",
        "scope",
        "link",
        "src",
        &own_ip,
    ];
    c.underlay.hosts[0]
        .ns
        .ip(&[&["route", "del"][..], &connected[..]].concat());
    c.start(1, &["--reconcile-interval=3600"]);
    c.nodes[0].wait_log("datapath change failed", LIMIT);
    let ns0 = &c.underlay.hosts[0].ns;
    assert_eq!(c.readyz(0).0, 503, "not ready while a change is refused");
    assert!(weft_routes(ns0, "-4").is_empty());
    let retries =
        |ns: &Netns| scrape(ns).value("weft_reconcile_passes_total", &[("trigger", "retry")]);
    let before = retries(ns0);
    ns0.ip(&[&["route", "add"][..], &connected[..]].concat());
    let expected = vec![format!(
        "{} via {} dev eth0",
        subnet_of(&c, 1),
        c.underlay.hosts[1].ip
    )];
    wait_for("the refused route, retried", LIMIT, || {
        (weft_routes(ns0, "-4") == expected).then_some(())
    });
    // Put in by a retry pass, not by the timer (its only tick was the one at start).
    let m = scrape(ns0);
    assert!(
        retries(ns0) > before,
        "no retry pass since the route was put back"
    );
    assert_eq!(
        m.value("weft_reconcile_passes_total", &[("trigger", "timer")]),
        1.0
    );
    wait_for("ready again", LIMIT, || {
        (c.readyz(0).0 == 200).then_some(())
    });
    let state: serde_json::Value =
        serde_json::from_str(&ns0.http_get("http://127.0.0.1:8081/debug/state").unwrap().1)
            .unwrap();
    assert_eq!(state["last_pass"]["failed_changes"], 0, "{state}");
    c.nodes[0].wait_log("the datapath is retried by a full pass in", LIMIT);
}
