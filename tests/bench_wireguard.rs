//! The wireguard backend's datapath against the same userspace WireGuard configured by
//! hand: two nodes, a pod on each, iperf3 pod to pod through weft's `flannel-wg` (weftd
//! running), then through a `flannel-wg` set up with `wg` and `ip` from the same keys,
//! endpoints and subnets (weftd stopped, its device deleted), alternating, three rounds;
//! and the underlay itself (node to node, no tunnel) for scale. Run by
//! `scripts/bench.sh wireguard`; reported in docs/benchmarks.md.

mod support;

use support::pods::iperf_gbits;
use support::wait_for;
use support::wireguard::{CONFIG, LIMIT, WgCluster};

/// What node `host` needs to be set up by hand as weft sets it up.
struct HandSetup {
    key_file: String,
    address: String,
    peer_key: String,
    endpoint: String,
    allowed: String,
}

fn hand_setup(w: &WgCluster, host: usize) -> HandSetup {
    let other = 1 - host;
    let subnet = |h: usize| {
        let env = std::fs::read_to_string(&w.c.nodes[h].subnet_file).unwrap();
        let line = env
            .lines()
            .find(|l| l.starts_with("FLANNEL_SUBNET="))
            .unwrap();
        let cidr = line.trim_start_matches("FLANNEL_SUBNET=");
        let ip: std::net::Ipv4Addr = cidr.split('/').next().unwrap().parse().unwrap();
        let network = std::net::Ipv4Addr::from(u32::from(ip) & 0xffff_ff00);
        format!("{network}/24")
    };
    let lease = w.lease(other);
    HandSetup {
        key_file: w.key_file(host).display().to_string(),
        address: format!("{}/32", subnet(host).trim_end_matches("/24")),
        peer_key: lease["BackendData"]["PublicKey"]
            .as_str()
            .unwrap()
            .to_string(),
        endpoint: format!("{}:51820", w.c.underlay.hosts[other].ip),
        allowed: subnet(other),
    }
}

fn configure_by_hand(w: &WgCluster, host: usize, setup: &HandSetup) {
    let peer = (
        setup.peer_key.as_str(),
        setup.endpoint.as_str(),
        setup.allowed.as_str(),
    );
    w.mounts[host].hand_device(
        std::path::Path::new(&setup.key_file),
        &setup.address,
        &[peer],
    );
}

#[test]
#[ignore = "benchmark: run with scripts/bench.sh wireguard"]
fn wireguard_throughput_against_hand_configured_boringtun() {
    let mut w = WgCluster::new(2, CONFIG);
    let setups: Vec<HandSetup> = (0..2).map(|h| hand_setup(&w, h)).collect();
    let underlay = iperf_gbits(
        &w.c.underlay.hosts[1].ns,
        &w.c.underlay.hosts[1].ip.clone(),
        &w.c.underlay.hosts[0].ns,
    );
    let mut ratios = Vec::new();
    for round in 0..3 {
        wait_for("pods to talk through weft's devices", LIMIT, || {
            support::pods::ping(&w.pods[0].ns, &w.pods[1].ip, 1).then_some(())
        });
        let weft = iperf_gbits(&w.pods[1].ns, &w.pods[1].ip, &w.pods[0].ns);
        let running: Vec<usize> = (w.c.nodes.len() - 2..w.c.nodes.len()).collect();
        for i in running {
            assert!(w.c.nodes[i].terminate().success());
        }
        for (host, setup) in setups.iter().enumerate() {
            w.c.underlay.hosts[host]
                .ns
                .ip(&["link", "del", "flannel-wg"]);
            configure_by_hand(&w, host, setup);
        }
        wait_for("pods to talk through the hand-made devices", LIMIT, || {
            support::pods::ping(&w.pods[0].ns, &w.pods[1].ip, 1).then_some(())
        });
        let hand = iperf_gbits(&w.pods[1].ns, &w.pods[1].ip, &w.pods[0].ns);
        for host in 0..2 {
            w.c.underlay.hosts[host]
                .ns
                .ip(&["link", "del", "flannel-wg"]);
        }
        for host in 0..2 {
            let i = w.start(host);
            w.c.nodes[i].wait_log("weftd is ready", LIMIT);
        }
        w.wait_peers(1);
        println!(
            "BENCH wireguard round {round}: weft {weft:.3} Gbit/s, by hand {hand:.3} Gbit/s, ratio {:.3}",
            weft / hand
        );
        ratios.push(weft / hand);
    }
    ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "BENCH wireguard throughput ratio weft/by hand: median {:.3} (min {:.3}, max {:.3}); underlay (veth, no tunnel) {underlay:.2} Gbit/s",
        ratios[1], ratios[0], ratios[2]
    );
}
