//! The netlink executor against a real kernel, inside throwaway network namespaces:
//! desired state applied, read back with iproute2 in flannel's exact shape, converged
//! state idempotent, and repairs after an admin deletes things; peer routes through
//! nexthop objects, and another program's objects left alone.

mod support;

use serde_json::Value;
use std::net::IpAddr;
use support::netns::{Netns, block_on_in};
use support::unique;
use weft_backend::desired::{Desired, Device, Fdb, Link, Neighbour, Route, VxlanLink};
use weft_backend::diff::{Op, diff};
use weft_backend::kernel::Kernel;
use weft_backend::mac::{self, Mac};
use weft_backend::nexthop::{NexthopPlan, V4_BASE};

const DEV: &str = "flannel.1";

/// A node namespace with an "underlay" veth eth0 (198.18.0.11/24, peer end in the same
/// namespace so nothing leaves it).
fn node() -> Netns {
    let ns = Netns::new(&unique("wk"));
    ns.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0-peer",
    ]);
    ns.ip(&["addr", "add", "198.18.0.11/24", "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&["link", "set", "eth0-peer", "up"]);
    ns
}

fn peer_mac(n: u8) -> Mac {
    [0x0a, 0x58, 0x0a, 0xf4, n, 0x00]
}

fn ifindex(ns: &Netns, name: &str) -> u32 {
    let links: Value = serde_json::from_str(&ns.ip(&["-j", "link", "show", name])).unwrap();
    links[0]["ifindex"].as_u64().unwrap() as u32
}

fn desired(ns: &Netns, peers: &[(u8, &str)]) -> Desired {
    let mut d = Desired {
        devices: vec![Device {
            link: Link::Vxlan(VxlanLink {
                name: DEV.into(),
                vni: 1,
                port: 0,
                local: "198.18.0.11".parse().unwrap(),
                underlay_index: ifindex(ns, "eth0"),
                learning: false,
                gbp: false,
                mtu: 1450,
                mac: [0x02, 0, 0, 0, 0, 0x11],
            }),
            addresses: vec!["10.244.1.0/32".parse().unwrap()],
        }],
        ..Desired::default()
    };
    for (n, public_ip) in peers {
        let subnet: weft_subnet::family::Net = format!("10.244.{n}.0/24").parse().unwrap();
        d.add_neighbour(Neighbour {
            device: DEV.into(),
            ip: subnet.ip(),
            mac: peer_mac(*n),
        });
        d.add_fdb(Fdb {
            device: DEV.into(),
            mac: peer_mac(*n),
            destination: public_ip.parse().unwrap(),
        });
        d.add_route(Route {
            destination: subnet,
            gateway: Some(subnet.ip()),
            device: DEV.into(),
            onlink: true,
            nexthop: None,
        });
    }
    d
}

/// One reconcile pass: observe, diff, apply. Returns the ops it needed.
fn converge(ns: &Netns, desired: &Desired) -> Vec<Op> {
    let desired = desired.clone();
    block_on_in(&ns.name, move || async move {
        let kernel = Kernel::connect().expect("netlink");
        let observed = kernel.observe(&desired, true).await.expect("observe");
        let ops = diff(&desired, &observed);
        let failures = kernel.apply(&ops).await;
        assert!(failures.is_empty(), "failed ops: {failures:?}");
        ops
    })
}

fn json(ns: &Netns, args: &[&str]) -> Value {
    serde_json::from_str(&ns.ip(args)).unwrap()
}

fn bridge_fdb(ns: &Netns) -> Value {
    let output = ns.exec(&["bridge", "-j", "fdb", "show", "dev", DEV]);
    serde_json::from_slice(&output.stdout).unwrap()
}

fn routes(ns: &Netns) -> Vec<(String, String, Vec<String>, String)> {
    let v = json(ns, &["-j", "route", "show", "dev", DEV]);
    v.as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("gateway").is_some())
        .map(|r| {
            let flags = r["flags"]
                .as_array()
                .map(|f| f.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            (
                r["dst"].as_str().unwrap().to_string(),
                r["gateway"].as_str().unwrap().to_string(),
                flags,
                r["protocol"].to_string(),
            )
        })
        .collect()
}

#[test]
fn programs_flannels_shape_and_converges() {
    let ns = node();
    let want = desired(&ns, &[(2, "198.18.0.12"), (3, "198.18.0.13")]);
    let ops = converge(&ns, &want);
    assert!(matches!(ops[0], Op::CreateLink(_)), "{ops:?}");

    // The device: vxlan id 1, local, dev eth0, nolearning, mtu 1450, our MAC, up, /32.
    let link = &json(&ns, &["-d", "-j", "link", "show", DEV])[0];
    let info = &link["linkinfo"]["info_data"];
    assert_eq!(link["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(
        (
            info["id"].as_u64(),
            info["local"].as_str(),
            info["port"].as_u64()
        ),
        (Some(1), Some("198.18.0.11"), Some(8472))
    );
    assert_eq!(info["learning"], Value::Bool(false));
    assert_eq!(link["mtu"], 1450);
    assert_eq!(link["address"], "02:00:00:00:00:11");
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    let addrs = &json(&ns, &["-j", "addr", "show", DEV])[0]["addr_info"];
    assert!(
        addrs
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["local"] == "10.244.1.0" && a["prefixlen"] == 32),
        "{addrs}"
    );

    // Per peer: route via the subnet address, onlink, marked with weft's protocol.
    let mut r = routes(&ns);
    r.sort();
    assert_eq!(r.len(), 2);
    assert_eq!(
        (r[0].0.as_str(), r[0].1.as_str()),
        ("10.244.2.0/24", "10.244.2.0")
    );
    assert!(r[0].2.contains(&"onlink".to_string()));
    assert_eq!(r[0].3, "\"91\"");
    // Permanent neighbour and FDB entries.
    let neigh = json(&ns, &["-j", "neigh", "show", "dev", DEV]);
    let n2 = neigh
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["dst"] == "10.244.2.0")
        .expect("neighbour 10.244.2.0");
    assert_eq!(n2["lladdr"], "0a:58:0a:f4:02:00");
    assert!(
        n2["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "PERMANENT")
    );
    let fdb = bridge_fdb(&ns);
    let f2 = fdb
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["mac"] == "0a:58:0a:f4:02:00")
        .expect("fdb entry");
    assert_eq!(f2["dst"], "198.18.0.12");
    assert!(f2["flags"].as_array().unwrap().iter().any(|f| f == "self"));
    assert_eq!(f2["state"], "permanent");

    // Converged: a second pass changes nothing.
    assert_eq!(converge(&ns, &want), vec![]);
}

#[test]
fn peer_changes_and_admin_deletions_are_repaired() {
    let ns = node();
    converge(
        &ns,
        &desired(&ns, &[(2, "198.18.0.12"), (3, "198.18.0.13")]),
    );

    // Peer 3 leaves; peer 2 moved to another public IP.
    let want = desired(&ns, &[(2, "198.18.0.22")]);
    converge(&ns, &want);
    assert_eq!(routes(&ns).len(), 1);
    let fdb = bridge_fdb(&ns);
    let macs: Vec<&str> = fdb
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["mac"].as_str())
        .filter(|m| m.starts_with("0a:58"))
        .collect();
    assert_eq!(macs, ["0a:58:0a:f4:02:00"]);
    assert_eq!(
        fdb.as_array()
            .unwrap()
            .iter()
            .find(|e| e["mac"] == "0a:58:0a:f4:02:00")
            .unwrap()["dst"],
        "198.18.0.22"
    );
    assert!(
        json(&ns, &["-j", "neigh", "show", "dev", DEV])
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["dst"] != "10.244.3.0")
    );

    // An admin deletes the route and the FDB entry: one pass restores exactly those.
    ns.ip(&["route", "del", "10.244.2.0/24", "dev", DEV]);
    ns.exec(&[
        "bridge",
        "fdb",
        "del",
        "0a:58:0a:f4:02:00",
        "dev",
        DEV,
        "dst",
        "198.18.0.22",
        "self",
    ]);
    let ops = converge(&ns, &want);
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert_eq!(routes(&ns).len(), 1);

    // An admin deletes the device: it comes back with every entry.
    ns.ip(&["link", "del", DEV]);
    converge(&ns, &want);
    assert_eq!(routes(&ns).len(), 1);
    assert_eq!(converge(&ns, &want), vec![]);
}

#[test]
fn incompatible_device_is_recreated_and_foreign_routes_left_alone() {
    let ns = node();
    ns.ip(&[
        "link", "add", DEV, "type", "vxlan", "id", "7", "dev", "eth0", "dstport", "8472",
    ]);
    ns.ip(&[
        "route",
        "add",
        "10.99.0.0/16",
        "via",
        "198.18.0.254",
        "dev",
        "eth0",
        "proto",
        "static",
    ]);
    let ops = converge(&ns, &desired(&ns, &[(2, "198.18.0.12")]));
    assert!(
        matches!(&ops[0], Op::DeleteLink { reason, .. } if reason == "it has VNI 7 instead of 1"),
        "{ops:?}"
    );
    let link = &json(&ns, &["-d", "-j", "link", "show", DEV])[0];
    assert_eq!(link["linkinfo"]["info_data"]["id"], 1);
    let foreign = json(&ns, &["-j", "route", "show", "10.99.0.0/16"]);
    assert_eq!(
        foreign.as_array().unwrap().len(),
        1,
        "a foreign route must survive"
    );

    // A stale route of ours (a peer that vanished while weft was down) is swept.
    ns.ip(&[
        "route",
        "add",
        "10.244.9.0/24",
        "via",
        "10.244.9.0",
        "dev",
        DEV,
        "onlink",
        "proto",
        "91",
    ]);
    let ops = converge(&ns, &desired(&ns, &[(2, "198.18.0.12")]));
    assert!(
        matches!(ops.as_slice(), [Op::DelRoute(r)] if r.destination.to_string() == "10.244.9.0/24"),
        "{ops:?}"
    );
}

#[test]
fn ipv6_device_and_entries() {
    let ns = node();
    ns.ip(&["addr", "add", "fd00:198:18::11/64", "dev", "eth0", "nodad"]);
    let mut want = Desired {
        devices: vec![Device {
            link: Link::Vxlan(VxlanLink {
                name: "flannel-v6.1".into(),
                vni: 1,
                port: 0,
                local: "fd00:198:18::11".parse().unwrap(),
                underlay_index: ifindex(&ns, "eth0"),
                learning: false,
                gbp: false,
                mtu: 1430,
                mac: [0x02, 0, 0, 0, 0, 0x61],
            }),
            addresses: vec!["fc00:0:0:1::/128".parse().unwrap()],
        }],
        ..Desired::default()
    };
    let subnet: weft_subnet::family::Net = "fc00:0:0:2::/64".parse().unwrap();
    let public: IpAddr = "fd00:198:18::12".parse().unwrap();
    want.add_neighbour(Neighbour {
        device: "flannel-v6.1".into(),
        ip: subnet.ip(),
        mac: peer_mac(2),
    });
    want.add_fdb(Fdb {
        device: "flannel-v6.1".into(),
        mac: peer_mac(2),
        destination: public,
    });
    want.add_route(Route {
        destination: subnet,
        gateway: Some(subnet.ip()),
        device: "flannel-v6.1".into(),
        onlink: true,
        nexthop: None,
    });
    converge(&ns, &want);
    let r = json(&ns, &["-6", "-j", "route", "show", "fc00:0:0:2::/64"]);
    assert_eq!(r[0]["gateway"], "fc00:0:0:2::");
    assert_eq!(converge(&ns, &want), vec![], "IPv6 state converges");
    assert_eq!(mac::format(&peer_mac(2)), "0a:58:0a:f4:02:00");
}

/// `desired` with the peer routes through nexthop objects (10.244.0.0/16, /24 subnets).
fn desired_via_nexthops(ns: &Netns, peers: &[(u8, &str)]) -> Desired {
    let mut d = desired(ns, peers);
    NexthopPlan::new(Some("10.244.0.0/16".parse().unwrap()), Some(24), None, None).assign(&mut d);
    d
}

/// The nexthop objects in the namespace: (id, gateway, device, protocol, onlink).
fn nexthops(ns: &Netns) -> Vec<(u64, String, String, String, bool)> {
    json(ns, &["-j", "nexthop", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_u64().unwrap(),
                n["gateway"].as_str().unwrap_or_default().to_string(),
                n["dev"].as_str().unwrap_or_default().to_string(),
                n["protocol"].as_str().unwrap_or_default().to_string(),
                n["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "onlink")),
            )
        })
        .collect()
}

fn nhid(n: u8) -> u64 {
    u64::from(V4_BASE) + u64::from(n)
}

#[test]
fn peer_routes_through_nexthop_objects_converge_and_are_swept() {
    let ns = node();
    let want = desired_via_nexthops(&ns, &[(2, "198.18.0.12"), (3, "198.18.0.13")]);
    converge(&ns, &want);
    let onlink = |gateway: &str, id| {
        (
            id,
            gateway.to_string(),
            DEV.to_string(),
            "91".to_string(),
            true,
        )
    };
    assert_eq!(
        nexthops(&ns),
        [onlink("10.244.2.0", nhid(2)), onlink("10.244.3.0", nhid(3))]
    );
    // The route names the object, and still reads as flannel's shape.
    let r = json(&ns, &["-j", "route", "show", "10.244.2.0/24"]);
    assert_eq!(r[0]["nhid"], nhid(2));
    assert_eq!(r[0]["gateway"], "10.244.2.0");
    assert_eq!(r[0]["dev"], DEV);
    assert_eq!(r[0]["flags"], serde_json::json!(["onlink"]));
    assert_eq!(
        converge(&ns, &want),
        vec![],
        "converged state is a fixed point"
    );

    // Peer 3 leaves: its route and its object go.
    let want = desired_via_nexthops(&ns, &[(2, "198.18.0.12")]);
    let ops = converge(&ns, &want);
    assert_eq!(ops.len(), 3, "route, neighbour, FDB entry: {ops:?}");
    assert_eq!(nexthops(&ns), [onlink("10.244.2.0", nhid(2))]);

    // An admin deletes the route: the object stays, the route comes back through it.
    ns.ip(&["route", "del", "10.244.2.0/24"]);
    assert_eq!(converge(&ns, &want).len(), 1);
    assert_eq!(
        json(&ns, &["-j", "route", "show", "10.244.2.0/24"])[0]["nhid"],
        nhid(2)
    );
    // An admin deletes the object: the kernel deletes the route with it; both come back.
    ns.ip(&["nexthop", "del", "id", &nhid(2).to_string()]);
    assert_eq!(routes(&ns), vec![]);
    assert_eq!(converge(&ns, &want).len(), 1);
    assert_eq!(
        json(&ns, &["-j", "route", "show", "10.244.2.0/24"])[0]["nhid"],
        nhid(2)
    );
    // An object of weft's that no route uses (its route deleted by hand, weft down) is
    // swept, and nothing else changes.
    ns.ip(&[
        "nexthop",
        "add",
        "id",
        &nhid(9).to_string(),
        "via",
        "10.244.9.0",
        "dev",
        DEV,
        "onlink",
        "proto",
        "91",
    ]);
    let ops = converge(&ns, &want);
    assert_eq!(
        ops,
        [Op::DelNexthop(
            std::num::NonZeroU32::new(nhid(9) as u32).unwrap()
        )]
    );
    assert_eq!(nexthops(&ns), [onlink("10.244.2.0", nhid(2))]);
}

#[test]
fn plain_routes_move_to_nexthop_objects_and_back_in_place() {
    let ns = node();
    let peers = [(2, "198.18.0.12"), (3, "198.18.0.13")];
    // flannel's routes (or weft's with nexthop objects off) ...
    converge(&ns, &desired(&ns, &peers));
    assert_eq!(nexthops(&ns), vec![]);
    // ... are replaced in place by routes through objects: one replace per route.
    let ops = converge(&ns, &desired_via_nexthops(&ns, &peers));
    assert!(
        ops.len() == 2 && ops.iter().all(|op| matches!(op, Op::ReplaceRoute(_))),
        "{ops:?}"
    );
    assert_eq!(nexthops(&ns).len(), 2);
    // Turned off again: plain routes, and the objects swept after them.
    let ops = converge(&ns, &desired(&ns, &peers));
    assert_eq!(ops.len(), 4, "{ops:?}");
    assert_eq!(nexthops(&ns), vec![]);
    assert_eq!(routes(&ns).len(), 2);
    assert!(
        json(&ns, &["-j", "route", "show", "dev", DEV])
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.get("nhid").is_none())
    );
}

#[test]
fn another_programs_nexthop_at_a_weft_id_is_never_touched() {
    let ns = node();
    let id = nhid(2).to_string();
    ns.ip(&[
        "nexthop",
        "add",
        "id",
        &id,
        "via",
        "198.18.0.99",
        "dev",
        "eth0",
        "proto",
        "static",
    ]);
    let foreign = (
        nhid(2),
        "198.18.0.99".to_string(),
        "eth0".to_string(),
        "static".to_string(),
        false,
    );
    assert_eq!(nexthops(&ns), std::slice::from_ref(&foreign));
    let mut want = desired_via_nexthops(&ns, &[(2, "198.18.0.12")]);
    let (failures, taken) = {
        let want = want.clone();
        block_on_in(&ns.name, move || async move {
            let kernel = Kernel::connect().expect("netlink");
            let observed = kernel.observe(&want, true).await.expect("observe");
            // Applied as a targeted pass would, not knowing of the object yet.
            let failures = kernel.apply(&diff(&want, &observed)).await;
            let deleted = kernel
                .apply(&[Op::DelNexthop(
                    std::num::NonZeroU32::new(nhid(2) as u32).unwrap(),
                )])
                .await;
            assert!(
                deleted.is_empty(),
                "deleting someone else's object is a no-op: {deleted:?}"
            );
            (failures, observed.taken_nexthops())
        })
    };
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].1.to_string().contains(&format!(
            "nexthop id {id} belongs to another program (protocol 4)"
        )),
        "{}",
        failures[0].1
    );
    assert_eq!(
        nexthops(&ns),
        std::slice::from_ref(&foreign),
        "the object is as its owner left it"
    );
    // A full pass installs the route without an object.
    assert_eq!(
        taken
            .into_iter()
            .map(|i| u64::from(i.get()))
            .collect::<Vec<_>>(),
        [nhid(2)]
    );
    let demoted =
        want.demote_taken_nexthops(&[std::num::NonZeroU32::new(nhid(2) as u32).unwrap()].into());
    assert_eq!(demoted.len(), 1);
    converge(&ns, &want);
    assert_eq!(converge(&ns, &want), vec![]);
    let r = json(&ns, &["-j", "route", "show", "10.244.2.0/24"]);
    assert_eq!(r[0]["gateway"], "10.244.2.0");
    assert!(r[0].get("nhid").is_none(), "{r}");
    assert_eq!(nexthops(&ns), [foreign]);
}

#[test]
fn this_kernel_is_found_to_have_nexthop_objects() {
    let ns = node();
    let has = |ns: &Netns| {
        block_on_in(&ns.name, || async {
            let kernel = Kernel::connect().expect("netlink");
            kernel.has_nexthop_objects().await.expect("probe")
        })
    };
    // Asked by one id: absent, and present (another program's).
    assert!(has(&ns));
    ns.ip(&[
        "nexthop",
        "add",
        "id",
        "1",
        "via",
        "198.18.0.99",
        "dev",
        "eth0",
    ]);
    assert!(has(&ns));
}
