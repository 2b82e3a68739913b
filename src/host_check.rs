//! Checks of the cluster network and this node's subnet against the networks connected
//! to the host (pure, over a snapshot). A pod network that overlaps the underlay would
//! route node traffic, etcd's included, into the overlay and cut the node off; flannel
//! accepts such a config and hands out the underlay's addresses as pod subnets.

use weft_backend::kernel::HostSnapshot;
use weft_subnet::family::{Family, Net};
use weft_subnet::{NetworkConfig, SubnetKey};

/// The networks connected to this host, with the device carrying each: addresses of
/// non-loopback links with a prefix shorter than a host route, except weft's own devices
/// (their /32 and /128 addresses are the overlay's).
pub fn connected_networks(
    host: &HostSnapshot,
    is_weft_device: impl Fn(&str) -> bool,
) -> Vec<(Net, String)> {
    let mut networks = Vec::new();
    for link in host.links.iter().filter(|l| !l.loopback) {
        if is_weft_device(&link.name) {
            continue;
        }
        for address in &link.addresses {
            let family = Family::of(address.ip);
            let link_local = match address.ip {
                std::net::IpAddr::V4(v4) => v4.is_link_local(),
                std::net::IpAddr::V6(v6) => v6.is_unicast_link_local(),
            };
            if address.prefix >= family.width() || link_local {
                continue;
            }
            let net = Net::new_masked(address.ip, address.prefix);
            if !networks.iter().any(|(n, d)| *n == net && *d == link.name) {
                networks.push((net, link.name.clone()));
            }
        }
    }
    networks
}

/// Refuses a cluster network that overlaps a network of the host: any overlap with the
/// external interface (the underlay), and on other devices anything but a network that
/// fits inside one pod subnet (the CNI bridge of an earlier run carries such an address).
/// A network of the host that the cluster network or this node's subnet would collide
/// with: the node refuses to start (each message says what to change).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostConflict {
    #[error(
        "the cluster network {network} overlaps {host_net} on {device}, this node's external \
         interface: pod routes would capture the traffic between nodes; choose a Network \
         that does not overlap the node network"
    )]
    Underlay {
        network: Net,
        host_net: Net,
        device: String,
    },
    #[error(
        "the cluster network {network} overlaps {host_net} on {device}: pods could not reach \
         that network, or it could not reach them; choose a Network that does not overlap \
         the host's networks"
    )]
    HostNetwork {
        network: Net,
        host_net: Net,
        device: String,
    },
    #[error(
        "this node's subnet {subnet} overlaps {host_net} on {device}; free that network or \
         give this node another subnet"
    )]
    OwnSubnet {
        subnet: Net,
        host_net: Net,
        device: String,
    },
}

pub fn check_network(
    config: &NetworkConfig,
    connected: &[(Net, String)],
    external: &str,
) -> Result<(), HostConflict> {
    for pool in [config.ipv4, config.ipv6].into_iter().flatten() {
        let network = pool.network;
        for (host_net, device) in connected {
            if !host_net.overlaps(&network) {
                continue;
            }
            let pod_sized = host_net.prefix >= pool.subnet_len && network.contains(host_net.addr);
            let (host_net, device) = (*host_net, device.clone());
            if device == external {
                return Err(HostConflict::Underlay {
                    network,
                    host_net,
                    device,
                });
            }
            if !pod_sized {
                return Err(HostConflict::HostNetwork {
                    network,
                    host_net,
                    device,
                });
            }
        }
    }
    Ok(())
}

/// Refuses an own subnet that overlaps a host network other than its own pods' bridge.
pub fn check_own_subnet(own: &SubnetKey, connected: &[(Net, String)]) -> Result<(), HostConflict> {
    for subnet in [own.ipv4, own.ipv6].into_iter().flatten() {
        for (host_net, device) in connected {
            let inside = host_net.prefix >= subnet.prefix && subnet.contains(host_net.addr);
            if host_net.overlaps(&subnet) && !inside {
                return Err(HostConflict::OwnSubnet {
                    subnet,
                    host_net: *host_net,
                    device: device.clone(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_backend::kernel::{HostAddress, HostLink};

    fn link(index: u32, name: &str, addresses: &[&str]) -> HostLink {
        HostLink {
            index,
            name: name.into(),
            mtu: 1500,
            up: true,
            loopback: name == "lo",
            addresses: addresses
                .iter()
                .map(|a| {
                    let (ip, prefix) = a.split_once('/').unwrap();
                    HostAddress {
                        ip: ip.parse().unwrap(),
                        prefix: prefix.parse().unwrap(),
                        permanent: true,
                        deprecated: false,
                        temporary: false,
                    }
                })
                .collect(),
        }
    }

    fn host() -> HostSnapshot {
        HostSnapshot {
            links: vec![
                link(1, "lo", &["127.0.0.1/8"]),
                link(2, "eth0", &["198.18.40.11/24", "fe80::1/64"]),
                link(3, "flannel.1", &["10.244.3.0/32"]),
                link(4, "cni0", &["10.244.3.1/24"]),
            ],
            routes: Vec::new(),
        }
    }

    fn connected() -> Vec<(Net, String)> {
        connected_networks(&host(), |name| name == "flannel.1")
    }

    fn config(network: &str) -> NetworkConfig {
        NetworkConfig::parse(&format!(r#"{{"Network":"{network}"}}"#)).unwrap()
    }

    #[test]
    fn connected_networks_skip_loopback_host_routes_link_local_and_weft_devices() {
        let names: Vec<String> = connected()
            .iter()
            .map(|(n, d)| format!("{n} {d}"))
            .collect();
        assert_eq!(names, ["198.18.40.0/24 eth0", "10.244.3.0/24 cni0"]);
    }

    #[test]
    fn a_network_over_the_underlay_is_refused() {
        assert_eq!(
            check_network(&config("10.244.0.0/16"), &connected(), "eth0"),
            Ok(())
        );
        assert_eq!(
            check_network(&config("198.18.0.0/16"), &connected(), "eth0")
                .map_err(|e| e.to_string()),
            Err(
                "the cluster network 198.18.0.0/16 overlaps 198.18.40.0/24 on eth0, this \
                 node's external interface: pod routes would capture the traffic between \
                 nodes; choose a Network that does not overlap the node network"
                    .into()
            )
        );
    }

    #[test]
    fn a_network_over_another_host_network_is_refused_unless_pod_sized() {
        let mut connected = connected();
        connected.push(("172.17.0.0/16".parse().unwrap(), "docker0".into()));
        assert_eq!(
            check_network(&config("172.16.0.0/12"), &connected, "eth0").map_err(|e| e.to_string()),
            Err(
                "the cluster network 172.16.0.0/12 overlaps 172.17.0.0/16 on docker0: pods \
                 could not reach that network, or it could not reach them; choose a Network \
                 that does not overlap the host's networks"
                    .into()
            )
        );
    }

    #[test]
    fn the_own_subnet_may_hold_its_bridge_but_nothing_else() {
        let own = SubnetKey::parse("10.244.3.0-24").unwrap();
        assert_eq!(check_own_subnet(&own, &connected()), Ok(()));
        let mut connected = connected();
        connected.push(("10.244.0.0/22".parse().unwrap(), "eth1".into()));
        assert_eq!(
            check_own_subnet(&own, &connected).map_err(|e| e.to_string()),
            Err(
                "this node's subnet 10.244.3.0/24 overlaps 10.244.0.0/22 on eth1; free that \
                 network or give this node another subnet"
                    .into()
            )
        );
    }
}
