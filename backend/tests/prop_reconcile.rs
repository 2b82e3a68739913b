//! The targeted path is correct: after any sequence of lease batches (peers added,
//! changed in MAC, address or backend, removed, re-added; overlapping and otherwise
//! rejected peers; a foreign route on a peer's prefix; DirectRouting; removals held for a
//! grace period; peer routes through nexthop objects or not, another program's nexthop
//! at one of weft's ids) and of entries an admin deletes (reported by a notification),
//! applying the targeted passes to a model kernel leaves nothing for a full pass to
//! change, and no op ever touches a foreign route or another program's nexthop. The datapath runs detached (no kernel): its
//! targeted and full passes are planned by the real code, and the ops are applied to an
//! in-memory `Observed`. Every test is named `prop_*` (see docs/testing.md).

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_backend::backend::VxlanBackend;
use weft_backend::desired::{
    ForeignRoute, Observed, ObservedLink, ObservedNexthop, ObservedRoute, VxlanAttrs,
};
use weft_backend::diff::{self, Op};
use weft_backend::kernel::{KernelEvent, RouteAt};
use weft_backend::nexthop::{NexthopPlan, V4_BASE};
use weft_backend::reconcile::{Reconciler, Surroundings};
use weft_backend::vxlan::{self, VxlanConfig};
use weft_lease::family::Net;
use weft_lease::watch::LeaseEvent;
use weft_lease::{Lease, LeaseAttrs, SubnetKey};
use weft_testkit::check;

const OWN_MAC: [u8; 6] = [0x0a, 0x58, 0, 0, 0, 1];
/// A prefix a foreign route may hold (peer subnet 5).
const FOREIGN: u8 = 5;
/// A peer whose nexthop id another program's nexthop may hold (peer subnet 6).
const FOREIGN_NEXTHOP: u8 = 6;

fn subnet(i: u8) -> Net {
    format!("10.244.{i}.0/24").parse().unwrap()
}

/// A peer lease as the datastore may hold it: small pools, so subnets, addresses and
/// MACs collide (the own subnet is 10.244.1.0/24, the own address 198.18.0.1).
#[derive(Debug, Clone)]
struct PeerSpec {
    subnet: u8,
    ip: u8,
    mac: u8,
    vxlan: bool,
    revision: i64,
}

fn peer_spec() -> impl Strategy<Value = PeerSpec> {
    (
        0u8..8,
        0u8..6,
        0u8..6,
        prop::bool::weighted(0.9),
        0i64..1000,
    )
        .prop_map(|(subnet, ip, mac, vxlan, revision)| PeerSpec {
            subnet,
            ip,
            mac,
            vxlan,
            revision,
        })
}

fn lease(spec: &PeerSpec) -> Lease {
    // 0: no address; 1: this node's; 2-3: on the underlay; 4-5: behind a router.
    let public_ip = match spec.ip {
        0 => Ipv4Addr::UNSPECIFIED,
        1 => Ipv4Addr::new(198, 18, 0, 1),
        2 | 3 => Ipv4Addr::new(198, 18, 0, spec.ip),
        n => Ipv4Addr::new(198, 19, 0, n),
    };
    // 0: none; 1: this node's; 2: broadcast; others unicast.
    let mac = match spec.mac {
        0 => None,
        1 => Some("0a:58:00:00:00:01".to_string()),
        2 => Some("ff:ff:ff:ff:ff:ff".to_string()),
        n => Some(format!("0a:58:00:00:00:{n:02x}")),
    };
    let data = mac.map(|m| serde_json::json!({"VNI": 1, "VtepMAC": m}).into());
    Lease {
        key: SubnetKey {
            ipv4: Some(subnet(spec.subnet)),
            ipv6: None,
        },
        attrs: LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: if spec.vxlan { "vxlan" } else { "host-gw" }.into(),
            backend_data: data,
            backend_v6_data: None,
        },
        etcd_lease: 0,
        expiration: None,
        revision: spec.revision,
    }
}

/// One thing that happens between passes.
#[derive(Debug, Clone)]
enum Event {
    Put(PeerSpec),
    Delete(u8),
    /// An admin deletes the n-th route (or neighbour, FDB entry) weft has in the kernel.
    AdminDeletes(u8, u8),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        5 => peer_spec().prop_map(Event::Put),
        3 => (0u8..8).prop_map(Event::Delete),
        1 => (0u8..3, any::<u8>()).prop_map(|(kind, n)| Event::AdminDeletes(kind, n)),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    initial: Vec<PeerSpec>,
    batches: Vec<Vec<Event>>,
    direct_routing: bool,
    foreign_route: bool,
    hold_removals: bool,
    /// Peer routes through nexthop objects.
    nexthop_objects: bool,
    /// Another program's nexthop at the id of peer subnet [`FOREIGN_NEXTHOP`]'s route.
    foreign_nexthop: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(peer_spec(), 0..5),
        prop::collection::vec(prop::collection::vec(event(), 1..4), 1..10),
        any::<bool>(),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.7),
        prop::bool::weighted(0.3),
    )
        .prop_map(
            |(
                initial,
                batches,
                direct_routing,
                foreign_route,
                hold_removals,
                nexthop_objects,
                foreign_nexthop,
            )| Case {
                initial,
                batches,
                direct_routing,
                foreign_route,
                hold_removals,
                nexthop_objects,
                foreign_nexthop,
            },
        )
}

fn datapath(direct_routing: bool) -> Reconciler {
    datapath_in(direct_routing, "10.244.0.0/16")
}

/// The vxlan backend of node 1 (10.244.1.0/24 at 198.18.0.1 on eth0).
fn backend(direct_routing: bool) -> VxlanBackend {
    let config = VxlanConfig {
        vni: 1,
        port: 0,
        gbp: false,
        learning: false,
        direct_routing,
        mtu: None,
    };
    let own = SubnetKey {
        ipv4: Some(subnet(1)),
        ipv6: None,
    };
    let node = vxlan::Node {
        own,
        external_index: 2,
        external_name: "eth0".into(),
        external_mtu: 1500,
        local_v4: Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))),
        local_v6: None,
        connected: vec!["198.18.0.0/24".parse().unwrap()],
        mac_v4: OWN_MAC,
        mac_v6: [0x0a, 0x58, 0, 0, 0, 2],
    };
    VxlanBackend {
        config,
        node,
        nexthops: NexthopPlan::off(),
    }
}

fn datapath_in(direct_routing: bool, network: &str) -> Reconciler {
    let surroundings = Surroundings {
        network_v4: Some(network.parse().unwrap()),
        network_v6: None,
        public_ips: vec![IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))],
        host_networks: vec![("198.18.0.0/24".parse().unwrap(), "eth0".into())],
    };
    let backend = backend(direct_routing);
    let own = backend.node.own;
    let mut datapath = Reconciler::detached(Box::new(backend), surroundings);
    datapath.set_own(own);
    datapath
}

/// The kernel as weft left it at start: its device in place, maybe a foreign route and
/// another program's nexthop at one of weft's ids.
fn kernel(foreign_route: bool, foreign_nexthop: bool) -> Observed {
    let mut observed = Observed {
        links: vec![ObservedLink {
            kind: Some("vxlan".into()),
            tunnel: None,
            index: 5,
            name: "flannel.1".into(),
            vxlan: Some(VxlanAttrs {
                vni: 1,
                port: 8472,
                local: Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))),
                underlay_index: 2,
                learning: false,
                gbp: false,
            }),
            mtu: 1450,
            mac: OWN_MAC,
            up: true,
            addresses: vec![(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 0)), 32)],
        }],
        nexthops_read: true,
        ..Observed::default()
    };
    if foreign_route {
        observed.foreign_routes.push(ForeignRoute {
            destination: subnet(FOREIGN),
            description: "10.244.5.0/24 via 198.18.0.9 dev eth0 proto static".into(),
        });
    }
    if foreign_nexthop {
        observed.nexthops.push(ObservedNexthop {
            id: foreign_nexthop_id(),
            ours: false,
        });
    }
    observed
}

/// The nexthop id of peer subnet [`FOREIGN_NEXTHOP`]'s route (10.244.6.0/24 in
/// 10.244.0.0/16: index 6).
fn foreign_nexthop_id() -> NonZeroU32 {
    NonZeroU32::new(V4_BASE + u32::from(FOREIGN_NEXTHOP)).unwrap()
}

/// The model kernel's nexthop objects: weft's, and another program's.
fn nexthop_holder(kernel: &Observed, id: NonZeroU32) -> Option<bool> {
    kernel.nexthops.iter().find(|n| n.id == id).map(|n| n.ours)
}

/// Applies `ops` to the model kernel, as the executor would: no op may touch a foreign
/// route, and a route whose nexthop id another program holds fails (returned).
fn apply(kernel: &mut Observed, ops: &[Op]) -> Result<Vec<(Op, String)>, TestCaseError> {
    let mut failures = Vec::new();
    for op in ops {
        if let Op::ReplaceRoute(r) | Op::DelRoute(r) = op {
            prop_assert!(
                !kernel
                    .foreign_routes
                    .iter()
                    .any(|f| f.destination == r.destination),
                "{op} touches a foreign route"
            );
        }
        match op {
            Op::ReplaceRoute(r) => {
                if let Some(id) = r.nexthop {
                    match nexthop_holder(kernel, id) {
                        Some(false) => {
                            failures.push((op.clone(), format!("nexthop id {id} is foreign")));
                            continue;
                        }
                        Some(true) => {}
                        None => kernel.nexthops.push(ObservedNexthop { id, ours: true }),
                    }
                }
                kernel
                    .routes
                    .retain(|o| o.route.destination != r.destination);
                kernel.routes.push(ObservedRoute {
                    route: r.clone(),
                    marked: true,
                });
            }
            Op::DelRoute(r) => {
                kernel.routes.retain(|o| o.route != *r);
                if let Some(id) = r.nexthop {
                    kernel.nexthops.retain(|n| n.id != id || !n.ours);
                }
            }
            Op::DelNexthop(id) => {
                // Deleting one that is gone is fine (the executor checks first).
                prop_assert_ne!(
                    nexthop_holder(kernel, *id),
                    Some(false),
                    "{} is not weft's",
                    op
                );
                kernel.nexthops.retain(|n| n.id != *id);
                // The kernel deletes the routes through a deleted nexthop.
                kernel.routes.retain(|o| o.route.nexthop != Some(*id));
            }
            Op::ReplaceNeighbour(n) => {
                kernel
                    .neighbours
                    .retain(|o| (&o.device, o.ip) != (&n.device, n.ip));
                kernel.neighbours.push(n.clone());
            }
            Op::DelNeighbour(n) => kernel
                .neighbours
                .retain(|o| (&o.device, o.ip) != (&n.device, n.ip)),
            Op::ReplaceFdb(e) => {
                kernel
                    .fdb
                    .retain(|o| (&o.device, o.mac) != (&e.device, e.mac));
                kernel.fdb.push(e.clone());
            }
            Op::DelFdb(e) => kernel.fdb.retain(|o| o != e),
            other => prop_assert!(false, "unexpected op for a peer change: {other}"),
        }
    }
    Ok(failures)
}

/// What the kernel holds at a route's prefix, as `Kernel::route_at` would say.
fn route_at(kernel: &Observed, net: Net) -> RouteAt {
    if let Some(f) = kernel.foreign_routes.iter().find(|f| f.destination == net) {
        return RouteAt::Foreign(f.clone());
    }
    match kernel.routes.iter().find(|o| o.route.destination == net) {
        Some(ours) => RouteAt::Ours(ours.clone()),
        None => RouteAt::Nothing,
    }
}

/// A full pass on the model kernel: planned, applied, recorded. It reads the nexthop
/// objects only when the datapath asks, as `Kernel::observe` does.
fn full_pass(dp: &mut Reconciler, kernel: &mut Observed) -> Result<(), TestCaseError> {
    let desired = dp.full_desired();
    let mut seen = kernel.clone();
    if !dp.reads_nexthops() {
        seen.nexthops.clear();
        seen.nexthops_read = false;
    }
    let plan = dp.plan_full(desired, &seen);
    let failures = apply(kernel, &plan.ops)?;
    prop_assert!(failures.is_empty(), "a full pass failed: {failures:?}");
    dp.record_full(&plan, &seen, failures);
    Ok(())
}

/// A targeted pass on the model kernel; `false` when it fell back to a full pass.
fn targeted_pass(
    dp: &mut Reconciler,
    kernel: &mut Observed,
    admin_deleted: bool,
) -> Result<bool, TestCaseError> {
    let step = dp.plan_changes();
    let found = step
        .lookups
        .iter()
        .map(|r| route_at(kernel, r.destination))
        .collect();
    match dp.finish_step(step, found) {
        Some(planned) => {
            let failures = apply(kernel, &planned.ops)?;
            let failed = !failures.is_empty();
            let pass = dp.record_step(&planned, failures);
            if !admin_deleted {
                prop_assert_eq!(pass.counts.repairs(), 0, "no drift: {:?}", pass);
            }
            if failed {
                // A failed op makes the next pass a full one, which finds the route's
                // nexthop id taken and installs it without.
                prop_assert!(
                    dp.needs_full(),
                    "a failed targeted pass leaves a full pass due"
                );
                full_pass(dp, kernel)?;
                return Ok(false);
            }
            Ok(true)
        }
        None => {
            full_pass(dp, kernel)?;
            Ok(false)
        }
    }
}

/// The admin deletes one of weft's entries; the datapath hears of it.
fn admin_deletes(dp: &mut Reconciler, kernel: &mut Observed, kind: u8, n: u8) -> bool {
    let event = match kind {
        0 if !kernel.routes.is_empty() => {
            let gone = kernel.routes.remove(n as usize % kernel.routes.len());
            KernelEvent::Route {
                oif: Some(5),
                protocol: weft_backend::ROUTE_PROTOCOL,
                deleted: true,
                destination: Some(gone.route.destination),
            }
        }
        1 if !kernel.neighbours.is_empty() => {
            let gone = kernel
                .neighbours
                .remove(n as usize % kernel.neighbours.len());
            KernelEvent::Neighbour {
                ifindex: 5,
                deleted: true,
                bridge: false,
                ip: Some(gone.ip),
                mac: Some(gone.mac),
            }
        }
        2 if !kernel.fdb.is_empty() => {
            let gone = kernel.fdb.remove(n as usize % kernel.fdb.len());
            KernelEvent::Neighbour {
                ifindex: 5,
                deleted: true,
                bridge: true,
                ip: Some(gone.destination),
                mac: Some(gone.mac),
            }
        }
        _ => return false,
    };
    dp.note_event(&event);
    true
}

/// What a full pass would change now (held removals excluded while they are held).
fn full_pass_changes(dp: &mut Reconciler, kernel: &Observed, held: bool) -> Vec<Op> {
    let mut desired = dp.full_desired();
    desired.withdraw_foreign(kernel);
    desired.demote_taken_nexthops(&kernel.taken_nexthops());
    diff::diff(&desired, kernel)
        .into_iter()
        .filter(|op| !(held && op.is_peer_removal()))
        .collect()
}

fn run(case: Case) -> Result<&'static str, TestCaseError> {
    let mut dp = datapath(case.direct_routing);
    dp.use_nexthop_objects(case.nexthop_objects);
    let mut kernel = kernel(case.foreign_route, case.foreign_nexthop);
    let mut peers: BTreeMap<u8, Lease> = BTreeMap::new();
    for spec in &case.initial {
        peers.insert(spec.subnet, lease(spec));
    }
    dp.set_peers(peers.values());
    full_pass(&mut dp, &mut kernel)?;
    if case.hold_removals {
        dp.hold_removals(Instant::now() + Duration::from_secs(3600));
    }
    let mut fell_back = false;
    let mut repaired = false;
    for batch in &case.batches {
        let mut deleted = false;
        for event in batch {
            match event {
                Event::Put(spec) => {
                    peers.insert(spec.subnet, lease(spec));
                }
                Event::Delete(i) => {
                    peers.remove(i);
                }
                Event::AdminDeletes(kind, n) => {
                    deleted |= admin_deletes(&mut dp, &mut kernel, *kind, *n);
                }
            }
        }
        dp.set_peers(peers.values());
        repaired |= deleted;
        fell_back |= !targeted_pass(&mut dp, &mut kernel, deleted)?;
        let left = full_pass_changes(&mut dp, &kernel, case.hold_removals);
        prop_assert!(left.is_empty(), "a full pass would still change: {left:?}");
        for route in &kernel.routes {
            let id = route.route.nexthop;
            prop_assert!(
                id.is_none_or(|id| nexthop_holder(&kernel, id) == Some(true)),
                "{:?} goes through a nexthop that is not weft's",
                route.route
            );
            prop_assert_eq!(
                id.is_some(),
                case.nexthop_objects
                    && !(case.foreign_nexthop
                        && route.route.destination == subnet(FOREIGN_NEXTHOP)),
                "{:?}",
                route.route
            );
        }
    }
    Ok(match (fell_back, repaired) {
        (true, _) => "fell_back_to_full",
        (false, true) => "targeted_with_repairs",
        (false, false) => "targeted",
    })
}

#[test]
fn prop_targeted_passes_leave_nothing_for_a_full_pass() {
    let tally = check(case(), run);
    tally.assert_seen(&["targeted", "targeted_with_repairs"]);
}

/// Peer `i` of a /8 network with /24 subnets (10.100.0.0 upwards), each at its own
/// address with its own VTEP MAC, for the cost measurements below.
fn scale_peer(i: u32) -> Lease {
    let mut l = lease(&PeerSpec {
        subnet: 0,
        ip: 3,
        mac: 3,
        vxlan: true,
        revision: i64::from(i),
    });
    let net: Net = format!("10.{}.{}.0/24", 100 + i / 256, i % 256)
        .parse()
        .unwrap();
    l.key.ipv4 = Some(net);
    l.attrs.public_ip = Ipv4Addr::new(198, 19, (i / 256) as u8, (i % 256) as u8);
    l.attrs.backend_data = Some(
        serde_json::json!({
            "VNI": 1,
            "VtepMAC": format!("0a:58:01:{:02x}:{:02x}:01", i / 256, i % 256)
        })
        .into(),
    );
    l
}

/// Not a test: prints what planning costs at 15,000 peers (one peer added: the targeted
/// pass against a full pass's pure part; no kernel in either). Run with
/// `cargo test --release --test prop_incremental planning_cost -- --ignored --nocapture`.
#[test]
#[ignore]
fn planning_cost_at_15000_peers() {
    let mut dp = datapath_in(false, "10.0.0.0/8");
    let mut kernel = kernel(false, false);
    let mut peers: Vec<Lease> = (0..15_000).map(scale_peer).collect();
    dp.set_peers(peers.iter());
    let started = Instant::now();
    full_pass(&mut dp, &mut kernel).unwrap();
    eprintln!(
        "full pass planning (desired + diff + record), 15,000 peers: {:?}",
        started.elapsed()
    );
    let second = Instant::now();
    full_pass(&mut dp, &mut kernel).unwrap();
    eprintln!(
        "full pass planning again, nothing changed: {:?}",
        second.elapsed()
    );
    // The daemon passes the watcher's changes (O(changes)); the whole set once, as
    // `set_peers` compares it, for comparison.
    peers.push(scale_peer(15_000));
    let compared = Instant::now();
    dp.set_peers(peers.iter());
    let set_peers = compared.elapsed();
    full_pass(&mut dp, &mut kernel).unwrap();
    // The first allocation after a full pass's frees consolidates the allocator's free
    // lists (once per full pass); the event after it shows the steady cost.
    let warm = Instant::now();
    dp.apply_peer_events([LeaseEvent::Added(Arc::new(scale_peer(15_002)))]);
    let step = dp.plan_changes();
    let planned = dp
        .finish_step(step, vec![RouteAt::Nothing])
        .expect("targeted");
    dp.record_step(&planned, Vec::new());
    eprintln!("first targeted pass after a full one: {:?}", warm.elapsed());
    let new_peer = scale_peer(15_001);
    let started = Instant::now();
    dp.apply_peer_events([LeaseEvent::Added(Arc::new(new_peer))]);
    let events = started.elapsed();
    let step = dp.plan_changes();
    let planned_at = started.elapsed();
    let found = step
        .lookups
        .iter()
        .map(|r| route_at(&kernel, r.destination))
        .collect();
    let looked_up = started.elapsed();
    let planned = dp.finish_step(step, found).expect("targeted");
    let finished = started.elapsed();
    let pass = dp.record_step(&planned, Vec::new());
    eprintln!(
        "targeted planning of 1 new peer at 15,000: {:?} (events {events:?}, plan_changes \
         {:?}, finish_step {:?}, record_step {:?}; set_peers of the whole set instead: \
         {set_peers:?}), {} changes",
        started.elapsed(),
        planned_at - events,
        finished - looked_up,
        started.elapsed() - finished,
        pass.changes
    );
}

#[test]
#[ignore]
fn admission_cost_at_15000_peers() {
    use weft_backend::admission::{Admission, Identity};
    use weft_backend::backend::Backend;
    let leases: Vec<Lease> = (0..15_000u32).map(scale_peer).collect();
    let backend = backend(false);
    let identity = Identity {
        own: SubnetKey {
            ipv4: Some(subnet(1)),
            ipv6: None,
        },
        network_v4: Some("10.0.0.0/8".parse().unwrap()),
        network_v6: None,
        public_ips: vec![],
        macs: vec![OWN_MAC],
        host_networks: vec![],
    };
    let mut admission = Admission::default();
    let macs = |l: &Lease| backend.peer_macs(l);
    admission.admit(&identity, leases.iter(), &macs);
    let started = Instant::now();
    admission.admit(&identity, leases.iter(), &macs);
    eprintln!("admission with MACs parsed: {:?}", started.elapsed());
    let started = Instant::now();
    let nomacs = |_: &Lease| Vec::new();
    admission.admit(&identity, leases.iter(), &nomacs);
    eprintln!("admission without MACs: {:?}", started.elapsed());
    let started = Instant::now();
    for l in &leases {
        std::hint::black_box(backend.peer_macs(l));
    }
    eprintln!("peer_macs alone: {:?}", started.elapsed());
}
