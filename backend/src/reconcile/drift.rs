//! Why a reconcile pass changed the kernel, and what each of weft's entries looked like
//! when it did: the bookkeeping behind the `weft_datapath_changes_total{kind,cause}`
//! metric and the verdicts of `/debug/state`. Pure: the datapath feeds it each pass's
//! desired state, observation, operations and failures.
//!
//! ## The cause of a change
//! The tracker keeps a model of what the kernel held after the previous pass (the desired
//! state, plus entries whose removal was held or failed, minus entries whose installation
//! failed), as hashes: 16 bytes per entry, rebuilt by a full pass only when the input
//! changed or the pass changed something, so a steady pass costs nothing here. A targeted
//! pass (the datapath's incremental path) updates it entry by entry from the ops it
//! applied ([`Tracker::record_ops`]) and reads it to decide what to change
//! ([`Tracker::model_value`]). A change is then explained by comparing it with the model:
//! - an entry installed although the model says the kernel already had it as wanted: the
//!   kernel drifted (an admin deleted a route, a device went down): **drift_repair**;
//! - installed where the model had another value: **peer_changed** (a peer's MAC or
//!   address changed), or **node_change** for the node's own device, address, blackhole;
//! - installed where the model had nothing: **new_peer** (or **node_change**);
//! - removed where the model had it: **peer_gone** (or **node_change**);
//! - removed where the model did not have it (something appeared that weft never put
//!   there, e.g. a route through its device): **drift_repair**;
//! - everything in the first pass of the process: **startup** (what a previous run or
//!   another daemon left is not known).

use crate::desired::{Desired, Fdb, Neighbour, Observed, Route};
use crate::diff::Op;
use crate::mac::{self, Mac};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::time::SystemTime;
use weft_lease::family::Net;

/// What a change touched; bounded, so it can label a metric. (weft installs no policy
/// rules, so there is no `rule` kind.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeKind {
    Device,
    Address,
    Neighbour,
    Fdb,
    Route,
    /// A nexthop object of weft's no route uses any more (swept; the ones in use are
    /// installed and repaired with their routes, and count as those).
    Nexthop,
    Blackhole,
    /// A traffic-rules chain or table (masquerade, forward), counted per chain or table
    /// the check rewrote.
    Rule,
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 8] = [
        ChangeKind::Device,
        ChangeKind::Address,
        ChangeKind::Neighbour,
        ChangeKind::Fdb,
        ChangeKind::Route,
        ChangeKind::Nexthop,
        ChangeKind::Blackhole,
        ChangeKind::Rule,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ChangeKind::Device => "device",
            ChangeKind::Address => "address",
            ChangeKind::Neighbour => "neighbour",
            ChangeKind::Fdb => "fdb",
            ChangeKind::Route => "route",
            ChangeKind::Nexthop => "nexthop",
            ChangeKind::Blackhole => "blackhole",
            ChangeKind::Rule => "rule",
        }
    }

    /// Whether entries of this kind exist per peer (route, neighbour, FDB), rather than
    /// once per node (device, address, blackhole).
    pub fn per_peer(self) -> bool {
        matches!(
            self,
            ChangeKind::Neighbour | ChangeKind::Fdb | ChangeKind::Route | ChangeKind::Nexthop
        )
    }
}

/// Why a change was needed (see the module docs); bounded, so it can label a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    Startup,
    NewPeer,
    PeerChanged,
    PeerGone,
    NodeChange,
    DriftRepair,
}

impl Cause {
    pub const ALL: [Cause; 6] = [
        Cause::Startup,
        Cause::NewPeer,
        Cause::PeerChanged,
        Cause::PeerGone,
        Cause::NodeChange,
        Cause::DriftRepair,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Cause::Startup => "startup",
            Cause::NewPeer => "new_peer",
            Cause::PeerChanged => "peer_changed",
            Cause::PeerGone => "peer_gone",
            Cause::NodeChange => "node_change",
            Cause::DriftRepair => "drift_repair",
        }
    }

    /// Whether a change of `kind` can have this cause (peer causes for peer entries,
    /// `node_change` for the node's own).
    pub fn applies_to(self, kind: ChangeKind) -> bool {
        match self {
            Cause::Startup | Cause::DriftRepair => true,
            Cause::NewPeer | Cause::PeerChanged | Cause::PeerGone => kind.per_peer(),
            Cause::NodeChange => !kind.per_peer(),
        }
    }
}

/// Which entry of its kind: by name (a device, a device's address), IP, MAC or prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryId {
    Name,
    Ip(IpAddr),
    Mac(Mac),
    Net(Net),
}

/// The identity of a kernel entry weft manages: a route by prefix, a neighbour by
/// (device, IP), an FDB entry by (device, MAC), a device by name, its address by device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryKey {
    pub kind: ChangeKind,
    pub device: String,
    pub id: EntryId,
}

fn key_hash(kind: ChangeKind, device: &str, id: EntryId) -> u64 {
    let mut h = DefaultHasher::new();
    kind.hash(&mut h);
    device.hash(&mut h);
    id.hash(&mut h);
    h.finish()
}

fn value_hash<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

impl EntryKey {
    fn new(kind: ChangeKind, device: &str, id: EntryId) -> EntryKey {
        EntryKey {
            kind,
            device: device.to_string(),
            id,
        }
    }

    pub fn route(destination: Net) -> EntryKey {
        EntryKey::new(ChangeKind::Route, "", EntryId::Net(destination))
    }

    pub fn neighbour(n: &Neighbour) -> EntryKey {
        EntryKey::new(ChangeKind::Neighbour, &n.device, EntryId::Ip(n.ip))
    }

    pub fn fdb(e: &Fdb) -> EntryKey {
        EntryKey::new(ChangeKind::Fdb, &e.device, EntryId::Mac(e.mac))
    }

    fn hash64(&self) -> u64 {
        key_hash(self.kind, &self.device, self.id)
    }
}

/// The value hash of a desired route, neighbour or FDB entry, as the model stores it.
pub fn route_value(route: &Route) -> u64 {
    value_hash(route)
}

pub fn neighbour_value(n: &Neighbour) -> u64 {
    value_hash(n)
}

pub fn fdb_value(e: &Fdb) -> u64 {
    value_hash(e)
}

/// What one operation does to one entry.
#[derive(Debug, Clone, Copy)]
enum Action {
    /// Installs the entry with this value hash.
    Install(u64),
    /// Removes the entry (with this value hash, when the op says).
    Remove(Option<u64>),
    /// Fixes attributes of the device (MTU, MAC, up) in place.
    Adjust,
}

fn effect(op: &Op) -> (EntryKey, Action) {
    use ChangeKind as K;
    let address = |ip: IpAddr, prefix: u8| value_hash(&(ip, prefix));
    match op {
        Op::CreateLink(link) => (
            EntryKey::new(K::Device, link.name(), EntryId::Name),
            Action::Install(value_hash(link)),
        ),
        Op::ConfigureTunnel(change) => (
            EntryKey::new(K::Device, &change.device, EntryId::Name),
            Action::Adjust,
        ),
        Op::DeleteLink { name, .. } => (
            EntryKey::new(K::Device, name, EntryId::Name),
            Action::Remove(None),
        ),
        Op::SetLink { name, .. } => (
            EntryKey::new(K::Device, name, EntryId::Name),
            Action::Adjust,
        ),
        Op::AddAddress { device, address: a } => (
            EntryKey::new(K::Address, device, EntryId::Name),
            Action::Install(address(a.ip(), a.prefix)),
        ),
        Op::DelAddress { device, ip, prefix } => (
            EntryKey::new(K::Address, device, EntryId::Name),
            Action::Remove(Some(address(*ip, *prefix))),
        ),
        Op::ReplaceNeighbour(n) => (EntryKey::neighbour(n), Action::Install(neighbour_value(n))),
        Op::DelNeighbour(n) => (
            EntryKey::neighbour(n),
            Action::Remove(Some(neighbour_value(n))),
        ),
        Op::ReplaceFdb(e) => (EntryKey::fdb(e), Action::Install(fdb_value(e))),
        Op::DelFdb(e) => (EntryKey::fdb(e), Action::Remove(Some(fdb_value(e)))),
        Op::ReplaceRoute(r) => (
            EntryKey::route(r.destination),
            Action::Install(route_value(r)),
        ),
        Op::DelRoute(r) => (
            EntryKey::route(r.destination),
            Action::Remove(Some(route_value(r))),
        ),
        // Not in the model (which holds routes, with their nexthop ids): a removal the
        // model cannot explain, i.e. drift repair (or startup).
        Op::DelNexthop(id) => (
            EntryKey::new(K::Nexthop, &id.to_string(), EntryId::Name),
            Action::Remove(None),
        ),
        Op::ReplaceBlackhole(n) => (
            EntryKey::new(K::Blackhole, "", EntryId::Net(*n)),
            Action::Install(0),
        ),
        Op::DelBlackhole(n) => (
            EntryKey::new(K::Blackhole, "", EntryId::Net(*n)),
            Action::Remove(Some(0)),
        ),
    }
}

/// Every entry of `desired` as (key hash, value hash), sorted by key, into `out`.
fn desired_hashes(desired: &Desired, out: &mut Vec<(u64, u64)>) {
    use ChangeKind as K;
    out.clear();
    let wanted = desired.routes.len()
        + desired.neighbours.len()
        + desired.fdb.len()
        + desired.blackholes.len()
        + 2 * desired.devices.len();
    // Room for what this pass wants (held or failed removals may add a few); a buffer
    // far larger than needed (after many peers left) is given back.
    if out.capacity() > 2 * wanted + 64 {
        *out = Vec::new();
    }
    out.reserve_exact(wanted);
    for device in &desired.devices {
        let name = device.link.name();
        out.push((
            key_hash(K::Device, name, EntryId::Name),
            value_hash(&device.link),
        ));
        // One address (every vxlan device) is modelled as the op that adds it; a
        // single-device WireGuard backend's two are one value (it makes no targeted passes).
        let addresses: Vec<(IpAddr, u8)> = device
            .addresses
            .iter()
            .map(|a| (a.ip(), a.prefix))
            .collect();
        let value = match addresses.as_slice() {
            [one] => value_hash(one),
            many => value_hash(many),
        };
        out.push((key_hash(K::Address, name, EntryId::Name), value));
    }
    for route in desired.routes.values() {
        out.push((
            key_hash(K::Route, "", EntryId::Net(route.destination)),
            route_value(route),
        ));
    }
    for n in desired.neighbours.values() {
        out.push((
            key_hash(K::Neighbour, &n.device, EntryId::Ip(n.ip)),
            neighbour_value(n),
        ));
    }
    for e in desired.fdb.values() {
        out.push((
            key_hash(K::Fdb, &e.device, EntryId::Mac(e.mac)),
            fdb_value(e),
        ));
    }
    for net in &desired.blackholes {
        out.push((key_hash(K::Blackhole, "", EntryId::Net(*net)), 0));
    }
    out.sort_unstable();
    out.dedup_by_key(|(key, _)| *key);
}

/// What the kernel held after the previous pass, as (key hash, value hash) sorted by key.
#[derive(Debug, Clone, Default)]
struct KernelModel {
    entries: Vec<(u64, u64)>,
}

impl KernelModel {
    fn get(&self, key: u64) -> Option<u64> {
        self.entries
            .binary_search_by_key(&key, |(k, _)| *k)
            .ok()
            .map(|i| self.entries[i].1)
    }

    fn set(&mut self, key: u64, value: u64) {
        match self.entries.binary_search_by_key(&key, |(k, _)| *k) {
            Ok(i) => self.entries[i].1 = value,
            Err(i) => self.entries.insert(i, (key, value)),
        }
    }

    fn remove(&mut self, key: u64) {
        if let Ok(i) = self.entries.binary_search_by_key(&key, |(k, _)| *k) {
            self.entries.remove(i);
        }
    }
}

/// What a pass left on record about one entry (kept while the entry is desired).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub at: SystemTime,
    /// What the pass found in the kernel before changing it ("missing" when absent).
    pub found: String,
    /// `Some` when the change failed (and the entry is still not as desired).
    pub error: Option<String>,
}

/// The state of one desired entry as of the last pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryState {
    /// In the kernel as desired (never repaired by this process).
    Ok,
    /// In the kernel as desired after weft repaired it at `at` (it had found `found`).
    Repaired { at: SystemTime, found: String },
    /// Not as desired: the change failed at `at` with `error`; the kernel had `found`.
    Missing {
        at: SystemTime,
        found: String,
        error: String,
    },
    /// Not programmed yet: no pass has run since it became desired.
    Pending,
}

/// Counts of one pass's changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassCounts {
    /// Applied changes by kind and cause.
    pub applied: BTreeMap<(ChangeKind, Cause), u64>,
    /// Failed changes by kind.
    pub failed: BTreeMap<ChangeKind, u64>,
}

impl PassCounts {
    pub fn repairs(&self) -> u64 {
        self.applied
            .iter()
            .filter(|((_, cause), _)| *cause == Cause::DriftRepair)
            .map(|(_, n)| n)
            .sum()
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Tracker {
    /// `None` until a pass has run.
    model: Option<KernelModel>,
    /// Repairs and failures of entries still desired.
    records: HashMap<EntryKey, Record>,
    /// Bumped whenever the datapath's input (peers, own subnet, options) changes.
    generation: u64,
    /// The generation the model was built from.
    model_generation: u64,
}

impl Tracker {
    /// The datapath's input changed: the next pass rebuilds the model.
    pub fn inputs_changed(&mut self) {
        self.generation += 1;
    }

    /// Explains and records one pass: `ops` were applied (after removals held for a
    /// grace period were taken out: `held`), `failures` lists the failed ones (with
    /// their errors), in order.
    pub fn record_pass(
        &mut self,
        desired: &Desired,
        observed: &Observed,
        ops: &[Op],
        failures: &[(Op, String)],
        held: &[Op],
        now: SystemTime,
    ) -> PassCounts {
        let (counts, to_record, failed_effects) = self.explain(ops, failures, desired);
        if !to_record.is_empty() {
            let found = found_in(observed, to_record.iter().map(|(k, _)| k));
            let found = |key: &EntryKey| found.get(key).cloned();
            self.keep_records(to_record, &found, now);
        }
        let stale = self.model.is_none() || self.model_generation != self.generation;
        if stale || !ops.is_empty() || !held.is_empty() {
            self.rebuild(desired, held, failed_effects);
        }
        counts
    }

    /// Explains and records a targeted pass (the incremental path: no observation, no
    /// full desired state): the model is updated entry by entry, as the ops left the
    /// kernel. `found` says what the kernel had under a key, where that is known (a
    /// notification reported the entry deleted: "missing").
    pub fn record_ops(
        &mut self,
        ops: &[Op],
        failures: &[(Op, String)],
        found: &dyn Fn(&EntryKey) -> Option<String>,
        now: SystemTime,
    ) -> PassCounts {
        let (counts, to_record, _) = self.explain(ops, failures, &Desired::default());
        self.keep_records(to_record, found, now);
        let Some(model) = self.model.as_mut() else {
            return counts;
        };
        let mut failed = failures.iter().map(|(op, _)| op).peekable();
        for op in ops {
            let failed_here = failed.next_if(|f| *f == op).is_some();
            let (key, action) = effect(op);
            let hash = key.hash64();
            match (action, failed_here) {
                (Action::Install(value), false) => model.set(hash, value),
                (Action::Install(_) | Action::Adjust, true) => model.remove(hash),
                (Action::Remove(_), false) => {
                    model.remove(hash);
                    self.records.remove(&key);
                }
                // A failed removal leaves the entry in the kernel; nothing else changes.
                (Action::Remove(_), true) | (Action::Adjust, false) => {}
            }
        }
        counts
    }

    /// Causes and counts of `ops`; the installs to keep a record of (failed or repairs),
    /// and the effects of the failed ones.
    #[allow(clippy::type_complexity)]
    fn explain(
        &mut self,
        ops: &[Op],
        failures: &[(Op, String)],
        desired: &Desired,
    ) -> (
        PassCounts,
        Vec<(EntryKey, Option<String>)>,
        Vec<(EntryKey, Action)>,
    ) {
        let mut counts = PassCounts::default();
        // Failures are a subsequence of ops, in order.
        let mut failed = failures.iter().peekable();
        let mut to_record: Vec<(EntryKey, Option<String>)> = Vec::new();
        let mut failed_effects: Vec<(EntryKey, Action)> = Vec::new();
        for op in ops {
            let error = match failed.peek() {
                Some((failed_op, e)) if failed_op == op => {
                    failed.next();
                    Some(e.clone())
                }
                _ => None,
            };
            let (key, action) = effect(op);
            let cause = self.cause(&key, &action, desired);
            if error.is_some() {
                *counts.failed.entry(key.kind).or_default() += 1;
            } else {
                *counts.applied.entry((key.kind, cause)).or_default() += 1;
            }
            let installs = !matches!(action, Action::Remove(_));
            if installs && (error.is_some() || cause == Cause::DriftRepair) {
                to_record.push((key.clone(), error.clone()));
            } else if installs {
                self.records.remove(&key);
            }
            if error.is_some() {
                failed_effects.push((key, action));
            }
        }
        (counts, to_record, failed_effects)
    }

    fn keep_records(
        &mut self,
        to_record: Vec<(EntryKey, Option<String>)>,
        found: &dyn Fn(&EntryKey) -> Option<String>,
        now: SystemTime,
    ) {
        for (key, error) in to_record {
            let found = found(&key).unwrap_or_else(|| "missing".to_string());
            self.records.insert(
                key,
                Record {
                    at: now,
                    found,
                    error,
                },
            );
        }
    }

    /// The value the model holds for an entry (`None`: the kernel had no such entry of
    /// weft's after the last pass, or no pass has run).
    pub fn model_value(&self, kind: ChangeKind, device: &str, id: EntryId) -> Option<u64> {
        self.model.as_ref()?.get(key_hash(kind, device, id))
    }

    /// An entry the model holds is gone from the kernel without a replacement being
    /// wanted (a leftover kept for a grace period, deleted by someone else).
    pub fn forget(&mut self, kind: ChangeKind, device: &str, id: EntryId) {
        if let Some(model) = self.model.as_mut() {
            model.remove(key_hash(kind, device, id));
        }
    }

    fn cause(&self, key: &EntryKey, action: &Action, desired: &Desired) -> Cause {
        let Some(model) = &self.model else {
            return Cause::Startup;
        };
        let had = model.get(key.hash64());
        let changed = if key.kind.per_peer() {
            Cause::PeerChanged
        } else {
            Cause::NodeChange
        };
        match action {
            Action::Install(value) => match had {
                Some(v) if v == *value => Cause::DriftRepair,
                Some(_) => changed,
                None if key.kind.per_peer() => Cause::NewPeer,
                None => Cause::NodeChange,
            },
            Action::Remove(value) => match (had, value) {
                (Some(v), Some(value)) if v == *value => gone(key.kind),
                // A device that weft had and still wants, but cannot reuse as it is now.
                (Some(v), None) if Some(v) == desired_device(desired, &key.device) => {
                    Cause::DriftRepair
                }
                (Some(_), None) => gone(key.kind),
                _ => Cause::DriftRepair,
            },
            Action::Adjust => match (had, desired_device(desired, &key.device)) {
                (Some(v), Some(want)) if v == want => Cause::DriftRepair,
                _ => Cause::NodeChange,
            },
        }
    }

    fn rebuild(&mut self, desired: &Desired, held: &[Op], failed: Vec<(EntryKey, Action)>) {
        // The old model's buffer is reused: the causes are already decided, and at 5,000
        // peers a second buffer would be 240 KiB more at every rebuild.
        let mut model = self.model.take().unwrap_or_default();
        desired_hashes(desired, &mut model.entries);
        self.records
            .retain(|key, _| model.get(key.hash64()).is_some());
        // Still in the kernel: removals held for the grace period, and failed removals.
        for op in held {
            if let (key, Action::Remove(Some(value))) = effect(op) {
                model.set(key.hash64(), value);
            }
        }
        for (key, action) in failed {
            match action {
                Action::Remove(Some(value)) => model.set(key.hash64(), value),
                Action::Remove(None) => {}
                Action::Install(_) | Action::Adjust => model.remove(key.hash64()),
            }
        }
        self.model = Some(model);
        self.model_generation = self.generation;
    }

    /// The state of a desired entry (`value` as from [`route_value`] and friends).
    pub fn entry_state(&self, key: &EntryKey, value: u64) -> EntryState {
        self.entry_state_of(key.kind, &key.device, key.id, value)
    }

    /// As [`Self::entry_state`], without building a key unless there are records (a
    /// `/debug/state` request asks this for every entry of every peer).
    pub fn entry_state_of(
        &self,
        kind: ChangeKind,
        device: &str,
        id: EntryId,
        value: u64,
    ) -> EntryState {
        let in_kernel = self
            .model
            .as_ref()
            .is_some_and(|m| m.get(key_hash(kind, device, id)) == Some(value));
        let record = if self.records.is_empty() {
            None
        } else {
            self.records.get(&EntryKey::new(kind, device, id))
        };
        match record {
            Some(Record {
                at,
                found,
                error: Some(error),
            }) => EntryState::Missing {
                at: *at,
                found: found.clone(),
                error: error.clone(),
            },
            Some(Record {
                at,
                found,
                error: None,
            }) if in_kernel => EntryState::Repaired {
                at: *at,
                found: found.clone(),
            },
            _ if in_kernel => EntryState::Ok,
            _ => EntryState::Pending,
        }
    }

    /// Whether any pass has run.
    pub fn has_run(&self) -> bool {
        self.model.is_some()
    }

    /// How many entries the model and the records hold (for tests and the benchmark).
    pub fn sizes(&self) -> (usize, usize) {
        (
            self.model.as_ref().map_or(0, |m| m.entries.len()),
            self.records.len(),
        )
    }
}

fn gone(kind: ChangeKind) -> Cause {
    if kind.per_peer() {
        Cause::PeerGone
    } else {
        Cause::NodeChange
    }
}

fn desired_device(desired: &Desired, name: &str) -> Option<u64> {
    desired
        .devices
        .iter()
        .find(|d| d.link.name() == name)
        .map(|d| value_hash(&d.link))
}

/// What `observed` holds under each of `keys`, described for a person.
fn found_in<'a>(
    observed: &Observed,
    keys: impl Iterator<Item = &'a EntryKey>,
) -> HashMap<EntryKey, String> {
    let wanted: HashSet<&EntryKey> = keys.collect();
    let mut found = HashMap::new();
    let mut note = |key: EntryKey, text: String| {
        if wanted.contains(&key) {
            found.insert(key, text);
        }
    };
    for r in &observed.routes {
        note(EntryKey::route(r.route.destination), r.route.to_string());
    }
    for n in &observed.neighbours {
        note(EntryKey::neighbour(n), describe_neighbour(n));
    }
    for e in &observed.fdb {
        note(EntryKey::fdb(e), describe_fdb(e));
    }
    for net in &observed.blackholes {
        note(
            EntryKey::new(ChangeKind::Blackhole, "", EntryId::Net(*net)),
            format!("blackhole {net}"),
        );
    }
    for link in &observed.links {
        let state = if link.up { "up" } else { "down" };
        let vni = link
            .vxlan
            .as_ref()
            .map_or("not vxlan".to_string(), |v| format!("vni {}", v.vni));
        note(
            EntryKey::new(ChangeKind::Device, &link.name, EntryId::Name),
            format!("{} ({vni}, mtu {}, {state})", link.name, link.mtu),
        );
        let addresses: Vec<String> = link
            .addresses
            .iter()
            .map(|(ip, prefix)| format!("{ip}/{prefix}"))
            .collect();
        note(
            EntryKey::new(ChangeKind::Address, &link.name, EntryId::Name),
            if addresses.is_empty() {
                "missing".to_string()
            } else {
                addresses.join(", ")
            },
        );
    }
    found
}

pub fn describe_neighbour(n: &Neighbour) -> String {
    format!("{} lladdr {} dev {}", n.ip, mac::format(&n.mac), n.device)
}

pub fn describe_fdb(e: &Fdb) -> String {
    format!(
        "{} dst {} dev {}",
        mac::format(&e.mac),
        e.destination,
        e.device
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::ObservedRoute;

    fn net(text: &str) -> Net {
        text.parse().unwrap()
    }

    fn route(dst: &str, gw: &str) -> Route {
        Route {
            destination: net(dst),
            gateway: Some(gw.parse().unwrap()),
            device: "flannel.1".into(),
            onlink: true,
            nexthop: None,
        }
    }

    fn neighbour(ip: &str, last: u8) -> Neighbour {
        Neighbour {
            device: "flannel.1".into(),
            ip: ip.parse().unwrap(),
            mac: [2, 0, 0, 0, 0, last],
        }
    }

    fn desired(routes: &[Route], neighbours: &[Neighbour]) -> Desired {
        let mut d = Desired::default();
        for r in routes {
            d.add_route(r.clone());
        }
        for n in neighbours {
            d.add_neighbour(n.clone());
        }
        d
    }

    fn observed(routes: &[Route]) -> Observed {
        Observed {
            routes: routes
                .iter()
                .map(|r| ObservedRoute {
                    route: r.clone(),
                    marked: true,
                })
                .collect(),
            ..Observed::default()
        }
    }

    fn counts(pairs: &[(ChangeKind, Cause, u64)]) -> BTreeMap<(ChangeKind, Cause), u64> {
        pairs.iter().map(|&(k, c, n)| ((k, c), n)).collect()
    }

    const T0: SystemTime = SystemTime::UNIX_EPOCH;

    #[test]
    fn first_pass_is_startup_then_a_deleted_route_is_one_drift_repair() {
        let a = route("10.244.2.0/24", "10.244.2.0");
        let want = desired(std::slice::from_ref(&a), &[]);
        let mut t = Tracker::default();
        let ops = vec![Op::ReplaceRoute(a.clone())];
        let first = t.record_pass(&want, &Observed::default(), &ops, &[], &[], T0);
        assert_eq!(
            first.applied,
            counts(&[(ChangeKind::Route, Cause::Startup, 1)])
        );
        let key = EntryKey::route(a.destination);
        assert_eq!(t.entry_state(&key, route_value(&a)), EntryState::Ok);
        // A steady pass: nothing to do, nothing counted, the model is not rebuilt.
        let steady = t.record_pass(
            &want,
            &observed(std::slice::from_ref(&a)),
            &[],
            &[],
            &[],
            T0,
        );
        assert_eq!(steady, PassCounts::default());
        assert_eq!(steady.repairs(), 0);
        // `ip route del`: the next pass re-adds it: exactly one repair.
        let repair = t.record_pass(&want, &Observed::default(), &ops, &[], &[], T0);
        assert_eq!(
            repair.applied,
            counts(&[(ChangeKind::Route, Cause::DriftRepair, 1)])
        );
        assert_eq!(repair.repairs(), 1);
        assert_eq!(
            t.entry_state(&key, route_value(&a)),
            EntryState::Repaired {
                at: T0,
                found: "missing".into()
            }
        );
    }

    #[test]
    fn new_changed_and_gone_peers_are_told_apart_from_drift() {
        let a = route("10.244.2.0/24", "10.244.2.0");
        let b = route("10.244.3.0/24", "10.244.3.0");
        let na = neighbour("10.244.2.0", 2);
        let mut t = Tracker::default();
        let one = desired(std::slice::from_ref(&a), std::slice::from_ref(&na));
        let ops = vec![
            Op::ReplaceNeighbour(na.clone()),
            Op::ReplaceRoute(a.clone()),
        ];
        t.record_pass(&one, &Observed::default(), &ops, &[], &[], T0);

        // Peer b arrives; a's VTEP MAC changes.
        t.inputs_changed();
        let na2 = neighbour("10.244.2.0", 9);
        let two = desired(&[a.clone(), b.clone()], std::slice::from_ref(&na2));
        let ops = vec![
            Op::ReplaceNeighbour(na2.clone()),
            Op::ReplaceRoute(b.clone()),
        ];
        let pass = t.record_pass(
            &two,
            &observed(std::slice::from_ref(&a)),
            &ops,
            &[],
            &[],
            T0,
        );
        assert_eq!(
            pass.applied,
            counts(&[
                (ChangeKind::Neighbour, Cause::PeerChanged, 1),
                (ChangeKind::Route, Cause::NewPeer, 1),
            ])
        );

        // Peer a leaves; a route weft never installed shows up through its device.
        t.inputs_changed();
        let three = desired(std::slice::from_ref(&b), &[]);
        let stray = route("10.244.9.0/24", "10.244.9.0");
        let ops = vec![
            Op::DelRoute(a.clone()),
            Op::DelRoute(stray.clone()),
            Op::DelNeighbour(na2.clone()),
        ];
        let pass = t.record_pass(&three, &observed(&[a, b, stray]), &ops, &[], &[], T0);
        assert_eq!(
            pass.applied,
            counts(&[
                (ChangeKind::Neighbour, Cause::PeerGone, 1),
                (ChangeKind::Route, Cause::PeerGone, 1),
                (ChangeKind::Route, Cause::DriftRepair, 1),
            ])
        );
    }

    #[test]
    fn a_failed_change_leaves_the_entry_missing_with_the_error_until_it_works() {
        let a = route("10.244.2.0/24", "10.244.2.0");
        let want = desired(std::slice::from_ref(&a), &[]);
        let key = EntryKey::route(a.destination);
        let mut t = Tracker::default();
        let ops = vec![Op::ReplaceRoute(a.clone())];
        let failure = vec![(ops[0].clone(), "Network is unreachable".to_string())];
        let pass = t.record_pass(&want, &Observed::default(), &ops, &failure, &[], T0);
        assert_eq!(pass.failed, BTreeMap::from([(ChangeKind::Route, 1)]));
        assert!(pass.applied.is_empty());
        assert_eq!(
            t.entry_state(&key, route_value(&a)),
            EntryState::Missing {
                at: T0,
                found: "missing".into(),
                error: "Network is unreachable".into()
            }
        );
        // The retry is not a repair: the entry was never in the kernel, so it is counted
        // as what installs an entry the kernel never had.
        let pass = t.record_pass(&want, &Observed::default(), &ops, &[], &[], T0);
        assert_eq!(
            pass.applied,
            counts(&[(ChangeKind::Route, Cause::NewPeer, 1)])
        );
        assert_eq!(t.entry_state(&key, route_value(&a)), EntryState::Ok);
    }

    #[test]
    fn entries_not_programmed_yet_are_pending_and_held_removals_stay_in_the_model() {
        let a = route("10.244.2.0/24", "10.244.2.0");
        let b = route("10.244.3.0/24", "10.244.3.0");
        let mut t = Tracker::default();
        let both = desired(&[a.clone(), b.clone()], &[]);
        let ops = vec![Op::ReplaceRoute(a.clone()), Op::ReplaceRoute(b.clone())];
        t.record_pass(&both, &Observed::default(), &ops, &[], &[], T0);
        let c = route("10.244.4.0/24", "10.244.4.0");
        assert_eq!(
            t.entry_state(&EntryKey::route(c.destination), route_value(&c)),
            EntryState::Pending
        );
        // b is gone but its removal is held (a datastore grace period), then swept.
        t.inputs_changed();
        let only_a = desired(std::slice::from_ref(&a), &[]);
        let held = vec![Op::DelRoute(b.clone())];
        let pass = t.record_pass(
            &only_a,
            &observed(&[a.clone(), b.clone()]),
            &[],
            &[],
            &held,
            T0,
        );
        assert_eq!(pass, PassCounts::default());
        let sweep = vec![Op::DelRoute(b.clone())];
        let pass = t.record_pass(&only_a, &observed(&[a, b]), &sweep, &[], &[], T0);
        assert_eq!(
            pass.applied,
            counts(&[(ChangeKind::Route, Cause::PeerGone, 1)])
        );
        assert_eq!(t.sizes(), (1, 0));
    }

    #[test]
    fn a_repair_records_what_was_found_and_records_of_departed_entries_are_dropped() {
        let a = route("10.244.2.0/24", "10.244.2.0");
        let mut t = Tracker::default();
        let want = desired(std::slice::from_ref(&a), &[]);
        let ops = vec![Op::ReplaceRoute(a.clone())];
        t.record_pass(&want, &Observed::default(), &ops, &[], &[], T0);
        // An admin pointed the route elsewhere.
        let wrong = route("10.244.2.0/24", "10.244.7.0");
        t.record_pass(&want, &observed(&[wrong]), &ops, &[], &[], T0);
        match t.entry_state(&EntryKey::route(a.destination), route_value(&a)) {
            EntryState::Repaired { found, .. } => {
                assert_eq!(found, "10.244.2.0/24 via 10.244.7.0 dev flannel.1 onlink")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.sizes(), (1, 1));
        t.inputs_changed();
        t.record_pass(
            &Desired::default(),
            &observed(std::slice::from_ref(&a)),
            &[Op::DelRoute(a)],
            &[],
            &[],
            T0,
        );
        assert_eq!(t.sizes(), (0, 0));
    }

    #[test]
    fn every_cause_given_fits_its_kind() {
        for kind in ChangeKind::ALL {
            assert!(Cause::Startup.applies_to(kind) && Cause::DriftRepair.applies_to(kind));
            assert_eq!(Cause::NewPeer.applies_to(kind), kind.per_peer());
            assert_eq!(Cause::NodeChange.applies_to(kind), !kind.per_peer());
        }
    }
}
