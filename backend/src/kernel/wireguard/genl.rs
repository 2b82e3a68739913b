//! The kernel's WireGuard configuration interface: generic netlink family `wireguard`,
//! `WG_CMD_SET_DEVICE` and `WG_CMD_GET_DEVICE` (include/uapi/linux/wireguard.h), as
//! `wg(8)` sends them. The messages are built and read by `netlink-packet-wireguard`
//! (rust-netlink, the family of weft's rtnetlink); [`encode_set`] and [`decode_state`]
//! are pure and tested against bytes written from the kernel header's attribute
//! numbers; [`GenlSocket`] sends them.
//!
//! Not run on the machine weft is developed on (its kernel has no WireGuard); see
//! docs/testing.md for what is and is not exercised.

use super::super::generic::{GenericSocket, Reply};
use crate::tunnel::key::{PublicKey, SecretKey};
use crate::tunnel::{TunnelChange, TunnelPeer, TunnelState};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};
use std::io;
use std::time::{Duration, SystemTime};
use weft_lease::family::{Family, Net};
use zeroize::Zeroizing;

/// Peers per set message: a message must fit the kernel's netlink buffer (`wg` splits
/// the same way); 32 peers with two allowed IPs each are ~6 KB.
pub const PEERS_PER_MESSAGE: usize = 32;

fn serialize<F>(message: GenlMessage<F>, flags: u16, seq: u32) -> Vec<u8>
where
    F: netlink_packet_generic::GenlFamily + netlink_packet_core::Emitable + std::fmt::Debug,
{
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    message.finalize();
    let mut buffer = vec![0; message.buffer_len()];
    message.serialize(&mut buffer);
    buffer
}

/// `WG_CMD_GET_DEVICE` for device `name` (a dump: large devices answer in parts).
pub fn encode_get(family: u16, seq: u32, name: &str) -> Vec<u8> {
    let mut message = GenlMessage::from_payload(WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(name.to_string())],
    });
    message.set_resolved_family_id(family);
    serialize(message, NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP, seq)
}

/// `WG_CMD_SET_DEVICE` messages for `change`: the device's key and port and the
/// removals first, then the peers in parts of [`PEERS_PER_MESSAGE`]. Secret: the bytes
/// hold keys.
pub fn encode_set(family: u16, first_seq: u32, change: &TunnelChange) -> Vec<Zeroizing<Vec<u8>>> {
    let mut device = vec![WireguardAttribute::IfName(change.device.clone())];
    if let Some(key) = &change.private_key {
        device.push(WireguardAttribute::PrivateKey(*key.bytes()));
    }
    if let Some(port) = change.listen_port {
        device.push(WireguardAttribute::ListenPort(port));
    }
    let removals: Vec<WireguardPeer> = change
        .remove
        .iter()
        .map(|key| {
            WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(key.0),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
            ])
        })
        .collect();
    let mut bodies = Vec::new();
    let mut first = device.clone();
    if !removals.is_empty() {
        first.push(WireguardAttribute::Peers(removals));
    }
    bodies.push(first);
    for chunk in change.set.chunks(PEERS_PER_MESSAGE) {
        let mut body = vec![WireguardAttribute::IfName(change.device.clone())];
        body.push(WireguardAttribute::Peers(
            chunk.iter().map(|(k, p)| peer_attributes(k, p)).collect(),
        ));
        bodies.push(body);
    }
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, attributes)| {
            let mut message = GenlMessage::from_payload(WireguardMessage {
                cmd: WireguardCmd::SetDevice,
                attributes,
            });
            message.set_resolved_family_id(family);
            Zeroizing::new(serialize(
                message,
                NLM_F_REQUEST | NLM_F_ACK,
                first_seq.wrapping_add(i as u32),
            ))
        })
        .collect()
}

fn peer_attributes(key: &PublicKey, peer: &TunnelPeer) -> WireguardPeer {
    let mut attributes = vec![
        WireguardPeerAttribute::PublicKey(key.0),
        WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
        // Zero clears a pre-shared key set before, as in `wg set ... preshared-key /dev/null`.
        WireguardPeerAttribute::PresharedKey(peer.psk.as_ref().map_or([0; 32], |k| *k.bytes())),
        WireguardPeerAttribute::Endpoint(peer.endpoint),
        WireguardPeerAttribute::PersistentKeepalive(peer.keepalive),
    ];
    let allowed = peer
        .allowed_ips
        .iter()
        .map(|net| {
            WireguardAllowedIp(vec![
                WireguardAllowedIpAttr::Family(match net.family {
                    Family::V4 => WireguardAddressFamily::Ipv4,
                    Family::V6 => WireguardAddressFamily::Ipv6,
                }),
                WireguardAllowedIpAttr::IpAddr(net.ip()),
                WireguardAllowedIpAttr::Cidr(net.prefix),
            ])
        })
        .collect();
    attributes.push(WireguardPeerAttribute::AllowedIps(allowed));
    WireguardPeer(attributes)
}

/// Adds one part of a `GET_DEVICE` answer to `state`. A peer split over two parts
/// starts the second with its public key again: its allowed IPs join.
pub fn decode_state(attributes: Vec<WireguardAttribute>, state: &mut TunnelState) {
    for attribute in attributes {
        match attribute {
            WireguardAttribute::PrivateKey(bytes) if bytes != [0; 32] => {
                let key = SecretKey::from_bytes(bytes);
                state.public_key = Some(key.public_key());
                state.private_key = Some(key);
            }
            WireguardAttribute::ListenPort(port) => state.listen_port = port,
            WireguardAttribute::Peers(peers) => {
                for peer in peers {
                    decode_peer(peer, state);
                }
            }
            _ => {}
        }
    }
}

fn decode_peer(peer: WireguardPeer, state: &mut TunnelState) {
    let Some(key) = peer.0.iter().find_map(|a| match a {
        WireguardPeerAttribute::PublicKey(k) => Some(PublicKey(*k)),
        _ => None,
    }) else {
        return;
    };
    let entry = state.peers.entry(key).or_default();
    for attribute in peer.0 {
        match attribute {
            WireguardPeerAttribute::PresharedKey(bytes) => {
                entry.psk = (bytes != [0; 32]).then(|| SecretKey::from_bytes(bytes));
            }
            WireguardPeerAttribute::Endpoint(endpoint) => entry.endpoint = Some(endpoint),
            WireguardPeerAttribute::PersistentKeepalive(seconds) => entry.keepalive = seconds,
            WireguardPeerAttribute::LastHandshake(time) => {
                entry.last_handshake = handshake(time.seconds, time.nano_seconds);
            }
            WireguardPeerAttribute::RxBytes(n) => entry.rx_bytes = n,
            WireguardPeerAttribute::TxBytes(n) => entry.tx_bytes = n,
            WireguardPeerAttribute::AllowedIps(ips) => {
                entry.allowed_ips.extend(ips.iter().filter_map(allowed_ip));
            }
            _ => {}
        }
    }
}

fn allowed_ip(ip: &WireguardAllowedIp) -> Option<Net> {
    let address = ip.0.iter().find_map(|a| match a {
        WireguardAllowedIpAttr::IpAddr(ip) => Some(*ip),
        _ => None,
    })?;
    let prefix = ip.0.iter().find_map(|a| match a {
        WireguardAllowedIpAttr::Cidr(c) => Some(*c),
        _ => None,
    })?;
    Some(Net::new_masked(address, prefix))
}

fn handshake(seconds: i64, nanos: i64) -> Option<SystemTime> {
    let (Ok(s), Ok(n)) = (u64::try_from(seconds), u32::try_from(nanos)) else {
        return None;
    };
    (s != 0 || n != 0).then(|| SystemTime::UNIX_EPOCH + Duration::new(s, n.min(999_999_999)))
}

/// The `wireguard` family's socket, in the current network namespace.
#[derive(Debug)]
pub struct GenlSocket {
    socket: GenericSocket,
}

impl GenlSocket {
    /// Opens the socket and looks the family up; `ENOENT` when the kernel has no WireGuard.
    pub fn open() -> io::Result<GenlSocket> {
        Ok(GenlSocket {
            socket: GenericSocket::open("wireguard")?,
        })
    }

    /// Applies `change`, message by message.
    pub fn set(&mut self, change: &TunnelChange) -> io::Result<()> {
        let seq = self.socket.next_seq();
        let messages = encode_set(self.socket.family(), seq, change);
        self.socket.reserve_seqs(messages.len() as u32);
        for (i, message) in messages.iter().enumerate() {
            match self.socket.exchange(message, seq.wrapping_add(i as u32))? {
                Reply::Error { code: 0, .. } | Reply::Generic { .. } => {}
                Reply::Error { code, .. } => return Err(io::Error::from_raw_os_error(-code)),
            }
        }
        Ok(())
    }

    /// Reads the device's state (every part of the dump).
    pub fn get(&mut self, name: &str) -> io::Result<TunnelState> {
        let seq = self.socket.next_seq();
        self.socket
            .send(&encode_get(self.socket.family(), seq, name))?;
        let mut state = TunnelState::default();
        // Bounded: one part per ~30 peers; 100,000 peers are ~3,500 parts.
        for _ in 0..10_000 {
            let buf = self.socket.receive()?;
            if read_parts(&buf, seq, &mut state)? {
                return Ok(state);
            }
        }
        Err(io::Error::other("the wireguard dump did not end"))
    }
}

/// Adds the dump parts in `buf` to `state`; whether the dump ended.
fn read_parts(buf: &[u8], seq: u32, state: &mut TunnelState) -> io::Result<bool> {
    let mut offset = 0;
    while offset + 16 <= buf.len() {
        let len = u32::from_ne_bytes([
            buf[offset],
            buf[offset + 1],
            buf[offset + 2],
            buf[offset + 3],
        ]) as usize;
        if len < 16 || offset + len > buf.len() {
            break;
        }
        let part = &buf[offset..offset + len];
        offset += len.next_multiple_of(4);
        let Ok(message) = NetlinkMessage::<GenlMessage<WireguardMessage>>::deserialize(part) else {
            continue;
        };
        if message.header.sequence_number != seq {
            continue;
        }
        match message.payload {
            NetlinkPayload::InnerMessage(genl) => decode_state(genl.payload.attributes, state),
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) => {
                return Err(e.code.map_or_else(
                    || io::Error::other("wireguard get failed"),
                    |c| io::Error::from_raw_os_error(-c.get()),
                ));
            }
            _ => {}
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests;
