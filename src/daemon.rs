//! The daemon's entry: flag checks, the health server, and the choice of mode (etcd or
//! Kubernetes). Each mode owns its datastore's startup order and event source; both
//! share the bring-up (`bring_up`) and what follows once a subnet is held (`node_state`).

use crate::cli::Cli;
use crate::health::{self, Endpoints};
use crate::iface::IfaceRequest;
use crate::metrics::{Metrics, SubnetManager};
use crate::node_state::Reporting;
use crate::readiness::Readiness;
use crate::shutdown::Shutdown;
use crate::state_channel;
use crate::{etcd_mode, kube_mode};
use anyhow::{Context, bail};
use regex::Regex;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tracing::info;

/// Runs weftd until SIGTERM or SIGINT.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    info!("CLI flags config: {}", describe_flags(&cli));
    if !(1..=1439).contains(&cli.subnet_lease_renew_margin) {
        bail!(
            "--subnet-lease-renew-margin={}: must be between 1 and 1439 minutes",
            cli.subnet_lease_renew_margin
        );
    }
    let request = iface_request(&cli)?;
    let shutdown = Shutdown::install()?;
    let readiness = Readiness::new("starting: no network config yet");
    let manager = subnet_manager(&cli);
    let metrics = Arc::new(Metrics::new(manager, readiness.clone()));
    let (state, state_inbox) = state_channel::channel();
    if cli.healthz_port > 0 {
        let ip: IpAddr = cli
            .healthz_ip
            .parse()
            .with_context(|| format!("--healthz-ip={}: not an IP address", cli.healthz_ip))?;
        let endpoints = Endpoints {
            readiness: readiness.clone(),
            metrics: metrics.clone(),
            state,
        };
        let limits = health::Limits {
            capacity: usize::from(cli.healthz_max_connections),
            per_address: usize::from(cli.healthz_max_connections_per_address),
        };
        let bound = health::start(SocketAddr::new(ip, cli.healthz_port), limits, endpoints)
            .await
            .with_context(|| {
                format!(
                    "cannot listen for health checks on {ip}:{}",
                    cli.healthz_port
                )
            })?;
        info!(address = %bound, "serving /healthz and /readyz, and /metrics and /debug/state");
    }
    let reporting = Reporting {
        metrics,
        state_inbox,
    };
    let node = cli.node_settings();
    match manager {
        SubnetManager::Kube => {
            let kube = cli.kube_settings();
            let settings = kube_mode::Settings { node, kube };
            kube_mode::run(&settings, request, shutdown, readiness, reporting).await
        }
        SubnetManager::Etcd => {
            let etcd = cli.etcd_settings();
            let settings = etcd_mode::Settings { node, etcd };
            etcd_mode::run(&settings, request, shutdown, readiness, reporting).await
        }
    }
}

/// `--kube-subnet-mgr` picks Kubernetes; etcd otherwise, as in flannel.
fn subnet_manager(cli: &Cli) -> SubnetManager {
    if cli.kube_subnet_mgr {
        SubnetManager::Kube
    } else {
        SubnetManager::Etcd
    }
}

fn iface_request(cli: &Cli) -> anyhow::Result<IfaceRequest> {
    let mut regexes = Vec::new();
    for text in &cli.iface_regex {
        regexes
            .push(Regex::new(text).with_context(|| {
                format!("--iface-regex={text}: not a valid regular expression")
            })?);
    }
    let public_ip = match cli.public_ip.as_str() {
        "" => None,
        text => Some(
            text.parse()
                .with_context(|| format!("--public-ip={text}: not an IPv4 address"))?,
        ),
    };
    let public_ipv6 = match cli.public_ipv6.as_str() {
        "" => None,
        text => Some(
            text.parse()
                .with_context(|| format!("--public-ipv6={text}: not an IPv6 address"))?,
        ),
    };
    let can_reach = match cli.iface_can_reach.as_str() {
        "" => None,
        text => {
            let ip: IpAddr = text
                .parse()
                .with_context(|| format!("--iface-can-reach={text}: not an IP address"))?;
            Some((ip, None))
        }
    };
    Ok(IfaceRequest {
        ifaces: cli.iface.clone(),
        iface_regexes: regexes,
        can_reach,
        public_ip,
        public_ipv6,
        node_ips: Vec::new(),
        etcd_reach: if cli.kube_subnet_mgr {
            None
        } else {
            crate::iface::etcd_endpoint_ip(&cli.etcd_endpoints).map(|ip| (ip, None))
        },
        ipv4: true,
        ipv6: false,
    })
}

fn describe_flags(cli: &Cli) -> String {
    let mut shown = cli.clone();
    if !shown.etcd_password.is_empty() {
        shown.etcd_password = "<redacted>".into();
    }
    format!("{shown:?}")
}
