//! The parts of the Node and Pod objects weft reads, as weft's own types.
//!
//! Why not k8s-openapi's `Node` and `Pod`: reading them instantiates serde, `Debug`
//! and drop code for every field of their whole schema (a Pod's volumes, containers and
//! statuses; a Node's images, taints and daemon endpoints), several hundred kB of machine
//! code that weftd maps, and keeps resident, to read a handful of fields. On this
//! kernel a binary's resident size follows its code size (docs/benchmarks.md,
//! "Footprint"). These types read what weft uses and skip the rest, as k8s-openapi's
//! types skip fields they do not know. The metadata stays k8s-openapi's `ObjectMeta`:
//! kube's `Resource` trait is built on it.
//!
//! Field names follow k8s-openapi's, so code and tests read the same either way.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Implements kube's `Resource` for a type of the core API group (`/api/v1`), as
/// k8s-openapi's types get it through their own traits.
macro_rules! core_v1_resource {
    ($type:ty, $kind:literal, $plural:literal, $scope:ty) => {
        impl kube::Resource for $type {
            type DynamicType = ();
            type Scope = $scope;

            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                "".into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                "v1".into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// A Node: its metadata (name, annotations), `spec.podCIDR(s)`, and from its status
/// the addresses and conditions.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Node {
    #[serde(default, deserialize_with = "metadata_without_managed_fields")]
    pub metadata: ObjectMeta,
    pub spec: Option<NodeSpec>,
    pub status: Option<NodeStatus>,
}

/// A Node's metadata without its `managedFields`, which weft never reads: against a real
/// API server they are most of a Node as parsed (every field each writer set, as a JSON
/// tree; tens of kB), and a listing page holds 500 Nodes at once (docs/benchmarks.md,
/// "Kube mode against a real API server").
fn metadata_without_managed_fields<'de, D>(deserializer: D) -> Result<ObjectMeta, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let mut metadata = ObjectMeta::deserialize(deserializer)?;
    metadata.managed_fields = None;
    Ok(metadata)
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct NodeSpec {
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct NodeStatus {
    pub addresses: Option<Vec<NodeAddress>>,
    pub conditions: Option<Vec<NodeCondition>>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct NodeAddress {
    pub address: String,
    #[serde(rename = "type")]
    pub type_: String,
}

/// A Node condition; weft reads `NetworkUnavailable` and writes it (as a patch).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

core_v1_resource!(Node, "Node", "nodes", ClusterResourceScope);

/// A Pod, for the one thing weft asks of its own: the node it runs on
/// (`spec.nodeName`), when `NODE_NAME` is not set.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PodPlacement {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<PodPlacementSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PodPlacementSpec {
    #[serde(rename = "nodeName")]
    pub node_name: Option<String>,
}

core_v1_resource!(PodPlacement, "Pod", "pods", NamespaceResourceScope);

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;
    use serde_json::json;

    /// A Node as an API server sends it, with the fields weft skips.
    fn full_node() -> serde_json::Value {
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": "n1",
                "resourceVersion": "42",
                "annotations": {"flannel.alpha.coreos.com/public-ip": "198.18.0.1"},
                "labels": {"kubernetes.io/hostname": "n1"},
                "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
            },
            "spec": {
                "podCIDR": "10.244.1.0/24",
                "podCIDRs": ["10.244.1.0/24", "fd10:0:0:1::/64"],
                "taints": [{"key": "k", "effect": "NoSchedule"}],
                "providerID": "kind://n1",
            },
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": "198.18.0.1"},
                    {"type": "Hostname", "address": "n1"},
                ],
                "conditions": [{
                    "type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp",
                    "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                }, {"type": "Ready", "status": "True"}],
                "images": [{"names": ["registry/pause:3.10"], "sizeBytes": 320_000}],
                "nodeInfo": {"kubeletVersion": "v1.37.0", "architecture": "amd64"},
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            },
        })
    }

    #[test]
    fn a_node_reads_what_weft_uses_and_skips_the_rest() {
        let node: Node = serde_json::from_value(full_node()).unwrap();
        assert_eq!(node.metadata.name.as_deref(), Some("n1"));
        assert_eq!(node.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(
            node.metadata.labels.unwrap()["kubernetes.io/hostname"],
            "n1"
        );
        assert_eq!(node.metadata.managed_fields, None, "not kept");
        let spec = node.spec.unwrap();
        assert_eq!(spec.pod_cidr.as_deref(), Some("10.244.1.0/24"));
        assert_eq!(
            spec.pod_cidrs,
            Some(vec!["10.244.1.0/24".into(), "fd10:0:0:1::/64".into()])
        );
        let status = node.status.unwrap();
        let addresses = status.addresses.unwrap();
        assert_eq!(addresses[0].type_, "InternalIP");
        assert_eq!(addresses[0].address, "198.18.0.1");
        let conditions = status.conditions.unwrap();
        assert_eq!(conditions[0].type_, "NetworkUnavailable");
        assert_eq!(conditions[0].reason.as_deref(), Some("FlannelIsUp"));
        assert!(conditions[0].last_heartbeat_time.is_some());
        assert_eq!(conditions[1].reason, None);
    }

    /// k8s-openapi reads the same objects the same way: the fields weft uses agree.
    #[test]
    fn the_fields_agree_with_k8s_openapi() {
        let full: k8s_openapi::api::core::v1::Node = serde_json::from_value(full_node()).unwrap();
        let lean: Node = serde_json::from_value(full_node()).unwrap();
        // All of it but the managedFields, which weft drops as it reads.
        let mut metadata = full.metadata.clone();
        assert!(metadata.managed_fields.take().is_some());
        assert_eq!(lean.metadata, metadata);
        let (spec, lean_spec) = (full.spec.unwrap(), lean.spec.unwrap());
        assert_eq!(lean_spec.pod_cidr, spec.pod_cidr);
        assert_eq!(lean_spec.pod_cidrs, spec.pod_cidrs);
        let (status, lean_status) = (full.status.unwrap(), lean.status.unwrap());
        let addresses: Vec<_> = status
            .addresses
            .unwrap()
            .into_iter()
            .map(|a| (a.type_, a.address))
            .collect();
        let lean_addresses: Vec<_> = lean_status
            .addresses
            .unwrap()
            .into_iter()
            .map(|a| (a.type_, a.address))
            .collect();
        assert_eq!(lean_addresses, addresses);
        for (ours, theirs) in lean_status
            .conditions
            .unwrap()
            .into_iter()
            .zip(status.conditions.unwrap())
        {
            assert_eq!(
                serde_json::to_value(ours).unwrap(),
                serde_json::to_value(theirs).unwrap()
            );
        }
    }

    #[test]
    fn a_node_without_spec_or_status_reads() {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n2"}})).unwrap();
        assert_eq!(node.spec, None);
        assert_eq!(node.status, None);
        // A wrong type in a field weft reads is an error, not a silent default.
        let wrong = serde_json::from_value::<Node>(json!({"spec": {"podCIDRs": "10.0.0.0/8"}}));
        assert!(wrong.is_err());
    }

    #[test]
    fn the_api_paths_are_the_core_groups() {
        assert_eq!(Node::url_path(&(), None), "/api/v1/nodes");
        assert_eq!(
            PodPlacement::url_path(&(), Some("kube-flannel")),
            "/api/v1/namespaces/kube-flannel/pods"
        );
    }

    #[test]
    fn a_pod_gives_its_node_name() {
        let pod: PodPlacement = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "weft-abc", "namespace": "kube-flannel"},
            "spec": {
                "nodeName": "n1",
                "containers": [{"name": "weftd", "image": "weft:dev"}],
                "volumes": [{"name": "run", "hostPath": {"path": "/run/flannel"}}],
            },
            "status": {"phase": "Running"},
        }))
        .unwrap();
        assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("n1"));
    }
}
