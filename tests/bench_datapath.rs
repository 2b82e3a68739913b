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

use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::cluster::{CONFIG_KEY, Cluster};
use support::netns::block_on_in;
use support::process::{cpu_ns, cpu_ticks, cpu_ticks_split, status_kb};
use support::routes::{RouteChange, drain, wait_route, watch_routes};
use support::{percentile, wait_for};

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
    let routes = watch_routes(&c.underlay.hosts[0].ns.name);

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
        let seen = wait_route(&routes, &want, RouteChange::New, Duration::from_secs(5))
            .expect("route notification within 5 s");
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
/// (c) host-gw pod-to-pod throughput with weft's routes, side by side with the same
/// routes written by hand (weftd stopped), alternating, three pairs.
#[test]
#[ignore = "benchmark: run with scripts/bench.sh"]
fn hostgw_throughput_against_hand_written_routes() {
    use support::pods::iperf_gbits;
    let mut c = Cluster::new(2, true);
    c.etcd.etcdctl(&[
        "put",
        CONFIG_KEY,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
    ]);
    for host in 0..2 {
        c.start(host, &[]);
    }
    let pods = c.pods_when_ready(2, Duration::from_secs(30));
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

// ---------------------------------------------------------------------------------------
// Scale and footprint (issue 15). Parametric in the peer count (WEFT_BENCH_PEERS, a comma
// list), and build-independent: they read only weftd's "weftd is ready" log line, the
// kernel (netlink notifications in the node's namespace) and /proc, so the same harness
// measures another build through WEFT_BENCH_WEFTD (before/after A/B).
// ---------------------------------------------------------------------------------------

/// The peer counts to run, from WEFT_BENCH_PEERS (e.g. "5000,15000"), else `default`.
fn bench_sizes(default: &[usize]) -> Vec<usize> {
    match std::env::var("WEFT_BENCH_PEERS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("WEFT_BENCH_PEERS: a comma list of numbers")
            })
            .collect(),
        _ => default.to_vec(),
    }
}

/// The weftd binary under test (WEFT_BENCH_WEFTD, else this build's).
fn weftd_binary() -> String {
    std::env::var("WEFT_BENCH_WEFTD").unwrap_or_else(|_| env!("CARGO_BIN_EXE_weftd").to_string())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// "VmRSS 12345 kB (RssAnon a, RssFile f), VmHWM h kB".
fn rss_line(pid: u32) -> String {
    format!(
        "VmRSS {} kB (RssAnon {} kB, RssFile {} kB), VmHWM {} kB",
        status_kb(pid, "VmRSS:"),
        status_kb(pid, "RssAnon:"),
        status_kb(pid, "RssFile:"),
        status_kb(pid, "VmHWM:")
    )
}

/// Resident file-backed memory by file (from /proc/<pid>/smaps), largest first.
fn file_rss(pid: u32) -> String {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by_file: std::collections::BTreeMap<String, u64> = Default::default();
    let mut current: Option<String> = None;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            // File name and permissions (r-xp: code; r--p: read-only data, unwind tables).
            current = fields
                .get(5)
                .filter(|p| p.starts_with('/'))
                .map(|p| format!("{} {}", p.rsplit('/').next().unwrap_or(p), fields[1]));
        } else if let (Some(file), ["Rss:", kb, ..]) = (&current, fields.as_slice()) {
            *by_file.entry(file.clone()).or_default() += kb.parse::<u64>().unwrap_or(0);
        }
    }
    let mut list: Vec<(String, u64)> = by_file.into_iter().filter(|(_, kb)| *kb > 0).collect();
    list.sort_by_key(|b| std::cmp::Reverse(b.1));
    list.iter()
        .map(|(f, kb)| format!("{f} {kb} kB"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The lease key of subnet `10.a.b.0/24`.
fn lease_key(a: usize, b: usize) -> String {
    format!("/coreos.com/network/subnets/10.{a}.{b}.0-24")
}

/// Peer `i`'s subnet in the 10.0.0.0/8 scale layout: 10.(1 + i/250).(i%250).0/24.
fn peer_subnet(i: usize) -> (usize, usize) {
    (1 + i / 250, i % 250)
}

/// Counts weft's routes on flannel.1 in `ns`.
fn overlay_routes(ns: &support::netns::Netns) -> usize {
    ns.ip(&["route", "show", "dev", "flannel.1"])
        .lines()
        .count()
}

/// An etcd client in the underlay namespace, driven from the test thread: `put(key,
/// value)` returns the instant just before the write was sent.
struct EtcdWriter {
    tx: mpsc::Sender<(String, String, mpsc::Sender<Instant>)>,
}

impl EtcdWriter {
    fn new(c: &Cluster) -> EtcdWriter {
        let ns = c.underlay.ns.name.clone();
        let endpoint = c.etcd.endpoint();
        let (tx, rx) = mpsc::channel::<(String, String, mpsc::Sender<Instant>)>();
        std::thread::spawn(move || {
            block_on_in(&ns, move || async move {
                let mut client = etcd_client::Client::connect([endpoint], None)
                    .await
                    .unwrap();
                while let Ok((key, value, done)) = rx.recv() {
                    let before = Instant::now();
                    client.put(key, value, None).await.unwrap();
                    let _ = done.send(before);
                }
            })
        });
        EtcdWriter { tx }
    }

    fn put(&self, key: String, value: String) -> Instant {
        let (done_tx, done_rx) = mpsc::channel();
        self.tx.send((key, value, done_tx)).unwrap();
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("etcd put")
    }
}

fn summary(sorted: &[Duration]) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {}",
        ms(percentile(sorted, 0.5)),
        ms(percentile(sorted, 0.99)),
        ms(*sorted.last().unwrap()),
        sorted.len()
    )
}

/// `events` peer leases written to etcd one at a time, 20 ms apart (see
/// [`measure_added_peers`]), subnets from 10.200.0.0/24 on, lease values numbered from
/// `first`.
fn added_peer_events(
    c: &Cluster,
    pid: u32,
    routes: &mpsc::Receiver<(String, RouteChange, Instant)>,
    first: usize,
    events: usize,
    label: &str,
) {
    let writer = EtcdWriter::new(c);
    measure_added_peers(pid, routes, events, label, "etcd write", |j| {
        let (a, b) = (200 + j / 250, j % 250);
        let written = writer.put(lease_key(a, b), lease_value(first + j));
        (format!("10.{a}.{b}.0"), written)
    });
}

/// Adds `events` peers one at a time, 20 ms apart: `add(j)` publishes peer `j` and returns
/// the route destination it should produce and when it was published. Prints the latency
/// from `source` (what publishing is) to the route's `RTM_NEWROUTE`, and weftd's CPU per
/// event (utime+stime over all events; schedstat around each).
fn measure_added_peers(
    pid: u32,
    routes: &mpsc::Receiver<(String, RouteChange, Instant)>,
    events: usize,
    label: &str,
    source: &str,
    mut add: impl FnMut(usize) -> (String, Instant),
) {
    std::thread::sleep(Duration::from_millis(300));
    drain(routes);
    let mut latencies = Vec::with_capacity(events);
    let mut per_event_us = Vec::with_capacity(events);
    let ticks_before = cpu_ticks_split(pid);
    let wall = Instant::now();
    for j in 0..events {
        let ns_before = cpu_ns(pid);
        let (dst, published) = add(j);
        let seen = wait_route(routes, &dst, RouteChange::New, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{label}: no route to {dst} within 30 s"));
        latencies.push(seen.duration_since(published));
        std::thread::sleep(Duration::from_millis(20));
        per_event_us.push(cpu_ns(pid).saturating_sub(ns_before) as f64 / 1e3);
    }
    let wall = wall.elapsed();
    let ticks_after = cpu_ticks_split(pid);
    let (user, kernel) = (
        ticks_after.0 - ticks_before.0,
        ticks_after.1 - ticks_before.1,
    );
    let ticks = user + kernel;
    latencies.sort();
    per_event_us.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "BENCH {label} one peer added: latency {source} -> route {}",
        summary(&latencies)
    );
    println!(
        "BENCH {label} one peer added: CPU per event {:.2} ms (utime+stime {} ticks over {} \
         events, {:.1} s); per event (schedstat, 20 ms window): p50 {:.0} us, p99 {:.0} us",
        ticks as f64 * 10.0 / events as f64,
        ticks,
        events,
        wall.as_secs_f64(),
        per_event_us[per_event_us.len() / 2],
        per_event_us[((per_event_us.len() - 1) as f64 * 0.99).round() as usize]
    );
    // The kernel's share is mostly its own work on weft's requests (a route insert
    // searches the routes sharing its fib_info hash chain: docs/benchmarks.md).
    println!(
        "BENCH {label} one peer added: CPU per event in weftd's code (utime) {:.2} ms, in the \
         kernel for weftd (stime) {:.2} ms",
        user as f64 * 10.0 / events as f64,
        kernel as f64 * 10.0 / events as f64,
    );
}

/// CPU of `pid` over `window` of wall time: (ns from schedstat, ticks).
fn idle_cpu(pid: u32, window: Duration) -> (u64, u64) {
    let (ns, ticks) = (cpu_ns(pid), cpu_ticks(pid));
    std::thread::sleep(window);
    (cpu_ns(pid) - ns, cpu_ticks(pid) - ticks)
}

/// weftd against `peers` peer leases from scratch, for each size in WEFT_BENCH_PEERS
/// (default 5,000 and 15,000): network 10.0.0.0/8 with /24 subnets, the node's own lease
/// and the peers' written to etcd before weftd starts. Measures:
/// - time to ready and to all routes, peak RSS (VmHWM);
/// - at the default --reconcile-interval (10 s): weftd's CPU over 40 s of steady state
///   (the timer's cost per second of wall time) and, against a second run with the
///   timer out of the way (--reconcile-interval=3600), the CPU of one full pass;
/// - a hand-deleted route (`ip route del`): time from its deletion notification to the
///   route's return, 20 times;
/// - 200 peers added one at a time: CPU per event and latency to the route (p50/p99).
#[test]
#[ignore = "benchmark: run with scripts/bench.sh"]
fn scale_peers_from_scratch() {
    for peers in bench_sizes(&[5000, 15000]) {
        scale_one(peers);
    }
}

fn scale_one(peers: usize) {
    assert!(
        peers <= 37_000,
        "the layout holds 37,000 peers (public IPs 198.18.100-249.x)"
    );
    let label = format!("scale {peers} peers:");
    let mut c = Cluster::new(1, true);
    c.etcd.etcdctl(&[
        "put",
        CONFIG_KEY,
        r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#,
    ]);
    let own_ip = c.underlay.hosts[0].ip.clone();
    let mut pairs: Vec<(String, String)> = Vec::with_capacity(peers + 1);
    pairs.push((
        // Inside SubnetMin..SubnetMax (10.0.0.0/24 is below flannel's SubnetMin).
        "/coreos.com/network/subnets/10.250.250.0-24".to_string(),
        format!(
            r#"{{"PublicIP":"{own_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0a:58:ff:ff:00:01"}}}}"#
        ),
    ));
    pairs.extend((0..peers).map(|i| {
        let (a, b) = peer_subnet(i);
        (lease_key(a, b), lease_value(i))
    }));
    etcd_put_all(&c, pairs);
    let node_ns = c.underlay.hosts[0].ns.name.clone();

    // Phase 1: default timer.
    let started = Instant::now();
    let n = c.start_with_env(0, &[], &[("RUST_LOG", "info")]);
    c.nodes[n].wait_log("weftd is ready", Duration::from_secs(300));
    let ready = started.elapsed();
    let pid = c.nodes[n].pid().unwrap();
    let hwm_ready = status_kb(pid, "VmHWM:");
    let ns = &c.underlay.hosts[0].ns;
    let all_routes = support::wait_for_result("all routes", Duration::from_secs(300), || {
        (overlay_routes(ns) >= peers).then(|| started.elapsed())
    })
    .expect("all peer routes within 300 s");
    let subnet_env = c.nodes[n].wait_subnet_env(Duration::from_secs(10));
    let own_subnet = subnet_env
        .lines()
        .find(|l| l.starts_with("FLANNEL_SUBNET="))
        .unwrap_or("FLANNEL_SUBNET=?")
        .to_string();
    println!(
        "BENCH {label} ready {:.2} s after start (all {peers} routes in the kernel after \
         {:.2} s; {own_subnet}); VmHWM at ready {hwm_ready} kB",
        ready.as_secs_f64(),
        all_routes.as_secs_f64()
    );
    // Steady state at the default interval: 40 s, four timer passes.
    std::thread::sleep(Duration::from_secs(2));
    let window = Duration::from_secs(40);
    let (timer_ns, timer_ticks) = idle_cpu(pid, window);
    println!(
        "BENCH {label} steady state, default --reconcile-interval (10 s): {:.2} ms CPU per \
         second of wall time ({:.3} % of a core; {timer_ticks} ticks over {} s); {}",
        timer_ns as f64 / 1e6 / window.as_secs_f64(),
        timer_ns as f64 / 1e7 / window.as_secs_f64(),
        window.as_secs(),
        rss_line(pid)
    );

    // Hand-deleted routes: deletion notification to the route's return.
    let routes = watch_routes(&node_ns);
    let mut repairs = Vec::new();
    for k in 0..20 {
        let (a, b) = peer_subnet((k * 7919) % peers);
        let dst = format!("10.{a}.{b}.0");
        drain(&routes);
        ns.ip(&["route", "del", &format!("{dst}/24")]);
        let deleted = wait_route(&routes, &dst, RouteChange::Del, Duration::from_secs(5))
            .expect("the deletion's notification");
        let back = wait_route(&routes, &dst, RouteChange::New, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{label} route {dst} not repaired within 30 s"));
        repairs.push(back.duration_since(deleted));
        std::thread::sleep(Duration::from_millis(200));
    }
    repairs.sort();
    println!(
        "BENCH {label} hand-deleted route back: {}",
        summary(&repairs)
    );
    println!("BENCH {label} after phase 1: {}", rss_line(pid));
    println!(
        "BENCH {label} file-backed RSS by mapping: {}",
        file_rss(pid)
    );
    // WEFT_BENCH_PHASES=1: stop here (e.g. under a heap profiler); =2: after the restart.
    if std::env::var("WEFT_BENCH_PHASES").is_ok_and(|p| p.trim() == "1") {
        return;
    }

    // Phase 2: the timer out of the way, same kernel state.
    assert!(c.nodes[n].terminate().success());
    c.nodes.clear();
    let restarted = Instant::now();
    let n = c.start_with_env(0, &["--reconcile-interval=3600"], &[("RUST_LOG", "info")]);
    c.nodes[n].wait_log("weftd is ready", Duration::from_secs(300));
    let restart = restarted.elapsed();
    let pid = c.nodes[n].pid().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let (quiet_ns, _) = idle_cpu(pid, Duration::from_secs(20));
    let quiet_rate = quiet_ns as f64 / 20.0;
    let timer_rate = timer_ns as f64 / window.as_secs_f64();
    println!(
        "BENCH {label} restart on a programmed kernel: ready {:.2} s; without the timer \
         {:.3} ms CPU per second; so one full steady-state pass ~ {:.1} ms CPU \
         ((timer rate - quiet rate) x 10 s); {}",
        restart.as_secs_f64(),
        quiet_rate / 1e6,
        (timer_rate - quiet_rate) * 10.0 / 1e6,
        rss_line(pid)
    );
    if std::env::var("WEFT_BENCH_PHASES").is_ok_and(|p| p.trim() == "2") {
        return;
    }
    added_peer_events(&c, pid, &routes, peers, 200, &label);
    println!("BENCH {label} at the end: {}", rss_line(pid));
}

/// The release binary's size, as built and stripped (`strip` on a copy).
#[test]
#[ignore = "benchmark: run with scripts/bench.sh"]
fn binary_size() {
    let binary = weftd_binary();
    let built = std::fs::metadata(&binary).unwrap().len();
    let copy = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(&binary, copy.path()).unwrap();
    let status = std::process::Command::new("strip")
        .arg(copy.path())
        .status()
        .expect("strip (binutils)");
    assert!(status.success());
    let stripped = std::fs::metadata(copy.path()).unwrap().len();
    println!(
        "BENCH binary {binary}: {:.2} MiB as built ({built} bytes), {:.2} MiB stripped ({stripped} bytes)",
        built as f64 / 1048576.0,
        stripped as f64 / 1048576.0
    );
}

/// weftd's RSS in etcd mode in a cluster of N nodes (N - 1 peer leases; WEFT_BENCH_NODES,
/// default 3 and 500), 5 s after ready; then 100 peers added one at a time (latency).
#[test]
#[ignore = "benchmark: run with scripts/bench.sh"]
fn footprint_etcd() {
    for nodes in node_sizes() {
        let mut c = Cluster::new(1, true);
        c.etcd.etcdctl(&[
            "put",
            CONFIG_KEY,
            r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#,
        ]);
        let pairs = (0..nodes - 1)
            .map(|i| {
                let (a, b) = peer_subnet(i);
                (lease_key(a, b), lease_value(i))
            })
            .collect();
        etcd_put_all(&c, pairs);
        let n = c.start_with_env(0, &[], &[("RUST_LOG", "info")]);
        c.nodes[n].wait_log("weftd is ready", Duration::from_secs(120));
        let ns = &c.underlay.hosts[0].ns;
        support::wait_for("all routes", Duration::from_secs(120), || {
            (overlay_routes(ns) >= nodes - 1).then_some(())
        });
        let pid = c.nodes[n].pid().unwrap();
        std::thread::sleep(Duration::from_secs(5));
        println!(
            "BENCH footprint etcd mode, {nodes} nodes: {}; mapped: {}",
            rss_line(pid),
            file_rss(pid)
        );
        let routes = watch_routes(&ns.name);
        added_peer_events(
            &c,
            pid,
            &routes,
            nodes,
            100,
            &format!("footprint etcd mode, {nodes} nodes:"),
        );
    }
}

/// WEFT_BENCH_NODES (a comma list), default 3 and 500.
fn node_sizes() -> Vec<usize> {
    match std::env::var("WEFT_BENCH_NODES") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("WEFT_BENCH_NODES: a comma list of numbers")
            })
            .collect(),
        _ => vec![3, 500],
    }
}

/// A peer Node as weft (or flannel) publishes it: podCIDR, InternalIP, annotations.
fn kube_peer(name: &str, i: usize) -> serde_json::Value {
    use support::kube_cluster::PREFIX;
    let (a, b) = peer_subnet(i);
    assert!(i / 250 < 250, "the layout holds 62,500 peers");
    let ip = format!("198.19.{}.{}", i / 250, 1 + i % 250);
    let mut node = support::kube_api::node_json(name, &[&format!("10.{a}.{b}.0/24")], &ip);
    node["metadata"]["annotations"] = serde_json::json!({
        format!("{PREFIX}kube-subnet-manager"): "true",
        format!("{PREFIX}backend-type"): "vxlan",
        format!("{PREFIX}backend-data"):
            format!(r#"{{"VNI":1,"VtepMAC":"0a:58:{:02x}:{:02x}:00:01"}}"#, i / 256, i % 256),
        format!("{PREFIX}public-ip"): ip,
    });
    node
}

/// weftd's RSS in Kubernetes mode (the fake API server) in a cluster of N nodes
/// (WEFT_BENCH_NODES, default 3 and 500), 5 s after ready; then 100 Nodes added one at
/// a time: latency from the API server's create to the route in the kernel.
#[test]
#[ignore = "benchmark: run with scripts/bench.sh"]
fn footprint_kube() {
    use support::kube_cluster::KubeCluster;
    for nodes in node_sizes() {
        let mut c = KubeCluster::new(1);
        std::fs::write(
            c.dir.path().join("net-conf.json"),
            r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        c.register(0, &["10.0.0.0/24"]);
        for i in 0..nodes - 1 {
            c.api.create_node(kube_peer(&format!("peer-{i}"), i));
        }
        let n = c.start(0, &[("RUST_LOG", "info")]);
        c.nodes[n].wait_log("weftd is ready", Duration::from_secs(120));
        let ns = &c.underlay.hosts[0].ns;
        support::wait_for("all routes", Duration::from_secs(120), || {
            (overlay_routes(ns) >= nodes - 1).then_some(())
        });
        let pid = c.nodes[n].pid().unwrap();
        std::thread::sleep(Duration::from_secs(5));
        println!(
            "BENCH footprint kube mode, {nodes} nodes: {}; mapped: {}",
            rss_line(pid),
            file_rss(pid)
        );
        let routes = watch_routes(&ns.name);
        let label = format!("footprint kube mode, {nodes} nodes:");
        measure_added_peers(pid, &routes, 100, &label, "Node create", |j| {
            let i = 40_000 + j;
            let (a, b) = peer_subnet(i);
            let created = Instant::now();
            c.api.create_node(kube_peer(&format!("new-{j}"), i));
            (format!("10.{a}.{b}.0"), created)
        });
        println!("BENCH {label} after: {}", rss_line(pid));
    }
}
