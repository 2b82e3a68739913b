//! The underlay changing under a running weftd (vxlan, two namespace nodes, a real etcd,
//! pods through weft's CNI plugin): an MTU change of the node's external interface is
//! followed live, without a restart: the VXLAN device's MTU, subnet.env's FLANNEL_MTU
//! (so pods created from then on get it), a log line saying existing pods keep theirs.

mod support;

use std::time::Duration;
use support::kernel_state::json;
use support::netns::Netns;
use support::pods::{add_pod, ping};
use support::vxlan::cluster;
use support::wait_for;

const FOLLOW: Duration = Duration::from_secs(10);

fn mtu(ns: &Netns, device: &str) -> u64 {
    json(ns, &["ip", "-j", "link", "show", "dev", device])[0]["mtu"]
        .as_u64()
        .unwrap_or_else(|| panic!("no MTU for {device} in {}", ns.name))
}

fn env_mtu(env: &str) -> Option<&str> {
    env.lines().find_map(|l| l.strip_prefix("FLANNEL_MTU="))
}

#[test]
fn an_underlay_mtu_change_is_followed_by_the_vxlan_device_and_subnet_env() {
    let v = cluster(2);
    let node = &v.c.underlay.hosts[0].ns;
    let other = &v.c.underlay.hosts[1].ns;
    assert_eq!(mtu(node, "flannel.1"), 1450);
    let env = v.c.nodes[0].wait_subnet_env(FOLLOW);
    assert_eq!(env_mtu(&env), Some("1450"));

    node.ip(&["link", "set", "eth0", "mtu", "1400"]);
    wait_for("flannel.1 to follow the underlay's MTU", FOLLOW, || {
        (mtu(node, "flannel.1") == 1350).then_some(())
    });
    let subnet_file = v.c.nodes[0].subnet_file.clone();
    wait_for("subnet.env to say FLANNEL_MTU=1350", FOLLOW, || {
        let env = std::fs::read_to_string(&subnet_file).ok()?;
        (env_mtu(&env) == Some("1350")).then_some(())
    });
    v.c.nodes[0].wait_log(
        "the underlay's MTU changed from 1500 to 1400: the pod MTU becomes 1350 (was 1450) \
         on weft's devices and in subnet.env; pods created before keep MTU 1450 until they \
         are recreated",
        FOLLOW,
    );
    // The other node's underlay did not change: neither did its device.
    assert_eq!(mtu(other, "flannel.1"), 1450);
    // A pod created now gets the new MTU; old and new pods talk across the nodes.
    let fresh = add_pod(node, &support::unique("wu-pod"), &v.c.node_dir(0));
    assert_eq!(mtu(&fresh.ns, "eth0"), 1350);
    assert!(
        ping(&fresh.ns, &v.pods[1].ip, 2),
        "new pod -> pod on node 1"
    );
    assert!(
        ping(&v.pods[1].ns, &v.pods[0].ip, 2),
        "pod on node 1 -> old pod"
    );
    assert_eq!(v.c.nodes[0].log_count("lease acquired"), 1, "no restart");
}
