//! Benchmarks of the vxlan datapath (not timed tests: they measure and print; run them
//! with `scripts/bench.sh`, which builds in release mode). Results go to
//! docs/benchmarks.md.
//!
//! (a) convergence: a peer lease written to etcd until its route is in another node's
//!     kernel (seen through a netlink route notification), p50/p99 over 200 events;
//! (b) scale: weftd started against 5,000 peer leases (15,000 kernel entries): time to
//!     ready, peak RSS, the cost of a steady-state reconcile pass, and the cost of
//!     observability there: the time of a `/metrics` scrape and of a `/debug/state` page
//!     (measured from inside the node's namespace), and weftd's RSS before and after.

mod support;

use futures::StreamExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::cluster::{CONFIG_KEY, Cluster};
use support::netns::block_on_in;
use support::wait_for;

fn lease_value(i: usize) -> String {
    format!(
        r#"{{"PublicIP":"198.18.{}.{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0a:58:{:02x}:{:02x}:00:01"}}}}"#,
        100 + i / 250,
        1 + i % 250,
        i / 256,
        i % 256
    )
}

/// Writes keys to the cluster's etcd from inside the underlay namespace.
fn etcd_put_all(c: &Cluster, pairs: Vec<(String, String)>) {
    let ns = c.underlay.ns.name.clone();
    let endpoint = c.etcd.endpoint();
    block_on_in(&ns, move || async move {
        let mut client = etcd_client::Client::connect([endpoint], None)
            .await
            .unwrap();
        for chunk in pairs.chunks(100) {
            let ops: Vec<etcd_client::TxnOp> = chunk
                .iter()
                .map(|(k, v)| etcd_client::TxnOp::put(k.as_str(), v.as_str(), None))
                .collect();
            client
                .txn(etcd_client::Txn::new().and_then(ops))
                .await
                .unwrap();
        }
    });
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[test]
#[ignore = "benchmark: run with scripts/bench.sh"]
fn convergence_latency_lease_to_route() {
    let mut c = Cluster::new(1, true);
    c.etcd.etcdctl(&[
        "put",
        CONFIG_KEY,
        r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#,
    ]);
    c.start_with_env(0, &[], &[("RUST_LOG", "info")]);
    c.nodes[0].wait_log("weftd is ready", Duration::from_secs(60));

    // Route notifications from the node's namespace, timestamped on arrival.
    let (seen_tx, seen_rx) = mpsc::channel::<(String, Instant)>();
    let node_ns = c.underlay.hosts[0].ns.name.clone();
    std::thread::spawn(move || {
        block_on_in(&node_ns, move || async move {
            let (conn, _, mut messages) =
                rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Ipv4Route])
                    .unwrap();
            tokio::spawn(conn);
            while let Some((message, _)) = messages.next().await {
                let now = Instant::now();
                if let rtnetlink::packet_core::NetlinkPayload::InnerMessage(
                    rtnetlink::packet_route::RouteNetlinkMessage::NewRoute(route),
                ) = message.payload
                {
                    let dst = route.attributes.iter().find_map(|a| match a {
                        rtnetlink::packet_route::route::RouteAttribute::Destination(
                            rtnetlink::packet_route::route::RouteAddress::Inet(ip),
                        ) => Some(ip.to_string()),
                        _ => None,
                    });
                    if let Some(dst) = dst
                        && seen_tx.send((dst, now)).is_err()
                    {
                        return;
                    }
                }
            }
        })
    });
    std::thread::sleep(Duration::from_millis(200));

    let ns = c.underlay.ns.name.clone();
    let endpoint = c.etcd.endpoint();
    let (put_tx, put_rx) = mpsc::channel::<(usize, mpsc::Sender<Instant>)>();
    std::thread::spawn(move || {
        block_on_in(&ns, move || async move {
            let mut client = etcd_client::Client::connect([endpoint], None)
                .await
                .unwrap();
            while let Ok((i, done)) = put_rx.recv() {
                let key = format!("/coreos.com/network/subnets/10.200.{i}.0-24");
                let before = Instant::now();
                client.put(key, lease_value(i), None).await.unwrap();
                let _ = done.send(before);
            }
        })
    });

    let mut latencies = Vec::new();
    for i in 0..200 {
        let (done_tx, done_rx) = mpsc::channel();
        put_tx.send((i, done_tx)).unwrap();
        let written = done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("etcd put");
        let want = format!("10.200.{i}.0");
        let deadline = Instant::now() + Duration::from_secs(5);
        let seen = loop {
            let (dst, at) = seen_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("route notification within 5 s");
            if dst == want {
                break at;
            }
        };
        latencies.push(seen.duration_since(written));
        std::thread::sleep(Duration::from_millis(20));
    }
    latencies.sort();
    println!(
        "BENCH convergence lease->route over {} events: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
}

#[test]
#[ignore = "benchmark: run with scripts/bench.sh"]
fn scale_5000_peers() {
    const PEERS: usize = 5000;
    let mut c = Cluster::new(1, true);
    c.etcd.etcdctl(&[
        "put",
        CONFIG_KEY,
        r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#,
    ]);
    let pairs = (0..PEERS)
        .map(|i| {
            (
                format!(
                    "/coreos.com/network/subnets/10.{}.{}.0-24",
                    100 + i / 250,
                    i % 250
                ),
                lease_value(i),
            )
        })
        .collect();
    etcd_put_all(&c, pairs);

    let started = Instant::now();
    let n = c.start_with_env(
        0,
        &["--reconcile-interval=1"],
        &[("RUST_LOG", "info,weft::datapath=debug")],
    );
    c.nodes[n].wait_log("weftd is ready", Duration::from_secs(120));
    let ready = started.elapsed();
    let pid = c.nodes[n].pid().unwrap();
    let routes = c.underlay.hosts[0]
        .ns
        .ip(&["route", "show", "dev", "flannel.1"])
        .lines()
        .count();
    let fdb = c.underlay.hosts[0]
        .ns
        .exec(&["bridge", "fdb", "show", "dev", "flannel.1"])
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| l.windows(3).any(|w| w == b"dst"))
        .count();
    let neigh = c.underlay.hosts[0]
        .ns
        .ip(&["neigh", "show", "dev", "flannel.1", "nud", "permanent"])
        .lines()
        .count();
    assert!(
        routes >= PEERS && fdb >= PEERS && neigh >= PEERS,
        "routes {routes}, fdb {fdb}, neigh {neigh}"
    );

    let log = c.nodes[n].log();
    let first_pass = log
        .lines()
        .find(|l| l.contains("datapath converged"))
        .unwrap_or("")
        .to_string();

    // Steady state: 10 periodic passes with nothing to change.
    let cpu = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let passes_before = c.nodes[n].log_count("reconcile pass changes=0");
    let cpu_before = cpu(pid);
    wait_for("10 steady-state passes", Duration::from_secs(30), || {
        (c.nodes[n].log_count("reconcile pass changes=0") >= passes_before + 10).then_some(())
    });
    let cpu_after = cpu(pid);
    let passes = c.nodes[n].log_count("reconcile pass changes=0") - passes_before;
    let ticks_per_second = 100.0;
    let cpu_per_pass_ms = (cpu_after - cpu_before) as f64 / ticks_per_second * 1e3 / passes as f64;
    let mut pass_us: Vec<u64> = c.nodes[n]
        .log()
        .lines()
        .filter(|l| l.contains("reconcile pass changes=0"))
        .filter_map(|l| {
            l.split("elapsed_us=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    pass_us.sort_unstable();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or("VmHWM: ?")
        .to_string();
    let observability = observability_cost(&c.underlay.hosts[0].ns.name, pid);
    println!(
        "BENCH scale {PEERS} peers: ready {:.2} s after start; {routes} routes, {fdb} fdb, {neigh} neighbours",
        ready.as_secs_f64()
    );
    println!(
        "BENCH scale first pass: {}",
        first_pass.split("INFO ").nth(1).unwrap_or(&first_pass)
    );
    println!(
        "BENCH scale peak RSS: {}",
        hwm.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
    );
    println!(
        "BENCH scale steady-state pass: median wall {:.1} ms over {} passes, CPU {:.1} ms per pass",
        pass_us[pass_us.len() / 2] as f64 / 1e3,
        pass_us.len(),
        cpu_per_pass_ms
    );
    for line in observability {
        println!("BENCH scale {line}");
    }
}

/// A field of /proc/<pid>/status, in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// GETs `path` from weftd's health port 200 times from inside `netns` (one connection
/// each, as Prometheus does); returns the sorted wall times and the last answer.
fn timed_gets(netns: &str, path: &'static str, count: usize) -> (Vec<Duration>, String) {
    use std::io::{Read, Write};
    support::netns::run_in(netns, move || {
        let mut times = Vec::with_capacity(count);
        let mut last = String::new();
        for _ in 0..count {
            let start = Instant::now();
            let mut stream = std::net::TcpStream::connect("127.0.0.1:8081").unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            stream.write_all(request.as_bytes()).unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).unwrap();
            times.push(start.elapsed());
            last = String::from_utf8_lossy(&answer).into_owned();
        }
        times.sort();
        (times, last)
    })
}

/// The cost of /metrics and /debug/state at this scale, as BENCH lines: scrape and page
/// times (p50/p99/max), and weftd's RSS before and after (VmRSS, VmHWM).
fn observability_cost(netns: &str, pid: u32) -> Vec<String> {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let rss_before = status_kb(pid, "VmRSS:");
    let hwm_before = status_kb(pid, "VmHWM:");
    let split = format!(
        "RssAnon {} kB, RssFile {} kB",
        status_kb(pid, "RssAnon:"),
        status_kb(pid, "RssFile:")
    );
    let (scrapes, answer) = timed_gets(netns, "/metrics", 200);
    if !answer.starts_with("HTTP/1.1 200") {
        return vec![format!(
            "observability: this weftd does not serve /metrics; VmRSS {rss_before} kB ({split})"
        )];
    }
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let series = body.lines().filter(|l| !l.starts_with('#')).count();
    let rss_scraped = status_kb(pid, "VmRSS:");
    let (pages, _) = timed_gets(netns, "/debug/state?limit=100", 20);
    let (problems, _) = timed_gets(netns, "/debug/state?only=problems", 20);
    let rss_after = status_kb(pid, "VmRSS:");
    let hwm_after = status_kb(pid, "VmHWM:");
    let summary = |times: &[Duration]| {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {}",
            ms(percentile(times, 0.5)),
            ms(percentile(times, 0.99)),
            ms(*times.last().unwrap()),
            times.len()
        )
    };
    vec![
        format!(
            "/metrics scrape ({} bytes, {series} series): {}",
            body.len(),
            summary(&scrapes)
        ),
        format!("/debug/state page of 100 peers: {}", summary(&pages)),
        format!(
            "/debug/state only=problems (all 5,000 peers judged): {}",
            summary(&problems)
        ),
        format!(
            "RSS around the requests: VmRSS {rss_before} kB before ({split}), {rss_scraped} kB \
             after 200 scrapes ({:+} kB), {rss_after} kB after 40 state pages ({:+} kB); VmHWM \
             {hwm_before} -> {hwm_after} kB",
            rss_scraped as i64 - rss_before as i64,
            rss_after as i64 - rss_scraped as i64
        ),
    ]
}

/// iperf3 from `client` to `server_ip` (served in `server`) for 5 s: Gbit/s received.
fn iperf_gbits(
    server: &support::netns::Netns,
    server_ip: &str,
    client: &support::netns::Netns,
) -> f64 {
    let mut daemon = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &server.name,
            "iperf3",
            "-s",
            "-1",
            "-B",
            server_ip,
            "-p",
            "5201",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 (apt-get install iperf3)");
    std::thread::sleep(Duration::from_millis(500));
    let out = client.exec(&[
        "iperf3", "-c", server_ip, "-p", "5201", "-t", "5", "-O", "1", "-J",
    ]);
    let _ = daemon.wait();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
        / 1e9
}

/// (c) host-gw pod-to-pod throughput with weft's routes, side by side with the same
/// routes written by hand (weftd stopped), alternating, three pairs.
#[test]
#[ignore = "benchmark: run with scripts/bench.sh"]
fn hostgw_throughput_against_hand_written_routes() {
    use support::pods::add_pod;
    let mut c = Cluster::new(2, true);
    c.etcd.etcdctl(&[
        "put",
        CONFIG_KEY,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
    ]);
    for host in 0..2 {
        c.start(host, &[]);
    }
    let mut pods = Vec::new();
    for host in 0..2 {
        c.nodes[host].wait_log("weftd is ready", Duration::from_secs(30));
        let ns = &c.underlay.hosts[host].ns;
        pods.push(add_pod(ns, &format!("{}-p", ns.name), &c.node_dir(host)));
    }
    // Each node's route to the other's subnet, as weft wrote it.
    let routes: Vec<String> = (0..2)
        .map(|h| {
            let ns = &c.underlay.hosts[h].ns;
            wait_for("the peer route", Duration::from_secs(30), || {
                let r = ns.ip(&["route", "show", "proto", "91"]);
                (!r.trim().is_empty()).then_some(r)
            })
            .lines()
            .next()
            .unwrap()
            .to_string()
        })
        .collect();
    let mut ratios = Vec::new();
    for round in 0..3 {
        let weft = iperf_gbits(&pods[1].ns, &pods[1].ip, &pods[0].ns);
        for host in 0..2 {
            assert!(c.nodes[host].terminate().success());
        }
        c.nodes.clear();
        for (h, route) in routes.iter().enumerate() {
            // Same route, by hand: `ip route replace <dst> via <peer> dev eth0` (proto boot).
            let fields: Vec<&str> = route.split_whitespace().take(5).collect();
            let mut args = vec!["route", "replace"];
            args.extend(fields);
            c.underlay.hosts[h].ns.ip(&args);
        }
        let hand = iperf_gbits(&pods[1].ns, &pods[1].ip, &pods[0].ns);
        for (h, route) in routes.iter().enumerate() {
            let dst = route.split_whitespace().next().unwrap();
            c.underlay.hosts[h].ns.ip(&["route", "del", dst]);
        }
        for host in 0..2 {
            c.start(host, &[]);
        }
        for host in 0..2 {
            c.nodes[host].wait_log("weftd is ready", Duration::from_secs(30));
            let ns = &c.underlay.hosts[host].ns;
            wait_for("weft's route back", Duration::from_secs(30), || {
                (!ns.ip(&["route", "show", "proto", "91"]).trim().is_empty()).then_some(())
            });
        }
        println!(
            "BENCH hostgw round {round}: weft {weft:.2} Gbit/s, hand-written {hand:.2} Gbit/s, ratio {:.3}",
            weft / hand
        );
        ratios.push(weft / hand);
    }
    ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "BENCH hostgw throughput ratio weft/hand-written: median {:.3} (min {:.3}, max {:.3})",
        ratios[1], ratios[0], ratios[2]
    );
}
