//! Which nexthop object (`ip nexthop`, Linux ≥ 5.3) each peer route uses.
//!
//! Why: the kernel finds a route's shared next-hop record (`fib_info`) through a hash of
//! its device, protocol, scope, source and metric, not its gateway. flannel's route shape
//! (`<subnet> via <subnet address> dev flannel.1 onlink`) gives every peer route the same
//! hash, so each insert walks a chain of all earlier ones: 15,000 peers cost the kernel
//! 3.65 s from scratch and 0.49 ms per added route (docs/benchmarks.md). A route that
//! names a nexthop object by id (`<subnet> nhid <id>`) hashes by that id: 0.39 s and
//! 0.035 ms. The route forwards exactly as before; `ip route` shows `nhid <id>` next to
//! the same `via … dev … onlink`.
//!
//! Ids are a pure function of the route's destination, so every pass, a restart and the
//! targeted path agree without bookkeeping: the subnet's index in the cluster network
//! (admission guarantees every peer subnet lies in the network with this node's prefix
//! length, so indices are distinct) plus a base per family. A family whose network holds
//! more than 2^28 subnets gets plain gateway routes (its indices would not fit), as does
//! every family when the kernel has no nexthop objects or the operator turned them off.
//! An id that another program's nexthop holds is never taken over: the route is installed
//! the plain way instead (see [`crate::desired::Desired::demote_taken_nexthops`]).

use crate::desired::Desired;
use std::num::NonZeroU32;
use weft_lease::family::{Family, Net, from_u128};

/// The first id of IPv4 routes' nexthops; IPv6's follow at [`V6_BASE`]. High enough to
/// stay clear of the small ids people and tools pick by hand.
pub const V4_BASE: u32 = 0x1000_0000;
pub const V6_BASE: u32 = 0x2000_0000;
/// Index bits per family: the ids of a family stay inside their 2^28 block.
const INDEX_BITS: u32 = 28;

/// The nexthop ids for this node's peer routes (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NexthopPlan {
    v4: Option<Span>,
    v6: Option<Span>,
}

/// A cluster network and the prefix length of its subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    network: Net,
    subnet_prefix: u8,
}

impl NexthopPlan {
    /// No nexthop objects: every route the plain way.
    pub fn off() -> NexthopPlan {
        NexthopPlan::default()
    }

    /// Nexthop objects for the routes to subnets of `prefix_v4` (`prefix_v6`) inside
    /// `network_v4` (`network_v6`), where the network's subnets can be numbered.
    pub fn new(
        network_v4: Option<Net>,
        prefix_v4: Option<u8>,
        network_v6: Option<Net>,
        prefix_v6: Option<u8>,
    ) -> NexthopPlan {
        let span = |network: Option<Net>, prefix: Option<u8>| {
            let (network, subnet_prefix) = (network?, prefix?);
            let fits = subnet_prefix >= network.prefix
                && u32::from(subnet_prefix - network.prefix) <= INDEX_BITS
                && subnet_prefix <= network.family.width();
            fits.then_some(Span {
                network,
                subnet_prefix,
            })
        };
        NexthopPlan {
            v4: span(network_v4, prefix_v4),
            v6: span(network_v6, prefix_v6),
        }
    }

    /// Whether any route gets a nexthop object.
    pub fn is_on(&self) -> bool {
        self.v4.is_some() || self.v6.is_some()
    }

    /// The nexthop id of the route to `destination`; `None`: a plain gateway route.
    pub fn id_for(&self, destination: &Net) -> Option<NonZeroU32> {
        let (span, base) = match destination.family {
            Family::V4 => (self.v4?, V4_BASE),
            Family::V6 => (self.v6?, V6_BASE),
        };
        let (addr, prefix) = (destination.addr, destination.prefix);
        if prefix != span.subnet_prefix || !span.network.contains(addr) {
            return None;
        }
        let host_bits = u32::from(destination.family.width() - prefix);
        let index = (addr - span.network.addr)
            .checked_shr(host_bits)
            .unwrap_or(0);
        let index = u32::try_from(index).ok().filter(|i| *i < 1 << INDEX_BITS)?;
        NonZeroU32::new(base + index)
    }

    /// The destination of the route whose nexthop id is `id` (the inverse of
    /// [`NexthopPlan::id_for`]).
    pub fn destination_of(&self, id: NonZeroU32) -> Option<Net> {
        let id = id.get();
        let (span, index) = if (V4_BASE..V6_BASE).contains(&id) {
            (self.v4?, id - V4_BASE)
        } else {
            (self.v6?, id.checked_sub(V6_BASE)?)
        };
        if index >= 1 << (span.subnet_prefix - span.network.prefix).min(INDEX_BITS as u8) {
            return None;
        }
        let family = span.network.family;
        let host_bits = u32::from(family.width() - span.subnet_prefix);
        let addr = span.network.addr + (u128::from(index) << host_bits);
        Some(Net::new_masked(from_u128(family, addr), span.subnet_prefix))
    }

    /// Sets every route's nexthop id by this plan.
    pub fn assign(&self, desired: &mut Desired) {
        for route in desired.routes.values_mut() {
            route.nexthop = self.id_for(&route.destination);
        }
    }

    /// Whether `id` is one this plan could hand out (weft's block of ids).
    pub fn in_range(id: u32) -> bool {
        (V4_BASE..V6_BASE + (1 << INDEX_BITS)).contains(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Net {
        let (ip, prefix) = text.split_once('/').unwrap();
        Net::new_masked(ip.parse().unwrap(), prefix.parse().unwrap())
    }

    fn plan() -> NexthopPlan {
        NexthopPlan::new(
            Some(net("10.0.0.0/8")),
            Some(24),
            Some(net("fd00:10::/48")),
            Some(64),
        )
    }

    fn id(plan: &NexthopPlan, destination: &str) -> Option<u32> {
        plan.id_for(&net(destination)).map(NonZeroU32::get)
    }

    #[test]
    fn ids_number_the_subnets_of_the_network_per_family() {
        let plan = plan();
        assert_eq!(id(&plan, "10.0.0.0/24"), Some(V4_BASE));
        assert_eq!(id(&plan, "10.0.1.0/24"), Some(V4_BASE + 1));
        assert_eq!(id(&plan, "10.255.255.0/24"), Some(V4_BASE + 0xffff));
        assert_eq!(id(&plan, "fd00:10:0:0::/64"), Some(V6_BASE));
        assert_eq!(id(&plan, "fd00:10:0:7::/64"), Some(V6_BASE + 7));
    }

    #[test]
    fn an_id_leads_back_to_its_destination() {
        let plan = plan();
        for destination in [
            "10.0.0.0/24",
            "10.7.3.0/24",
            "10.255.255.0/24",
            "fd00:10:0:ff::/64",
        ] {
            let id = plan.id_for(&net(destination)).unwrap();
            assert_eq!(
                plan.destination_of(id),
                Some(net(destination)),
                "{destination}"
            );
        }
        // Beyond the network's subnets, in no family's block, or with the plan off.
        let nz = |id| NonZeroU32::new(id).unwrap();
        assert_eq!(plan.destination_of(nz(V4_BASE + 0x1_0000)), None);
        assert_eq!(plan.destination_of(nz(5)), None);
        assert_eq!(plan.destination_of(nz(u32::MAX)), None);
        assert_eq!(NexthopPlan::off().destination_of(nz(V4_BASE)), None);
    }

    #[test]
    fn routes_outside_the_plan_are_plain() {
        let plan = plan();
        // Another prefix length, outside the network, or a family without a plan.
        assert_eq!(id(&plan, "10.0.1.0/25"), None);
        assert_eq!(id(&plan, "11.0.1.0/24"), None);
        let v4_only = NexthopPlan::new(Some(net("10.0.0.0/8")), Some(24), None, None);
        assert_eq!(id(&v4_only, "fd00:10:0:7::/64"), None);
        assert_eq!(id(&NexthopPlan::off(), "10.0.1.0/24"), None);
        assert!(!NexthopPlan::off().is_on());
    }

    #[test]
    fn a_network_with_more_subnets_than_ids_gets_plain_routes() {
        // 2^32 subnets of /64 in a /32: they cannot all be numbered in 28 bits.
        let wide = NexthopPlan::new(None, None, Some(net("fd00::/32")), Some(64));
        assert!(!wide.is_on());
        let widest_that_fits = NexthopPlan::new(Some(net("0.0.0.0/2")), Some(30), None, None);
        assert_eq!(
            id(&widest_that_fits, "63.255.255.252/30"),
            Some(V4_BASE + (1 << 28) - 1)
        );
    }

    #[test]
    fn every_id_is_in_weft_range_and_distinct_per_subnet() {
        let plan = plan();
        let mut seen = std::collections::HashSet::new();
        for i in 0..=255u32 {
            for subnet in [format!("10.{i}.3.0/24"), format!("fd00:10:0:{i:x}::/64")] {
                let id = id(&plan, &subnet).unwrap();
                assert!(NexthopPlan::in_range(id), "{subnet}: {id:#x}");
                assert!(seen.insert(id), "{subnet}: {id:#x} twice");
            }
        }
        assert!(!NexthopPlan::in_range(V4_BASE - 1));
        assert!(!NexthopPlan::in_range(V6_BASE + (1 << 28)));
    }
}
