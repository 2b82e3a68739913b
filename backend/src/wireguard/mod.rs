//! The wireguard backend, wire-compatible with flannel's: one WireGuard device per family
//! (`flannel-wg`, `flannel-wg-v6`; one `flannel-wg` for both in the single-device modes)
//! holding the own subnet's address (/32, /128) and a route for the whole cluster
//! network; per peer, its public key, endpoint (`PublicIP:Port`) and its subnets as
//! allowed IPs. BackendData `{"PublicKey":"<base64>","Port":<port>}`; MTU − 80.
//!
//! The route covers the whole network, as flannel's does, so traffic to a pod subnet
//! with no peer (yet) is dropped by WireGuard ("no key") instead of leaving in clear
//! through the default route.
//!
//! Differences from flannel (docs/compatibility.md): the configuration is reconciled
//! like vxlan's (a peer's key or endpoint changed, a device or peer deleted by hand, are
//! put right by the next pass) and the device is kept on exit and restart; the peer
//! rules below are checked before a peer is configured; in the single-device modes the
//! IPv6 data carries the port the device really listens on.
//!
//! Peer rules (each broken rule a skip, logged once with the lease): the BackendData's
//! `PublicKey` must be a valid non-zero key, not this node's, and not another peer's;
//! two leases with one key at one public IP are one node (its subnets join), otherwise
//! the lease with the lower subnet keeps the key.

pub mod config;

use crate::desired::{Desired, Device, Link, Route, SkipKind, Skipped, WireguardLink};
use crate::tunnel::key::{PublicKey, SecretKey};
use crate::tunnel::{Tunnel, TunnelPeer};
use config::{Mode, WireguardConfig};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use weft_lease::family::{Family, Net};
use weft_lease::{BackendData, Lease, LeaseAttrs, SubnetKey};

pub use crate::desired::{WIREGUARD_DEVICE as DEVICE, WIREGUARD_DEVICE_V6 as DEVICE_V6};

/// WireGuard's overhead over the underlay (flannel's `overhead`): IPv6 header 40, UDP 8,
/// type 4, key index 4, nonce 8, authentication tag 16.
pub const OVERHEAD: u32 = 80;

/// This node's side of the wireguard backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub own: SubnetKey,
    pub network_v4: Option<Net>,
    pub network_v6: Option<Net>,
    pub external_name: String,
    pub external_mtu: u32,
    /// This node's public addresses (the `auto` mode compares scopes with them).
    pub public_v4: Option<Ipv4Addr>,
    pub public_v6: Option<Ipv6Addr>,
    pub private_key: SecretKey,
}

/// The wireguard backend: configuration and this node.
#[derive(Debug, Clone)]
pub struct WireguardBackend {
    pub config: WireguardConfig,
    pub node: Node,
}

impl WireguardBackend {
    pub fn public_key(&self) -> PublicKey {
        self.node.private_key.public_key()
    }

    pub fn pod_mtu(&self) -> u32 {
        self.config
            .mtu
            .unwrap_or(self.node.external_mtu)
            .saturating_sub(OVERHEAD)
    }

    fn separate(&self) -> bool {
        self.config.mode == Mode::Separate
    }

    /// The device carrying `family`.
    pub fn device_name(&self, family: Family) -> &'static str {
        match family {
            Family::V6 if self.separate() => DEVICE_V6,
            _ => DEVICE,
        }
    }

    fn listen_port(&self, family: Family) -> u16 {
        match family {
            Family::V6 if self.separate() => self.config.listen_port_v6,
            _ => self.config.listen_port,
        }
    }

    /// flannel's attributes: BackendData per enabled family, `{"PublicKey","Port"}`.
    pub fn lease_attrs(
        &self,
        public_v4: Option<Ipv4Addr>,
        public_v6: Option<Ipv6Addr>,
    ) -> LeaseAttrs {
        let public_key = self.public_key().to_base64();
        let data = |family| {
            BackendData::new(&serde_json::json!({
                "PublicKey": public_key,
                "Port": self.listen_port(family),
            }))
        };
        LeaseAttrs {
            public_ip: public_v4.unwrap_or(Ipv4Addr::UNSPECIFIED),
            public_ipv6: public_v6,
            backend_type: "wireguard".into(),
            backend_data: self.node.network_v4.map(|_| data(Family::V4)),
            backend_v6_data: self.node.network_v6.map(|_| data(Family::V6)),
        }
    }

    /// The devices, their routes and peers for `peers`, and the peers skipped.
    pub fn desired_state<'a>(
        &self,
        peers: impl IntoIterator<Item = &'a Lease>,
    ) -> (Desired, Vec<Skipped>) {
        let mut devices: BTreeMap<&'static str, (Vec<Net>, Vec<Net>)> = BTreeMap::new();
        for (own, network, family) in [
            (self.node.own.ipv4, self.node.network_v4, Family::V4),
            (self.node.own.ipv6, self.node.network_v6, Family::V6),
        ] {
            if let (Some(own), Some(network)) = (own, network) {
                let (addresses, networks) = devices.entry(self.device_name(family)).or_default();
                addresses.push(Net::new_masked(own.ip(), family.width()));
                networks.push(network);
            }
        }
        // Derived once a pass (an X25519 multiplication), not once per peer.
        let own_key = self.public_key();
        let mut claims = Claims::default();
        let mut skipped = Vec::new();
        for peer in peers {
            match self.peer_entries(peer, own_key) {
                Ok(entries) => claims.claim(peer, entries, &mut skipped),
                Err((kind, reason)) => skipped.push(Skipped {
                    key: peer.key,
                    kind,
                    reason,
                }),
            }
        }
        let mut desired = Desired::default();
        for (name, (addresses, networks)) in devices {
            for network in &networks {
                desired.add_route(Route {
                    destination: *network,
                    gateway: None,
                    device: name.into(),
                    onlink: false,
                    nexthop: None,
                });
            }
            let family = if name == DEVICE_V6 {
                Family::V6
            } else {
                Family::V4
            };
            desired.devices.push(Device {
                link: Link::Wireguard(WireguardLink {
                    name: name.to_string(),
                    mtu: self.pod_mtu(),
                    tunnel: Tunnel {
                        private_key: self.node.private_key.clone(),
                        listen_port: self.listen_port(family),
                        peers: claims.peers_of(name),
                        networks,
                    },
                }),
                addresses,
            });
        }
        (desired, skipped)
    }

    /// A peer's entries, one per device: its key, endpoint and subnets.
    fn peer_entries(
        &self,
        peer: &Lease,
        own_key: PublicKey,
    ) -> Result<Vec<PeerEntry>, (SkipKind, String)> {
        if peer.attrs.backend_type != "wireguard" {
            let skip = Skipped::other_backend(peer, "wireguard");
            return Err((skip.kind, skip.reason));
        }
        let v4 = self.node.own.ipv4.and(peer.key.ipv4);
        let v6 = self.node.own.ipv6.and(peer.key.ipv6);
        if v4.is_none() && v6.is_none() {
            return Ok(Vec::new());
        }
        let key = self.peer_key(peer, own_key)?;
        if self.separate() {
            let mut entries = Vec::new();
            if let Some(subnet) = v4 {
                entries.push(self.family_entry(peer, key, Family::V4, vec![subnet])?);
            }
            if let Some(subnet) = v6 {
                entries.push(self.family_entry(peer, key, Family::V6, vec![subnet])?);
            }
            return Ok(entries);
        }
        let subnets: Vec<Net> = v4.into_iter().chain(v6).collect();
        let family = self.endpoint_family(peer);
        Ok(vec![self.family_entry(peer, key, family, subnets)?])
    }

    /// The entry for `peer` on the device of `family`, its endpoint over `family`.
    fn family_entry(
        &self,
        peer: &Lease,
        key: PublicKey,
        family: Family,
        subnets: Vec<Net>,
    ) -> Result<PeerEntry, (SkipKind, String)> {
        let data = match family {
            Family::V4 => peer.attrs.backend_data.as_ref(),
            Family::V6 => peer.attrs.backend_v6_data.as_ref(),
        };
        // flannel: a missing port is this node's own. In the single-device modes the v4
        // data's port is the one the peer's device listens on (flannel's v6 data names
        // ListenPortV6, which its single device does not use).
        let port = if self.separate() {
            port_of(data)
        } else {
            port_of(peer.attrs.backend_data.as_ref()).or_else(|| port_of(data))
        }
        .unwrap_or_else(|| self.listen_port(family));
        let ip = match family {
            Family::V4 => Some(IpAddr::V4(peer.attrs.public_ip)),
            Family::V6 => peer.attrs.public_ipv6.map(IpAddr::V6),
        }
        .filter(|ip| !ip.is_unspecified())
        .ok_or_else(|| {
            (
                SkipKind::NoPublicIp,
                format!("it has no {family:?} public IP for its WireGuard endpoint"),
            )
        })?;
        let mut allowed_ips = subnets;
        allowed_ips.sort();
        Ok(PeerEntry {
            device: self.device_name(family),
            key,
            peer: TunnelPeer {
                endpoint: SocketAddr::new(ip, port),
                allowed_ips,
                keepalive: self.config.keepalive,
                psk: self.config.psk.clone(),
            },
        })
    }

    /// The peer's public key: valid, not this node's, the same in both families' data.
    fn peer_key<'a>(
        &self,
        peer: &'a Lease,
        own_key: PublicKey,
    ) -> Result<PublicKey, (SkipKind, String)> {
        let read = |data: Option<&BackendData>| -> Option<Result<PublicKey, String>> {
            let text = data?.str_field("publickey", str::to_string);
            Some(match text {
                Some(text) => PublicKey::parse(&text)
                    .map_err(|e| format!("its PublicKey is not a WireGuard key: {e}")),
                None => Err("its BackendData has no PublicKey".into()),
            })
        };
        // A family's data counts where the peer has a subnet of it; JSON null is none.
        let data = |subnet: Option<Net>, data: Option<&'a BackendData>| {
            subnet.and(data).filter(|d| !d.is_null())
        };
        let v4 = read(data(peer.key.ipv4, peer.attrs.backend_data.as_ref()));
        let v6 = read(data(peer.key.ipv6, peer.attrs.backend_v6_data.as_ref()));
        let bad = |reason| (SkipKind::BadPublicKey, reason);
        let key = match (v4, v6) {
            (Some(Ok(a)), Some(Ok(b))) if a != b => {
                return Err(bad(format!(
                    "its IPv4 and IPv6 BackendData name different public keys ({a}, {b})"
                )));
            }
            (Some(Err(e)), _) | (_, Some(Err(e))) => return Err(bad(e)),
            (Some(Ok(key)), _) | (None, Some(Ok(key))) => key,
            (None, None) => return Err(bad("it has no BackendData with a PublicKey".into())),
        };
        if key == own_key {
            return Err((
                SkipKind::PublicKeyClaimed,
                format!("its public key {key} is this node's"),
            ));
        }
        Ok(key)
    }

    /// The family of a peer's endpoint in the single-device modes (flannel's `auto`
    /// heuristic: IPv4 unless the peer's IPv4 address is private and both sides have a
    /// public IPv6 address).
    fn endpoint_family(&self, peer: &Lease) -> Family {
        let peer_v6 = peer.attrs.public_ipv6;
        match self.config.mode {
            Mode::Ipv6 => Family::V6,
            Mode::Ipv4 | Mode::Separate => Family::V4,
            Mode::Auto => {
                let Some(peer_v6) = peer_v6 else {
                    return Family::V4;
                };
                if !peer.attrs.public_ip.is_private() && self.node.public_v4.is_some() {
                    return Family::V4;
                }
                let own_v6_public = self.node.public_v6.is_some_and(|ip| !is_private_v6(ip));
                if !is_private_v6(peer_v6) && own_v6_public {
                    Family::V6
                } else {
                    Family::V4
                }
            }
        }
    }
}

/// Go's `IP.IsPrivate` for IPv6: unique local addresses, fc00::/7.
fn is_private_v6(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xfe00 == 0xfc00
}

fn port_of(data: Option<&BackendData>) -> Option<u16> {
    let value = data?.to_value();
    let Value::Object(object) = value else {
        return None;
    };
    object
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("port"))
        .and_then(|(_, v)| v.as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
}

/// One peer on one device.
struct PeerEntry {
    device: &'static str,
    key: PublicKey,
    peer: TunnelPeer,
}

/// The peers per device, and who holds each public key.
#[derive(Default)]
struct Claims {
    peers: BTreeMap<(&'static str, PublicKey), TunnelPeer>,
    holders: BTreeMap<PublicKey, (SubnetKey, IpAddr)>,
}

impl Claims {
    /// Adds a peer's entries, unless its key is held by another node (see the module docs).
    fn claim(&mut self, lease: &Lease, entries: Vec<PeerEntry>, skipped: &mut Vec<Skipped>) {
        for entry in &entries {
            let ip = entry.peer.endpoint.ip();
            match self.holders.get(&entry.key) {
                Some((holder, held_at)) if *holder != lease.key && *held_at != ip => {
                    skipped.push(Skipped {
                        key: lease.key,
                        kind: SkipKind::PublicKeyClaimed,
                        reason: format!(
                            "its public key {} is already the key of peer {holder} at {held_at}",
                            entry.key
                        ),
                    });
                    return;
                }
                _ => {}
            }
        }
        for entry in entries {
            self.holders
                .entry(entry.key)
                .or_insert((lease.key, entry.peer.endpoint.ip()));
            match self.peers.get_mut(&(entry.device, entry.key)) {
                // One node with two leases at one address: its subnets join.
                Some(existing) => {
                    existing.allowed_ips.extend(entry.peer.allowed_ips);
                    existing.allowed_ips.sort();
                }
                None => {
                    self.peers.insert((entry.device, entry.key), entry.peer);
                }
            }
        }
    }

    fn peers_of(&self, device: &str) -> BTreeMap<PublicKey, TunnelPeer> {
        self.peers
            .iter()
            .filter(|((d, _), _)| *d == device)
            .map(|((_, k), p)| (*k, p.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests;
