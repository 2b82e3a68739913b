//! A running vxlan cluster for end-to-end tests: etcd, one weftd per node namespace,
//! one pod per node created through the CNI plugin, every peer programmed.

use super::cluster::{CONFIG_KEY, Cluster};
use super::kernel_state::peer_routes;
use super::pods::Pod;
use super::wait_for;
use serde_json::Value;
use std::time::Duration;

pub const VXLAN_CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
pub const LIMIT: Duration = Duration::from_secs(30);

pub struct VxlanCluster {
    pub pods: Vec<Pod>,
    pub c: Cluster,
}

pub fn cluster(nodes: usize) -> VxlanCluster {
    cluster_with(nodes, VXLAN_CONFIG, &[])
}

/// [`cluster`] with another net-conf and extra weftd flags.
pub fn cluster_with(nodes: usize, config: &str, extra: &[&str]) -> VxlanCluster {
    cluster_configured(nodes, config, extra, |_| Vec::new())
}

/// As [`cluster`], with extra flags per node (after `--reconcile-interval=30`).
pub fn cluster_with_flags(nodes: usize, flags: impl Fn(usize) -> Vec<String>) -> VxlanCluster {
    cluster_configured(nodes, VXLAN_CONFIG, &[], flags)
}

fn cluster_configured(
    nodes: usize,
    config: &str,
    extra: &[&str],
    flags: impl Fn(usize) -> Vec<String>,
) -> VxlanCluster {
    let mut c = Cluster::new(nodes, true);
    c.etcd.etcdctl(&["put", CONFIG_KEY, config]);
    let mut args = vec!["--reconcile-interval=30"];
    args.extend_from_slice(extra);
    for host in 0..nodes {
        let own = flags(host);
        let args: Vec<&str> = args
            .iter()
            .copied()
            .chain(own.iter().map(String::as_str))
            .collect();
        c.start(host, &args);
    }
    let pods = c.pods_when_ready(nodes, LIMIT);
    // Every node has programmed every peer.
    for host in 0..nodes {
        let ns = &c.underlay.hosts[host].ns;
        wait_for("routes to all peers", LIMIT, || {
            (peer_routes(ns).len() == nodes - 1).then_some(())
        });
    }
    VxlanCluster { pods, c }
}

/// What each node published: (subnet network address, subnet, public IP, VTEP MAC).
pub fn published(c: &Cluster) -> Vec<(String, String, String, String)> {
    c.subnets_in_etcd()
        .into_iter()
        .map(|(key, value)| {
            let subnet = key.rsplit('/').next().unwrap().replace('-', "/");
            let attrs: Value = serde_json::from_str(&value).unwrap();
            assert_eq!(attrs["BackendType"], "vxlan");
            assert_eq!(attrs["BackendData"]["VNI"], 1);
            let network = subnet.split('/').next().unwrap().to_string();
            (
                network,
                subnet,
                attrs["PublicIP"].as_str().unwrap().to_string(),
                attrs["BackendData"]["VtepMAC"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}
