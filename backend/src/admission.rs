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
//! "Before it" means first come keeps it: an admitted peer keeps its claims (subnets,
//! MACs) until its own lease changes or goes, and newcomers are judged in datastore order
//! (revision, then key). A rejected peer never blocks the others; the caller logs each
//! rejection once.
//!
//! The verdicts and claims are kept between passes ([`Admission::update`]): a lease batch
//! judges only its changed peers and the peers rejected so far (a claim they lost may be
//! free now), so it costs O(changes + rejected), not O(peers), and a full reconcile pass
//! reuses the verdicts instead of judging everything again. Everything is judged afresh
//! only when this node's own identity changes. `tests/prop_admission.rs` checks, for any
//! sequence of batches, that the verdicts are sound (admitted peers pass every rule and do
//! not collide; each rejected peer breaks a rule or collides with the admitted peer named)
//! and that an unchanged admitted peer is never displaced.

mod ledger;

use crate::mac::{self, Mac};
use ledger::{Ips, Ledger, Macs};
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use weft_lease::family::{Family, Net};
use weft_lease::{Lease, SubnetKey};

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

/// The verdicts on the peers, and what the admitted ones claim, kept between passes:
/// a change is judged against the claims of the peers already admitted (see
/// [`Admission::update`]), so its cost does not grow with the number of peers.
#[derive(Debug, Default)]
pub struct Admission {
    /// The identity the verdicts were reached against; `None` before the first.
    identity: Option<Identity>,
    ledger: Ledger,
    rejected: BTreeMap<SubnetKey, Rejection>,
}

/// The peers an [`Admission::update`] judged again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judged {
    /// Every peer (the first admission, or this node's identity changed).
    All,
    /// These keys (removed ones included), in key order.
    Keys(Vec<SubnetKey>),
}

impl Admission {
    /// Judges every peer of `peers` afresh, replacing all verdicts; returns the admitted
    /// ones (in key order) and the rejections. Peers admitted before are judged first,
    /// in their order, then newcomers by revision and key (see the module docs).
    pub fn admit<'a>(
        &mut self,
        identity: &Identity,
        peers: impl IntoIterator<Item = &'a Lease>,
        macs_of: MacsOf<'_>,
    ) -> (Vec<&'a Lease>, Vec<Rejection>) {
        let mut ordered: Vec<&Lease> = peers.into_iter().collect();
        ordered.sort_by_key(|l| (!self.ledger.holds(&l.key), l.revision, l.key));
        self.identity = Some(identity.clone());
        self.ledger = Ledger::default();
        self.rejected.clear();
        let mut by_key = ordered.clone();
        by_key.sort_by_key(|l| l.key);
        let lease_of = |key: &SubnetKey| {
            by_key
                .binary_search_by_key(key, |l| l.key)
                .ok()
                .map(|i| by_key[i])
        };
        let mut admitted = Vec::with_capacity(ordered.len());
        let mut rejected = Vec::new();
        for lease in ordered {
            match self.judge(identity, lease, macs_of, &lease_of) {
                Ok(()) => admitted.push(lease),
                Err(rejection) => rejected.push(rejection),
            }
        }
        self.ledger.pack();
        admitted.sort_by_key(|l| l.key);
        (admitted, rejected)
    }

    /// Judges again after the leases under `changed` were added, changed or removed in
    /// `peers` (the whole set now). A changed peer gives up its claims and is judged
    /// again, with the peers rejected so far (a claim they lost to may be free now):
    /// peers admitted before first, then by revision and key. Every other admitted peer
    /// keeps its claims, so a newcomer never displaces an admitted peer. A new identity
    /// of this node (or none judged yet) judges everything, as [`Admission::admit`].
    pub fn update<L: Borrow<Lease>>(
        &mut self,
        identity: &Identity,
        peers: &BTreeMap<SubnetKey, L>,
        changed: impl IntoIterator<Item = SubnetKey>,
        macs_of: MacsOf<'_>,
    ) -> Judged {
        if self.identity.as_ref() != Some(identity) {
            self.admit(identity, peers.values().map(Borrow::borrow), macs_of);
            return Judged::All;
        }
        let mut was_admitted = HashSet::new();
        let mut judged: BTreeSet<SubnetKey> =
            std::mem::take(&mut self.rejected).into_keys().collect();
        for key in changed {
            if self.ledger.release(&key) {
                was_admitted.insert(key);
            }
            judged.insert(key);
        }
        let mut ordered: Vec<&Lease> = judged
            .iter()
            .filter_map(|k| peers.get(k).map(Borrow::borrow))
            .collect();
        ordered.sort_by_key(|l| (!was_admitted.contains(&l.key), l.revision, l.key));
        let lease_of = |key: &SubnetKey| peers.get(key).map(Borrow::borrow);
        for lease in ordered {
            // Rejections are kept in `self.rejected`; the caller reads them there.
            let _ = self.judge(identity, lease, macs_of, &lease_of);
        }
        Judged::Keys(judged.into_iter().collect())
    }

    /// Judges one peer against the claims so far; an admitted peer claims its share.
    fn judge<'l>(
        &mut self,
        identity: &Identity,
        lease: &Lease,
        macs_of: MacsOf<'_>,
        lease_of: &dyn Fn(&SubnetKey) -> Option<&'l Lease>,
    ) -> Result<(), Rejection> {
        let holders = Holders {
            ledger: &self.ledger,
            lease_of,
        };
        match check(identity, lease, macs_of(lease), &holders) {
            Ok(macs) => {
                self.ledger.claim(lease.key, macs);
                Ok(())
            }
            Err((kind, reason)) => {
                let rejection = Rejection {
                    key: lease.key,
                    kind,
                    reason,
                };
                self.rejected.insert(lease.key, rejection.clone());
                Err(rejection)
            }
        }
    }

    /// Whether the peer under `key` is admitted.
    pub fn is_admitted(&self, key: &SubnetKey) -> bool {
        self.ledger.holds(key)
    }

    /// Every admitted peer, in no particular order.
    pub fn admitted(&self) -> impl Iterator<Item = &SubnetKey> {
        self.ledger.admitted()
    }

    /// Why the peer under `key` is rejected; `None` if it is admitted or unknown.
    pub fn rejection(&self, key: &SubnetKey) -> Option<&Rejection> {
        self.rejected.get(key)
    }

    /// Every rejection, in key order.
    pub fn rejections(&self) -> impl Iterator<Item = &Rejection> {
        self.rejected.values()
    }

    /// Forgets every verdict: the next [`Admission::update`] judges everything (the
    /// caller went on without admission meanwhile, so its changes were not tracked).
    pub fn forget(&mut self) {
        *self = Admission::default();
    }
}

/// The admitted peers' claims, and their leases (for the addresses a MAC is used at).
struct Holders<'a, 'l> {
    ledger: &'a Ledger,
    lease_of: &'a dyn Fn(&SubnetKey) -> Option<&'l Lease>,
}

/// The public IPs of `lease` for the families this node uses.
fn public_ips(identity: &Identity, lease: &Lease) -> Ips {
    let v4 = (identity.own.ipv4.is_some() && lease.key.ipv4.is_some())
        .then_some(IpAddr::V4(lease.attrs.public_ip));
    let v6 = (identity.own.ipv6.is_some() && lease.key.ipv6.is_some())
        .then_some(lease.attrs.public_ipv6.map(IpAddr::V6))
        .flatten();
    [v4, v6]
}

type Verdict<T> = Result<T, (RejectKind, String)>;

fn check(
    identity: &Identity,
    lease: &Lease,
    macs: Vec<(Family, Mac)>,
    claims: &Holders<'_, '_>,
) -> Verdict<Macs> {
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
    for ip in ips.iter().flatten() {
        check_public_ip(identity, *ip)?;
    }
    let mut checked = [None, None];
    for (family, mac) in macs {
        let (used, slot) = match family {
            Family::V4 => (identity.own.ipv4.is_some() && lease.key.ipv4.is_some(), 0),
            Family::V6 => (identity.own.ipv6.is_some() && lease.key.ipv6.is_some(), 1),
        };
        if used {
            check_mac(identity, mac, &ips, claims)?;
            checked[slot] = Some(mac);
        }
    }
    Ok(checked)
}

fn check_subnet(
    identity: &Identity,
    subnet: Net,
    own: Net,
    network: Option<Net>,
    claims: &Holders<'_, '_>,
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
    if let Some(first) = claims.ledger.subnet_holder(&subnet) {
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

fn check_mac(identity: &Identity, mac: Mac, ips: &Ips, claims: &Holders<'_, '_>) -> Verdict<()> {
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
    if let Some(first) = claims.ledger.mac_holder(&mac)
        && (claims.lease_of)(first).map(|holder| public_ips(identity, holder)) != Some(*ips)
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
    use weft_lease::LeaseAttrs;

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
