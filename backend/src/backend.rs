//! What a datapath backend gives the daemon: the attributes it publishes in the lease,
//! the MTU pods get, and the desired kernel state for a set of peers. Backends are pure;
//! the daemon's reconcile loop applies their desired state through the kernel boundary.

use crate::desired::Desired;
use crate::hostgw;
use crate::mac::Mac;
use crate::nexthop::NexthopPlan;
use crate::vxlan::{self, VxlanConfig};
use crate::wireguard::WireguardBackend;
use std::net::{Ipv4Addr, Ipv6Addr};
use weft_lease::family::Family;
use weft_lease::{Lease, LeaseAttrs, SubnetKey};

pub use crate::desired::{SkipKind, Skipped};

/// A datapath backend (flannel's backend types; weft implements vxlan and alloc).
pub trait Backend: std::fmt::Debug + Send {
    /// Records this node's subnets once the lease is acquired (or re-acquired).
    fn set_own(&mut self, own: SubnetKey);
    /// The attributes this node publishes in its lease.
    fn lease_attrs(&self, public_v4: Option<Ipv4Addr>, public_v6: Option<Ipv6Addr>) -> LeaseAttrs;
    /// The MTU written to subnet.env as FLANNEL_MTU.
    fn pod_mtu(&self) -> u32;
    /// The kernel state wanted for this node and `peers` (all remote leases).
    fn desired_state(&self, peers: &mut dyn Iterator<Item = &Lease>) -> (Desired, Vec<Skipped>);
    /// Whether a device of this name belongs to the backend.
    fn owns_device(&self, name: &str) -> bool;
    /// Whether peers become kernel state at all (and so must pass admission).
    fn programs_peers(&self) -> bool {
        true
    }
    /// Whether a lease batch may be applied by a targeted pass (the peers' own entries
    /// only, see `reconcile::incremental`). A backend whose peers share one object
    /// the drift model does not track (a WireGuard device's peer list) reconciles
    /// every change with a full pass.
    fn targeted_passes(&self) -> bool {
        true
    }
    /// The wireguard backend, for its status (handshakes, bytes).
    fn as_wireguard(&self) -> Option<&WireguardBackend> {
        None
    }
    /// This node's VTEP MACs, which no peer may claim.
    fn own_macs(&self) -> Vec<Mac> {
        Vec::new()
    }
    /// The VTEP MACs a peer publishes, by family, as this backend reads them.
    fn peer_macs(&self, _peer: &Lease) -> Vec<(Family, Mac)> {
        Vec::new()
    }
    /// Which nexthop objects the peer routes use from now on (see [`crate::nexthop`]).
    fn set_nexthops(&mut self, _plan: NexthopPlan) {}
    /// The external interface changed (re-addressed, or another one chosen): the backend
    /// takes its new index, name, MTU, addresses and connected networks.
    fn follow_external(&mut self, _external: &ExternalSpec) {}
    /// The external (underlay) interface whose MTU the backend's MTUs follow.
    fn underlay(&self) -> Option<&str> {
        None
    }
    /// The underlay's MTU is now `mtu`: the MTUs derived from it are recomputed. `None`
    /// when it was already `mtu`.
    fn follow_underlay_mtu(&mut self, _mtu: u32) -> Option<MtuChange> {
        None
    }
}

/// Sets the backend's copy of the underlay's MTU (`external`) to `mtu` and says what that
/// changed, the pod MTU read before and after.
fn follow_mtu<B: Backend>(
    backend: &mut B,
    external: impl Fn(&mut B) -> &mut u32,
    mtu: u32,
) -> Option<MtuChange> {
    let underlay_before = *external(backend);
    if underlay_before == mtu {
        return None;
    }
    let pod_before = backend.pod_mtu();
    *external(backend) = mtu;
    Some(MtuChange {
        underlay_before,
        underlay_after: mtu,
        pod_before,
        pod_after: backend.pod_mtu(),
    })
}

/// The external interface as the backends use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalSpec {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// The interface's addresses (a VXLAN device's `local`).
    pub local_v4: Option<std::net::IpAddr>,
    pub local_v6: Option<std::net::IpAddr>,
    /// The networks connected to it.
    pub connected: Vec<weft_lease::family::Net>,
}

/// An underlay MTU change and what it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtuChange {
    pub underlay_before: u32,
    pub underlay_after: u32,
    /// FLANNEL_MTU (and the VXLAN devices' MTU) before and after.
    pub pod_before: u32,
    pub pod_after: u32,
}

/// flannel's `alloc`: a lease and subnet.env, no datapath.
#[derive(Debug, Clone)]
pub struct AllocBackend {
    pub mtu: u32,
}

impl Backend for AllocBackend {
    fn set_own(&mut self, _own: SubnetKey) {}

    fn lease_attrs(&self, public_v4: Option<Ipv4Addr>, public_v6: Option<Ipv6Addr>) -> LeaseAttrs {
        // flannel's alloc backend sets no BackendType and no BackendData.
        LeaseAttrs {
            public_ip: public_v4.unwrap_or(Ipv4Addr::UNSPECIFIED),
            public_ipv6: public_v6,
            ..LeaseAttrs::default()
        }
    }

    fn pod_mtu(&self) -> u32 {
        self.mtu
    }

    fn desired_state(&self, _peers: &mut dyn Iterator<Item = &Lease>) -> (Desired, Vec<Skipped>) {
        (Desired::default(), Vec::new())
    }

    fn owns_device(&self, _name: &str) -> bool {
        false
    }

    fn programs_peers(&self) -> bool {
        false
    }
}

/// The vxlan backend (see [`vxlan`]).
#[derive(Debug, Clone)]
pub struct VxlanBackend {
    pub config: VxlanConfig,
    pub node: vxlan::Node,
    pub nexthops: NexthopPlan,
}

impl Backend for VxlanBackend {
    fn set_own(&mut self, own: SubnetKey) {
        self.node.own = own;
    }

    fn lease_attrs(&self, public_v4: Option<Ipv4Addr>, public_v6: Option<Ipv6Addr>) -> LeaseAttrs {
        self.node.lease_attrs(&self.config, public_v4, public_v6)
    }

    fn pod_mtu(&self) -> u32 {
        self.node.pod_mtu(&self.config)
    }

    fn desired_state(&self, peers: &mut dyn Iterator<Item = &Lease>) -> (Desired, Vec<Skipped>) {
        let (mut desired, skipped) = vxlan::desired_state(&self.config, &self.node, peers);
        self.nexthops.assign(&mut desired);
        (desired, skipped)
    }

    fn set_nexthops(&mut self, plan: NexthopPlan) {
        self.nexthops = plan;
    }

    fn owns_device(&self, name: &str) -> bool {
        name == self.config.device_name(Family::V4) || name == self.config.device_name(Family::V6)
    }

    fn own_macs(&self) -> Vec<Mac> {
        vec![self.node.mac_v4, self.node.mac_v6]
    }

    fn peer_macs(&self, peer: &Lease) -> Vec<(Family, Mac)> {
        let v4 = vxlan::vtep_mac(peer.attrs.backend_data.as_ref()).map(|m| (Family::V4, m));
        let v6 = vxlan::vtep_mac(peer.attrs.backend_v6_data.as_ref()).map(|m| (Family::V6, m));
        v4.into_iter().chain(v6).collect()
    }

    fn follow_external(&mut self, external: &ExternalSpec) {
        let node = &mut self.node;
        node.external_index = external.index;
        node.external_name.clone_from(&external.name);
        node.external_mtu = external.mtu;
        node.local_v4 = external.local_v4;
        node.local_v6 = external.local_v6;
        node.connected.clone_from(&external.connected);
    }

    fn underlay(&self) -> Option<&str> {
        Some(&self.node.external_name)
    }

    fn follow_underlay_mtu(&mut self, mtu: u32) -> Option<MtuChange> {
        follow_mtu(self, |b| &mut b.node.external_mtu, mtu)
    }
}

/// The host-gw backend (see [`hostgw`]).
#[derive(Debug, Clone)]
pub struct HostGwBackend {
    pub node: hostgw::Node,
    pub nexthops: NexthopPlan,
}

impl Backend for HostGwBackend {
    fn set_own(&mut self, own: SubnetKey) {
        self.node.own = own;
    }

    fn lease_attrs(&self, public_v4: Option<Ipv4Addr>, public_v6: Option<Ipv6Addr>) -> LeaseAttrs {
        self.node.lease_attrs(public_v4, public_v6)
    }

    fn pod_mtu(&self) -> u32 {
        self.node.external_mtu
    }

    fn desired_state(&self, peers: &mut dyn Iterator<Item = &Lease>) -> (Desired, Vec<Skipped>) {
        let (mut desired, skipped) = hostgw::desired_state(&self.node, peers);
        self.nexthops.assign(&mut desired);
        (desired, skipped)
    }

    fn set_nexthops(&mut self, plan: NexthopPlan) {
        self.nexthops = plan;
    }

    fn owns_device(&self, _name: &str) -> bool {
        false
    }

    fn follow_external(&mut self, external: &ExternalSpec) {
        let node = &mut self.node;
        node.external_name.clone_from(&external.name);
        node.external_mtu = external.mtu;
        node.connected.clone_from(&external.connected);
    }

    fn underlay(&self) -> Option<&str> {
        Some(&self.node.external_name)
    }

    fn follow_underlay_mtu(&mut self, mtu: u32) -> Option<MtuChange> {
        follow_mtu(self, |b| &mut b.node.external_mtu, mtu)
    }
}

impl Backend for WireguardBackend {
    fn set_own(&mut self, own: SubnetKey) {
        self.node.own = own;
    }

    fn lease_attrs(&self, public_v4: Option<Ipv4Addr>, public_v6: Option<Ipv6Addr>) -> LeaseAttrs {
        WireguardBackend::lease_attrs(self, public_v4, public_v6)
    }

    fn pod_mtu(&self) -> u32 {
        WireguardBackend::pod_mtu(self)
    }

    fn desired_state(&self, peers: &mut dyn Iterator<Item = &Lease>) -> (Desired, Vec<Skipped>) {
        WireguardBackend::desired_state(self, peers)
    }

    fn owns_device(&self, name: &str) -> bool {
        crate::desired::is_wireguard_device_name(name)
    }

    fn targeted_passes(&self) -> bool {
        false
    }

    fn as_wireguard(&self) -> Option<&WireguardBackend> {
        Some(self)
    }

    fn follow_external(&mut self, external: &ExternalSpec) {
        self.node.external_name.clone_from(&external.name);
        self.node.external_mtu = external.mtu;
    }

    fn underlay(&self) -> Option<&str> {
        Some(&self.node.external_name)
    }

    fn follow_underlay_mtu(&mut self, mtu: u32) -> Option<MtuChange> {
        follow_mtu(self, |b| &mut b.node.external_mtu, mtu)
    }
}
