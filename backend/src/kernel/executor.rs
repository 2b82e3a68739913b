//! Reads the state of weft's objects from the kernel and applies operations, over
//! rtnetlink. Every operation but device creation is idempotent ("replace"), and
//! deleting something that is already gone counts as success, so a half-applied pass is
//! simply finished by the next. `CreateLink` is an add: the diff only asks for it when
//! the device is absent, and a device that appeared meanwhile fails it with EEXIST,
//! which the next pass, seeing the device, resolves.

use super::dump::Dumper;
use super::ethtool::EthtoolSocket;
use super::nexthop::{Nexthop, NexthopSocket};
use super::wireguard::TunnelDriver;
use super::{KernelError, MAIN_TABLE, netlink, route_address, route_table};
use crate::ROUTE_PROTOCOL;
use crate::desired::{
    BLACKHOLE_METRIC, Desired, DeviceName, Fdb, ForeignRoute, Link, Neighbour, Observed,
    ObservedLink, ObservedNexthop, ObservedRoute, Route, VxlanAttrs, VxlanLink,
    is_vxlan_device_name,
};
use crate::diff::Op;
use crate::mac::{self, Mac};
use crate::nexthop::NexthopPlan;
use crate::tunnel::TunnelImplementation;
use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use weft_lease::family::{Family, Net};

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENODEV: i32 = 19;
const EADDRNOTAVAIL: i32 = 99;

/// A netlink connection for observing and changing weft's kernel objects.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub(super) handle: Handle,
    /// The full pass's route, neighbour and FDB dumps, streamed (see `dump`).
    dumper: Arc<tokio::sync::Mutex<Dumper>>,
    /// Nexthop objects (see `nexthop`).
    nexthops: Arc<tokio::sync::Mutex<NexthopSocket>>,
    /// Device features over ethtool netlink, opened at first use (see `ethtool`).
    ethtool: Arc<std::sync::Mutex<Option<EthtoolSocket>>>,
    /// WireGuard devices (see `wireguard`).
    tunnels: Arc<TunnelDriver>,
}

impl Kernel {
    /// Opens a netlink connection in the current network namespace.
    pub fn connect() -> Result<Kernel, KernelError> {
        Ok(Kernel {
            handle: super::connect()?,
            dumper: Arc::new(tokio::sync::Mutex::new(Dumper::new()?)),
            nexthops: Arc::new(tokio::sync::Mutex::new(NexthopSocket::new()?)),
            ethtool: Arc::new(std::sync::Mutex::new(None)),
            tunnels: Arc::new(TunnelDriver::default()),
        })
    }

    /// WireGuard devices are served by `command` (a userspace implementation, the device
    /// name appended) when the kernel has no WireGuard.
    pub fn with_wireguard_userspace(mut self, command: Option<Vec<String>>) -> Kernel {
        self.tunnels = Arc::new(TunnelDriver::new(command));
        self
    }

    /// Whether this kernel has nexthop objects (Linux ≥ 5.3): asking for one id tells (a
    /// kernel without them does not know the request), without the dump of every object
    /// that the first full pass makes anyway.
    pub async fn has_nexthop_objects(&self) -> Result<bool, KernelError> {
        match self.nexthops.lock().await.get(NonZeroU32::MIN).await {
            Ok(_) => Ok(true),
            Err(e) if e.errno().is_some_and(super::nexthop::unknown_request) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn links(&self) -> Result<Vec<LinkMessage>, KernelError> {
        self.handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(netlink("dump links"))
    }

    /// The index and MAC of a device, if it exists.
    pub async fn link(&self, name: &str) -> Result<Option<(u32, Mac)>, KernelError> {
        Ok(self
            .links()
            .await?
            .iter()
            .find(|l| link_name(l) == Some(name))
            .map(|l| (l.header.index, link_mac(l))))
    }

    /// Reads the devices named in `desired`, the routes weft owns or that sit on a
    /// desired prefix, and the permanent neighbour and unicast FDB entries on its devices;
    /// with `nexthops`, also the nexthop objects a pass may act on (see
    /// [`Observed::nexthops_read`]).
    pub async fn observe(
        &self,
        desired: &Desired,
        nexthops: bool,
    ) -> Result<Observed, KernelError> {
        let mut observed = Observed::default();
        let names = self.observe_links(desired, &mut observed).await?;
        let ours: HashMap<u32, String> = observed
            .links
            .iter()
            .map(|l| (l.index, l.name.clone()))
            .collect();
        if !ours.is_empty() {
            self.observe_addresses(&mut observed).await?;
        }
        // Sized once for what the pass expects: no doubling (and no old and new buffer at
        // once) while 15,000 peers' entries stream in.
        observed.routes.reserve(desired.routes.len());
        observed.neighbours.reserve(desired.neighbours.len());
        observed.fdb.reserve(desired.fdb.len());
        let mut dumper = self.dumper.lock().await;
        observe_routes(&mut dumper, desired, &names, &ours, &mut observed).await?;
        observe_entries(&mut dumper, &ours, &mut observed).await?;
        drop(dumper);
        if nexthops {
            self.observe_nexthops(desired, &mut observed).await?;
            observed.nexthops_read = true;
        }
        Ok(observed)
    }

    /// weft's devices (and stray VXLAN devices of flannel's naming); returns every link's
    /// name by index, for reading routes.
    async fn observe_links(
        &self,
        desired: &Desired,
        observed: &mut Observed,
    ) -> Result<HashMap<u32, DeviceName>, KernelError> {
        let wanted: HashMap<&str, &Link> = desired
            .devices
            .iter()
            .map(|d| (d.link.name(), &d.link))
            .collect();
        let links = self.links().await?;
        let names: HashMap<u32, DeviceName> = links
            .iter()
            .filter_map(|l| link_name(l).map(|n| (l.header.index, DeviceName::from(n))))
            .collect();
        for link in &links {
            let Some(name) = link_name(link) else {
                continue;
            };
            if let Some(want) = wanted.get(name) {
                let mut seen = observed_link(link, name);
                if matches!(want, Link::Wireguard(_)) {
                    seen.tunnel = self.read_tunnel(&seen)?;
                }
                observed.links.push(seen);
            } else if is_stray(&observed_link(link, name), &self.tunnels) {
                observed.stray_devices.push(name.to_string());
            }
        }
        Ok(names)
    }

    /// A WireGuard device's configuration; `None` if the device is not one (another
    /// kind, or a TUN device without a userspace implementation's socket). A device
    /// that is one but cannot be read fails the pass (retried), never recreated.
    fn read_tunnel(
        &self,
        link: &ObservedLink,
    ) -> Result<Option<crate::tunnel::TunnelState>, KernelError> {
        let userspace =
            link.kind.as_deref() == Some("tun") && self.tunnels.is_userspace(&link.name);
        if link.kind.as_deref() != Some("wireguard") && !userspace {
            return Ok(None);
        }
        let mut state = self.tunnels.read(&link.name)?;
        state.implementation = if userspace {
            TunnelImplementation::Userspace
        } else {
            TunnelImplementation::Kernel
        };
        Ok(Some(state))
    }

    /// The addresses of weft's devices.
    async fn observe_addresses(&self, observed: &mut Observed) -> Result<(), KernelError> {
        let addresses: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(netlink("dump addresses"))?;
        for message in addresses {
            let Some(link) = observed
                .links
                .iter_mut()
                .find(|l| l.index == message.header.index)
            else {
                continue;
            };
            if let Some(ip) = address_of(&message) {
                link.addresses.push((ip, message.header.prefix_len));
            }
        }
        Ok(())
    }

    /// The nexthop objects a pass acts on: other programs' in weft's block of ids (a route
    /// that would use one goes without), and weft's that no desired route wants (swept).
    /// The steady state keeps none of the thousands that are as wanted.
    async fn observe_nexthops(
        &self,
        desired: &Desired,
        observed: &mut Observed,
    ) -> Result<(), KernelError> {
        let mut wanted: Vec<u32> = desired
            .routes
            .values()
            .filter_map(|r| r.nexthop.map(NonZeroU32::get))
            .collect();
        wanted.sort_unstable();
        let mut socket = self.nexthops.lock().await;
        // A kernel without nexthop objects has none of weft's either.
        socket
            .dump(|seen| {
                let Some(id) =
                    NonZeroU32::new(seen.id).filter(|id| NexthopPlan::in_range(id.get()))
                else {
                    return;
                };
                let ours = seen.protocol == ROUTE_PROTOCOL;
                if !ours || wanted.binary_search(&seen.id).is_err() {
                    observed.nexthops.push(ObservedNexthop { id, ours });
                }
            })
            .await?;
        Ok(())
    }

    /// Applies `ops` in order, trying every one; returns those that failed.
    pub async fn apply(&self, ops: &[Op]) -> Vec<(Op, KernelError)> {
        let mut failures = Vec::new();
        let mut indices: HashMap<String, u32> = match self.links().await {
            Ok(links) => links
                .iter()
                .filter_map(|l| link_name(l).map(|n| (n.to_string(), l.header.index)))
                .collect(),
            Err(e) => {
                return ops
                    .iter()
                    .map(|op| {
                        (
                            op.clone(),
                            KernelError::Invalid(format!(
                                "cannot list links before applying changes: {e}"
                            )),
                        )
                    })
                    .collect();
            }
        };
        let mut keyed = Vec::new();
        for op in ops {
            let result = self.apply_one(op, &mut indices).await;
            match (result, op) {
                (Err(e), _) => failures.push((op.clone(), e)),
                (Ok(()), Op::ConfigureTunnel(change)) => keyed.push(change),
                (Ok(()), _) => {}
            }
        }
        for change in keyed {
            super::wireguard::prime_handshakes(change);
        }
        failures
    }

    /// Brings feature `name` of device `index` to `on` (ethtool netlink) and reads it
    /// back; returns whether it had to change it.
    pub fn ensure_feature(&self, index: u32, name: &str, on: bool) -> Result<bool, KernelError> {
        let failed = |op| move |error| KernelError::Ethtool { op, error };
        let mut guard = self.ethtool.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(EthtoolSocket::open().map_err(failed("open"))?);
        }
        let Some(socket) = guard.as_mut() else {
            return Ok(false);
        };
        let result = (|| {
            if socket.feature(index, name).map_err(failed("get"))? == on {
                return Ok(false);
            }
            socket.set(index, name, on).map_err(failed("set"))?;
            if socket.feature(index, name).map_err(failed("get"))? != on {
                let state = if on { "off" } else { "on" };
                let kept = std::io::Error::other(format!("the kernel kept {name} {state}"));
                return Err(failed("set")(kept));
            }
            Ok(true)
        })();
        if result.is_err() {
            // A fresh socket next time: the family may have moved, or the socket broke.
            *guard = None;
        }
        result
    }

    /// One op: a flat dispatch to the op's own method.
    async fn apply_one(
        &self,
        op: &Op,
        indices: &mut HashMap<String, u32>,
    ) -> Result<(), KernelError> {
        let index = |name: &str| {
            indices
                .get(name)
                .copied()
                .ok_or_else(|| KernelError::NoDevice(name.to_string()))
        };
        match op {
            Op::CreateLink(link) => self.create_link(link, indices).await,
            Op::ConfigureTunnel(change) => self.tunnels.configure(change),
            Op::DeleteLink { name, .. } => self.delete_link(name, indices).await,
            Op::SetLink { name, mtu, mac, up } => {
                self.set_link(index(name)?, *mtu, mac.as_ref(), *up).await
            }
            Op::AddAddress { device, address } => self.add_address(index(device)?, address).await,
            Op::DelAddress { device, ip, prefix } => {
                self.delete_address(index(device)?, *ip, *prefix).await
            }
            Op::ReplaceNeighbour(n) => self.replace_neighbour(index(&n.device)?, n).await,
            Op::DelNeighbour(n) => self.delete_neighbour_entry(index(&n.device)?, n.ip).await,
            Op::ReplaceFdb(e) => self.replace_fdb(index(&e.device)?, e).await,
            Op::DelFdb(e) => self.delete_fdb(index(&e.device)?, e).await,
            Op::ReplaceRoute(r) => self.replace_route(index(&r.device)?, r).await,
            Op::ReplaceBlackhole(net) => self.replace_blackhole(*net).await,
            Op::DelBlackhole(net) => self.delete_blackhole(*net).await,
            // The device may already be gone (and the route with it).
            Op::DelRoute(r) => match index(&r.device) {
                Ok(oif) => self.delete_route(oif, r).await,
                Err(_) => Ok(()),
            },
            Op::DelNexthop(id) => self.nexthops.lock().await.delete(*id).await,
        }
    }

    async fn create_link(
        &self,
        link: &Link,
        indices: &mut HashMap<String, u32>,
    ) -> Result<(), KernelError> {
        match link {
            Link::Vxlan(vxlan) => self.create_vxlan(vxlan).await?,
            Link::Wireguard(wireguard) => self.tunnels.create(&self.handle, wireguard).await?,
        }
        if let Some((i, _)) = self.link(link.name()).await? {
            indices.insert(link.name().to_string(), i);
        }
        Ok(())
    }

    async fn delete_link(
        &self,
        name: &str,
        indices: &mut HashMap<String, u32>,
    ) -> Result<(), KernelError> {
        let i = indices
            .get(name)
            .copied()
            .ok_or_else(|| KernelError::NoDevice(name.to_string()))?;
        let result = self
            .handle
            .link()
            .del(i)
            .execute()
            .await
            .map_err(netlink("delete link"));
        indices.remove(name);
        gone_is_fine(result)
    }

    async fn set_link(
        &self,
        index: u32,
        mtu: Option<u32>,
        mac: Option<&Mac>,
        up: bool,
    ) -> Result<(), KernelError> {
        let mut builder = LinkUnspec::new_with_index(index);
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        if let Some(mac) = mac {
            builder = builder.address(mac.to_vec());
        }
        if up {
            builder = builder.up();
        }
        self.handle
            .link()
            .set(builder.build())
            .execute()
            .await
            .map_err(netlink("set link"))
    }

    async fn add_address(&self, index: u32, address: &Net) -> Result<(), KernelError> {
        self.handle
            .address()
            .add(index, address.ip(), address.prefix)
            .replace()
            .execute()
            .await
            .map_err(netlink("add address"))
    }

    async fn delete_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<(), KernelError> {
        let found: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(ip)
            .set_prefix_length_filter(prefix)
            .execute()
            .try_collect()
            .await
            .map_err(netlink("find address"))?;
        for message in found {
            gone_is_fine(
                self.handle
                    .address()
                    .del(message)
                    .execute()
                    .await
                    .map_err(netlink("delete address")),
            )?;
        }
        Ok(())
    }

    async fn replace_neighbour(&self, index: u32, n: &Neighbour) -> Result<(), KernelError> {
        self.handle
            .neighbours()
            .add(index, n.ip)
            .link_layer_address(&n.mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(netlink("replace neighbour"))
    }

    async fn delete_neighbour_entry(&self, index: u32, ip: IpAddr) -> Result<(), KernelError> {
        let mut message = NeighbourMessage::default();
        message.header.family = family_of(ip);
        message.header.ifindex = index;
        message
            .attributes
            .push(NeighbourAttribute::Destination(neighbour_address(ip)));
        self.delete_neighbour(message, "delete neighbour").await
    }

    async fn replace_fdb(&self, index: u32, e: &Fdb) -> Result<(), KernelError> {
        self.handle
            .neighbours()
            .add_bridge(index, &e.mac)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .destination(e.destination)
            .replace()
            .execute()
            .await
            .map_err(netlink("replace fdb entry"))
    }

    async fn delete_fdb(&self, index: u32, e: &Fdb) -> Result<(), KernelError> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        message.header.ifindex = index;
        message.header.flags = NeighbourFlags::Own;
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
        message
            .attributes
            .push(NeighbourAttribute::Destination(neighbour_address(
                e.destination,
            )));
        self.delete_neighbour(message, "delete fdb entry").await
    }

    async fn replace_route(&self, oif: u32, r: &Route) -> Result<(), KernelError> {
        if let Some(id) = r.nexthop {
            // The object first: the route names it.
            let gateway = r.gateway.ok_or_else(|| {
                KernelError::Invalid(format!("route {r}: a nexthop object needs a gateway"))
            })?;
            let nexthop = Nexthop {
                id,
                gateway,
                oif,
                onlink: r.onlink,
            };
            self.nexthops.lock().await.ensure(&nexthop).await?;
        }
        let message = route_message(r, oif, RouteProtocol::from(ROUTE_PROTOCOL))
            .ok_or_else(|| mixed_family(r))?;
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(netlink("replace route"))
    }

    async fn replace_blackhole(&self, net: Net) -> Result<(), KernelError> {
        self.handle
            .route()
            .add(blackhole_message(net))
            .replace()
            .execute()
            .await
            .map_err(netlink("replace blackhole route"))
    }

    async fn delete_blackhole(&self, net: Net) -> Result<(), KernelError> {
        gone_is_fine(
            self.handle
                .route()
                .del(blackhole_message(net))
                .execute()
                .await
                .map_err(netlink("delete blackhole route")),
        )
    }

    async fn delete_route(&self, oif: u32, r: &Route) -> Result<(), KernelError> {
        // Any protocol: an adopted route may still carry its installer's (flannel's
        // boot); the kernel deletes only a route with this exact destination, gateway
        // and device.
        let message =
            route_message(r, oif, RouteProtocol::Unspec).ok_or_else(|| mixed_family(r))?;
        gone_is_fine(
            self.handle
                .route()
                .del(message)
                .execute()
                .await
                .map_err(netlink("delete route")),
        )?;
        match r.nexthop {
            Some(id) => self.nexthops.lock().await.delete(id).await,
            None => Ok(()),
        }
    }

    /// Deletes a neighbour or FDB entry; one that is already gone counts as deleted.
    async fn delete_neighbour(
        &self,
        message: NeighbourMessage,
        op: &'static str,
    ) -> Result<(), KernelError> {
        gone_is_fine(
            self.handle
                .neighbours()
                .del(message)
                .execute()
                .await
                .map_err(netlink(op)),
        )
    }

    async fn create_vxlan(&self, link: &VxlanLink) -> Result<(), KernelError> {
        let mut builder = LinkVxlan::new(&link.name, link.vni)
            .dev(link.underlay_index)
            .learning(link.learning);
        builder = match link.local {
            IpAddr::V4(v4) => builder.local(v4),
            IpAddr::V6(v6) => builder.local6(v6),
        };
        if link.port > 0 {
            builder = builder.port(link.port);
        }
        if link.gbp {
            builder = builder.gbp();
        }
        let message = builder
            .mtu(link.mtu)
            .address(link.mac.to_vec())
            .up()
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(netlink("create vxlan device"))?;
        if link.local.is_ipv6() || link.name.contains("-v6") {
            // As flannel: no router advertisements on the tunnel device (best effort).
            let _ = std::fs::write(
                format!("/proc/sys/net/ipv6/conf/{}/accept_ra", link.name),
                "0",
            );
        }
        Ok(())
    }
}

fn mixed_family(route: &Route) -> KernelError {
    KernelError::Invalid(format!("route {route}: address families differ"))
}

fn gone_is_fine(result: Result<(), KernelError>) -> Result<(), KernelError> {
    match result {
        Err(e) if matches!(e.errno(), Some(ENOENT | ESRCH | ENODEV | EADDRNOTAVAIL)) => Ok(()),
        other => other,
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

/// weft's blackhole route for `net`: marked, at the lowest preference.
fn blackhole_message(net: Net) -> RouteMessage {
    let mut message = match net.ip() {
        IpAddr::V4(dst) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, net.prefix)
            .build(),
        IpAddr::V6(dst) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(dst, net.prefix)
            .build(),
    };
    message.header.protocol = RouteProtocol::from(ROUTE_PROTOCOL);
    message.header.kind = RouteType::BlackHole;
    message.header.scope = rtnetlink::packet_route::route::RouteScope::Universe;
    message
        .attributes
        .push(RouteAttribute::Priority(BLACKHOLE_METRIC));
    message
}

/// The netlink message for a route; `None` for a gateway of the other family (never
/// produced by `desired_state`, and never sent: an empty message would mean a default route).
/// A route through a nexthop object names only the object: the kernel refuses a gateway,
/// device or onlink flag next to it (they are the object's).
fn route_message(route: &Route, oif: u32, protocol: RouteProtocol) -> Option<RouteMessage> {
    let prefix = route.destination.prefix;
    if let Some(id) = route.nexthop {
        if route.gateway.map(Family::of) != Some(route.destination.family) {
            return None;
        }
        let mut message = match route.destination.ip() {
            IpAddr::V4(dst) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst, prefix)
                .build(),
            IpAddr::V6(dst) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(dst, prefix)
                .build(),
        };
        message.header.protocol = protocol;
        message.header.kind = RouteType::Unicast;
        message.attributes.push(RouteAttribute::NhId(id.get()));
        return Some(message);
    }
    let mut message = match (route.destination.ip(), route.gateway) {
        (IpAddr::V4(dst), Some(IpAddr::V4(gw))) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .gateway(gw)
            .build(),
        (IpAddr::V6(dst), Some(IpAddr::V6(gw))) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(dst, prefix)
            .gateway(gw)
            .build(),
        // Straight onto the device (WireGuard's route for the whole network).
        (IpAddr::V4(dst), None) => {
            let mut m = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst, prefix)
                .build();
            m.header.scope = rtnetlink::packet_route::route::RouteScope::Link;
            m
        }
        (IpAddr::V6(dst), None) => {
            let mut m = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(dst, prefix)
                .build();
            m.header.scope = rtnetlink::packet_route::route::RouteScope::Link;
            m
        }
        _ => return None,
    };
    message.header.protocol = protocol;
    message.header.kind = RouteType::Unicast;
    message.attributes.push(RouteAttribute::Oif(oif));
    if route.onlink {
        message.header.flags |= RouteFlags::Onlink;
    }
    Some(message)
}

fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

fn mac_from(bytes: &[u8]) -> Option<Mac> {
    bytes.try_into().ok()
}

fn link_mac(link: &LinkMessage) -> Mac {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(bytes) => mac_from(bytes),
            _ => None,
        })
        .unwrap_or_default()
}

/// A device of weft's naming and kind that no backend wants now: a VXLAN device named
/// like vxlan's, a WireGuard device (kernel, or a userspace one with its socket) named
/// like wireguard's.
fn is_stray(link: &ObservedLink, tunnels: &TunnelDriver) -> bool {
    if is_vxlan_device_name(&link.name) {
        return link.vxlan.is_some();
    }
    crate::desired::is_wireguard_device_name(&link.name)
        && match link.kind.as_deref() {
            Some("wireguard") => true,
            Some("tun") => tunnels.is_userspace(&link.name),
            _ => false,
        }
}

fn observed_link(link: &LinkMessage, name: &str) -> ObservedLink {
    let mut observed = ObservedLink {
        index: link.header.index,
        name: name.to_string(),
        kind: None,
        tunnel: None,
        vxlan: None,
        mtu: 0,
        mac: link_mac(link),
        up: link.header.flags.contains(LinkFlags::Up),
        addresses: Vec::new(),
    };
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::Mtu(mtu) => observed.mtu = *mtu,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Data(InfoData::Vxlan(vxlan)) => {
                            observed.vxlan = Some(vxlan_attrs(vxlan));
                        }
                        LinkInfo::Kind(kind) => observed.kind = Some(kind_name(kind)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    observed
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Other(name) => name.clone(),
        other => other.to_string(),
    }
}

fn vxlan_attrs(infos: &[InfoVxlan]) -> VxlanAttrs {
    let mut attrs = VxlanAttrs {
        vni: 0,
        port: 0,
        local: None,
        underlay_index: 0,
        learning: true,
        gbp: false,
    };
    for info in infos {
        match info {
            InfoVxlan::Id(id) => attrs.vni = *id,
            InfoVxlan::Port(port) => attrs.port = *port,
            InfoVxlan::Local(ip) => attrs.local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => attrs.local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Link(index) => attrs.underlay_index = *index,
            InfoVxlan::Learning(learning) => attrs.learning = *learning,
            InfoVxlan::Gbp => attrs.gbp = true,
            _ => {}
        }
    }
    attrs
}

/// A main-table route that matters to a pass.
pub(super) enum SeenRoute {
    Ours(ObservedRoute),
    Foreign(ForeignRoute),
    /// One of weft's blackhole routes.
    Blackhole(Net),
}

/// Sorts a dumped route: weft's own (marked with its protocol, or through its devices:
/// those are the overlay's, e.g. adopted from flannel), a foreign route on a prefix
/// weft wants, or irrelevant.
pub(super) fn classify_route<N: Clone + Into<DeviceName> + std::fmt::Display>(
    message: &RouteMessage,
    names: &HashMap<u32, N>,
    ours: &HashMap<u32, String>,
    desired: &Desired,
) -> Option<SeenRoute> {
    if route_table(message) != MAIN_TABLE {
        return None;
    }
    let mut destination = None;
    let mut gateway = None;
    let mut oif = None;
    let mut nexthop = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(d) => destination = route_address(d),
            RouteAttribute::Gateway(g) => gateway = route_address(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::NhId(id) => nexthop = NonZeroU32::new(*id),
            _ => {}
        }
    }
    let prefix = message.header.destination_prefix_length;
    let destination = match destination {
        Some(ip) => Net::new_masked(ip, prefix),
        // A default route has no destination attribute.
        None => Net::new_masked(
            match message.header.address_family {
                AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            },
            0,
        ),
    };
    let marked = message.header.protocol == RouteProtocol::from(ROUTE_PROTOCOL);
    if message.header.kind == RouteType::BlackHole && marked {
        return Some(SeenRoute::Blackhole(destination));
    }
    let owned = message.header.kind == RouteType::Unicast
        && (message.header.protocol == RouteProtocol::from(ROUTE_PROTOCOL)
            || oif.is_some_and(|i| ours.contains_key(&i)));
    if !owned {
        if !desired.routes.contains_key(&destination) {
            return None;
        }
        let device = oif.map(|i| {
            names
                .get(&i)
                .map_or_else(|| format!("ifindex {i}"), ToString::to_string)
        });
        return Some(SeenRoute::Foreign(ForeignRoute {
            destination,
            description: describe_foreign(message, destination, gateway, device),
        }));
    }
    // Unmarked routes of our own devices without a gateway (IPv6 link-local, the
    // kernel's prefix routes) are not ours to manage; marked ones (WireGuard's route for
    // the network) are.
    if gateway.is_none() && (!marked || nexthop.is_some()) {
        return None;
    }
    let oif = oif?;
    Some(SeenRoute::Ours(ObservedRoute {
        route: Route {
            destination,
            gateway,
            device: names
                .get(&oif)
                .cloned()
                .map_or_else(|| format!("ifindex {oif}").into(), Into::into),
            onlink: message.header.flags.contains(RouteFlags::Onlink),
            nexthop,
        },
        marked,
    }))
}

/// `ip route`-style text for a foreign route, for the conflict message.
fn describe_foreign(
    message: &RouteMessage,
    destination: Net,
    gateway: Option<IpAddr>,
    device: Option<String>,
) -> String {
    let mut text = String::new();
    if message.header.kind != RouteType::Unicast {
        text.push_str(&format!("{:?} ", message.header.kind).to_lowercase());
    }
    text.push_str(&destination.to_string());
    if let Some(gateway) = gateway {
        text.push_str(&format!(" via {gateway}"));
    }
    if let Some(device) = device {
        text.push_str(&format!(" dev {device}"));
    }
    let protocol = match message.header.protocol {
        RouteProtocol::Kernel => "kernel".to_string(),
        RouteProtocol::Boot => "boot".to_string(),
        RouteProtocol::Static => "static".to_string(),
        other => u8::from(other).to_string(),
    };
    text.push_str(&format!(" proto {protocol}"));
    text
}

/// The IP of NDA_DST; in AF_BRIDGE dumps it comes back as raw bytes.
fn neighbour_ip(address: &NeighbourAddress) -> Option<IpAddr> {
    match address {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        NeighbourAddress::Other(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes.as_slice())
                .ok()
                .map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            16 => <[u8; 16]>::try_from(bytes.as_slice())
                .ok()
                .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
            _ => None,
        },
        _ => None,
    }
}

/// (destination IP, link-layer address) of a neighbour or FDB message.
pub(super) fn neighbour_fields(message: &NeighbourMessage) -> (Option<IpAddr>, Option<Mac>) {
    let mut ip = None;
    let mut lladdr = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(address) => ip = neighbour_ip(address),
            NeighbourAttribute::LinkLayerAddress(bytes) => lladdr = mac_from(bytes),
            _ => {}
        }
    }
    (ip, lladdr)
}

fn observed_neighbour(message: &NeighbourMessage, device: &DeviceName) -> Option<Neighbour> {
    if message.header.state != NeighbourState::Permanent {
        return None;
    }
    let (ip, mac) = neighbour_fields(message);
    Some(Neighbour {
        device: device.clone(),
        ip: ip?,
        mac: mac?,
    })
}

fn observed_fdb(message: &NeighbourMessage, device: &DeviceName) -> Option<Fdb> {
    let (destination, lladdr) = neighbour_fields(message);
    let mac_address = lladdr.filter(mac::is_unicast)?;
    Some(Fdb {
        device: device.clone(),
        mac: mac_address,
        destination: destination?,
    })
}

/// An address message's address: its local address (point-to-point), else its address.
fn address_of(message: &AddressMessage) -> Option<IpAddr> {
    let attribute = |local: bool| {
        message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) if local => Some(*ip),
            AddressAttribute::Address(ip) if !local => Some(*ip),
            _ => None,
        })
    };
    attribute(true).or_else(|| attribute(false))
}

/// Routes of the main table, sorted into weft's, foreign ones over wanted prefixes, and
/// weft's blackholes.
async fn observe_routes(
    dumper: &mut Dumper,
    desired: &Desired,
    names: &HashMap<u32, DeviceName>,
    ours: &HashMap<u32, String>,
    observed: &mut Observed,
) -> Result<(), KernelError> {
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        // The main table only (filtered by the kernel under strict checking).
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        request.header.table = MAIN_TABLE as u8;
        let sort = |message| {
            let RouteNetlinkMessage::NewRoute(message) = message else {
                return;
            };
            match classify_route(&message, names, ours, desired) {
                Some(SeenRoute::Ours(route)) => observed.routes.push(route),
                Some(SeenRoute::Foreign(route)) => observed.foreign_routes.push(route),
                Some(SeenRoute::Blackhole(net)) => observed.blackholes.push(net),
                None => {}
            }
        };
        dumper
            .dump(RouteNetlinkMessage::GetRoute(request), "dump routes", sort)
            .await?;
    }
    Ok(())
}

/// Neighbours and FDB entries of weft's devices only: one dump per device and kind,
/// filtered by the kernel (NDA_IFINDEX; for FDB the bridge-port index in the header).
async fn observe_entries(
    dumper: &mut Dumper,
    ours: &HashMap<u32, String>,
    observed: &mut Observed,
) -> Result<(), KernelError> {
    let mut devices: Vec<(&u32, &String)> = ours.iter().collect();
    devices.sort();
    for (&index, device) in devices {
        let device = &DeviceName::from(device);
        for family in [AddressFamily::Unspec, AddressFamily::Bridge] {
            let fdb = family == AddressFamily::Bridge;
            let mut request = NeighbourMessage::default();
            request.header.family = family;
            if fdb {
                request.header.ifindex = index;
            } else {
                request.attributes.push(NeighbourAttribute::IfIndex(index));
            }
            let op = if fdb { "dump fdb" } else { "dump neighbours" };
            let keep = |message| {
                let RouteNetlinkMessage::NewNeighbour(message) = message else {
                    return;
                };
                if message.header.ifindex != index {
                    return;
                }
                if fdb {
                    observed.fdb.extend(observed_fdb(&message, device));
                } else {
                    observed
                        .neighbours
                        .extend(observed_neighbour(&message, device));
                }
            };
            dumper
                .dump(RouteNetlinkMessage::GetNeighbour(request), op, keep)
                .await?;
        }
    }
    Ok(())
}
