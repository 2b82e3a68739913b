//! Netlink notifications about links, addresses, routes and neighbours, reduced to what
//! the reconciler needs to decide whether to run, and what to repair: which object
//! changed, and how (a route's prefix, a neighbour's IP, an FDB entry's MAC, so a deleted
//! entry can be repaired alone).

use super::KernelError;
use super::executor::neighbour_fields;
use crate::mac::Mac;
use futures::StreamExt;
use rtnetlink::MulticastGroup;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::NeighbourMessage;
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteType};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use tokio::sync::mpsc;
use weft_lease::family::Net;

/// A kernel change, as far as reconciliation cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    Link {
        index: u32,
        name: Option<String>,
        /// The link's MTU, when the message carries it (the underlay's is followed).
        mtu: Option<u32>,
        deleted: bool,
    },
    Address {
        index: u32,
    },
    Route {
        oif: Option<u32>,
        protocol: u8,
        deleted: bool,
        /// The prefix, for a unicast route of the main table (`None` for other tables
        /// and types, whose changes concern no single entry weft programs).
        destination: Option<Net>,
    },
    /// A neighbour (ARP/ND) entry, or with `bridge` an FDB entry.
    Neighbour {
        ifindex: u32,
        deleted: bool,
        bridge: bool,
        ip: Option<IpAddr>,
        mac: Option<Mac>,
    },
    /// A nexthop object (deleting one deletes the routes through it, without route
    /// notifications).
    Nexthop {
        id: u32,
        protocol: u8,
        deleted: bool,
    },
    /// Notifications were lost (socket overrun): everything must be re-read.
    Overrun,
}

/// Subscribes to link, address, route, neighbour and nexthop notifications.
pub fn subscribe() -> Result<mpsc::UnboundedReceiver<KernelEvent>, KernelError> {
    let (connection, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Neigh,
    ])
    .map_err(KernelError::Socket)?;
    tokio::spawn(connection);
    let (sender, receiver) = mpsc::unbounded_channel();
    super::nexthop::watch(sender.clone())?;
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            let event = match message.payload {
                NetlinkPayload::InnerMessage(inner) => convert(inner),
                NetlinkPayload::Overrun(_) => Some(KernelEvent::Overrun),
                _ => None,
            };
            // weft's own additions are never of interest (see the datapath's
            // `is_relevant`): dropped here, so a first pass's 45,000 changes at 15,000
            // peers do not queue as many notifications.
            if let Some(event) = event.filter(|e| !is_own_addition(e))
                && sender.send(event).is_err()
            {
                return;
            }
        }
    });
    Ok(receiver)
}

/// A neighbour or FDB entry added or replaced, or a route added or replaced with weft's
/// route protocol: what weft's own passes do, and nothing a pass must react to.
pub fn is_own_addition(event: &KernelEvent) -> bool {
    match event {
        KernelEvent::Neighbour { deleted, .. } => !deleted,
        KernelEvent::Route {
            deleted, protocol, ..
        } => !deleted && *protocol == crate::ROUTE_PROTOCOL,
        _ => false,
    }
}

fn convert(message: RouteNetlinkMessage) -> Option<KernelEvent> {
    let link = |m: &rtnetlink::packet_route::link::LinkMessage, deleted| KernelEvent::Link {
        index: m.header.index,
        name: m.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        }),
        mtu: m.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        }),
        deleted,
    };
    let route = |m: &RouteMessage, deleted| KernelEvent::Route {
        oif: m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        }),
        protocol: u8::from(m.header.protocol),
        deleted,
        destination: unicast_main_destination(m),
    };
    let neighbour = |m: &NeighbourMessage, deleted| {
        let (ip, mac) = neighbour_fields(m);
        KernelEvent::Neighbour {
            ifindex: m.header.ifindex,
            deleted,
            bridge: m.header.family == AddressFamily::Bridge,
            ip,
            mac,
        }
    };
    Some(match message {
        RouteNetlinkMessage::NewLink(m) => link(&m, false),
        RouteNetlinkMessage::DelLink(m) => link(&m, true),
        RouteNetlinkMessage::NewAddress(m) | RouteNetlinkMessage::DelAddress(m) => {
            KernelEvent::Address {
                index: m.header.index,
            }
        }
        RouteNetlinkMessage::NewRoute(m) => route(&m, false),
        RouteNetlinkMessage::DelRoute(m) => route(&m, true),
        RouteNetlinkMessage::NewNeighbour(m) => neighbour(&m, false),
        RouteNetlinkMessage::DelNeighbour(m) => neighbour(&m, true),
        _ => return None,
    })
}

/// The prefix of a unicast main-table route (a default route has no destination
/// attribute: the family's zero prefix).
fn unicast_main_destination(m: &RouteMessage) -> Option<Net> {
    if super::route_table(m) != super::MAIN_TABLE || m.header.kind != RouteType::Unicast {
        return None;
    }
    let ip = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(d) => super::route_address(d),
            _ => None,
        })
        .unwrap_or(match m.header.address_family {
            AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        });
    Some(Net::new_masked(ip, m.header.destination_prefix_length))
}
