//! The Node tracker as weftd builds it for a cluster in 10.0.0.0/8 (room for 15,000 /24s),
//! this node `node-00000`, flannel's annotation prefix: shared by the tracker's memory
//! test and its profile.

use weft_subnet::kube::{AnnotationKeys, ClusterNetworks, NodeTracker};

pub const PREFIX: &str = "flannel.alpha.coreos.com/";

pub fn tracker() -> NodeTracker {
    let config =
        weft_subnet::RawConfig::parse(r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#)
            .and_then(|raw| raw.for_kube())
            .unwrap();
    let networks = ClusterNetworks {
        ipv4: config.ipv4.map(|p| p.network),
        ipv6: None,
    };
    let keys = AnnotationKeys::new(PREFIX).unwrap();
    NodeTracker::new("node-00000", keys, networks)
}
