//! etcd mode: the lease lives in etcd with a TTL and is renewed; peers come from a
//! watch of the subnet keys.
//!
//! Startup follows flannel's order: network config (retried until valid and runnable)
//! → external interface → backend → lease (retried; conflicts and "out of subnets"
//! never crash the daemon) → first lease listing → datapath → subnet.env → ready. Then
//! the event loop: the lease watch, the renewal timer, and the triggers both modes share.
//! Nothing is torn down on exit: restarts must not disturb traffic.

use crate::bring_up::{self, BackendSpec, PublishedData};
use crate::cli::Cli;
use crate::iface::{ExternalInterface, IfaceRequest};
use crate::metrics::Renewal;
use crate::node_state::{NodeState, Reporting, log_peer_events};
use crate::own_lease::{Next, OwnLease};
use crate::readiness::Readiness;
use crate::shutdown::Shutdown;
use crate::subnet_file;
use crate::triggers::{PassTrigger, Triggers, sleep_until};
use anyhow::bail;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use weft_subnet::config::BackendType;
use weft_subnet::etcd::{EtcdOptions, EtcdSubnetManager, RenewOutcome, TlsFiles};
use weft_subnet::watch::{LeaseWatcher, WatchBatch};
use weft_subnet::{Lease, NetworkConfig, SubnetKey};

/// Runs etcd mode until shutdown.
pub async fn run(
    cli: &Cli,
    request: IfaceRequest,
    mut shutdown: Shutdown,
    readiness: Arc<Readiness>,
    reporting: Reporting,
) -> anyhow::Result<()> {
    let Some(mut node) = start(cli, request, &mut shutdown, &readiness, reporting).await? else {
        return Ok(());
    };
    let (sink, mut batches) = mpsc::channel(64);
    let watcher_manager = node.manager.clone();
    let watch_task = tokio::spawn(async move { watcher_manager.watch_leases(sink).await });
    let result = node.run(&mut batches, &mut shutdown).await;
    watch_task.abort();
    if result.is_ok() {
        info!("shutting down; the lease, subnet.env and the datapath are left in place");
    }
    result
}

/// Startup up to a held lease; `None` when shut down meanwhile.
async fn start<'a>(
    cli: &'a Cli,
    request: IfaceRequest,
    shutdown: &mut Shutdown,
    readiness: &Arc<Readiness>,
    reporting: Reporting,
) -> anyhow::Result<Option<EtcdNode<'a>>> {
    let previous = subnet_file::read_previous(&cli.subnet_file);
    match previous {
        Some(key) => {
            info!(subnet = %key, file = %cli.subnet_file.display(), "previous subnet found")
        }
        None => debug!(file = %cli.subnet_file.display(), "no previous subnet"),
    }
    let observer: weft_subnet::observer::Observer = reporting.metrics.clone();
    let Some((manager, config)) = connect(cli, shutdown, readiness, observer).await? else {
        return Ok(None);
    };
    let (host, external) = bring_up::choose_interface(request, &config).await?;
    bring_up::check_network(&config, &host, &external)?;
    // Only vxlan reuses what was published (its VTEP MACs): no listing for other backends.
    let published = if config.backend.kind == BackendType::Vxlan {
        published_by_this_node(&manager, &external).await
    } else {
        PublishedData::default()
    };
    let (datapath, kernel_events) =
        bring_up::build_datapath(&config, &external, &host, published, cli.nexthop_objects).await?;
    let attrs = datapath
        .backend
        .lease_attrs(external.ext_addr, external.ext_v6_addr);

    readiness.set_not_ready("no subnet lease yet");
    let own_missing = own_lease_missing(&manager, previous).await;
    let acquiring = manager.acquire_retrying(&config, &attrs, previous);
    let Some(lease) = shutdown.until(acquiring).await else {
        return Ok(None);
    };
    log_lease("lease acquired", &lease);
    bring_up::check_own_subnet(&lease.key, &datapath)?;
    let triggers = Triggers::new(kernel_events, Duration::from_secs(cli.reconcile_interval));
    let key = lease.key;
    let state = NodeState::new(
        cli,
        config,
        key,
        readiness.clone(),
        datapath,
        triggers,
        reporting,
    );
    let own = OwnLease::new(
        lease,
        attrs,
        Duration::from_secs(cli.subnet_lease_ttl),
        Duration::from_secs(u64::from(cli.subnet_lease_renew_margin) * 60),
    );
    let mut node = EtcdNode {
        cli,
        manager,
        own,
        state,
        watcher: LeaseWatcher::new(Some(key)),
        reported_config: None,
    };
    node.lease_changed();
    if let Some(previous) = own_missing {
        node.hold_removals(&format!(
            "this node's lease {previous} from subnet.env is not in etcd (expired, deleted, \
             or etcd was emptied or restored)"
        ));
    }
    Ok(Some(node))
}

/// Connects to etcd and reads the network config (both retried until they work);
/// `None` when shut down meanwhile.
async fn connect(
    cli: &Cli,
    shutdown: &mut Shutdown,
    readiness: &Readiness,
    observer: weft_subnet::observer::Observer,
) -> anyhow::Result<Option<(Arc<EtcdSubnetManager>, NetworkConfig)>> {
    let options = etcd_options(cli);
    let Some(manager) = shutdown
        .until(EtcdSubnetManager::connect_retrying(&options))
        .await
    else {
        return Ok(None);
    };
    let manager = Arc::new(manager?.with_observer(observer));
    let runnable = |config: &NetworkConfig| {
        BackendSpec::from_config(config)
            .map(|_| ())
            .map_err(|problem| format!("{problem}; fix the Backend in {}", manager.config_key()))
    };
    let mut report = |problem: &str| readiness.set_not_ready(problem.to_string());
    let fetching = manager.network_config_retrying(&runnable, &mut report);
    let Some(config) = shutdown.until(fetching).await else {
        return Ok(None);
    };
    info!(config = %config.summary(), "network config");
    Ok(Some((manager, config)))
}

/// Whether the lease named by the previous subnet.env is missing from etcd (then the
/// store may have been emptied or restored; see [`weft_backend::reconcile::Reconciler::hold_removals`]).
async fn own_lease_missing(
    manager: &EtcdSubnetManager,
    previous: Option<SubnetKey>,
) -> Option<SubnetKey> {
    let previous = previous?;
    match manager.get_lease(&previous).await {
        Ok(None) => Some(previous),
        Ok(Some(_)) => None,
        Err(e) => {
            debug!("cannot look up this node's previous lease: {e}");
            None
        }
    }
}

/// This node in etcd mode: its lease, the peers, and what depends on them.
struct EtcdNode<'a> {
    cli: &'a Cli,
    manager: Arc<EtcdSubnetManager>,
    own: OwnLease,
    state: NodeState,
    watcher: LeaseWatcher,
    /// The config text last reported as changed, so each change is logged once.
    reported_config: Option<Option<String>>,
}

impl EtcdNode<'_> {
    /// The event loop: the first listing programs the datapath, then every batch, the
    /// renewal timer and the shared triggers.
    async fn run(
        &mut self,
        batches: &mut mpsc::Receiver<WatchBatch>,
        shutdown: &mut Shutdown,
    ) -> anyhow::Result<()> {
        // Program the datapath only once the peers are known: converging with an empty
        // peer set would remove the entries a previous run left, and drop traffic on a
        // restart.
        let Some(first) = shutdown.until(batches.recv()).await else {
            return Ok(());
        };
        let Some(first) = first else {
            bail!("the lease watch stopped unexpectedly")
        };
        self.on_batch(first, shutdown).await;
        self.state.converge(PassTrigger::Startup).await;
        self.state.write_subnet_env();
        loop {
            tokio::select! {
                () = shutdown.wait() => return Ok(()),
                batch = batches.recv() => {
                    let Some(batch) = batch else { bail!("the lease watch stopped unexpectedly") };
                    // Take every batch already waiting, so a burst costs one reconcile pass.
                    let mut pending = vec![batch];
                    while let Ok(more) = batches.try_recv() {
                        pending.push(more);
                    }
                    for batch in pending {
                        self.on_batch(batch, shutdown).await;
                    }
                    self.state.peers_changed();
                }
                () = sleep_until(self.own.renew_at) => self.renew(shutdown).await,
                trigger = self.state.next_trigger() => self.state.on_trigger(trigger?).await,
            }
        }
    }

    /// Applies one batch from the lease watch.
    async fn on_batch(&mut self, batch: WatchBatch, shutdown: &mut Shutdown) {
        match batch {
            WatchBatch::StoreReset(reason) => return self.store_reset(&reason),
            WatchBatch::Config(value) => return self.config_written(value),
            _ => {}
        }
        let Some(changes) = self.watcher.ingest(batch) else {
            return;
        };
        log_peer_events(&changes.peers);
        self.state.peer_events(changes.peers);
        if let Some(change) = changes.own {
            let next = self.own.observe(change);
            self.lease_changed();
            if next == Next::Reacquire {
                self.reacquire(shutdown).await;
            }
        }
    }

    /// etcd went back in time; a fresh snapshot follows. This node's lease is re-asserted
    /// (or re-created by the snapshot's "own key deleted"), and peer entries are kept for
    /// the grace period while the other nodes do the same.
    fn store_reset(&mut self, reason: &str) {
        self.hold_removals(&format!("etcd went back in time ({reason})"));
        self.state.readiness.set_not_ready(format!(
            "etcd went back in time ({reason}); re-publishing this node's lease"
        ));
        self.own.store_reset();
    }

    /// Holds peer removals for `--datastore-reset-grace` (see `Reconciler::hold_removals`).
    fn hold_removals(&mut self, why: &str) {
        let grace = Duration::from_secs(self.cli.datastore_reset_grace);
        warn!(
            "{why}: re-listing leases, re-publishing this node's lease, and keeping peer \
             entries for {grace:?} while peers re-publish"
        );
        self.state.datapath.hold_removals(Instant::now() + grace);
    }

    /// The config key was written. Like flannel, a running node keeps the config it
    /// started with; unlike flannel, it says so.
    fn config_written(&mut self, value: Option<String>) {
        if self.reported_config.as_ref() == Some(&value) {
            return;
        }
        let key = self.manager.config_key();
        let current = self.state.config.summary();
        match value.as_deref().map(NetworkConfig::parse) {
            None => warn!(
                "the network config was deleted from etcd ({key}); this node keeps running \
                 on the config it started with: {current}"
            ),
            Some(Ok(config)) if config == self.state.config => {
                debug!("the network config in etcd was rewritten unchanged");
            }
            Some(Ok(config)) => warn!(
                "the network config in etcd ({key}) changed to {}; this node keeps running on \
                 the config it started with ({current}): restart weftd to apply it",
                config.summary()
            ),
            Some(Err(e)) => warn!(
                "the network config in etcd ({key}) changed and is invalid: {e}; this node \
                 keeps running on the config it started with: {current}"
            ),
        }
        self.reported_config = Some(value);
    }

    async fn renew(&mut self, shutdown: &mut Shutdown) {
        self.own.renew_at = None;
        let next = match self.manager.renew_lease(&self.own.lease).await {
            Ok(RenewOutcome::Renewed(lease)) => {
                debug!(subnet = %lease.key, etcd_lease = lease.etcd_lease, "lease renewed");
                self.state.metrics.record_renewal(Renewal::Renewed);
                self.own.renewed(lease);
                self.lease_changed();
                Next::Nothing
            }
            Ok(RenewOutcome::Lost { current }) => {
                self.state.metrics.record_renewal(Renewal::Lost);
                self.own.renew_lost(current)
            }
            Err(e) => {
                self.state.metrics.record_renewal(Renewal::Failed);
                let retry = self.own.renew_failed();
                warn!("cannot renew the lease, retrying in {retry:?}: {e}");
                Next::Nothing
            }
        };
        if next == Next::Reacquire {
            self.reacquire(shutdown).await;
        }
    }

    /// The own lease's expiry, for `/debug/state` and the metrics.
    fn lease_changed(&mut self) {
        self.state.lease_expiry = self.own.lease.expiration;
        self.state
            .metrics
            .set_lease_expiry(self.own.lease.expiration);
    }

    /// Re-acquires a lease, preferring the same subnet.
    async fn reacquire(&mut self, shutdown: &mut Shutdown) {
        let old = self.own.lease.key;
        self.state
            .readiness
            .set_not_ready(format!("re-acquiring the lease on {old}"));
        let acquiring =
            self.manager
                .acquire_retrying(&self.state.config, &self.own.attrs, Some(old));
        let Some(acquired) = shutdown.until(acquiring).await else {
            return;
        };
        self.own.acquired(acquired);
        self.lease_changed();
        log_lease("lease re-acquired", &self.own.lease);
        let new = self.own.lease.key;
        self.state.set_own(new);
        if new == old {
            self.state.update_readiness();
            return;
        }
        error!(
            old = %old,
            new = %new,
            "this node now has a different subnet; pods created before keep addresses from the \
             old one and must be recreated"
        );
        log_peer_events(&self.watcher.set_own(Some(new)));
        self.state.set_peers(&self.watcher);
        self.state.converge(PassTrigger::SubnetChange).await;
        self.state.write_subnet_env();
    }
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

fn log_lease(what: &str, lease: &Lease) {
    info!(
        subnet = %lease.key,
        public_ip = %lease.attrs.public_ip,
        reservation = lease.is_reservation(),
        etcd_lease = lease.etcd_lease,
        "{what}"
    );
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
