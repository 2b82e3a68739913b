//! The vxlan backend, wire-compatible with flannel's: its configuration, the lease
//! attributes it publishes, and the desired kernel state for a set of peers.
//!
//! Per node: a device `flannel.<VNI>` (`flannel-v6.<VNI>` for IPv6) with the own
//! subnet's network address as /32 (/128). Per peer: a permanent neighbour entry
//! (peer subnet address → peer VTEP MAC), an FDB entry (MAC → peer public IP) and a
//! route `peer-subnet via peer-subnet-address dev flannel.<VNI> onlink`; with
//! DirectRouting, a peer on the same L2 segment gets `peer-subnet via peer-public-ip`
//! on the external interface instead.
//!
//! Differences from flannel: the IPv6 device's MTU is base − 70 (flannel uses − 50 for
//! both families, too much for an IPv6 underlay), and the device's local address is the
//! interface address (the public IP may be a NAT address the kernel does not own).

use crate::backend_field::{FieldError, Fields};
use crate::desired::{
    Desired, Device, DeviceName, Entries, Fdb, Link, Neighbour, Route, SkipKind, Skipped, VxlanLink,
};
use crate::mac::{self, Mac};
use serde_json::Value;
use std::net::IpAddr;
use weft_lease::family::{Family, Net};
use weft_lease::{BackendData, Lease, LeaseAttrs, NetworkConfig, SubnetKey};

/// VXLAN encapsulation overhead over IPv4 and IPv6 underlays.
pub const OVERHEAD_V4: u32 = 50;
pub const OVERHEAD_V6: u32 = 70;

/// The `Backend` section for vxlan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    pub vni: u32,
    /// 0: the kernel default, 8472.
    pub port: u16,
    pub gbp: bool,
    pub learning: bool,
    pub direct_routing: bool,
    /// Underlay MTU to assume; `None`: the external interface's.
    pub mtu: Option<u32>,
}

/// A vxlan `Backend` field that is not valid.
pub type VxlanConfigError = FieldError;

const FIELDS: Fields = Fields { backend: "vxlan" };

impl VxlanConfig {
    /// Parses the `Backend` object; keys are case-insensitive (flannel's tags are
    /// `vni`, `port`, `mtu`, `gbp`, `learning`, `directRouting`).
    pub fn parse(backend: &Value) -> Result<VxlanConfig, VxlanConfigError> {
        let mut config = VxlanConfig {
            vni: 1,
            port: 0,
            gbp: false,
            learning: false,
            direct_routing: false,
            mtu: None,
        };
        let Value::Object(object) = backend else {
            return Ok(config);
        };
        for (key, value) in object {
            let uint = |field, max| FIELDS.uint(field, value, max);
            let boolean = |field| FIELDS.boolean(field, value);
            match key.to_ascii_lowercase().as_str() {
                "vni" => config.vni = uint("VNI", 0xff_ffff)? as u32,
                "port" => config.port = uint("Port", u64::from(u16::MAX))? as u16,
                "mtu" => config.mtu = Some(uint("MTU", 65_535)? as u32).filter(|m| *m > 0),
                "gbp" => config.gbp = boolean("GBP")?,
                "learning" => config.learning = boolean("Learning")?,
                "directrouting" => config.direct_routing = boolean("DirectRouting")?,
                _ => {}
            }
        }
        Ok(config)
    }

    /// Parses the `Backend` section of `config` and checks that the devices it implies
    /// can exist: the kernel limits device names to 15 bytes, so `flannel.<VNI>` allows
    /// VNIs up to 9,999,999 and `flannel-v6.<VNI>` up to 9,999 (flannel accepts larger
    /// ones and then fails on every attempt to create the device).
    pub fn for_network(config: &NetworkConfig) -> Result<VxlanConfig, VxlanConfigError> {
        let parsed = VxlanConfig::parse(&config.backend.raw)?;
        for (enabled, family, max) in [
            (config.ipv4.is_some(), Family::V4, 9_999_999),
            (config.ipv6.is_some(), Family::V6, 9_999),
        ] {
            if enabled && parsed.vni > max {
                return Err(FieldError {
                    backend: FIELDS.backend,
                    field: "VNI",
                    expected: if family == Family::V4 {
                        "at most 9999999, so that the device name flannel.<VNI> fits the \
                         kernel's 15-character limit"
                    } else {
                        "at most 9999 with IPv6, so that the device name flannel-v6.<VNI> \
                         fits the kernel's 15-character limit"
                    },
                    got: parsed.vni.to_string(),
                });
            }
        }
        Ok(parsed)
    }

    pub fn device_name(&self, family: Family) -> String {
        match family {
            Family::V4 => format!("flannel.{}", self.vni),
            Family::V6 => format!("flannel-v6.{}", self.vni),
        }
    }

    /// BackendData as flannel writes it: `{"VNI":1,"VtepMAC":"aa:bb:..."}`.
    pub fn backend_data(&self, mac: &Mac) -> BackendData {
        BackendData::new(&serde_json::json!({"VNI": self.vni, "VtepMAC": mac::format(mac)}))
    }
}

/// The VTEP MAC published in BackendData, if any.
pub fn vtep_mac(data: Option<&BackendData>) -> Option<Mac> {
    data?.str_field("vtepmac", mac::parse)?
}

/// This node's side of the datapath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub own: SubnetKey,
    pub external_index: u32,
    pub external_name: String,
    pub external_mtu: u32,
    /// Interface addresses (the devices' local addresses).
    pub local_v4: Option<IpAddr>,
    pub local_v6: Option<IpAddr>,
    /// Networks directly connected to the external interface (for DirectRouting).
    pub connected: Vec<Net>,
    pub mac_v4: Mac,
    pub mac_v6: Mac,
}

impl Node {
    pub fn base_mtu(&self, config: &VxlanConfig) -> u32 {
        config.mtu.unwrap_or(self.external_mtu)
    }

    /// FLANNEL_MTU: the smallest MTU of the enabled families' devices.
    pub fn pod_mtu(&self, config: &VxlanConfig) -> u32 {
        let base = self.base_mtu(config);
        let v4 = self.own.ipv4.map(|_| base.saturating_sub(OVERHEAD_V4));
        let v6 = self.own.ipv6.map(|_| base.saturating_sub(OVERHEAD_V6));
        v4.into_iter().chain(v6).min().unwrap_or(base)
    }

    /// The attributes this node publishes in its lease.
    pub fn lease_attrs(
        &self,
        config: &VxlanConfig,
        public_v4: Option<std::net::Ipv4Addr>,
        public_v6: Option<std::net::Ipv6Addr>,
    ) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: public_v4.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            public_ipv6: public_v6,
            backend_type: "vxlan".into(),
            backend_data: public_v4.map(|_| config.backend_data(&self.mac_v4)),
            backend_v6_data: public_v6.map(|_| config.backend_data(&self.mac_v6)),
        }
    }
}

/// The desired kernel state for this node and its peers.
pub fn desired_state<'a>(
    config: &VxlanConfig,
    node: &Node,
    peers: impl IntoIterator<Item = &'a Lease>,
) -> (Desired, Vec<Skipped>) {
    let mut desired = Desired {
        devices: devices(config, node),
        ..Desired::default()
    };
    let mut skipped = Vec::new();
    let mut entries = Entries::default();
    let names = EntryDevices::new(config, node);
    for peer in peers {
        if peer.attrs.backend_type != "vxlan" {
            skipped.push(Skipped::other_backend(peer, "vxlan"));
            continue;
        }
        for path in peer_paths(node, peer) {
            if let Err((kind, reason)) = add_path(config, node, &names, &path, &mut entries) {
                skipped.push(Skipped {
                    key: peer.key,
                    kind,
                    reason,
                });
            }
        }
    }
    entries.build_into(&mut desired);
    (desired, skipped)
}

/// This node's VXLAN devices, one per family it has a subnet and a local address in.
fn devices(config: &VxlanConfig, node: &Node) -> Vec<Device> {
    let base = node.base_mtu(config);
    let families = [
        (
            Family::V4,
            node.own.ipv4,
            node.local_v4,
            node.mac_v4,
            OVERHEAD_V4,
        ),
        (
            Family::V6,
            node.own.ipv6,
            node.local_v6,
            node.mac_v6,
            OVERHEAD_V6,
        ),
    ];
    let mut devices = Vec::new();
    for (family, own, local, mac, overhead) in families {
        let (Some(own), Some(local)) = (own, local) else {
            continue;
        };
        let single = Net {
            family,
            addr: own.addr,
            prefix: family.width(),
        };
        devices.push(Device {
            link: Link::Vxlan(VxlanLink {
                name: config.device_name(family),
                vni: config.vni,
                port: config.port,
                local,
                underlay_index: node.external_index,
                learning: config.learning,
                gbp: config.gbp,
                mtu: base.saturating_sub(overhead),
                mac,
            }),
            addresses: vec![single],
        });
    }
    devices
}

/// The device names entries go on, one allocation each, shared by every entry on it.
struct EntryDevices {
    external: DeviceName,
    v4: DeviceName,
    v6: DeviceName,
}

impl EntryDevices {
    fn new(config: &VxlanConfig, node: &Node) -> EntryDevices {
        EntryDevices {
            external: DeviceName::from(&node.external_name),
            v4: DeviceName::from(config.device_name(Family::V4)),
            v6: DeviceName::from(config.device_name(Family::V6)),
        }
    }

    fn vxlan(&self, family: Family) -> DeviceName {
        match family {
            Family::V4 => self.v4.clone(),
            Family::V6 => self.v6.clone(),
        }
    }
}

/// One way to a peer's subnet in one family.
struct PeerPath<'a> {
    subnet: Net,
    public_ip: IpAddr,
    data: Option<&'a BackendData>,
    family: Family,
}

/// The peer's subnets in the families this node runs VXLAN in.
fn peer_paths<'a>(node: &Node, peer: &'a Lease) -> impl Iterator<Item = PeerPath<'a>> {
    let v4 = (node.own.ipv4.is_some() && node.local_v4.is_some())
        .then_some(())
        .and(peer.key.ipv4)
        .map(|subnet| PeerPath {
            subnet,
            public_ip: IpAddr::V4(peer.attrs.public_ip),
            data: peer.attrs.backend_data.as_ref(),
            family: Family::V4,
        });
    let v6 = (node.own.ipv6.is_some() && node.local_v6.is_some())
        .then_some(())
        .and(peer.key.ipv6)
        .and_then(|subnet| {
            peer.attrs.public_ipv6.map(|ip| PeerPath {
                subnet,
                public_ip: IpAddr::V6(ip),
                data: peer.attrs.backend_v6_data.as_ref(),
                family: Family::V6,
            })
        });
    v4.into_iter().chain(v6)
}

/// The entries of one path: a direct route to an L2-adjacent peer (DirectRouting), or
/// the neighbour, FDB entry and onlink route through the VXLAN device; or why not.
fn add_path(
    config: &VxlanConfig,
    node: &Node,
    names: &EntryDevices,
    path: &PeerPath<'_>,
    entries: &mut Entries,
) -> Result<(), (SkipKind, String)> {
    let PeerPath {
        subnet,
        public_ip,
        data,
        family,
    } = *path;
    if public_ip.is_unspecified() {
        return Err((SkipKind::NoPublicIp, "it has no public IP".into()));
    }
    if config.direct_routing && crate::adjacency::on_link(&node.connected, public_ip) {
        entries.add_route(Route {
            destination: subnet,
            gateway: Some(public_ip),
            device: names.external.clone(),
            onlink: false,
            nexthop: None,
        });
        return Ok(());
    }
    let Some(peer_mac) = vtep_mac(data) else {
        let reason = format!("its {family:?} BackendData has no valid VtepMAC");
        return Err((SkipKind::NoVtepMac, reason));
    };
    let device = names.vxlan(family);
    entries.add_neighbour(Neighbour {
        device: device.clone(),
        ip: subnet.ip(),
        mac: peer_mac,
    });
    entries.add_fdb(Fdb {
        device: device.clone(),
        mac: peer_mac,
        destination: public_ip,
    });
    entries.add_route(Route {
        destination: subnet,
        gateway: Some(subnet.ip()),
        device,
        onlink: true,
        nexthop: None,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        Node {
            own: SubnetKey::parse("10.244.1.0-24").unwrap(),
            external_index: 2,
            external_name: "eth0".into(),
            external_mtu: 1500,
            local_v4: Some("198.18.0.11".parse().unwrap()),
            local_v6: None,
            connected: vec!["198.18.0.0/24".parse().unwrap()],
            mac_v4: [2, 0, 0, 0, 0, 1],
            mac_v6: [2, 0, 0, 0, 0, 2],
        }
    }

    fn peer(key: &str, ip: &str, data: Value) -> Lease {
        Lease {
            key: SubnetKey::parse(key).unwrap(),
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                backend_type: "vxlan".into(),
                backend_data: Some(data.into()),
                ..LeaseAttrs::default()
            },
            etcd_lease: 1,
            expiration: None,
            revision: 1,
        }
    }

    #[test]
    fn an_underlay_mtu_change_is_followed_unless_the_config_sets_the_mtu() {
        use crate::backend::{Backend, MtuChange, VxlanBackend};
        use crate::nexthop::NexthopPlan;
        let config = VxlanConfig::parse(&serde_json::json!({"Type": "vxlan"})).unwrap();
        let mut backend = VxlanBackend {
            config,
            node: node(),
            nexthops: NexthopPlan::off(),
        };
        assert_eq!(backend.underlay(), Some("eth0"));
        assert_eq!(backend.follow_underlay_mtu(1500), None, "unchanged");
        assert_eq!(
            backend.follow_underlay_mtu(9000),
            Some(MtuChange {
                underlay_before: 1500,
                underlay_after: 9000,
                pod_before: 1450,
                pod_after: 8950
            })
        );
        let (desired, _) = desired_state(&backend.config, &backend.node, []);
        assert_eq!(desired.devices[0].link.mtu(), 8950, "the device follows");
        // An MTU in the network config wins over the underlay's.
        backend.config.mtu = Some(1400);
        let change = backend.follow_underlay_mtu(1500).unwrap();
        assert_eq!((change.pod_before, change.pod_after), (1350, 1350));
    }

    #[test]
    fn config_defaults_and_case_insensitive_keys() {
        let cfg = VxlanConfig::parse(&serde_json::json!({"Type": "vxlan"})).unwrap();
        assert_eq!(
            cfg,
            VxlanConfig {
                vni: 1,
                port: 0,
                gbp: false,
                learning: false,
                direct_routing: false,
                mtu: None
            }
        );
        let cfg = VxlanConfig::parse(&serde_json::json!({"Type": "vxlan", "vni": 4096, "Port": 4789, "directRouting": true, "MTU": 9000, "GBP": true})).unwrap();
        assert_eq!(
            (cfg.vni, cfg.port, cfg.direct_routing, cfg.mtu, cfg.gbp),
            (4096, 4789, true, Some(9000), true)
        );
        assert_eq!(cfg.device_name(Family::V4), "flannel.4096");
        assert_eq!(cfg.device_name(Family::V6), "flannel-v6.4096");
        let err = VxlanConfig::parse(&serde_json::json!({"VNI": "one"})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid vxlan Backend field VNI: expected a number, got \"one\""
        );
    }

    #[test]
    fn vnis_whose_device_name_cannot_exist_are_refused() {
        let config = |text: &str| NetworkConfig::parse(text).unwrap();
        let v4 = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":9999999}}"#);
        assert_eq!(VxlanConfig::for_network(&v4).unwrap().vni, 9_999_999);
        let v4 = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":10000000}}"#);
        assert_eq!(
            VxlanConfig::for_network(&v4).unwrap_err().to_string(),
            "invalid vxlan Backend field VNI: expected at most 9999999, so that the device name \
             flannel.<VNI> fits the kernel's 15-character limit, got 10000000"
        );
        let dual = config(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan","VNI":10000}}"#,
        );
        assert_eq!(
            VxlanConfig::for_network(&dual).unwrap_err().to_string(),
            "invalid vxlan Backend field VNI: expected at most 9999 with IPv6, so that the device \
             name flannel-v6.<VNI> fits the kernel's 15-character limit, got 10000"
        );
    }

    #[test]
    fn backend_data_is_flannels_shape() {
        let cfg = VxlanConfig::parse(&serde_json::json!({})).unwrap();
        assert_eq!(
            cfg.backend_data(&[0x0a, 0x58, 0x0a, 0xf4, 1, 0])
                .to_string(),
            r#"{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}"#
        );
        let attrs = node().lease_attrs(&cfg, Some("198.18.0.11".parse().unwrap()), None);
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}"#
        );
    }

    #[test]
    fn per_peer_entries_match_flannel() {
        let cfg = VxlanConfig::parse(&serde_json::json!({})).unwrap();
        let peers = [peer(
            "10.244.2.0-24",
            "198.18.0.12",
            serde_json::json!({"VNI":1,"VtepMAC":"0a:58:0a:f4:02:00"}),
        )];
        let (desired, skipped) = desired_state(&cfg, &node(), &peers);
        assert!(skipped.is_empty());
        assert_eq!(desired.devices[0].link.mtu(), 1450);
        assert_eq!(desired.devices[0].addresses[0].to_string(), "10.244.1.0/32");
        let route = desired.routes.values().next().unwrap();
        assert_eq!(
            (
                route.destination.to_string(),
                route.gateway.unwrap().to_string(),
                route.device.as_str(),
                route.onlink
            ),
            (
                "10.244.2.0/24".into(),
                "10.244.2.0".into(),
                "flannel.1",
                true
            )
        );
        let fdb = desired.fdb.values().next().unwrap();
        assert_eq!(
            (mac::format(&fdb.mac), fdb.destination.to_string()),
            ("0a:58:0a:f4:02:00".into(), "198.18.0.12".into())
        );
        let neighbour = desired.neighbours.values().next().unwrap();
        assert_eq!(neighbour.ip.to_string(), "10.244.2.0");
    }

    #[test]
    fn direct_routing_uses_the_underlay_for_adjacent_peers_only() {
        let cfg = VxlanConfig::parse(&serde_json::json!({"DirectRouting": true})).unwrap();
        let data = serde_json::json!({"VNI":1,"VtepMAC":"0a:58:0a:f4:02:00"});
        let peers = [
            peer("10.244.2.0-24", "198.18.0.12", data.clone()),
            peer("10.244.3.0-24", "203.0.113.9", data),
        ];
        let (desired, _) = desired_state(&cfg, &node(), &peers);
        let near = &desired.routes[&"10.244.2.0/24".parse().unwrap()];
        assert_eq!(
            (
                near.gateway.unwrap().to_string(),
                near.device.as_str(),
                near.onlink
            ),
            ("198.18.0.12".into(), "eth0", false)
        );
        let far = &desired.routes[&"10.244.3.0/24".parse().unwrap()];
        assert_eq!(far.device, "flannel.1");
    }

    #[test]
    fn foreign_and_malformed_peers_are_skipped_with_a_reason() {
        let cfg = VxlanConfig::parse(&serde_json::json!({})).unwrap();
        let mut host_gw = peer("10.244.4.0-24", "198.18.0.14", Value::Null);
        host_gw.attrs.backend_type = "host-gw".into();
        let bad = peer(
            "10.244.5.0-24",
            "198.18.0.15",
            serde_json::json!({"VNI":1,"VtepMAC":"nope"}),
        );
        let (desired, skipped) = desired_state(&cfg, &node(), &[host_gw, bad]);
        assert!(desired.routes.is_empty());
        assert_eq!(skipped.len(), 2);
        assert_eq!(
            skipped[0].reason,
            "its backend type is \"host-gw\", not \"vxlan\""
        );
        assert_eq!(skipped[1].reason, "its V4 BackendData has no valid VtepMAC");
        assert_eq!(
            (skipped[0].kind, skipped[1].kind),
            (SkipKind::OtherBackend, SkipKind::NoVtepMac)
        );
    }

    #[test]
    fn dual_stack_mtu_and_devices() {
        let cfg = VxlanConfig::parse(&serde_json::json!({})).unwrap();
        let mut n = node();
        n.own = SubnetKey::parse("10.244.1.0-24&fc00:0:0:1::-64").unwrap();
        n.local_v6 = Some("fd00::11".parse().unwrap());
        let (desired, _) = desired_state(&cfg, &n, []);
        let mtus: Vec<(String, u32)> = desired
            .devices
            .iter()
            .map(|d| (d.link.name().to_string(), d.link.mtu()))
            .collect();
        assert_eq!(
            mtus,
            [
                ("flannel.1".to_string(), 1450),
                ("flannel-v6.1".to_string(), 1430)
            ]
        );
        assert_eq!(
            desired.devices[1].addresses[0].to_string(),
            "fc00:0:0:1::/128"
        );
        assert_eq!(n.pod_mtu(&cfg), 1430);
    }
}
