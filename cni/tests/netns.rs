//! The plugin against the real `bridge` and `host-local` plugins (Debian's
//! containernetworking-plugins in /usr/lib/cni), as kubelet's runtime would run it: inside a
//! throwaway "node" network namespace, attaching a throwaway "pod" namespace.
//!
//! Needs root. Everything stays inside the namespaces and a temporary directory (subnet.env,
//! the plugin's dataDir, host-local's dataDir via the `ipam` passthrough); pod addresses
//! are in 10.244.0.0/16; the host's interfaces, routes and /var/lib/cni are not touched.
//! The namespaces are deleted by drop guards, also when a test fails.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Call, Netns, mode, write_subnet_env};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

fn subnet_env(third_octet: u8) -> String {
    format!(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.{third_octet}.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )
}

/// The stock conflist entry plus test paths; host-local keeps its state in `dir` too.
fn config(dir: &Path, cni_version: &str) -> String {
    format!(
        r#"{{"cniVersion":"{cni_version}","name":"cbr0","type":"flannel",
            "subnetFile":"{dir}/subnet.env","dataDir":"{dir}/data",
            "delegate":{{"hairpinMode":true,"isDefaultGateway":true}},
            "ipam":{{"dataDir":"{dir}/ipam"}}}}"#,
        dir = dir.display()
    )
}

/// The IPv4 addresses on `dev` in `ns`, as `address/prefix`.
fn addresses(ns: &Netns, dev: &str) -> Vec<String> {
    let links = ns.ip_json(&["addr", "show", "dev", dev]);
    links[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// Checks the node and pod after a successful ADD; returns the pod's address.
fn assert_attached(node: &Netns, pod: &Netns, third_octet: u8, result: &Value) -> String {
    let subnet_prefix = format!("10.244.{third_octet}.");
    let gateway = format!("10.244.{third_octet}.1");

    // The printed result: valid CNI result JSON with the pod's interface and address.
    let ips = result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("no ips in {result}"));
    assert_eq!(ips.len(), 1, "{result}");
    let address = ips[0]["address"].as_str().unwrap().to_owned();
    assert!(
        address.starts_with(&subnet_prefix) && address.ends_with("/24"),
        "{result}"
    );
    assert_eq!(ips[0]["gateway"], gateway.as_str(), "{result}");
    let interfaces = result["interfaces"].as_array().unwrap();
    assert!(
        interfaces
            .iter()
            .any(|i| i["name"] == "eth0" && i["sandbox"] == pod.path().as_str()),
        "{result}"
    );
    let result_routes = result["routes"].as_array().unwrap();
    assert!(
        result_routes.iter().any(|r| r["dst"] == "10.244.0.0/16"),
        "{result}"
    );

    // The pod: the address from the node's subnet, the overlay MTU, a route to the cluster.
    assert_eq!(addresses(pod, "eth0"), vec![address.clone()]);
    assert_eq!(
        pod.ip_json(&["link", "show", "dev", "eth0"])[0]["mtu"],
        1450
    );
    let routes = pod.ip_json(&["route", "show"]);
    let routes = routes.as_array().unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "10.244.0.0/16" && r["gateway"] == gateway.as_str()),
        "no route to the cluster network via {gateway}: {routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == gateway.as_str()),
        "{routes:?}"
    );

    // The node: cni0 holds the gateway address.
    assert_eq!(addresses(node, "cni0"), vec![format!("{gateway}/24")]);
    address
}

#[test]
fn add_del_del_with_the_stock_conflist() {
    let dir = tempfile::tempdir().unwrap();
    let node = Netns::new();
    let pod = Netns::new();
    write_subnet_env(&dir.path().join("subnet.env"), &subnet_env(11));
    let config = config(dir.path(), "0.3.1");
    let pod_path = pod.path();
    let call = |command| Call {
        container_id: "pod-a",
        netns: &pod_path,
        in_netns: Some(&node.name),
        ..Call::new(command)
    };

    let out = call("ADD").run(&config);
    out.assert_success();
    let result = out.json();
    assert_eq!(result["cniVersion"], "0.3.1");
    let address = assert_attached(&node, &pod, 11, &result);

    // The saved delegate config is flannel's, byte for byte.
    let saved = dir.path().join("data/pod-a");
    assert_eq!(
        std::fs::read_to_string(&saved).unwrap(),
        format!(
            r#"{{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{{"dataDir":"{}/ipam","ranges":[[{{"subnet":"10.244.11.0/24"}}]],"routes":[{{"dst":"10.244.0.0/16"}}],"type":"host-local"}},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}}"#,
            dir.path().display()
        )
    );
    assert_eq!(
        (mode(&saved), mode(&dir.path().join("data"))),
        (0o600, 0o700)
    );
    let ip = address.split('/').next().unwrap();
    let reservation = dir.path().join("ipam/cbr0").join(ip);
    assert!(
        reservation.exists(),
        "host-local keeps its state in the test's directory"
    );

    // DEL removes the pod's interface, the address reservation and the saved config.
    let out = call("DEL").run(&config);
    out.assert_success();
    assert!(
        out.stdout.is_empty(),
        "DEL prints nothing: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !pod.has_link("eth0"),
        "the pod's eth0 is still there after DEL"
    );
    assert!(!reservation.exists());
    assert!(!saved.exists());

    // A second DEL is a success too.
    call("DEL").run(&config).assert_success();
}

#[test]
fn add_waits_for_subnet_env_and_speaks_1_0_0() {
    let dir = tempfile::tempdir().unwrap();
    let node = Netns::new();
    let pod = Netns::new();
    let config = config(dir.path(), "1.0.0");
    let pod_path = pod.path();
    let call = |command| Call {
        container_id: "pod-b",
        netns: &pod_path,
        in_netns: Some(&node.name),
        ..Call::new(command)
    };

    // weftd writes subnet.env half a second after the runtime called ADD.
    let writer = {
        let path = dir.path().join("subnet.env");
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            write_subnet_env(&path, &subnet_env(12));
        })
    };
    let start = Instant::now();
    let out = call("ADD").run(&config);
    let elapsed = start.elapsed();
    writer.join().unwrap();
    out.assert_success();
    assert!(
        elapsed >= Duration::from_millis(500),
        "ADD returned after {elapsed:?}, before subnet.env existed"
    );
    let result = out.json();
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_attached(&node, &pod, 12, &result);

    call("DEL").run(&config).assert_success();
    assert!(!pod.has_link("eth0"));
    call("DEL").run(&config).assert_success();
}
