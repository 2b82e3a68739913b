//! End to end in Kubernetes mode: nodes as network namespaces, the real weftd binary per
//! node with `--kube-subnet-mgr`, talking HTTP to the stateful fake API server
//! (tests/support/kube_api.rs) which listens on the underlay, and pods created through
//! weft's CNI plugin. Each node also has a Vagrant-like NAT interface holding 10.0.2.15
//! with the default route, so choosing the interface by default route would break the
//! cluster: weftd must pick the interface owning the Node's InternalIP.

mod support;

use support::kube_cluster::{KubeCluster, PREFIX, PROPAGATION};

use serde_json::{Value, json};
use std::time::Duration;
use support::kernel_state::{fdb_entries, neighbours, peer_routes};
use support::kube_api::node_json;
use support::pods::{add_pod, ping, tcp_source_seen};
use support::wait_for;

const LIMIT: Duration = Duration::from_secs(30);

/// A running three-node cluster with one pod per node. Node 3 finds its name through
/// POD_NAME/POD_NAMESPACE and a GET of its pod, as in a DaemonSet without NODE_NAME.
fn three_nodes() -> KubeCluster {
    let mut c = KubeCluster::new(3);
    for host in 0..3 {
        c.register(host, &[&format!("10.244.{}.0/24", host + 1)]);
    }
    c.api
        .create_pod("kube-flannel", "weft-ds-x", &c.node_name(2));
    c.start(0, &[]);
    c.start(1, &[]);
    c.start(
        2,
        &[("POD_NAME", "weft-ds-x"), ("POD_NAMESPACE", "kube-flannel")],
    );
    for host in 0..3 {
        c.nodes[host].wait_log("weftd is ready", LIMIT);
        let ns = &c.underlay.hosts[host].ns;
        let name = format!("{}-p", ns.name);
        let pod = add_pod(ns, &name, &c.node_dir(host));
        c.pods.push(pod);
    }
    for host in 0..3 {
        let others: Vec<String> = (0..3)
            .filter(|o| *o != host)
            .map(|o| format!("10.244.{}.0/24", o + 1))
            .collect();
        let others: Vec<&str> = others.iter().map(String::as_str).collect();
        c.wait_routes(host, &others);
    }
    c
}

fn vtep_mac(c: &KubeCluster, host: usize) -> String {
    let data = c.annotation(host, "backend-data").expect("backend-data");
    let data: Value = serde_json::from_str(&data).expect("backend-data is JSON");
    data["VtepMAC"].as_str().expect("VtepMAC").to_string()
}

#[test]
fn pods_talk_across_nodes_and_each_node_publishes_flannels_annotations() {
    let c = three_nodes();
    for (i, from) in c.pods.iter().enumerate() {
        for (j, to) in c.pods.iter().enumerate() {
            if i != j {
                assert!(ping(&from.ns, &to.ip, 2), "pod {i} cannot ping pod {j}");
            }
        }
    }
    let seen = tcp_source_seen(&c.pods[2].ns, &c.pods[2].ip, &c.pods[0].ns, 7070);
    assert_eq!(seen, c.pods[0].ip, "the receiver sees the sender's pod IP");

    for host in 0..3 {
        let ip = &c.underlay.hosts[host].ip;
        assert!(
            c.nodes[host]
                .log()
                .contains(&format!("it has the Node's InternalIP {ip}")),
            "node {host} did not choose its InternalIP interface:\n{}",
            c.nodes[host].log()
        );
        assert_eq!(
            c.nodes[host].log_count("weftd is ready"),
            1,
            "ready once, not before the first Node listing"
        );
        assert_eq!(
            c.annotation(host, "kube-subnet-manager").as_deref(),
            Some("true")
        );
        assert_eq!(c.annotation(host, "backend-type").as_deref(), Some("vxlan"));
        assert_eq!(
            c.annotation(host, "public-ip").as_deref(),
            Some(ip.as_str())
        );
        let data: Value =
            serde_json::from_str(&c.annotation(host, "backend-data").unwrap()).unwrap();
        assert_eq!(data["VNI"], 1);
        // The published MAC is the device's.
        let link = &support::kernel_state::json(
            &c.underlay.hosts[host].ns,
            &["ip", "-j", "link", "show", "flannel.1"],
        )[0];
        assert_eq!(link["address"], data["VtepMAC"], "node {host}");
        let node = c.api.node(&c.node_name(host)).unwrap();
        let conditions = node["status"]["conditions"].as_array().unwrap();
        let condition = conditions
            .iter()
            .find(|c| c["type"] == "NetworkUnavailable")
            .expect("NetworkUnavailable condition");
        assert_eq!(condition["status"], "False");
        assert_eq!(condition["reason"], "FlannelIsUp");
        assert_eq!(condition["message"], "Flannel is running on this node");
        let env = std::fs::read_to_string(&c.nodes[host].subnet_file).unwrap();
        assert!(
            env.contains(&format!("FLANNEL_SUBNET=10.244.{}.1/24", host + 1)),
            "{env}"
        );
        assert!(env.contains("FLANNEL_NETWORK=10.244.0.0/16"), "{env}");
    }
    // Node 1's FDB and neighbours match what the others published.
    let ns = &c.underlay.hosts[0].ns;
    let mut wanted_fdb: Vec<(String, String)> = (1..3)
        .map(|h| (vtep_mac(&c, h), c.underlay.hosts[h].ip.clone()))
        .collect();
    wanted_fdb.sort();
    assert_eq!(fdb_entries(ns), wanted_fdb);
    let mut wanted_neigh: Vec<(String, String)> = (1..3)
        .map(|h| (format!("10.244.{}.0", h + 1), vtep_mac(&c, h)))
        .collect();
    wanted_neigh.sort();
    assert_eq!(neighbours(ns), wanted_neigh);

    // Every write went through nodes/<name>/status (the only write flannel's RBAC grants).
    let requests = c.api.requests();
    let writes: Vec<&String> = requests.iter().filter(|r| !r.starts_with("GET")).collect();
    assert!(!writes.is_empty());
    for write in &writes {
        assert!(
            write.starts_with("PATCH /api/v1/nodes/")
                && write.contains("/status")
                && write.ends_with("application/strategic-merge-patch+json"),
            "unexpected write: {write}"
        );
    }
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("GET /api/v1/namespaces/kube-flannel/pods/weft-ds-x")),
        "node 3 resolved its name through its pod: {requests:?}"
    );

    // The metrics speak of the API server: the mode, both peers, the watch in contact.
    let m = support::prometheus::scrape(&c.underlay.hosts[0].ns);
    let labels = [("backend", "vxlan"), ("subnet_manager", "kube")];
    assert_eq!(m.value("weft_build_info", &labels), 1.0);
    assert_eq!(m.value("weft_peers", &[("family", "ipv4")]), 2.0);
    assert_eq!(m.value("weft_ready", &[]), 1.0);
    assert_eq!(m.value("weft_datastore_contact_age_seconds", &[]), 0.0);
    assert_eq!(
        m.value(
            "weft_datastore_errors_total",
            &[("operation", "watch_nodes")]
        ),
        0.0
    );
    assert!(
        !m.types.contains_key("weft_lease_renewals"),
        "no etcd lease"
    );
}

#[test]
fn node_deletion_re_creation_restarts_and_public_ip_changes_reach_the_peers() {
    let mut c = three_nodes();
    let third = c.node_name(2);
    let mac3 = vtep_mac(&c, 2);

    // The Node is deleted: its routes and entries vanish on the others.
    c.api.delete_node(&third).expect("node 3 existed");
    for host in 0..2 {
        let other = format!("10.244.{}.0/24", 2 - host);
        c.wait_routes(host, &[&other]);
        let ns = &c.underlay.hosts[host].ns;
        // The route goes first, its neighbour and FDB entries right after it.
        support::wait_for(
            "node 3's FDB and neighbour entries gone",
            PROPAGATION,
            || {
                let fdb_gone = !fdb_entries(ns).iter().any(|(mac, _)| *mac == mac3);
                let neighbour_gone = !neighbours(ns).iter().any(|(ip, _)| ip == "10.244.3.0");
                (fdb_gone && neighbour_gone).then_some(())
            },
        );
    }

    // The kubelet registers it again, bare: weftd on node 3 publishes itself again and the
    // others program it, with the same VTEP MAC as before.
    c.register(2, &["10.244.3.0/24"]);
    c.nodes[2].wait_log("this node's annotations had drifted", PROPAGATION);
    c.wait_routes(0, &["10.244.2.0/24", "10.244.3.0/24"]);
    assert_eq!(vtep_mac(&c, 2), mac3);
    assert!(ping(&c.pods[0].ns, &c.pods[2].ip, 2));

    // weftd restarts after the device was lost (as after a reboot): the VTEP MAC comes
    // back from the Node's own backend-data annotation, so the peers' entries stay valid.
    assert!(c.nodes[2].terminate().success());
    c.underlay.hosts[2].ns.ip(&["link", "del", "flannel.1"]);
    let restarted = c.start(
        2,
        &[("POD_NAME", "weft-ds-x"), ("POD_NAMESPACE", "kube-flannel")],
    );
    c.nodes[restarted].wait_log("VTEP MAC from what this node published before", LIMIT);
    c.nodes[restarted].wait_log("weftd is ready", LIMIT);
    let link = &support::kernel_state::json(
        &c.underlay.hosts[2].ns,
        &["ip", "-j", "link", "show", "flannel.1"],
    )[0];
    assert_eq!(link["address"], mac3.as_str());
    assert!(ping(&c.pods[0].ns, &c.pods[2].ip, 2));

    // An operator sets public-ip-overwrite on node 2: it publishes that address and the
    // peers' FDB entries for its MAC follow.
    let mac2 = vtep_mac(&c, 1);
    c.api.update_node(&c.node_name(1), |node| {
        node["metadata"]["annotations"][format!("{PREFIX}public-ip-overwrite")] =
            json!("198.18.0.50");
    });
    wait_for("public-ip follows the overwrite", PROPAGATION, || {
        (c.annotation(1, "public-ip").as_deref() == Some("198.18.0.50")).then_some(())
    });
    for host in [0, 2] {
        let ns = &c.underlay.hosts[host].ns;
        wait_for("FDB entry moved to 198.18.0.50", PROPAGATION, || {
            fdb_entries(ns)
                .contains(&(mac2.clone(), "198.18.0.50".to_string()))
                .then_some(())
        });
    }
    // A malformed overwrite is reported and ignored: the node's own address returns.
    c.api.update_node(&c.node_name(1), |node| {
        node["metadata"]["annotations"][format!("{PREFIX}public-ip-overwrite")] = json!("bogus");
    });
    c.nodes[1].wait_log(
        &format!(
            "annotation {PREFIX}public-ip-overwrite=\"bogus\" is not an address of its family; ignored"
        ),
        PROPAGATION,
    );
    let ns = &c.underlay.hosts[0].ns;
    wait_for("FDB entry back on 198.18.0.12", PROPAGATION, || {
        fdb_entries(ns)
            .contains(&(mac2.clone(), "198.18.0.12".to_string()))
            .then_some(())
    });
    // Node 2's own VTEP still uses its local address.
    let link = &support::kernel_state::json(
        &c.underlay.hosts[1].ns,
        &["ip", "-d", "-j", "link", "show", "flannel.1"],
    )[0];
    assert_eq!(link["linkinfo"]["info_data"]["local"], "198.18.0.12");
}

/// A node waits for its podCIDR (not ready, saying why) instead of crash-looping; a
/// podCIDR outside the network, garbage from another node, duplicate public IPs and an
/// API outage are each reported clearly and survived.
#[test]
fn bad_input_and_api_outages_are_survived() {
    let mut c = KubeCluster::new(2);
    let first = c.node_name(0);
    c.register(0, &[]);
    c.register(1, &["10.99.0.0/24"]);
    c.start(0, &[]);
    c.start(1, &[]);

    let waiting = format!("node \"{first}\" pod cidr not assigned; waiting for one");
    wait_for("two retries about the podCIDR", LIMIT, || {
        (c.nodes[0].log_count(&waiting) >= 2).then_some(())
    });
    let (code, body) = c.readyz(0);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(&waiting), "{body}");
    c.api.update_node(&first, |node| {
        node["spec"]["podCIDR"] = json!("10.244.1.0/24");
        node["spec"]["podCIDRs"] = json!(["10.244.1.0/24"]);
    });
    c.nodes[0].wait_log("weftd is ready", LIMIT);

    let outside = format!(
        "subnet \"10.244.0.0/16\" specified in the flannel net config doesn't contain \
         \"10.99.0.0/24\" PodCIDR of the \"{}\" node",
        c.node_name(1)
    );
    c.nodes[1].wait_log(&outside, LIMIT);
    assert!(
        c.nodes[1].is_running(),
        "a bad podCIDR must not crash weftd"
    );
    assert_eq!(c.readyz(1).0, 503);
    // Fixed the Kubernetes way: the Node is deleted and registered again.
    c.api.delete_node(&c.node_name(1));
    c.register(1, &["10.244.2.0/24"]);
    c.nodes[1].wait_log("weftd is ready", LIMIT);
    for host in 0..2 {
        let ns = &c.underlay.hosts[host].ns;
        let name = format!("{}-p", ns.name);
        let pod = add_pod(ns, &name, &c.node_dir(host));
        c.pods.push(pod);
    }
    c.wait_routes(0, &["10.244.2.0/24"]);
    assert!(ping(&c.pods[0].ns, &c.pods[1].ip, 2));

    // Another node publishes garbage: skipped with a clear line, never programmed.
    let mut ghost = node_json("ghost", &["10.244.9.0/24"], "198.18.0.99");
    ghost["metadata"]["annotations"] = json!({
        format!("{PREFIX}kube-subnet-manager"): "true",
        format!("{PREFIX}backend-type"): "vxlan",
        format!("{PREFIX}backend-data"): "{VNI:1,garbage",
        format!("{PREFIX}public-ip"): "198.18.0.99",
    });
    c.api.create_node(ghost);
    c.nodes[0].wait_log(
        &format!(
            "skipping node \"ghost\": node \"ghost\": annotation {PREFIX}backend-data=\"{{VNI:1,garbage\" is not JSON"
        ),
        PROPAGATION,
    );
    c.api.update_node("ghost", |node| {
        node["metadata"]["annotations"][format!("{PREFIX}backend-data")] =
            json!(r#"{"VNI":1,"VtepMAC":"0a:00:00:00:00:99"}"#);
    });
    c.wait_routes(0, &["10.244.2.0/24", "10.244.9.0/24"]);

    // A second node claiming node 1's public IP is reported loudly.
    let mut twin = node_json("twin", &["10.244.8.0/24"], "198.18.0.98");
    twin["metadata"]["annotations"] = json!({
        format!("{PREFIX}kube-subnet-manager"): "true",
        format!("{PREFIX}backend-type"): "vxlan",
        format!("{PREFIX}backend-data"): r#"{"VNI":1,"VtepMAC":"0a:00:00:00:00:98"}"#,
        format!("{PREFIX}public-ip"): c.underlay.hosts[0].ip.clone(),
    });
    c.api.create_node(twin);
    c.nodes[1].wait_log(
        &format!("all advertise public IP {}", c.underlay.hosts[0].ip),
        PROPAGATION,
    );
    c.api.delete_node("twin");
    c.wait_routes(1, &["10.244.1.0/24", "10.244.9.0/24"]);

    // The API server goes away: pods keep talking on the last known state, and a node
    // that joined meanwhile is programmed once the API is back.
    c.api.set_reachable(false);
    c.nodes[0].wait_log("Node watch: ", PROPAGATION);
    assert!(
        ping(&c.pods[0].ns, &c.pods[1].ip, 3),
        "traffic during the outage"
    );
    c.api.delete_node("ghost");
    let mut late = node_json("late", &["10.244.7.0/24"], "198.18.0.97");
    late["metadata"]["annotations"] = json!({
        format!("{PREFIX}kube-subnet-manager"): "true",
        format!("{PREFIX}backend-type"): "vxlan",
        format!("{PREFIX}backend-data"): r#"{"VNI":1,"VtepMAC":"0a:00:00:00:00:97"}"#,
        format!("{PREFIX}public-ip"): "198.18.0.97",
    });
    c.api.create_node(late);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.readyz(0).0, 200, "an API outage keeps the node ready");
    c.api.set_reachable(true);
    // The watcher's backoff is capped at 10 s.
    c.wait_routes_within(
        0,
        &["10.244.2.0/24", "10.244.7.0/24"],
        Duration::from_secs(25),
    );
    c.nodes[0].wait_log("Node watch recovered", PROPAGATION);
    assert!(ping(&c.pods[1].ns, &c.pods[0].ip, 2));
    for node in &mut c.nodes {
        assert!(node.is_running());
    }
}

/// A Node whose annotations are well-formed but hostile: another node's VTEP MAC, a
/// broadcast public IP. Node annotations go through the same admission as etcd leases.
#[test]
fn hostile_node_annotations_are_rejected() {
    let c = three_nodes();
    let mac1 = vtep_mac(&c, 1);
    let hostile = |name: &str, cidr: &str, ip: &str, mac: &str| {
        let mut node = node_json(name, &[cidr], ip);
        node["metadata"]["annotations"] = json!({
            format!("{PREFIX}kube-subnet-manager"): "true",
            format!("{PREFIX}backend-type"): "vxlan",
            format!("{PREFIX}backend-data"): format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
            format!("{PREFIX}public-ip"): ip,
        });
        node
    };
    c.api
        .create_node(hostile("thief", "10.244.5.0/24", "198.18.0.96", &mac1));
    c.api.create_node(hostile(
        "bcast",
        "10.244.6.0/24",
        "255.255.255.255",
        "0a:00:00:00:00:66",
    ));
    for host in [0, 2] {
        c.nodes[host].wait_log(
            &format!("its VTEP MAC {mac1} is already used by the peer lease"),
            PROPAGATION,
        );
        c.nodes[host].wait_log(
            "its public IP 255.255.255.255 is the broadcast address",
            PROPAGATION,
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let ip1 = c.underlay.hosts[1].ip.clone();
    for host in [0, 2] {
        let fdb = fdb_entries(&c.underlay.hosts[host].ns);
        assert!(fdb.contains(&(mac1.clone(), ip1.clone())), "{fdb:?}");
        assert!(
            !fdb.iter()
                .any(|e| e.1 == "198.18.0.96" || e.1 == "255.255.255.255"),
            "{fdb:?}"
        );
        assert_eq!(peer_routes(&c.underlay.hosts[host].ns).len(), 2);
        assert_eq!(c.readyz(host).0, 200);
    }
    for (i, from) in c.pods.iter().enumerate() {
        for (j, to) in c.pods.iter().enumerate() {
            if i != j {
                assert!(ping(&from.ns, &to.ip, 2), "pod {i} cannot ping pod {j}");
            }
        }
    }
}

#[test]
fn host_gw_in_kube_mode_publishes_flannels_annotations_and_routes_pods() {
    let mut c = KubeCluster::new(2);
    std::fs::write(
        c.dir.path().join("net-conf.json"),
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
    )
    .unwrap();
    for host in 0..2 {
        c.register(host, &[&format!("10.244.{}.0/24", host + 1)]);
        c.start(host, &[]);
    }
    for host in 0..2 {
        c.nodes[host].wait_log("weftd is ready", LIMIT);
        assert_eq!(
            c.annotation(host, "backend-type").as_deref(),
            Some("host-gw")
        );
        assert_eq!(c.annotation(host, "backend-data").as_deref(), Some("null"));
        let ns = &c.underlay.hosts[host].ns;
        let name = format!("{}-p", ns.name);
        let pod = add_pod(ns, &name, &c.node_dir(host));
        c.pods.push(pod);
    }
    let ns0 = &c.underlay.hosts[0].ns;
    wait_for("the host-gw route", PROPAGATION, || {
        let route = ns0.ip(&["route", "show", "10.244.2.0/24"]);
        route
            .contains(&format!("via {} dev eth0 proto 91", c.underlay.hosts[1].ip))
            .then_some(())
    });
    assert!(ping(&c.pods[0].ns, &c.pods[1].ip, 2));
    assert!(ping(&c.pods[1].ns, &c.pods[0].ip, 2));
}
