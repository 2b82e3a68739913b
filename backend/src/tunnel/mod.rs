//! WireGuard's data, apart from the backend that wants it (`crate::wireguard`), so that
//! the desired and observed state (`crate::desired`) can hold it: keys (`key`), and a
//! device's configuration as weft wants it ([`Tunnel`]), as the device holds
//! it ([`TunnelState`], read back on every full pass), and the one change that takes the
//! second to the first ([`TunnelChange`], pure: [`changes`]).
//!
//! Ownership: WireGuard peers carry no mark, so a peer on weft's device is weft's when
//! every allowed IP it has lies inside the cluster networks (or it has none: its subnets
//! moved to another peer). A peer an administrator added for anything else on weft's
//! device is left alone, as are other WireGuard devices.

pub mod key;

use key::{PublicKey, SecretKey};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::SystemTime;
use weft_lease::family::Net;

/// One peer as weft configures it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TunnelPeer {
    pub endpoint: SocketAddr,
    /// Sorted: compared as a set.
    pub allowed_ips: Vec<Net>,
    /// Seconds; 0: off.
    pub keepalive: u16,
    pub psk: Option<SecretKey>,
}

/// A WireGuard device's configuration as weft wants it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tunnel {
    pub private_key: SecretKey,
    pub listen_port: u16,
    pub peers: BTreeMap<PublicKey, TunnelPeer>,
    /// The cluster networks: a peer whose allowed IPs lie inside them is weft's.
    pub networks: Vec<Net>,
}

/// One peer as the device reports it (`wg show`'s fields).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerState {
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<Net>,
    pub keepalive: u16,
    pub psk: Option<SecretKey>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// `None`: no handshake yet (the protocol reports zero).
    pub last_handshake: Option<SystemTime>,
}

/// A WireGuard device's configuration as read from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelState {
    pub private_key: Option<SecretKey>,
    pub public_key: Option<PublicKey>,
    pub listen_port: u16,
    pub peers: BTreeMap<PublicKey, PeerState>,
    /// Who answered: the kernel, or a userspace implementation (set by the reader).
    pub implementation: TunnelImplementation,
}

/// Which WireGuard implementation serves a device: the kernel's (a `wireguard` link), or
/// a userspace one behind a TUN device (`--wireguard-userspace`). Operators ask which one
/// runs: the userspace one is the fallback of a kernel without WireGuard, and slower.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TunnelImplementation {
    #[default]
    Kernel,
    Userspace,
}

impl TunnelImplementation {
    pub fn label(self) -> &'static str {
        match self {
            TunnelImplementation::Kernel => "kernel",
            TunnelImplementation::Userspace => "userspace",
        }
    }
}

/// What to set on a device: only what differs. Secrets are never printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelChange {
    pub device: String,
    pub private_key: Option<SecretKey>,
    pub listen_port: Option<u16>,
    /// Peers removed first (a key may be removed and, in the same change, not re-added).
    pub remove: Vec<PublicKey>,
    /// Peers added or updated; their allowed IPs replace the old ones.
    pub set: Vec<(PublicKey, TunnelPeer)>,
}

impl std::fmt::Display for TunnelChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "wg set {}", self.device)?;
        if self.private_key.is_some() {
            f.write_str(" private-key (set)")?;
        }
        if let Some(port) = self.listen_port {
            write!(f, " listen-port {port}")?;
        }
        for key in &self.remove {
            write!(f, " peer {key} remove")?;
        }
        for (key, peer) in &self.set {
            write!(f, " peer {key} endpoint {} allowed-ips ", peer.endpoint)?;
            let ips: Vec<String> = peer.allowed_ips.iter().map(Net::to_string).collect();
            f.write_str(&ips.join(","))?;
            if peer.keepalive > 0 {
                write!(f, " persistent-keepalive {}", peer.keepalive)?;
            }
            if peer.psk.is_some() {
                f.write_str(" preshared-key (set)")?;
            }
        }
        Ok(())
    }
}

impl TunnelChange {
    /// The whole configuration, for a device just created.
    pub fn full(device: &str, want: &Tunnel) -> TunnelChange {
        TunnelChange {
            device: device.to_string(),
            private_key: Some(want.private_key.clone()),
            listen_port: Some(want.listen_port),
            remove: Vec::new(),
            set: want.peers.iter().map(|(k, p)| (*k, p.clone())).collect(),
        }
    }
}

/// Whether a peer found on weft's device is weft's to change or remove.
pub fn is_ours(peer: &PeerState, networks: &[Net]) -> bool {
    peer.allowed_ips
        .iter()
        .all(|ip| networks.iter().any(|n| within(ip, n)))
}

/// The change that gives `have` the configuration `want`; `None` when it has it already.
pub fn changes(device: &str, want: &Tunnel, have: &TunnelState) -> Option<TunnelChange> {
    // A device that does not give its private key back (boringtun answers its public
    // key instead) has the wanted one when its public key matches.
    let has_key = match (&have.private_key, &have.public_key) {
        (Some(private), _) => *private == want.private_key,
        (None, Some(public)) => *public == want.private_key.public_key(),
        (None, None) => false,
    };
    let mut change = TunnelChange {
        device: device.to_string(),
        private_key: (!has_key).then(|| want.private_key.clone()),
        listen_port: (have.listen_port != want.listen_port).then_some(want.listen_port),
        remove: Vec::new(),
        set: Vec::new(),
    };
    for (key, peer) in &have.peers {
        if !want.peers.contains_key(key) && is_ours(peer, &want.networks) {
            change.remove.push(*key);
        }
    }
    for (key, peer) in &want.peers {
        let same = have.peers.get(key).is_some_and(|state| {
            state.endpoint == Some(peer.endpoint)
                && sorted(&state.allowed_ips) == peer.allowed_ips
                && state.keepalive == peer.keepalive
                && state.psk == peer.psk
        });
        if !same {
            change.set.push((*key, peer.clone()));
        }
    }
    let unchanged = change.private_key.is_none()
        && change.listen_port.is_none()
        && change.remove.is_empty()
        && change.set.is_empty();
    (!unchanged).then_some(change)
}

/// Whether `inner` lies inside `outer`.
fn within(inner: &Net, outer: &Net) -> bool {
    let (inner_prefix, outer_prefix) = (inner.prefix, outer.prefix);
    inner.family == outer.family && outer_prefix <= inner_prefix && outer.contains(inner.addr)
}

fn sorted(nets: &[Net]) -> Vec<Net> {
    let mut nets = nets.to_vec();
    nets.sort();
    nets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    fn peer(n: u8) -> TunnelPeer {
        TunnelPeer {
            endpoint: format!("198.18.0.{n}:51820").parse().unwrap(),
            allowed_ips: vec![format!("10.244.{n}.0/24").parse().unwrap()],
            keepalive: 0,
            psk: None,
        }
    }

    fn state_of(p: &TunnelPeer) -> PeerState {
        PeerState {
            endpoint: Some(p.endpoint),
            allowed_ips: p.allowed_ips.clone(),
            keepalive: p.keepalive,
            psk: p.psk.clone(),
            ..PeerState::default()
        }
    }

    fn want(peers: &[u8]) -> Tunnel {
        Tunnel {
            private_key: SecretKey::from_bytes([1; 32]),
            listen_port: 51820,
            peers: peers.iter().map(|n| (key(*n), peer(*n))).collect(),
            networks: vec!["10.244.0.0/16".parse().unwrap()],
        }
    }

    fn have(peers: &[u8]) -> TunnelState {
        TunnelState {
            private_key: Some(SecretKey::from_bytes([1; 32])),
            public_key: None,
            listen_port: 51820,
            peers: peers
                .iter()
                .map(|n| (key(*n), state_of(&peer(*n))))
                .collect(),
            ..TunnelState::default()
        }
    }

    #[test]
    fn a_device_that_has_everything_needs_no_change() {
        assert_eq!(changes("flannel-wg", &want(&[2, 3]), &have(&[2, 3])), None);
    }

    #[test]
    fn peers_added_changed_and_removed() {
        let mut want = want(&[2, 3, 4]);
        want.peers.get_mut(&key(3)).unwrap().endpoint = "198.18.0.33:51820".parse().unwrap();
        let change = changes("flannel-wg", &want, &have(&[2, 3, 5])).unwrap();
        assert_eq!(change.remove, vec![key(5)]);
        let set: Vec<PublicKey> = change.set.iter().map(|(k, _)| *k).collect();
        assert_eq!(set, vec![key(3), key(4)]);
        assert_eq!(change.private_key, None);
        assert_eq!(change.listen_port, None);
    }

    #[test]
    fn a_new_private_key_or_port_is_set_and_never_printed() {
        let mut want = want(&[]);
        want.private_key = SecretKey::from_bytes([9; 32]);
        want.listen_port = 51000;
        let change = changes("flannel-wg", &want, &have(&[])).unwrap();
        assert_eq!(change.private_key, Some(SecretKey::from_bytes([9; 32])));
        assert_eq!(
            change.to_string(),
            "wg set flannel-wg private-key (set) listen-port 51000"
        );
        assert!(!format!("{change:?}").contains("9, 9"));
    }

    #[test]
    fn a_device_that_reports_only_its_public_key_keeps_its_private_key() {
        let mut have = have(&[2]);
        have.private_key = None;
        have.public_key = Some(SecretKey::from_bytes([1; 32]).public_key());
        assert_eq!(changes("flannel-wg", &want(&[2]), &have), None);
        have.public_key = Some(SecretKey::from_bytes([3; 32]).public_key());
        let change = changes("flannel-wg", &want(&[2]), &have).unwrap();
        assert!(change.private_key.is_some());
    }

    #[test]
    fn a_foreign_peer_on_the_device_is_left_alone() {
        let mut have = have(&[2]);
        let mut admin = state_of(&peer(7));
        admin.allowed_ips = vec!["192.168.50.0/24".parse().unwrap()];
        have.peers.insert(key(7), admin);
        // A peer whose subnets moved away (no allowed IPs left) is weft's.
        have.peers.insert(key(8), PeerState::default());
        let change = changes("flannel-wg", &want(&[2]), &have).unwrap();
        assert_eq!(change.remove, vec![key(8)]);
    }

    #[test]
    fn the_display_of_a_peer_change_is_wg_like() {
        let mut want = want(&[2]);
        want.peers.get_mut(&key(2)).unwrap().keepalive = 25;
        want.peers.get_mut(&key(2)).unwrap().psk = Some(SecretKey::from_bytes([5; 32]));
        let change = TunnelChange::full("flannel-wg", &want);
        assert_eq!(
            change.to_string(),
            format!(
                "wg set flannel-wg private-key (set) listen-port 51820 peer {} endpoint \
                 198.18.0.2:51820 allowed-ips 10.244.2.0/24 persistent-keepalive 25 \
                 preshared-key (set)",
                key(2)
            )
        );
    }
}
