//! The daemon's startup order and event loop (etcd mode).
//!
//! Startup follows flannel's order: flags → health server → network config (retried
//! until valid) → external interface → lease (retried; conflicts and "out of subnets"
//! never crash the daemon) → subnet.env → ready → watch leases and keep the lease.
//! Nothing is torn down on exit: restarts must not disturb traffic.

use crate::cli::Cli;
use crate::datapath::Datapath;
use crate::health::{self, Readiness};
use crate::iface::{self, ExternalInterface, IfaceRequest};
use crate::node_state::{NodeState, TICK};
use crate::shutdown::Shutdown;
use crate::subnet_file;
use anyhow::{Context, bail};
use regex::Regex;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use weft_backend::backend::{AllocBackend, Backend, VxlanBackend};
use weft_backend::kernel::{HostSnapshot, Kernel, KernelEvent};
use weft_backend::mac::{self, Mac};
use weft_backend::vxlan::{self, VxlanConfig};
use weft_subnet::config::BackendType;
use weft_subnet::etcd::{
    AcquireError, Backoff, ConfigFetchError, EtcdError, EtcdOptions, EtcdSubnetManager,
    RenewOutcome, TlsFiles, WatchBatch,
};
use weft_subnet::family::{Family, Net};
use weft_subnet::watch::{Changes, LeaseEvent, LeaseWatcher, OwnLeaseChange};
use weft_subnet::{Lease, LeaseAttrs, NetworkConfig, SubnetKey};

/// Backends this build of weftd can run.
pub(crate) const IMPLEMENTED_BACKENDS: [BackendType; 2] = [BackendType::Vxlan, BackendType::Alloc];

/// Runs weftd until SIGTERM or SIGINT.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    info!("CLI flags config: {}", describe_flags(&cli));
    if !(1..=1439).contains(&cli.subnet_lease_renew_margin) {
        bail!(
            "--subnet-lease-renew-margin={}: must be between 1 and 1439 minutes",
            cli.subnet_lease_renew_margin
        );
    }
    for warning in cli.unimplemented_flag_warnings() {
        warn!("{warning}");
    }
    let request = iface_request(&cli)?;
    let shutdown = Shutdown::install()?;
    let readiness = Readiness::new("starting: no network config yet");
    if cli.healthz_port > 0 {
        let ip: IpAddr = cli
            .healthz_ip
            .parse()
            .with_context(|| format!("--healthz-ip={}: not an IP address", cli.healthz_ip))?;
        let (bound, serve) = health::bind(SocketAddr::new(ip, cli.healthz_port), readiness.clone())
            .await
            .with_context(|| {
                format!(
                    "cannot listen for health checks on {ip}:{}",
                    cli.healthz_port
                )
            })?;
        info!(address = %bound, "serving /healthz and /readyz");
        tokio::spawn(serve);
    }
    if cli.kube_subnet_mgr {
        crate::kube_mode::run(&cli, request, shutdown, readiness).await
    } else {
        run_etcd(&cli, request, shutdown, readiness).await
    }
}

/// etcd mode: the lease lives in etcd with a TTL and is renewed; peers come from a watch.
async fn run_etcd(
    cli: &Cli,
    request: IfaceRequest,
    mut shutdown: Shutdown,
    readiness: Arc<Readiness>,
) -> anyhow::Result<()> {
    let previous = subnet_file::read_previous(&cli.subnet_file);
    match previous {
        Some(key) => {
            info!(subnet = %key, file = %cli.subnet_file.display(), "previous subnet found")
        }
        None => debug!(file = %cli.subnet_file.display(), "no previous subnet"),
    }

    let options = etcd_options(cli);
    let Some(manager) = shutdown.until(connect(&options)).await else {
        return Ok(());
    };
    let manager = Arc::new(manager?);
    let Some(config) = shutdown.until(fetch_config(&manager, &readiness)).await else {
        return Ok(());
    };
    info!(config = %config.summary(), "network config");

    let (host, external) = choose_interface(request, &config).await?;
    // Only vxlan reuses what was published (its VTEP MACs): no listing for other backends.
    let published = if config.backend.kind == BackendType::Vxlan {
        published_by_this_node(&manager, &external).await
    } else {
        PublishedData::default()
    };
    let (datapath, mut kernel_events) =
        build_datapath(&config, &external, &host, published).await?;
    let attrs = datapath
        .backend
        .lease_attrs(external.ext_addr, external.ext_v6_addr);

    readiness.set_not_ready("no subnet lease yet");
    let Some(lease) = shutdown
        .until(acquire(&manager, &config, &attrs, previous))
        .await
    else {
        return Ok(());
    };
    log_lease("lease acquired", &lease);
    let state = NodeState::new(cli, config, lease.key, readiness.clone(), datapath);
    let mut node = Node {
        cli,
        manager: manager.clone(),
        attrs,
        lease,
        state,
    };

    let (sink, mut batches) = mpsc::channel(64);
    let watcher_manager = manager.clone();
    let watch_task = tokio::spawn(async move { watcher_manager.watch_leases(sink).await });
    let mut watcher = LeaseWatcher::new(Some(node.lease.key));
    // Program the datapath only once the peers are known: converging with an empty peer
    // set would remove the entries a previous run left, and drop traffic on a restart.
    let Some(first) = shutdown.until(batches.recv()).await else {
        watch_task.abort();
        return Ok(());
    };
    let Some(first) = first else {
        bail!("the lease watch stopped unexpectedly")
    };
    let changes = match first {
        WatchBatch::Snapshot(leases) => watcher.reset(leases),
        WatchBatch::Events(events) => watcher.apply(events),
    };
    if let Some(new_key) = node.handle(changes, &mut None, &mut shutdown).await {
        log_peer_events(&watcher.set_own(Some(new_key)));
    }
    node.state.set_peers(&watcher);
    node.state.converge().await;
    node.state.write_subnet_env();
    let mut renew_at = node.renewal_deadline();
    let mut tick = tokio::time::interval(TICK);
    let mut reconcile = tokio::time::interval(Duration::from_secs(cli.reconcile_interval.max(1)));
    let mut converge_at: Option<Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.wait() => break,
            batch = batches.recv() => {
                let Some(batch) = batch else { bail!("the lease watch stopped unexpectedly") };
                // Take every batch already waiting, so a burst costs one reconcile pass.
                let mut pending = vec![batch];
                while let Ok(more) = batches.try_recv() {
                    pending.push(more);
                }
                for batch in pending {
                    let changes = match batch {
                        WatchBatch::Snapshot(leases) => watcher.reset(leases),
                        WatchBatch::Events(events) => watcher.apply(events),
                    };
                    if let Some(new_key) = node.handle(changes, &mut renew_at, &mut shutdown).await {
                        log_peer_events(&watcher.set_own(Some(new_key)));
                    }
                }
                node.state.set_peers(&watcher);
                converge_at = Some(Instant::now());
            }
            event = kernel_events.recv() => {
                let Some(event) = event else { bail!("netlink notifications stopped unexpectedly") };
                node.state.on_kernel_event(&event, &mut converge_at);
            }
            () = sleep_until(converge_at) => {
                converge_at = None;
                node.state.converge().await;
            }
            _ = reconcile.tick() => {
                node.state.converge().await;
            }
            () = sleep_until(renew_at) => {
                renew_at = None;
                if let Some(new_key) = node.renew(&mut renew_at, &mut shutdown).await {
                    log_peer_events(&watcher.set_own(Some(new_key)));
                }
            }
            _ = tick.tick() => {
                if !node.state.env_written {
                    node.state.write_subnet_env();
                }
            }
        }
    }
    watch_task.abort();
    info!("shutting down; the lease, subnet.env and the datapath are left in place");
    Ok(())
}

/// This node's etcd lease and what depends on it.
struct Node<'a> {
    cli: &'a Cli,
    manager: Arc<EtcdSubnetManager>,
    attrs: LeaseAttrs,
    lease: Lease,
    state: NodeState,
}

impl Node<'_> {
    /// When to renew: the renewal margin before expiry, the margin capped at half the TTL.
    fn renewal_deadline(&self) -> Option<Instant> {
        let expiration = self.lease.expiration?;
        let ttl = Duration::from_secs(self.cli.subnet_lease_ttl);
        let margin =
            Duration::from_secs(u64::from(self.cli.subnet_lease_renew_margin) * 60).min(ttl / 2);
        let remaining = expiration
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Some(Instant::now() + remaining.saturating_sub(margin))
    }

    /// Reacts to peer changes and to changes of the own key. Returns the new own key if
    /// the lease had to be re-acquired under a different subnet.
    async fn handle(
        &mut self,
        changes: Changes,
        renew_at: &mut Option<Instant>,
        shutdown: &mut Shutdown,
    ) -> Option<SubnetKey> {
        log_peer_events(&changes.peers);
        match changes.own? {
            OwnLeaseChange::Written(current) => {
                if current.attrs.public_ip != self.attrs.public_ip
                    || current.attrs.public_ipv6 != self.attrs.public_ipv6
                {
                    error!(
                        subnet = %current.key,
                        other_public_ip = %current.attrs.public_ip,
                        "this node's subnet was taken over by another node; acquiring a new lease"
                    );
                    return self.reacquire(renew_at, shutdown).await;
                }
                if current.revision <= self.lease.revision {
                    return None;
                }
                let lease_changed = current.etcd_lease != self.lease.etcd_lease;
                let attrs_changed = current.attrs != self.attrs;
                self.lease.revision = current.revision;
                if lease_changed || attrs_changed {
                    // Someone else rewrote our key (an admin turning it into a reservation,
                    // or changing its attributes): take it as it is now, and re-assert our
                    // attributes and TTL right away unless it is a reservation.
                    info!(subnet = %current.key, reservation = current.is_reservation(),
                        "this node's lease was rewritten in etcd");
                    self.lease.etcd_lease = current.etcd_lease;
                    self.lease.expiration = None;
                    *renew_at = (!current.is_reservation()).then(Instant::now);
                }
                None
            }
            OwnLeaseChange::Deleted => {
                warn!(subnet = %self.lease.key, "this node's lease was deleted from etcd; re-acquiring it");
                self.reacquire(renew_at, shutdown).await
            }
        }
    }

    async fn renew(
        &mut self,
        renew_at: &mut Option<Instant>,
        shutdown: &mut Shutdown,
    ) -> Option<SubnetKey> {
        match self.manager.renew_lease(&self.lease).await {
            Ok(RenewOutcome::Renewed(lease)) => {
                debug!(subnet = %lease.key, etcd_lease = lease.etcd_lease, "lease renewed");
                self.lease = lease;
                *renew_at = self.renewal_deadline();
                None
            }
            Ok(RenewOutcome::Lost { current }) => {
                match current {
                    Some(c) if c.attrs.public_ip == self.attrs.public_ip => {
                        // Rewritten by someone, but still ours: adopt it and retry soon.
                        self.lease.revision = c.revision;
                        self.lease.etcd_lease = c.etcd_lease;
                        *renew_at =
                            (!c.is_reservation()).then(|| Instant::now() + Duration::from_secs(1));
                        None
                    }
                    _ => {
                        warn!(subnet = %self.lease.key, "lost this node's lease while renewing it; re-acquiring");
                        self.reacquire(renew_at, shutdown).await
                    }
                }
            }
            Err(e) => {
                let remaining = self
                    .lease
                    .expiration
                    .and_then(|x| x.duration_since(SystemTime::now()).ok())
                    .unwrap_or_default();
                let retry = Duration::from_secs(60)
                    .min(remaining / 2)
                    .max(Duration::from_millis(500));
                warn!("cannot renew the lease, retrying in {retry:?}: {e}");
                *renew_at = Some(Instant::now() + retry);
                None
            }
        }
    }

    /// Re-acquires a lease, preferring the same subnet. Returns the new key if it changed.
    async fn reacquire(
        &mut self,
        renew_at: &mut Option<Instant>,
        shutdown: &mut Shutdown,
    ) -> Option<SubnetKey> {
        let old = self.lease.key;
        self.state
            .readiness
            .set_not_ready(format!("re-acquiring the lease on {old}"));
        let acquired = shutdown
            .until(acquire(
                &self.manager,
                &self.state.config,
                &self.attrs,
                Some(old),
            ))
            .await?;
        self.lease = acquired;
        *renew_at = self.renewal_deadline();
        log_lease("lease re-acquired", &self.lease);
        self.state.set_own(self.lease.key);
        if self.lease.key == old {
            self.state.update_readiness();
            return None;
        }
        error!(
            old = %old,
            new = %self.lease.key,
            "this node now has a different subnet; pods created before keep addresses from the \
             old one and must be recreated"
        );
        self.state.converge().await;
        self.state.write_subnet_env();
        Some(self.lease.key)
    }
}

/// Reads the host, resolves `--iface-can-reach` and chooses the external interface.
pub(crate) async fn choose_interface(
    request: IfaceRequest,
    config: &NetworkConfig,
) -> anyhow::Result<(HostSnapshot, ExternalInterface)> {
    let host = weft_backend::kernel::read_host()
        .await
        .context("cannot read the host's interfaces")?;
    let request = resolve_can_reach(request, config).await?;
    let external =
        iface::select(&host, &request).context("cannot choose the external interface")?;
    info!(
        interface = %external.name,
        address = %or_none(external.iface_addr),
        address_v6 = %or_none(external.iface_v6_addr),
        public_ip = %or_none(external.ext_addr),
        public_ipv6 = %or_none(external.ext_v6_addr),
        "using interface {}: {}", external.name, external.reason
    );
    Ok((host, external))
}

/// The backend data this node published in an earlier run (its etcd lease, found by
/// public IP), for reusing the VTEP MACs.
async fn published_by_this_node(
    manager: &EtcdSubnetManager,
    external: &ExternalInterface,
) -> PublishedData {
    match manager.list_leases().await {
        Ok((leases, _)) => leases
            .into_iter()
            .find(|l| {
                external.ext_addr.is_some_and(|ip| l.attrs.public_ip == ip)
                    || (external.ext_addr.is_none()
                        && l.attrs.public_ipv6.is_some()
                        && l.attrs.public_ipv6 == external.ext_v6_addr)
            })
            .map(|l| (l.attrs.backend_data, l.attrs.backend_v6_data))
            .unwrap_or_default(),
        Err(e) => {
            warn!("cannot look up this node's previous lease for its VTEP MAC: {e}");
            PublishedData::default()
        }
    }
}

/// Backend data (v4, v6) this node published before.
pub(crate) type PublishedData = (Option<Value>, Option<Value>);

/// The backend for `config` on `external`, its datapath, and the kernel notifications
/// that trigger reconcile passes.
pub(crate) async fn build_datapath(
    config: &NetworkConfig,
    external: &ExternalInterface,
    host: &HostSnapshot,
    published: PublishedData,
) -> anyhow::Result<(Datapath, mpsc::UnboundedReceiver<KernelEvent>)> {
    let kernel = Kernel::connect().context("cannot open netlink")?;
    let backend: Box<dyn Backend> = match config.backend.kind {
        BackendType::Vxlan => {
            let config = VxlanConfig::parse(&config.backend.raw).context("vxlan backend config")?;
            let node = vxlan_node(&config, external, host, &kernel, published).await?;
            Box::new(VxlanBackend { config, node })
        }
        _ => Box::new(AllocBackend { mtu: external.mtu }),
    };
    let kernel_events =
        weft_backend::kernel::subscribe().context("cannot subscribe to netlink notifications")?;
    Ok((Datapath::new(backend, kernel), kernel_events))
}

/// This node's vxlan side. The VTEP MACs survive restarts and device re-creation: an
/// existing device keeps its MAC; without one, the MAC this node published before (in
/// its etcd lease or its Node's `backend-data` annotation) is reused, so peers' entries
/// stay valid; else a random one.
async fn vxlan_node(
    config: &VxlanConfig,
    external: &ExternalInterface,
    host: &HostSnapshot,
    kernel: &Kernel,
    published: PublishedData,
) -> anyhow::Result<vxlan::Node> {
    let mut macs = [mac::random(), mac::random()];
    for (slot, family) in [(0, Family::V4), (1, Family::V6)] {
        let name = config.device_name(family);
        let from_published = match family {
            Family::V4 => vxlan::vtep_mac(published.0.as_ref()),
            Family::V6 => vxlan::vtep_mac(published.1.as_ref()),
        };
        let existing: Option<Mac> = kernel
            .link(&name)
            .await
            .context("cannot read vxlan devices")?
            .map(|(_, m)| m);
        let (mac, source) = match (existing, from_published) {
            (Some(m), _) => (m, "the existing device"),
            (None, Some(m)) => (m, "what this node published before"),
            (None, None) => (macs[slot], "newly generated"),
        };
        macs[slot] = mac;
        if (family == Family::V4 && external.iface_addr.is_some())
            || (family == Family::V6 && external.iface_v6_addr.is_some())
        {
            info!(device = %name, mac = %mac::format(&mac), "VTEP MAC from {source}");
        }
    }
    let connected = host
        .links
        .iter()
        .filter(|l| l.index == external.index)
        .flat_map(|l| l.addresses.iter())
        .map(|a| Net::new_masked(a.ip, a.prefix))
        .collect();
    Ok(vxlan::Node {
        own: SubnetKey {
            ipv4: None,
            ipv6: None,
        },
        external_index: external.index,
        external_name: external.name.clone(),
        external_mtu: external.mtu,
        local_v4: external.iface_addr.map(IpAddr::V4),
        local_v6: external.iface_v6_addr.map(IpAddr::V6),
        connected,
        mac_v4: macs[0],
        mac_v6: macs[1],
    })
}

/// Sleeps until `at`; forever when there is nothing scheduled.
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn log_lease(what: &str, lease: &Lease) {
    info!(
        subnet = %lease.key,
        public_ip = %lease.attrs.public_ip,
        reservation = lease.is_reservation(),
        etcd_lease = lease.etcd_lease,
        "{what}"
    );
}

/// Logs peer changes: one line each for small batches, a summary for large ones.
pub(crate) fn log_peer_events(events: &[LeaseEvent]) {
    let verbose = events.len() <= 50;
    for event in events {
        let (what, lease) = match event {
            LeaseEvent::Added(lease) => ("peer added", lease),
            LeaseEvent::Removed(lease) => ("peer removed", lease),
        };
        if verbose {
            info!(subnet = %lease.key, public_ip = %lease.attrs.public_ip, backend = ?lease.attrs.backend_type, "{what}");
        } else {
            debug!(subnet = %lease.key, public_ip = %lease.attrs.public_ip, "{what}");
        }
    }
    if !verbose {
        let added = events
            .iter()
            .filter(|e| matches!(e, LeaseEvent::Added(_)))
            .count();
        info!(added, removed = events.len() - added, "peers changed");
    }
}

fn etcd_options(cli: &Cli) -> EtcdOptions {
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
    options
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
        ipv4: true,
        ipv6: false,
    })
}

/// Fills in the families from the config and asks the kernel for the `--iface-can-reach`
/// route.
async fn resolve_can_reach(
    mut request: IfaceRequest,
    config: &NetworkConfig,
) -> anyhow::Result<IfaceRequest> {
    request.ipv4 = config.ipv4.is_some();
    request.ipv6 = config.ipv6.is_some();
    if let Some((target, _)) = request.can_reach {
        let route = weft_backend::kernel::route_to(target)
            .await
            .context("route lookup for --iface-can-reach")?;
        request.can_reach = Some((target, route));
    }
    Ok(request)
}

async fn connect(options: &EtcdOptions) -> anyhow::Result<EtcdSubnetManager> {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    loop {
        match EtcdSubnetManager::connect(options).await {
            Ok(manager) => return Ok(manager),
            Err(e @ EtcdError::TlsFile { .. }) => return Err(e.into()),
            Err(e) => {
                let delay = backoff.next_delay();
                warn!("{e}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Fetches the network config until it is present, valid and runnable by this build.
async fn fetch_config(manager: &EtcdSubnetManager, readiness: &Readiness) -> NetworkConfig {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
    let mut last_error = String::new();
    let mut last_logged = Instant::now();
    loop {
        let problem = match manager.network_config().await {
            Ok(config) if config.backend.kind == BackendType::Vxlan => {
                match VxlanConfig::parse(&config.backend.raw) {
                    Ok(_) => return config,
                    Err(e) => format!("{e} (in {})", manager.config_key()),
                }
            }
            Ok(config) if IMPLEMENTED_BACKENDS.contains(&config.backend.kind) => return config,
            Ok(config) => format!(
                "backend type {} is not implemented in this weftd build (implemented: {}); \
                 fix the Backend in {}",
                config.backend.kind,
                IMPLEMENTED_BACKENDS.map(|b| b.name()).join(", "),
                manager.config_key()
            ),
            Err(e @ (ConfigFetchError::NotFound { .. } | ConfigFetchError::Invalid { .. })) => {
                e.to_string()
            }
            Err(ConfigFetchError::Etcd(e)) => format!("cannot read the network config: {e}"),
        };
        // Say it once, then remind every 30 s, so a long outage does not flood the log.
        if problem != last_error || last_logged.elapsed() >= Duration::from_secs(30) {
            error!("{problem}; retrying");
            last_logged = Instant::now();
        }
        readiness.set_not_ready(problem.clone());
        last_error = problem;
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Acquires a lease, retrying on every error: etcd outages, conflicts and exhaustion.
async fn acquire(
    manager: &EtcdSubnetManager,
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: Option<SubnetKey>,
) -> Lease {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        match manager.acquire_lease(config, attrs, previous).await {
            Ok(lease) => return lease,
            Err(e) => {
                let delay = backoff.next_delay();
                match e {
                    AcquireError::OutOfSubnets(_) => {
                        error!(
                            "cannot lease a subnet: {e}; free a lease or enlarge the network; retrying in {delay:?}"
                        );
                    }
                    _ => warn!("cannot lease a subnet: {e}; retrying in {delay:?}"),
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn or_none<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "none".to_string(), |v| v.to_string())
}

fn describe_flags(cli: &Cli) -> String {
    let mut shown = cli.clone();
    if !shown.etcd_password.is_empty() {
        shown.etcd_password = "<redacted>".into();
    }
    format!("{shown:?}")
}
