//! Command line: flannel's flags and defaults, accepted as `-flag` or `--flag`, with
//! `FLANNELD_<FLAG>` environment fallbacks for flags not given on the command line.
//!
//! Differences from flannel (documented in docs/compatibility.md): an invalid value in a
//! `FLANNELD_*` variable is an error naming the variable instead of a logged warning, and
//! `--subnet-lease-ttl` is a weft extension (flannel hard-codes 24 h).

use crate::settings::{EtcdSettings, KubeSettings, NodeSettings};
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;
use weft_backend::offload::TxChecksum;
use weft_subnet::etcd::{EtcdOptions, TlsFiles};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// flannel's default `--iptables-resync`, in seconds.
pub const DEFAULT_IPTABLES_RESYNC: u32 = 5;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "weftd",
    version,
    about = "weftd: flannel-compatible overlay network daemon",
    long_about = "weftd leases a pod subnet for this node from etcd (or the Kubernetes API), \
                  programs the datapath and writes subnet.env for the CNI plugin. Flags are \
                  flannel's; each can also be set with FLANNELD_<FLAG_NAME>. Backends \
                  implemented: vxlan, host-gw, wireguard, alloc. `weftd status` shows a running \
                  weftd's state (see `weftd status --help`)."
)]
pub struct Cli {
    /// Comma-separated etcd endpoints.
    #[arg(
        long,
        env = "FLANNELD_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:4001,http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: String,
    /// etcd prefix.
    #[arg(
        long,
        env = "FLANNELD_ETCD_PREFIX",
        default_value = "/coreos.com/network"
    )]
    pub etcd_prefix: String,
    /// SSL key file used to secure etcd communication.
    #[arg(long, env = "FLANNELD_ETCD_KEYFILE", default_value = "")]
    pub etcd_keyfile: String,
    /// SSL certification file used to secure etcd communication.
    #[arg(long, env = "FLANNELD_ETCD_CERTFILE", default_value = "")]
    pub etcd_certfile: String,
    /// SSL Certificate Authority file used to secure etcd communication.
    #[arg(long, env = "FLANNELD_ETCD_CAFILE", default_value = "")]
    pub etcd_cafile: String,
    /// Username for BasicAuth to etcd.
    #[arg(long, env = "FLANNELD_ETCD_USERNAME", default_value = "")]
    pub etcd_username: String,
    /// Password for BasicAuth to etcd.
    #[arg(
        long,
        env = "FLANNELD_ETCD_PASSWORD",
        default_value = "",
        hide_env_values = true
    )]
    pub etcd_password: String,
    /// Contact the Kubernetes API for subnet assignment instead of etcd.
    #[arg(long, env = "FLANNELD_KUBE_SUBNET_MGR", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub kube_subnet_mgr: bool,
    /// Kubernetes API server URL. Does not need to be specified if weftd runs in a pod.
    #[arg(long, env = "FLANNELD_KUBE_API_URL", default_value = "")]
    pub kube_api_url: String,
    /// kubeconfig file location. Does not need to be specified if weftd runs in a pod.
    #[arg(long, env = "FLANNELD_KUBECONFIG_FILE", default_value = "")]
    pub kubeconfig_file: String,
    /// Kubernetes annotation prefix.
    #[arg(
        long,
        env = "FLANNELD_KUBE_ANNOTATION_PREFIX",
        default_value = "flannel.alpha.coreos.com"
    )]
    pub kube_annotation_prefix: String,
    /// Interface (name or IP address) to use for inter-host communication; repeatable,
    /// tried in order.
    #[arg(long, env = "FLANNELD_IFACE", action = ArgAction::Append)]
    pub iface: Vec<String>,
    /// Regex over interface IP addresses, then names; repeatable, tried after --iface.
    #[arg(long, env = "FLANNELD_IFACE_REGEX", action = ArgAction::Append)]
    pub iface_regex: Vec<String>,
    /// Use the interface the kernel would route this address through.
    #[arg(long, env = "FLANNELD_IFACE_CAN_REACH", default_value = "")]
    pub iface_can_reach: String,
    /// IPv4 address advertised to other nodes (default: the interface's address).
    #[arg(long, env = "FLANNELD_PUBLIC_IP", default_value = "")]
    pub public_ip: String,
    /// IPv6 address advertised to other nodes (default: the interface's address).
    #[arg(long, env = "FLANNELD_PUBLIC_IPV6", default_value = "")]
    pub public_ipv6: String,
    /// Filename where env variables (subnet, MTU, ...) will be written to.
    #[arg(
        long,
        env = "FLANNELD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    pub subnet_file: PathBuf,
    /// Path to the network configuration file (Kubernetes mode).
    #[arg(
        long,
        env = "FLANNELD_NET_CONFIG_PATH",
        default_value = "/etc/kube-flannel/net-conf.json"
    )]
    pub net_config_path: PathBuf,
    /// Subnet lease renewal margin, in minutes, ranging from 1 to 1439.
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60)]
    pub subnet_lease_renew_margin: u32,
    /// weft extension: TTL of the etcd lease on this node's subnet, in seconds
    /// (flannel: fixed 86400). The renewal margin is capped at half of it.
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_TTL", default_value_t = 86_400)]
    pub subnet_lease_ttl: u64,
    /// weft extension: seconds between full datapath reconcile passes (besides the
    /// passes triggered by lease changes and kernel notifications).
    #[arg(long, env = "FLANNELD_RECONCILE_INTERVAL", default_value_t = 10)]
    pub reconcile_interval: u64,
    /// weft extension: seconds during which peer routes and entries are not removed
    /// after etcd went back in time (restored or emptied), or at startup when this
    /// node's own lease is missing from etcd, so pods keep talking while peers re-publish.
    #[arg(long, env = "FLANNELD_DATASTORE_RESET_GRACE", default_value_t = 30)]
    pub datastore_reset_grace: u64,
    /// weft extension: program each peer route through a nexthop object (`ip nexthop`,
    /// Linux ≥ 5.3), which keeps the kernel's cost per route flat at thousands of peers;
    /// `false` installs flannel's plain gateway routes. Off by itself on older kernels.
    #[arg(long, env = "FLANNELD_NEXTHOP_OBJECTS", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value = "true", default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub nexthop_objects: bool,
    /// weft extension: the VXLAN device's TX checksum offload (`tx-checksum-ip-generic`):
    /// `auto` turns it off where it is known to corrupt VXLAN packets (kernels before 5.7,
    /// a vmxnet3 underlay; docs/compatibility.md), `on` and `off` force it. Re-applied
    /// whenever the device is re-created or changed by hand.
    #[arg(long, env = "FLANNELD_VXLAN_TX_CHECKSUM", default_value = "auto",
          value_parser = TxChecksum::parse)]
    pub vxlan_tx_checksum: TxChecksum,
    /// The wireguard backend's private key file (flannel's `WIREGUARD_KEY_FILE`): read,
    /// or generated there (mode 0600) when missing.
    #[arg(long, env = "WIREGUARD_KEY_FILE", default_value = "/run/flannel/wgkey")]
    pub wireguard_key_file: PathBuf,
    /// weft extension: a userspace WireGuard implementation that serves the wireguard
    /// backend's devices when the kernel has no WireGuard, as a command line to which the
    /// device name is appended, e.g. `boringtun-cli --disable-drop-privileges` (it must
    /// create the device and its UAPI socket under /var/run/wireguard, and daemonize).
    /// Empty: the kernel's only.
    #[arg(long, env = "FLANNELD_WIREGUARD_USERSPACE", default_value = "")]
    pub wireguard_userspace: String,
    /// Setup IP masquerade rule for traffic destined outside of overlay network.
    #[arg(long, env = "FLANNELD_IP_MASQ", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub ip_masq: bool,
    /// Do not use --random-fully in the masquerade rules.
    #[arg(long, env = "FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE", action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub ip_masq_fully_random_disable: bool,
    /// Add default accept rules to the FORWARD chain.
    #[arg(long, env = "FLANNELD_IPTABLES_FORWARD_RULES", action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_value = "true",
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub iptables_forward_rules: bool,
    /// Resync period for iptables rules, in seconds.
    #[arg(long, env = "FLANNELD_IPTABLES_RESYNC", default_value_t = DEFAULT_IPTABLES_RESYNC)]
    pub iptables_resync: u32,
    /// Maintain a blackhole route for this node's subnet.
    #[arg(long, env = "FLANNELD_IP_BLACKHOLE_ROUTE", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub ip_blackhole_route: bool,
    /// The IP address on which to listen for health checks.
    #[arg(long, env = "FLANNELD_HEALTHZ_IP", default_value = "0.0.0.0")]
    pub healthz_ip: String,
    /// The port on which to listen for health checks (0 disables them).
    #[arg(long, env = "FLANNELD_HEALTHZ_PORT", default_value_t = 0)]
    pub healthz_port: u16,
    /// weft extension: connections the health server serves at once (lowered to a
    /// quarter of the fd limit). Over it, the oldest idle connection of the address
    /// holding the most is closed to make room.
    #[arg(long, env = "FLANNELD_HEALTHZ_MAX_CONNECTIONS",
          default_value_t = crate::health::MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub healthz_max_connections: u16,
    /// weft extension: connections one source address may hold on the health server at
    /// once. Over it, that address's oldest idle connection is closed to make room.
    #[arg(long, env = "FLANNELD_HEALTHZ_MAX_CONNECTIONS_PER_ADDRESS",
          default_value_t = crate::health::MAX_CONNECTIONS_PER_ADDRESS,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub healthz_max_connections_per_address: u16,
    /// Kubernetes mode: set the node's NetworkUnavailable condition to False when ready.
    #[arg(long, env = "FLANNELD_SET_NODE_NETWORK_UNAVAILABLE", action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_value = "true",
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub set_node_network_unavailable: bool,
    /// weft extension: log format, `text` (human-readable, the default) or `json` (one
    /// object per line, for log shippers).
    #[arg(long, env = "FLANNELD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log verbosity (klog style): 0 info, 1-3 debug, 4+ trace. RUST_LOG overrides it.
    #[arg(short = 'v', long = "v", env = "FLANNELD_V", default_value_t = 0)]
    pub v: u8,
    /// Accepted for compatibility with klog; ignored (use RUST_LOG).
    #[arg(long, env = "FLANNELD_VMODULE", default_value = "", hide = true)]
    pub vmodule: String,
    /// Accepted for compatibility with klog; ignored.
    #[arg(
        long = "log_backtrace_at",
        env = "FLANNELD_LOG_BACKTRACE_AT",
        default_value = "",
        hide = true
    )]
    pub log_backtrace_at: String,
}

impl Cli {
    /// Parses like Go's `flag` package: `-name` and `--name` are the same flag. Exits with
    /// a usage message on errors, as flannel does.
    pub fn parse_flannel_style(args: Vec<OsString>) -> Cli {
        Cli::parse_from(normalize_args(args))
    }

    /// As [`Cli::parse_flannel_style`], but returns the error instead of exiting.
    pub fn try_parse_flannel_style(args: Vec<OsString>) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(normalize_args(args))
    }
}

/// Turns Go-style single-dash long flags (`-etcd-endpoints=x`) into `--etcd-endpoints=x`.
/// `-v`/`-h`/`-V` stay short flags; arguments after `--` and values that do not start
/// with a letter (e.g. `-5`) are left alone.
pub fn normalize_args(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut rest_are_positional = false;
    for (index, arg) in args.into_iter().enumerate() {
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if index == 0 || rest_are_positional {
            out.push(arg);
            continue;
        }
        if text == "--" {
            rest_are_positional = true;
            out.push(arg);
            continue;
        }
        let is_single_dash = text.starts_with('-') && !text.starts_with("--");
        let name = text.trim_start_matches('-').split('=').next().unwrap_or("");
        let starts_with_letter = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
        if is_single_dash && starts_with_letter && name.len() > 1 {
            out.push(OsString::from(format!("-{text}")));
        } else {
            out.push(arg);
        }
    }
    out
}

impl Cli {
    /// What a node holding a subnet needs.
    pub fn node_settings(&self) -> NodeSettings {
        let cli = self;
        NodeSettings {
            subnet_file: cli.subnet_file.clone(),
            ip_masq: cli.ip_masq,
            masq_fully_random: !cli.ip_masq_fully_random_disable,
            forward_rules: cli.iptables_forward_rules,
            rules_resync: Duration::from_secs(cli.iptables_resync.into()),
            blackhole_own: cli.ip_blackhole_route,
            reconcile_interval: Duration::from_secs(cli.reconcile_interval),
            nexthop_objects: cli.nexthop_objects,
            tx_checksum: cli.vxlan_tx_checksum,
            wireguard_key_file: cli.wireguard_key_file.clone(),
            wireguard_userspace: Some(
                cli.wireguard_userspace
                    .split_whitespace()
                    .map(String::from)
                    .collect::<Vec<_>>(),
            )
            .filter(|c| !c.is_empty()),
        }
    }

    /// etcd mode's settings.
    pub fn etcd_settings(&self) -> EtcdSettings {
        let cli = self;
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let mut options = EtcdOptions::new(
            cli.etcd_endpoints
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        );
        options.prefix.clone_from(&cli.etcd_prefix);
        options.username = non_empty(&cli.etcd_username);
        options.password = non_empty(&cli.etcd_password);
        options.tls = TlsFiles {
            ca_file: non_empty(&cli.etcd_cafile).map(Into::into),
            cert_file: non_empty(&cli.etcd_certfile).map(Into::into),
            key_file: non_empty(&cli.etcd_keyfile).map(Into::into),
        };
        options.lease_ttl = Duration::from_secs(cli.subnet_lease_ttl.max(1));
        EtcdSettings {
            options,
            lease_ttl: Duration::from_secs(cli.subnet_lease_ttl),
            renew_margin: Duration::from_secs(u64::from(cli.subnet_lease_renew_margin) * 60),
            reset_grace: Duration::from_secs(cli.datastore_reset_grace),
        }
    }

    /// Kubernetes mode's settings.
    pub fn kube_settings(&self) -> KubeSettings {
        let cli = self;
        KubeSettings {
            net_config_path: cli.net_config_path.clone(),
            annotation_prefix: cli.kube_annotation_prefix.clone(),
            api_url: cli.kube_api_url.clone(),
            kubeconfig_file: cli.kubeconfig_file.clone(),
            set_network_unavailable: cli.set_node_network_unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let mut all = vec![OsString::from("weftd")];
        all.extend(args.iter().map(OsString::from));
        Cli::try_parse_flannel_style(all).unwrap()
    }

    #[test]
    fn defaults_match_flannel() {
        let cli = parse(&[]);
        assert_eq!(
            cli.etcd_endpoints,
            "http://127.0.0.1:4001,http://127.0.0.1:2379"
        );
        assert_eq!(cli.etcd_prefix, "/coreos.com/network");
        assert_eq!(cli.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(cli.subnet_lease_renew_margin, 60);
        assert!(cli.iptables_forward_rules && !cli.ip_masq && !cli.kube_subnet_mgr);
        assert_eq!((cli.healthz_ip.as_str(), cli.healthz_port), ("0.0.0.0", 0));
        assert_eq!(cli.kube_annotation_prefix, "flannel.alpha.coreos.com");
        assert_eq!(cli.log_format, LogFormat::Text);
        assert_eq!(parse(&["-log-format=json"]).log_format, LogFormat::Json);
    }

    #[test]
    fn single_and_double_dash_forms() {
        let cli = parse(&[
            "-etcd-endpoints=http://10.0.0.1:2379",
            "--etcd-prefix",
            "/x/network",
            "-iface",
            "eth1",
            "--iface=10.0.0.5",
            "-ip-masq",
            "--iptables-forward-rules=false",
            "-subnet-file=/tmp/s.env",
            "-v=2",
        ]);
        assert_eq!(cli.etcd_endpoints, "http://10.0.0.1:2379");
        assert_eq!(cli.etcd_prefix, "/x/network");
        assert_eq!(cli.iface, vec!["eth1", "10.0.0.5"]);
        assert!(cli.ip_masq);
        assert!(!cli.iptables_forward_rules);
        assert_eq!(cli.subnet_file, PathBuf::from("/tmp/s.env"));
        assert_eq!(cli.v, 2);
    }

    #[test]
    fn normalization_leaves_values_alone() {
        let args: Vec<OsString> = ["weftd", "-v", "3", "--public-ip", "-5", "--", "-iface"]
            .iter()
            .map(OsString::from)
            .collect();
        let normalized: Vec<String> = normalize_args(args)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            normalized,
            ["weftd", "-v", "3", "--public-ip", "-5", "--", "-iface"]
        );
    }

    #[test]
    fn bad_values_name_the_flag() {
        let all = ["weftd", "--healthz-port=http"]
            .iter()
            .map(OsString::from)
            .collect();
        let err = Cli::try_parse_flannel_style(all).unwrap_err().to_string();
        assert!(
            err.contains("--healthz-port") && err.contains("http"),
            "{err}"
        );
    }
}
