//! `Kernel::route_at` against a real kernel in a throwaway network namespace: the one
//! lookup the targeted path makes before it programs a new peer prefix (weft never
//! installs over a route it does not own).

mod support;

use std::collections::HashMap;
use support::netns::{Netns, block_on_in};
use support::unique;
use weft_backend::desired::Route;
use weft_backend::kernel::{Kernel, RouteAt};

fn route_at(ns: &Netns, prefix: &str, ours: HashMap<u32, String>) -> RouteAt {
    let route = Route {
        destination: prefix.parse().unwrap(),
        gateway: Some("10.244.5.0".parse().unwrap()),
        device: "flannel.1".into(),
        onlink: true,
        nexthop: None,
    };
    block_on_in(&ns.name, move || async move {
        let kernel = Kernel::connect().expect("netlink");
        kernel.route_at(&route, &ours).await.expect("route_at")
    })
}

fn index(ns: &Netns, device: &str) -> u32 {
    let out = ns.ip(&["-j", "link", "show", device]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["ifindex"].as_u64().unwrap() as u32
}

#[test]
fn route_at_tells_nothing_ours_foreign_and_unknown_apart() {
    let ns = Netns::new(&unique("wl"));
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&[
        "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
    ]);
    ns.ip(&["link", "set", "veth1", "up"]);
    ns.ip(&["link", "set", "veth0", "up"]);
    ns.ip(&["address", "add", "198.18.0.1/24", "dev", "veth0"]);
    let prefix = "10.244.5.0/24";
    assert_eq!(
        route_at(&ns, prefix, HashMap::new()),
        RouteAt::Nothing,
        "no route at all"
    );

    // A shorter route covers the prefix: nothing sits at it.
    ns.ip(&["route", "add", "10.244.0.0/16", "via", "198.18.0.9"]);
    assert_eq!(route_at(&ns, prefix, HashMap::new()), RouteAt::Nothing);

    // A static route at the prefix: foreign, described for the log.
    ns.ip(&["route", "add", prefix, "via", "198.18.0.9"]);
    match route_at(&ns, prefix, HashMap::new()) {
        RouteAt::Foreign(f) => {
            assert_eq!(f.destination, prefix.parse().unwrap());
            assert!(f.description.contains("via 198.18.0.9 dev veth0"), "{f:?}");
        }
        other => panic!("expected a foreign route, got {other:?}"),
    }
    // The same route through a device of weft's is the overlay's (adoptable).
    let ours = HashMap::from([(index(&ns, "veth0"), "veth0".to_string())]);
    assert!(matches!(route_at(&ns, prefix, ours), RouteAt::Ours(_)));
    ns.ip(&["route", "del", prefix]);

    // weft's own (protocol 91).
    ns.ip(&["route", "add", prefix, "via", "198.18.0.9", "proto", "91"]);
    assert!(matches!(route_at(&ns, prefix, HashMap::new()), RouteAt::Ours(r) if r.marked));
    ns.ip(&["route", "del", prefix]);

    // A more specific route answers the lookup: it cannot tell what is at the prefix.
    ns.ip(&["route", "add", "10.244.5.0/25", "via", "198.18.0.9"]);
    assert_eq!(route_at(&ns, prefix, HashMap::new()), RouteAt::Unknown);
}
