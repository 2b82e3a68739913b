//! The WireGuard parts that need a kernel but not its WireGuard, in throwaway network
//! namespaces: the empty datagrams that start handshakes after a change leave through
//! the tunnel device only, never by another route (unencrypted, with a pod address).

mod support;

use serde_json::Value;
use std::net::UdpSocket;
use std::time::Duration;
use support::netns::{Netns, run_in};
use support::unique;
use weft_backend::kernel::wireguard::prime_handshakes;
use weft_backend::tunnel::key::PublicKey;
use weft_backend::tunnel::{TunnelChange, TunnelPeer};

const DEVICE: &str = "flannel-wg";
/// The peer's subnet's first address, where a handshake-starting datagram is addressed.
const PEER_FIRST: &str = "10.244.5.0";

/// A node with a device named like weft's WireGuard device and a default route through
/// eth0 to `outside`, which holds the peer subnet's first address and listens on the
/// discard port. The device is a veth without ARP or IPv6: only its name matters to the
/// priming (its sockets are bound to it), and it counts exactly what enters it.
struct Rig {
    node: Netns,
    // Kept for the namespace's lifetime.
    _outside: Netns,
    listener: UdpSocket,
}

fn rig() -> Rig {
    let node = Netns::new(&unique("wp"));
    let outside = Netns::new(&unique("wo"));
    node.ip(&["link", "set", "lo", "up"]);
    outside.ip(&["link", "set", "lo", "up"]);
    node.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth1",
        "netns",
        &outside.name,
    ]);
    node.ip(&["addr", "add", "198.18.0.11/24", "dev", "eth0"]);
    node.ip(&["link", "set", "eth0", "up"]);
    node.ip(&["route", "add", "default", "via", "198.18.0.1"]);
    outside.ip(&["addr", "add", "198.18.0.1/24", "dev", "eth1"]);
    outside.ip(&["link", "set", "eth1", "up"]);
    outside.ip(&["addr", "add", &format!("{PEER_FIRST}/32"), "dev", "lo"]);
    let quiet = node.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    assert!(quiet.status.success(), "{quiet:?}");
    node.ip(&[
        "link", "add", DEVICE, "type", "veth", "peer", "name", "wg-peer",
    ]);
    node.ip(&["link", "set", DEVICE, "arp", "off"]);
    node.ip(&["link", "set", "wg-peer", "up"]);
    node.ip(&["link", "set", DEVICE, "up"]);
    // A socket keeps the namespace it was made in.
    let listener = run_in(&outside.name, || {
        UdpSocket::bind((PEER_FIRST, 9)).expect("bind the discard port outside")
    });
    listener
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    Rig {
        node,
        _outside: outside,
        listener,
    }
}

fn change() -> TunnelChange {
    let key = PublicKey::parse("HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=").unwrap();
    let peer = TunnelPeer {
        endpoint: "198.18.0.12:51820".parse().unwrap(),
        allowed_ips: vec!["10.244.5.0/24".parse().unwrap()],
        keepalive: 0,
        psk: None,
    };
    TunnelChange {
        device: DEVICE.into(),
        private_key: None,
        listen_port: None,
        remove: Vec::new(),
        set: vec![(key, peer)],
    }
}

fn prime(node: &Netns) {
    run_in(&node.name, || prime_handshakes(&change()));
}

/// The packets the device sent.
fn into_device(node: &Netns) -> u64 {
    let links: Value =
        serde_json::from_str(&node.ip(&["-s", "-j", "link", "show", DEVICE])).unwrap();
    links[0]["stats64"]["tx"]["packets"].as_u64().unwrap()
}

/// The payloads `listener` received (the handshake starters are empty), until quiet.
fn received(listener: &UdpSocket) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    for _ in 0..16 {
        match listener.recv(&mut buf) {
            Ok(n) => out.push(buf[..n].to_vec()),
            Err(_) => break,
        }
    }
    out
}

#[test]
fn handshake_starters_never_take_another_route_than_the_tunnel() {
    let rig = rig();
    // No route through the device (say its change failed): the default route would carry
    // the datagram outside; bound to the device, it goes into the device (the kernel
    // takes a bound socket's destination as on-link) and nowhere else.
    let before = into_device(&rig.node);
    prime(&rig.node);
    assert_eq!(into_device(&rig.node), before + 1);
    // The control: the same datagram from an unbound socket does go outside, so the
    // listener would have seen a leak.
    run_in(&rig.node.name, || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.send_to(b"control", (PEER_FIRST, 9)).unwrap();
    });
    assert_eq!(received(&rig.listener), [b"control".to_vec()]);

    // With the network's route on the device (the normal case), the same.
    rig.node.ip(&[
        "route",
        "add",
        "10.244.0.0/16",
        "dev",
        DEVICE,
        "scope",
        "link",
    ]);
    prime(&rig.node);
    assert_eq!(into_device(&rig.node), before + 2);
    assert_eq!(received(&rig.listener), Vec::<Vec<u8>>::new());
}
