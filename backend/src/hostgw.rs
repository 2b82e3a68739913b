//! The host-gw backend, wire-compatible with flannel's: no device and no encapsulation,
//! one route per peer, `<peer subnet> via <peer public IP> dev <external interface>`,
//! marked with weft's route protocol so the same reconcile repairs and sweeps it.
//!
//! Differences from flannel: a peer whose public IP is not on a network directly
//! connected to the external interface (its route could never work) is skipped with a
//! reason, instead of a dead route and a kernel error every 10 s; routes are kept by the
//! level-triggered reconcile rather than flannel's 10 s route check.

use crate::adjacency;
use crate::desired::{Desired, DeviceName, Route, SkipKind, Skipped};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use weft_lease::family::{Family, Net};
use weft_lease::{Lease, LeaseAttrs, SubnetKey};

/// flannel's NAT check, with its message: host-gw routes via the public IP, so it must be
/// the interface's own address.
pub const NAT_MESSAGE: &str = "your PublicIP differs from interface IP, meaning that probably \
                               you're on a NAT, which is not supported by host-gw backend";

/// This node's side of host-gw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub own: SubnetKey,
    pub external_name: String,
    pub external_mtu: u32,
    /// Networks directly connected to the external interface.
    pub connected: Vec<Net>,
}

impl Node {
    /// The attributes this node publishes: no BackendData (kube: `backend-data` is null).
    pub fn lease_attrs(
        &self,
        public_v4: Option<Ipv4Addr>,
        public_v6: Option<Ipv6Addr>,
    ) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: public_v4.unwrap_or(Ipv4Addr::UNSPECIFIED),
            public_ipv6: public_v6,
            backend_type: "host-gw".into(),
            backend_data: None,
            backend_v6_data: None,
        }
    }
}

/// The routes wanted for `peers`, and the peers that cannot have one.
pub fn desired_state<'a>(
    node: &Node,
    peers: impl IntoIterator<Item = &'a Lease>,
) -> (Desired, Vec<Skipped>) {
    let mut desired = Desired::default();
    let mut skipped = Vec::new();
    let device = DeviceName::from(&node.external_name);
    for peer in peers {
        if peer.attrs.backend_type != "host-gw" {
            skipped.push(Skipped::other_backend(peer, "host-gw"));
            continue;
        }
        let v4 = node
            .own
            .ipv4
            .and(peer.key.ipv4)
            .map(|subnet| (subnet, Some(IpAddr::V4(peer.attrs.public_ip)), Family::V4));
        let v6 = node
            .own
            .ipv6
            .and(peer.key.ipv6)
            .map(|subnet| (subnet, peer.attrs.public_ipv6.map(IpAddr::V6), Family::V6));
        for (subnet, public_ip, family) in v4.into_iter().chain(v6) {
            match route_for(node, &device, subnet, public_ip, family) {
                Ok(route) => desired.add_route(route),
                Err((kind, reason)) => skipped.push(Skipped {
                    key: peer.key,
                    kind,
                    reason,
                }),
            }
        }
    }
    (desired, skipped)
}

fn route_for(
    node: &Node,
    device: &DeviceName,
    subnet: Net,
    public_ip: Option<IpAddr>,
    family: Family,
) -> Result<Route, (SkipKind, String)> {
    let Some(gateway) = public_ip.filter(|ip| !ip.is_unspecified()) else {
        return Err((
            SkipKind::NoPublicIp,
            format!("it has no {family:?} public IP"),
        ));
    };
    if !adjacency::on_link(&node.connected, gateway) {
        return Err((
            SkipKind::NotOnLink,
            format!(
                "its public IP {gateway} is not on a network directly connected to {} ({}): \
             host-gw needs every node on one L2 segment, and a route via it could never work",
                node.external_name,
                adjacency::describe(&node.connected, family)
            ),
        ));
    }
    Ok(Route {
        destination: subnet,
        gateway: Some(gateway),
        device: device.clone(),
        onlink: false,
        nexthop: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(own: &str) -> Node {
        Node {
            own: SubnetKey::parse(own).unwrap(),
            external_name: "eth0".into(),
            external_mtu: 1500,
            connected: vec![
                "198.18.0.0/24".parse().unwrap(),
                "fd00:198:18::/64".parse().unwrap(),
            ],
        }
    }

    fn peer(key: &str, ip: &str, ipv6: Option<&str>, backend: &str) -> Lease {
        Lease {
            key: SubnetKey::parse(key).unwrap(),
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                public_ipv6: ipv6.map(|v| v.parse().unwrap()),
                backend_type: backend.into(),
                ..LeaseAttrs::default()
            },
            etcd_lease: 1,
            expiration: None,
            revision: 1,
        }
    }

    fn routes(desired: &Desired) -> Vec<String> {
        desired.routes.values().map(|r| r.to_string()).collect()
    }

    #[test]
    fn an_adjacent_peer_gets_a_route_via_its_public_ip() {
        let peers = [peer("10.244.2.0-24", "198.18.0.12", None, "host-gw")];
        let (desired, skipped) = desired_state(&node("10.244.1.0-24"), &peers);
        assert!(skipped.is_empty());
        assert!(desired.devices.is_empty() && desired.fdb.is_empty());
        assert_eq!(routes(&desired), ["10.244.2.0/24 via 198.18.0.12 dev eth0"]);
        assert!(!desired.routes.values().next().unwrap().onlink);
    }

    #[test]
    fn a_peer_behind_a_router_is_skipped_with_the_reason() {
        let peers = [
            peer("10.244.2.0-24", "198.18.0.12", None, "host-gw"),
            peer("10.244.4.0-24", "198.19.7.14", None, "host-gw"),
        ];
        let (desired, skipped) = desired_state(&node("10.244.1.0-24"), &peers);
        assert_eq!(routes(&desired), ["10.244.2.0/24 via 198.18.0.12 dev eth0"]);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].kind, SkipKind::NotOnLink);
        assert_eq!(
            skipped[0].reason,
            "its public IP 198.19.7.14 is not on a network directly connected to eth0 \
             (198.18.0.0/24): host-gw needs every node on one L2 segment, and a route via it \
             could never work"
        );
    }

    #[test]
    fn ipv6_only_and_dual_stack_peers() {
        let v6 = [peer(
            "fc00:0:0:2::-64",
            "0.0.0.0",
            Some("fd00:198:18::12"),
            "host-gw",
        )];
        let (desired, skipped) = desired_state(&node("fc00:0:0:1::-64"), &v6);
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(
            routes(&desired),
            ["fc00:0:0:2::/64 via fd00:198:18::12 dev eth0"]
        );
        let dual = [peer(
            "10.244.2.0-24&fc00:0:0:2::-64",
            "198.18.0.12",
            Some("fd00:198:18::12"),
            "host-gw",
        )];
        let (desired, _) = desired_state(&node("10.244.1.0-24&fc00:0:0:1::-64"), &dual);
        assert_eq!(
            routes(&desired),
            [
                "10.244.2.0/24 via 198.18.0.12 dev eth0",
                "fc00:0:0:2::/64 via fd00:198:18::12 dev eth0"
            ]
        );
        // A dual-stack peer without a v6 public IP gets its v4 route only.
        let half = [peer(
            "10.244.3.0-24&fc00:0:0:3::-64",
            "198.18.0.13",
            None,
            "host-gw",
        )];
        let (desired, skipped) = desired_state(&node("10.244.1.0-24&fc00:0:0:1::-64"), &half);
        assert_eq!(routes(&desired), ["10.244.3.0/24 via 198.18.0.13 dev eth0"]);
        assert_eq!(skipped[0].reason, "it has no V6 public IP");
        assert_eq!(skipped[0].kind, SkipKind::NoPublicIp);
    }

    #[test]
    fn other_backend_types_are_skipped() {
        let peers = [peer("10.244.2.0-24", "198.18.0.12", None, "vxlan")];
        let (desired, skipped) = desired_state(&node("10.244.1.0-24"), &peers);
        assert!(desired.routes.is_empty());
        assert_eq!(skipped[0].kind, SkipKind::OtherBackend);
        assert_eq!(
            skipped[0].reason,
            "its backend type is \"vxlan\", not \"host-gw\""
        );
    }

    #[test]
    fn lease_attrs_are_flannels() {
        let attrs = node("10.244.1.0-24").lease_attrs(Some("198.18.0.11".parse().unwrap()), None);
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"host-gw"}"#
        );
    }
}
