//! A test cluster: an underlay with node namespaces, an etcd in the underlay namespace,
//! and weftd processes. Drop order matters: weftd processes first, then etcd, then the
//! namespaces.

use super::etcd::EtcdServer;
use super::netns::{UNDERLAY_GATEWAY, Underlay};
use super::pods::{Pod, add_pod};
use super::unique;
use super::weftd::Weftd;
use std::path::PathBuf;
use std::time::Duration;

pub const CONFIG_KEY: &str = "/coreos.com/network/config";
const ETCD_ENDPOINTS: &str = "--etcd-endpoints=http://198.18.0.1:2379";

pub struct Cluster {
    pub nodes: Vec<Weftd>,
    pub etcd: EtcdServer,
    pub underlay: Underlay,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub fn new(hosts: usize, start_etcd: bool) -> Cluster {
        let underlay = Underlay::new(&unique("we"), hosts);
        let mut etcd = EtcdServer::prepare_in(&underlay.ns.name, UNDERLAY_GATEWAY);
        if start_etcd {
            etcd.launch();
        }
        Cluster {
            nodes: Vec::new(),
            etcd,
            underlay,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn node_dir(&self, host: usize) -> PathBuf {
        self.dir.path().join(format!("node{host}"))
    }

    pub fn start(&mut self, host: usize, extra: &[&str]) -> usize {
        self.start_with_env(host, extra, &[])
    }

    pub fn start_with_env(&mut self, host: usize, extra: &[&str], env: &[(&str, &str)]) -> usize {
        let netns = self.underlay.hosts[host].ns.name.clone();
        self.start_via(host, &["ip", "netns", "exec", &netns], extra, env)
    }

    /// Starts node `host`'s weftd through `launcher` (see [`Weftd::start_via`]).
    pub fn start_via(
        &mut self,
        host: usize,
        launcher: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> usize {
        let weftd = Weftd::start_via(launcher, &self.node_dir(host), &self.args(extra), env);
        self.nodes.push(weftd);
        self.nodes.len() - 1
    }

    /// Waits until the weftd of each of hosts `0..hosts` (started in host order) is
    /// ready, and adds a pod on each through the CNI plugin, named after its node
    /// (`<netns>-p`); the pods in host order.
    pub fn pods_when_ready(&self, hosts: usize, limit: Duration) -> Vec<Pod> {
        (0..hosts)
            .map(|host| {
                self.nodes[host].wait_log("weftd is ready", limit);
                let node = &self.underlay.hosts[host].ns;
                add_pod(node, &format!("{}-p", node.name), &self.node_dir(host))
            })
            .collect()
    }

    /// weftd's arguments for etcd mode, then `extra`.
    fn args<'a>(&self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args: Vec<&str> = vec![ETCD_ENDPOINTS, "--healthz-port=8081"];
        args.extend_from_slice(extra);
        args
    }

    pub fn readyz(&self, host: usize) -> (u16, String) {
        self.underlay.hosts[host]
            .ns
            .http_get("http://127.0.0.1:8081/readyz")
            .unwrap_or((0, String::new()))
    }

    pub fn subnets_in_etcd(&self) -> Vec<(String, String)> {
        let out = self
            .etcd
            .etcdctl(&["get", "--prefix", "/coreos.com/network/subnets/"]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .map(|kv| (kv[0].to_string(), kv.get(1).unwrap_or(&"").to_string()))
            .collect()
    }
}
