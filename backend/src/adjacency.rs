//! Whether a peer is on the same L2 segment as this node, decided from the networks
//! directly connected to the external interface. One rule for host-gw routes and vxlan
//! DirectRouting: a route `via <peer public IP>` on that interface can only work when the
//! peer's address is on one of its connected networks (flannel asks the kernel for a
//! route per peer, and installs host-gw routes that can never work when it is not).

use std::net::IpAddr;
use weft_lease::family::{Family, Net, to_u128};

/// Whether `ip` lies inside one of the `connected` networks of its family.
pub fn on_link(connected: &[Net], ip: IpAddr) -> bool {
    let family = Family::of(ip);
    let value = to_u128(ip);
    connected
        .iter()
        .any(|n| n.family == family && n.contains(value))
}

/// The connected networks of `family`, for messages ("198.18.0.0/24, fd00::/64").
pub fn describe(connected: &[Net], family: Family) -> String {
    let nets: Vec<String> = connected
        .iter()
        .filter(|n| n.family == family)
        .map(Net::to_string)
        .collect();
    if nets.is_empty() {
        "none".into()
    } else {
        nets.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_on_a_connected_network_are_on_link() {
        let connected: Vec<Net> = vec![
            "198.18.0.0/24".parse().unwrap(),
            "fd00:198:18::/64".parse().unwrap(),
        ];
        assert!(on_link(&connected, "198.18.0.12".parse().unwrap()));
        assert!(!on_link(&connected, "198.18.1.12".parse().unwrap()));
        assert!(on_link(&connected, "fd00:198:18::12".parse().unwrap()));
        assert!(!on_link(&connected, "fd00:198:19::12".parse().unwrap()));
        assert_eq!(describe(&connected, Family::V4), "198.18.0.0/24");
        assert_eq!(describe(&[], Family::V6), "none");
    }
}
