//! Reads the host's interfaces, addresses and main-table routes as plain values, so that
//! interface selection can be a pure function over a snapshot.

use super::{KernelError, MAIN_TABLE, connect, netlink, route_address, route_table};
use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::{IpVersion, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddress {
    pub ip: IpAddr,
    pub prefix: u8,
    /// Configured by hand (IFA_F_PERMANENT) rather than learned (DHCP, SLAAC).
    pub permanent: bool,
    pub deprecated: bool,
    /// An IPv6 privacy (temporary) address.
    pub temporary: bool,
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub up: bool,
    pub loopback: bool,
    pub addresses: Vec<HostAddress>,
}

/// One route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    /// Whether this is an IPv6 route.
    pub ipv6: bool,
    /// `None` for a default route.
    pub destination: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub output_interface: Option<u32>,
    pub preferred_source: Option<IpAddr>,
}

/// Links with their addresses, and main-table routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSnapshot {
    pub links: Vec<HostLink>,
    pub routes: Vec<HostRoute>,
}

/// Reads links, addresses and main-table routes of the current network namespace.
pub async fn read_host() -> Result<HostSnapshot, KernelError> {
    let handle = connect()?;
    let mut links = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(message) = stream.try_next().await.map_err(netlink("dump links"))? {
        let mut link = HostLink {
            index: message.header.index,
            name: String::new(),
            mtu: 0,
            up: message.header.flags.contains(LinkFlags::Up),
            loopback: message.header.flags.contains(LinkFlags::Loopback),
            addresses: Vec::new(),
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name.clone_from(name),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                _ => {}
            }
        }
        links.push(link);
    }
    let mut stream = handle.address().get().execute();
    while let Some(message) = stream.try_next().await.map_err(netlink("dump addresses"))? {
        let mut ip = None;
        let mut local = None;
        let mut flags = AddressFlags::from_bits_retain(u32::from(message.header.flags.bits()));
        for attribute in &message.attributes {
            match attribute {
                AddressAttribute::Address(a) => ip = Some(*a),
                AddressAttribute::Local(a) => local = Some(*a),
                AddressAttribute::Flags(f) => flags = *f,
                _ => {}
            }
        }
        // For point-to-point links IFA_LOCAL is the own address; otherwise both agree.
        let Some(ip) = local.or(ip) else { continue };
        let address = HostAddress {
            ip,
            prefix: message.header.prefix_len,
            permanent: flags.contains(AddressFlags::Permanent),
            deprecated: flags.contains(AddressFlags::Deprecated),
            // IFA_F_TEMPORARY shares its bit with IFA_F_SECONDARY; it only means
            // "temporary" for IPv6.
            temporary: ip.is_ipv6() && flags.contains(AddressFlags::Secondary),
        };
        if let Some(link) = links.iter_mut().find(|l| l.index == message.header.index) {
            link.addresses.push(address);
        }
    }
    let mut routes = Vec::new();
    for version in [IpVersion::V4, IpVersion::V6] {
        let request = match version {
            IpVersion::V4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            IpVersion::V6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let mut stream = handle.route().get(request).execute();
        while let Some(message) = stream.try_next().await.map_err(netlink("dump routes"))? {
            if route_table(&message) == MAIN_TABLE {
                routes.push(host_route(&message));
            }
        }
    }
    Ok(HostSnapshot { links, routes })
}

/// Asks the kernel which route it would use to reach `destination` (`ip route get`).
pub async fn route_to(destination: IpAddr) -> Result<Option<HostRoute>, KernelError> {
    let handle = connect()?;
    let request = match destination {
        IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(v4, 32)
            .build(),
        IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(v6, 128)
            .build(),
    };
    let mut stream = handle.route().get(request).execute();
    match stream.try_next().await {
        Ok(message) => Ok(message.as_ref().map(host_route)),
        // ENETUNREACH and friends: there is simply no route.
        Err(rtnetlink::Error::NetlinkError(_)) => Ok(None),
        Err(cause) => Err(KernelError::Netlink {
            op: "route get",
            cause,
        }),
    }
}

fn host_route(message: &RouteMessage) -> HostRoute {
    let mut route = HostRoute {
        ipv6: message.header.address_family == rtnetlink::packet_route::AddressFamily::Inet6,
        destination: None,
        gateway: None,
        output_interface: None,
        preferred_source: None,
    };
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(d) => {
                route.destination =
                    route_address(d).map(|ip| (ip, message.header.destination_prefix_length));
            }
            RouteAttribute::Gateway(g) => route.gateway = route_address(g),
            RouteAttribute::Oif(i) => route.output_interface = Some(*i),
            RouteAttribute::PrefSource(s) => route.preferred_source = route_address(s),
            _ => {}
        }
    }
    // A 0/0 destination attribute is also a default route.
    if matches!(route.destination, Some((_, 0))) {
        route.destination = None;
    }
    route
}
