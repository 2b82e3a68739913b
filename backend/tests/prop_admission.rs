//! Incremental admission is exact: after any sequence of lease batches (peers added,
//! changed, removed, re-added; subnets, addresses and VTEP MACs drawn from small pools so
//! they collide; now and then a change of this node's host networks), the verdicts of
//! `Admission::admit_changes` equal those of a full `Admission::admit` of the same peer
//! set run at the same points (same history: first come keeps), reasons included, and
//! every peer whose verdict changed is among the keys it reports re-judged. Every test
//! is named `prop_*` (see docs/testing.md).

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use weft_backend::admission::{Admission, Identity, Rejection};
use weft_backend::mac::Mac;
use weft_backend::vxlan::vtep_mac;
use weft_subnet::family::{Family, Net};
use weft_subnet::{Lease, LeaseAttrs, SubnetKey};
use weft_testkit::check;

const OWN_MAC: Mac = [0x0a, 0x58, 0, 0, 0, 1];

/// A peer lease from small pools: subnet 1 is this node's, 7 lies outside the network.
#[derive(Debug, Clone)]
struct PeerSpec {
    v4: u8,
    v6: Option<u8>,
    ip: u8,
    ipv6: Option<u8>,
    mac: u8,
    mac_v6: Option<u8>,
    revision: i64,
}

fn peer_spec() -> impl Strategy<Value = PeerSpec> {
    (
        0u8..8,
        prop::option::weighted(0.3, 0u8..3),
        0u8..6,
        prop::option::weighted(0.3, 0u8..3),
        0u8..7,
        prop::option::weighted(0.2, 0u8..7),
        0i64..12,
    )
        .prop_map(|(v4, v6, ip, ipv6, mac, mac_v6, revision)| PeerSpec {
            v4,
            v6,
            ip,
            ipv6,
            mac,
            mac_v6,
            revision,
        })
}

fn mac_data(n: u8) -> Option<serde_json::Value> {
    // 0: none; 1: this node's; 2: broadcast; others unicast.
    let text = match n {
        0 => return None,
        1 => "0a:58:00:00:00:01".to_string(),
        2 => "ff:ff:ff:ff:ff:ff".to_string(),
        n => format!("0a:58:00:00:00:{n:02x}"),
    };
    Some(serde_json::json!({"VNI": 1, "VtepMAC": text}))
}

fn lease(spec: &PeerSpec) -> Lease {
    let v4: Net = format!(
        "10.{}.{}.0/24",
        if spec.v4 == 7 { 99 } else { 244 },
        spec.v4
    )
    .parse()
    .unwrap();
    let v6 = spec.v6.map(|n| {
        let text = if n == 2 {
            "fd99::/64".to_string()
        } else {
            format!("fc00:0:0:{}::/64", n + 2)
        };
        text.parse::<Net>().unwrap()
    });
    // 0: unspecified; 1: this node's; others unicast.
    let public_ip = match spec.ip {
        0 => Ipv4Addr::UNSPECIFIED,
        n => Ipv4Addr::new(198, 18, 0, n),
    };
    Lease {
        key: SubnetKey {
            ipv4: Some(v4),
            ipv6: v6,
        },
        attrs: LeaseAttrs {
            public_ip,
            public_ipv6: spec
                .ipv6
                .map(|n| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(n))),
            backend_type: "vxlan".into(),
            backend_data: mac_data(spec.mac),
            backend_v6_data: spec.mac_v6.and_then(mac_data),
        },
        etcd_lease: 0,
        expiration: None,
        revision: spec.revision,
    }
}

fn macs(lease: &Lease) -> Vec<(Family, Mac)> {
    let v4 = vtep_mac(lease.attrs.backend_data.as_ref()).map(|m| (Family::V4, m));
    let v6 = vtep_mac(lease.attrs.backend_v6_data.as_ref()).map(|m| (Family::V6, m));
    v4.into_iter().chain(v6).collect()
}

fn identity(dual_stack: bool, docker: bool) -> Identity {
    let mut identity = Identity {
        own: SubnetKey::parse("10.244.1.0-24").unwrap(),
        network_v4: Some("10.244.0.0/16".parse().unwrap()),
        network_v6: None,
        public_ips: vec!["198.18.0.1".parse().unwrap()],
        macs: vec![OWN_MAC],
        host_networks: vec![("198.18.0.0/24".parse().unwrap(), "eth0".into())],
    };
    if dual_stack {
        identity.own = SubnetKey::parse("10.244.1.0-24&fc00:0:0:1::-64").unwrap();
        identity.network_v6 = Some("fc00::/48".parse().unwrap());
        identity.public_ips.push("fd00::1".parse().unwrap());
    }
    if docker {
        identity
            .host_networks
            .push(("10.244.6.0/24".parse().unwrap(), "docker0".into()));
    }
    identity
}

/// One thing that happens between passes.
#[derive(Debug, Clone)]
enum Event {
    Put(PeerSpec),
    /// Removes the n-th peer (modulo their number).
    Delete(u8),
    /// A docker bridge appears on, or leaves, subnet 6.
    ToggleDocker,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => peer_spec().prop_map(Event::Put),
        3 => any::<u8>().prop_map(Event::Delete),
        1 => Just(Event::ToggleDocker),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    dual_stack: bool,
    initial: Vec<PeerSpec>,
    batches: Vec<Vec<Event>>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        prop::collection::vec(peer_spec(), 0..8),
        prop::collection::vec(prop::collection::vec(event(), 1..4), 1..12),
    )
        .prop_map(|(dual_stack, initial, batches)| Case {
            dual_stack,
            initial,
            batches,
        })
}

/// A pass's verdicts: the admitted keys, and the rejections by key.
type Verdicts = (BTreeSet<SubnetKey>, BTreeMap<SubnetKey, Rejection>);

fn full(
    reference: &mut Admission,
    identity: &Identity,
    peers: &BTreeMap<SubnetKey, Lease>,
) -> Verdicts {
    let (admitted, rejected) = reference.admit(identity, peers.values(), &macs);
    (
        admitted.iter().map(|l| l.key).collect(),
        rejected.into_iter().map(|r| (r.key, r)).collect(),
    )
}

fn incremental(subject: &Admission) -> Verdicts {
    (
        subject.admitted().copied().collect(),
        subject.rejections().map(|r| (r.key, r.clone())).collect(),
    )
}

/// Applies one batch to the peer set; returns the keys it touched.
fn apply(
    batch: &[Event],
    peers: &mut BTreeMap<SubnetKey, Lease>,
    docker: &mut bool,
) -> BTreeSet<SubnetKey> {
    let mut changed = BTreeSet::new();
    for event in batch {
        match event {
            Event::Put(spec) => {
                let lease = lease(spec);
                changed.insert(lease.key);
                peers.insert(lease.key, lease);
            }
            Event::Delete(n) if !peers.is_empty() => {
                let key = *peers.keys().nth(*n as usize % peers.len()).unwrap();
                peers.remove(&key);
                changed.insert(key);
            }
            Event::Delete(_) => {}
            Event::ToggleDocker => *docker = !*docker,
        }
    }
    changed
}

fn run(case: Case) -> Result<&'static str, TestCaseError> {
    let mut peers: BTreeMap<SubnetKey, Lease> = BTreeMap::new();
    for spec in &case.initial {
        let lease = lease(spec);
        peers.insert(lease.key, lease);
    }
    let mut docker = false;
    let mut reference = Admission::default();
    let mut subject = Admission::default();
    let id = identity(case.dual_stack, docker);
    let mut before = full(&mut reference, &id, &peers);
    subject.admit_changes(
        &id,
        &peers,
        peers.keys().copied().collect::<Vec<_>>(),
        &macs,
    );
    prop_assert_eq!(&incremental(&subject), &before);
    let mut freed = false;
    for batch in &case.batches {
        let changed = apply(batch, &mut peers, &mut docker);
        let id = identity(case.dual_stack, docker);
        let now = full(&mut reference, &id, &peers);
        let rejudged: BTreeSet<SubnetKey> = subject
            .admit_changes(&id, &peers, changed.iter().copied(), &macs)
            .into_iter()
            .collect();
        prop_assert_eq!(&incremental(&subject), &now, "after {:?}", batch);
        for key in peers.keys().chain(&changed) {
            let verdict = |v: &Verdicts| (v.0.contains(key), v.1.get(key).cloned());
            if verdict(&before) != verdict(&now) {
                prop_assert!(rejudged.contains(key), "{key}'s verdict changed unnoticed");
                freed |= !changed.contains(key) && now.0.contains(key);
            }
        }
        before = now;
    }
    // A rejected peer that won once the peer holding its claim changed or left.
    Ok(if freed { "freed_claim_won" } else { "plain" })
}

#[test]
fn prop_incremental_admission_equals_full_admission() {
    let tally = check(case(), run);
    tally.assert_seen(&["freed_claim_won", "plain"]);
}
