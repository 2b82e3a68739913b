//! The kernel state weft wants and the kernel state it observed, as plain values.
//!
//! Entries refer to devices by name, not index: a device deleted by an admin comes back
//! with a new index, and the same desired state still describes it.

use crate::mac::Mac;
use crate::tunnel::{Tunnel, TunnelState};
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use weft_lease::family::Net;
use weft_lease::{Lease, SubnetKey};

/// The name of the device an entry is on. Every route, neighbour and FDB entry names its
/// device, and at thousands of peers a `String` each was a heap allocation per entry (and
/// two per map entry, keys included): clones share one allocation. A thin pointer (8
/// bytes, not a `str`'s 16): it is in every entry, map key and op, and a first pass at
/// 15,000 peers holds 45,000 ops. Compares, orders, hashes and prints as the plain name.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceName(Arc<String>);

impl DeviceName {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl std::ops::Deref for DeviceName {
    type Target = str;

    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl Borrow<str> for DeviceName {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

impl AsRef<str> for DeviceName {
    fn as_ref(&self) -> &str {
        self.0.as_str()
    }
}

impl From<&str> for DeviceName {
    fn from(name: &str) -> DeviceName {
        DeviceName(Arc::new(name.to_string()))
    }
}

impl From<String> for DeviceName {
    fn from(name: String) -> DeviceName {
        DeviceName(Arc::new(name))
    }
}

impl From<&String> for DeviceName {
    fn from(name: &String) -> DeviceName {
        DeviceName(Arc::new(name.clone()))
    }
}

impl PartialEq<str> for DeviceName {
    fn eq(&self, other: &str) -> bool {
        self.0.as_str() == other
    }
}

impl PartialEq<&str> for DeviceName {
    fn eq(&self, other: &&str) -> bool {
        self.0.as_str() == *other
    }
}

impl PartialEq<String> for DeviceName {
    fn eq(&self, other: &String) -> bool {
        *self.0 == *other
    }
}

impl std::fmt::Debug for DeviceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.0.as_str(), f)
    }
}

impl std::fmt::Display for DeviceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A vxlan device as weft wants it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VxlanLink {
    pub name: String,
    pub vni: u32,
    /// UDP port; 0 means the kernel default (8472).
    pub port: u16,
    pub local: IpAddr,
    pub underlay_index: u32,
    pub learning: bool,
    pub gbp: bool,
    pub mtu: u32,
    pub mac: Mac,
}

/// A WireGuard device as weft wants it: its MTU and its configuration (keys, port,
/// peers), which the kernel executor sets over WireGuard's own interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WireguardLink {
    pub name: String,
    pub mtu: u32,
    pub tunnel: Tunnel,
}

/// A device of one of weft's kinds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Link {
    Vxlan(VxlanLink),
    Wireguard(WireguardLink),
}

impl Link {
    pub fn name(&self) -> &str {
        match self {
            Link::Vxlan(l) => &l.name,
            Link::Wireguard(l) => &l.name,
        }
    }

    pub fn mtu(&self) -> u32 {
        match self {
            Link::Vxlan(l) => l.mtu,
            Link::Wireguard(l) => l.mtu,
        }
    }

    /// The MAC weft sets; `None` for a device without one (WireGuard is layer 3).
    pub fn mac(&self) -> Option<Mac> {
        match self {
            Link::Vxlan(l) => Some(l.mac),
            Link::Wireguard(_) => None,
        }
    }
}

/// A device with its addresses (the own subnet's network address, /32 or /128; a
/// single-device WireGuard backend holds one of each family).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub link: Link,
    pub addresses: Vec<Net>,
}

/// A route in the main table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub destination: Net,
    /// `None`: a route straight onto the device (`scope link`), as the WireGuard
    /// backend's route for the whole network.
    pub gateway: Option<IpAddr>,
    pub device: DeviceName,
    pub onlink: bool,
    /// The nexthop object (`nhid`) that carries the gateway, device and onlink flag
    /// (see [`crate::nexthop`]); `None`: a plain gateway route.
    pub nexthop: Option<NonZeroU32>,
}

/// `ip route`-style: `10.244.5.0/24 nhid 268435461 via 10.244.5.0 dev flannel.1 onlink`
/// (the log's ops and the state view's entries).
impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.destination)?;
        if let Some(id) = self.nexthop {
            write!(f, " nhid {id}")?;
        }
        match self.gateway {
            Some(gateway) => write!(f, " via {gateway} dev {}", self.device)?,
            None => write!(f, " dev {} scope link", self.device)?,
        }
        if self.onlink {
            f.write_str(" onlink")?;
        }
        Ok(())
    }
}

/// A permanent neighbour (ARP/ND) entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    pub device: DeviceName,
    pub ip: IpAddr,
    pub mac: Mac,
}

/// A permanent FDB entry (`bridge fdb ... self permanent`): VTEP MAC to remote node IP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fdb {
    pub device: DeviceName,
    pub mac: Mac,
    pub destination: IpAddr,
}

/// Everything weft wants in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub devices: Vec<Device>,
    pub routes: BTreeMap<Net, Route>,
    pub neighbours: BTreeMap<(DeviceName, IpAddr), Neighbour>,
    pub fdb: BTreeMap<(DeviceName, Mac), Fdb>,
    /// Blackhole routes (`--ip-blackhole-route`: the node's own subnets), installed at
    /// the lowest preference so they never shadow a real route to the same prefix.
    pub blackholes: BTreeSet<Net>,
}

/// The metric of weft's blackhole routes: the lowest preference, so the CNI bridge's
/// connected route (or anything else) to the same prefix always wins while it exists.
pub const BLACKHOLE_METRIC: u32 = u32::MAX;

/// The wireguard backend's IPv4 device (and the only one in its single-device modes).
pub const WIREGUARD_DEVICE: &str = "flannel-wg";
/// The wireguard backend's IPv6 device in its `separate` mode.
pub const WIREGUARD_DEVICE_V6: &str = "flannel-wg-v6";

/// Whether `name` is one of the wireguard backend's device names.
pub fn is_wireguard_device_name(name: &str) -> bool {
    name == WIREGUARD_DEVICE || name == WIREGUARD_DEVICE_V6
}

/// Whether `name` is a device name weft's vxlan backend uses (`flannel.<VNI>`,
/// `flannel-v6.<VNI>`).
pub fn is_vxlan_device_name(name: &str) -> bool {
    let vni = name
        .strip_prefix("flannel-v6.")
        .or_else(|| name.strip_prefix("flannel."));
    vni.is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
}

impl Desired {
    pub fn device_names(&self) -> impl Iterator<Item = &str> {
        self.devices.iter().map(|d| d.link.name())
    }

    pub fn add_route(&mut self, route: Route) {
        self.routes.insert(route.destination, route);
    }

    pub fn add_neighbour(&mut self, neighbour: Neighbour) {
        self.neighbours
            .insert((neighbour.device.clone(), neighbour.ip), neighbour);
    }

    pub fn add_fdb(&mut self, fdb: Fdb) {
        self.fdb.insert((fdb.device.clone(), fdb.mac), fdb);
    }

    /// Drops the desired routes whose prefix a foreign route occupies, and returns them
    /// with that route: installing ours would replace it (or, at another metric, take its
    /// traffic), and it is not weft's to touch.
    pub fn withdraw_foreign(&mut self, observed: &Observed) -> Vec<(Route, String)> {
        let mut withdrawn = Vec::new();
        for foreign in &observed.foreign_routes {
            if let Some(route) = self.routes.remove(&foreign.destination) {
                withdrawn.push((route, foreign.description.clone()));
            }
        }
        withdrawn
    }

    /// Installs the routes whose nexthop id another program's nexthop object holds
    /// (`taken`) the plain way (a gateway route), and returns them: that object is not
    /// weft's to replace, and a route through it would forward wherever its owner points it.
    pub fn demote_taken_nexthops(&mut self, taken: &BTreeSet<NonZeroU32>) -> Vec<Route> {
        if taken.is_empty() {
            return Vec::new();
        }
        let mut demoted = Vec::new();
        for route in self.routes.values_mut() {
            if route.nexthop.is_some_and(|id| taken.contains(&id)) {
                demoted.push(route.clone());
                route.nexthop = None;
            }
        }
        demoted
    }
}

/// Entries collected for a [`Desired`], its maps then built in bulk: a `BTreeMap` filled
/// one insert at a time in key order (peers come in subnet order) leaves its nodes half
/// empty, built from a sorted list they are full (at 15,000 peers the three maps are
/// ~3 MB smaller). The same entries result as from [`Desired::add_route`] and friends,
/// a later entry under the same key replacing an earlier one.
#[derive(Debug, Default)]
pub struct Entries {
    routes: Vec<(Net, Route)>,
    neighbours: Vec<((DeviceName, IpAddr), Neighbour)>,
    fdb: Vec<((DeviceName, Mac), Fdb)>,
}

impl Entries {
    pub fn add_route(&mut self, route: Route) {
        self.routes.push((route.destination, route));
    }

    pub fn add_neighbour(&mut self, n: Neighbour) {
        self.neighbours.push(((n.device.clone(), n.ip), n));
    }

    pub fn add_fdb(&mut self, e: Fdb) {
        self.fdb.push(((e.device.clone(), e.mac), e));
    }

    /// Adds the entries to `desired`'s maps.
    pub fn build_into(self, desired: &mut Desired) {
        fn build<K: Ord, V>(map: &mut BTreeMap<K, V>, entries: Vec<(K, V)>) {
            if map.is_empty() {
                // Sorts (stably: the last of equal keys wins) and fills nodes completely.
                *map = entries.into_iter().collect();
            } else {
                map.extend(entries);
            }
        }
        build(&mut desired.routes, self.routes);
        build(&mut desired.neighbours, self.neighbours);
        build(&mut desired.fdb, self.fdb);
    }
}

/// The vxlan attributes of an existing device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanAttrs {
    pub vni: u32,
    pub port: u16,
    pub local: Option<IpAddr>,
    pub underlay_index: u32,
    pub learning: bool,
    pub gbp: bool,
}

/// A device that exists under one of the desired names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedLink {
    pub index: u32,
    pub name: String,
    /// The kernel's kind (`vxlan`, `wireguard`, `tun`, ...), if it has one.
    pub kind: Option<String>,
    /// `None` if the device is not a vxlan device at all.
    pub vxlan: Option<VxlanAttrs>,
    /// A WireGuard device's configuration (kernel or userspace); `None` if the device
    /// does not answer as one.
    pub tunnel: Option<TunnelState>,
    pub mtu: u32,
    pub mac: Mac,
    pub up: bool,
    pub addresses: Vec<(IpAddr, u8)>,
}

/// A route weft owns, found in the main table: marked with weft's route protocol, or
/// through one of weft's devices (the overlay's, e.g. installed by flannel before weft
/// took the node over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedRoute {
    pub route: Route,
    /// Carries weft's route protocol (91). An unmarked route that weft wants is
    /// re-marked in place (adopted), so later repairs and sweeps treat it as weft's.
    pub marked: bool,
}

/// A route weft does not own (connected, static, another daemon's) on a prefix weft
/// wants. weft never replaces or deletes such a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignRoute {
    pub destination: Net,
    /// What it is, for the log: e.g. `198.18.40.0/24 dev eth0 proto kernel`.
    pub description: String,
}

/// What weft found in the kernel: its devices, the routes it owns, foreign routes on
/// desired prefixes, and the permanent neighbour and unicast FDB entries on its devices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub links: Vec<ObservedLink>,
    pub routes: Vec<ObservedRoute>,
    pub foreign_routes: Vec<ForeignRoute>,
    pub neighbours: Vec<Neighbour>,
    pub fdb: Vec<Fdb>,
    /// vxlan devices named like weft's that nothing wants now: left by another backend
    /// or VNI this node ran before (removed, with their entries).
    pub stray_devices: Vec<String>,
    /// weft's blackhole routes (marked with its route protocol).
    pub blackholes: Vec<Net>,
    /// The nexthop objects in weft's block of ids (see [`crate::nexthop`]) a pass acts
    /// on: weft's that no desired route uses, and all of other programs'.
    pub nexthops: Vec<ObservedNexthop>,
    /// Whether `nexthops` was read. A pass reads them only when they may hold something
    /// to act on (see the datapath): the routes' own dump already shows each route's
    /// object with its gateway and device, and at 15,000 peers reading all objects cost a
    /// quarter of a steady full pass.
    pub nexthops_read: bool,
}

impl Observed {
    /// The ids in weft's block that another program's nexthop objects hold.
    pub fn taken_nexthops(&self) -> BTreeSet<NonZeroU32> {
        self.nexthops
            .iter()
            .filter(|n| !n.ours)
            .map(|n| n.id)
            .collect()
    }
}

/// A nexthop object whose id lies in weft's block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObservedNexthop {
    pub id: NonZeroU32,
    /// Carries weft's protocol (91): weft's to replace and delete. Another program's
    /// nexthop at one of weft's ids is never touched.
    pub ours: bool,
}

/// A peer lease that could not be programmed, and why (the caller logs it once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub key: SubnetKey,
    pub kind: SkipKind,
    pub reason: String,
}

impl Skipped {
    /// `peer` runs another backend than `wanted`, the type this node's backend programs.
    pub fn other_backend(peer: &Lease, wanted: &str) -> Skipped {
        Skipped {
            key: peer.key,
            kind: SkipKind::OtherBackend,
            reason: format!(
                "its backend type is {:?}, not {wanted:?}",
                peer.attrs.backend_type
            ),
        }
    }
}

/// Why a peer was skipped; bounded, so it can label a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipKind {
    /// The peer runs another backend type.
    OtherBackend,
    /// The peer published no public IP (for a family it has a subnet in).
    NoPublicIp,
    /// The peer's BackendData has no valid VTEP MAC (vxlan).
    NoVtepMac,
    /// The peer's public IP is not on a directly connected network (host-gw).
    NotOnLink,
    /// The peer's BackendData has no valid WireGuard public key (wireguard).
    BadPublicKey,
    /// The peer's public key is this node's or another peer's (wireguard).
    PublicKeyClaimed,
}

impl SkipKind {
    pub const ALL: [SkipKind; 6] = [
        SkipKind::OtherBackend,
        SkipKind::NoPublicIp,
        SkipKind::NoVtepMac,
        SkipKind::NotOnLink,
        SkipKind::BadPublicKey,
        SkipKind::PublicKeyClaimed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            SkipKind::OtherBackend => "other_backend",
            SkipKind::NoPublicIp => "no_public_ip",
            SkipKind::NoVtepMac => "no_vtep_mac",
            SkipKind::NotOnLink => "not_on_link",
            SkipKind::BadPublicKey => "bad_public_key",
            SkipKind::PublicKeyClaimed => "public_key_claimed",
        }
    }
}
