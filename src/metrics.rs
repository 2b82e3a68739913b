//! Prometheus metrics, served at `/metrics` by the health server in the Prometheus text
//! format (0.0.4) by the official `prometheus-client` crate.
//!
//! Every name starts with `weft_`, units are in the names, and every label takes its
//! values from a fixed set (an enum's labels, or a subnet manager's operation names), so
//! a node with 5,000 peers exports the same series as one with 2. Labelled series are
//! created at zero when the daemon starts, so `increase()` sees the first event and a
//! healthy node shows explicit zeros (no repairs) rather than nothing.
//!
//! Where the numbers come from: the datapath reports each pass's changes by kind and
//! cause (see `drift`), the node state counts passes by trigger and subnet.env writes,
//! etcd mode counts renewals, and the subnet managers report their datastore contacts and
//! errors through [`DatastoreObserver`] (they know nothing about metrics). Gauges that
//! depend on time (readiness, seconds since the datastore answered) are computed when
//! scraped. README.md's metric table is generated from this registry and checked by
//! `the_readme_documents_every_metric`.

use crate::health::admission::{REFUSED, ShedReason};
use crate::readiness::Readiness;
use crate::triggers::PassTrigger;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use weft_backend::admission::RejectKind;
use weft_backend::backend::SkipKind;
use weft_backend::reconcile::drift::{Cause, ChangeKind};
use weft_backend::reconcile::tunnels::TunnelPeerView;
use weft_backend::reconcile::{Pass, PeerStats};
use weft_subnet::observer::{DatastoreObserver, WatchRestart};

/// The Content-Type of `/metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the pass duration histogram, in seconds: a steady pass at 5,000 peers
/// takes about 30 ms, a first pass there about 400 ms.
const PASS_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Which datastore this node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubnetManager {
    Etcd,
    Kube,
}

impl SubnetManager {
    pub fn label(self) -> &'static str {
        match self {
            SubnetManager::Etcd => "etcd",
            SubnetManager::Kube => "kube",
        }
    }

    fn operations(self) -> &'static [&'static str] {
        match self {
            SubnetManager::Etcd => &weft_subnet::etcd::OPERATIONS,
            SubnetManager::Kube => &weft_subnet::kube::OPERATIONS,
        }
    }

    fn watch_restarts(self) -> &'static [WatchRestart] {
        match self {
            SubnetManager::Etcd => &[
                WatchRestart::Error,
                WatchRestart::Compacted,
                WatchRestart::WentBack,
            ],
            SubnetManager::Kube => &[WatchRestart::Relist],
        }
    }
}

/// The outcome of one renewal of the own etcd lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    Failed,
    /// The key was gone or rewritten.
    Lost,
}

impl Renewal {
    fn label(self) -> &'static str {
        match self {
            Renewal::Renewed => "ok",
            Renewal::Failed => "failed",
            Renewal::Lost => "lost",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    backend: &'static str,
    subnet_manager: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    backend: &'static str,
    family: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabel {
    device: String,
}

/// One WireGuard peer: the device, its public key and the subnets it carries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TunnelPeerLabels {
    device: String,
    public_key: String,
    allowed_ips: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabel {
    trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    kind: &'static str,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// See the module docs.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    manager: SubnetManager,
    readiness: Arc<Readiness>,
    started: Instant,
    backend: Mutex<Option<&'static str>>,
    build_info: Family<BuildLabels, Gauge>,
    ready: Gauge,
    peer_leases: Gauge,
    peers: Family<PeerLabels, Gauge>,
    tx_checksum: Family<DeviceLabel, Gauge>,
    wg_handshake: Family<TunnelPeerLabels, Gauge>,
    wg_rx: Family<TunnelPeerLabels, Gauge>,
    wg_tx: Family<TunnelPeerLabels, Gauge>,
    peers_skipped: Family<ReasonLabel, Gauge>,
    peer_rejections: Family<RuleLabel, Counter>,
    passes: Family<TriggerLabel, Counter>,
    pass_duration: Histogram,
    pass_failures: Counter,
    changes: Family<ChangeLabels, Counter>,
    change_failures: Family<KindLabel, Counter>,
    watch_restarts: Family<ReasonLabel, Counter>,
    datastore_errors: Family<OperationLabel, Counter>,
    contact_age: Gauge<f64, AtomicU64>,
    /// Milliseconds after `started` of the last contact; `u64::MAX`: none yet.
    last_contact_ms: AtomicU64,
    watch_open: AtomicBool,
    lease_expiry: Gauge,
    lease_renewals: Family<ResultLabel, Counter>,
    subnet_env_writes: Counter,
    subnet_env_write_failures: Counter,
    health_shed: Family<ReasonLabel, Counter>,
}

impl Metrics {
    /// Registers every metric (the lease metrics in etcd mode only) with its series at
    /// zero.
    pub fn new(manager: SubnetManager, readiness: Arc<Readiness>) -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            manager,
            readiness,
            started: Instant::now(),
            backend: Mutex::new(None),
            build_info: Family::default(),
            ready: Gauge::default(),
            peer_leases: Gauge::default(),
            peers: Family::default(),
            tx_checksum: Family::default(),
            wg_handshake: Family::default(),
            wg_rx: Family::default(),
            wg_tx: Family::default(),
            peers_skipped: Family::default(),
            peer_rejections: Family::default(),
            passes: Family::default(),
            pass_duration: Histogram::new(PASS_BUCKETS),
            pass_failures: Counter::default(),
            changes: Family::default(),
            change_failures: Family::default(),
            watch_restarts: Family::default(),
            datastore_errors: Family::default(),
            contact_age: Gauge::default(),
            last_contact_ms: AtomicU64::new(u64::MAX),
            watch_open: AtomicBool::new(false),
            lease_expiry: Gauge::default(),
            lease_renewals: Family::default(),
            subnet_env_writes: Counter::default(),
            subnet_env_write_failures: Counter::default(),
            health_shed: Family::default(),
        };
        m.zero_series();
        m.register()
    }

    fn zero_series(&self) {
        self.set_build_info("unknown");
        for kind in SkipKind::ALL {
            zero(
                &self.peers_skipped,
                ReasonLabel {
                    reason: kind.label(),
                },
            );
        }
        for kind in RejectKind::ALL {
            zero(
                &self.peers_skipped,
                ReasonLabel {
                    reason: kind.label(),
                },
            );
            zero(&self.peer_rejections, RuleLabel { rule: kind.label() });
        }
        for trigger in PassTrigger::ALL {
            zero(
                &self.passes,
                TriggerLabel {
                    trigger: trigger.label(),
                },
            );
        }
        for kind in ChangeKind::ALL {
            for cause in Cause::ALL.into_iter().filter(|c| c.applies_to(kind)) {
                let labels = ChangeLabels {
                    kind: kind.label(),
                    cause: cause.label(),
                };
                zero(&self.changes, labels);
            }
            zero(&self.change_failures, KindLabel { kind: kind.label() });
        }
        for reason in self.manager.watch_restarts() {
            zero(
                &self.watch_restarts,
                ReasonLabel {
                    reason: reason.label(),
                },
            );
        }
        for operation in self.manager.operations() {
            zero(&self.datastore_errors, OperationLabel { operation });
        }
        for reason in ShedReason::ALL
            .map(ShedReason::label)
            .into_iter()
            .chain([REFUSED])
        {
            zero(&self.health_shed, ReasonLabel { reason });
        }
        if self.manager == SubnetManager::Etcd {
            for result in [Renewal::Renewed, Renewal::Failed, Renewal::Lost] {
                zero(
                    &self.lease_renewals,
                    ResultLabel {
                        result: result.label(),
                    },
                );
            }
        }
    }

    fn register(mut self) -> Metrics {
        self.register_node();
        self.register_reconcile();
        self.register_datastore();
        self.register_files_and_health();
        self
    }

    /// This node and its peers.
    fn register_node(&mut self) {
        let r = &mut self.registry;
        r.register(
            "weft_build_info",
            "Always 1; the labels say which weftd runs: its version, the backend of the \
             network config (unknown until it is read) and the subnet manager",
            self.build_info.clone(),
        );
        r.register(
            "weft_ready",
            "1 when /readyz answers 200 (lease held, datapath programmed, subnet.env \
             written), else 0",
            self.ready.clone(),
        );
        r.register(
            "weft_peer_leases",
            "Peer leases known from the datastore (every node but this one), whether \
             programmed or not",
            self.peer_leases.clone(),
        );
        r.register(
            "weft_peers",
            "Peers this node programs a route to, by backend and address family, as of \
             the last reconcile pass",
            self.peers.clone(),
        );
        r.register(
            "weft_vxlan_tx_checksum_offload",
            "The VXLAN devices' TX checksum offload (tx-checksum-ip-generic) as of the last \
             full pass, by device: 1 on, 0 off (--vxlan-tx-checksum; weftd status says why)",
            self.tx_checksum.clone(),
        );
        r.register(
            "weft_wireguard_peer_last_handshake_seconds",
            "When each WireGuard peer last completed a handshake, in seconds since the Unix \
             epoch; 0: never (as of the last full pass; the wireguard backend only)",
            self.wg_handshake.clone(),
        );
        r.register(
            "weft_wireguard_peer_receive_bytes",
            "Bytes received from each WireGuard peer, as the device counts them (as of the \
             last full pass)",
            self.wg_rx.clone(),
        );
        r.register(
            "weft_wireguard_peer_transmit_bytes",
            "Bytes sent to each WireGuard peer, as the device counts them (as of the last \
             full pass)",
            self.wg_tx.clone(),
        );
        r.register(
            "weft_peers_skipped",
            "Peers not programmed as of the last reconcile pass, by reason: a backend skip \
             or the admission rule their lease broke (/debug/state names them)",
            self.peers_skipped.clone(),
        );
        r.register(
            "weft_peer_rejections",
            "Peer leases rejected by admission since start, by rule (each peer and reason \
             counted once)",
            self.peer_rejections.clone(),
        );
    }

    /// Reconcile passes and the kernel changes they made.
    fn register_reconcile(&mut self) {
        let r = &mut self.registry;
        r.register(
            "weft_reconcile_passes",
            "Reconcile passes run, by what triggered them: lease_change and entry_repair run \
             targeted passes (the changed peers' entries, the entries reported deleted; full \
             while one is due), the others full passes (observe, diff, apply); retry is the \
             full pass after a failed one, within 0.5 s at first, backing off to \
             --reconcile-interval",
            self.passes.clone(),
        );
        r.register(
            "weft_reconcile_pass_duration_seconds",
            "Duration of reconcile passes (full: observe, diff, apply; targeted: plan, apply)",
            self.pass_duration.clone(),
        );
        r.register(
            "weft_reconcile_pass_failures",
            "Reconcile passes that could not read the kernel state (retried by a full \
             pass soon after, backing off)",
            self.pass_failures.clone(),
        );
        r.register(
            "weft_datapath_changes",
            "Kernel changes applied, by kind of entry and cause; cause drift_repair counts \
             entries re-installed or removed because the kernel differed from what weft \
             had programmed (a healthy node stays at 0)",
            self.changes.clone(),
        );
        r.register(
            "weft_datapath_change_failures",
            "Kernel changes that failed, by kind of entry (retried by a full pass soon \
             after, backing off)",
            self.change_failures.clone(),
        );
    }

    /// The datastore, and this node's lease in it.
    fn register_datastore(&mut self) {
        let r = &mut self.registry;
        r.register(
            "weft_datastore_watch_restarts",
            "Times the datastore watch started over, by reason",
            self.watch_restarts.clone(),
        );
        r.register(
            "weft_datastore_errors",
            "Failed datastore requests, by operation",
            self.datastore_errors.clone(),
        );
        r.register(
            "weft_datastore_contact_age_seconds",
            "Seconds since the datastore last answered (0 while the watch stream is open; \
             since start if it never answered)",
            self.contact_age.clone(),
        );
        if self.manager == SubnetManager::Etcd {
            r.register(
                "weft_lease_expiry_timestamp_seconds",
                "When this node's etcd lease expires, in Unix time (etcd mode; 0 for a \
                 reservation, which does not expire)",
                self.lease_expiry.clone(),
            );
            r.register(
                "weft_lease_renewals",
                "Renewals of this node's etcd lease, by result (etcd mode)",
                self.lease_renewals.clone(),
            );
        }
    }

    /// subnet.env writes and the health server.
    fn register_files_and_health(&mut self) {
        let r = &mut self.registry;
        r.register(
            "weft_subnet_env_writes",
            "Successful writes of subnet.env",
            self.subnet_env_writes.clone(),
        );
        r.register(
            "weft_subnet_env_write_failures",
            "Failed writes of subnet.env (retried every 5 s; /readyz says why)",
            self.subnet_env_write_failures.clone(),
        );
        r.register(
            "weft_health_connections_shed",
            "Connections to the health server closed before they sent a request, by \
             reason: address_limit (the oldest idle one of an address holding \
             --healthz-max-connections-per-address, for its newest), server_full (the \
             oldest idle one of the address holding the most, the server holding \
             --healthz-max-connections) or refused (a new one: every slot it could take \
             was answering a request)",
            self.health_shed.clone(),
        );
    }

    pub fn subnet_manager(&self) -> SubnetManager {
        self.manager
    }

    fn set_build_info(&self, backend: &'static str) {
        self.build_info.clear();
        self.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                backend,
                subnet_manager: self.manager.label(),
            })
            .set(1);
    }

    /// The backend is known (once the network config is read).
    pub fn set_backend(&self, backend: &'static str) {
        *self.backend.lock().unwrap_or_else(|e| e.into_inner()) = Some(backend);
        self.set_build_info(backend);
        self.peers.clear();
        for family in ["ipv4", "ipv6"] {
            zero(&self.peers, PeerLabels { backend, family });
        }
    }

    /// One reconcile pass and the peers as it left them.
    pub fn record_pass<E>(
        &self,
        trigger: PassTrigger,
        duration: Duration,
        pass: &Result<Pass, E>,
        stats: &PeerStats,
    ) {
        self.passes
            .get_or_create(&TriggerLabel {
                trigger: trigger.label(),
            })
            .inc();
        self.pass_duration.observe(duration.as_secs_f64());
        let pass = match pass {
            Ok(pass) => pass,
            Err(_) => {
                self.pass_failures.inc();
                return;
            }
        };
        for (&(kind, cause), &n) in &pass.counts.applied {
            self.changes
                .get_or_create(&ChangeLabels {
                    kind: kind.label(),
                    cause: cause.label(),
                })
                .inc_by(n);
        }
        for (&kind, &n) in &pass.counts.failed {
            self.change_failures
                .get_or_create(&KindLabel { kind: kind.label() })
                .inc_by(n);
        }
        for kind in &pass.new_rejections {
            self.peer_rejections
                .get_or_create(&RuleLabel { rule: kind.label() })
                .inc();
        }
        self.peer_leases.set(stats.leases as i64);
        let backend = *self.backend.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(backend) = backend {
            for (family, n) in [("ipv4", stats.programmed_v4), ("ipv6", stats.programmed_v6)] {
                self.peers
                    .get_or_create(&PeerLabels { backend, family })
                    .set(n as i64);
            }
        }
        let mut reasons: Vec<&'static str> = SkipKind::ALL.iter().map(|k| k.label()).collect();
        reasons.extend(RejectKind::ALL.iter().map(|k| k.label()));
        for reason in reasons {
            let n = stats.skipped.get(reason).copied().unwrap_or(0);
            self.peers_skipped
                .get_or_create(&ReasonLabel { reason })
                .set(n as i64);
        }
    }

    /// One traffic-rules check: `Ok(n)`, it rewrote `n` chains or tables for `cause`;
    /// `Err`, it could not install them.
    pub fn record_rules_check(&self, outcome: Result<usize, ()>, cause: Cause) {
        let kind = ChangeKind::Rule.label();
        match outcome {
            Ok(0) => {}
            Ok(n) => {
                self.changes
                    .get_or_create(&ChangeLabels {
                        kind,
                        cause: cause.label(),
                    })
                    .inc_by(n as u64);
            }
            Err(()) => {
                self.change_failures
                    .get_or_create(&KindLabel { kind })
                    .inc();
            }
        }
    }

    /// A renewal of the own etcd lease.
    pub fn record_renewal(&self, outcome: Renewal) {
        self.lease_renewals
            .get_or_create(&ResultLabel {
                result: outcome.label(),
            })
            .inc();
    }

    /// The WireGuard peers as the last full pass read them (gone peers dropped).
    pub fn set_tunnel_peers(&self, peers: &[TunnelPeerView]) {
        self.wg_handshake.clear();
        self.wg_rx.clear();
        self.wg_tx.clear();
        for peer in peers {
            let labels = TunnelPeerLabels {
                device: peer.device.clone(),
                public_key: peer.public_key.to_base64(),
                allowed_ips: peer
                    .allowed_ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            };
            let handshake = peer
                .last_handshake
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64);
            self.wg_handshake.get_or_create(&labels).set(handshake);
            self.wg_rx.get_or_create(&labels).set(peer.rx_bytes as i64);
            self.wg_tx.get_or_create(&labels).set(peer.tx_bytes as i64);
        }
    }

    /// When the own etcd lease expires (`None`: it does not).
    /// Each VXLAN device's TX checksum offload (devices it could not be read on are left
    /// out).
    pub fn set_tx_checksum<'a>(&self, devices: impl IntoIterator<Item = (&'a str, bool)>) {
        self.tx_checksum.clear();
        for (device, on) in devices {
            let labels = DeviceLabel {
                device: device.to_string(),
            };
            self.tx_checksum.get_or_create(&labels).set(i64::from(on));
        }
    }

    pub fn set_lease_expiry(&self, expiry: Option<SystemTime>) {
        let seconds = expiry
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        self.lease_expiry.set(seconds);
    }

    /// A write of subnet.env.
    /// The health server closed a connection before its request: a [`ShedReason`]'s
    /// label, or [`REFUSED`].
    pub fn record_health_shed(&self, reason: &'static str) {
        self.health_shed
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn record_subnet_env_write(&self, ok: bool) {
        if ok {
            self.subnet_env_writes.inc();
        } else {
            self.subnet_env_write_failures.inc();
        }
    }

    /// The exposition, with the time-dependent gauges brought up to date.
    pub fn encode(&self) -> String {
        self.ready.set(i64::from(self.readiness.get().is_ok()));
        self.contact_age.set(self.contact_age_seconds());
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    fn contact_age_seconds(&self) -> f64 {
        if self.watch_open.load(Ordering::Relaxed) {
            return 0.0;
        }
        let now = self.started.elapsed();
        let last = self.last_contact_ms.load(Ordering::Relaxed);
        let since = if last == u64::MAX {
            now
        } else {
            now.saturating_sub(Duration::from_millis(last))
        };
        since.as_secs_f64()
    }
}

/// Creates the series of `labels` (at zero) if it does not exist.
fn zero<S, M>(family: &Family<S, M>, labels: S)
where
    S: Clone + std::hash::Hash + Eq,
    M: Default,
{
    drop(family.get_or_create(&labels));
}

impl DatastoreObserver for Metrics {
    fn contact(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_contact_ms.store(ms, Ordering::Relaxed);
    }

    fn error(&self, operation: &'static str) {
        self.datastore_errors
            .get_or_create(&OperationLabel { operation })
            .inc();
    }

    fn watch_restart(&self, reason: WatchRestart) {
        self.watch_restarts
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
    }

    fn watch_open(&self, open: bool) {
        // The stream ending is the last moment it was known to be in contact.
        self.contact();
        self.watch_open.store(open, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use weft_backend::reconcile::drift::PassCounts;

    /// A family as exposed: type, help, and its label names with the values seen.
    #[derive(Debug, Default)]
    struct Exposed {
        kind: String,
        help: String,
        labels: BTreeMap<String, BTreeSet<String>>,
        samples: Vec<(String, BTreeMap<String, String>, f64)>,
    }

    /// A small reader of the text format, enough to check what we expose (the end-to-end
    /// test parses it with Prometheus' own Python parser).
    fn parse(text: &str) -> BTreeMap<String, Exposed> {
        let mut families: BTreeMap<String, Exposed> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                families.entry(name.into()).or_default().help = help.into();
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                families.entry(name.into()).or_default().kind = kind.into();
            } else {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|base| families.contains_key(*base))
                    .unwrap_or(name);
                let labels: BTreeMap<String, String> = labels
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (k, v) = l.split_once('=').unwrap();
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                let exposed = families
                    .get_mut(family)
                    .unwrap_or_else(|| panic!("sample before its TYPE: {line}"));
                for (k, v) in &labels {
                    if k != "le" {
                        exposed
                            .labels
                            .entry(k.clone())
                            .or_default()
                            .insert(v.clone());
                    }
                }
                exposed
                    .samples
                    .push((name.to_string(), labels, value.parse().unwrap()));
            }
        }
        families
    }

    fn metrics(manager: SubnetManager) -> Metrics {
        let m = Metrics::new(manager, Readiness::new("starting"));
        m.set_backend("vxlan");
        // Series that exist only once a VXLAN device does.
        m.set_tx_checksum([("flannel.1", false)]);
        // And once a WireGuard device has a peer.
        m.set_tunnel_peers(&[TunnelPeerView {
            device: "flannel-wg".into(),
            public_key: weft_backend::tunnel::key::PublicKey([2; 32]),
            endpoint: Some("198.18.0.12:51820".parse().unwrap()),
            allowed_ips: vec!["10.244.2.0/24".parse().unwrap()],
            last_handshake: Some(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
            ),
            rx_bytes: 1000,
            tx_bytes: 2000,
        }]);
        m
    }

    #[test]
    fn wireguard_peers_are_exposed_with_their_handshake_and_bytes() {
        let m = metrics(SubnetManager::Etcd);
        let families = parse(&m.encode());
        let labels = [
            ("device", "flannel-wg"),
            ("public_key", "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="),
            ("allowed_ips", "10.244.2.0/24"),
        ];
        assert_eq!(
            value(
                &families,
                "weft_wireguard_peer_last_handshake_seconds",
                &labels
            ),
            1_700_000_000.0
        );
        assert_eq!(
            value(&families, "weft_wireguard_peer_receive_bytes", &labels),
            1000.0
        );
        assert_eq!(
            value(&families, "weft_wireguard_peer_transmit_bytes", &labels),
            2000.0
        );
        // A peer gone from the device is gone from the metrics.
        m.set_tunnel_peers(&[]);
        let text = m.encode();
        assert!(
            !text.contains("weft_wireguard_peer_receive_bytes{"),
            "{text}"
        );
    }

    /// The value of the sample `name{labels}` (exactly these labels).
    fn value(families: &BTreeMap<String, Exposed>, name: &str, labels: &[(&str, &str)]) -> f64 {
        families
            .values()
            .flat_map(|f| &f.samples)
            .find(|(n, l, _)| {
                n == name
                    && labels.len() == l.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .unwrap_or_else(|| panic!("no {name}{labels:?}"))
            .2
    }

    #[test]
    fn every_metric_is_registered_once_with_bounded_labels_at_zero() {
        let m = metrics(SubnetManager::Etcd);
        let families = parse(&m.encode());
        for (name, family) in &families {
            assert!(name.starts_with("weft_"), "{name}");
            assert!(!family.help.is_empty() && !family.kind.is_empty(), "{name}");
            assert!(!family.samples.is_empty(), "{name} has no series");
        }
        assert_eq!(
            value(
                &families,
                "weft_build_info",
                &[
                    ("version", env!("CARGO_PKG_VERSION")),
                    ("backend", "vxlan"),
                    ("subnet_manager", "etcd")
                ]
            ),
            1.0
        );
        assert_eq!(families["weft_datapath_changes_total"].kind, "counter");
        // Peer causes only for peer entries, node_change only for the node's own.
        assert_eq!(
            families["weft_datapath_changes_total"].samples.len(),
            4 * 5 + 4 * 3
        );
        assert_eq!(
            value(
                &families,
                "weft_datapath_changes_total",
                &[("kind", "route"), ("cause", "drift_repair")]
            ),
            0.0
        );
        assert_eq!(value(&families, "weft_ready", &[]), 0.0);
        assert_eq!(
            families["weft_reconcile_pass_duration_seconds"].kind,
            "histogram"
        );
        assert!(families.contains_key("weft_lease_renewals_total"));
        // Kubernetes mode: no etcd lease metrics, the API's operations.
        let kube = parse(&metrics(SubnetManager::Kube).encode());
        assert!(!kube.contains_key("weft_lease_renewals_total"));
        assert!(!kube.contains_key("weft_lease_expiry_timestamp_seconds"));
        assert_eq!(
            kube["weft_datastore_errors_total"].labels["operation"],
            BTreeSet::from(["get_node", "patch_node_status", "watch_nodes"].map(String::from))
        );
    }

    #[test]
    fn a_pass_and_the_datastore_move_their_series() {
        let m = metrics(SubnetManager::Etcd);
        let pass = Pass {
            counts: PassCounts {
                applied: BTreeMap::from([((ChangeKind::Route, Cause::DriftRepair), 1)]),
                failed: BTreeMap::from([(ChangeKind::Fdb, 2)]),
            },
            new_rejections: vec![RejectKind::OverlapsPeer],
            ..Pass::default()
        };
        let stats = PeerStats {
            leases: 3,
            programmed_v4: 2,
            programmed_v6: 0,
            skipped: BTreeMap::from([("overlaps_peer", 1)]),
        };
        m.record_pass::<()>(
            PassTrigger::KernelEvent,
            Duration::from_millis(3),
            &Ok(pass),
            &stats,
        );
        m.record_pass(
            PassTrigger::Timer,
            Duration::from_millis(1),
            &Err(()),
            &stats,
        );
        m.error("list_leases");
        m.watch_restart(WatchRestart::Error);
        m.record_renewal(Renewal::Failed);
        m.record_subnet_env_write(true);
        m.set_lease_expiry(Some(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000),
        ));
        m.readiness.set_ready();
        let f = parse(&m.encode());
        let v = |name: &str, labels: &[(&str, &str)]| value(&f, name, labels);
        assert_eq!(
            v(
                "weft_datapath_changes_total",
                &[("kind", "route"), ("cause", "drift_repair")]
            ),
            1.0
        );
        assert_eq!(
            v("weft_datapath_change_failures_total", &[("kind", "fdb")]),
            2.0
        );
        assert_eq!(
            v("weft_peer_rejections_total", &[("rule", "overlaps_peer")]),
            1.0
        );
        assert_eq!(v("weft_peers_skipped", &[("reason", "overlaps_peer")]), 1.0);
        assert_eq!(
            v("weft_peers", &[("backend", "vxlan"), ("family", "ipv4")]),
            2.0
        );
        assert_eq!(v("weft_peer_leases", &[]), 3.0);
        assert_eq!(
            v(
                "weft_reconcile_passes_total",
                &[("trigger", "kernel_event")]
            ),
            1.0
        );
        assert_eq!(
            v("weft_reconcile_passes_total", &[("trigger", "timer")]),
            1.0
        );
        assert_eq!(v("weft_reconcile_pass_failures_total", &[]), 1.0);
        assert_eq!(v("weft_reconcile_pass_duration_seconds_count", &[]), 2.0);
        assert_eq!(
            v(
                "weft_datastore_errors_total",
                &[("operation", "list_leases")]
            ),
            1.0
        );
        assert_eq!(
            v(
                "weft_datastore_watch_restarts_total",
                &[("reason", "error")]
            ),
            1.0
        );
        assert_eq!(v("weft_lease_renewals_total", &[("result", "failed")]), 1.0);
        assert_eq!(
            v("weft_lease_expiry_timestamp_seconds", &[]),
            1_900_000_000.0
        );
        assert_eq!(v("weft_subnet_env_writes_total", &[]), 1.0);
        assert_eq!(v("weft_ready", &[]), 1.0);
        // Open watch: in contact now; closed: the age counts from its end.
        m.watch_open(true);
        assert_eq!(m.contact_age_seconds(), 0.0);
        m.watch_open(false);
        assert!(m.contact_age_seconds() < 60.0);
    }

    /// The README's metric table, generated from the registries of both modes.
    fn reference_table() -> String {
        let etcd = parse(&metrics(SubnetManager::Etcd).encode());
        let kube = parse(&metrics(SubnetManager::Kube).encode());
        // Labels whose values are a fixed set worth listing (not version or backend).
        let enumerated = [
            "family",
            "reason",
            "rule",
            "trigger",
            "kind",
            "cause",
            "operation",
            "result",
        ];
        let mut out = String::from("| Metric | Type | Labels | Meaning |\n|---|---|---|---|\n");
        for (name, family) in &etcd {
            let mut labels = family.labels.clone();
            if let Some(k) = kube.get(name) {
                for (label, values) in &k.labels {
                    labels
                        .entry(label.clone())
                        .or_default()
                        .extend(values.iter().cloned());
                }
            }
            let labels: Vec<String> = labels
                .iter()
                .map(|(label, values)| {
                    if enumerated.contains(&label.as_str()) {
                        let values: Vec<&str> = values.iter().map(String::as_str).collect();
                        format!("`{label}`: {}", values.join(", "))
                    } else {
                        format!("`{label}`")
                    }
                })
                .collect();
            out.push_str(&format!(
                "| `{name}` | {} | {} | {} |\n",
                family.kind,
                labels.join("; "),
                family.help
            ));
        }
        out
    }

    #[test]
    fn the_readme_documents_every_metric() {
        const BEGIN: &str = "<!-- metrics table: generated by `cargo test the_readme_documents_every_metric`; WEFT_BLESS=1 rewrites it -->\n";
        const END: &str = "<!-- end of metrics table -->";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
        let readme = std::fs::read_to_string(&path).unwrap();
        let table = reference_table();
        let start = readme
            .find(BEGIN)
            .expect("README has the metrics table markers")
            + BEGIN.len();
        let end = readme[start..]
            .find(END)
            .expect("README has the end marker")
            + start;
        if readme[start..end] != table {
            if std::env::var_os("WEFT_BLESS").is_some() {
                let updated = format!("{}{table}{}", &readme[..start], &readme[end..]);
                std::fs::write(&path, updated).unwrap();
            } else {
                panic!(
                    "README.md's metric table is stale; run this test with WEFT_BLESS=1. \
                     Expected:\n{table}"
                );
            }
        }
    }
}
