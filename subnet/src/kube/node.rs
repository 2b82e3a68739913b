//! Node objects → leases, and what a node says about itself (pure).

use super::annotations::AnnotationKeys;
use super::objects::{Node, NodeCondition};
use crate::family::{Family, Net};
use crate::lease::{BackendData, Lease, LeaseAttrs, SubnetKey};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The cluster networks from net-conf.json; `None` for a disabled family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterNetworks {
    pub ipv4: Option<Net>,
    pub ipv6: Option<Net>,
}

/// Why a node is not (or not yet) a usable lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("node {0:?} is not managed by flannel or weft (no {1}=true annotation)")]
    NotManaged(String, String),
    #[error("node \"{0}\" pod cidr not assigned")]
    PodCidrNotAssigned(String),
    #[error("node {node:?}: pod cidrs should be IPv4/IPv6 only or dualstack (got {cidrs:?})")]
    TooManyPodCidrs { node: String, cidrs: Vec<String> },
    #[error("node {node:?}: podCIDR {value:?} is not a CIDR")]
    BadPodCidr { node: String, value: String },
    #[error("node {node:?}: missing {family} address on n.Spec.PodCIDRs")]
    MissingPodCidr { node: String, family: &'static str },
    #[error(
        "subnet \"{network}\" specified in the flannel net config doesn't contain \"{cidr}\" {family}PodCIDR of the \"{node}\" node"
    )]
    OutsideNetwork {
        network: Net,
        cidr: Net,
        family: &'static str,
        node: String,
    },
    #[error("node {node:?}: annotation {key} is missing")]
    MissingAnnotation { node: String, key: String },
    #[error("node {node:?}: annotation {key}={value:?} is not {expected}")]
    BadAnnotation {
        node: String,
        key: String,
        value: String,
        expected: &'static str,
    },
}

impl NodeError {
    /// Errors that only mean "not ours" rather than "broken".
    pub fn is_unmanaged(&self) -> bool {
        matches!(self, NodeError::NotManaged(..))
    }
}

pub fn name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or("")
}

pub fn annotations(node: &Node) -> BTreeMap<String, String> {
    node.metadata.annotations.clone().unwrap_or_default()
}

/// The node's subnets from `spec.podCIDRs` (else `spec.podCIDR`), each checked to lie in
/// its cluster network: flannel's `AcquireLease` rules and messages.
pub fn pod_subnets(node: &Node, networks: &ClusterNetworks) -> Result<SubnetKey, NodeError> {
    let name = name(node).to_string();
    let spec = node.spec.as_ref();
    let mut cidrs: Vec<String> = spec
        .and_then(|s| s.pod_cidrs.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| !c.is_empty())
        .collect();
    if cidrs.is_empty() {
        cidrs.extend(
            spec.and_then(|s| s.pod_cidr.clone())
                .filter(|c| !c.is_empty()),
        );
    }
    if cidrs.is_empty() {
        return Err(NodeError::PodCidrNotAssigned(name));
    }
    if cidrs.len() > 2 {
        return Err(NodeError::TooManyPodCidrs { node: name, cidrs });
    }
    let mut key = SubnetKey {
        ipv4: None,
        ipv6: None,
    };
    for text in &cidrs {
        let net: Net = text.parse().map_err(|_| NodeError::BadPodCidr {
            node: name.clone(),
            value: text.clone(),
        })?;
        let slot = match net.family {
            Family::V4 => &mut key.ipv4,
            Family::V6 => &mut key.ipv6,
        };
        slot.get_or_insert(net);
    }
    for (family, wanted, got, label) in [
        (Family::V4, networks.ipv4, &mut key.ipv4, ""),
        (Family::V6, networks.ipv6, &mut key.ipv6, "IPv6 "),
    ] {
        let Some(network) = wanted else {
            // The family is disabled: its podCIDR is not ours to route.
            *got = None;
            continue;
        };
        let Some(cidr) = *got else {
            return Err(NodeError::MissingPodCidr {
                node: name,
                family: if family == Family::V4 { "IPv4" } else { "IPv6" },
            });
        };
        if !(network.contains(cidr.addr) && cidr.prefix >= network.prefix) {
            return Err(NodeError::OutsideNetwork {
                network,
                cidr,
                family: label,
                node: name,
            });
        }
    }
    Ok(key)
}

/// A peer's lease from its Node object (flannel's `nodeToLease`), for the enabled
/// families. Unlike flannel, a podCIDR outside the cluster network is refused rather than
/// routed, and a `backend-data` that is not JSON makes the node skipped rather than
/// programmed with garbage.
pub fn node_to_lease(
    node: &Node,
    keys: &AnnotationKeys,
    networks: &ClusterNetworks,
) -> Result<Lease, NodeError> {
    let name = name(node).to_string();
    let annotations = node.metadata.annotations.as_ref();
    let get = |key: &str| annotations.and_then(|a| a.get(key));
    if get(&keys.subnet_manager).map(String::as_str) != Some("true") {
        return Err(NodeError::NotManaged(name, keys.subnet_manager.clone()));
    }
    let key = pod_subnets(node, networks)?;
    let required = |key: &str| {
        get(key).ok_or_else(|| NodeError::MissingAnnotation {
            node: name.clone(),
            key: key.to_string(),
        })
    };
    let bad = |key: &str, value: &str, expected| NodeError::BadAnnotation {
        node: name.clone(),
        key: key.to_string(),
        value: value.to_string(),
        expected,
    };
    let json = |key: &str| -> Result<Value, NodeError> {
        let text = required(key)?;
        serde_json::from_str(text).map_err(|_| bad(key, text, "JSON"))
    };
    let mut attrs = LeaseAttrs {
        backend_type: get(&keys.backend_type).cloned().unwrap_or_default(),
        ..LeaseAttrs::default()
    };
    if key.ipv4.is_some() {
        let text = required(&keys.public_ip)?;
        attrs.public_ip = text
            .parse::<Ipv4Addr>()
            .map_err(|_| bad(&keys.public_ip, text, "an IPv4 address"))?;
        attrs.backend_data = Some(json(&keys.backend_data)?)
            .filter(|v| !v.is_null())
            .map(BackendData::from);
    }
    if key.ipv6.is_some() {
        let text = required(&keys.public_ipv6)?;
        attrs.public_ipv6 = Some(
            text.parse::<Ipv6Addr>()
                .map_err(|_| bad(&keys.public_ipv6, text, "an IPv6 address"))?,
        );
        attrs.backend_v6_data = Some(json(&keys.backend_v6_data)?)
            .filter(|v| !v.is_null())
            .map(BackendData::from);
    }
    Ok(Lease {
        key,
        attrs,
        etcd_lease: 0,
        expiration: None,
        revision: 0,
    })
}

/// The node's `InternalIP` addresses, in the order the kubelet reported them.
pub fn internal_ips(node: &Node) -> Vec<IpAddr> {
    node.status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// The `node-public-ip`/`node-public-ipv6` annotations; malformed values are errors.
pub fn node_public_ips(
    node: &Node,
    keys: &AnnotationKeys,
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), NodeError> {
    Ok((
        node_public_ip(node, &keys.node_public_ip, "an IPv4 address")?,
        node_public_ip(node, &keys.node_public_ipv6, "an IPv6 address")?,
    ))
}

fn node_public_ip<T: std::str::FromStr>(
    node: &Node,
    key: &str,
    expected: &'static str,
) -> Result<Option<T>, NodeError> {
    let Some(text) = node.metadata.annotations.as_ref().and_then(|a| a.get(key)) else {
        return Ok(None);
    };
    text.trim()
        .parse()
        .map(Some)
        .map_err(|_| NodeError::BadAnnotation {
            node: name(node).to_string(),
            key: key.to_string(),
            value: text.clone(),
            expected,
        })
}

/// The backend data this node published before (for the VTEP MAC across restarts).
/// Unparsable values count as absent.
pub fn published_backend_data(
    node: &Node,
    keys: &AnnotationKeys,
) -> (Option<BackendData>, Option<BackendData>) {
    let annotations = annotations(node);
    let data = |key: &String| {
        annotations
            .get(key)
            .and_then(|text| BackendData::parse(text).ok())
            .filter(|v| !v.is_null())
    };
    (data(&keys.backend_data), data(&keys.backend_v6_data))
}

pub const NETWORK_UNAVAILABLE: &str = "NetworkUnavailable";
pub const FLANNEL_IS_UP: &str = "FlannelIsUp";
pub const FLANNEL_IS_UP_MESSAGE: &str = "Flannel is running on this node";

/// The condition flannel sets once the lease is complete.
pub fn network_available_condition(now: Time) -> NodeCondition {
    NodeCondition {
        type_: NETWORK_UNAVAILABLE.into(),
        status: "False".into(),
        reason: Some(FLANNEL_IS_UP.into()),
        message: Some(FLANNEL_IS_UP_MESSAGE.into()),
        last_transition_time: Some(now.clone()),
        last_heartbeat_time: Some(now),
    }
}

/// Whether the node's `NetworkUnavailable` condition is already what weft sets.
pub fn network_marked_available(node: &Node) -> bool {
    node.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| {
            c.type_ == NETWORK_UNAVAILABLE
                && c.status == "False"
                && c.reason.as_deref() == Some(FLANNEL_IS_UP)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::objects::{NodeAddress, NodeSpec, NodeStatus};
    use serde_json::json;

    fn keys() -> AnnotationKeys {
        AnnotationKeys::new("flannel.alpha.coreos.com").unwrap()
    }

    const V4: &str = r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}"#;
    const V6: &str = r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e4"}"#;

    fn node(pod_cidrs: &[&str], annotations: &[(&str, &str)]) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some("n1".into());
        node.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (format!("flannel.alpha.coreos.com/{k}"), v.to_string()))
                .collect(),
        );
        node.spec = Some(NodeSpec {
            pod_cidr: pod_cidrs.first().map(|s| s.to_string()),
            pod_cidrs: Some(pod_cidrs.iter().map(|s| s.to_string()).collect()),
        });
        node
    }

    fn full(pod_cidrs: &[&str]) -> Node {
        node(
            pod_cidrs,
            &[
                ("kube-subnet-manager", "true"),
                ("backend-type", "vxlan"),
                ("backend-data", V4),
                ("public-ip", "198.18.0.12"),
                ("backend-v6-data", V6),
                ("public-ipv6", "fd00:198:18::12"),
            ],
        )
    }

    const V4_ONLY: ClusterNetworks = ClusterNetworks {
        ipv4: Some(Net {
            family: Family::V4,
            addr: 0x0af4_0000,
            prefix: 16,
        }),
        ipv6: None,
    };

    fn dual() -> ClusterNetworks {
        ClusterNetworks {
            ipv4: V4_ONLY.ipv4,
            ipv6: Some("fd10::/56".parse().unwrap()),
        }
    }

    fn v6_only() -> ClusterNetworks {
        ClusterNetworks {
            ipv4: None,
            ipv6: Some("fd10::/56".parse().unwrap()),
        }
    }

    #[test]
    fn ipv4_node() {
        let lease = node_to_lease(&full(&["10.244.2.0/24"]), &keys(), &V4_ONLY).unwrap();
        assert_eq!(lease.key.to_string(), "10.244.2.0-24");
        assert_eq!(lease.attrs.public_ip.to_string(), "198.18.0.12");
        assert_eq!(lease.attrs.backend_type, "vxlan");
        assert_eq!(
            lease.attrs.backend_data,
            Some(json!({"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}).into())
        );
        assert_eq!(lease.attrs.public_ipv6, None);
        assert_eq!(lease.attrs.backend_v6_data, None);
    }

    #[test]
    fn dual_stack_node() {
        let lease = node_to_lease(
            &full(&["10.244.2.0/24", "fd10:0:0:2::/64"]),
            &keys(),
            &dual(),
        )
        .unwrap();
        assert_eq!(lease.key.to_string(), "10.244.2.0-24&fd10:0:0:2::-64");
        assert_eq!(
            lease.attrs.public_ipv6,
            Some("fd00:198:18::12".parse().unwrap())
        );
        assert_eq!(
            lease.attrs.backend_v6_data,
            Some(json!({"VNI":1,"VtepMAC":"12:c6:65:89:b4:e4"}).into())
        );
        // podCIDRs in either order; the family decides.
        let reversed = node_to_lease(
            &full(&["fd10:0:0:2::/64", "10.244.2.0/24"]),
            &keys(),
            &dual(),
        )
        .unwrap();
        assert_eq!(reversed.key, lease.key);
    }

    #[test]
    fn ipv6_only_node() {
        let mut n = node(
            &["fd10:0:0:3::/64"],
            &[
                ("kube-subnet-manager", "true"),
                ("backend-type", "vxlan"),
                ("backend-v6-data", V6),
                ("public-ipv6", "fd00:198:18::13"),
            ],
        );
        let lease = node_to_lease(&n, &keys(), &v6_only()).unwrap();
        assert_eq!(lease.key.ipv4, None);
        assert_eq!(lease.key.ipv6.unwrap().to_string(), "fd10:0:0:3::/64");
        assert_eq!(lease.attrs.public_ip, Ipv4Addr::UNSPECIFIED);
        // The v4 podCIDR of a dual-stack node is ignored when IPv4 is disabled.
        n.spec.as_mut().unwrap().pod_cidrs =
            Some(vec!["10.244.3.0/24".into(), "fd10:0:0:3::/64".into()]);
        assert_eq!(
            node_to_lease(&n, &keys(), &v6_only()).unwrap().key,
            lease.key
        );
    }

    #[test]
    fn pod_cidr_is_used_when_pod_cidrs_is_empty() {
        let mut n = full(&["10.244.4.0/24"]);
        n.spec.as_mut().unwrap().pod_cidrs = None;
        let lease = node_to_lease(&n, &keys(), &V4_ONLY).unwrap();
        assert_eq!(lease.key.to_string(), "10.244.4.0-24");
    }

    #[test]
    fn nodes_that_are_not_usable_leases() {
        let message = |n: &Node, networks: &ClusterNetworks| {
            node_to_lease(n, &keys(), networks).unwrap_err().to_string()
        };
        let unmanaged = node(&["10.244.2.0/24"], &[("public-ip", "198.18.0.12")]);
        let error = node_to_lease(&unmanaged, &keys(), &V4_ONLY).unwrap_err();
        assert!(error.is_unmanaged());
        assert_eq!(
            message(&full(&[]), &V4_ONLY),
            "node \"n1\" pod cidr not assigned"
        );
        assert_eq!(
            message(
                &full(&["10.244.2.0/24", "fd10::/64", "10.244.3.0/24"]),
                &V4_ONLY
            ),
            "node \"n1\": pod cidrs should be IPv4/IPv6 only or dualstack (got [\"10.244.2.0/24\", \"fd10::/64\", \"10.244.3.0/24\"])"
        );
        assert_eq!(
            message(&full(&["10.244.2.0/33"]), &V4_ONLY),
            "node \"n1\": podCIDR \"10.244.2.0/33\" is not a CIDR"
        );
        assert_eq!(
            message(&full(&["10.244.2.0/24"]), &dual()),
            "node \"n1\": missing IPv6 address on n.Spec.PodCIDRs"
        );
        assert_eq!(
            message(&full(&["10.99.2.0/24"]), &V4_ONLY),
            "subnet \"10.244.0.0/16\" specified in the flannel net config doesn't contain \"10.99.2.0/24\" PodCIDR of the \"n1\" node"
        );
        assert_eq!(
            message(&full(&["10.244.2.0/24", "fd99::/64"]), &dual()),
            "subnet \"fd10::/56\" specified in the flannel net config doesn't contain \"fd99::/64\" IPv6 PodCIDR of the \"n1\" node"
        );
        let no_ip = node(
            &["10.244.2.0/24"],
            &[("kube-subnet-manager", "true"), ("backend-data", V4)],
        );
        assert_eq!(
            message(&no_ip, &V4_ONLY),
            "node \"n1\": annotation flannel.alpha.coreos.com/public-ip is missing"
        );
        let mut garbage = full(&["10.244.2.0/24"]);
        garbage.metadata.annotations.as_mut().unwrap().insert(
            "flannel.alpha.coreos.com/backend-data".into(),
            "{VNI:1".into(),
        );
        assert_eq!(
            message(&garbage, &V4_ONLY),
            "node \"n1\": annotation flannel.alpha.coreos.com/backend-data=\"{VNI:1\" is not JSON"
        );
        let mut bad_ip = full(&["10.244.2.0/24"]);
        bad_ip.metadata.annotations.as_mut().unwrap().insert(
            "flannel.alpha.coreos.com/public-ip".into(),
            "fd00::1".into(),
        );
        assert_eq!(
            message(&bad_ip, &V4_ONLY),
            "node \"n1\": annotation flannel.alpha.coreos.com/public-ip=\"fd00::1\" is not an IPv4 address"
        );
    }

    #[test]
    fn a_pod_cidr_wider_than_the_network_is_outside_it() {
        let networks = ClusterNetworks {
            ipv4: Some("10.244.0.0/24".parse().unwrap()),
            ipv6: None,
        };
        assert!(matches!(
            pod_subnets(&full(&["10.244.0.0/16"]), &networks),
            Err(NodeError::OutsideNetwork { .. })
        ));
    }

    #[test]
    fn addresses_and_published_data() {
        let mut n = full(&["10.244.2.0/24"]);
        n.status = Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "Hostname".into(),
                    address: "n1".into(),
                },
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: "198.18.0.12".into(),
                },
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: "fd00:198:18::12".into(),
                },
            ]),
            ..NodeStatus::default()
        });
        assert_eq!(
            internal_ips(&n),
            vec![
                "198.18.0.12".parse::<IpAddr>().unwrap(),
                "fd00:198:18::12".parse().unwrap()
            ]
        );
        let (v4, v6) = published_backend_data(&n, &keys());
        assert_eq!(
            v4,
            Some(json!({"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}).into())
        );
        assert_eq!(
            v6,
            Some(json!({"VNI":1,"VtepMAC":"12:c6:65:89:b4:e4"}).into())
        );
        n.metadata.annotations.as_mut().unwrap().insert(
            "flannel.alpha.coreos.com/backend-data".into(),
            "garbage".into(),
        );
        assert_eq!(published_backend_data(&n, &keys()).0, None);
    }

    #[test]
    fn node_public_ip_annotations() {
        let n = node(
            &[],
            &[
                ("node-public-ip", "198.18.0.50"),
                ("node-public-ipv6", "fd00::50"),
            ],
        );
        assert_eq!(
            node_public_ips(&n, &keys()).unwrap(),
            (
                Some("198.18.0.50".parse().unwrap()),
                Some("fd00::50".parse().unwrap())
            )
        );
        let bad = node(&[], &[("node-public-ip", "fd00::50")]);
        assert_eq!(
            node_public_ips(&bad, &keys()).unwrap_err().to_string(),
            "node \"n1\": annotation flannel.alpha.coreos.com/node-public-ip=\"fd00::50\" is not an IPv4 address"
        );
    }

    #[test]
    fn the_condition_is_flannels() {
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let value = serde_json::to_value(network_available_condition(now)).unwrap();
        assert_eq!(
            value,
            json!({
                "lastHeartbeatTime": "1970-01-01T00:00:00Z",
                "lastTransitionTime": "1970-01-01T00:00:00Z",
                "message": "Flannel is running on this node",
                "reason": "FlannelIsUp",
                "status": "False",
                "type": "NetworkUnavailable",
            })
        );
        let mut n = full(&[]);
        assert!(!network_marked_available(&n));
        n.status = Some(NodeStatus {
            conditions: Some(vec![network_available_condition(Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ))]),
            ..NodeStatus::default()
        });
        assert!(network_marked_available(&n));
    }
}
