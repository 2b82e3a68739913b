//! Peer admission: every peer lease is untrusted input, checked here by one pure
//! function before a backend turns it into kernel state.
//!
//! A lease that parses can still be hostile or broken, and every node reads every lease,
//! so one bad value would otherwise reach every node's kernel. A peer is accepted only if:
//! - each of its subnets lies inside the cluster network, with the same prefix length as
//!   this node's own subnet of that family (flannel's own leases always do);
//! - no subnet overlaps this node's subnet, a network connected to this host (the
//!   underlay, a docker bridge, ...), or a subnet of a peer accepted before it;
//! - its public IP (per family used) is a unicast address: not unspecified, loopback,
//!   multicast, broadcast, or link-local unless this node's own is; and not this node's;
//! - its VTEP MACs (backends that use them) are unicast and non-zero, not this node's, and
//!   not claimed by another accepted peer with a different public IP (the same MAC at the
//!   same IP is one node's FDB entry, and harmless).
//!
//! "Before it" means first come keeps it: peers accepted on an earlier pass keep their
//! place, then newcomers in datastore order (revision, then key). A rejected peer never
//! blocks the others; the caller logs each rejection once.

use crate::mac::{self, Mac};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use weft_subnet::family::{Family, Net};
use weft_subnet::{Lease, SubnetKey};

/// What this node is, as far as peers may collide with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// This node's subnets.
    pub own: SubnetKey,
    /// The cluster networks (v4, v6) that peer subnets must lie in.
    pub network_v4: Option<Net>,
    pub network_v6: Option<Net>,
    /// This node's public addresses.
    pub public_ips: Vec<IpAddr>,
    /// This node's VTEP MACs (empty for backends without them).
    pub macs: Vec<Mac>,
    /// Networks connected to this host, with the device that carries them (weft's own
    /// devices excluded).
    pub host_networks: Vec<(Net, String)>,
}

/// Which rule a peer broke; bounded, so it can label a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectKind {
    OutsideNetwork,
    WrongPrefixLength,
    OverlapsOwnSubnet,
    OverlapsHostNetwork,
    OverlapsPeer,
    BadPublicIp,
    OwnPublicIp,
    BadVtepMac,
    VtepMacClaimed,
}

impl RejectKind {
    pub const ALL: [RejectKind; 9] = [
        RejectKind::OutsideNetwork,
        RejectKind::WrongPrefixLength,
        RejectKind::OverlapsOwnSubnet,
        RejectKind::OverlapsHostNetwork,
        RejectKind::OverlapsPeer,
        RejectKind::BadPublicIp,
        RejectKind::OwnPublicIp,
        RejectKind::BadVtepMac,
        RejectKind::VtepMacClaimed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RejectKind::OutsideNetwork => "outside_network",
            RejectKind::WrongPrefixLength => "wrong_prefix_length",
            RejectKind::OverlapsOwnSubnet => "overlaps_own_subnet",
            RejectKind::OverlapsHostNetwork => "overlaps_host_network",
            RejectKind::OverlapsPeer => "overlaps_peer",
            RejectKind::BadPublicIp => "bad_public_ip",
            RejectKind::OwnPublicIp => "own_public_ip",
            RejectKind::BadVtepMac => "bad_vtep_mac",
            RejectKind::VtepMacClaimed => "vtep_mac_claimed",
        }
    }
}

/// A peer lease that was not admitted, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub key: SubnetKey,
    pub kind: RejectKind,
    pub reason: String,
}

/// The VTEP MACs a peer publishes, by family (as the backend reads its BackendData).
pub type MacsOf<'f> = &'f dyn Fn(&Lease) -> Vec<(Family, Mac)>;

/// Remembers which peers were accepted, so earlier peers keep what they claimed.
#[derive(Debug, Default)]
pub struct Admission {
    accepted: HashSet<SubnetKey>,
}

/// What one peer claims once accepted.
struct Claims {
    subnets: HashMap<Net, SubnetKey>,
    macs: HashMap<Mac, (SubnetKey, Vec<IpAddr>)>,
}

impl Admission {
    /// Splits `peers` into the admitted ones and the rejections (see the module docs).
    pub fn admit<'a>(
        &mut self,
        identity: &Identity,
        peers: impl IntoIterator<Item = &'a Lease>,
        macs_of: MacsOf<'_>,
    ) -> (Vec<&'a Lease>, Vec<Rejection>) {
        let mut ordered: Vec<&Lease> = peers.into_iter().collect();
        ordered.sort_by_key(|l| (!self.accepted.contains(&l.key), l.revision, l.key));
        let subnets = ordered
            .iter()
            .map(|l| usize::from(l.key.ipv4.is_some()) + usize::from(l.key.ipv6.is_some()))
            .sum();
        let mut claims = Claims {
            subnets: HashMap::with_capacity(subnets),
            macs: HashMap::with_capacity(ordered.len()),
        };
        let mut admitted = Vec::with_capacity(ordered.len());
        let mut rejected = Vec::new();
        for lease in ordered {
            match check(identity, lease, macs_of(lease), &claims) {
                Ok(macs) => {
                    let ips = public_ips(identity, lease);
                    for net in [lease.key.ipv4, lease.key.ipv6].into_iter().flatten() {
                        claims.subnets.insert(net, lease.key);
                    }
                    for mac in macs {
                        claims
                            .macs
                            .entry(mac)
                            .or_insert_with(|| (lease.key, ips.clone()));
                    }
                    admitted.push(lease);
                }
                Err((kind, reason)) => rejected.push(Rejection {
                    key: lease.key,
                    kind,
                    reason,
                }),
            }
        }
        // Refilled in place: a second set next to the old one would double its peak.
        self.accepted.clear();
        self.accepted.extend(admitted.iter().map(|l| l.key));
        self.accepted.shrink_to(admitted.len());
        admitted.sort_by_key(|l| l.key);
        (admitted, rejected)
    }
}

/// The public IPs of `lease` for the families this node uses.
fn public_ips(identity: &Identity, lease: &Lease) -> Vec<IpAddr> {
    let mut ips = Vec::with_capacity(2);
    if identity.own.ipv4.is_some() && lease.key.ipv4.is_some() {
        ips.push(IpAddr::V4(lease.attrs.public_ip));
    }
    if identity.own.ipv6.is_some() && lease.key.ipv6.is_some() {
        ips.extend(lease.attrs.public_ipv6.map(IpAddr::V6));
    }
    ips
}

type Verdict<T> = Result<T, (RejectKind, String)>;

fn check(
    identity: &Identity,
    lease: &Lease,
    macs: Vec<(Family, Mac)>,
    claims: &Claims,
) -> Verdict<Vec<Mac>> {
    let families = [
        (lease.key.ipv4, identity.own.ipv4, identity.network_v4),
        (lease.key.ipv6, identity.own.ipv6, identity.network_v6),
    ];
    for (subnet, own, network) in families {
        let (Some(subnet), Some(own)) = (subnet, own) else {
            continue;
        };
        check_subnet(identity, subnet, own, network, claims)?;
    }
    let ips = public_ips(identity, lease);
    for ip in &ips {
        check_public_ip(identity, *ip)?;
    }
    let mut checked = Vec::with_capacity(macs.len());
    for (family, mac) in macs {
        let used = match family {
            Family::V4 => identity.own.ipv4.is_some() && lease.key.ipv4.is_some(),
            Family::V6 => identity.own.ipv6.is_some() && lease.key.ipv6.is_some(),
        };
        if used {
            check_mac(identity, mac, &ips, claims)?;
            checked.push(mac);
        }
    }
    Ok(checked)
}

fn check_subnet(
    identity: &Identity,
    subnet: Net,
    own: Net,
    network: Option<Net>,
    claims: &Claims,
) -> Verdict<()> {
    let Some(network) = network else {
        return Err((
            RejectKind::OutsideNetwork,
            format!("its subnet {subnet} is of a family the cluster network does not have"),
        ));
    };
    if subnet.prefix < network.prefix || !network.contains(subnet.addr) {
        return Err((
            RejectKind::OutsideNetwork,
            format!("its subnet {subnet} is outside the cluster network {network}"),
        ));
    }
    if subnet.prefix != own.prefix {
        return Err((
            RejectKind::WrongPrefixLength,
            format!(
                "its subnet {subnet} is not a /{} like every node's subnet (this node has {own})",
                own.prefix
            ),
        ));
    }
    if subnet.overlaps(&own) {
        return Err((
            RejectKind::OverlapsOwnSubnet,
            format!("its subnet {subnet} overlaps this node's subnet {own}"),
        ));
    }
    if let Some((host, device)) = identity
        .host_networks
        .iter()
        .find(|(host, _)| host.overlaps(&subnet))
    {
        return Err((
            RejectKind::OverlapsHostNetwork,
            format!(
                "its subnet {subnet} overlaps {host}, connected to this host on {device}; \
                 a route for it would take that network's traffic"
            ),
        ));
    }
    // All accepted subnets share the prefix length, so overlapping means equal.
    if let Some(first) = claims.subnets.get(&subnet) {
        return Err((
            RejectKind::OverlapsPeer,
            format!(
                "its subnet {subnet} is already held by the peer lease {first}, which came first"
            ),
        ));
    }
    Ok(())
}

fn check_public_ip(identity: &Identity, ip: IpAddr) -> Verdict<()> {
    let own_link_local = identity.public_ips.iter().any(is_link_local);
    let problem = match ip {
        _ if ip.is_unspecified() => Some("unspecified"),
        _ if ip.is_loopback() => Some("a loopback address"),
        _ if ip.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(v4) if v4.octets()[0] == 0 => Some("in 0.0.0.0/8 (\"this network\")"),
        _ if is_link_local(&ip) && !own_link_local => {
            Some("link-local (and this node's own public IP is not)")
        }
        _ => None,
    };
    if let Some(problem) = problem {
        return Err((
            RejectKind::BadPublicIp,
            format!("its public IP {ip} is {problem}, not a unicast node address"),
        ));
    }
    if identity.public_ips.contains(&ip) {
        return Err((
            RejectKind::OwnPublicIp,
            format!("its public IP {ip} is this node's own"),
        ));
    }
    Ok(())
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

fn check_mac(identity: &Identity, mac: Mac, ips: &[IpAddr], claims: &Claims) -> Verdict<()> {
    let text = mac::format(&mac);
    if !mac::is_unicast(&mac) {
        return Err((
            RejectKind::BadVtepMac,
            format!("its VTEP MAC {text} is not a unicast address (multicast, broadcast or zero)"),
        ));
    }
    if identity.macs.contains(&mac) {
        return Err((
            RejectKind::VtepMacClaimed,
            format!("its VTEP MAC {text} is this node's own"),
        ));
    }
    if let Some((first, first_ips)) = claims.macs.get(&mac)
        && first_ips != ips
    {
        return Err((
            RejectKind::VtepMacClaimed,
            format!(
                "its VTEP MAC {text} is already used by the peer lease {first} at another \
                 public IP, which came first"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_subnet::LeaseAttrs;

    const MAC_OWN: Mac = [0x02, 0, 0, 0, 0, 0x01];

    fn identity() -> Identity {
        Identity {
            own: SubnetKey::parse("10.244.1.0-24").unwrap(),
            network_v4: Some("10.244.0.0/16".parse().unwrap()),
            network_v6: None,
            public_ips: vec!["198.18.0.11".parse().unwrap()],
            macs: vec![MAC_OWN],
            host_networks: vec![("198.18.0.0/24".parse().unwrap(), "eth0".into())],
        }
    }

    fn lease(key: &str, ip: &str, mac: &str, revision: i64) -> Lease {
        Lease {
            key: SubnetKey::parse(key).unwrap(),
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                backend_type: "vxlan".into(),
                backend_data: Some(serde_json::json!({"VNI": 1, "VtepMAC": mac}).into()),
                ..LeaseAttrs::default()
            },
            etcd_lease: 1,
            expiration: None,
            revision,
        }
    }

    fn macs(lease: &Lease) -> Vec<(Family, Mac)> {
        crate::vxlan::vtep_mac(lease.attrs.backend_data.as_ref())
            .map(|m| vec![(Family::V4, m)])
            .unwrap_or_default()
    }

    fn admit_all(admission: &mut Admission, peers: &[Lease]) -> (Vec<String>, Vec<Rejection>) {
        let (ok, rejected) = admission.admit(&identity(), peers, &macs);
        (ok.iter().map(|l| l.key.to_string()).collect(), rejected)
    }

    fn reject_one(peer: Lease) -> Rejection {
        let good = lease("10.244.2.0-24", "198.18.0.12", "0a:00:00:00:00:02", 1);
        let (ok, rejected) = admit_all(&mut Admission::default(), &[good, peer]);
        assert_eq!(ok, ["10.244.2.0-24"], "the good peer is never blocked");
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        rejected.into_iter().next().unwrap()
    }

    #[test]
    fn a_well_formed_peer_is_admitted() {
        let peers = [lease(
            "10.244.2.0-24",
            "198.18.0.12",
            "0a:00:00:00:00:02",
            1,
        )];
        let (ok, rejected) = admit_all(&mut Admission::default(), &peers);
        assert_eq!((ok.len(), rejected.len()), (1, 0));
    }

    #[test]
    fn subnets_outside_the_network_are_rejected() {
        for (key, message) in [
            (
                "198.18.40.0-24",
                "its subnet 198.18.40.0/24 is outside the cluster network 10.244.0.0/16",
            ),
            (
                "10.0.0.0-8",
                "its subnet 10.0.0.0/8 is outside the cluster network 10.244.0.0/16",
            ),
            (
                "0.0.0.0-0",
                "its subnet 0.0.0.0/0 is outside the cluster network 10.244.0.0/16",
            ),
        ] {
            let r = reject_one(lease(key, "198.18.0.13", "0a:00:00:00:00:03", 2));
            assert_eq!(
                (r.kind, r.reason.as_str()),
                (RejectKind::OutsideNetwork, message)
            );
        }
    }

    #[test]
    fn a_smaller_subnet_inside_the_own_one_is_rejected() {
        let r = reject_one(lease(
            "10.244.1.128-25",
            "198.18.0.13",
            "0a:00:00:00:00:03",
            2,
        ));
        assert_eq!(r.kind, RejectKind::WrongPrefixLength);
        assert_eq!(
            r.reason,
            "its subnet 10.244.1.128/25 is not a /24 like every node's subnet (this node has 10.244.1.0/24)"
        );
        let r = reject_one(lease(
            "10.244.1.0-24",
            "198.18.0.13",
            "0a:00:00:00:00:03",
            2,
        ));
        assert_eq!(
            (r.kind, r.reason.as_str()),
            (
                RejectKind::OverlapsOwnSubnet,
                "its subnet 10.244.1.0/24 overlaps this node's subnet 10.244.1.0/24"
            )
        );
    }

    #[test]
    fn a_subnet_on_a_host_network_is_rejected() {
        let mut id = identity();
        id.host_networks
            .push(("10.244.7.0/24".parse().unwrap(), "docker0".into()));
        let peers = [lease(
            "10.244.7.0-24",
            "198.18.0.13",
            "0a:00:00:00:00:03",
            1,
        )];
        let (ok, rejected) = Admission::default().admit(&id, &peers, &macs);
        assert!(ok.is_empty());
        assert_eq!(rejected[0].kind, RejectKind::OverlapsHostNetwork);
        assert_eq!(
            rejected[0].reason,
            "its subnet 10.244.7.0/24 overlaps 10.244.7.0/24, connected to this host on docker0; \
             a route for it would take that network's traffic"
        );
    }

    #[test]
    fn bad_public_ips_are_rejected() {
        for (ip, problem) in [
            ("255.255.255.255", "the broadcast address"),
            ("224.0.0.1", "a multicast address"),
            ("127.0.0.1", "a loopback address"),
            ("0.0.0.0", "unspecified"),
            (
                "169.254.1.1",
                "link-local (and this node's own public IP is not)",
            ),
        ] {
            let r = reject_one(lease("10.244.3.0-24", ip, "0a:00:00:00:00:03", 2));
            assert_eq!(r.kind, RejectKind::BadPublicIp, "{ip}");
            assert_eq!(
                r.reason,
                format!("its public IP {ip} is {problem}, not a unicast node address")
            );
        }
        let r = reject_one(lease(
            "10.244.3.0-24",
            "198.18.0.11",
            "0a:00:00:00:00:03",
            2,
        ));
        assert_eq!(
            (r.kind, r.reason.as_str()),
            (
                RejectKind::OwnPublicIp,
                "its public IP 198.18.0.11 is this node's own"
            )
        );
    }

    #[test]
    fn bad_and_claimed_vtep_macs_are_rejected() {
        for mac in [
            "ff:ff:ff:ff:ff:ff",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
        ] {
            let r = reject_one(lease("10.244.3.0-24", "198.18.0.13", mac, 2));
            assert_eq!(r.kind, RejectKind::BadVtepMac, "{mac}");
        }
        let r = reject_one(lease(
            "10.244.3.0-24",
            "198.18.0.13",
            "02:00:00:00:00:01",
            2,
        ));
        assert_eq!(
            r.reason,
            "its VTEP MAC 02:00:00:00:00:01 is this node's own"
        );
        // Another node's MAC at another IP: redirected traffic, so the later one loses.
        let r = reject_one(lease(
            "10.244.3.0-24",
            "198.18.0.13",
            "0a:00:00:00:00:02",
            2,
        ));
        assert_eq!(r.kind, RejectKind::VtepMacClaimed);
        assert_eq!(
            r.reason,
            "its VTEP MAC 0a:00:00:00:00:02 is already used by the peer lease 10.244.2.0-24 \
             at another public IP, which came first"
        );
    }

    #[test]
    fn the_same_mac_at_the_same_ip_is_one_node() {
        let peers = [
            lease("10.244.2.0-24", "198.18.0.12", "0a:00:00:00:00:02", 1),
            lease("10.244.3.0-24", "198.18.0.12", "0a:00:00:00:00:02", 2),
        ];
        let (ok, rejected) = admit_all(&mut Admission::default(), &peers);
        assert_eq!((ok.len(), rejected.len()), (2, 0));
    }

    #[test]
    fn first_come_keeps_its_claim_across_passes() {
        let mut admission = Admission::default();
        let honest = lease("10.244.5.0-24", "198.18.0.15", "0a:00:00:00:00:05", 10);
        let (ok, _) = admit_all(&mut admission, std::slice::from_ref(&honest));
        assert_eq!(ok, ["10.244.5.0-24"]);
        // A hijacker with a lower key and an older revision arrives later: it still loses.
        let hijacker = lease("10.244.2.0-24", "198.18.0.66", "0a:00:00:00:00:05", 1);
        let (ok, rejected) = admit_all(&mut admission, &[hijacker, honest.clone()]);
        assert_eq!(ok, ["10.244.5.0-24"]);
        assert_eq!(rejected[0].key.to_string(), "10.244.2.0-24");
        // Once the honest peer leaves, the other one is admitted.
        let hijacker = lease("10.244.2.0-24", "198.18.0.66", "0a:00:00:00:00:05", 1);
        let (ok, rejected) = admit_all(&mut admission, &[hijacker]);
        assert_eq!((ok, rejected.len()), (vec!["10.244.2.0-24".to_string()], 0));
    }

    #[test]
    fn newcomers_are_ordered_by_revision() {
        let older = lease("10.244.9.0-24", "198.18.0.19", "0a:00:00:00:00:09", 3);
        let newer = lease("10.244.4.0-24", "198.18.0.14", "0a:00:00:00:00:09", 7);
        let (ok, rejected) = admit_all(&mut Admission::default(), &[newer, older]);
        assert_eq!(ok, ["10.244.9.0-24"]);
        assert_eq!(rejected[0].key.to_string(), "10.244.4.0-24");
    }

    #[test]
    fn dual_stack_checks_each_family() {
        let mut id = identity();
        id.own = SubnetKey::parse("10.244.1.0-24&fc00:0:0:1::-64").unwrap();
        id.network_v6 = Some("fc00::/48".parse().unwrap());
        let mut peer = lease(
            "10.244.2.0-24&fc00:0:0:2::-64",
            "198.18.0.12",
            "0a:00:00:00:00:02",
            1,
        );
        peer.attrs.public_ipv6 = Some("fd00::12".parse().unwrap());
        let (ok, _) = Admission::default().admit(&id, std::slice::from_ref(&peer), &macs);
        assert_eq!(ok.len(), 1);
        peer.attrs.public_ipv6 = Some("ff02::1".parse().unwrap());
        let (ok, rejected) = Admission::default().admit(&id, std::slice::from_ref(&peer), &macs);
        assert!(ok.is_empty());
        assert_eq!(
            rejected[0].reason,
            "its public IP ff02::1 is a multicast address, not a unicast node address"
        );
        let outside = lease(
            "10.244.2.0-24&fd99::-64",
            "198.18.0.12",
            "0a:00:00:00:00:02",
            1,
        );
        let (_, rejected) = Admission::default().admit(&id, std::slice::from_ref(&outside), &macs);
        assert_eq!(rejected[0].kind, RejectKind::OutsideNetwork);
    }
}
