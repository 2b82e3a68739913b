//! A Kubernetes-mode test cluster: node namespaces (each with a Vagrant-like NAT
//! interface), the fake API server on the underlay, and weftd processes started with
//! `--kube-subnet-mgr`.

use super::kernel_state::peer_routes;
use super::kube_api::{FakeApiServer, node_json};
use super::netns::{UNDERLAY_GATEWAY, Underlay, run_in};
use super::pods::Pod;
use super::unique;
use super::weftd::Weftd;
use std::path::PathBuf;
use std::time::Duration;

pub const NET_CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
pub const PREFIX: &str = "flannel.alpha.coreos.com/";
/// Watch delivery plus one reconcile pass; generous for loaded CI machines.
pub const PROPAGATION: Duration = Duration::from_secs(10);

/// Field order is drop order: pods, weftd processes, the API server, then namespaces.
pub struct KubeCluster {
    pub pods: Vec<Pod>,
    pub nodes: Vec<Weftd>,
    pub api: FakeApiServer,
    pub underlay: Underlay,
    pub dir: tempfile::TempDir,
}

impl KubeCluster {
    /// `hosts` node namespaces and the API server; no Node objects, no weftd yet.
    pub fn new(hosts: usize) -> KubeCluster {
        let underlay = Underlay::new(&unique("wk"), hosts);
        for host in &underlay.hosts {
            vagrant_nat(&host.ns);
        }
        let listener = run_in(&underlay.ns.name, || {
            std::net::TcpListener::bind(format!("{UNDERLAY_GATEWAY}:0")).expect("bind")
        });
        let api = FakeApiServer::start(listener);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("net-conf.json"), NET_CONF).unwrap();
        KubeCluster {
            pods: Vec::new(),
            nodes: Vec::new(),
            api,
            underlay,
            dir,
        }
    }

    pub fn node_name(&self, host: usize) -> String {
        self.underlay.hosts[host].ns.name.clone()
    }

    pub fn node_dir(&self, host: usize) -> PathBuf {
        self.dir.path().join(format!("node{host}"))
    }

    /// The Node object the kubelet would register: podCIDR and InternalIP.
    pub fn register(&self, host: usize, pod_cidrs: &[&str]) {
        let ip = &self.underlay.hosts[host].ip;
        self.api
            .create_node(node_json(&self.node_name(host), pod_cidrs, ip));
    }

    pub fn start(&mut self, host: usize, env: &[(&str, &str)]) -> usize {
        let netns = self.underlay.hosts[host].ns.name.clone();
        self.start_via(host, &["ip", "netns", "exec", &netns], &[], env)
    }

    /// Starts node `host`'s weftd through `launcher` with `extra` flags (see
    /// [`Weftd::start_via`]).
    pub fn start_via(
        &mut self,
        host: usize,
        launcher: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> usize {
        let conf = format!(
            "--net-config-path={}",
            self.dir.path().join("net-conf.json").display()
        );
        let url = format!("--kube-api-url={}", self.api.url());
        let node_name = self.node_name(host);
        let mut env = env.to_vec();
        if !env.iter().any(|(k, _)| k.starts_with("POD_")) {
            env.push(("NODE_NAME", &node_name));
        }
        let mut args = vec![
            "--kube-subnet-mgr",
            &url,
            &conf,
            "--healthz-port=8081",
            "--reconcile-interval=30",
        ];
        args.extend_from_slice(extra);
        let weftd = Weftd::start_via(launcher, &self.node_dir(host), &args, &env);
        self.nodes.push(weftd);
        self.nodes.len() - 1
    }

    pub fn readyz(&self, host: usize) -> (u16, String) {
        self.underlay.hosts[host]
            .ns
            .http_get("http://127.0.0.1:8081/readyz")
            .unwrap_or((0, String::new()))
    }

    pub fn annotation(&self, host: usize, suffix: &str) -> Option<String> {
        let node = self.api.node(&self.node_name(host))?;
        node["metadata"]["annotations"][format!("{PREFIX}{suffix}")]
            .as_str()
            .map(String::from)
    }

    pub fn routes_to(&self, host: usize) -> Vec<String> {
        peer_routes(&self.underlay.hosts[host].ns)
            .into_iter()
            .map(|(dst, _, _)| dst)
            .collect()
    }

    pub fn wait_routes(&self, host: usize, wanted: &[&str]) {
        self.wait_routes_within(host, wanted, PROPAGATION);
    }

    pub fn wait_routes_within(&self, host: usize, wanted: &[&str], limit: Duration) {
        let mut wanted: Vec<String> = wanted.iter().map(|s| s.to_string()).collect();
        wanted.sort();
        let found = super::wait_for_result("routes", limit, || {
            (self.routes_to(host) == wanted).then_some(())
        });
        assert!(
            found.is_some(),
            "node {host} routes {:?}, wanted {wanted:?}; log:\n{}",
            self.routes_to(host),
            self.nodes[host].log()
        );
    }
}

/// What a Vagrant VM looks like: a NAT interface with 10.0.2.15 and the default route.
pub fn vagrant_nat(ns: &super::netns::Netns) {
    ns.ip(&[
        "link", "add", "nat0", "type", "veth", "peer", "name", "nat1",
    ]);
    ns.ip(&["addr", "add", "10.0.2.15/24", "dev", "nat0"]);
    ns.ip(&["link", "set", "nat0", "up"]);
    ns.ip(&["link", "set", "nat1", "up"]);
    ns.ip(&[
        "route", "replace", "default", "via", "10.0.2.2", "dev", "nat0",
    ]);
}
