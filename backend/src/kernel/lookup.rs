//! Reading one route prefix, not the table: the incremental path asks whether a prefix
//! it is about to program holds a route already (a foreign one is never replaced).

use super::KernelError;
use super::executor::{SeenRoute, classify_route};
use crate::desired::{Desired, ForeignRoute, ObservedRoute, Route};
use futures::TryStreamExt;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::route::{RouteFlags, RouteMessage};
use std::collections::HashMap;
use std::net::IpAddr;
use weft_lease::family::Net;

const ENETUNREACH: i32 = 101;
const EHOSTUNREACH: i32 = 113;

/// What the main table holds at exactly one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAt {
    /// No route at this prefix.
    Nothing,
    /// A route weft owns (marked, or through one of its devices).
    Ours(ObservedRoute),
    /// A route weft does not own: never replaced.
    Foreign(ForeignRoute),
    /// The lookup cannot tell (a more specific route, or another table answered): only
    /// a full observation can.
    Unknown,
}

impl super::Kernel {
    /// What the main table holds at `route`'s prefix, by one `ip route get fibmatch`
    /// (O(1), not a dump). `ours` maps weft's device indices to their names.
    pub async fn route_at(
        &self,
        route: &Route,
        ours: &HashMap<u32, String>,
    ) -> Result<RouteAt, KernelError> {
        let net = route.destination;
        let Some(message) = self.fib_match(net).await? else {
            return Ok(RouteAt::Nothing);
        };
        let found = message.header.destination_prefix_length;
        if found > net.prefix || super::route_table(&message) != super::MAIN_TABLE {
            return Ok(RouteAt::Unknown);
        }
        if found < net.prefix {
            // The longest match is shorter: nothing sits at this prefix.
            return Ok(RouteAt::Nothing);
        }
        let names = self.link_names().await?;
        let mut desired = Desired::default();
        desired.add_route(route.clone());
        Ok(match classify_route(&message, &names, ours, &desired) {
            Some(SeenRoute::Ours(observed)) => RouteAt::Ours(observed),
            Some(SeenRoute::Foreign(foreign)) => RouteAt::Foreign(foreign),
            Some(SeenRoute::Blackhole(_)) | None => RouteAt::Unknown,
        })
    }

    /// The FIB entry that routes `net`'s first address; `None` when nothing does.
    async fn fib_match(&self, net: Net) -> Result<Option<RouteMessage>, KernelError> {
        let mut request = match net.ip() {
            IpAddr::V4(v4) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(v4, 32)
                .build(),
            IpAddr::V6(v6) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(v6, 128)
                .build(),
        };
        request.header.flags = RouteFlags::FibMatch;
        let mut stream = self.handle.route().get(request).execute();
        match stream.try_next().await {
            Ok(message) => Ok(message),
            Err(e) => {
                let e = super::netlink("get route")(e);
                match e.errno() {
                    Some(ENETUNREACH | EHOSTUNREACH) => Ok(None),
                    _ => Err(e),
                }
            }
        }
    }

    async fn link_names(&self) -> Result<HashMap<u32, String>, KernelError> {
        let links: Vec<_> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(super::netlink("dump links"))?;
        Ok(links
            .iter()
            .filter_map(|l| {
                l.attributes.iter().find_map(|a| match a {
                    rtnetlink::packet_route::link::LinkAttribute::IfName(n) => {
                        Some((l.header.index, n.clone()))
                    }
                    _ => None,
                })
            })
            .collect())
    }
}
