//! The messages against bytes written here from include/uapi/linux/wireguard.h's
//! attribute numbers and the netlink layout (not from the crate that encodes them), and
//! a `wg show` answer (the crate's own nlmon capture layout) read back.

use super::*;

// include/uapi/linux/wireguard.h
const WG_CMD_GET_DEVICE: u8 = 0;
const WG_CMD_SET_DEVICE: u8 = 1;
const WGDEVICE_A_IFNAME: u16 = 2;
const WGDEVICE_A_PRIVATE_KEY: u16 = 3;
const WGDEVICE_A_LISTEN_PORT: u16 = 6;
const WGDEVICE_A_PEERS: u16 = 8;
const WGPEER_A_PUBLIC_KEY: u16 = 1;
const WGPEER_A_PRESHARED_KEY: u16 = 2;
const WGPEER_A_FLAGS: u16 = 3;
const WGPEER_A_ENDPOINT: u16 = 4;
const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: u16 = 5;
const WGPEER_A_ALLOWEDIPS: u16 = 9;
const WGPEER_F_REMOVE_ME: u32 = 1;
const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 2;
const WGALLOWEDIP_A_FAMILY: u16 = 1;
const WGALLOWEDIP_A_IPADDR: u16 = 2;
const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const AF_INET: u16 = 2;
const FAMILY: u16 = 0x1c;

fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(((4 + payload.len()) as u16).to_ne_bytes());
    out.extend(kind.to_ne_bytes());
    out.extend(payload);
    out.resize(out.len().next_multiple_of(4), 0);
    out
}

fn nested(kind: u16, inner: &[Vec<u8>]) -> Vec<u8> {
    nla(kind | NLA_F_NESTED, &inner.concat())
}

fn message(cmd: u8, flags: u16, seq: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
    let body = attrs.concat();
    let mut out = Vec::new();
    out.extend(((16 + 4 + body.len()) as u32).to_ne_bytes());
    out.extend(FAMILY.to_ne_bytes());
    out.extend(flags.to_ne_bytes());
    out.extend(seq.to_ne_bytes());
    out.extend(0u32.to_ne_bytes());
    out.extend([cmd, 1, 0, 0]);
    out.extend(body);
    out
}

fn ifname() -> Vec<u8> {
    nla(WGDEVICE_A_IFNAME, b"flannel-wg\0")
}

fn change() -> TunnelChange {
    TunnelChange {
        device: "flannel-wg".into(),
        private_key: Some(SecretKey::from_bytes([0xab; 32])),
        listen_port: Some(51820),
        remove: vec![PublicKey([1; 32])],
        set: vec![(
            PublicKey([2; 32]),
            TunnelPeer {
                endpoint: "198.18.0.12:51820".parse().unwrap(),
                allowed_ips: vec!["10.244.2.0/24".parse().unwrap()],
                keepalive: 25,
                psk: None,
            },
        )],
    }
}

#[test]
fn set_device_is_the_kernels_layout() {
    let messages = encode_set(FAMILY, 7, &change());
    assert_eq!(messages.len(), 2, "device and removals, then the peers");
    let device = message(
        WG_CMD_SET_DEVICE,
        5,
        7,
        &[
            ifname(),
            nla(WGDEVICE_A_PRIVATE_KEY, &[0xab; 32]),
            nla(WGDEVICE_A_LISTEN_PORT, &51820u16.to_ne_bytes()),
            nested(
                WGDEVICE_A_PEERS,
                &[nested(
                    0,
                    &[
                        nla(WGPEER_A_PUBLIC_KEY, &[1; 32]),
                        nla(WGPEER_A_FLAGS, &WGPEER_F_REMOVE_ME.to_ne_bytes()),
                    ],
                )],
            ),
        ],
    );
    assert_eq!(*messages[0], device);
    let mut endpoint = Vec::new();
    endpoint.extend(AF_INET.to_ne_bytes());
    endpoint.extend(51820u16.to_be_bytes());
    endpoint.extend([198, 18, 0, 12]);
    endpoint.extend([0; 8]);
    let peer = nested(
        0,
        &[
            nla(WGPEER_A_PUBLIC_KEY, &[2; 32]),
            nla(WGPEER_A_FLAGS, &WGPEER_F_REPLACE_ALLOWEDIPS.to_ne_bytes()),
            nla(WGPEER_A_PRESHARED_KEY, &[0; 32]),
            nla(WGPEER_A_ENDPOINT, &endpoint),
            nla(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, &25u16.to_ne_bytes()),
            nested(
                WGPEER_A_ALLOWEDIPS,
                &[nested(
                    0,
                    &[
                        nla(WGALLOWEDIP_A_FAMILY, &AF_INET.to_ne_bytes()),
                        nla(WGALLOWEDIP_A_IPADDR, &[10, 244, 2, 0]),
                        nla(WGALLOWEDIP_A_CIDR_MASK, &[24]),
                    ],
                )],
            ),
        ],
    );
    let peers = message(
        WG_CMD_SET_DEVICE,
        5,
        8,
        &[ifname(), nested(WGDEVICE_A_PEERS, &[peer])],
    );
    assert_eq!(*messages[1], peers);
}

#[test]
fn get_device_is_a_dump_by_name() {
    let expected = message(WG_CMD_GET_DEVICE, 1 | 4 | 0x300, 3, &[ifname()]);
    assert_eq!(encode_get(FAMILY, 3, "flannel-wg"), expected);
}

#[test]
fn many_peers_are_split_into_parts() {
    let mut change = change();
    change.remove.clear();
    change.set = (0..70u8)
        .map(|i| (PublicKey([i + 10; 32]), change.set[0].1.clone()))
        .collect();
    let messages = encode_set(FAMILY, 1, &change);
    assert_eq!(messages.len(), 1 + 70usize.div_ceil(PEERS_PER_MESSAGE));
}

#[test]
fn a_get_answer_split_over_parts_is_read_whole() {
    let mut state = TunnelState::default();
    let peer = |ip: &str| {
        WireguardPeer(vec![
            WireguardPeerAttribute::PublicKey([2; 32]),
            WireguardPeerAttribute::RxBytes(10),
            WireguardPeerAttribute::AllowedIps(vec![WireguardAllowedIp(vec![
                WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
                WireguardAllowedIpAttr::IpAddr(ip.parse().unwrap()),
                WireguardAllowedIpAttr::Cidr(24),
            ])]),
        ])
    };
    decode_state(
        vec![
            WireguardAttribute::PrivateKey([0xab; 32]),
            WireguardAttribute::ListenPort(51820),
            WireguardAttribute::Peers(vec![peer("10.244.2.0")]),
        ],
        &mut state,
    );
    decode_state(
        vec![WireguardAttribute::Peers(vec![peer("10.244.3.0")])],
        &mut state,
    );
    assert_eq!(state.listen_port, 51820);
    assert_eq!(
        state.public_key,
        Some(SecretKey::from_bytes([0xab; 32]).public_key())
    );
    let peer = &state.peers[&PublicKey([2; 32])];
    assert_eq!(peer.allowed_ips.len(), 2);
    assert_eq!(peer.last_handshake, None);
}
