//! Node objects from the Kubernetes API (annotations, podCIDRs) and the annotation
//! prefix from the command line.

use super::net;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::json;
use std::collections::BTreeMap;
use weft_subnet::family::Net;
use weft_subnet::kube::annotations::AnnotationKeys;
use weft_subnet::kube::node::{
    ClusterNetworks, node_public_ips, node_to_lease, pod_subnets, published_backend_data,
};
use weft_subnet::kube::objects::{Node, NodeSpec};
use weft_subnet::{LeaseAttrs, SubnetKey};
use weft_testkit::{check, json, outcome, text};

const PREFIX: &str = "flannel.alpha.coreos.com";

/// The annotations a dual-stack vxlan node carries, by suffix, with valid values.
const VALID: &[(&str, &str)] = &[
    ("kube-subnet-manager", "true"),
    ("backend-type", "vxlan"),
    ("backend-data", r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}"#),
    (
        "backend-v6-data",
        r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e4"}"#,
    ),
    ("public-ip", "198.18.0.12"),
    ("public-ipv6", "fd00:198:18::12"),
    ("public-ip-overwrite", "198.18.0.99"),
    ("public-ipv6-overwrite", "fd00:198:18::99"),
    ("node-public-ip", "198.18.0.50"),
    ("node-public-ipv6", "fd00::50"),
];

const DATA_FIELDS: &[&str] = &["VNI", "VtepMAC"];

/// An annotation's value: mostly the valid one (so that whole nodes are often valid),
/// else absent, any text, address-like text, any JSON, or damaged JSON.
fn annotation(valid: &'static str) -> BoxedStrategy<Option<String>> {
    let json_value = json::value(DATA_FIELDS);
    prop_oneof![
        8 => Just(Some(valid.to_string())),
        1 => Just(None),
        1 => text::string().prop_map(Some),
        1 => text::address().prop_map(Some),
        1 => json_value.clone().prop_map(|v| Some(v.to_string())),
        1 => json::damaged(json_value).prop_map(|b| Some(String::from_utf8_lossy(&b).into_owned())),
    ]
    .boxed()
}

fn pod_cidr() -> BoxedStrategy<String> {
    prop_oneof![
        (0..=255u8).prop_map(|n| format!("10.244.{n}.0/24")),
        (0..=255u8).prop_map(|n| format!("fd10:0:0:{n:x}::/64")),
        text::address(),
        text::string(),
    ]
    .boxed()
}

fn node() -> impl Strategy<Value = Node> {
    let annotations: Vec<_> = VALID
        .iter()
        .map(|(suffix, valid)| annotation(valid).prop_map(move |v| (*suffix, v)))
        .collect();
    let extra = prop::collection::vec((text::string(), text::string()), 0..3);
    let cidrs = prop_oneof![
        Just(Some(vec![
            "10.244.2.0/24".to_string(),
            "fd10:0:0:2::/64".to_string()
        ])),
        prop::option::of(prop::collection::vec(pod_cidr(), 0..4)),
    ];
    let spec = prop::option::of((prop::option::of(pod_cidr()), cidrs));
    (annotations, extra, spec, prop::option::of(text::string())).prop_map(
        |(annotations, extra, spec, name)| {
            let mut node = Node::default();
            node.metadata.name = name;
            let mut map: BTreeMap<String, String> = extra.into_iter().collect();
            for (suffix, value) in annotations {
                if let Some(value) = value {
                    map.insert(format!("{PREFIX}/{suffix}"), value);
                }
            }
            node.metadata.annotations = Some(map);
            node.spec = spec.map(|(pod_cidr, pod_cidrs)| NodeSpec {
                pod_cidr,
                pod_cidrs,
            });
            node
        },
    )
}

/// The cluster networks: the usual ones, or any.
fn networks() -> impl Strategy<Value = ClusterNetworks> {
    let v4: Net = "10.244.0.0/16".parse().unwrap_or_else(|e| panic!("{e}"));
    let v6: Net = "fd10::/56".parse().unwrap_or_else(|e| panic!("{e}"));
    prop_oneof![
        4 => select(vec![
            ClusterNetworks { ipv4: Some(v4), ipv6: None },
            ClusterNetworks { ipv4: Some(v4), ipv6: Some(v6) },
            ClusterNetworks { ipv4: None, ipv6: Some(v6) },
        ]),
        1 => (prop::option::of(net(false)), prop::option::of(net(true)))
            .prop_map(|(ipv4, ipv6)| ClusterNetworks { ipv4, ipv6 }),
    ]
}

fn keys() -> AnnotationKeys {
    AnnotationKeys::new(PREFIX).unwrap_or_else(|e| panic!("{e}"))
}

/// What a lease from a Node promises: the families of the enabled networks, each
/// subnet inside its network.
fn check_key(key: &SubnetKey, networks: &ClusterNetworks) -> Result<(), TestCaseError> {
    for (subnet, network) in [(key.ipv4, networks.ipv4), (key.ipv6, networks.ipv6)] {
        prop_assert_eq!(subnet.is_some(), network.is_some());
        if let (Some(subnet), Some(network)) = (subnet, network) {
            prop_assert!(network.contains(subnet.addr) && subnet.prefix >= network.prefix);
        }
    }
    Ok(())
}

#[test]
fn prop_node_to_lease_accepts_or_refuses() {
    let keys = keys();
    let tally = check((node(), networks()), |(node, networks)| {
        let subnets = pod_subnets(&node, &networks);
        if let Ok(key) = &subnets {
            check_key(key, &networks)?;
        }
        match node_to_lease(&node, &keys, &networks) {
            Ok(lease) => {
                check_key(&lease.key, &networks)?;
                prop_assert_eq!(Ok(lease.key), subnets);
                Ok("lease")
            }
            Err(e) if e.is_unmanaged() => Ok("unmanaged"),
            Err(_) => Ok("refused"),
        }
    });
    tally.assert_seen(&["lease", "unmanaged", "refused"]);
}

#[test]
fn prop_node_annotations_read_or_refused() {
    let keys = keys();
    let tally = check(node(), |node| {
        let (v4, v6) = published_backend_data(&node, &keys);
        prop_assert!(v4.as_ref().is_none_or(|v| !v.is_null()));
        prop_assert!(v6.as_ref().is_none_or(|v| !v.is_null()));
        // The overwrite annotations are read when this node publishes its own lease.
        let attrs = LeaseAttrs {
            backend_type: "vxlan".into(),
            backend_data: Some(json!({"VNI": 1}).into()),
            backend_v6_data: Some(json!({"VNI": 1}).into()),
            public_ipv6: Some("fd00::1".parse().unwrap_or_else(|e| panic!("{e}"))),
            ..LeaseAttrs::default()
        };
        let current = node.metadata.annotations.clone().unwrap_or_default();
        let _ = keys.published(&attrs, &current);
        Ok(outcome(&node_public_ips(&node, &keys)))
    });
    tally.assert_seen(&["ok", "err"]);
}

#[test]
fn prop_annotation_prefix_accepted_or_refused() {
    let prefixes = prop_oneof![
        "[a-z0-9._/-]{0,24}",
        text::string(),
        text::near(
            select(vec![
                PREFIX.to_string(),
                format!("{PREFIX}/"),
                "org.com/node-".to_string(),
                "weft.example.io/x_y".to_string(),
            ])
            .boxed()
        ),
    ];
    let tally = check(prefixes, |prefix| {
        let result = AnnotationKeys::new(&prefix);
        if let Ok(keys) = &result {
            // Every name is the normalised prefix plus a suffix: `fqdn/` or `fqdn/name-`.
            let (domain, _) = keys.backend_type.split_once('/').unwrap_or_default();
            prop_assert!(!domain.is_empty() && keys.backend_type.matches('/').count() == 1);
            let normalised = format!("{domain}/");
            prop_assert!(keys.subnet_manager.starts_with(&normalised));
        }
        Ok(outcome(&result))
    });
    tally.assert_seen(&["ok", "err"]);
}
