//! The targeted path: a lease batch programs only the entries of the peers it changed,
//! and a notification that one of weft's entries was deleted repairs that entry, both
//! against the drift tracker's model of the kernel (what the last full pass observed and
//! left, updated by every op applied since), so a pass costs O(changes), with no dump.
//!
//! Why the result equals a full pass's (checked by `tests/prop_incremental.rs` against
//! a model kernel, and end to end by `tests/weftd_incremental.rs`):
//! - a peer's entries depend only on its own lease and this node (the backend is a
//!   function of each peer); the only coupling between peers is admission (first come
//!   keeps a subnet or a VTEP MAC) and FDB entries two peers share (one node's MAC at
//!   one address). Admission judges the changed peers and the rejected ones again (its
//!   verdicts are kept between passes, the full pass uses the same ones), and every peer
//!   whose verdict may have changed (changed, or rejected before or now) is re-planned; an FDB
//!   entry is removed only if no other admitted peer at its address wants it;
//! - an entry is installed when the model does not hold it with the wanted value, and
//!   removed only when the model holds exactly what the peer wanted before: anything
//!   else (a value the model cannot explain, a prefix whose route the kernel cannot name
//!   in one lookup, a failed op) makes the next pass a full one;
//! - a new route prefix is looked up in the kernel (one `fibmatch` get): a foreign route
//!   there withdraws it, as in the full pass;
//! - drift the notifications report is repaired here; drift they cannot describe
//!   (devices, addresses, lost notifications) starts a full pass, and the reconcile
//!   timer's full pass catches anything else.

use super::drift::{self, ChangeKind, EntryId};
use super::{Judged, Pass, Reconciler};
use crate::desired::{Desired, Fdb, Route};
use crate::diff::Op;
use crate::kernel::{KernelError, KernelEvent, RouteAt};
use crate::mac::Mac;
use crate::nexthop::NexthopPlan;
use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Instant, SystemTime};
use tracing::{debug, warn};
use weft_lease::family::{Family, Net};
use weft_lease::{Lease, SubnetKey};

/// One of weft's entries a notification reported deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Dirty {
    Route(Net),
    Neighbour {
        device: String,
        ip: IpAddr,
    },
    Fdb {
        device: String,
        mac: Mac,
        dst: IpAddr,
    },
}

/// What a kernel notification calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    /// Nothing of weft's changed (or weft made the change itself).
    Ignore,
    /// One of weft's entries is gone: a targeted pass repairs it.
    Repair,
    /// Something the targeted path cannot describe: a full pass.
    Full,
}

/// The entries of the changed peers, as wanted at the last pass and now.
#[derive(Debug, Default)]
pub struct Step {
    old: Desired,
    new: Desired,
    /// Routes of `new` on a prefix the model holds no route of weft's for: the kernel is
    /// asked what is there (a foreign route is never replaced).
    pub lookups: Vec<Route>,
    /// A full pass is needed instead (see the module docs).
    pub needs_full: bool,
}

/// What a targeted pass applies, and the removals it holds for a grace period.
#[derive(Debug, Default)]
pub struct Planned {
    pub ops: Vec<Op>,
    pub held: Vec<Op>,
}

impl Reconciler {
    /// A targeted pass for the peers changed and the entries reported deleted since the
    /// last pass; a full pass when one is due (see the module docs).
    pub async fn converge_changes(&mut self) -> Result<Pass, KernelError> {
        let started = Instant::now();
        let step = self.plan_changes();
        let found = if step.needs_full {
            Vec::new()
        } else {
            self.look_up(&step.lookups).await
        };
        let Some(planned) = self.finish_step(step, found) else {
            debug!("targeted pass: a full pass is needed");
            return self.converge().await;
        };
        let failures = self.apply(&planned.ops).await;
        let pass = self.record_step(&planned, failures);
        debug!(
            changes = planned.ops.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "targeted pass"
        );
        self.log_pass(&pass, planned.ops.len(), started);
        Ok(pass)
    }

    /// What the kernel holds at each prefix; a failed lookup answers `Unknown` (a full
    /// pass then reads everything, and reports the error if the kernel cannot be read).
    async fn look_up(&self, routes: &[Route]) -> Vec<RouteAt> {
        let mut found = Vec::with_capacity(routes.len());
        for route in routes {
            let at = match self.kernel() {
                Ok(kernel) => kernel.route_at(route, &self.device_indices).await,
                Err(e) => Err(e),
            };
            found.push(at.unwrap_or_else(|e| {
                debug!("cannot look up {}: {e}", route.destination);
                RouteAt::Unknown
            }));
        }
        found
    }

    /// Whether the next targeted pass would have to be a full one.
    pub fn needs_full(&self) -> bool {
        self.needs_full || !self.tracker.has_run() || !self.backend.targeted_passes()
    }

    /// Plans the changed peers (pure): admission in full, then the entries of every peer
    /// whose lease or verdict may have changed, before and now.
    pub fn plan_changes(&mut self) -> Step {
        let mut step = Step {
            needs_full: self.needs_full(),
            ..Step::default()
        };
        if step.needs_full {
            return step;
        }
        let changed = std::mem::take(&mut self.changed);
        let rejected_before: BTreeSet<SubnetKey> =
            self.admission.rejections().map(|r| r.key).collect();
        let Judged::Keys(judged) = self.admit_changes() else {
            // This node's identity changed under the targeted path: a full pass.
            step.needs_full = true;
            return step;
        };
        // Every peer whose lease or verdict may have changed: admission judged the
        // changed peers and every peer rejected before or now.
        let replan: BTreeSet<SubnetKey> = changed.keys().chain(&judged).copied().collect();
        for key in replan {
            let before = match changed.get(&key) {
                Some(old) => old.as_deref(),
                None => self.peers.get(&key).map(|l| &**l),
            };
            if let Some(lease) = before.filter(|_| !rejected_before.contains(&key)) {
                merge(&mut step.old, self.peer_desired(lease).0);
            }
            self.reports.last_skipped.remove(&key);
            if let Some(lease) = self.admitted(&key) {
                let (want, skipped) = self.peer_desired(lease);
                merge(&mut step.new, want);
                self.note_skipped(skipped);
            }
        }
        step.lookups = step
            .new
            .routes
            .values()
            .filter(|r| {
                self.model(ChangeKind::Route, "", EntryId::Net(r.destination))
                    .is_none()
            })
            .cloned()
            .collect();
        let peers = &self.peers;
        self.reports
            .logged
            .retain(|(key, _)| peers.contains_key(key));
        step
    }

    /// The ops of a step, given what the kernel holds at each of its lookups' prefixes;
    /// `None` when a full pass is needed instead.
    pub fn finish_step(&mut self, mut step: Step, found: Vec<RouteAt>) -> Option<Planned> {
        if step.needs_full || found.len() != step.lookups.len() {
            return None;
        }
        let mut foreign = Vec::new();
        for (route, at) in step.lookups.iter().zip(found) {
            match at {
                RouteAt::Nothing | RouteAt::Ours(_) => {}
                RouteAt::Foreign(f) => foreign.push((route.destination, f.description)),
                RouteAt::Unknown => return None,
            }
        }
        let programmed_before = self.update_conflicts(&step, &foreign);
        for (net, _) in &foreign {
            step.new.routes.remove(net);
        }
        let mut planned = Planned::default();
        planned.ops.extend(self.repair_ops());
        let ops = self.entry_ops(&step.old, &step.new)?;
        let removals_held = self
            .removals_held_until
            .is_some_and(|until| Instant::now() < until);
        for op in ops {
            let removal = op.is_peer_removal();
            if removal && removals_held {
                planned.held.push(op);
            } else {
                planned.ops.push(op);
            }
        }
        self.adjust_stats(&step, programmed_before);
        Some(planned)
    }

    /// Records what a targeted pass applied: causes, and the model entry by entry.
    pub fn record_step(&mut self, planned: &Planned, failures: Vec<(Op, String)>) -> Pass {
        let counts = self
            .tracker
            .record_ops(&planned.ops, &failures, &|_| None, SystemTime::now());
        self.stats.leases = self.peers.len();
        self.finish_pass(planned.ops.len(), failures, counts)
    }

    /// Notes what a kernel notification calls for; a deleted entry of weft's is kept
    /// for the next targeted pass.
    pub fn note_event(&mut self, event: &KernelEvent) -> Reaction {
        if let KernelEvent::Nexthop {
            id, deleted: false, ..
        } = event
            && NexthopPlan::in_range(*id)
        {
            // Another program's object in weft's block (weft's own additions are dropped
            // at the source): the next full pass reads them, and a route that would use
            // this id goes without.
            self.nexthops_unknown = true;
            return Reaction::Full;
        }
        if !self.is_relevant(event) {
            return Reaction::Ignore;
        }
        let dirty = match event {
            KernelEvent::Route {
                deleted: true,
                destination: Some(net),
                ..
            } => Some(Dirty::Route(*net)),
            KernelEvent::Neighbour {
                ifindex,
                bridge,
                ip: Some(ip),
                mac,
                ..
            } => {
                let device = self.device_indices.get(ifindex).cloned();
                match (device, bridge, mac) {
                    (Some(device), false, _) => Some(Dirty::Neighbour { device, ip: *ip }),
                    (Some(device), true, Some(mac)) => Some(Dirty::Fdb {
                        device,
                        mac: *mac,
                        dst: *ip,
                    }),
                    _ => None,
                }
            }
            // The routes through it went with it, silently: repaired as deleted routes.
            KernelEvent::Nexthop { id, .. } => {
                let route =
                    NonZeroU32::new(*id).and_then(|id| self.nexthop_plan.destination_of(id));
                match route {
                    Some(net) => Some(Dirty::Route(net)),
                    // Not one of this plan's (left from before): nothing uses it.
                    None => return Reaction::Ignore,
                }
            }
            _ => None,
        };
        let Some(dirty) = dirty else {
            return Reaction::Full;
        };
        if !self.is_programmed(&dirty, *event_mac(event)) {
            // Not what the model holds: weft removed it itself, or it was not weft's.
            return Reaction::Ignore;
        }
        if !self.dirty.contains(&dirty) {
            self.dirty.push(dirty);
        }
        Reaction::Repair
    }

    fn model(&self, kind: ChangeKind, device: &str, id: EntryId) -> Option<u64> {
        self.tracker.model_value(kind, device, id)
    }

    /// Whether the deleted entry is the one the model holds (a neighbour with the MAC the
    /// notification names, an FDB entry to the same address).
    fn is_programmed(&self, dirty: &Dirty, mac: Option<Mac>) -> bool {
        let had = self.dirty_value(dirty);
        match (dirty, mac) {
            (Dirty::Neighbour { device, ip }, Some(mac)) => {
                let n = crate::desired::Neighbour {
                    device: device.as_str().into(),
                    ip: *ip,
                    mac,
                };
                had == Some(drift::neighbour_value(&n))
            }
            (Dirty::Fdb { device, mac, dst }, _) => {
                let e = Fdb {
                    device: device.as_str().into(),
                    mac: *mac,
                    destination: *dst,
                };
                had == Some(drift::fdb_value(&e))
            }
            _ => had.is_some(),
        }
    }

    fn dirty_value(&self, dirty: &Dirty) -> Option<u64> {
        match dirty {
            Dirty::Route(net) => self.model(ChangeKind::Route, "", EntryId::Net(*net)),
            Dirty::Neighbour { device, ip } => {
                self.model(ChangeKind::Neighbour, device, EntryId::Ip(*ip))
            }
            Dirty::Fdb { device, mac, .. } => {
                self.model(ChangeKind::Fdb, device, EntryId::Mac(*mac))
            }
        }
    }

    /// The lease of an admitted peer (as of the last admission).
    fn admitted(&self, key: &SubnetKey) -> Option<&Lease> {
        self.peers
            .get(key)
            .map(|l| &**l)
            .filter(|_| self.admits(key))
    }

    /// Logs each newly skipped peer once and records why it is skipped (for the metrics
    /// and /debug/state).
    pub(super) fn note_skipped(&mut self, skipped: Vec<crate::desired::Skipped>) {
        for skip in skipped {
            if self.reports.logged.insert((skip.key, skip.reason.clone())) {
                warn!(subnet = %skip.key, "ignoring peer lease: {}", skip.reason);
            }
            self.reports
                .last_skipped
                .entry(skip.key)
                .or_default()
                .push((skip.kind, skip.reason));
        }
    }

    /// Installs what the model does not hold as wanted; removes what the changed peers
    /// wanted before, no longer want, and the model holds as they wanted it. `None` when
    /// the model holds something else there (only a full pass can tell what).
    fn entry_ops(&self, old: &Desired, new: &Desired) -> Option<Vec<Op>> {
        let mut ops = Vec::new();
        for n in new.neighbours.values() {
            if self.model(ChangeKind::Neighbour, &n.device, EntryId::Ip(n.ip))
                != Some(drift::neighbour_value(n))
            {
                ops.push(Op::ReplaceNeighbour(n.clone()));
            }
        }
        for e in new.fdb.values() {
            if self.model(ChangeKind::Fdb, &e.device, EntryId::Mac(e.mac))
                != Some(drift::fdb_value(e))
            {
                ops.push(Op::ReplaceFdb(e.clone()));
            }
        }
        for r in new.routes.values() {
            if self.model(ChangeKind::Route, "", EntryId::Net(r.destination))
                != Some(drift::route_value(r))
            {
                ops.push(Op::ReplaceRoute(r.clone()));
            }
        }
        for r in old
            .routes
            .values()
            .filter(|r| !new.routes.contains_key(&r.destination))
        {
            match self.model(ChangeKind::Route, "", EntryId::Net(r.destination)) {
                Some(v) if v == drift::route_value(r) => ops.push(Op::DelRoute(r.clone())),
                Some(_) => return None,
                None => {}
            }
        }
        for (key, n) in old
            .neighbours
            .iter()
            .filter(|(k, _)| !new.neighbours.contains_key(*k))
        {
            match self.model(ChangeKind::Neighbour, &key.0, EntryId::Ip(key.1)) {
                Some(v) if v == drift::neighbour_value(n) => ops.push(Op::DelNeighbour(n.clone())),
                Some(_) => return None,
                None => {}
            }
        }
        for (key, e) in old.fdb.iter().filter(|(k, _)| !new.fdb.contains_key(*k)) {
            if self.fdb_wanted_elsewhere(e) {
                continue;
            }
            match self.model(ChangeKind::Fdb, &key.0, EntryId::Mac(key.1)) {
                Some(v) if v == drift::fdb_value(e) => ops.push(Op::DelFdb(e.clone())),
                Some(_) => return None,
                None => {}
            }
        }
        Some(ops)
    }

    /// Whether an admitted peer outside the step (unchanged) wants this FDB entry: only
    /// a peer at the same public address can (admission rejects a MAC claimed at another
    /// address), so the scan compares addresses, a few nanoseconds per peer.
    fn fdb_wanted_elsewhere(&self, e: &Fdb) -> bool {
        self.peers.values().any(|lease| {
            let at = IpAddr::V4(lease.attrs.public_ip) == e.destination
                || lease.attrs.public_ipv6.map(IpAddr::V6) == Some(e.destination);
            at && self.admitted(&lease.key).is_some()
                && self
                    .backend
                    .desired_state(&mut std::iter::once(&**lease))
                    .0
                    .fdb
                    .get(&(e.device.clone(), e.mac))
                    == Some(e)
        })
    }

    /// The ops that put back the entries notifications reported deleted (pure). An entry
    /// the model holds but nothing wants any more (a removal held for a grace period) is
    /// just forgotten: it is gone, as the full pass would have made it.
    fn repair_ops(&mut self) -> Vec<Op> {
        let mut entries = Vec::new();
        let mut routes = Vec::new();
        for dirty in std::mem::take(&mut self.dirty) {
            let Some(had) = self.dirty_value(&dirty) else {
                continue;
            };
            match (self.wanted(&dirty), &dirty) {
                (Some(op), _) if op_value(&op) == Some(had) => match op {
                    Op::ReplaceRoute(_) => routes.push(op),
                    _ => entries.push(op),
                },
                // The model holds another value: only a full pass can say what is there.
                (Some(_), _) => self.needs_full = true,
                (None, Dirty::Route(net)) => {
                    self.tracker
                        .forget(ChangeKind::Route, "", EntryId::Net(*net));
                    // Deleting a route leaves its nexthop object: swept with it.
                    let nexthop = self.nexthop_plan.id_for(net);
                    routes.extend(
                        nexthop
                            .filter(|id| !self.taken_nexthops.contains(id))
                            .map(Op::DelNexthop),
                    );
                }
                (None, Dirty::Neighbour { device, ip }) => {
                    self.tracker
                        .forget(ChangeKind::Neighbour, device, EntryId::Ip(*ip))
                }
                (None, Dirty::Fdb { device, mac, .. }) => {
                    self.tracker
                        .forget(ChangeKind::Fdb, device, EntryId::Mac(*mac))
                }
            }
        }
        entries.extend(routes);
        entries
    }

    /// The op that installs the wanted entry under a dirty key, if any peer wants one.
    fn wanted(&self, dirty: &Dirty) -> Option<Op> {
        let subnet_of = |lease: &Lease, pick: &dyn Fn(Net) -> bool| {
            [lease.key.ipv4, lease.key.ipv6]
                .into_iter()
                .flatten()
                .any(pick)
        };
        let want_of = |lease: &Lease| self.peer_desired(lease).0;
        let admitted = self
            .peers
            .values()
            .filter(|l| self.admitted(&l.key).is_some());
        match dirty {
            Dirty::Route(net) => admitted
                .filter(|l| subnet_of(l, &|s| s == *net))
                .find_map(|l| want_of(l).routes.remove(net))
                .map(Op::ReplaceRoute),
            Dirty::Neighbour { device, ip } => admitted
                .filter(|l| subnet_of(l, &|s| s.ip() == *ip))
                .find_map(|l| want_of(l).neighbours.remove(&(device.as_str().into(), *ip)))
                .map(Op::ReplaceNeighbour),
            Dirty::Fdb { device, mac, dst } => admitted
                .filter(|l| {
                    IpAddr::V4(l.attrs.public_ip) == *dst
                        || l.attrs.public_ipv6.map(IpAddr::V6) == Some(*dst)
                })
                .find_map(|l| want_of(l).fdb.remove(&(device.as_str().into(), *mac)))
                .map(Op::ReplaceFdb),
        }
    }

    /// Conflicts with foreign routes as of this step: the changed peers' prefixes are
    /// re-judged by the lookups; a new conflict is logged once. Returns how many of the
    /// step's old routes were programmed (not withdrawn), by family (v4, v6).
    fn update_conflicts(&mut self, step: &Step, foreign: &[(Net, String)]) -> [usize; 2] {
        let before = std::mem::take(&mut self.reports.conflicts);
        let withdrawn: HashSet<Net> = before.iter().map(|(net, _)| *net).collect();
        let mut programmed = [0, 0];
        for net in step.old.routes.keys().filter(|n| !withdrawn.contains(n)) {
            programmed[usize::from(net.family == Family::V6)] += 1;
        }
        let judged =
            |net: &Net| step.old.routes.contains_key(net) || step.new.routes.contains_key(net);
        self.reports.conflicts = before
            .iter()
            .filter(|(net, _)| !judged(net))
            .cloned()
            .collect();
        for conflict in foreign {
            if !before.contains(conflict) {
                let (destination, foreign) = conflict;
                warn!(
                    subnet = %destination,
                    "not installing the route for peer subnet {destination}: the foreign \
                     route `{foreign}` is there, and weft never replaces a route it does not own"
                );
            }
            self.reports.conflicts.insert(conflict.clone());
        }
        programmed
    }

    /// The peer counts after a step: its routes programmed before out, its routes now in.
    fn adjust_stats(&mut self, step: &Step, before: [usize; 2]) {
        let mut now = [0, 0];
        for net in step.new.routes.keys() {
            now[usize::from(net.family == Family::V6)] += 1;
        }
        self.stats.programmed_v4 = (self.stats.programmed_v4 + now[0]).saturating_sub(before[0]);
        self.stats.programmed_v6 = (self.stats.programmed_v6 + now[1]).saturating_sub(before[1]);
        self.stats.leases = self.peers.len();
        self.stats.skipped = self.skipped_stats();
    }
}

/// The link-layer address a neighbour notification names.
fn event_mac(event: &KernelEvent) -> &Option<Mac> {
    match event {
        KernelEvent::Neighbour { mac, .. } => mac,
        _ => &None,
    }
}

/// The value hash an install op puts in the model.
fn op_value(op: &Op) -> Option<u64> {
    match op {
        Op::ReplaceRoute(r) => Some(drift::route_value(r)),
        Op::ReplaceNeighbour(n) => Some(drift::neighbour_value(n)),
        Op::ReplaceFdb(e) => Some(drift::fdb_value(e)),
        _ => None,
    }
}

/// Adds one peer's entries (its devices are the node's, already known).
fn merge(into: &mut Desired, peer: Desired) {
    into.routes.extend(peer.routes);
    into.neighbours.extend(peer.neighbours);
    into.fdb.extend(peer.fdb);
}
