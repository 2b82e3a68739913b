//! The VXLAN device's TX checksum offload (`--vxlan-tx-checksum`), end to end: two
//! namespace nodes with a real etcd and pods through weft's CNI plugin; `ethtool -k` (the
//! system's own tool) is the witness. Set at startup, put back when an admin changes it
//! or the device is re-created, shown by `/debug/state` and `/metrics`. The `auto`
//! decision table itself is unit-tested in `backend/src/offload.rs`.

mod support;

use std::time::Duration;
use support::netns::Netns;
use support::pods::ping;
use support::vxlan::cluster_with_flags;
use support::wait_for;

const SOON: Duration = Duration::from_secs(10);

/// `tx-checksum-ip-generic` of `device` as `ethtool -k` shows it.
fn offload(ns: &Netns, device: &str) -> Option<bool> {
    let output = ns.exec(&["ethtool", "-k", device]);
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("tx-checksum-ip-generic: "))?;
    Some(line.starts_with("on"))
}

#[test]
fn the_offload_is_set_kept_against_changes_and_shown() {
    let v = cluster_with_flags(2, |host| match host {
        0 => vec!["--vxlan-tx-checksum=off".to_string()],
        _ => Vec::new(),
    });
    let node = &v.c.underlay.hosts[0].ns;
    let other = &v.c.underlay.hosts[1].ns;
    wait_for("flannel.1's offload off on node 0", SOON, || {
        (offload(node, "flannel.1") == Some(false)).then_some(())
    });
    v.c.nodes[0].wait_log(
        "VXLAN devices: tx-checksum-ip-generic off: --vxlan-tx-checksum=off",
        SOON,
    );
    // auto on this kernel (5.7 or later) with a veth underlay (no driver): left on.
    assert_eq!(offload(other, "flannel.1"), Some(true));
    v.c.nodes[1].wait_log(
        "VXLAN devices: tx-checksum-ip-generic on: auto: no known fault on this kernel and \
         driver (the kernel's default)",
        SOON,
    );

    // An admin turns it back on: the device's change notification starts a full pass.
    node.exec(&["ethtool", "-K", "flannel.1", "tx-checksum-ip-generic", "on"]);
    wait_for("the offload off again", SOON, || {
        (offload(node, "flannel.1") == Some(false)).then_some(())
    });
    // The device deleted: re-created, with the setting.
    node.ip(&["link", "del", "flannel.1"]);
    wait_for("flannel.1 re-created with the offload off", SOON, || {
        (offload(node, "flannel.1") == Some(false)).then_some(())
    });
    // Pods talk across: the checksums are computed in software now.
    wait_for("pods to talk across again", SOON, || {
        ping(&v.pods[0].ns, &v.pods[1].ip, 1).then_some(())
    });
    assert!(ping(&v.pods[1].ns, &v.pods[0].ip, 2));

    // /debug/state and /metrics say so.
    let (_, state) = node
        .http_get("http://127.0.0.1:8081/debug/state")
        .expect("/debug/state");
    let state: serde_json::Value = serde_json::from_str(&state).expect("JSON");
    assert_eq!(
        state["node"]["vxlan_tx_checksum"],
        "off on flannel.1 (tx-checksum-ip-generic off: --vxlan-tx-checksum=off)"
    );
    let (_, metrics) = node
        .http_get("http://127.0.0.1:8081/metrics")
        .expect("/metrics");
    assert!(
        metrics.contains("weft_vxlan_tx_checksum_offload{device=\"flannel.1\"} 0"),
        "{metrics}"
    );
    let (_, metrics) = other
        .http_get("http://127.0.0.1:8081/metrics")
        .expect("/metrics");
    assert!(
        metrics.contains("weft_vxlan_tx_checksum_offload{device=\"flannel.1\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_bad_setting_is_refused_naming_it() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_weftd"))
        .arg("--vxlan-tx-checksum=maybe")
        .output()
        .expect("run weftd");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--vxlan-tx-checksum")
            && stderr.contains("\"maybe\": expected auto, on or off"),
        "{stderr}"
    );
}
