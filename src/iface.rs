//! Choosing the external interface and the public IP (flannel's `LookupExtIface`), as a
//! pure function over a snapshot of the host's links and routes.
//!
//! Order (first match wins): each `--iface` (an address or a name), each `--iface-regex`
//! (over addresses, then names), `--iface-can-reach` (the kernel's route to that address).
//! With none of them: the interface owning `--public-ip` (or `--public-ipv6`), else (kube
//! mode) the interface owning the Node's `InternalIP`, else (etcd mode) the interface
//! that owns or reaches the first etcd endpoint's address, else the interface of the
//! default route; in dual-stack the v4 and v6 default routes must leave through the same
//! interface.
//!
//! The `InternalIP` step is weft's: on Vagrant VMs every node has the NAT address
//! 10.0.2.15 on the default-route interface, flannel picks it, and all nodes advertise
//! the same public IP. The kubelet's InternalIP is the address the cluster knows the
//! node by. The etcd-endpoint step is weft's for the same reason in etcd mode: the nodes
//! reach etcd over the network they share (a Vagrant private network), not over the NAT
//! interface; a loopback endpoint (etcd on the node itself) is skipped.

use regex::Regex;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use weft_backend::kernel::{HostAddress, HostLink, HostRoute, HostSnapshot};

/// What the operator asked for.
#[derive(Debug, Clone, Default)]
pub struct IfaceRequest {
    pub ifaces: Vec<String>,
    pub iface_regexes: Vec<Regex>,
    /// The address from `--iface-can-reach` and the kernel's route to it.
    pub can_reach: Option<(IpAddr, Option<HostRoute>)>,
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
    /// The Node's `InternalIP` addresses (kube mode): preferred over the default route.
    pub node_ips: Vec<IpAddr>,
    /// The first etcd endpoint's address (etcd mode, when it is an IP literal) and the
    /// kernel's route to it: preferred over the default route.
    pub etcd_reach: Option<(IpAddr, Option<HostRoute>)>,
    pub ipv4: bool,
    pub ipv6: bool,
}

/// The chosen interface and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub iface_addr: Option<Ipv4Addr>,
    pub iface_v6_addr: Option<Ipv6Addr>,
    /// The address advertised to peers (`--public-ip`, else the interface address).
    pub ext_addr: Option<Ipv4Addr>,
    pub ext_v6_addr: Option<Ipv6Addr>,
    /// Why this interface: logged at startup.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IfaceError {
    #[error(
        "no interface matches --iface {values} or --iface-regex {regexes} (interfaces: {available})"
    )]
    NoMatch {
        values: String,
        regexes: String,
        available: String,
    },
    #[error("--iface-can-reach {0}: the kernel has no route to it")]
    Unreachable(IpAddr),
    #[error(
        "no interface has the address {0} given by --public-ip/--public-ipv6 (interfaces: {1})"
    )]
    PublicIpNotFound(IpAddr, String),
    #[error(
        "no default route for {family} (use --iface, --iface-regex or --iface-can-reach to choose an interface)"
    )]
    NoDefaultRoute { family: &'static str },
    #[error(
        "the IPv4 default route uses {v4} but the IPv6 default route uses {v6}; dual-stack needs one interface (choose it with --iface)"
    )]
    DualStackMismatch { v4: String, v6: String },
    #[error("interface {name} has no usable {family} address")]
    NoAddress { name: String, family: &'static str },
    #[error("interface {0} has MTU 0")]
    ZeroMtu(String),
}

/// Chooses the external interface; see the module docs.
pub fn select(
    host: &HostSnapshot,
    request: &IfaceRequest,
) -> Result<ExternalInterface, IfaceError> {
    let explicit = !request.ifaces.is_empty()
        || !request.iface_regexes.is_empty()
        || request.can_reach.is_some();
    let (link, pinned_addr, reason) = if explicit {
        select_explicit(host, request)?
    } else {
        select_implicit(host, request)?
    };
    if link.mtu == 0 {
        return Err(IfaceError::ZeroMtu(link.name.clone()));
    }
    let mut iface_addr = None;
    let mut iface_v6_addr = None;
    if request.ipv4 {
        let chosen = match pinned_addr {
            Some(IpAddr::V4(v4)) => Some(v4),
            _ => best_address(link, false).and_then(|ip| match ip {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            }),
        };
        iface_addr = Some(chosen.ok_or_else(|| IfaceError::NoAddress {
            name: link.name.clone(),
            family: "IPv4",
        })?);
    }
    if request.ipv6 {
        let chosen = match pinned_addr {
            Some(IpAddr::V6(v6)) => Some(v6),
            _ => best_address(link, true).and_then(|ip| match ip {
                IpAddr::V6(v6) => Some(v6),
                IpAddr::V4(_) => None,
            }),
        };
        iface_v6_addr = Some(chosen.ok_or_else(|| IfaceError::NoAddress {
            name: link.name.clone(),
            family: "IPv6",
        })?);
    }
    Ok(ExternalInterface {
        index: link.index,
        name: link.name.clone(),
        mtu: link.mtu,
        iface_addr,
        iface_v6_addr,
        ext_addr: request.public_ip.or(iface_addr).filter(|_| request.ipv4),
        ext_v6_addr: request
            .public_ipv6
            .or(iface_v6_addr)
            .filter(|_| request.ipv6),
        reason,
    })
}

type Choice<'a> = (&'a HostLink, Option<IpAddr>, String);

fn select_explicit<'a>(
    host: &'a HostSnapshot,
    request: &IfaceRequest,
) -> Result<Choice<'a>, IfaceError> {
    for value in &request.ifaces {
        if let Ok(ip) = value.parse::<IpAddr>() {
            if let Some(link) = owner_of(host, ip) {
                return Ok((
                    link,
                    Some(ip),
                    format!("--iface {value}: the interface with that address"),
                ));
            }
        } else if let Some(link) = host.links.iter().find(|l| &l.name == value) {
            return Ok((link, None, format!("--iface {value}")));
        }
    }
    for regex in &request.iface_regexes {
        for link in &host.links {
            for address in &link.addresses {
                let family_wanted = match address.ip {
                    IpAddr::V4(_) => request.ipv4,
                    IpAddr::V6(_) => request.ipv6 && !request.ipv4,
                };
                if family_wanted && usable(address) && regex.is_match(&address.ip.to_string()) {
                    let reason = format!("--iface-regex {regex} matches address {}", address.ip);
                    return Ok((link, Some(address.ip), reason));
                }
            }
        }
        if let Some(link) = host.links.iter().find(|l| regex.is_match(&l.name)) {
            return Ok((
                link,
                None,
                format!("--iface-regex {regex} matches the name {}", link.name),
            ));
        }
    }
    if let Some((target, route)) = &request.can_reach {
        let route = route.as_ref().ok_or(IfaceError::Unreachable(*target))?;
        let link = route
            .output_interface
            .and_then(|index| host.links.iter().find(|l| l.index == index))
            .ok_or(IfaceError::Unreachable(*target))?;
        let reason = format!(
            "--iface-can-reach {target}: the kernel routes it through {}",
            link.name
        );
        return Ok((link, route.preferred_source, reason));
    }
    Err(IfaceError::NoMatch {
        values: format!("{:?}", request.ifaces),
        regexes: format!(
            "{:?}",
            request
                .iface_regexes
                .iter()
                .map(Regex::as_str)
                .collect::<Vec<_>>()
        ),
        available: link_names(host),
    })
}

fn select_implicit<'a>(
    host: &'a HostSnapshot,
    request: &IfaceRequest,
) -> Result<Choice<'a>, IfaceError> {
    let pinned: Option<IpAddr> = match (request.public_ip, request.public_ipv6) {
        (Some(v4), _) if request.ipv4 => Some(IpAddr::V4(v4)),
        (_, Some(v6)) if request.ipv6 => Some(IpAddr::V6(v6)),
        _ => None,
    };
    if let Some(ip) = pinned {
        let link =
            owner_of(host, ip).ok_or_else(|| IfaceError::PublicIpNotFound(ip, link_names(host)))?;
        return Ok((link, Some(ip), format!("it has the public IP {ip}")));
    }
    let wanted_family = |ip: &&IpAddr| match ip {
        IpAddr::V4(_) => request.ipv4,
        IpAddr::V6(_) => request.ipv6 && !request.ipv4,
    };
    let node_ip = request
        .node_ips
        .iter()
        .filter(wanted_family)
        .find_map(|ip| owner_of(host, *ip).map(|link| (link, *ip)));
    if let Some((link, ip)) = node_ip {
        return Ok((link, Some(ip), format!("it has the Node's InternalIP {ip}")));
    }
    if let Some((target, route)) = request
        .etcd_reach
        .as_ref()
        .filter(|(t, _)| wanted_family(&t))
    {
        if let Some(link) = owner_of(host, *target).filter(|l| !l.loopback) {
            let reason = format!("it has the etcd endpoint's address {target}");
            return Ok((link, Some(*target), reason));
        }
        let via = route.as_ref().and_then(|route| {
            let index = route.output_interface?;
            let link = host
                .links
                .iter()
                .find(|l| l.index == index && !l.loopback)?;
            Some((link, route.preferred_source))
        });
        if let Some((link, source)) = via {
            let source =
                source.filter(|ip| owner_of(host, *ip).map(|l| l.index) == Some(link.index));
            let reason = format!("the kernel routes the etcd endpoint {target} through it");
            return Ok((link, source, reason));
        }
    }
    let default_link = |v6: bool| {
        host.routes
            .iter()
            .filter(|r| r.destination.is_none() && r.ipv6 == v6)
            .filter_map(|r| r.output_interface)
            .find_map(|index| host.links.iter().find(|l| l.index == index))
    };
    let v4 = if request.ipv4 {
        Some(default_link(false).ok_or(IfaceError::NoDefaultRoute { family: "IPv4" })?)
    } else {
        None
    };
    let v6 = if request.ipv6 {
        Some(default_link(true).ok_or(IfaceError::NoDefaultRoute { family: "IPv6" })?)
    } else {
        None
    };
    match (v4, v6) {
        (Some(a), Some(b)) if a.index != b.index => Err(IfaceError::DualStackMismatch {
            v4: a.name.clone(),
            v6: b.name.clone(),
        }),
        (Some(link), _) | (None, Some(link)) => {
            Ok((link, None, "it carries the default route".to_string()))
        }
        (None, None) => Err(IfaceError::NoDefaultRoute { family: "IPv4" }),
    }
}

/// The host of the first endpoint of `--etcd-endpoints` when it is an IP address
/// (`http://10.0.0.1:2379,...` -> 10.0.0.1; `https://[fd00::1]:2379` -> fd00::1).
pub fn etcd_endpoint_ip(endpoints: &str) -> Option<IpAddr> {
    let first = endpoints.split(',').next()?.trim();
    let rest = first.split_once("://").map_or(first, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if let Some(bracketed) = authority.strip_prefix('[') {
        return bracketed.split(']').next()?.parse().ok();
    }
    if let Ok(ip) = authority.parse::<IpAddr>() {
        return Some(ip);
    }
    authority
        .rsplit_once(':')
        .and_then(|(host, _)| host.parse().ok())
}

fn owner_of(host: &HostSnapshot, ip: IpAddr) -> Option<&HostLink> {
    host.links
        .iter()
        .find(|l| l.addresses.iter().any(|a| a.ip == ip))
}

fn link_names(host: &HostSnapshot) -> String {
    host.links
        .iter()
        .map(|l| l.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Global or link-local unicast, and not deprecated (flannel's address filter).
fn usable(address: &HostAddress) -> bool {
    if address.deprecated {
        return false;
    }
    match address.ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_multicast() || v4.is_unspecified() || v4.is_broadcast())
        }
        IpAddr::V6(v6) => !(v6.is_loopback() || v6.is_multicast() || v6.is_unspecified()),
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// The preferred address of a family: global before link-local, then permanent before
/// dynamic, then non-temporary before temporary; ties keep the kernel's order.
fn best_address(link: &HostLink, v6: bool) -> Option<IpAddr> {
    let mut candidates: Vec<&HostAddress> = link
        .addresses
        .iter()
        .filter(|a| a.ip.is_ipv6() == v6 && usable(a))
        .collect();
    candidates.sort_by_key(|a| (is_link_local(a.ip), !a.permanent, a.temporary));
    candidates.first().map(|a| a.ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str, prefix: u8, permanent: bool) -> HostAddress {
        HostAddress {
            ip: ip.parse().unwrap(),
            prefix,
            permanent,
            deprecated: false,
            temporary: false,
        }
    }

    fn link(index: u32, name: &str, addresses: Vec<HostAddress>) -> HostLink {
        HostLink {
            index,
            name: name.into(),
            mtu: 1500,
            up: true,
            loopback: name == "lo",
            addresses,
        }
    }

    fn default_route(oif: u32, gateway: &str) -> HostRoute {
        HostRoute {
            ipv6: gateway.contains(':'),
            destination: None,
            gateway: Some(gateway.parse().unwrap()),
            output_interface: Some(oif),
            preferred_source: None,
        }
    }

    /// A Vagrant-like host: eth0 is the NAT interface with the default route, eth1 the
    /// private network.
    fn vagrant() -> HostSnapshot {
        HostSnapshot {
            links: vec![
                link(
                    1,
                    "lo",
                    vec![addr("127.0.0.1", 8, true), addr("::1", 128, true)],
                ),
                link(
                    2,
                    "eth0",
                    vec![addr("10.0.2.15", 24, false), addr("fe80::1", 64, true)],
                ),
                link(
                    3,
                    "eth1",
                    vec![addr("198.18.1.11", 24, true), addr("fd00::11", 64, true)],
                ),
            ],
            routes: vec![default_route(2, "10.0.2.2"), default_route(3, "fd00::1")],
        }
    }

    fn v4() -> IfaceRequest {
        IfaceRequest {
            ipv4: true,
            ..IfaceRequest::default()
        }
    }

    fn route_via(oif: u32, source: &str) -> HostRoute {
        HostRoute {
            ipv6: source.contains(':'),
            destination: None,
            gateway: None,
            output_interface: Some(oif),
            preferred_source: Some(source.parse().unwrap()),
        }
    }

    fn etcd_at(ip: &str, route: Option<HostRoute>) -> IfaceRequest {
        IfaceRequest {
            etcd_reach: Some((ip.parse().unwrap(), route)),
            ..v4()
        }
    }

    #[test]
    fn the_etcd_endpoint_beats_the_default_route() {
        // Another VM runs etcd on the private network: eth1, not the NAT eth0.
        let ext = select(
            &vagrant(),
            &etcd_at("198.18.1.12", Some(route_via(3, "198.18.1.11"))),
        )
        .unwrap();
        assert_eq!(
            (ext.name.as_str(), ext.ext_addr),
            ("eth1", Some("198.18.1.11".parse().unwrap()))
        );
        assert_eq!(
            ext.reason,
            "the kernel routes the etcd endpoint 198.18.1.12 through it"
        );
        // This VM runs etcd on its private address: the kernel's route is `local ... dev lo`,
        // the owner of the address wins.
        let ext = select(
            &vagrant(),
            &etcd_at("198.18.1.11", Some(route_via(1, "198.18.1.11"))),
        )
        .unwrap();
        assert_eq!(
            (ext.name.as_str(), ext.ext_addr),
            ("eth1", Some("198.18.1.11".parse().unwrap()))
        );
        assert_eq!(ext.reason, "it has the etcd endpoint's address 198.18.1.11");
    }

    #[test]
    fn a_loopback_or_unreachable_etcd_endpoint_falls_back_to_the_default_route() {
        for request in [
            etcd_at("127.0.0.1", Some(route_via(1, "127.0.0.1"))),
            etcd_at("203.0.113.9", None),
            etcd_at("fd00::9", Some(route_via(3, "fd00::11"))), // not the family in use
        ] {
            let ext = select(&vagrant(), &request).unwrap();
            assert_eq!(ext.name, "eth0", "{request:?}");
            assert_eq!(ext.reason, "it carries the default route");
        }
        // Reached through the default route's interface: same answer as flannel.
        let ext = select(
            &vagrant(),
            &etcd_at("203.0.113.9", Some(route_via(2, "10.0.2.15"))),
        )
        .unwrap();
        assert_eq!(
            (ext.name.as_str(), ext.ext_addr),
            ("eth0", Some("10.0.2.15".parse().unwrap()))
        );
    }

    #[test]
    fn explicit_flags_and_the_public_ip_beat_the_etcd_endpoint() {
        let mut request = etcd_at("198.18.1.12", Some(route_via(3, "198.18.1.11")));
        request.ifaces = vec!["eth0".into()];
        assert_eq!(select(&vagrant(), &request).unwrap().name, "eth0");
        let mut request = etcd_at("198.18.1.12", Some(route_via(3, "198.18.1.11")));
        request.public_ip = Some("10.0.2.15".parse().unwrap());
        assert_eq!(select(&vagrant(), &request).unwrap().name, "eth0");
    }

    #[test]
    fn etcd_endpoint_ip_parsing() {
        let ip = |s: &str| etcd_endpoint_ip(s).map(|ip| ip.to_string());
        assert_eq!(
            ip("http://192.168.56.11:2379").as_deref(),
            Some("192.168.56.11")
        );
        assert_eq!(
            ip("https://10.0.0.1:2379,https://10.0.0.2:2379").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(ip("http://[fd00::1]:2379").as_deref(), Some("fd00::1"));
        assert_eq!(ip("10.0.0.3:2379").as_deref(), Some("10.0.0.3"));
        assert_eq!(ip("http://10.0.0.4").as_deref(), Some("10.0.0.4"));
        assert_eq!(
            ip("http://user:pw@10.0.0.5:2379/").as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(ip("http://etcd.example:2379"), None);
        assert_eq!(ip(""), None);
    }

    #[test]
    fn default_route_interface() {
        let ext = select(&vagrant(), &v4()).unwrap();
        assert_eq!(
            (ext.name.as_str(), ext.ext_addr),
            ("eth0", Some("10.0.2.15".parse().unwrap()))
        );
        assert_eq!(ext.reason, "it carries the default route");
    }

    #[test]
    fn iface_by_name_and_by_address() {
        let request = IfaceRequest {
            ifaces: vec!["eth9".into(), "eth1".into()],
            ..v4()
        };
        assert_eq!(
            select(&vagrant(), &request).unwrap().iface_addr,
            Some("198.18.1.11".parse().unwrap())
        );
        let request = IfaceRequest {
            ifaces: vec!["198.18.1.11".into()],
            ..v4()
        };
        assert_eq!(select(&vagrant(), &request).unwrap().name, "eth1");
    }

    #[test]
    fn regex_matches_addresses_before_names() {
        let request = IfaceRequest {
            iface_regexes: vec![Regex::new("^198\\.18\\.").unwrap()],
            ..v4()
        };
        assert_eq!(select(&vagrant(), &request).unwrap().name, "eth1");
        let request = IfaceRequest {
            iface_regexes: vec![Regex::new("eth[01]").unwrap()],
            ..v4()
        };
        assert_eq!(select(&vagrant(), &request).unwrap().name, "eth0");
    }

    #[test]
    fn can_reach_uses_the_route_source() {
        let route = HostRoute {
            ipv6: false,
            destination: Some(("198.18.1.12".parse().unwrap(), 32)),
            gateway: None,
            output_interface: Some(3),
            preferred_source: Some("198.18.1.11".parse().unwrap()),
        };
        let request = IfaceRequest {
            can_reach: Some(("198.18.1.12".parse().unwrap(), Some(route))),
            ..v4()
        };
        let ext = select(&vagrant(), &request).unwrap();
        assert_eq!(
            (ext.name.as_str(), ext.iface_addr),
            ("eth1", Some("198.18.1.11".parse().unwrap()))
        );
        let request = IfaceRequest {
            can_reach: Some(("203.0.113.1".parse().unwrap(), None)),
            ..v4()
        };
        assert_eq!(
            select(&vagrant(), &request).unwrap_err().to_string(),
            "--iface-can-reach 203.0.113.1: the kernel has no route to it"
        );
    }

    #[test]
    fn public_ip_picks_its_owner_and_is_advertised() {
        let request = IfaceRequest {
            public_ip: Some("198.18.1.11".parse().unwrap()),
            ..v4()
        };
        assert_eq!(select(&vagrant(), &request).unwrap().name, "eth1");
        // With an explicit interface, --public-ip only changes what is advertised.
        let request = IfaceRequest {
            ifaces: vec!["eth0".into()],
            public_ip: Some("203.0.113.7".parse().unwrap()),
            ..v4()
        };
        let ext = select(&vagrant(), &request).unwrap();
        assert_eq!(ext.iface_addr, Some("10.0.2.15".parse().unwrap()));
        assert_eq!(ext.ext_addr, Some("203.0.113.7".parse().unwrap()));
        let request = IfaceRequest {
            public_ip: Some("203.0.113.7".parse().unwrap()),
            ..v4()
        };
        assert_eq!(
            select(&vagrant(), &request).unwrap_err().to_string(),
            "no interface has the address 203.0.113.7 given by --public-ip/--public-ipv6 (interfaces: lo, eth0, eth1)"
        );
    }

    #[test]
    fn the_nodes_internal_ip_beats_the_default_route() {
        let request = IfaceRequest {
            node_ips: vec!["fd00::11".parse().unwrap(), "198.18.1.11".parse().unwrap()],
            ..v4()
        };
        let ext = select(&vagrant(), &request).unwrap();
        assert_eq!(
            (ext.name.as_str(), ext.ext_addr),
            ("eth1", Some("198.18.1.11".parse().unwrap()))
        );
        assert_eq!(ext.reason, "it has the Node's InternalIP 198.18.1.11");
        // An InternalIP no interface owns (e.g. a cloud NAT address) changes nothing.
        let request = IfaceRequest {
            node_ips: vec!["203.0.113.9".parse().unwrap()],
            ..v4()
        };
        assert_eq!(select(&vagrant(), &request).unwrap().name, "eth0");
        // Explicit choices still win.
        let request = IfaceRequest {
            ifaces: vec!["eth0".into()],
            node_ips: vec!["198.18.1.11".parse().unwrap()],
            ..v4()
        };
        assert_eq!(select(&vagrant(), &request).unwrap().name, "eth0");
    }

    #[test]
    fn errors_name_the_values() {
        let request = IfaceRequest {
            ifaces: vec!["eth7".into()],
            ..v4()
        };
        assert_eq!(
            select(&vagrant(), &request).unwrap_err().to_string(),
            "no interface matches --iface [\"eth7\"] or --iface-regex [] (interfaces: lo, eth0, eth1)"
        );
        let mut host = vagrant();
        host.routes.clear();
        assert_eq!(
            select(&host, &v4()).unwrap_err().to_string(),
            "no default route for IPv4 (use --iface, --iface-regex or --iface-can-reach to choose an interface)"
        );
    }

    #[test]
    fn dual_stack_needs_one_interface() {
        let request = IfaceRequest {
            ipv4: true,
            ipv6: true,
            ..IfaceRequest::default()
        };
        assert_eq!(
            select(&vagrant(), &request).unwrap_err(),
            IfaceError::DualStackMismatch {
                v4: "eth0".into(),
                v6: "eth1".into()
            }
        );
        let request = IfaceRequest {
            ifaces: vec!["eth1".into()],
            ..request
        };
        let ext = select(&vagrant(), &request).unwrap();
        assert_eq!(ext.ext_v6_addr, Some("fd00::11".parse().unwrap()));
    }

    #[test]
    fn address_preference() {
        let mut addresses = vec![
            addr("fe80::5", 64, true),
            HostAddress {
                temporary: true,
                ..addr("2001:db8::7", 64, false)
            },
            addr("2001:db8::8", 64, false),
            HostAddress {
                deprecated: true,
                ..addr("2001:db8::9", 64, true)
            },
        ];
        let l = link(4, "eth2", addresses.clone());
        assert_eq!(best_address(&l, true), Some("2001:db8::8".parse().unwrap()));
        addresses.push(addr("2001:db8::10", 64, true));
        let l = link(4, "eth2", addresses);
        assert_eq!(
            best_address(&l, true),
            Some("2001:db8::10".parse().unwrap())
        );
    }
}
