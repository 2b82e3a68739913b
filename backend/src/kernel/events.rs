//! Netlink notifications about links, addresses, routes and neighbours, reduced to what
//! the reconciler needs to decide whether to run: which object changed, and how.

use super::KernelError;
use futures::StreamExt;
use rtnetlink::MulticastGroup;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::LinkAttribute;
use tokio::sync::mpsc;

/// A kernel change, as far as reconciliation cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    Link {
        index: u32,
        name: Option<String>,
        deleted: bool,
    },
    Address {
        index: u32,
    },
    Route {
        oif: Option<u32>,
        protocol: u8,
        deleted: bool,
    },
    Neighbour {
        ifindex: u32,
        deleted: bool,
    },
    /// Notifications were lost (socket overrun): everything must be re-read.
    Overrun,
}

/// Subscribes to link, address, route and neighbour notifications.
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
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            let event = match message.payload {
                NetlinkPayload::InnerMessage(inner) => convert(inner),
                NetlinkPayload::Overrun(_) => Some(KernelEvent::Overrun),
                _ => None,
            };
            if let Some(event) = event
                && sender.send(event).is_err()
            {
                return;
            }
        }
    });
    Ok(receiver)
}

fn convert(message: RouteNetlinkMessage) -> Option<KernelEvent> {
    let link = |m: &rtnetlink::packet_route::link::LinkMessage, deleted| KernelEvent::Link {
        index: m.header.index,
        name: m.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        }),
        deleted,
    };
    let route = |m: &rtnetlink::packet_route::route::RouteMessage, deleted| KernelEvent::Route {
        oif: m.attributes.iter().find_map(|a| match a {
            rtnetlink::packet_route::route::RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        }),
        protocol: u8::from(m.header.protocol),
        deleted,
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
        RouteNetlinkMessage::NewNeighbour(m) => KernelEvent::Neighbour {
            ifindex: m.header.ifindex,
            deleted: false,
        },
        RouteNetlinkMessage::DelNeighbour(m) => KernelEvent::Neighbour {
            ifindex: m.header.ifindex,
            deleted: true,
        },
        _ => return None,
    })
}
