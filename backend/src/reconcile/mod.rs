//! The datapath of this node: what the backend programs and how it converges.
//!
//! The datapath keeps the full set of peer leases and converges in two ways:
//! - a **full pass** ([`Reconciler::converge`]): the backend's desired state, the kernel's
//!   observed state, the diff, applied. It runs at startup, on the reconcile timer, after
//!   lost notifications, at the end of a datastore grace period, when the node itself
//!   changed, and whenever the targeted path cannot tell what to do. `alloc` wants
//!   nothing, so its passes only sweep routes weft left marked as its own;
//! - a **targeted pass** ([`Reconciler::converge_changes`], in [`incremental`]): the
//!   entries of the peers whose lease changed, and the entries kernel notifications
//!   reported deleted, against the drift tracker's model of the kernel. Its cost is the
//!   number of changes, not of peers (no dump).
//!
//! Peer leases are untrusted: each pass first brings admission ([`Admission`]) up to date
//! with the changed leases, so a hostile or broken lease never reaches the backend, and
//! desired routes whose prefix a foreign route occupies are withdrawn rather than
//! installed over it. Both are logged once.

pub mod drift;
mod incremental;
mod reports;
pub mod tunnels;
pub mod view;

pub use incremental::{Planned, Reaction, Step};

use crate::admission::{Admission, Identity, Judged, RejectKind};
use crate::backend::{Backend, ExternalSpec, MtuChange, SkipKind};
use crate::diff;
use crate::kernel::{Kernel, KernelError, KernelEvent};
use crate::nexthop::NexthopPlan;
use crate::offload::{self, Decision};
use drift::{ChangeKind, EntryId, EntryState, PassCounts, Tracker};
use reports::Reports;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tracing::{debug, info, warn};
use view::{EntryView, PeerView, Verdict};
use weft_lease::family::{Family, Net};
use weft_lease::watch::LeaseEvent;
use weft_lease::{Lease, SubnetKey};

/// The outcome of one reconcile pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub changes: usize,
    pub failures: Vec<String>,
    /// The changes by kind and cause, and the failed ones by kind.
    pub counts: PassCounts,
    /// Peers newly rejected by admission in this pass (each peer and reason once).
    pub new_rejections: Vec<RejectKind>,
}

/// The peers as of the last pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeerStats {
    /// Peer leases known (every remote lease, programmed or not).
    pub leases: usize,
    /// Peers with a route, by family.
    pub programmed_v4: usize,
    pub programmed_v6: usize,
    /// Peers not programmed, by reason label (skip kinds and admission rules).
    pub skipped: BTreeMap<&'static str, usize>,
}

/// What peers are checked against, besides this node's subnet (see [`Identity`]).
#[derive(Debug, Clone, Default)]
pub struct Surroundings {
    pub network_v4: Option<Net>,
    pub network_v6: Option<Net>,
    pub public_ips: Vec<IpAddr>,
    /// Networks connected to this host (device name), weft's devices excluded.
    pub host_networks: Vec<(Net, String)>,
}

/// This node's datapath: a backend and the kernel.
#[derive(Debug)]
pub struct Reconciler {
    backend: Box<dyn Backend>,
    /// `None` for a model datapath ([`Reconciler::detached`]): planning only.
    kernel: Option<Kernel>,
    /// Shared with the lease watcher (see [`PeerLease`]).
    peers: BTreeMap<SubnetKey, Arc<Lease>>,
    surroundings: Surroundings,
    own: Option<SubnetKey>,
    admission: Admission,
    /// What has been logged once, and the counts the metrics read.
    reports: Reports,
    /// Peers whose lease changed since admission last judged them.
    unjudged: BTreeSet<SubnetKey>,
    /// Causes of changes, and the state of each entry as of the last pass.
    tracker: Tracker,
    stats: PeerStats,
    /// weft's devices as last observed (index → name), to read kernel notifications.
    device_indices: HashMap<u32, String>,
    /// Peers whose lease changed since the last pass, with their lease as of that pass
    /// (`None`: the peer is new). The targeted path programs exactly these.
    changed: BTreeMap<SubnetKey, Option<Arc<Lease>>>,
    /// Entries of weft's that notifications reported deleted since the last pass.
    dirty: Vec<incremental::Dirty>,
    /// The next pass must be a full one (nothing observed yet, the node changed, the last
    /// pass failed somewhere: only a full pass retries what the model does not show).
    needs_full: bool,
    /// Until then, passes add and repair but remove no peer entries (see [`Self::hold_removals`]).
    removals_held_until: Option<Instant>,
    /// `--ip-blackhole-route`: a blackhole route for this node's own subnets.
    blackhole_own: bool,
    /// Peer routes go through nexthop objects (the kernel has them, the operator wants
    /// them; see [`crate::nexthop`]).
    nexthop_objects: bool,
    /// The nexthop ids the backend was given.
    nexthop_plan: NexthopPlan,
    /// Ids of weft's block another program's nexthop objects hold (as of the last time
    /// they were read): the routes that would use them go without.
    taken_nexthops: BTreeSet<NonZeroU32>,
    /// The VXLAN devices' TX checksum offload, as decided at startup (`None`: not a
    /// VXLAN backend, or nothing to decide).
    tx_checksum: Option<Decision>,
    /// Each device's offload as of the last full pass: on or off, or why it could not
    /// be set.
    tx_checksum_applied: offload::DeviceStates,
    /// The next full pass reads the nexthop objects: they may hold something to act on
    /// (another program's object in weft's block, or one of weft's no route uses). Only
    /// something outside weft's ops can cause either: startup, a failed op, lost
    /// notifications, another program's object appearing, a new plan.
    nexthops_unknown: bool,
    /// The WireGuard devices as the last full pass read them (see `tunnels`).
    tunnels: tunnels::TunnelsSeen,
}

impl Reconciler {
    pub fn new(
        backend: Box<dyn Backend>,
        kernel: Kernel,
        surroundings: Surroundings,
    ) -> Reconciler {
        Reconciler::with_kernel(backend, Some(kernel), surroundings)
    }

    /// A datapath without a kernel: it plans (full and targeted passes) but cannot apply.
    /// The property tests run it against a model kernel.
    pub fn detached(backend: Box<dyn Backend>, surroundings: Surroundings) -> Reconciler {
        Reconciler::with_kernel(backend, None, surroundings)
    }

    fn with_kernel(
        backend: Box<dyn Backend>,
        kernel: Option<Kernel>,
        surroundings: Surroundings,
    ) -> Reconciler {
        Reconciler {
            backend,
            kernel,
            peers: BTreeMap::new(),
            surroundings,
            own: None,
            admission: Admission::default(),
            reports: Reports::default(),
            unjudged: BTreeSet::new(),
            tracker: Tracker::default(),
            stats: PeerStats::default(),
            device_indices: HashMap::new(),
            changed: BTreeMap::new(),
            dirty: Vec::new(),
            needs_full: true,
            tx_checksum: None,
            tx_checksum_applied: BTreeMap::new(),
            removals_held_until: None,
            blackhole_own: false,
            nexthop_objects: false,
            nexthop_plan: NexthopPlan::off(),
            taken_nexthops: BTreeSet::new(),
            nexthops_unknown: true,
            tunnels: tunnels::TunnelsSeen::default(),
        }
    }

    /// The backend this reconciler programs (lease attributes, pod MTU).
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    fn kernel(&self) -> Result<&Kernel, KernelError> {
        self.kernel
            .as_ref()
            .ok_or_else(|| KernelError::Invalid("a detached datapath has no kernel".into()))
    }

    /// Keeps a blackhole route for this node's own subnets (`--ip-blackhole-route`), so
    /// traffic to pod addresses that do not exist (yet) is dropped here rather than sent
    /// out by the default route.
    pub fn set_blackhole_own(&mut self, enabled: bool) {
        self.blackhole_own = enabled;
        self.needs_full = true;
        self.tracker.inputs_changed();
    }

    /// Until `until`, passes remove no peer route, neighbour or FDB entry. The peer set
    /// then comes from a datastore that may have lost leases (emptied or restored): a
    /// peer missing from it is more likely about to re-publish than gone, and sweeping
    /// its entries would cut its pods off until it does. After `until`, the next pass
    /// sweeps whatever no lease wants.
    pub fn hold_removals(&mut self, until: Instant) {
        self.removals_held_until = Some(until);
    }

    /// When held removals are due, if they are held.
    pub fn removals_held_until(&self) -> Option<Instant> {
        self.removals_held_until
    }

    pub fn surroundings(&self) -> &Surroundings {
        &self.surroundings
    }

    pub fn set_own(&mut self, own: SubnetKey) {
        self.own = Some(own);
        self.backend.set_own(own);
        self.plan_nexthops();
        self.needs_full = true;
        self.tracker.inputs_changed();
    }

    /// Whether peer routes go through nexthop objects (when the kernel has them: the
    /// caller checks).
    pub fn use_nexthop_objects(&mut self, on: bool) {
        self.nexthop_objects = on;
        self.plan_nexthops();
        self.needs_full = true;
        self.tracker.inputs_changed();
    }

    /// Gives the backend the nexthop ids of this node's peer routes: numbered within the
    /// cluster networks, at this node's subnet length (which admission holds every peer
    /// to).
    fn plan_nexthops(&mut self) {
        let plan = match self.own {
            Some(own) if self.nexthop_objects => NexthopPlan::new(
                self.surroundings.network_v4,
                own.ipv4.map(|n| n.prefix),
                self.surroundings.network_v6,
                own.ipv6.map(|n| n.prefix),
            ),
            _ => NexthopPlan::off(),
        };
        self.nexthop_plan = plan;
        self.backend.set_nexthops(plan);
        self.nexthops_unknown = true;
    }

    /// Who this node is, for admission. Host networks inside the own subnet (the CNI
    /// bridge's gateway address) are this node's pods, not a collision.
    fn identity(&self, own: SubnetKey) -> Identity {
        let s = &self.surroundings;
        let inside_own = |net: &Net| {
            [own.ipv4, own.ipv6]
                .into_iter()
                .flatten()
                .any(|o| o.family == net.family && o.prefix <= net.prefix && o.contains(net.addr))
        };
        Identity {
            own,
            network_v4: s.network_v4,
            network_v6: s.network_v6,
            public_ips: s.public_ips.clone(),
            macs: self.backend.own_macs(),
            host_networks: s
                .host_networks
                .iter()
                .filter(|(net, _)| !inside_own(net))
                .cloned()
                .collect(),
        }
    }

    /// Whether peers are judged: a backend that programs them, on a node with a subnet.
    fn judging(&self) -> bool {
        self.own.is_some() && self.backend.programs_peers()
    }

    /// Whether the backend may program the peer under `key` (as of the last admission).
    fn admits(&self, key: &SubnetKey) -> bool {
        !self.judging() || self.admission.is_admitted(key)
    }

    /// Brings admission up to date with the peers changed since it last ran (only those,
    /// and the peers it rejected, are judged again; see [`Admission::update`]), and logs
    /// every new rejection once. Returns the keys judged.
    fn admit_changes(&mut self) -> Judged {
        let Some(own) = self.own.filter(|_| self.judging()) else {
            // Nothing to judge: every peer counts as admitted, and only the changed ones
            // can have changed. Admission starts afresh once there is something to judge.
            self.admission.forget();
            return Judged::Keys(std::mem::take(&mut self.unjudged).into_iter().collect());
        };
        let identity = self.identity(own);
        let backend = &self.backend;
        let macs_of = |lease: &Lease| backend.peer_macs(lease);
        let changed = std::mem::take(&mut self.unjudged);
        let judged = self
            .admission
            .update(&identity, &self.peers, changed, &macs_of);
        let rejections: Vec<_> = match &judged {
            Judged::All => self.admission.rejections().cloned().collect(),
            Judged::Keys(keys) => keys
                .iter()
                .filter_map(|key| self.admission.rejection(key))
                .cloned()
                .collect(),
        };
        for rejection in rejections {
            if self
                .reports
                .logged
                .insert((rejection.key, rejection.reason.clone()))
            {
                *self.reports.rejections.entry(rejection.kind).or_default() += 1;
                self.reports.new_rejections.push(rejection.kind);
                warn!(
                    subnet = %rejection.key,
                    rule = rejection.kind.label(),
                    "rejecting peer lease: {}",
                    rejection.reason
                );
            }
        }
        judged
    }

    /// Replaces the peer set (the full set of remote leases). Only leases that differ
    /// are cloned, and each one that does is noted for the targeted path, with its lease
    /// as of the last pass. O(peers): the daemon passes the lease watcher's changes with
    /// [`Reconciler::apply_peer_events`] instead.
    pub fn set_peers(&mut self, peers: impl IntoIterator<Item = impl PeerLease>) {
        let mut previous = std::mem::take(&mut self.peers);
        // Collected, then built in bulk: inserted one by one in key order, the map's nodes
        // would stay half empty.
        let mut current = Vec::with_capacity(previous.len());
        for peer in peers {
            let lease = peer.lease();
            match previous.remove(&lease.key) {
                Some(old) if *old == *lease => current.push((lease.key, old)),
                old => {
                    self.note_changed(lease.key, old);
                    current.push((lease.key, peer.share()));
                }
            }
        }
        self.peers = current.into_iter().collect();
        for (key, old) in previous {
            self.note_changed(key, Some(old));
        }
        self.tracker.inputs_changed();
    }

    /// Applies changes of the peer set (from the lease watcher, whose leases it shares):
    /// O(changes), whatever the number of peers.
    pub fn apply_peer_events(&mut self, events: impl IntoIterator<Item = LeaseEvent>) {
        for event in events {
            let (key, old) = match event {
                LeaseEvent::Added(lease) => (lease.key, self.peers.insert(lease.key, lease)),
                LeaseEvent::Removed(lease) => (lease.key, self.peers.remove(&lease.key)),
            };
            self.note_changed(key, old);
        }
        self.tracker.inputs_changed();
    }

    /// Notes a peer whose lease changed, with its lease as of the last pass (`None`: it
    /// is new), for the targeted path and for admission.
    fn note_changed(&mut self, key: SubnetKey, old: Option<Arc<Lease>>) {
        self.changed.entry(key).or_insert(old);
        self.unjudged.insert(key);
    }

    /// The peers as of the last pass.
    pub fn stats(&self) -> &PeerStats {
        &self.stats
    }

    /// One full reconcile pass: observe, diff, apply (every op is tried; failures are
    /// returned and retried by the next full pass).
    pub async fn converge(&mut self) -> Result<Pass, KernelError> {
        let started = Instant::now();
        let desired = self.desired();
        let read_nexthops = self.nexthops_unknown;
        let observed = match self.kernel()?.observe(&desired, read_nexthops).await {
            Ok(observed) => observed,
            Err(e) => {
                self.needs_full = true;
                return Err(e);
            }
        };
        let plan = self.plan_full(desired, &observed);
        self.tunnels.record(&observed);
        for op in &plan.ops {
            match op {
                diff::Op::DeleteLink { .. } | diff::Op::CreateLink(_) => info!("datapath: {op}"),
                _ => tracing::trace!("datapath: {op}"),
            }
        }
        let observed_in = started.elapsed();
        let failures = self.apply(&plan.ops).await;
        let pass = self.record_full(&plan, &observed, failures);
        debug!(
            changes = plan.ops.len(),
            peers = self.peers.len(),
            observe_us = observed_in.as_micros() as u64,
            elapsed_us = started.elapsed().as_micros() as u64,
            "reconcile pass"
        );
        self.refresh_device_indices(&plan.desired, &plan.ops).await;
        self.apply_tx_checksum();
        self.log_pass(&pass, plan.ops.len(), started);
        Ok(pass)
    }

    /// The TX checksum offload every device of the backend gets (see [`crate::offload`]).
    pub fn set_tx_checksum(&mut self, decision: Decision) {
        self.tx_checksum = Some(decision);
    }

    /// Each device's offload as of the last full pass, by device name.
    pub fn tx_checksum(&self) -> Option<(&Decision, &offload::DeviceStates)> {
        self.tx_checksum
            .as_ref()
            .map(|d| (d, &self.tx_checksum_applied))
    }

    /// Level-triggered like the rest of the pass: read on every full pass (one request
    /// per device), set where it differs (a re-created device, an admin's `ethtool -K`).
    fn apply_tx_checksum(&mut self) {
        let Some(decision) = self.tx_checksum.clone() else {
            return;
        };
        let Ok(kernel) = self.kernel() else {
            return;
        };
        let devices: Vec<(u32, String)> = self
            .device_indices
            .iter()
            .filter(|(_, name)| self.backend.owns_device(name))
            .map(|(index, name)| (*index, name.clone()))
            .collect();
        let mut applied = BTreeMap::new();
        for (index, name) in devices {
            let result = kernel.ensure_feature(index, offload::FEATURE, decision.on);
            match &result {
                Ok(true) => info!(device = %name, "set {decision}"),
                Ok(false) => {}
                Err(e) if !matches!(self.tx_checksum_applied.get(&name), Some(Err(_))) => {
                    warn!(device = %name, "cannot set {}: {e}; retrying on the next full pass", offload::FEATURE);
                }
                Err(_) => {}
            }
            let state = result.map(|_| decision.on).map_err(|e| e.to_string());
            applied.insert(name, state);
        }
        self.tx_checksum_applied = applied;
    }

    /// The full pass's decisions (pure): foreign routes withdrawn, the diff, removals held
    /// during a grace period. Whatever the targeted path had noted is covered by it.
    pub fn plan_full(
        &mut self,
        mut desired: crate::desired::Desired,
        observed: &crate::desired::Observed,
    ) -> FullPlan {
        // Covered by this pass; dropped first, as the diff is the pass's peak.
        self.changed.clear();
        self.dirty.clear();
        self.withdraw_foreign(&mut desired, observed);
        self.demote_taken_nexthops(&mut desired, observed);
        self.device_indices = observed
            .links
            .iter()
            .map(|l| (l.index, l.name.clone()))
            .collect();
        let mut ops = diff::diff(&desired, observed);
        let held = self.apply_hold(&mut ops);
        self.needs_full = false;
        FullPlan { desired, ops, held }
    }

    /// The full desired state now (admission, the backend, the blackholes), for a full pass.
    pub fn full_desired(&mut self) -> crate::desired::Desired {
        self.desired()
    }

    /// Records what a full pass applied: causes, the model, the stats.
    pub fn record_full(
        &mut self,
        plan: &FullPlan,
        observed: &crate::desired::Observed,
        failures: Vec<(diff::Op, String)>,
    ) -> Pass {
        let counts = self.tracker.record_pass(
            &plan.desired,
            observed,
            &plan.ops,
            &failures,
            &plan.held,
            SystemTime::now(),
        );
        self.stats = self.peer_stats(&plan.desired);
        self.finish_pass(plan.ops.len(), failures, counts)
    }

    /// The pass's outcome; failures logged, and a full pass due to retry them.
    fn finish_pass(
        &mut self,
        ops: usize,
        failures: Vec<(diff::Op, String)>,
        counts: PassCounts,
    ) -> Pass {
        if !failures.is_empty() {
            self.nexthops_unknown = true;
            self.needs_full = true;
        }
        let pass = Pass {
            changes: ops - failures.len(),
            failures: failures
                .iter()
                .map(|(op, e)| format!("{op}: {e}"))
                .collect(),
            counts,
            new_rejections: std::mem::take(&mut self.reports.new_rejections),
        };
        for failure in &pass.failures {
            warn!("datapath change failed (retried on the next pass): {failure}");
        }
        pass
    }

    /// Applies `ops` (every one tried); the failed ones with their errors.
    async fn apply(&self, ops: &[diff::Op]) -> Vec<(diff::Op, String)> {
        if ops.is_empty() {
            return Vec::new();
        }
        let failures = match self.kernel() {
            Ok(kernel) => kernel.apply(ops).await,
            Err(_) => ops
                .iter()
                .map(|op| (op.clone(), KernelError::Invalid("no kernel".into())))
                .collect(),
        };
        failures
            .into_iter()
            .map(|(op, e)| (op, e.to_string()))
            .collect()
    }

    fn log_pass(&self, pass: &Pass, ops: usize, started: Instant) {
        if ops > 0 {
            info!(
                changes = pass.changes,
                failed = pass.failures.len(),
                peers = self.peers.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "datapath converged"
            );
        }
    }

    /// The backend's desired state for the admitted peers; skipped peers logged once.
    fn desired(&mut self) -> crate::desired::Desired {
        self.admit_changes();
        let this = &*self;
        let (mut desired, skipped) = self.backend.desired_state(
            &mut this
                .peers
                .values()
                .filter(|lease| this.admits(&lease.key))
                .map(|l| &**l),
        );
        if let (true, Some(own)) = (self.blackhole_own, self.own) {
            desired
                .blackholes
                .extend([own.ipv4, own.ipv6].into_iter().flatten());
        }
        self.reports.last_skipped.clear();
        self.note_skipped(skipped);
        // Forget peers that are gone, so the memory is bounded and a returning peer with
        // the same problem is reported again.
        let peers = &self.peers;
        self.reports
            .logged
            .retain(|(key, _)| peers.contains_key(key));
        desired
    }

    /// Drops desired routes that a foreign route occupies; each conflict logged once
    /// while it lasts.
    fn withdraw_foreign(
        &mut self,
        desired: &mut crate::desired::Desired,
        observed: &crate::desired::Observed,
    ) {
        let conflicts = desired.withdraw_foreign(observed);
        let current: HashSet<(Net, String)> = conflicts
            .into_iter()
            .map(|(route, foreign)| (route.destination, foreign))
            .collect();
        for (destination, foreign) in current.difference(&self.reports.conflicts) {
            warn!(
                subnet = %destination,
                "not installing the route for peer subnet {destination}: the foreign route \
                 `{foreign}` is there, and weft never replaces a route it does not own"
            );
        }
        self.reports.conflicts = current;
    }

    /// The backend's desired state for one peer, its routes' nexthops as in a full pass.
    pub(crate) fn peer_desired(
        &self,
        lease: &Lease,
    ) -> (crate::desired::Desired, Vec<crate::desired::Skipped>) {
        let (mut want, skipped) = self.backend.desired_state(&mut std::iter::once(lease));
        want.demote_taken_nexthops(&self.taken_nexthops);
        (want, skipped)
    }

    /// Whether the next full pass reads the nexthop objects.
    pub fn reads_nexthops(&self) -> bool {
        self.nexthops_unknown
    }

    /// The next full pass reads the nexthop objects (notifications were lost).
    pub fn reread_nexthops(&mut self) {
        self.nexthops_unknown = true;
    }

    /// Installs the routes whose nexthop id another program holds without a nexthop
    /// object; each logged once while it lasts.
    fn demote_taken_nexthops(
        &mut self,
        desired: &mut crate::desired::Desired,
        observed: &crate::desired::Observed,
    ) {
        if observed.nexthops_read {
            self.taken_nexthops = observed.taken_nexthops();
            self.nexthops_unknown = false;
        }
        let demoted: HashSet<Net> = desired
            .demote_taken_nexthops(&self.taken_nexthops)
            .into_iter()
            .map(|route| {
                if !self.reports.taken_nexthops.contains(&route.destination) {
                    warn!(
                        subnet = %route.destination,
                        "the route for peer subnet {} goes without a nexthop object: another \
                         program's nexthop holds id {}, and weft never changes what it does \
                         not own",
                        route.destination,
                        route.nexthop.map_or(0, |id| id.get())
                    );
                }
                route.destination
            })
            .collect();
        self.reports.taken_nexthops = demoted;
    }

    /// During a datastore grace period, takes the removals out of `ops` and returns them.
    fn apply_hold(&mut self, ops: &mut Vec<diff::Op>) -> Vec<diff::Op> {
        let Some(until) = self.removals_held_until else {
            return Vec::new();
        };
        if Instant::now() >= until {
            self.removals_held_until = None;
            info!("datastore grace period over: entries of peers still missing are removed");
            return Vec::new();
        }
        let (held, kept): (Vec<diff::Op>, Vec<diff::Op>) = std::mem::take(ops)
            .into_iter()
            .partition(diff::Op::is_peer_removal);
        *ops = kept;
        if !held.is_empty() {
            info!(
                held = held.len(),
                "keeping entries of peers missing from the datastore until the grace period ends"
            );
        }
        held
    }

    /// Peer counts for the metrics, from the pass's desired state.
    fn peer_stats(&self, desired: &crate::desired::Desired) -> PeerStats {
        let mut stats = PeerStats {
            leases: self.peers.len(),
            ..PeerStats::default()
        };
        for net in desired.routes.keys() {
            match net.family {
                Family::V4 => stats.programmed_v4 += 1,
                Family::V6 => stats.programmed_v6 += 1,
            }
        }
        stats.skipped = self.skipped_stats();
        stats
    }

    /// Peers not programmed, by reason label (rejections and skips of the last passes).
    fn skipped_stats(&self) -> BTreeMap<&'static str, usize> {
        let mut skipped = BTreeMap::new();
        for rejection in self.admission.rejections() {
            *skipped.entry(rejection.kind.label()).or_default() += 1;
        }
        for reasons in self.reports.last_skipped.values() {
            let kinds: HashSet<SkipKind> = reasons.iter().map(|(k, _)| *k).collect();
            for kind in kinds {
                *skipped.entry(kind.label()).or_default() += 1;
            }
        }
        skipped
    }

    /// Every peer lease, in subnet order.
    pub fn peers(&self) -> impl Iterator<Item = &Lease> {
        self.peers.values().map(|l| &**l)
    }

    /// One peer: its desired entries (recomputed from its lease), their state as of the
    /// last pass, and its verdict; the entries' descriptions only with `detail` (a
    /// summary of thousands of peers needs the verdicts alone).
    pub fn peer_view(&self, lease: &Lease, now: SystemTime, detail: bool) -> PeerView {
        let mut view = PeerView {
            key: lease.key,
            public_ip: public_ip_text(lease),
            backend_type: lease.attrs.backend_type.clone(),
            verdict: Verdict::Ok,
            why: Vec::new(),
            entries: Vec::new(),
            last_repair: None,
            tunnel: Vec::new(),
        };
        if let Some(rejection) = self.admission.rejection(&lease.key) {
            view.verdict = Verdict::Rejected;
            view.why
                .push(format!("{}: {}", rejection.kind.label(), rejection.reason));
            return view;
        }
        if !self.backend.programs_peers() {
            return view;
        }
        let (want, skipped) = self.peer_desired(lease);
        view.entries = self.entry_views(&want, detail);
        if detail {
            view.tunnel = self.tunnel_peers_of(lease);
        }
        view.last_repair = view
            .entries
            .iter()
            .filter_map(|e| match e.state {
                EntryState::Repaired { at, .. } => Some(at),
                _ => None,
            })
            .max();
        view.verdict = PeerView::verdict_of(&view.entries, now);
        if !skipped.is_empty() {
            view.verdict = Verdict::Skipped;
            view.why = skipped.into_iter().map(|s| s.reason).collect();
        }
        view
    }

    /// The state of each entry in `want` as of the last pass.
    fn entry_views(&self, want: &crate::desired::Desired, detail: bool) -> Vec<EntryView> {
        let describe = |text: &dyn Fn() -> String| if detail { text() } else { String::new() };
        let mut entries = Vec::new();
        for route in want.routes.values() {
            let withdrawn_by = self
                .reports
                .conflicts
                .iter()
                .find(|(net, _)| *net == route.destination)
                .map(|(_, foreign)| foreign.clone());
            let id = EntryId::Net(route.destination);
            entries.push(EntryView {
                kind: ChangeKind::Route,
                desired: describe(&|| route.to_string()),
                state: (self.tracker).entry_state_of(
                    ChangeKind::Route,
                    "",
                    id,
                    drift::route_value(route),
                ),
                withdrawn_by,
            });
        }
        for n in want.neighbours.values() {
            let value = drift::neighbour_value(n);
            entries.push(EntryView {
                kind: ChangeKind::Neighbour,
                desired: describe(&|| drift::describe_neighbour(n)),
                state: (self.tracker).entry_state_of(
                    ChangeKind::Neighbour,
                    &n.device,
                    EntryId::Ip(n.ip),
                    value,
                ),
                withdrawn_by: None,
            });
        }
        for e in want.fdb.values() {
            let value = drift::fdb_value(e);
            entries.push(EntryView {
                kind: ChangeKind::Fdb,
                desired: describe(&|| drift::describe_fdb(e)),
                state: (self.tracker).entry_state_of(
                    ChangeKind::Fdb,
                    &e.device,
                    EntryId::Mac(e.mac),
                    value,
                ),
                withdrawn_by: None,
            });
        }
        entries
    }

    /// The external interface changed (see `Backend::follow_external`); `public_ips` are
    /// the addresses this node now publishes (admission refuses peers claiming them).
    /// The next pass is a full one: a VXLAN device whose `local` changed is re-created.
    pub fn follow_external(&mut self, external: &ExternalSpec, public_ips: Vec<IpAddr>) {
        self.backend.follow_external(external);
        self.surroundings.public_ips = public_ips;
        self.needs_full = true;
        self.tracker.inputs_changed();
    }

    /// Follows the underlay's MTU from a link notification: when the backend's external
    /// interface now has another MTU, the backend recomputes its MTUs and the next pass
    /// is a full one (it sets the devices' MTU). Returns what changed.
    pub fn follow_underlay_mtu(&mut self, event: &KernelEvent) -> Option<MtuChange> {
        let KernelEvent::Link {
            name: Some(name),
            mtu: Some(mtu),
            deleted: false,
            ..
        } = event
        else {
            return None;
        };
        if self.backend.underlay() != Some(name.as_str()) {
            return None;
        }
        let change = self.backend.follow_underlay_mtu(*mtu)?;
        self.needs_full = true;
        Some(change)
    }

    /// A (re)created device has a new index; read just the links, not a full
    /// observation, so a pass at thousands of peers is not dumped twice.
    async fn refresh_device_indices(
        &mut self,
        desired: &crate::desired::Desired,
        ops: &[diff::Op],
    ) {
        let devices_changed = ops
            .iter()
            .any(|op| matches!(op, diff::Op::CreateLink(_) | diff::Op::DeleteLink { .. }));
        if !devices_changed {
            return;
        }
        let mut indices = HashMap::new();
        let Ok(kernel) = self.kernel() else {
            return;
        };
        for name in desired.device_names() {
            if let Ok(Some((index, _))) = kernel.link(name).await {
                indices.insert(index, name.to_string());
            }
        }
        self.device_indices = indices;
    }

    /// Whether a kernel notification concerns weft's objects (and so needs a pass).
    pub fn is_relevant(&self, event: &KernelEvent) -> bool {
        is_relevant(event, &self.device_indices, |name| {
            self.backend.owns_device(name)
        })
    }
}

/// A peer lease as [`Reconciler::set_peers`] takes it: the lease watcher's (shared, not
/// copied: at thousands of peers a second copy of every lease is megabytes), or a plain
/// lease (copied).
pub trait PeerLease {
    fn lease(&self) -> &Lease;
    fn share(&self) -> Arc<Lease>;
}

impl PeerLease for &Arc<Lease> {
    fn lease(&self) -> &Lease {
        self
    }

    fn share(&self) -> Arc<Lease> {
        Arc::clone(self)
    }
}

impl PeerLease for &Lease {
    fn lease(&self) -> &Lease {
        self
    }

    fn share(&self) -> Arc<Lease> {
        Arc::new(Lease::clone(self))
    }
}

/// What a full pass decided: the desired state it worked from, the ops to apply, and the
/// removals held for a datastore grace period.
#[derive(Debug)]
pub struct FullPlan {
    pub desired: crate::desired::Desired,
    pub ops: Vec<diff::Op>,
    pub held: Vec<diff::Op>,
}

/// Whether `event` concerns weft's objects: its devices (by index, or by name for a
/// device that is new or re-created), routes through them or marked with weft's protocol.
/// Additions weft makes itself are not interesting; deletions and foreign changes are.
fn is_relevant(
    event: &KernelEvent,
    device_indices: &HashMap<u32, String>,
    owns_device: impl Fn(&str) -> bool,
) -> bool {
    let ours = |index: &u32| device_indices.contains_key(index);
    match event {
        KernelEvent::Link { index, name, .. } => {
            ours(index) || name.as_deref().is_some_and(owns_device)
        }
        KernelEvent::Address { index } => ours(index),
        KernelEvent::Route {
            oif,
            protocol,
            deleted,
            ..
        } => {
            let on_ours = oif.is_some_and(|i| ours(&i));
            let by_us = *protocol == crate::ROUTE_PROTOCOL;
            if *deleted {
                on_ours || by_us
            } else {
                on_ours && !by_us
            }
        }
        KernelEvent::Neighbour {
            ifindex, deleted, ..
        } => *deleted && ours(ifindex),
        // Only weft's own objects, deleted (another program's changes are its own; the
        // full pass notices one at an id weft wants).
        KernelEvent::Nexthop {
            protocol, deleted, ..
        } => *deleted && *protocol == crate::ROUTE_PROTOCOL,
        KernelEvent::Overrun => true,
    }
}

/// A peer's public addresses as a person reads them: `198.18.0.12`, `fd00::12`, or both.
fn public_ip_text(lease: &Lease) -> String {
    match lease.attrs.public_ipv6 {
        Some(v6) if lease.attrs.public_ip.is_unspecified() => v6.to_string(),
        Some(v6) => format!("{},{v6}", lease.attrs.public_ip),
        None => lease.attrs.public_ip.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ROUTE_PROTOCOL;

    fn relevant(event: KernelEvent) -> bool {
        let devices = HashMap::from([(7, "flannel.1".to_string())]);
        is_relevant(&event, &devices, |name| name == "flannel.1")
    }

    fn route(oif: Option<u32>, protocol: u8, deleted: bool) -> KernelEvent {
        KernelEvent::Route {
            oif,
            protocol,
            deleted,
            destination: None,
        }
    }

    #[test]
    fn changes_to_weft_devices_start_a_pass() {
        let link = |index, name: Option<&str>| KernelEvent::Link {
            index,
            name: name.map(String::from),
            mtu: None,
            deleted: true,
        };
        assert!(relevant(link(7, None)), "our device by index");
        assert!(
            relevant(link(9, Some("flannel.1"))),
            "our device re-created"
        );
        assert!(!relevant(link(9, Some("eth0"))), "someone else's device");
        assert!(relevant(KernelEvent::Address { index: 7 }));
        assert!(!relevant(KernelEvent::Address { index: 2 }));
        assert!(relevant(KernelEvent::Overrun), "lost notifications");
    }

    #[test]
    fn route_notifications_matter_when_weft_did_not_cause_them() {
        // weft's own route deleted (by an admin), wherever it went.
        assert!(relevant(route(Some(2), ROUTE_PROTOCOL, true)));
        assert!(
            relevant(route(Some(7), 3, true)),
            "a route through flannel.1 deleted"
        );
        // A route someone else added through weft's device.
        assert!(relevant(route(Some(7), 4, false)));
        // weft's own additions, and other people's routes elsewhere: nothing to do.
        assert!(!relevant(route(Some(7), ROUTE_PROTOCOL, false)));
        assert!(!relevant(route(Some(2), 4, true)));
        assert!(!relevant(route(None, 4, false)));
    }

    #[test]
    fn only_weft_nexthop_objects_deleted_matter() {
        let nexthop = |protocol, deleted| KernelEvent::Nexthop {
            id: 0x1000_0002,
            protocol,
            deleted,
        };
        // Its routes went with it, without notifications of their own.
        assert!(relevant(nexthop(ROUTE_PROTOCOL, true)));
        assert!(!relevant(nexthop(ROUTE_PROTOCOL, false)));
        assert!(!relevant(nexthop(4, true)), "another program's");
        assert!(!relevant(nexthop(4, false)));
    }

    /// What the notification task drops at the source is never relevant.
    #[test]
    fn own_additions_dropped_at_the_source_are_irrelevant() {
        let mut events = Vec::new();
        for deleted in [false, true] {
            for protocol in [ROUTE_PROTOCOL, 3, 4] {
                for oif in [None, Some(2), Some(7)] {
                    events.push(route(oif, protocol, deleted));
                }
            }
            for (ifindex, bridge) in [(2, false), (7, false), (7, true)] {
                events.push(KernelEvent::Neighbour {
                    ifindex,
                    deleted,
                    bridge,
                    ip: None,
                    mac: None,
                });
            }
        }
        let dropped: Vec<_> = events
            .into_iter()
            .filter(crate::kernel::is_own_addition)
            .collect();
        assert_eq!(dropped.len(), 6, "{dropped:?}");
        for event in dropped {
            assert!(!relevant(event.clone()), "{event:?}");
        }
    }

    #[test]
    fn only_deleted_entries_on_weft_devices_matter() {
        let neigh = |ifindex, deleted| KernelEvent::Neighbour {
            ifindex,
            deleted,
            bridge: false,
            ip: None,
            mac: None,
        };
        assert!(relevant(neigh(7, true)));
        assert!(!relevant(neigh(7, false)), "weft's own replace");
        assert!(!relevant(neigh(2, true)), "another device's entry");
    }

    /// A model node (no kernel) of the `alloc` backend, which programs no peers, with
    /// its subnet.
    fn alloc_node() -> Reconciler {
        let mut dp = Reconciler::detached(
            Box::new(crate::backend::AllocBackend { mtu: 1500 }),
            Surroundings::default(),
        );
        dp.set_own(SubnetKey::parse("10.244.1.0-24").unwrap());
        dp
    }

    /// A full pass against `observed`, recorded with every op failed if `fail`; its ops.
    fn full_pass_on(
        dp: &mut Reconciler,
        observed: &crate::desired::Observed,
        fail: bool,
    ) -> Vec<diff::Op> {
        let desired = dp.full_desired();
        let plan = dp.plan_full(desired, observed);
        let failures = if fail {
            plan.ops
                .iter()
                .map(|op| (op.clone(), "EPERM".into()))
                .collect()
        } else {
            Vec::new()
        };
        dp.record_full(&plan, observed, failures);
        plan.ops
    }

    #[test]
    fn without_peers_to_judge_a_lease_change_stays_a_targeted_pass() {
        let mut dp = alloc_node();
        full_pass_on(&mut dp, &Default::default(), false);
        let peer = Lease {
            key: SubnetKey::parse("10.244.2.0-24").unwrap(),
            attrs: weft_lease::LeaseAttrs::default(),
            etcd_lease: 1,
            expiration: None,
            revision: 2,
        };
        dp.apply_peer_events([LeaseEvent::Added(Arc::new(peer))]);
        let step = dp.plan_changes();
        assert!(
            !step.needs_full,
            "alloc judges no peer: nothing calls for a full pass"
        );
        assert!(dp.finish_step(step, Vec::new()).is_some());
        assert_eq!(dp.peers().count(), 1);
    }

    /// When the full pass reads the nexthop objects: at first, then only when something
    /// outside weft's own ops may have put one there.
    #[test]
    fn nexthop_objects_are_read_when_they_may_hold_something_to_act_on() {
        use crate::desired::{Observed, ObservedNexthop};
        let mut dp = alloc_node();
        // An empty kernel, read as `Kernel::observe` would.
        let full_pass = |dp: &mut Reconciler| {
            let observed = Observed {
                nexthops_read: dp.reads_nexthops(),
                ..Observed::default()
            };
            full_pass_on(dp, &observed, false);
        };
        assert!(dp.reads_nexthops(), "startup");
        full_pass(&mut dp);
        assert!(!dp.reads_nexthops(), "a steady pass reads none");
        // weft's own deletion, and another program's object outside weft's block.
        let event = |id, protocol, deleted| KernelEvent::Nexthop {
            id,
            protocol,
            deleted,
        };
        dp.note_event(&event(0x1000_0002, ROUTE_PROTOCOL, true));
        assert_eq!(dp.note_event(&event(7, 4, false)), Reaction::Ignore);
        assert!(!dp.reads_nexthops());
        // Another program's object in weft's block: a full pass that reads them.
        assert_eq!(dp.note_event(&event(0x1000_0002, 4, false)), Reaction::Full);
        assert!(dp.reads_nexthops());
        full_pass(&mut dp);
        assert!(!dp.reads_nexthops());
        // A failed op (deleting an unused object of weft's), and lost notifications.
        let id = std::num::NonZeroU32::new(0x1000_0002).unwrap();
        let observed = Observed {
            nexthops_read: true,
            nexthops: vec![ObservedNexthop { id, ours: true }],
            ..Observed::default()
        };
        let ops = full_pass_on(&mut dp, &observed, true);
        assert_eq!(ops, [diff::Op::DelNexthop(id)]);
        assert!(dp.reads_nexthops(), "after a failure");
        full_pass(&mut dp);
        dp.reread_nexthops();
        assert!(dp.reads_nexthops(), "after an overrun");
        // What a read finds is kept until the next read.
        let observed = Observed {
            nexthops_read: true,
            nexthops: vec![ObservedNexthop {
                id: std::num::NonZeroU32::new(0x1000_0009).unwrap(),
                ours: false,
            }],
            ..Observed::default()
        };
        full_pass_on(&mut dp, &observed, false);
        assert_eq!(dp.taken_nexthops.len(), 1);
        full_pass(&mut dp);
        assert_eq!(dp.taken_nexthops.len(), 1, "not read: still known");
    }
}
