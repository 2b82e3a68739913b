//! The netlink executor against a real kernel, inside throwaway network namespaces:
//! desired state applied, read back with iproute2 in flannel's exact shape, converged
//! state idempotent, and repairs after an admin deletes things.

mod support;

use serde_json::Value;
use std::net::IpAddr;
use support::netns::{Netns, block_on_in};
use support::unique;
use weft_backend::desired::{Desired, Device, Fdb, Neighbour, Route, VxlanLink};
use weft_backend::diff::{Op, diff};
use weft_backend::kernel::Kernel;
use weft_backend::mac::{self, Mac};

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
            link: VxlanLink {
                name: DEV.into(),
                vni: 1,
                port: 0,
                local: "198.18.0.11".parse().unwrap(),
                underlay_index: ifindex(ns, "eth0"),
                learning: false,
                gbp: false,
                mtu: 1450,
                mac: [0x02, 0, 0, 0, 0, 0x11],
            },
            address: "10.244.1.0/32".parse().unwrap(),
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
            gateway: subnet.ip(),
            device: DEV.into(),
            onlink: true,
        });
    }
    d
}

/// One reconcile pass: observe, diff, apply. Returns the ops it needed.
fn converge(ns: &Netns, desired: &Desired) -> Vec<Op> {
    let desired = desired.clone();
    block_on_in(&ns.name, move || async move {
        let kernel = Kernel::connect().expect("netlink");
        let observed = kernel.observe(&desired).await.expect("observe");
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
            link: VxlanLink {
                name: "flannel-v6.1".into(),
                vni: 1,
                port: 0,
                local: "fd00:198:18::11".parse().unwrap(),
                underlay_index: ifindex(&ns, "eth0"),
                learning: false,
                gbp: false,
                mtu: 1430,
                mac: [0x02, 0, 0, 0, 0, 0x61],
            },
            address: "fc00:0:0:1::/128".parse().unwrap(),
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
        gateway: subnet.ip(),
        device: "flannel-v6.1".into(),
        onlink: true,
    });
    converge(&ns, &want);
    let r = json(&ns, &["-6", "-j", "route", "show", "fc00:0:0:2::/64"]);
    assert_eq!(r[0]["gateway"], "fc00:0:0:2::");
    assert_eq!(converge(&ns, &want), vec![], "IPv6 state converges");
    assert_eq!(mac::format(&peer_mac(2)), "0a:58:0a:f4:02:00");
}
