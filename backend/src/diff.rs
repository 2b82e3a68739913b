//! The pure heart of reconciliation: desired state versus observed state gives the list
//! of operations, in an order that never breaks a working path needlessly:
//!
//! 1. devices (create, recreate if incompatible, fix MTU/MAC/up), then their addresses;
//! 2. neighbour and FDB entries, before the routes that use them (otherwise the kernel
//!    would try to resolve the gateway while the route exists without its entries);
//! 3. routes;
//! 4. stale routes, and only then stale neighbour and FDB entries;
//! 5. blackhole routes; last, weft's devices that nothing wants any more (another
//!    backend's or VNI's), once the routes that replace theirs are in place.

use crate::desired::{
    Desired, Device, Fdb, Link, Neighbour, Observed, ObservedLink, Route, VxlanLink,
};
use crate::mac::{self, Mac};
use crate::tunnel::{self, TunnelChange};
use std::collections::HashSet;

/// The sets of observed entries a pass compares against (tens of thousands at 15,000
/// peers): SipHash was ~12 % of a steady full pass. foldhash, seeded per process, is
/// several times faster; the keys come from admitted peers (addresses, MACs), and the
/// seed keeps their collisions out of a lease author's reach.
type ObservedSet<T> = HashSet<T, foldhash::quality::RandomState>;
use std::net::IpAddr;
use std::num::NonZeroU32;
use weft_lease::family::Net;

/// One change to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Boxed: the largest variant, and the rarest (a first pass holds tens of thousands
    /// of ops, each as large as the largest variant).
    CreateLink(Box<Link>),
    /// Set a WireGuard device's keys, port and peers (only what differs).
    ConfigureTunnel(Box<TunnelChange>),
    /// Delete a device that cannot be reused (`reason` is logged).
    DeleteLink {
        name: String,
        reason: String,
    },
    SetLink {
        name: String,
        mtu: Option<u32>,
        mac: Option<Mac>,
        up: bool,
    },
    AddAddress {
        device: String,
        address: Net,
    },
    DelAddress {
        device: String,
        ip: IpAddr,
        prefix: u8,
    },
    ReplaceNeighbour(Neighbour),
    DelNeighbour(Neighbour),
    ReplaceFdb(Fdb),
    DelFdb(Fdb),
    ReplaceRoute(Route),
    DelRoute(Route),
    ReplaceBlackhole(Net),
    DelBlackhole(Net),
    /// Delete one of weft's nexthop objects that no route of weft's uses any more.
    DelNexthop(NonZeroU32),
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::CreateLink(link) => match &**link {
                Link::Vxlan(l) => write!(
                    f,
                    "create {} (vni {}, mac {})",
                    l.name,
                    l.vni,
                    mac::format(&l.mac)
                ),
                Link::Wireguard(l) => write!(f, "create {} (wireguard)", l.name),
            },
            Op::ConfigureTunnel(change) => write!(f, "{change}"),
            Op::DeleteLink { name, reason } => write!(f, "delete {name}: {reason}"),
            Op::SetLink { name, mtu, mac, up } => {
                write!(f, "set {name}")?;
                if let Some(mtu) = mtu {
                    write!(f, " mtu {mtu}")?;
                }
                if let Some(m) = mac {
                    write!(f, " address {}", mac::format(m))?;
                }
                if *up {
                    write!(f, " up")?;
                }
                Ok(())
            }
            Op::AddAddress { device, address } => write!(f, "add address {address} dev {device}"),
            Op::DelAddress { device, ip, prefix } => {
                write!(f, "delete address {ip}/{prefix} dev {device}")
            }
            Op::ReplaceNeighbour(n) => write!(
                f,
                "neigh replace {} lladdr {} dev {}",
                n.ip,
                mac::format(&n.mac),
                n.device
            ),
            Op::DelNeighbour(n) => write!(f, "neigh del {} dev {}", n.ip, n.device),
            Op::ReplaceFdb(e) => write!(
                f,
                "fdb replace {} dev {} dst {}",
                mac::format(&e.mac),
                e.device,
                e.destination
            ),
            Op::DelFdb(e) => write!(
                f,
                "fdb del {} dev {} dst {}",
                mac::format(&e.mac),
                e.device,
                e.destination
            ),
            Op::ReplaceRoute(r) => write!(f, "route replace {r}"),
            Op::DelRoute(r) => write!(f, "route del {r}"),
            Op::ReplaceBlackhole(n) => write!(f, "route replace blackhole {n}"),
            Op::DelBlackhole(n) => write!(f, "route del blackhole {n}"),
            Op::DelNexthop(id) => write!(f, "nexthop del id {id}"),
        }
    }
}

impl Op {
    /// Whether the op removes a peer's entry (held during a datastore grace period).
    pub fn is_peer_removal(&self) -> bool {
        matches!(
            self,
            Op::DelRoute(_) | Op::DelNeighbour(_) | Op::DelFdb(_) | Op::DelNexthop(_)
        )
    }
}

/// Why an existing device cannot be reused, if so.
pub fn incompatibility(want: &Link, have: &ObservedLink) -> Option<String> {
    match want {
        Link::Vxlan(want) => vxlan_incompatibility(want, have),
        Link::Wireguard(_) if have.tunnel.is_none() => Some(format!(
            "it is not a WireGuard device (kind {})",
            have.kind.as_deref().unwrap_or("none")
        )),
        Link::Wireguard(_) => None,
    }
}

/// Why an existing device cannot be a vxlan device as wanted (flannel's rules), if so.
pub fn vxlan_incompatibility(want: &VxlanLink, have: &ObservedLink) -> Option<String> {
    let Some(attrs) = &have.vxlan else {
        return Some("it is not a vxlan device".into());
    };
    if attrs.vni != want.vni {
        return Some(format!("it has VNI {} instead of {}", attrs.vni, want.vni));
    }
    if attrs.underlay_index > 0
        && want.underlay_index > 0
        && attrs.underlay_index != want.underlay_index
    {
        return Some(format!(
            "it uses underlay ifindex {} instead of {}",
            attrs.underlay_index, want.underlay_index
        ));
    }
    if let Some(local) = attrs.local
        && local != want.local
    {
        return Some(format!(
            "its local address is {local} instead of {}",
            want.local
        ));
    }
    let want_port = if want.port == 0 { 8472 } else { want.port };
    if attrs.port > 0 && attrs.port != want_port {
        return Some(format!(
            "it uses port {} instead of {want_port}",
            attrs.port
        ));
    }
    if attrs.gbp != want.gbp {
        return Some(format!(
            "its GBP setting is {} instead of {}",
            attrs.gbp, want.gbp
        ));
    }
    if attrs.learning != want.learning {
        return Some(format!(
            "its learning setting is {} instead of {}",
            attrs.learning, want.learning
        ));
    }
    None
}

/// Computes the operations that take the kernel from `observed` to `desired`, in a safe
/// order: devices, then new entries (neighbour and FDB before the routes that use them),
/// then routes; removals after, routes before their nexthop objects and entries.
pub fn diff(desired: &Desired, observed: &Observed) -> Vec<Op> {
    // At least this many entries are missing: sized once, so a first pass (thousands of
    // peers, nothing in the kernel yet) does not grow the largest vector of the pass by
    // doubling; a steady pass reserves nothing.
    let wanted = desired.routes.len() + desired.neighbours.len() + desired.fdb.len();
    let present = observed.routes.len() + observed.neighbours.len() + observed.fdb.len();
    let mut ops = Vec::with_capacity(wanted.saturating_sub(present) + 2 * desired.devices.len());
    // Devices that will be (re)created have no entries afterwards.
    let mut fresh: HashSet<&str> = HashSet::new();
    for device in &desired.devices {
        device_ops(device, observed, &mut ops, &mut fresh);
    }
    let devices = Devices {
        fresh,
        ours: desired.device_names().collect(),
    };
    missing_entry_ops(desired, observed, &devices, &mut ops);
    let deleted_with_route = route_ops(desired, observed, &devices, &mut ops);
    nexthop_ops(desired, observed, deleted_with_route, &mut ops);
    stale_entry_ops(desired, observed, &devices, &mut ops);
    blackhole_ops(desired, observed, &mut ops);
    stray_device_ops(observed, &devices, &mut ops);
    ops
}

/// weft's devices in this pass, and those being (re)created, whose entries are gone.
struct Devices<'a> {
    fresh: HashSet<&'a str>,
    ours: HashSet<&'a str>,
}

impl Devices<'_> {
    fn fresh(&self, name: &str) -> bool {
        self.fresh.contains(name)
    }

    /// One of weft's devices that keeps its entries.
    fn kept(&self, name: &str) -> bool {
        self.ours.contains(name) && !self.fresh(name)
    }
}

/// Neighbour and FDB entries wanted and not in the kernel.
fn missing_entry_ops(
    desired: &Desired,
    observed: &Observed,
    devices: &Devices<'_>,
    ops: &mut Vec<Op>,
) {
    let observed_neigh: ObservedSet<&Neighbour> = observed
        .neighbours
        .iter()
        .filter(|n| !devices.fresh(&n.device))
        .collect();
    let observed_fdb: ObservedSet<&Fdb> = observed
        .fdb
        .iter()
        .filter(|e| !devices.fresh(&e.device))
        .collect();
    for neighbour in desired.neighbours.values() {
        if !observed_neigh.contains(neighbour) {
            ops.push(Op::ReplaceNeighbour(neighbour.clone()));
        }
    }
    for fdb in desired.fdb.values() {
        if !observed_fdb.contains(fdb) {
            ops.push(Op::ReplaceFdb(fdb.clone()));
        }
    }
}

/// Routes wanted and not in place, then weft's routes nothing wants; returns the nexthop
/// objects the deleted routes used.
fn route_ops(
    desired: &Desired,
    observed: &Observed,
    devices: &Devices<'_>,
    ops: &mut Vec<Op>,
) -> Vec<NonZeroU32> {
    let live_routes: Vec<_> = observed
        .routes
        .iter()
        .filter(|r| !devices.fresh(&r.route.device))
        .collect();
    // Indexed, so a steady-state pass over thousands of peers stays linear. Only marked
    // routes count as in place: a wanted route without weft's mark (flannel's, on a
    // node weft took over) is replaced by the same route with the mark, atomically.
    let live_set: ObservedSet<&Route> = live_routes
        .iter()
        .filter(|r| r.marked)
        .map(|r| &r.route)
        .collect();
    for route in desired.routes.values() {
        if !live_set.contains(route) {
            ops.push(Op::ReplaceRoute(route.clone()));
        }
    }
    let mut deleted_with_route = Vec::new();
    for observed_route in &live_routes {
        let route = &observed_route.route;
        // Ours, and nothing wants this prefix any more. A wanted prefix with a different
        // path was rewritten in place by the replace above.
        if !desired.routes.contains_key(&route.destination) {
            deleted_with_route.extend(route.nexthop);
            ops.push(Op::DelRoute(route.clone()));
        }
    }
    deleted_with_route
}

/// After the routes: deleting a nexthop object deletes the routes through it. Only
/// weft's own (marked) objects; another program's at one of weft's ids stays. (The set
/// is built only when there is one: a steady pass observes none.)
fn nexthop_ops(
    desired: &Desired,
    observed: &Observed,
    deleted_with_route: Vec<NonZeroU32>,
    ops: &mut Vec<Op>,
) {
    if !observed.nexthops.iter().any(|n| n.ours) {
        return;
    }
    let used: HashSet<NonZeroU32> = desired
        .routes
        .values()
        .filter_map(|r| r.nexthop)
        .chain(deleted_with_route)
        .collect();
    for nexthop in &observed.nexthops {
        if nexthop.ours && !used.contains(&nexthop.id) {
            ops.push(Op::DelNexthop(nexthop.id));
        }
    }
}

/// weft's neighbour and FDB entries nothing wants.
fn stale_entry_ops(
    desired: &Desired,
    observed: &Observed,
    devices: &Devices<'_>,
    ops: &mut Vec<Op>,
) {
    for neighbour in &observed.neighbours {
        let key = (neighbour.device.clone(), neighbour.ip);
        // A wanted entry whose MAC changed was rewritten by a replace already.
        if devices.kept(neighbour.device.as_str()) && !desired.neighbours.contains_key(&key) {
            ops.push(Op::DelNeighbour(neighbour.clone()));
        }
    }
    for fdb in &observed.fdb {
        let key = (fdb.device.clone(), fdb.mac);
        if devices.kept(fdb.device.as_str()) && !desired.fdb.contains_key(&key) {
            ops.push(Op::DelFdb(fdb.clone()));
        }
    }
}

fn blackhole_ops(desired: &Desired, observed: &Observed, ops: &mut Vec<Op>) {
    let observed_blackholes: HashSet<&Net> = observed.blackholes.iter().collect();
    for net in &desired.blackholes {
        if !observed_blackholes.contains(net) {
            ops.push(Op::ReplaceBlackhole(*net));
        }
    }
    for net in &observed.blackholes {
        if !desired.blackholes.contains(net) {
            ops.push(Op::DelBlackhole(*net));
        }
    }
}

/// VXLAN devices of flannel's naming that no backend of this node uses.
fn stray_device_ops(observed: &Observed, devices: &Devices<'_>, ops: &mut Vec<Op>) {
    for name in &observed.stray_devices {
        if !devices.ours.contains(name.as_str()) {
            ops.push(Op::DeleteLink {
                name: name.clone(),
                reason: "no backend of this node uses it any more (left by another backend \
                         or VNI)"
                    .into(),
            });
        }
    }
}

fn device_ops<'a>(
    device: &'a Device,
    observed: &Observed,
    ops: &mut Vec<Op>,
    fresh: &mut HashSet<&'a str>,
) {
    let want = &device.link;
    let name = want.name();
    let existing = observed.links.iter().find(|l| l.name == name);
    let existing = match existing {
        None => None,
        Some(have) => match incompatibility(want, have) {
            Some(reason) => {
                ops.push(Op::DeleteLink {
                    name: name.to_string(),
                    reason,
                });
                None
            }
            None => Some(have),
        },
    };
    let Some(have) = existing else {
        ops.push(Op::CreateLink(Box::new(want.clone())));
        for address in &device.addresses {
            ops.push(Op::AddAddress {
                device: name.to_string(),
                address: *address,
            });
        }
        if let Link::Wireguard(link) = want {
            ops.push(Op::ConfigureTunnel(Box::new(TunnelChange::full(
                name,
                &link.tunnel,
            ))));
        }
        fresh.insert(name);
        return;
    };
    let mtu = (have.mtu != want.mtu()).then_some(want.mtu());
    let mac = want.mac().filter(|m| *m != have.mac);
    if mtu.is_some() || mac.is_some() || !have.up {
        ops.push(Op::SetLink {
            name: name.to_string(),
            mtu,
            mac,
            up: true,
        });
    }
    address_ops(device, have, ops);
    if let (Link::Wireguard(link), Some(state)) = (want, &have.tunnel)
        && let Some(change) = tunnel::changes(name, &link.tunnel, state)
    {
        ops.push(Op::ConfigureTunnel(Box::new(change)));
    }
}

/// The device's wanted addresses added, any other (but link-local) removed.
fn address_ops(device: &Device, have: &ObservedLink, ops: &mut Vec<Op>) {
    let name = device.link.name();
    let wanted: Vec<(IpAddr, u8)> = device
        .addresses
        .iter()
        .map(|a| (a.ip(), a.prefix))
        .collect();
    for address in &device.addresses {
        if !have.addresses.contains(&(address.ip(), address.prefix)) {
            ops.push(Op::AddAddress {
                device: name.to_string(),
                address: *address,
            });
        }
    }
    for &(ip, prefix) in &have.addresses {
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
        if !wanted.contains(&(ip, prefix)) && !link_local {
            ops.push(Op::DelAddress {
                device: name.to_string(),
                ip,
                prefix,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{ObservedRoute, VxlanAttrs};

    const DEV: &str = "flannel.1";

    fn mac(last: u8) -> Mac {
        [0x0a, 0x58, 0x0a, 0xf4, last, 0x00]
    }

    fn link() -> VxlanLink {
        VxlanLink {
            name: DEV.into(),
            vni: 1,
            port: 0,
            local: "198.18.0.11".parse().unwrap(),
            underlay_index: 2,
            learning: false,
            gbp: false,
            mtu: 1450,
            mac: mac(1),
        }
    }

    fn net(s: &str) -> Net {
        s.parse().unwrap()
    }

    fn peer_entries(desired: &mut Desired, n: u8, public_ip: &str) {
        let subnet = net(&format!("10.244.{n}.0/24"));
        desired.add_neighbour(Neighbour {
            device: DEV.into(),
            ip: subnet.ip(),
            mac: mac(n),
        });
        desired.add_fdb(Fdb {
            device: DEV.into(),
            mac: mac(n),
            destination: public_ip.parse().unwrap(),
        });
        desired.add_route(Route {
            destination: subnet,
            gateway: Some(subnet.ip()),
            device: DEV.into(),
            onlink: true,
            nexthop: None,
        });
    }

    fn desired_with_peers(peers: &[(u8, &str)]) -> Desired {
        let mut d = Desired {
            devices: vec![Device {
                link: Link::Vxlan(link()),
                addresses: vec![net("10.244.1.0/32")],
            }],
            ..Desired::default()
        };
        for (n, ip) in peers {
            peer_entries(&mut d, *n, ip);
        }
        d
    }

    fn observed_link() -> ObservedLink {
        ObservedLink {
            index: 5,
            name: DEV.into(),
            kind: Some("vxlan".into()),
            tunnel: None,
            vxlan: Some(VxlanAttrs {
                vni: 1,
                port: 8472,
                local: Some("198.18.0.11".parse().unwrap()),
                underlay_index: 2,
                learning: false,
                gbp: false,
            }),
            mtu: 1450,
            mac: mac(1),
            up: true,
            addresses: vec![
                ("10.244.1.0".parse().unwrap(), 32),
                ("fe80::1".parse().unwrap(), 64),
            ],
        }
    }

    /// What the kernel holds once `desired` is fully applied.
    fn converged(desired: &Desired) -> Observed {
        Observed {
            links: vec![observed_link()],
            routes: desired
                .routes
                .values()
                .map(|r| ObservedRoute {
                    route: r.clone(),
                    marked: true,
                })
                .collect(),
            foreign_routes: Vec::new(),
            neighbours: desired.neighbours.values().cloned().collect(),
            fdb: desired.fdb.values().cloned().collect(),
            stray_devices: Vec::new(),
            blackholes: desired.blackholes.iter().copied().collect(),
            nexthops: Vec::new(),
            nexthops_read: true,
        }
    }

    /// A first pass at 15,000 peers holds 45,000 ops and as many entries in the desired
    /// and observed state: every byte here is ~45 KB there (docs/benchmarks.md).
    #[test]
    fn entries_and_ops_stay_small() {
        use std::mem::size_of;
        assert_eq!(size_of::<Route>(), 56);
        assert_eq!(size_of::<Neighbour>(), 32);
        assert_eq!(size_of::<Fdb>(), 32);
        assert_eq!(size_of::<Op>(), 64);
    }

    #[test]
    fn converged_state_needs_nothing() {
        let desired = desired_with_peers(&[(2, "198.18.0.12"), (3, "198.18.0.13")]);
        assert_eq!(diff(&desired, &converged(&desired)), vec![]);
    }

    #[test]
    fn empty_kernel_gets_device_then_entries_then_routes() {
        let desired = desired_with_peers(&[(2, "198.18.0.12")]);
        let ops = diff(&desired, &Observed::default());
        let kinds: Vec<&str> = ops
            .iter()
            .map(|op| match op {
                Op::CreateLink(_) => "link",
                Op::AddAddress { .. } => "addr",
                Op::ReplaceNeighbour(_) => "neigh",
                Op::ReplaceFdb(_) => "fdb",
                Op::ReplaceRoute(_) => "route",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["link", "addr", "neigh", "fdb", "route"]);
    }

    #[test]
    fn peer_added() {
        let before = desired_with_peers(&[(2, "198.18.0.12")]);
        let after = desired_with_peers(&[(2, "198.18.0.12"), (3, "198.18.0.13")]);
        let ops = diff(&after, &converged(&before));
        assert_eq!(
            ops,
            vec![
                Op::ReplaceNeighbour(Neighbour {
                    device: DEV.into(),
                    ip: "10.244.3.0".parse().unwrap(),
                    mac: mac(3)
                }),
                Op::ReplaceFdb(Fdb {
                    device: DEV.into(),
                    mac: mac(3),
                    destination: "198.18.0.13".parse().unwrap()
                }),
                Op::ReplaceRoute(Route {
                    destination: net("10.244.3.0/24"),
                    gateway: Some("10.244.3.0".parse().unwrap()),
                    device: DEV.into(),
                    onlink: true,
                    nexthop: None,
                }),
            ]
        );
    }

    #[test]
    fn peer_removed_route_goes_before_its_entries() {
        let before = desired_with_peers(&[(2, "198.18.0.12"), (3, "198.18.0.13")]);
        let after = desired_with_peers(&[(2, "198.18.0.12")]);
        let ops = diff(&after, &converged(&before));
        assert!(
            matches!(
                ops.as_slice(),
                [Op::DelRoute(_), Op::DelNeighbour(_), Op::DelFdb(_)]
            ),
            "{ops:?}"
        );
    }

    #[test]
    fn peer_mac_changed_is_updated_in_place() {
        let before = desired_with_peers(&[(2, "198.18.0.12")]);
        let mut after = desired_with_peers(&[]);
        let subnet = net("10.244.2.0/24");
        after.add_neighbour(Neighbour {
            device: DEV.into(),
            ip: subnet.ip(),
            mac: mac(99),
        });
        after.add_fdb(Fdb {
            device: DEV.into(),
            mac: mac(99),
            destination: "198.18.0.12".parse().unwrap(),
        });
        after.add_route(Route {
            destination: subnet,
            gateway: Some(subnet.ip()),
            device: DEV.into(),
            onlink: true,
            nexthop: None,
        });
        let ops = diff(&after, &converged(&before));
        // The neighbour is replaced (not deleted), the new FDB entry added, the old one
        // removed; the route is untouched.
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert!(matches!(&ops[0], Op::ReplaceNeighbour(n) if n.mac == mac(99)));
        assert!(matches!(&ops[1], Op::ReplaceFdb(e) if e.mac == mac(99)));
        assert!(matches!(&ops[2], Op::DelFdb(e) if e.mac == mac(2)));
    }

    #[test]
    fn peer_public_ip_changed_rewrites_only_the_fdb_entry() {
        let before = desired_with_peers(&[(2, "198.18.0.12")]);
        let after = desired_with_peers(&[(2, "198.18.0.22")]);
        let ops = diff(&after, &converged(&before));
        assert_eq!(
            ops,
            vec![Op::ReplaceFdb(Fdb {
                device: DEV.into(),
                mac: mac(2),
                destination: "198.18.0.22".parse().unwrap()
            })]
        );
    }

    #[test]
    fn route_deleted_by_an_admin_is_restored() {
        let desired = desired_with_peers(&[(2, "198.18.0.12"), (3, "198.18.0.13")]);
        let mut observed = converged(&desired);
        observed
            .routes
            .retain(|r| r.route.destination != net("10.244.3.0/24"));
        observed.fdb.retain(|e| e.mac != mac(2));
        let ops = diff(&desired, &observed);
        assert!(
            matches!(ops.as_slice(), [Op::ReplaceFdb(e), Op::ReplaceRoute(r)] if e.mac == mac(2) && r.destination == net("10.244.3.0/24")),
            "{ops:?}"
        );
    }

    #[test]
    fn a_foreign_route_on_a_desired_prefix_is_never_replaced() {
        let mut desired = desired_with_peers(&[(2, "198.18.0.12"), (3, "198.18.0.13")]);
        let mut observed = converged(&desired);
        // Someone else's route sits on peer 2's prefix (a connected network, a static
        // route): weft's route for it is withdrawn, and nothing touches the foreign one.
        observed
            .routes
            .retain(|r| r.route.destination != net("10.244.2.0/24"));
        observed.foreign_routes.push(crate::desired::ForeignRoute {
            destination: net("10.244.2.0/24"),
            description: "10.244.2.0/24 dev eth0 proto kernel".into(),
        });
        let withdrawn = desired.withdraw_foreign(&observed);
        assert_eq!(withdrawn.len(), 1);
        assert_eq!(withdrawn[0].0.destination, net("10.244.2.0/24"));
        assert_eq!(withdrawn[0].1, "10.244.2.0/24 dev eth0 proto kernel");
        let ops = diff(&desired, &observed);
        assert!(
            !ops.iter()
                .any(|op| matches!(op, Op::ReplaceRoute(_) | Op::DelRoute(_))),
            "{ops:?}"
        );
    }

    #[test]
    fn an_unmarked_route_on_weft_s_device_is_adopted_in_place_and_swept_later() {
        // flannel's route for peer 2 (no route protocol mark) on a node weft took over.
        let desired = desired_with_peers(&[(2, "198.18.0.12"), (3, "198.18.0.13")]);
        let mut observed = converged(&desired);
        for r in &mut observed.routes {
            r.marked = false;
        }
        let ops = diff(&desired, &observed);
        let replaced: Vec<String> = ops
            .iter()
            .map(|op| match op {
                Op::ReplaceRoute(r) => r.destination.to_string(),
                other => panic!("only re-marking replaces, got {other}"),
            })
            .collect();
        assert_eq!(replaced, ["10.244.2.0/24", "10.244.3.0/24"]);
        // Once peer 3 leaves, its unmarked route is swept like weft's own.
        let only_2 = desired_with_peers(&[(2, "198.18.0.12")]);
        let ops = diff(&only_2, &observed);
        assert!(
            ops.iter()
                .any(|op| matches!(op, Op::DelRoute(r) if r.destination == net("10.244.3.0/24"))),
            "{ops:?}"
        );
    }

    #[test]
    fn blackholes_are_added_and_removed_and_stray_devices_deleted_last() {
        let mut desired = desired_with_peers(&[(2, "198.18.0.12")]);
        let mut observed = converged(&desired);
        desired.blackholes.insert(net("10.244.1.0/24"));
        observed.blackholes.push(net("10.244.9.0/24"));
        observed.stray_devices.push("flannel.7".into());
        let ops = diff(&desired, &observed);
        assert_eq!(
            ops,
            vec![
                Op::ReplaceBlackhole(net("10.244.1.0/24")),
                Op::DelBlackhole(net("10.244.9.0/24")),
                Op::DeleteLink {
                    name: "flannel.7".into(),
                    reason: "no backend of this node uses it any more (left by another \
                             backend or VNI)"
                        .into()
                },
            ]
        );
        assert!(crate::desired::is_vxlan_device_name("flannel.1"));
        assert!(crate::desired::is_vxlan_device_name("flannel-v6.4096"));
        assert!(!crate::desired::is_vxlan_device_name("flannel.x"));
        assert!(!crate::desired::is_vxlan_device_name("flannel0"));
    }

    #[test]
    fn stale_owned_route_from_a_vanished_peer_is_swept() {
        let desired = desired_with_peers(&[(2, "198.18.0.12")]);
        let mut observed = converged(&desired);
        let stale = Route {
            destination: net("10.244.9.0/24"),
            gateway: Some("10.244.9.0".parse().unwrap()),
            device: DEV.into(),
            onlink: true,
            nexthop: None,
        };
        observed.routes.push(ObservedRoute {
            route: stale.clone(),
            marked: true,
        });
        assert_eq!(diff(&desired, &observed), vec![Op::DelRoute(stale)]);
    }

    #[test]
    fn device_with_a_different_vni_is_recreated_with_all_entries() {
        let desired = desired_with_peers(&[(2, "198.18.0.12")]);
        let mut observed = converged(&desired);
        observed.links[0].vxlan.as_mut().unwrap().vni = 7;
        let ops = diff(&desired, &observed);
        assert_eq!(
            ops[0],
            Op::DeleteLink {
                name: DEV.into(),
                reason: "it has VNI 7 instead of 1".into()
            }
        );
        assert!(matches!(ops[1], Op::CreateLink(_)));
        assert_eq!(
            ops.len(),
            6,
            "delete, create, address, neigh, fdb, route: {ops:?}"
        );
        assert!(
            !ops.iter()
                .any(|op| matches!(op, Op::DelRoute(_) | Op::DelFdb(_) | Op::DelNeighbour(_)))
        );
    }

    #[test]
    fn deleted_device_comes_back_with_all_entries() {
        let desired = desired_with_peers(&[(2, "198.18.0.12"), (3, "198.18.0.13")]);
        // The kernel removed the device and everything on it.
        let ops = diff(&desired, &Observed::default());
        assert_eq!(
            ops.iter()
                .filter(|op| matches!(op, Op::ReplaceRoute(_)))
                .count(),
            2
        );
        assert_eq!(
            ops.iter()
                .filter(|op| matches!(op, Op::ReplaceFdb(_)))
                .count(),
            2
        );
        assert_eq!(
            ops.iter()
                .filter(|op| matches!(op, Op::ReplaceNeighbour(_)))
                .count(),
            2
        );
    }

    #[test]
    fn compatible_device_is_adopted_and_fixed_in_place() {
        let desired = desired_with_peers(&[]);
        let mut observed = converged(&desired);
        observed.links[0].mtu = 1500;
        observed.links[0].up = false;
        observed.links[0]
            .addresses
            .push(("10.244.77.0".parse().unwrap(), 32));
        let ops = diff(&desired, &observed);
        assert_eq!(
            ops,
            vec![
                Op::SetLink {
                    name: DEV.into(),
                    mtu: Some(1450),
                    mac: None,
                    up: true
                },
                Op::DelAddress {
                    device: DEV.into(),
                    ip: "10.244.77.0".parse().unwrap(),
                    prefix: 32
                },
            ]
        );
    }

    #[test]
    fn direct_routing_toggled() {
        // On: the peer gets a plain route via its public IP on the underlay instead.
        let vxlan = desired_with_peers(&[(2, "198.18.0.12")]);
        let mut direct = desired_with_peers(&[]);
        direct.add_route(Route {
            destination: net("10.244.2.0/24"),
            gateway: Some("198.18.0.12".parse().unwrap()),
            device: "eth0".into(),
            onlink: false,
            nexthop: None,
        });
        let ops = diff(&direct, &converged(&vxlan));
        assert!(
            matches!(ops.as_slice(), [Op::ReplaceRoute(r), Op::DelNeighbour(_), Op::DelFdb(_)] if r.device == "eth0"),
            "{ops:?}"
        );
        // Off again: entries first, then the route is replaced back onto the vxlan device.
        let mut observed = converged(&direct);
        observed.routes = vec![ObservedRoute {
            route: direct.routes.values().next().unwrap().clone(),
            marked: true,
        }];
        let ops = diff(&vxlan, &observed);
        assert!(
            matches!(ops.as_slice(), [Op::ReplaceNeighbour(_), Op::ReplaceFdb(_), Op::ReplaceRoute(r)] if r.device == DEV),
            "{ops:?}"
        );
    }
}
