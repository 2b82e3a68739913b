//! Network namespaces as test hosts: an underlay namespace with a bridge, and nodes
//! attached to it by veth pairs. Only addresses inside the namespaces are used
//! (underlay 198.18.0.0/24); the host's own interfaces, routes and firewall are never
//! touched. Namespaces (and every process left in them) are removed on drop.

use std::process::{Command, Output};

pub struct Netns {
    pub name: String,
}

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

fn run_ok(args: &[&str]) -> String {
    let output = run(args);
    assert!(
        output.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl Netns {
    /// Creates a namespace with `lo` up. Fails loudly: these tests need root and netns.
    pub fn new(name: &str) -> Netns {
        let output = run(&["ip", "netns", "add", name]);
        assert!(
            output.status.success(),
            "cannot create network namespace {name} (these tests must run as root with netns support): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip -n <ns> ARGS`, asserting success.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        run_ok(&all)
    }

    /// Runs a command inside the namespace and returns its output, whatever the status.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// HTTP GET from inside the namespace; returns (status code, body).
    pub fn http_get(&self, url: &str) -> Option<(u16, String)> {
        let output = self.exec(&["curl", "-s", "-m", "2", "-w", "\n%{http_code}", url]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        Some((code.trim().parse().ok()?, body.to_string()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill whatever still runs inside (weftd, etcd), then remove the namespace.
        if let Ok(output) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A node on the underlay.
pub struct Host {
    pub ns: Netns,
    pub ip: String,
}

/// An underlay bridge (in its own namespace, holding 198.18.0.1) and `n` nodes
/// 198.18.0.11, .12, ... each with a default route via 198.18.0.1.
pub struct Underlay {
    pub hosts: Vec<Host>,
    pub ns: Netns,
}

pub const UNDERLAY_GATEWAY: &str = "198.18.0.1";
pub const UNDERLAY_GATEWAY_V6: &str = "fd00:198:18::1";

impl Underlay {
    pub fn new(prefix: &str, n: usize) -> Underlay {
        let ns = Netns::new(&format!("{prefix}-ul"));
        ns.ip(&["link", "add", "br0", "type", "bridge"]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{UNDERLAY_GATEWAY}/24"),
            "dev",
            "br0",
        ]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{UNDERLAY_GATEWAY_V6}/64"),
            "dev",
            "br0",
            "nodad",
        ]);
        ns.ip(&["link", "set", "br0", "up"]);
        let mut underlay = Underlay {
            hosts: Vec::new(),
            ns,
        };
        for i in 1..=n {
            underlay.add_host(&format!("{prefix}-n{i}"), &format!("198.18.0.{}", 10 + i));
        }
        underlay
    }

    pub fn add_host(&mut self, name: &str, ip: &str) -> &Host {
        let host = Netns::new(name);
        let port = format!("p{}", self.hosts.len() + 1);
        self.ns.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", name,
        ]);
        self.ns.ip(&["link", "set", &port, "master", "br0", "up"]);
        host.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        host.ip(&["link", "set", "eth0", "up"]);
        host.ip(&["route", "add", "default", "via", UNDERLAY_GATEWAY]);
        // Every node is dual-stack on the underlay: fd00:198:18::<last octet of its v4>.
        let v6 = format!("fd00:198:18::{}", ip.rsplit('.').next().unwrap_or("0"));
        host.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"]);
        host.ip(&["-6", "route", "add", "default", "via", UNDERLAY_GATEWAY_V6]);
        // A Kubernetes node routes for its pods.
        for sysctl in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            let forwarding = host.exec(&["sysctl", "-qw", sysctl]);
            assert!(forwarding.status.success(), "cannot set {sysctl} in {name}");
        }
        self.hosts.push(Host {
            ns: host,
            ip: ip.to_string(),
        });
        self.hosts.last().expect("just pushed")
    }
}

/// The stand-in for the internet: a namespace holding [`INTERNET_HOST`] (203.0.113.1/24)
/// and [`INTERNET_HOST_V6`] (2001:db8:113::1/64), reached from the nodes through the
/// underlay gateway, which routes between the two.
/// Replies to pod addresses have no way back (the gateway knows no pod network), as on a
/// real network: only masqueraded traffic gets answers.
pub fn internet(underlay: &Underlay, name: &str) -> Netns {
    let net = Netns::new(name);
    underlay.ns.ip(&[
        "link", "add", "inet0", "type", "veth", "peer", "name", "eth0", "netns", name,
    ]);
    underlay
        .ns
        .ip(&["addr", "add", "203.0.113.254/24", "dev", "inet0"]);
    underlay.ns.ip(&["link", "set", "inet0", "up"]);
    // The gateway routes, and does not drop pod-sourced packets it has no route back
    // for (a host whose rp_filter default is strict would).
    for sysctl in [
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.br0.rp_filter=0",
    ] {
        let set = underlay.ns.exec(&["sysctl", "-qw", sysctl]);
        assert!(set.status.success(), "cannot set {sysctl} in the underlay");
    }
    net.ip(&["addr", "add", &format!("{INTERNET_HOST}/24"), "dev", "eth0"]);
    net.ip(&["link", "set", "eth0", "up"]);
    net.ip(&["route", "add", "default", "via", "203.0.113.254"]);
    underlay.ns.ip(&[
        "addr",
        "add",
        "2001:db8:113::fe/64",
        "dev",
        "inet0",
        "nodad",
    ]);
    net.ip(&[
        "addr",
        "add",
        &format!("{INTERNET_HOST_V6}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    net.ip(&["-6", "route", "add", "default", "via", "2001:db8:113::fe"]);
    net
}

/// The IPv6 address of the [`internet`] host.
pub const INTERNET_HOST_V6: &str = "2001:db8:113::1";

/// The address of the [`internet`] host.
pub const INTERNET_HOST: &str = "203.0.113.1";

/// Runs `body` on a fresh thread that has entered `netns`, with a single-threaded tokio
/// runtime, so netlink sockets it opens live in that namespace. The test's other threads
/// stay where they are.
pub fn run_in<T: Send + 'static>(netns: &str, body: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{netns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("cannot enter network namespace {path}: {e}"));
        body()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// As [`run_in`], for async bodies.
pub fn block_on_in<F, T>(netns: &str, body: impl FnOnce() -> F + Send + 'static) -> T
where
    F: std::future::Future<Output = T>,
    T: Send + 'static,
{
    run_in(netns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(body())
    })
}
