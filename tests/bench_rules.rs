//! Benchmark of one traffic-rules check (not a timed test: it measures and prints; run
//! it with `scripts/bench.sh`, which builds in release mode). Results go to
//! docs/benchmarks.md.
//!
//! For each host kind (iptables-nft, iptables-legacy, nftables mode) and for an empty
//! host and one with 5,000 other nat rules (a kube-proxy-sized table), it times weft's
//! steady-state check (nothing changed), weft's check after something else changed
//! nftables (the rules are read), and flannel's way of checking: one `iptables -C` per
//! rule (10 processes for masquerade and forward rules of one family).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};
use support::netns::{Netns, block_on_in};
use support::rules::{Tools, tool_dir};
use support::unique;
use weft_rules::{FamilyNets, Firewall, RuleSpec};

const ROUNDS: usize = 30;

fn spec(nftables: bool) -> RuleSpec {
    RuleSpec {
        masquerade: true,
        fully_random: true,
        forward: true,
        nftables,
        v4: Some(FamilyNets {
            network: "10.244.0.0/16".parse().unwrap(),
            own: "10.244.1.0/24".parse().unwrap(),
        }),
        v6: None,
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// 5,000 rules in a chain of the nat table, like kube-proxy's service rules.
fn busy_nat(ns: &Netns, restore: &str) {
    let mut input = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    for i in 0..5000 {
        input.push_str(&format!(
            "-A KUBE-SERVICES -d 10.96.{}.{}/32 -p tcp -m tcp --dport 80 -m comment --comment \"svc {i}\" -j RETURN\n",
            i / 250,
            i % 250
        ));
    }
    input.push_str("COMMIT\n");
    let path = std::env::temp_dir().join(format!("{}.rules", ns.name));
    std::fs::write(&path, input).unwrap();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ip netns exec {} {restore} --noflush < {}",
            ns.name,
            path.display()
        ))
        .status()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(status.success(), "loading 5,000 rules");
}

/// (median wall time, processes per check) of `ROUNDS` checks; with `bump`, something
/// else changes nftables before each check (outside the timing).
fn measure(ns: &Netns, dir: &Path, nftables: bool, bump: bool) -> (Duration, f64) {
    let name = ns.name.clone();
    let dir = dir.to_path_buf();
    block_on_in(&ns.name, move || async move {
        let spec = spec(nftables);
        let mut fw = Firewall::new(vec![dir]);
        // Install and settle (bounded).
        for _ in 0..3 {
            fw.check(&spec).await.expect("check");
        }
        let mut samples = Vec::new();
        let mut processes = 0;
        for _ in 0..ROUNDS {
            if bump {
                let ok = std::process::Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &name,
                        "nft",
                        "add table ip weft-bump; delete table ip weft-bump",
                    ])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok);
            }
            let start = Instant::now();
            let report = fw.check(&spec).await.expect("check");
            samples.push(start.elapsed());
            assert!(report.repaired.is_empty(), "{report:?}");
            processes += report.processes;
        }
        (median(samples), f64::from(processes) / ROUNDS as f64)
    })
}

/// flannel's check: `iptables -C` for each of its 10 IPv4 rules.
fn measure_flannel(ns: &Netns, iptables: &str) -> Duration {
    let n = "10.244.0.0/16";
    let p = "10.244.1.0/24";
    let masq = "flanneld masq";
    let fwd = "flanneld forward";
    let rules: Vec<Vec<String>> = [
        format!("-t nat -C POSTROUTING -m comment --comment {masq:?} -j FLANNEL-POSTRTG"),
        format!("-t nat -C FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment {masq:?} -j RETURN"),
        format!("-t nat -C FLANNEL-POSTRTG -s {p} -d {n} -m comment --comment {masq:?} -j RETURN"),
        format!("-t nat -C FLANNEL-POSTRTG -s {n} -d {p} -m comment --comment {masq:?} -j RETURN"),
        format!("-t nat -C FLANNEL-POSTRTG ! -s {n} -d {p} -m comment --comment {masq:?} -j RETURN"),
        format!("-t nat -C FLANNEL-POSTRTG -s {n} ! -d 224.0.0.0/4 -m comment --comment {masq:?} -j MASQUERADE --random-fully"),
        format!("-t nat -C FLANNEL-POSTRTG ! -s {n} -d {n} -m comment --comment {masq:?} -j MASQUERADE --random-fully"),
        format!("-t filter -C FORWARD -m comment --comment {fwd:?} -j FLANNEL-FWD"),
        format!("-t filter -C FLANNEL-FWD -s {n} -m comment --comment {fwd:?} -j ACCEPT"),
        format!("-t filter -C FLANNEL-FWD -d {n} -m comment --comment {fwd:?} -j ACCEPT"),
    ]
    .iter()
    .map(|r| shell_words(r))
    .collect();
    let name = ns.name.clone();
    let iptables = iptables.to_string();
    block_on_in(&ns.name, move || async move {
        let _ = name;
        let mut samples = Vec::new();
        for _ in 0..ROUNDS {
            let start = Instant::now();
            for rule in &rules {
                let ok = std::process::Command::new(&iptables)
                    .arg("-w")
                    .args(rule)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "{iptables} {rule:?}");
            }
            samples.push(start.elapsed());
        }
        median(samples)
    })
}

/// Splits on spaces, keeping "quoted words" together (quotes removed).
fn shell_words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

#[test]
#[ignore = "benchmark: run with scripts/bench.sh"]
fn steady_state_rule_check_cost() {
    for busy in [false, true] {
        let load = if busy {
            "5,000 nat rules"
        } else {
            "empty host"
        };
        // iptables-nft
        let ns = Netns::new(&unique("wb-nft"));
        let tools = tool_dir(Tools::IptablesNftOnly);
        if busy {
            busy_nat(&ns, "iptables-nft-restore");
        }
        let (steady, p_steady) = measure(&ns, tools.path(), false, false);
        let (read, p_read) = measure(&ns, tools.path(), false, true);
        let flannel = measure_flannel(&ns, "iptables-nft");
        println!(
            "BENCH rules iptables-nft ({load}): steady check {} ({p_steady} processes); after another nftables change {} ({p_read} processes); flannel's 10x iptables -C {} (10 processes)",
            us(steady),
            us(read),
            us(flannel)
        );
        drop(ns);
        // iptables-legacy
        let ns = Netns::new(&unique("wb-leg"));
        let tools = tool_dir(Tools::IptablesLegacyOnly);
        if busy {
            busy_nat(&ns, "iptables-legacy-restore");
        }
        let (steady, p_steady) = measure(&ns, tools.path(), false, false);
        let flannel = measure_flannel(&ns, "iptables-legacy");
        println!(
            "BENCH rules iptables-legacy ({load}): steady check {} ({p_steady} processes); flannel's 10x iptables -C {} (10 processes)",
            us(steady),
            us(flannel)
        );
        drop(ns);
        // nftables mode
        let ns = Netns::new(&unique("wb-nfm"));
        let tools = tool_dir(Tools::NftOnly);
        if busy {
            busy_nat(&ns, "iptables-nft-restore");
        }
        let (steady, p_steady) = measure(&ns, tools.path(), true, false);
        let (read, p_read) = measure(&ns, tools.path(), true, true);
        println!(
            "BENCH rules nftables mode ({load}): steady check {} ({p_steady} processes); after another nftables change {} ({p_read} processes)",
            us(steady),
            us(read)
        );
    }
}
