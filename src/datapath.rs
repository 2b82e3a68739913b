//! The datapath of this node: what the backend programs and how it converges.
//!
//! The datapath keeps the full set of peer leases and, on every trigger (a lease batch, a
//! kernel notification about one of weft's objects, a timer), runs one reconcile pass:
//! the backend's desired state, the kernel's observed state, the diff, applied. `alloc`
//! wants nothing, so its passes only sweep routes weft left marked as its own.
//!
//! Peer leases are untrusted: each pass admits them first ([`Admission`]), so a hostile
//! or broken lease never reaches the backend, and desired routes whose prefix a foreign
//! route occupies are withdrawn rather than installed over it. Both are logged once.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::time::Instant;
use tracing::{debug, info, warn};
use weft_backend::admission::{Admission, Identity, RejectKind};
use weft_backend::backend::Backend;
use weft_backend::diff;
use weft_backend::kernel::{Kernel, KernelEvent};
use weft_subnet::family::Net;
use weft_subnet::{Lease, SubnetKey};

/// The outcome of one reconcile pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub changes: usize,
    pub failures: Vec<String>,
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
pub struct Datapath {
    pub backend: Box<dyn Backend>,
    kernel: Kernel,
    peers: BTreeMap<SubnetKey, Lease>,
    surroundings: Surroundings,
    own: Option<SubnetKey>,
    admission: Admission,
    /// Rejected or skipped peers already reported, so each reason is logged once.
    reported: HashSet<(SubnetKey, String)>,
    /// Foreign-route conflicts already reported.
    reported_conflicts: HashSet<(Net, String)>,
    /// Peers rejected by admission since start, by rule (each peer and reason once).
    pub rejections: BTreeMap<RejectKind, u64>,
    /// Indices of weft's devices as last observed, to filter kernel notifications.
    device_indices: HashSet<u32>,
    /// Until then, passes add and repair but remove no peer entries (see [`Self::hold_removals`]).
    removals_held_until: Option<Instant>,
    /// `--ip-blackhole-route`: a blackhole route for this node's own subnets.
    blackhole_own: bool,
}

impl Datapath {
    pub fn new(backend: Box<dyn Backend>, kernel: Kernel, surroundings: Surroundings) -> Datapath {
        Datapath {
            backend,
            kernel,
            peers: BTreeMap::new(),
            surroundings,
            own: None,
            admission: Admission::default(),
            reported: HashSet::new(),
            reported_conflicts: HashSet::new(),
            rejections: BTreeMap::new(),
            device_indices: HashSet::new(),
            removals_held_until: None,
            blackhole_own: false,
        }
    }

    /// Keeps a blackhole route for this node's own subnets (`--ip-blackhole-route`), so
    /// traffic to pod addresses that do not exist (yet) is dropped here rather than sent
    /// out by the default route.
    pub fn set_blackhole_own(&mut self, enabled: bool) {
        self.blackhole_own = enabled;
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

    /// The peers the backend may program, with every rejection logged once.
    fn admitted_peers(&mut self) -> Vec<Lease> {
        let (Some(own), true) = (self.own, self.backend.programs_peers()) else {
            return self.peers.values().cloned().collect();
        };
        let identity = self.identity(own);
        let backend = &self.backend;
        let macs_of = |lease: &Lease| backend.peer_macs(lease);
        let (admitted, rejected) = self
            .admission
            .admit(&identity, self.peers.values(), &macs_of);
        let admitted: Vec<Lease> = admitted.into_iter().cloned().collect();
        for rejection in rejected {
            if self
                .reported
                .insert((rejection.key, rejection.reason.clone()))
            {
                *self.rejections.entry(rejection.kind).or_default() += 1;
                warn!(
                    subnet = %rejection.key,
                    rule = rejection.kind.label(),
                    "rejecting peer lease: {}",
                    rejection.reason
                );
            }
        }
        admitted
    }

    /// Replaces the peer set (the full set of remote leases).
    pub fn set_peers<'a>(&mut self, peers: impl IntoIterator<Item = &'a Lease>) {
        self.peers = peers.into_iter().map(|l| (l.key, l.clone())).collect();
    }

    /// One reconcile pass: observe, diff, apply (every op is tried; failures are
    /// returned and retried by the next pass).
    pub async fn converge(&mut self) -> Result<Pass, weft_backend::kernel::KernelError> {
        let started = Instant::now();
        let desired = self.desired();
        let observed = self.kernel.observe(&desired).await?;
        let mut desired = desired;
        self.withdraw_foreign(&mut desired, &observed);
        self.device_indices = observed.links.iter().map(|l| l.index).collect();
        let mut ops = diff::diff(&desired, &observed);
        self.apply_hold(&mut ops);
        for op in &ops {
            match op {
                diff::Op::DeleteLink { .. } | diff::Op::CreateLink(_) => info!("datapath: {op}"),
                _ => tracing::trace!("datapath: {op}"),
            }
        }
        let observed_in = started.elapsed();
        let failures = self.kernel.apply(&ops).await;
        let pass = Pass {
            changes: ops.len() - failures.len(),
            failures: failures
                .iter()
                .map(|(op, e)| format!("{op}: {e}"))
                .collect(),
        };
        for failure in &pass.failures {
            warn!("datapath change failed (retried on the next pass): {failure}");
        }
        debug!(
            changes = ops.len(),
            peers = self.peers.len(),
            observe_us = observed_in.as_micros() as u64,
            elapsed_us = started.elapsed().as_micros() as u64,
            "reconcile pass"
        );
        self.refresh_device_indices(&desired, &ops).await;
        if !ops.is_empty() {
            info!(
                changes = pass.changes,
                failed = pass.failures.len(),
                peers = self.peers.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "datapath converged"
            );
        }
        Ok(pass)
    }

    /// The backend's desired state for the admitted peers; skipped peers logged once.
    fn desired(&mut self) -> weft_backend::desired::Desired {
        let admitted = self.admitted_peers();
        let (mut desired, skipped) = self.backend.desired_state(&mut admitted.iter());
        if let (true, Some(own)) = (self.blackhole_own, self.own) {
            desired
                .blackholes
                .extend([own.ipv4, own.ipv6].into_iter().flatten());
        }
        for skip in skipped {
            if self.reported.insert((skip.key, skip.reason.clone())) {
                warn!(subnet = %skip.key, "ignoring peer lease: {}", skip.reason);
            }
        }
        // Forget peers that are gone, so the memory is bounded and a returning peer with
        // the same problem is reported again.
        let peers = &self.peers;
        self.reported.retain(|(key, _)| peers.contains_key(key));
        desired
    }

    /// Drops desired routes that a foreign route occupies; each conflict logged once
    /// while it lasts.
    fn withdraw_foreign(
        &mut self,
        desired: &mut weft_backend::desired::Desired,
        observed: &weft_backend::desired::Observed,
    ) {
        let conflicts = desired.withdraw_foreign(observed);
        let current: HashSet<(Net, String)> = conflicts
            .into_iter()
            .map(|(route, foreign)| (route.destination, foreign))
            .collect();
        for (destination, foreign) in current.difference(&self.reported_conflicts) {
            warn!(
                subnet = %destination,
                "not installing the route for peer subnet {destination}: the foreign route \
                 `{foreign}` is there, and weft never replaces a route it does not own"
            );
        }
        self.reported_conflicts = current;
    }

    /// During a datastore grace period, removes the removals from `ops`.
    fn apply_hold(&mut self, ops: &mut Vec<diff::Op>) {
        let Some(until) = self.removals_held_until else {
            return;
        };
        if Instant::now() >= until {
            self.removals_held_until = None;
            info!("datastore grace period over: entries of peers still missing are removed");
            return;
        }
        let before = ops.len();
        ops.retain(|op| {
            !matches!(
                op,
                diff::Op::DelRoute(_) | diff::Op::DelNeighbour(_) | diff::Op::DelFdb(_)
            )
        });
        if ops.len() < before {
            info!(
                held = before - ops.len(),
                "keeping entries of peers missing from the datastore until the grace period ends"
            );
        }
    }

    /// A (re)created device has a new index; read just the links, not a full
    /// observation, so a pass at thousands of peers is not dumped twice.
    async fn refresh_device_indices(
        &mut self,
        desired: &weft_backend::desired::Desired,
        ops: &[diff::Op],
    ) {
        let devices_changed = ops
            .iter()
            .any(|op| matches!(op, diff::Op::CreateLink(_) | diff::Op::DeleteLink { .. }));
        if !devices_changed {
            return;
        }
        let mut indices = HashSet::new();
        for name in desired.device_names() {
            if let Ok(Some((index, _))) = self.kernel.link(name).await {
                indices.insert(index);
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

/// Whether `event` concerns weft's objects: its devices (by index, or by name for a
/// device that is new or re-created), routes through them or marked with weft's protocol.
/// Additions weft makes itself are not interesting; deletions and foreign changes are.
fn is_relevant(
    event: &KernelEvent,
    device_indices: &HashSet<u32>,
    owns_device: impl Fn(&str) -> bool,
) -> bool {
    let ours = |index: &u32| device_indices.contains(index);
    match event {
        KernelEvent::Link { index, name, .. } => {
            ours(index) || name.as_deref().is_some_and(owns_device)
        }
        KernelEvent::Address { index } => ours(index),
        KernelEvent::Route {
            oif,
            protocol,
            deleted,
        } => {
            let on_ours = oif.is_some_and(|i| ours(&i));
            let by_us = *protocol == weft_backend::ROUTE_PROTOCOL;
            if *deleted {
                on_ours || by_us
            } else {
                on_ours && !by_us
            }
        }
        KernelEvent::Neighbour { ifindex, deleted } => *deleted && ours(ifindex),
        KernelEvent::Overrun => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_backend::ROUTE_PROTOCOL;

    fn relevant(event: KernelEvent) -> bool {
        let devices = HashSet::from([7]);
        is_relevant(&event, &devices, |name| name == "flannel.1")
    }

    fn route(oif: Option<u32>, protocol: u8, deleted: bool) -> KernelEvent {
        KernelEvent::Route {
            oif,
            protocol,
            deleted,
        }
    }

    #[test]
    fn changes_to_weft_devices_start_a_pass() {
        let link = |index, name: Option<&str>| KernelEvent::Link {
            index,
            name: name.map(String::from),
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
    fn only_deleted_entries_on_weft_devices_matter() {
        let neigh = |ifindex, deleted| KernelEvent::Neighbour { ifindex, deleted };
        assert!(relevant(neigh(7, true)));
        assert!(!relevant(neigh(7, false)), "weft's own replace");
        assert!(!relevant(neigh(2, true)), "another device's entry");
    }
}
