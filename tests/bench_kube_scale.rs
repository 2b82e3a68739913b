//! Kube mode against a real API server at scale (issue 28): the measuring half of
//! `scripts/k8s-scale.sh`, which starts etcd and the real kube-apiserver (the real-cluster
//! tier's builds and functions, scripts/k8s/) and a network namespace for weftd on the
//! tier's switch, then runs the ignored test `kube_scale` of this file. Nothing here runs
//! without that script; the other tests (normal suite, no root) keep the script, the Node
//! objects it makes and the flags it gives weftd in step with weft.
//!
//! Per size (`WEFT_SCALE_SIZES`, default 5,000 and 15,000 Nodes; each size adds Nodes to
//! the last one's), it prints BENCH lines (docs/benchmarks.md, "Kube mode against a real
//! API server"):
//! - the harness's own cost: creating the Nodes (wall time, the harness's CPU, the API
//!   server's and etcd's CPU);
//! - weftd started with an empty datapath: time to `/readyz` 200 and to every peer route
//!   in the kernel (netlink notifications, then a dump of proto 91), VmHWM, and the
//!   requests it made (the API server's audit log, weft's ServiceAccount) and the bytes it received
//!   (its namespace's only link);
//! - idle: weftd's CPU with its timer passes, requests and bytes, over `WEFT_SCALE_IDLE`;
//! - changes: 100 Nodes created and then deleted one at a time, each timed from the
//!   harness's API call to the route's notification, weftd's CPU per change; and status-
//!   only updates (a kubelet's heartbeat) at full speed, weftd's CPU per update;
//! - weftd restarted on a programmed kernel: ready, requests, bytes;
//! - the watch closed by the server: the API server restarted after an etcd compaction
//!   (the watch's resourceVersion is then gone): requests over the next 30 s, and a Node
//!   created afterwards reaching the kernel.

mod support;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::process::{cpu_ns, cpu_ticks, status_kb};
use support::routes::{RouteChange, drain, wait_route, watch_routes};
use support::weftd::Weftd;
use support::{percentile, wait_for};

const PREFIX: &str = "flannel.alpha.coreos.com/";
/// The cluster network: a /16 holds 256 /24s, 15,000 Nodes need a /14 or more; 10.0.0.0/8
/// (private, 65,536 Nodes) as the scale benchmarks of etcd mode use.
const NET_CONF: &str = r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#;
/// weftd's own Node's podCIDR; peers start at 10.1.0.0/24.
const OWN_POD_CIDR: &str = "10.0.0.0/24";
const HEALTHZ_PORT: u16 = 8081;
/// Requests the harness has in flight while it creates Nodes.
const CREATE_CONCURRENCY: usize = 64;
/// Changes timed one at a time (each kind).
const CHANGES: usize = 100;
/// Status-only updates (heartbeats) sent at full speed.
const HEARTBEATS: usize = 1000;

/// What scripts/k8s-scale.sh gives the harness (tests below check that it does).
const SCRIPT_ENV: [&str; 11] = [
    "WEFT_SCALE_KUBECONFIG",
    "WEFT_SCALE_WEFT_KUBECONFIG",
    "WEFT_SCALE_WEFT_USER",
    "WEFT_SCALE_CP_NETNS",
    "WEFT_SCALE_WEFT_NETNS",
    "WEFT_SCALE_NODE_NAME",
    "WEFT_SCALE_NODE_IP",
    "WEFT_SCALE_DIR",
    "WEFT_SCALE_PIDS",
    "WEFT_SCALE_AUDIT_LOG",
    "WEFT_SCALE_CONTROL",
];

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run scripts/k8s-scale.sh"))
}

/// Peer `i`'s pod subnet: 10.(1 + i/256).(i%256).0/24, as the controller manager's range
/// allocator hands them out in order (it would start at 10.0.0.0/24, which is weftd's).
fn peer_pod_cidr(i: usize) -> String {
    assert!(
        i < 254 * 256,
        "10.0.0.0/8 holds 65,024 peers in this layout"
    );
    format!("10.{}.{}.0/24", 1 + i / 256, i % 256)
}

/// Peer `i`'s name, public IP (198.19.0.0/16, never answered: nothing sends to the peers)
/// and VTEP MAC (unicast, locally administered, one per peer).
fn peer_name(i: usize) -> String {
    format!("scale-{i:05}")
}

fn peer_ip(i: usize) -> String {
    format!("198.19.{}.{}", i / 250, 1 + i % 250)
}

fn peer_mac(i: usize) -> String {
    format!("0a:58:c6:13:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff)
}

/// A Node as a kubelet registers it and weft (or flannel) annotates it: labels, podCIDR
/// (set at creation, as the controller manager would set it), InternalIP, capacity,
/// conditions, node info and a few images. About 3 kB of JSON, smaller than many real
/// Nodes (up to 50 images).
fn kubelet_node(name: &str, pod_cidr: &str, ip: &str) -> Value {
    let time = "2026-01-01T00:00:00Z";
    let condition = |kind: &str, status: &str, reason: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": reason,
               "lastHeartbeatTime": time, "lastTransitionTime": time})
    };
    let resources = json!({"cpu": "4", "memory": "16371528Ki", "pods": "110",
        "ephemeral-storage": "102625208Ki", "hugepages-2Mi": "0", "hugepages-1Gi": "0"});
    let images: Vec<Value> = [
        ("localhost/weft:k8s-test", 31_457_280),
        ("registry.k8s.io/kube-proxy:v1.34.4", 30_720_000),
        ("registry.k8s.io/coredns/coredns:v1.12.1", 22_528_000),
        ("registry.k8s.io/pause:3.10.1", 320_000),
        ("docker.io/library/nginx:1.27", 72_704_000),
    ]
    .iter()
    .map(|(image, size)| {
        json!({"names": [format!("{image}"), format!("{image}@sha256:{:064x}", size)], "sizeBytes": size})
    })
    .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux", "node.kubernetes.io/instance-type": "scale-test",
                "topology.kubernetes.io/zone": "zone-a",
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("NetworkUnavailable", "False", "FlannelIsUp"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
                condition("Ready", "True", "KubeletReady"),
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": format!("{:032x}", name.len()), "systemUUID": name,
                "bootID": name, "kernelVersion": "6.18.0", "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://1.6.20", "kubeletVersion": "v1.34.4",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            },
            "images": images,
        },
    })
}

/// Peer `i` as weft publishes itself: [`kubelet_node`] plus flannel's four annotations,
/// vxlan with its VTEP MAC.
fn peer_node(i: usize) -> Value {
    let ip = peer_ip(i);
    let mut node = kubelet_node(&peer_name(i), &peer_pod_cidr(i), &ip);
    let annotations = node["metadata"]["annotations"].as_object_mut().unwrap();
    for (key, value) in [
        ("backend-type", "vxlan".to_string()),
        (
            "backend-data",
            format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, peer_mac(i)),
        ),
        ("kube-subnet-manager", "true".to_string()),
        ("public-ip", ip),
    ] {
        annotations.insert(format!("{PREFIX}{key}"), value.into());
    }
    node
}

/// weftd's command line (after `--subnet-file`, which support::weftd adds).
fn weftd_args(dir: &Path, kubeconfig: &str) -> Vec<String> {
    vec![
        "--kube-subnet-mgr".into(),
        format!("--kubeconfig-file={kubeconfig}"),
        format!("--net-config-path={}", dir.join("net-conf.json").display()),
        format!("--healthz-port={HEALTHZ_PORT}"),
    ]
}

/// The Kubernetes API as the harness uses it: a client of the admin kubeconfig on a
/// runtime whose threads live in the control plane's namespace.
struct Harness {
    runtime: tokio::runtime::Runtime,
    nodes: Api<Node>,
    pids: PathBuf,
    audit: PathBuf,
    /// weftd's user in the audit log (its ServiceAccount's).
    user: String,
    control: String,
}

impl Harness {
    fn new() -> Harness {
        // The test thread enters the control plane's namespace; the runtime's worker
        // threads, started from it, are there too (the route watcher and the readiness
        // prober enter weftd's on threads of their own).
        let path = format!("/var/run/netns/{}", env("WEFT_SCALE_CP_NETNS"));
        let file = std::fs::File::open(&path).expect("control plane namespace");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let kubeconfig = env("WEFT_SCALE_KUBECONFIG");
        let nodes = runtime.block_on(async move {
            let kubeconfig = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
            let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .expect("config");
            config.headers.push((
                hyper::header::USER_AGENT,
                hyper::header::HeaderValue::from_static("weft-scale-harness"),
            ));
            Api::all(kube::Client::try_from(config).expect("client"))
        });
        Harness {
            runtime,
            nodes,
            pids: PathBuf::from(env("WEFT_SCALE_PIDS")),
            audit: PathBuf::from(env("WEFT_SCALE_AUDIT_LOG")),
            user: env("WEFT_SCALE_WEFT_USER"),
            control: env("WEFT_SCALE_CONTROL"),
        }
    }

    fn pid(&self, daemon: &str) -> u32 {
        std::fs::read_to_string(self.pids.join(daemon))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid file for {daemon}"))
    }

    /// CPU of the API server and etcd, in clock ticks.
    fn control_plane_ticks(&self) -> (u64, u64) {
        (
            cpu_ticks(self.pid("kube-apiserver")),
            cpu_ticks(self.pid("etcd")),
        )
    }

    fn create(&self, node: Value) {
        let node: Node = serde_json::from_value(node).expect("Node");
        let nodes = self.nodes.clone();
        self.runtime.block_on(async move {
            match nodes.create(&PostParams::default(), &node).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.is_already_exists() => {}
                Err(e) => panic!("create {:?}: {e}", node.metadata.name),
            }
        });
    }

    /// Creates peers `range` (those that exist already are left as they are),
    /// [`CREATE_CONCURRENCY`] requests at a time.
    fn create_peers(&self, range: std::ops::Range<usize>) -> usize {
        let nodes = self.nodes.clone();
        self.runtime.block_on(async move {
            futures::stream::iter(range)
                .map(|i| {
                    let nodes = nodes.clone();
                    async move {
                        let node: Node = serde_json::from_value(peer_node(i)).expect("Node");
                        match nodes.create(&PostParams::default(), &node).await {
                            Ok(_) => 1,
                            Err(kube::Error::Api(status)) if status.is_already_exists() => 0,
                            Err(e) => panic!("create {}: {e}", peer_name(i)),
                        }
                    }
                })
                .buffer_unordered(CREATE_CONCURRENCY)
                .fold(0, |n, created| async move { n + created })
                .await
        })
    }

    fn delete(&self, name: &str) {
        let nodes = self.nodes.clone();
        let name = name.to_string();
        self.runtime.block_on(async move {
            match nodes.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(e) => panic!("delete {name}: {e}"),
            }
        });
    }

    /// A kubelet's status update of peer `i` (its Ready heartbeat), nothing weft reads.
    fn heartbeats(&self, count: usize, peers: usize) {
        let nodes = self.nodes.clone();
        self.runtime.block_on(async move {
            futures::stream::iter(0..count)
                .map(|j| {
                    let nodes = nodes.clone();
                    async move {
                        let i = (j * 7919) % peers;
                        let time = format!("2026-01-01T{:02}:{:02}:{:02}Z", j / 3600 % 24, j / 60 % 60, j % 60);
                        let patch = json!({"status": {"conditions": [
                            {"type": "Ready", "status": "True", "reason": "KubeletReady",
                             "message": "kubelet is posting ready status", "lastHeartbeatTime": time}
                        ]}});
                        nodes
                            .patch_status(&peer_name(i), &PatchParams::default(), &Patch::Strategic(patch))
                            .await
                            .unwrap_or_else(|e| panic!("heartbeat of {}: {e}", peer_name(i)));
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<()>>()
                .await;
        });
    }

    /// The script's control command (`restart-apiserver`).
    fn control(&self, what: &str) {
        let status = Command::new("bash")
            .arg("-c")
            .arg(format!("{} {what}", self.control))
            .status()
            .expect("control command");
        assert!(status.success(), "{} {what}: {status}", self.control);
    }

    fn audit_mark(&self) -> u64 {
        std::fs::metadata(&self.audit).map_or(0, |m| m.len())
    }

    /// weft's requests logged since `mark`.
    fn requests_since(&self, mark: u64) -> Vec<Request> {
        let mut file = std::fs::File::open(&self.audit).expect("audit log");
        file.seek(std::io::SeekFrom::Start(mark)).expect("seek");
        let mut text = String::new();
        file.read_to_string(&mut text).expect("audit log");
        let mut by_id: BTreeMap<String, Request> = BTreeMap::new();
        let mut order = Vec::new();
        for line in text.lines() {
            let Ok(event) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if event["user"]["username"].as_str() != Some(self.user.as_str()) {
                continue;
            }
            let id = event["auditID"].as_str().unwrap_or_default().to_string();
            let request = Request {
                verb: event["verb"].as_str().unwrap_or_default().to_string(),
                uri: event["requestURI"].as_str().unwrap_or_default().to_string(),
                code: event["responseStatus"]["code"].as_u64().unwrap_or(0),
                stage: event["stage"].as_str().unwrap_or_default().to_string(),
                user_agent: event["userAgent"].as_str().unwrap_or_default().to_string(),
            };
            if by_id.insert(id.clone(), request).is_none() {
                order.push(id);
            }
        }
        order
            .into_iter()
            .filter_map(|id| by_id.remove(&id))
            .collect()
    }

    /// Prints weft's requests since `mark`: counts by verb, then each (up to 20).
    fn report_requests(&self, label: &str, mark: u64) -> Vec<Request> {
        let requests = self.requests_since(mark);
        let mut by_verb: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &requests {
            *by_verb.entry(r.verb.as_str()).or_default() += 1;
        }
        let agents: BTreeSet<&str> = requests.iter().map(|r| r.user_agent.as_str()).collect();
        println!(
            "BENCH {label}: weft's requests {} ({by_verb:?}), user agent {agents:?}",
            requests.len()
        );
        for r in requests.iter().take(20) {
            println!(
                "BENCH {label}:   {} {} -> {} ({})",
                r.verb, r.uri, r.code, r.stage
            );
        }
        requests
    }
}

struct Request {
    verb: String,
    uri: String,
    code: u64,
    stage: String,
    user_agent: String,
}

/// Bytes received and sent on weftd's namespace's only link (its API traffic: nothing
/// else talks there), with TCP/IP and TLS overhead.
fn link_bytes(netns: &str) -> (u64, u64) {
    let output = Command::new("ip")
        .args(["-n", netns, "-s", "-j", "link", "show", "dev", "eth0"])
        .output()
        .expect("ip");
    let links: Value = serde_json::from_slice(&output.stdout).expect("ip -j");
    let stats = &links[0]["stats64"];
    (
        stats["rx"]["bytes"].as_u64().unwrap_or(0),
        stats["tx"]["bytes"].as_u64().unwrap_or(0),
    )
}

fn bytes_since(netns: &str, before: (u64, u64)) -> String {
    let now = link_bytes(netns);
    format!(
        "received {:.2} MB, sent {:.2} MB",
        (now.0 - before.0) as f64 / 1e6,
        (now.1 - before.1) as f64 / 1e6
    )
}

/// weft's routes in the namespace (route protocol 91).
fn weft_routes(netns: &str) -> usize {
    let output = Command::new("ip")
        .args(["-n", netns, "route", "show", "proto", "91"])
        .output()
        .expect("ip route");
    String::from_utf8_lossy(&output.stdout).lines().count()
}

/// Asks weftd's `/readyz` from inside its namespace every 10 ms until it answers 200; the
/// instant it did (bounded).
fn wait_ready(netns: &str, limit: Duration) -> Instant {
    support::netns::run_in(netns, move || {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", HEALTHZ_PORT)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let _ = stream.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n");
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200") {
                    return Instant::now();
                }
            }
            assert!(
                Instant::now() < deadline,
                "weftd not ready within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

/// Waits until `count` distinct peer routes (10.1.0.0 and up) were added; the instant the
/// last one was (bounded). A burst of 15,000 routes can overflow the notification socket
/// (the kernel drops what does not fit): when notifications stop for 200 ms, a dump
/// decides, and the last notification seen stands for the last route.
fn wait_peer_routes(
    netns: &str,
    routes: &mpsc::Receiver<(String, RouteChange, Instant)>,
    count: usize,
    limit: Duration,
) -> Instant {
    let deadline = Instant::now() + limit;
    let mut seen = BTreeSet::new();
    let mut last = Instant::now();
    while seen.len() < count {
        match routes.recv_timeout(Duration::from_millis(200)) {
            Ok((dst, change, at)) => {
                if change == RouteChange::New && dst.starts_with("10.") && !dst.starts_with("10.0.")
                {
                    seen.insert(dst);
                    last = at;
                }
            }
            Err(_) if weft_routes(netns) >= count => {
                println!(
                    "BENCH (notifications of {} of {count} routes were dropped; the dump has them all)",
                    count - seen.len()
                );
                break;
            }
            Err(_) => assert!(
                Instant::now() < deadline,
                "{} of {count} peer routes within {limit:?}",
                weft_routes(netns)
            ),
        }
    }
    last
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(latencies: &mut [Duration]) -> String {
    latencies.sort();
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(percentile(latencies, 0.5)),
        ms(percentile(latencies, 0.99)),
        ms(latencies[latencies.len() - 1])
    )
}

fn sizes() -> Vec<usize> {
    std::env::var("WEFT_SCALE_SIZES")
        .unwrap_or_else(|_| "5000,15000".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("WEFT_SCALE_SIZES: a comma list of numbers")
        })
        .collect()
}

fn idle_window() -> Duration {
    Duration::from_secs(
        std::env::var("WEFT_SCALE_IDLE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    )
}

/// This (harness) process's CPU, in clock ticks.
fn own_ticks() -> u64 {
    cpu_ticks(std::process::id())
}

fn ticks_ms(ticks: u64) -> f64 {
    ticks as f64 * 1e3 / support::process::clock_ticks_per_second()
}

#[test]
#[ignore = "benchmark: run with scripts/k8s-scale.sh (root, the real API server)"]
fn kube_scale() {
    let h = Harness::new();
    let netns = env("WEFT_SCALE_WEFT_NETNS");
    let node_name = env("WEFT_SCALE_NODE_NAME");
    let dir = PathBuf::from(env("WEFT_SCALE_DIR"));
    let weft_kubeconfig = env("WEFT_SCALE_WEFT_KUBECONFIG");
    std::fs::write(dir.join("net-conf.json"), NET_CONF).unwrap();
    // weftd's own Node, as its kubelet registers it (weftd adds the annotations).
    h.create(kubelet_node(
        &node_name,
        OWN_POD_CIDR,
        &env("WEFT_SCALE_NODE_IP"),
    ));
    let args = weftd_args(&dir, &weft_kubeconfig);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let start_weftd = || {
        Weftd::start_with_env(
            &netns,
            &dir,
            &args,
            &[("NODE_NAME", node_name.as_str()), ("RUST_LOG", "info")],
        )
    };
    let mut created = 0;
    for size in sizes() {
        let peers = size - 1;
        let label = format!("kube scale, {size} Nodes");

        // The harness's own cost: creating the Nodes.
        let (api0, etcd0) = h.control_plane_ticks();
        let own0 = own_ticks();
        let started = Instant::now();
        let new = h.create_peers(created..peers);
        let wall = started.elapsed();
        let (api1, etcd1) = h.control_plane_ticks();
        println!(
            "BENCH {label}: harness created {new} Nodes in {:.1} s ({:.0}/s, {CREATE_CONCURRENCY} \
             in flight); CPU: harness {:.1} s, kube-apiserver {:.1} s, etcd {:.1} s; one Node \
             {} bytes of JSON",
            wall.as_secs_f64(),
            new as f64 / wall.as_secs_f64(),
            ticks_ms(own_ticks() - own0) / 1e3,
            ticks_ms(api1 - api0) / 1e3,
            ticks_ms(etcd1 - etcd0) / 1e3,
            peer_node(0).to_string().len(),
        );
        created = peers;

        // weftd from scratch (no device, no routes).
        let routes = watch_routes(&netns);
        let mark = h.audit_mark();
        let bytes = link_bytes(&netns);
        let (api0, _) = h.control_plane_ticks();
        let started = Instant::now();
        let mut weftd = start_weftd();
        let pid = weftd.pid().expect("weftd pid");
        let ready = wait_ready(&netns, Duration::from_secs(120));
        let all = wait_peer_routes(&netns, &routes, peers, Duration::from_secs(300));
        println!(
            "BENCH {label}: weftd start -> /readyz 200 {:.2} s, -> all {peers} peer routes {:.2} \
             s ({} routes with proto 91); VmHWM {} kB, VmRSS {} kB",
            ready.duration_since(started).as_secs_f64(),
            all.duration_since(started).as_secs_f64(),
            weft_routes(&netns),
            status_kb(pid, "VmHWM:"),
            status_kb(pid, "VmRSS:"),
        );
        std::thread::sleep(Duration::from_secs(3));
        let (api1, _) = h.control_plane_ticks();
        h.report_requests(&format!("{label}, start"), mark);
        println!(
            "BENCH {label}, start: {}; kube-apiserver CPU {:.2} s",
            bytes_since(&netns, bytes),
            ticks_ms(api1 - api0) / 1e3
        );

        // Idle, with the timer's passes.
        let window = idle_window();
        let mark = h.audit_mark();
        let bytes = link_bytes(&netns);
        let ns0 = cpu_ns(pid);
        std::thread::sleep(window);
        let idle_ns = cpu_ns(pid) - ns0;
        println!(
            "BENCH {label}, idle {} s: weftd CPU {:.3} % of a core ({:.1} ms/s); {}; VmHWM {} kB",
            window.as_secs(),
            idle_ns as f64 / window.as_nanos() as f64 * 100.0,
            idle_ns as f64 / 1e6 / window.as_secs_f64(),
            bytes_since(&netns, bytes),
            status_kb(pid, "VmHWM:"),
        );
        h.report_requests(&format!("{label}, idle"), mark);

        // One change at a time: Nodes added, then deleted.
        let mark = h.audit_mark();
        for (kind, change) in [("added", RouteChange::New), ("deleted", RouteChange::Del)] {
            drain(&routes);
            let mut latencies = Vec::with_capacity(CHANGES);
            let mut api_calls = Vec::with_capacity(CHANGES);
            let ns0 = cpu_ns(pid);
            let started = Instant::now();
            for j in 0..CHANGES {
                let i = 60_000 + j;
                let dst = peer_pod_cidr(i).trim_end_matches("/24").to_string();
                let before = Instant::now();
                match change {
                    RouteChange::New => h.create(peer_node(i)),
                    RouteChange::Del => h.delete(&peer_name(i)),
                }
                api_calls.push(before.elapsed());
                let seen = wait_route(&routes, &dst, change, Duration::from_secs(30))
                    .unwrap_or_else(|| panic!("{label}: route to {dst} not {kind} within 30 s"));
                latencies.push(seen.duration_since(before));
                std::thread::sleep(Duration::from_millis(20));
            }
            let spent = cpu_ns(pid) - ns0;
            let wall = started.elapsed();
            println!(
                "BENCH {label}: Node {kind}, API call -> route: {}; the API call alone: {}; \
                 weftd CPU per change {:.2} ms ({:.2} ms minus idle)",
                summary(&mut latencies),
                summary(&mut api_calls),
                spent as f64 / 1e6 / CHANGES as f64,
                (spent as f64 - idle_ns as f64 / window.as_secs_f64() * wall.as_secs_f64())
                    / 1e6
                    / CHANGES as f64,
            );
        }
        h.report_requests(&format!("{label}, changes"), mark);

        // Status-only updates (heartbeats), as fast as the API server takes them.
        let ns0 = cpu_ns(pid);
        let started = Instant::now();
        h.heartbeats(HEARTBEATS, peers);
        std::thread::sleep(Duration::from_millis(500));
        let spent = cpu_ns(pid) - ns0;
        let wall = started.elapsed();
        println!(
            "BENCH {label}: {HEARTBEATS} status-only Node updates in {:.1} s: weftd CPU per \
             update {:.3} ms ({:.3} ms minus idle)",
            wall.as_secs_f64(),
            spent as f64 / 1e6 / HEARTBEATS as f64,
            (spent as f64 - idle_ns as f64 / window.as_secs_f64() * wall.as_secs_f64())
                / 1e6
                / HEARTBEATS as f64,
        );

        // weftd restarted on a programmed kernel.
        weftd.terminate();
        let mark = h.audit_mark();
        let bytes = link_bytes(&netns);
        let started = Instant::now();
        let mut weftd = start_weftd();
        let pid = weftd.pid().expect("weftd pid");
        let ready = wait_ready(&netns, Duration::from_secs(120));
        std::thread::sleep(Duration::from_secs(5));
        println!(
            "BENCH {label}, restart: weftd start -> /readyz 200 {:.2} s; {} routes with proto \
             91; VmHWM {} kB; {}",
            ready.duration_since(started).as_secs_f64(),
            weft_routes(&netns),
            status_kb(pid, "VmHWM:"),
            bytes_since(&netns, bytes),
        );
        h.report_requests(&format!("{label}, restart"), mark);

        // The watch closed by the server: etcd compacted and the API server restarted,
        // so weft's resourceVersion is gone.
        let mark = h.audit_mark();
        let bytes = link_bytes(&netns);
        let started = Instant::now();
        h.control("restart-apiserver");
        let restarted = started.elapsed();
        drain(&routes);
        let i = 61_000;
        let dst = peer_pod_cidr(i).trim_end_matches("/24").to_string();
        let before = Instant::now();
        h.create(peer_node(i));
        let seen = wait_route(&routes, &dst, RouteChange::New, Duration::from_secs(60));
        std::thread::sleep(Duration::from_secs(20));
        println!(
            "BENCH {label}, API server restarted after an etcd compaction ({:.1} s): a Node \
             created afterwards -> route {}; {} routes with proto 91; {}; weftd's log: {} \
             watch restarts",
            restarted.as_secs_f64(),
            seen.map_or("never (60 s)".to_string(), |s| format!(
                "{:.0} ms",
                ms(s.duration_since(before))
            )),
            weft_routes(&netns),
            bytes_since(&netns, bytes),
            weftd.log_count("Node watch"),
        );
        h.report_requests(&format!("{label}, API server restart"), mark);
        h.delete(&peer_name(i));
        for line in weftd.log().lines().filter(|l| l.contains("watch")).take(10) {
            println!("BENCH {label}, weftd:   {line}");
        }

        // The next size starts from scratch again.
        weftd.terminate();
        Command::new("ip")
            .args(["-n", &netns, "link", "del", "flannel.1"])
            .status()
            .expect("ip link del");
        wait_for("weft's routes gone", Duration::from_secs(30), || {
            (weft_routes(&netns) == 0).then_some(())
        });
    }
}

// The normal suite (no root, no API server): the harness and its script stay in step.

const SCRIPT: &str = "scripts/k8s-scale.sh";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_script_parses_and_sets_what_the_harness_reads() {
    let status = Command::new("bash")
        .args(["-n", SCRIPT])
        .current_dir(repo())
        .status()
        .expect("bash");
    assert!(status.success(), "bash -n {SCRIPT}");
    let script = std::fs::read_to_string(repo().join(SCRIPT)).unwrap();
    for name in SCRIPT_ENV {
        assert!(
            script.contains(&format!("{name}=")),
            "{SCRIPT} does not set {name}, which the harness reads"
        );
    }
    assert!(
        script.contains("--exact kube_scale"),
        "{SCRIPT} runs the harness's test kube_scale"
    );
}

#[test]
fn the_flags_given_to_weftd_parse_as_kube_mode() {
    let dir = Path::new("/run/weft-scale");
    let mut args = vec![
        "weftd".to_string(),
        "--subnet-file=/run/weft-scale/subnet.env".to_string(),
    ];
    args.extend(weftd_args(dir, "/etc/weft.kubeconfig"));
    let cli = weft::cli::Cli::try_parse_flannel_style(args.into_iter().map(Into::into).collect())
        .expect("weftd's flags");
    assert!(cli.kube_subnet_mgr);
    let kube = cli.kube_settings();
    assert_eq!(kube.kubeconfig_file, "/etc/weft.kubeconfig");
    assert_eq!(kube.net_config_path, dir.join("net-conf.json"));
    assert_eq!(cli.healthz_port, HEALTHZ_PORT);
}

/// The Nodes the harness writes are peers weft accepts: each reads back as the lease the
/// harness meant (subnet, public IP, vxlan with its VTEP MAC), and no two collide.
#[test]
fn the_harness_nodes_round_trip_through_node_to_lease() {
    use weft_subnet::kube::{AnnotationKeys, ClusterNetworks, node};
    let config = weft_subnet::RawConfig::parse(NET_CONF)
        .and_then(|raw| raw.for_kube())
        .expect("net-conf.json");
    let networks = ClusterNetworks {
        ipv4: config.ipv4.map(|p| p.network),
        ipv6: None,
    };
    let keys = AnnotationKeys::new(PREFIX).unwrap();
    let mut subnets = BTreeSet::new();
    let mut macs = BTreeSet::new();
    for i in (0..15_000)
        .step_by(997)
        .chain([14_998, 60_000, 60_099, 61_000])
    {
        let node: weft_subnet::kube::Node = serde_json::from_value(peer_node(i)).expect("Node");
        let lease = node::node_to_lease(&node, &keys, &networks)
            .unwrap_or_else(|e| panic!("peer {i}: {e}"));
        assert_eq!(
            lease.key.to_string(),
            peer_pod_cidr(i).replace('/', "-"),
            "peer {i}"
        );
        assert_eq!(lease.attrs.public_ip.to_string(), peer_ip(i));
        assert_eq!(lease.attrs.backend_type, "vxlan");
        let data = lease.attrs.backend_data.as_ref().expect("data").to_value();
        assert_eq!(data["VtepMAC"], peer_mac(i), "peer {i}");
        assert_eq!(
            node::internal_ips(&node),
            vec![peer_ip(i).parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(
            subnets.insert(lease.key.to_string()),
            "peer {i}'s subnet twice"
        );
        assert!(macs.insert(peer_mac(i)), "peer {i}'s MAC twice");
    }
    // weftd's own Node, as registered: its podCIDR is in the network and no peer's.
    let own: weft_subnet::kube::Node =
        serde_json::from_value(kubelet_node("own", OWN_POD_CIDR, "198.18.0.20")).unwrap();
    let key = node::pod_subnets(&own, &networks).expect("own podCIDR");
    assert!(!subnets.contains(&key.to_string()));
    // Every peer of the largest default size, and the changes, fit in the layout.
    assert_eq!(peer_pod_cidr(61_000), "10.239.72.0/24");
}
