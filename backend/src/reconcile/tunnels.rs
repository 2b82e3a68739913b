//! The WireGuard peers as the devices last reported them (each full pass reads every
//! WireGuard device weft owns): per peer its key, endpoint, latest handshake and bytes,
//! what `wg show` prints, for the state view and the metrics. Secrets are dropped before
//! the states are kept.

use super::Reconciler;
use crate::desired::Observed;
use crate::tunnel::key::PublicKey;
use crate::tunnel::{PeerState, TunnelImplementation, TunnelState};
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

/// The devices' states of the last full pass, without secrets (none before it).
#[derive(Debug, Default)]
pub(super) struct TunnelsSeen {
    pub(super) devices: BTreeMap<String, TunnelState>,
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
            .devices
            .iter()
            .map(|(device, state)| (device.as_str(), state.implementation))
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

    fn link(name: &str, tunnel: Option<TunnelState>) -> ObservedLink {
        ObservedLink {
            index: 7,
            name: name.into(),
            kind: Some("wireguard".into()),
            vxlan: None,
            tunnel,
            mtu: 1420,
            mac: [0; 6],
            up: true,
            addresses: Vec::new(),
        }
    }

    #[test]
    fn the_devices_are_kept_with_their_implementation_and_without_secrets() {
        let state = |implementation| TunnelState {
            private_key: Some(SecretKey::from_bytes([7; 32])),
            implementation,
            ..TunnelState::default()
        };
        let observed = Observed {
            links: vec![
                link("flannel-wg", Some(state(TunnelImplementation::Kernel))),
                link(
                    "flannel-wg-v6",
                    Some(state(TunnelImplementation::Userspace)),
                ),
                // Not a tunnel (another program's device): not kept.
                link("wg0", None),
            ],
            ..Observed::default()
        };
        let mut seen = TunnelsSeen::default();
        seen.record(&observed);
        let devices: Vec<_> = seen
            .devices
            .iter()
            .map(|(device, state)| (device.as_str(), state.implementation))
            .collect();
        assert_eq!(
            devices,
            [
                ("flannel-wg", TunnelImplementation::Kernel),
                ("flannel-wg-v6", TunnelImplementation::Userspace),
            ]
        );
        assert!(seen.devices.values().all(|s| s.private_key.is_none()));
    }
}
