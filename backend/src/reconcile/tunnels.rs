//! The WireGuard peers as the devices last reported them (each full pass reads every
//! WireGuard device weft owns): per peer its key, endpoint, latest handshake and bytes,
//! what `wg show` prints, for the state view and the metrics. Secrets are dropped before
//! the states are kept.

use super::Reconciler;
use crate::desired::Observed;
use crate::tunnel::key::PublicKey;
use crate::tunnel::{PeerState, TunnelState};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::SystemTime;
use weft_lease::Lease;
use weft_lease::family::Net;

/// One peer of one of weft's WireGuard devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelPeerView {
    pub device: String,
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<Net>,
    /// `None`: no handshake yet.
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Which WireGuard implementation serves a device: the kernel's (a `wireguard` link), or
/// a userspace one behind a TUN device (`--wireguard-userspace`). Operators ask which one
/// runs: the userspace one is the fallback of a kernel without WireGuard, and slower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelImplementation {
    Kernel,
    Userspace,
}

impl std::fmt::Display for TunnelImplementation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TunnelImplementation::Kernel => "the kernel's WireGuard",
            TunnelImplementation::Userspace => "a userspace WireGuard (TUN device, UAPI socket)",
        })
    }
}

/// The devices' states of the last full pass, without secrets (none before it).
#[derive(Debug, Default)]
pub(super) struct TunnelsSeen {
    pub(super) devices: BTreeMap<String, TunnelState>,
    implementations: BTreeMap<String, TunnelImplementation>,
}

impl TunnelsSeen {
    pub(super) fn record(&mut self, observed: &Observed) {
        self.devices = observed
            .links
            .iter()
            .filter_map(|link| {
                let mut state = link.tunnel.clone()?;
                state.private_key = None;
                for peer in state.peers.values_mut() {
                    peer.psk = None;
                }
                Some((link.name.clone(), state))
            })
            .collect();
        // A device answers as a tunnel only as one of the two (see the executor's
        // `read_tunnel`): a `wireguard` link, or a TUN device with its UAPI socket.
        self.implementations = observed
            .links
            .iter()
            .filter(|link| link.tunnel.is_some())
            .map(|link| {
                let implementation = match link.kind.as_deref() {
                    Some("wireguard") => TunnelImplementation::Kernel,
                    _ => TunnelImplementation::Userspace,
                };
                (link.name.clone(), implementation)
            })
            .collect();
    }
}

fn view(device: &str, key: &PublicKey, peer: &PeerState) -> TunnelPeerView {
    TunnelPeerView {
        device: device.to_string(),
        public_key: *key,
        endpoint: peer.endpoint,
        allowed_ips: peer.allowed_ips.clone(),
        last_handshake: peer.last_handshake,
        rx_bytes: peer.rx_bytes,
        tx_bytes: peer.tx_bytes,
    }
}

impl Reconciler {
    /// The WireGuard peers that carry `lease`'s subnets (one per device).
    pub fn tunnel_peers_of(&self, lease: &Lease) -> Vec<TunnelPeerView> {
        let subnets: Vec<_> = [lease.key.ipv4, lease.key.ipv6]
            .into_iter()
            .flatten()
            .collect();
        let mut out = Vec::new();
        for (device, state) in &self.tunnels.devices {
            for (key, peer) in &state.peers {
                if peer.allowed_ips.iter().any(|ip| subnets.contains(ip)) {
                    out.push(view(device, key, peer));
                }
            }
        }
        out
    }

    /// weft's WireGuard devices and which implementation serves each, as of the last
    /// full pass.
    pub fn tunnel_devices(&self) -> impl Iterator<Item = (&str, TunnelImplementation)> {
        self.tunnels
            .implementations
            .iter()
            .map(|(device, implementation)| (device.as_str(), *implementation))
    }

    /// Every peer of weft's WireGuard devices, as of the last full pass.
    pub fn tunnel_peers(&self) -> Vec<TunnelPeerView> {
        self.tunnels
            .devices
            .iter()
            .flat_map(|(device, state)| {
                state
                    .peers
                    .iter()
                    .map(move |(key, peer)| view(device, key, peer))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::ObservedLink;
    use crate::tunnel::key::SecretKey;

    fn link(name: &str, kind: &str, tunnel: Option<TunnelState>) -> ObservedLink {
        ObservedLink {
            index: 7,
            name: name.into(),
            kind: Some(kind.into()),
            vxlan: None,
            tunnel,
            mtu: 1420,
            mac: [0; 6],
            up: true,
            addresses: Vec::new(),
        }
    }

    #[test]
    fn each_device_is_named_with_its_implementation_and_no_secret_is_kept() {
        let secret = SecretKey::from_bytes([7; 32]);
        let state = TunnelState {
            private_key: Some(secret),
            ..TunnelState::default()
        };
        let observed = Observed {
            links: vec![
                link("flannel-wg", "wireguard", Some(state.clone())),
                link("flannel-wg-v6", "tun", Some(state)),
                // Another program's TUN device: no tunnel state, not listed.
                link("tun0", "tun", None),
            ],
            ..Observed::default()
        };
        let mut seen = TunnelsSeen::default();
        seen.record(&observed);
        let listed: Vec<_> = seen
            .implementations
            .iter()
            .map(|(device, implementation)| (device.as_str(), *implementation))
            .collect();
        assert_eq!(
            listed,
            [
                ("flannel-wg", TunnelImplementation::Kernel),
                ("flannel-wg-v6", TunnelImplementation::Userspace),
            ]
        );
        assert!(seen.devices.values().all(|s| s.private_key.is_none()));
        assert_eq!(
            TunnelImplementation::Kernel.to_string(),
            "the kernel's WireGuard"
        );
    }
}
