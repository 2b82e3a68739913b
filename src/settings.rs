//! What the daemon's parts need from the command line, as plain settings: the raw clap
//! `Cli` stays at the entry point (`daemon`; `cli` makes these from it), and each part
//! below it gets the few values it uses, already in their types (durations, paths), so a
//! part cannot grow a silent dependency on an unrelated flag.

use std::path::PathBuf;
use std::time::Duration;
use weft_backend::offload::TxChecksum;
use weft_subnet::etcd::EtcdOptions;

/// What a node holding a subnet needs, in both modes (`node_state`, `node_loop`).
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub subnet_file: PathBuf,
    /// `--ip-masq`: masquerade pod traffic leaving the cluster network (and say so in
    /// subnet.env).
    pub ip_masq: bool,
    /// `--ip-masq-fully-random-disable`, inverted.
    pub masq_fully_random: bool,
    /// `--iptables-forward-rules`.
    pub forward_rules: bool,
    /// `--iptables-resync`: how often the traffic rules are checked.
    pub rules_resync: Duration,
    /// `--ip-blackhole-route`.
    pub blackhole_own: bool,
    /// `--reconcile-interval`: the full pass's timer.
    pub reconcile_interval: Duration,
    /// `--nexthop-objects`.
    pub nexthop_objects: bool,
    /// `--vxlan-tx-checksum`: the VXLAN devices' TX checksum offload.
    pub tx_checksum: TxChecksum,
    /// `WIREGUARD_KEY_FILE`: the wireguard backend's private key.
    pub wireguard_key_file: PathBuf,
    /// `--wireguard-userspace`, split into words; `None`: the kernel's WireGuard only.
    pub wireguard_userspace: Option<Vec<String>>,
}

/// etcd mode's own settings.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    pub options: EtcdOptions,
    pub lease_ttl: Duration,
    /// Renew this long before the lease expires (`--subnet-lease-renew-margin`).
    pub renew_margin: Duration,
    /// `--datastore-reset-grace`.
    pub reset_grace: Duration,
}

/// Kubernetes mode's own settings.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    pub net_config_path: PathBuf,
    pub annotation_prefix: String,
    pub api_url: String,
    pub kubeconfig_file: String,
    /// `--set-node-network-unavailable`: clear the Node's `NetworkUnavailable` condition
    /// once ready.
    pub set_network_unavailable: bool,
}
