//! etcd mode: the lease lives in etcd with a TTL and is renewed; peers come from a
//! watch of the subnet keys.
//!
//! Startup follows flannel's order: network config (retried until valid and runnable)
//! → external interface → backend → lease (retried; conflicts and "out of subnets"
//! never crash the daemon) → first lease listing → datapath → subnet.env → ready. Then
//! the shared node loop (`node_loop`), fed by the lease watch, with the renewal timer as
//! this mode's own timer.
//! Nothing is torn down on exit: restarts must not disturb traffic.

use crate::bring_up::{self, BackendSpec, PublishedData};
use crate::iface::{ExternalInterface, IfaceRequest};
use crate::metrics::Renewal;
use crate::node_loop::{NodeLoop, Received, Source, Underlay, WatchTask};
use crate::node_state::{NodeState, Reporting};
use crate::own_lease::{Next, OwnLease};
use crate::readiness::Readiness;
use crate::settings::{EtcdSettings, NodeSettings};
use crate::shutdown::Shutdown;
use crate::subnet_file;
use crate::triggers::Triggers;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use weft_subnet::config::BackendType;
use weft_subnet::etcd::{EtcdOptions, EtcdSubnetManager, RenewOutcome};
use weft_subnet::watch::{OwnLeaseChange, WatchBatch};
use weft_subnet::{Lease, LeaseAttrs, NetworkConfig, SubnetKey};

/// Quick retries of writing new attributes after an address change, and their pace.
const PUBLISH_RETRIES: u8 = 30;
const PUBLISH_RETRY: Duration = Duration::from_secs(1);

/// Runs etcd mode until shutdown.
pub async fn run(
    settings: &Settings,
    request: IfaceRequest,
    mut shutdown: Shutdown,
    readiness: Arc<Readiness>,
    reporting: Reporting,
) -> anyhow::Result<()> {
    let Some(node) = start(settings, request, &mut shutdown, &readiness, reporting).await? else {
        return Ok(());
    };
    let (sink, mut batches) = mpsc::channel(64);
    let mut source = node.source;
    source.start_watch(sink);
    // The watch ends with the loop (its task is aborted when the source is dropped).
    let result = NodeLoop::new(source, node.state, node.underlay)
        .run(&mut batches, &mut shutdown)
        .await;
    if result.is_ok() {
        info!("shutting down; the lease, subnet.env and the datapath are left in place");
    }
    result
}

/// What etcd mode runs on: this node's settings and etcd's.
#[derive(Debug)]
pub struct Settings {
    pub node: NodeSettings,
    pub etcd: EtcdSettings,
}

/// A node holding its lease, ready for the loop.
struct Started {
    source: EtcdSource,
    state: NodeState,
    underlay: Underlay,
}

/// Startup up to a held lease; `None` when shut down meanwhile.
async fn start(
    settings: &Settings,
    request: IfaceRequest,
    shutdown: &mut Shutdown,
    readiness: &Arc<Readiness>,
    reporting: Reporting,
) -> anyhow::Result<Option<Started>> {
    let previous = previous_subnet(&settings.node.subnet_file);
    let observer: weft_subnet::observer::Observer = reporting.metrics.clone();
    let connecting = connect(
        &settings.etcd.options,
        shutdown,
        readiness,
        observer.clone(),
    );
    let Some((manager, config)) = connecting.await? else {
        return Ok(None);
    };
    let (host, external) = bring_up::choose_interface(request.clone(), &config).await?;
    bring_up::check_network(&config, &host, &external)?;
    // Only vxlan reuses what was published (its VTEP MACs): no listing for other backends.
    let published = if config.backend.kind == BackendType::Vxlan {
        published_by_this_node(&manager, &external).await
    } else {
        PublishedData::default()
    };
    let (datapath, kernel_events) =
        bring_up::build_datapath(&config, &external, &host, published, &settings.node).await?;
    let attrs = datapath
        .backend()
        .lease_attrs(external.ext_addr, external.ext_v6_addr);

    readiness.set_not_ready("no subnet lease yet");
    let own_missing = own_lease_missing(&manager, previous).await;
    let acquiring = manager.acquire_retrying(&config, &attrs, previous);
    let Some(lease) = shutdown.until(acquiring).await else {
        return Ok(None);
    };
    log_lease("lease acquired", &lease);
    bring_up::check_own_subnet(&lease.key, &datapath)?;
    let triggers = Triggers::new(kernel_events, settings.node.reconcile_interval);
    let key = lease.key;
    let mut state = NodeState::new(
        &settings.node,
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
        settings.etcd.lease_ttl,
        settings.etcd.renew_margin,
    );
    let mut source = EtcdSource::new(manager, own, &settings.etcd, observer);
    source.lease_changed(&mut state);
    if let Some(previous) = own_missing {
        source.hold_removals(
            &mut state,
            &format!(
                "this node's lease {previous} from subnet.env is not in etcd (expired, \
                 deleted, or etcd was emptied or restored)"
            ),
        );
    }
    let underlay = Underlay::new(request, external);
    Ok(Some(Started {
        source,
        state,
        underlay,
    }))
}

/// The subnet named by an earlier run's subnet.env, preferred when acquiring.
fn previous_subnet(file: &Path) -> Option<SubnetKey> {
    let previous = subnet_file::read_previous(file);
    match previous {
        Some(key) => info!(subnet = %key, file = %file.display(), "previous subnet found"),
        None => debug!(file = %file.display(), "no previous subnet"),
    }
    previous
}

/// Connects to etcd and reads the network config (both retried until they work);
/// `None` when shut down meanwhile.
async fn connect(
    options: &EtcdOptions,
    shutdown: &mut Shutdown,
    readiness: &Readiness,
    observer: weft_subnet::observer::Observer,
) -> anyhow::Result<Option<(Arc<EtcdSubnetManager>, NetworkConfig)>> {
    let Some(manager) = shutdown
        .until(EtcdSubnetManager::connect_retrying(options))
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

/// etcd mode's side of the node loop: the lease watch's batches, this node's lease and
/// its renewal, and the config key.
#[derive(Debug)]
struct EtcdSource {
    manager: Arc<EtcdSubnetManager>,
    /// For a new connection when this node's address changed (the old one is bound to
    /// an address the node no longer has).
    options: EtcdOptions,
    observer: weft_subnet::observer::Observer,
    /// Quick retries left for writing new attributes (see `publish_attrs`).
    publishing: u8,
    /// The lease watch, and where it sends its batches.
    watch: Option<(WatchTask, mpsc::Sender<WatchBatch>)>,
    own: OwnLease,
    /// `--datastore-reset-grace`.
    reset_grace: Duration,
    /// The config text last reported as changed, so each change is logged once.
    reported_config: Option<Option<String>>,
}

impl Source for EtcdSource {
    type Item = WatchBatch;
    const WATCH: &'static str = "the lease watch";

    fn receive(&mut self, batch: WatchBatch, state: &mut NodeState) -> Received {
        match batch {
            WatchBatch::StoreReset(reason) => self.store_reset(state, &reason),
            WatchBatch::Config(value) => self.config_written(state, value),
            batch => {
                return Received {
                    batch: Some(batch),
                    ..Received::default()
                };
            }
        }
        Received::default()
    }

    async fn own_lease_seen(
        &mut self,
        change: OwnLeaseChange,
        state: &mut NodeState,
        shutdown: &mut Shutdown,
    ) -> Option<SubnetKey> {
        let next = self.own.observe(change);
        self.lease_changed(state);
        match next {
            Next::Reacquire => self.reacquire(state, shutdown).await,
            Next::Nothing => None,
        }
    }

    fn wake_at(&self) -> Option<Instant> {
        self.own.renew_at
    }

    async fn wake(&mut self, state: &mut NodeState, shutdown: &mut Shutdown) -> Option<SubnetKey> {
        match self.renew(state).await {
            Next::Reacquire => self.reacquire(state, shutdown).await,
            Next::Nothing => None,
        }
    }

    async fn programmed(&mut self, _shutdown: &mut Shutdown) -> bool {
        true
    }

    async fn reconnect(&mut self) {
        match EtcdSubnetManager::connect(&self.options).await {
            Ok(manager) => {
                self.manager = Arc::new(manager.with_observer(self.observer.clone()));
                if let Some((_, sink)) = self.watch.take() {
                    self.start_watch(sink);
                }
                info!("reconnected to etcd from this node's new address");
            }
            Err(e) => warn!(
                "cannot reconnect to etcd after the address change, keeping the old \
                 connection: {e}"
            ),
        }
    }

    /// The lease is rewritten with the new attributes by a renewal now (its "lost"
    /// handling is the renewal's). Failed writes are retried every second for a while,
    /// then at the renewal's pace.
    async fn publish_attrs(&mut self, attrs: LeaseAttrs) {
        self.own.publish(attrs);
        self.publishing = PUBLISH_RETRIES;
    }
}

impl EtcdSource {
    fn new(
        manager: Arc<EtcdSubnetManager>,
        own: OwnLease,
        settings: &EtcdSettings,
        observer: weft_subnet::observer::Observer,
    ) -> EtcdSource {
        EtcdSource {
            manager,
            options: settings.options.clone(),
            observer,
            publishing: 0,
            watch: None,
            own,
            reset_grace: settings.reset_grace,
            reported_config: None,
        }
    }

    /// Watches the leases over the current connection, into `sink`.
    fn start_watch(&mut self, sink: mpsc::Sender<WatchBatch>) {
        let manager = self.manager.clone();
        let batches = sink.clone();
        let task = WatchTask::spawn(async move { manager.watch_leases(batches).await });
        self.watch = Some((task, sink));
    }

    /// etcd went back in time; a fresh snapshot follows. This node's lease is re-asserted
    /// (or re-created by the snapshot's "own key deleted"), and peer entries are kept for
    /// the grace period while the other nodes do the same.
    fn store_reset(&mut self, state: &mut NodeState, reason: &str) {
        self.hold_removals(state, &format!("etcd went back in time ({reason})"));
        state.set_not_ready(format!(
            "etcd went back in time ({reason}); re-publishing this node's lease"
        ));
        self.own.store_reset();
    }

    /// Holds peer removals for `--datastore-reset-grace` (see `Reconciler::hold_removals`).
    fn hold_removals(&mut self, state: &mut NodeState, why: &str) {
        let grace = self.reset_grace;
        warn!(
            "{why}: re-listing leases, re-publishing this node's lease, and keeping peer \
             entries for {grace:?} while peers re-publish"
        );
        state.hold_removals(Instant::now() + grace);
    }

    /// The config key was written. Like flannel, a running node keeps the config it
    /// started with; unlike flannel, it says so.
    fn config_written(&mut self, state: &NodeState, value: Option<String>) {
        if self.reported_config.as_ref() == Some(&value) {
            return;
        }
        let key = self.manager.config_key();
        let running = state.config();
        let current = running.summary();
        match value.as_deref().map(NetworkConfig::parse) {
            None => warn!(
                "the network config was deleted from etcd ({key}); this node keeps running \
                 on the config it started with: {current}"
            ),
            Some(Ok(config)) if config == *running => {
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

    async fn renew(&mut self, state: &mut NodeState) -> Next {
        self.own.renew_at = None;
        let writing = self.own.to_write().clone();
        match self
            .manager
            .update_lease_attrs(&self.own.lease, &writing)
            .await
        {
            Ok(RenewOutcome::Renewed(lease)) => {
                if self.publishing > 0 {
                    info!(subnet = %lease.key, public_ip = %lease.attrs.public_ip, "lease rewritten with this node's new address");
                    self.publishing = 0;
                }
                debug!(subnet = %lease.key, etcd_lease = lease.etcd_lease, "lease renewed");
                state.metrics().record_renewal(Renewal::Renewed);
                self.own.renewed(lease);
                self.lease_changed(state);
                Next::Nothing
            }
            Ok(RenewOutcome::Lost { current }) => {
                state.metrics().record_renewal(Renewal::Lost);
                self.own.renew_lost(current)
            }
            Err(e) => {
                state.metrics().record_renewal(Renewal::Failed);
                let mut retry = self.own.renew_failed();
                if self.publishing > 0 {
                    self.publishing -= 1;
                    retry = PUBLISH_RETRY.min(retry);
                    self.own.renew_at = Some(Instant::now() + retry);
                }
                warn!("cannot renew the lease, retrying in {retry:?}: {e}");
                Next::Nothing
            }
        }
    }

    /// The own lease's expiry, for `/debug/state` and the metrics.
    fn lease_changed(&self, state: &mut NodeState) {
        state.set_lease_expiry(self.own.lease.expiration);
    }

    /// Re-acquires a lease, preferring the same subnet; the subnet held afterwards
    /// (`None`: shut down meanwhile).
    async fn reacquire(
        &mut self,
        state: &mut NodeState,
        shutdown: &mut Shutdown,
    ) -> Option<SubnetKey> {
        let old = self.own.lease.key;
        state.set_not_ready(format!("re-acquiring the lease on {old}"));
        let acquiring = self
            .manager
            .acquire_retrying(state.config(), &self.own.attrs, Some(old));
        let acquired = shutdown.until(acquiring).await?;
        self.own.acquired(acquired);
        self.lease_changed(state);
        log_lease("lease re-acquired", &self.own.lease);
        Some(self.own.lease.key)
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
