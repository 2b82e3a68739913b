use super::*;
use serde_json::json;

fn backend(mode: Mode, own: &str) -> WireguardBackend {
    let own = SubnetKey::parse(own).unwrap();
    WireguardBackend {
        config: WireguardConfig {
            mode,
            ..WireguardConfig::default()
        },
        node: Node {
            own,
            network_v4: own.ipv4.map(|_| "10.244.0.0/16".parse().unwrap()),
            network_v6: own.ipv6.map(|_| "fc00::/48".parse().unwrap()),
            external_name: "eth0".into(),
            external_mtu: 1500,
            public_v4: Some("198.18.0.11".parse().unwrap()),
            public_v6: Some("2001:db8::11".parse().unwrap()),
            private_key: SecretKey::from_bytes([1; 32]),
        },
    }
}

fn key_of(n: u8) -> PublicKey {
    SecretKey::from_bytes([n; 32]).public_key()
}

fn data(n: u8, port: u16) -> Option<BackendData> {
    Some(BackendData::new(
        &json!({"PublicKey": key_of(n).to_base64(), "Port": port}),
    ))
}

fn peer(key: &str, ip: &str, n: u8) -> Lease {
    let key = SubnetKey::parse(key).unwrap();
    Lease {
        key,
        attrs: LeaseAttrs {
            public_ip: ip.parse().unwrap(),
            public_ipv6: key.ipv6.map(|_| format!("2001:db8::{n}").parse().unwrap()),
            backend_type: "wireguard".into(),
            backend_data: key.ipv4.and(data(n, 51820)),
            backend_v6_data: key.ipv6.and(data(n, 51821)),
        },
        etcd_lease: 1,
        expiration: None,
        revision: 1,
    }
}

fn tunnel<'a>(desired: &'a Desired, name: &str) -> &'a Tunnel {
    desired
        .devices
        .iter()
        .find_map(|d| match &d.link {
            Link::Wireguard(l) if l.name == name => Some(&l.tunnel),
            _ => None,
        })
        .unwrap()
}

#[test]
fn lease_attrs_are_flannels() {
    let b = backend(Mode::Separate, "10.244.1.0-24&fc00:0:0:1::-64");
    let attrs = b.lease_attrs(Some("198.18.0.11".parse().unwrap()), None);
    assert_eq!(attrs.backend_type, "wireguard");
    let v4 = attrs.backend_data.unwrap().to_value();
    assert_eq!(
        v4,
        json!({"PublicKey": b.public_key().to_base64(), "Port": 51820})
    );
    let v6 = attrs.backend_v6_data.unwrap().to_value();
    assert_eq!(v6["Port"], 51821);
    assert_eq!(b.pod_mtu(), 1420);
    // A single device listens on ListenPort for both families, and says so.
    let single = backend(Mode::Auto, "10.244.1.0-24&fc00:0:0:1::-64");
    let v6 = single
        .lease_attrs(None, None)
        .backend_v6_data
        .unwrap()
        .to_value();
    assert_eq!(v6["Port"], 51820);
}

#[test]
fn separate_mode_has_a_device_per_family_with_the_network_route() {
    let b = backend(Mode::Separate, "10.244.1.0-24&fc00:0:0:1::-64");
    let peers = [peer("10.244.2.0-24&fc00:0:0:2::-64", "198.18.0.12", 2)];
    let (desired, skipped) = b.desired_state(&peers);
    assert!(skipped.is_empty(), "{skipped:?}");
    let names: Vec<&str> = desired.device_names().collect();
    assert_eq!(names, vec!["flannel-wg", "flannel-wg-v6"]);
    assert_eq!(desired.devices[0].addresses[0].to_string(), "10.244.1.0/32");
    assert_eq!(
        desired.devices[1].addresses[0].to_string(),
        "fc00:0:0:1::/128"
    );
    let routes: Vec<String> = desired.routes.values().map(ToString::to_string).collect();
    assert_eq!(
        routes,
        vec![
            "10.244.0.0/16 dev flannel-wg scope link",
            "fc00::/48 dev flannel-wg-v6 scope link"
        ]
    );
    let v4 = &tunnel(&desired, "flannel-wg").peers[&key_of(2)];
    assert_eq!(v4.endpoint.to_string(), "198.18.0.12:51820");
    assert_eq!(v4.allowed_ips, vec!["10.244.2.0/24".parse().unwrap()]);
    let v6 = &tunnel(&desired, "flannel-wg-v6").peers[&key_of(2)];
    assert_eq!(v6.endpoint.to_string(), "[2001:db8::2]:51821");
    assert_eq!(tunnel(&desired, "flannel-wg-v6").listen_port, 51821);
}

#[test]
fn single_device_modes_carry_both_families_on_one_peer() {
    let peers = [peer("10.244.2.0-24&fc00:0:0:2::-64", "198.18.0.12", 2)];
    for (mode, endpoint) in [
        (Mode::Ipv4, "198.18.0.12:51820"),
        // The v4 data's port: the one the peer's single device listens on.
        (Mode::Ipv6, "[2001:db8::2]:51820"),
        // Public IPv4 on both sides: IPv4.
        (Mode::Auto, "[2001:db8::2]:51820"),
    ] {
        let b = backend(mode, "10.244.1.0-24&fc00:0:0:1::-64");
        let (desired, _) = b.desired_state(&peers);
        assert_eq!(desired.devices.len(), 1, "{mode:?}");
        assert_eq!(desired.devices[0].addresses.len(), 2);
        let p = &tunnel(&desired, "flannel-wg").peers[&key_of(2)];
        assert_eq!(p.allowed_ips.len(), 2);
        if mode != Mode::Auto {
            assert_eq!(p.endpoint.to_string(), endpoint, "{mode:?}");
        }
    }
}

#[test]
fn auto_mode_prefers_ipv4_unless_its_address_is_private() {
    let b = backend(Mode::Auto, "10.244.1.0-24&fc00:0:0:1::-64");
    let mut p = peer("10.244.2.0-24&fc00:0:0:2::-64", "198.18.0.12", 2);
    // 198.18.0.12 is not RFC 1918 private: IPv4.
    assert_eq!(b.endpoint_family(&p), Family::V4);
    p.attrs.public_ip = "10.0.0.12".parse().unwrap();
    assert_eq!(b.endpoint_family(&p), Family::V6);
    p.attrs.public_ipv6 = Some("fd00::12".parse().unwrap());
    assert_eq!(b.endpoint_family(&p), Family::V4);
}

#[test]
fn bad_own_and_duplicate_keys_are_skipped_with_reasons() {
    let b = backend(Mode::Separate, "10.244.1.0-24");
    let mut no_key = peer("10.244.3.0-24", "198.18.0.13", 3);
    no_key.attrs.backend_data = Some(BackendData::new(&json!({"Port": 51820})));
    let mut bad_key = peer("10.244.4.0-24", "198.18.0.14", 4);
    bad_key.attrs.backend_data = Some(BackendData::new(&json!({"PublicKey": "AAAA"})));
    let own_key = peer("10.244.5.0-24", "198.18.0.15", 1);
    let holder = peer("10.244.6.0-24", "198.18.0.16", 6);
    let thief = peer("10.244.7.0-24", "198.18.0.17", 6);
    // The same node's second lease at the same address: its subnets join.
    let second = peer("10.244.8.0-24", "198.18.0.16", 6);
    let mut vxlan = peer("10.244.9.0-24", "198.18.0.19", 9);
    vxlan.attrs.backend_type = "vxlan".into();
    let peers = [no_key, bad_key, own_key, holder, thief, second, vxlan];
    let (desired, skipped) = b.desired_state(&peers);
    let reasons: Vec<(String, SkipKind, String)> = skipped
        .iter()
        .map(|s| (s.key.to_string(), s.kind, s.reason.clone()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (
                "10.244.3.0-24".into(),
                SkipKind::BadPublicKey,
                "its BackendData has no PublicKey".into()
            ),
            (
                "10.244.4.0-24".into(),
                SkipKind::BadPublicKey,
                "its PublicKey is not a WireGuard key: it is 3 bytes long, not 32".into()
            ),
            (
                "10.244.5.0-24".into(),
                SkipKind::PublicKeyClaimed,
                format!("its public key {} is this node's", key_of(1))
            ),
            (
                "10.244.7.0-24".into(),
                SkipKind::PublicKeyClaimed,
                format!(
                    "its public key {} is already the key of peer 10.244.6.0-24 at 198.18.0.16",
                    key_of(6)
                )
            ),
            (
                "10.244.9.0-24".into(),
                SkipKind::OtherBackend,
                "its backend type is \"vxlan\", not \"wireguard\"".into()
            ),
        ]
    );
    let peers = &tunnel(&desired, "flannel-wg").peers;
    assert_eq!(peers.len(), 1);
    let allowed: Vec<String> = peers[&key_of(6)]
        .allowed_ips
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(allowed, vec!["10.244.6.0/24", "10.244.8.0/24"]);
}

#[test]
fn a_peer_without_a_public_ip_or_port_is_handled_as_flannel_does() {
    let b = backend(Mode::Separate, "10.244.1.0-24");
    let mut no_ip = peer("10.244.2.0-24", "0.0.0.0", 2);
    no_ip.attrs.public_ip = std::net::Ipv4Addr::UNSPECIFIED;
    let mut no_port = peer("10.244.3.0-24", "198.18.0.13", 3);
    no_port.attrs.backend_data = Some(BackendData::new(
        &json!({"PublicKey": key_of(3).to_base64()}),
    ));
    let (desired, skipped) = b.desired_state(&[no_ip, no_port]);
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].kind, SkipKind::NoPublicIp);
    // flannel: a missing Port is this node's own ListenPort.
    let p = &tunnel(&desired, "flannel-wg").peers[&key_of(3)];
    assert_eq!(p.endpoint.to_string(), "198.18.0.13:51820");
}

#[test]
fn flannels_null_v6_data_is_no_data() {
    let b = backend(Mode::Separate, "10.244.1.0-24");
    let mut p = peer("10.244.50.0-24", "198.18.0.13", 5);
    p.attrs.backend_v6_data = Some(BackendData::new(&serde_json::Value::Null));
    let (desired, skipped) = b.desired_state(&[p]);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert!(
        tunnel(&desired, "flannel-wg")
            .peers
            .contains_key(&key_of(5))
    );
}

#[test]
fn ipv6_only_has_only_the_v6_device_and_publishes_only_v6_data() {
    let mut b = backend(Mode::Separate, "fc00:0:0:1::-64");
    b.node.network_v4 = None;
    let mut p = peer("fc00:0:0:2::-64", "0.0.0.0", 2);
    p.attrs.public_ip = std::net::Ipv4Addr::UNSPECIFIED;
    let (desired, skipped) = b.desired_state(&[p]);
    assert!(skipped.is_empty(), "{skipped:?}");
    let names: Vec<&str> = desired.device_names().collect();
    assert_eq!(names, vec!["flannel-wg-v6"]);
    let peer = &tunnel(&desired, "flannel-wg-v6").peers[&key_of(2)];
    assert_eq!(peer.endpoint.to_string(), "[2001:db8::2]:51821");
    let attrs = b.lease_attrs(None, Some("2001:db8::11".parse().unwrap()));
    assert!(attrs.backend_data.is_none());
    assert_eq!(attrs.backend_v6_data.unwrap().to_value()["Port"], 51821);
}
