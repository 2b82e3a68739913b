//! Property test of incremental admission ([`Admission::update`]): after any sequence of
//! lease batches (peers added, changed, removed; hostile values among them) the verdicts
//! are those a peer-by-peer judgement gives, and admitted peers keep their place:
//! - every present peer is admitted or rejected, never both, and nothing else is known;
//! - admitted peers pass every rule alone and do not collide with each other (no shared
//!   subnet, a VTEP MAC shared only at the same public IP);
//! - a rejected peer fails a rule alone, or collides with the admitted peer its reason
//!   names (so no rejected peer could have been admitted instead);
//! - an admitted peer whose lease did not change stays admitted (first come keeps);
//! - the first update equals a full admission ([`Admission::admit`]).

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use weft_backend::admission::{Admission, Identity, Judged, RejectKind};
use weft_backend::mac::Mac;
use weft_backend::vxlan::vtep_mac;
use weft_lease::family::{Family, Net};
use weft_lease::{Lease, LeaseAttrs, SubnetKey};
use weft_testkit::check;

const OWN_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];

fn identity() -> Identity {
    Identity {
        own: SubnetKey::parse("10.244.1.0-24").unwrap(),
        network_v4: Some("10.244.0.0/16".parse().unwrap()),
        network_v6: None,
        public_ips: vec!["198.18.0.1".parse().unwrap()],
        macs: vec![OWN_MAC],
        host_networks: vec![("198.18.0.0/24".parse().unwrap(), "eth0".into())],
    }
}

/// A peer from small pools, so collisions are common: subnets 10.244.0-7.0/24 (1 is this
/// node's; one /25 and one outside the network), public IPs 198.18.1.1-3 (plus this
/// node's and a multicast one), MACs 0a:..:1-3 (plus this node's and a broadcast one).
#[derive(Debug, Clone)]
struct Spec {
    subnet: u8,
    ip: u8,
    mac: u8,
}

fn spec() -> impl Strategy<Value = Spec> {
    (0u8..10, 0u8..5, 0u8..5).prop_map(|(subnet, ip, mac)| Spec { subnet, ip, mac })
}

fn key_of(subnet: u8) -> SubnetKey {
    let text = match subnet {
        8 => "10.244.9.0-25".to_string(),
        9 => "10.99.0.0-24".to_string(),
        n => format!("10.244.{n}.0-24"),
    };
    SubnetKey::parse(&text).unwrap()
}

fn lease(spec: &Spec, revision: i64) -> Lease {
    let ip = match spec.ip {
        3 => Ipv4Addr::new(198, 18, 0, 1),
        4 => Ipv4Addr::new(224, 0, 0, 1),
        n => Ipv4Addr::new(198, 18, 1, n + 1),
    };
    let mac = match spec.mac {
        3 => "02:00:00:00:00:01".to_string(),
        4 => "ff:ff:ff:ff:ff:ff".to_string(),
        n => format!("0a:00:00:00:00:{:02x}", n + 1),
    };
    Lease {
        key: key_of(spec.subnet),
        attrs: LeaseAttrs {
            public_ip: ip,
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
    vtep_mac(lease.attrs.backend_data.as_ref())
        .map(|m| vec![(Family::V4, m)])
        .unwrap_or_default()
}

/// One change: a put of a peer, or the removal of the peer under a subnet.
#[derive(Debug, Clone)]
enum Change {
    Put(Spec),
    Remove(u8),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => spec().prop_map(Change::Put),
        1 => (0u8..10).prop_map(Change::Remove),
    ]
}

fn batches() -> impl Strategy<Value = Vec<Vec<Change>>> {
    prop::collection::vec(prop::collection::vec(change(), 1..4), 1..12)
}

fn v4(lease: &Lease) -> Net {
    lease.key.ipv4.unwrap()
}

fn mac_of(lease: &Lease) -> Option<Mac> {
    macs(lease).first().map(|(_, m)| *m)
}

/// Whether two admitted peers collide: the same subnet, or one MAC at two public IPs.
fn collide(a: &Lease, b: &Lease) -> bool {
    v4(a) == v4(b)
        || (mac_of(a).is_some() && mac_of(a) == mac_of(b) && a.attrs.public_ip != b.attrs.public_ip)
}

/// The rule a peer breaks when judged alone, if any.
fn alone(identity: &Identity, lease: &Lease) -> Option<RejectKind> {
    let (_, rejected) = Admission::default().admit(identity, [lease], &macs);
    rejected.first().map(|r| r.kind)
}

fn check_verdicts(
    admission: &Admission,
    peers: &BTreeMap<SubnetKey, Lease>,
) -> Result<(), TestCaseError> {
    let identity = identity();
    let admitted: Vec<&Lease> = peers
        .values()
        .filter(|l| admission.is_admitted(&l.key))
        .collect();
    prop_assert_eq!(
        admission.admitted().count(),
        admitted.len(),
        "only present peers are admitted"
    );
    for lease in peers.values() {
        prop_assert!(
            admission.is_admitted(&lease.key) != admission.rejection(&lease.key).is_some(),
            "{} is admitted or rejected, not both",
            lease.key
        );
    }
    prop_assert!(
        admission.rejections().all(|r| peers.contains_key(&r.key)),
        "only present peers are rejected"
    );
    for (i, a) in admitted.iter().enumerate() {
        prop_assert_eq!(
            alone(&identity, a),
            None,
            "{} admitted against a rule",
            a.key
        );
        for b in &admitted[i + 1..] {
            prop_assert!(!collide(a, b), "{} and {} both admitted", a.key, b.key);
        }
    }
    for rejection in admission.rejections() {
        let lease = &peers[&rejection.key];
        match rejection.kind {
            RejectKind::OverlapsPeer | RejectKind::VtepMacClaimed
                if alone(&identity, lease).is_none() =>
            {
                let named = admitted
                    .iter()
                    .find(|a| rejection.reason.contains(&format!("lease {} ", a.key)));
                prop_assert!(
                    named.is_some_and(|a| collide(a, lease)),
                    "{} rejected for a collision with no admitted peer: {}",
                    lease.key,
                    rejection.reason
                );
            }
            kind => prop_assert_eq!(alone(&identity, lease), Some(kind), "{}", lease.key),
        }
    }
    Ok(())
}

fn run(batches: Vec<Vec<Change>>) -> Result<&'static str, TestCaseError> {
    let identity = identity();
    let mut admission = Admission::default();
    let mut peers = BTreeMap::new();
    let mut revision = 0;
    let mut collided = false;
    for (n, batch) in batches.into_iter().enumerate() {
        let mut changed = Vec::new();
        for change in batch {
            revision += 1;
            match change {
                Change::Put(spec) => {
                    let lease = lease(&spec, revision);
                    changed.push(lease.key);
                    peers.insert(lease.key, lease);
                }
                Change::Remove(subnet) => {
                    changed.push(key_of(subnet));
                    peers.remove(&key_of(subnet));
                }
            }
        }
        let before: Vec<SubnetKey> = admission
            .admitted()
            .copied()
            .filter(|k| !changed.contains(k))
            .collect();
        let judged = admission.update(&identity, &peers, changed, &macs);
        if n == 0 {
            prop_assert_eq!(judged, Judged::All, "the first update judges everything");
            let (full, _) = Admission::default().admit(&identity, peers.values(), &macs);
            let full: Vec<SubnetKey> = full.iter().map(|l| l.key).collect();
            let mut now: Vec<SubnetKey> = admission.admitted().copied().collect();
            now.sort();
            prop_assert_eq!(now, full, "the first update is a full admission");
        }
        for key in before {
            prop_assert!(
                admission.is_admitted(&key),
                "{} was admitted, did not change, and lost its place",
                key
            );
        }
        check_verdicts(&admission, &peers)?;
        collided |= admission.rejections().any(|r| {
            matches!(
                r.kind,
                RejectKind::OverlapsPeer | RejectKind::VtepMacClaimed
            )
        });
    }
    Ok(if collided { "collisions" } else { "none" })
}

#[test]
fn prop_incremental_admission_keeps_verdicts_sound() {
    let tally = check(batches(), run);
    tally.assert_seen(&["collisions", "none"]);
}

#[test]
fn a_new_identity_judges_everything_again() {
    let mut admission = Admission::default();
    let peer = lease(
        &Spec {
            subnet: 2,
            ip: 0,
            mac: 0,
        },
        1,
    );
    let peers = BTreeMap::from([(peer.key, peer.clone())]);
    assert_eq!(
        admission.update(&identity(), &peers, [], &macs),
        Judged::All
    );
    assert_eq!(
        admission.update(&identity(), &peers, [], &macs),
        Judged::Keys(vec![])
    );
    let mut moved = identity();
    moved.public_ips = vec![IpAddr::V4(peer.attrs.public_ip)];
    assert_eq!(admission.update(&moved, &peers, [], &macs), Judged::All);
    assert_eq!(
        admission.rejection(&peer.key).map(|r| r.kind),
        Some(RejectKind::OwnPublicIp)
    );
}
