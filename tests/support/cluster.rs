//! A test cluster: an underlay with node namespaces, an etcd in the underlay namespace,
//! and weftd processes. Drop order matters: weftd processes first, then etcd, then the
//! namespaces.

use super::etcd::EtcdServer;
use super::netns::{UNDERLAY_GATEWAY, Underlay};
use super::unique;
use super::weftd::Weftd;
use std::path::PathBuf;

pub const CONFIG_KEY: &str = "/coreos.com/network/config";

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
        let mut args = vec![
            format!("--etcd-endpoints=http://{UNDERLAY_GATEWAY}:2379"),
            "--healthz-port=8081".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let weftd = Weftd::start_with_env(
            &self.underlay.hosts[host].ns.name,
            &self.node_dir(host),
            &args,
            env,
        );
        self.nodes.push(weftd);
        self.nodes.len() - 1
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
