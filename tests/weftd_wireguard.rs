//! End to end with the wireguard backend: nodes as network namespaces on an underlay
//! bridge, a real etcd (or the fake API server), the real weftd per node, pods through
//! weft's CNI plugin. This kernel has no WireGuard, so the devices are boringtun's
//! (userspace, `--wireguard-userspace`), configured over the same UAPI protocol `wg(8)`
//! speaks; each node has its own mount namespace for the UAPI sockets (see
//! `support::wireguard`). Asserts delivered packets, preserved source addresses, what
//! crosses the underlay (WireGuard only), the devices' configuration as `wg show` reads
//! it, and recovery from restarts, key rotation and deleted devices and peers.

mod support;

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::cluster::{CONFIG_KEY, Cluster};
use support::kube_cluster::KubeCluster;
use support::netns::Netns;
use support::pods::{add_pod, ping, tcp_source_seen};
use support::wait_for;
use support::wireguard::{CONFIG, LIMIT, NodeMounts, WgCluster, userspace_flag};

/// `tcpdump -w` on an interface of `ns` until stopped.
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    fn start(ns: &str, interface: &str, file: PathBuf) -> Capture {
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "tcpdump", "-i", interface, "-nn", "-U", "-s", "0",
            ])
            .arg("-w")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (./scripts/setup.sh installs it)");
        // tcpdump says "listening on" once it captures.
        std::thread::sleep(Duration::from_millis(700));
        Capture { child, file }
    }

    /// Stops the capture; returns the file's bytes and the packets matching each filter.
    fn stop(mut self, filters: &[&str]) -> (Vec<u8>, Vec<usize>) {
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let bytes = std::fs::read(&self.file).expect("capture file");
        let counts = filters
            .iter()
            .map(|filter| {
                let out = Command::new("tcpdump")
                    .args(["-nn", "-r"])
                    .arg(&self.file)
                    .arg(filter)
                    .output()
                    .expect("tcpdump -r");
                String::from_utf8_lossy(&out.stdout).lines().count()
            })
            .collect();
        (bytes, counts)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// 10 pings carrying `weftcanary` in their payload; whether any came back.
fn ping_canary(from: &Netns, to: &str) -> bool {
    let out = from.exec(&[
        "ping",
        "-c",
        "10",
        "-i",
        "0.05",
        "-W",
        "1",
        "-p",
        "7765667463616e617279",
        to,
    ]);
    !String::from_utf8_lossy(&out.stdout).contains(" 0 received")
}

#[test]
fn pods_talk_through_wireguard_and_the_underlay_carries_only_ciphertext() {
    let w = WgCluster::new(3, CONFIG);
    for (i, from) in w.pods.iter().enumerate() {
        for (j, to) in w.pods.iter().enumerate() {
            if i != j {
                assert!(ping(&from.ns, &to.ip, 2), "pod {i} cannot ping pod {j}");
            }
        }
    }
    assert_eq!(
        tcp_source_seen(&w.pods[1].ns, &w.pods[1].ip, &w.pods[0].ns, 7101),
        w.pods[0].ip,
        "the receiver sees the sender's pod IP (no NAT)"
    );
    assert!(
        ping(&w.c.underlay.hosts[0].ns, &w.pods[2].ip, 2),
        "node 0 -> pod on node 2"
    );

    // What crosses the underlay bridge while pods talk: WireGuard's UDP only. Inside
    // node 0's flannel-wg the same pings are in clear (the check can see them).
    let dir = tempfile::tempdir().unwrap();
    let wire = Capture::start(&w.c.underlay.ns.name, "br0", dir.path().join("wire.pcap"));
    let tunnel = Capture::start(
        &w.c.underlay.hosts[0].ns.name,
        "flannel-wg",
        dir.path().join("tunnel.pcap"),
    );
    assert!(ping_canary(&w.pods[0].ns, &w.pods[1].ip));
    assert_eq!(
        tcp_source_seen(&w.pods[2].ns, &w.pods[2].ip, &w.pods[0].ns, 7102),
        w.pods[0].ip
    );
    let (wire_bytes, wire_counts) =
        wire.stop(&["udp port 51820", "net 10.244.0.0/16", "icmp or tcp"]);
    let (tunnel_bytes, _) = tunnel.stop(&[]);
    assert!(
        contains(&tunnel_bytes, b"weftcanary"),
        "the canary is in clear inside the tunnel"
    );
    assert!(
        !contains(&wire_bytes, b"weftcanary"),
        "the canary crossed the underlay in clear"
    );
    assert!(
        wire_counts[0] >= 20,
        "WireGuard packets on the wire: {wire_counts:?}"
    );
    assert_eq!(
        wire_counts[1], 0,
        "no pod address on the wire: {wire_counts:?}"
    );
    assert_eq!(
        wire_counts[2], 0,
        "no ICMP or TCP on the wire: {wire_counts:?}"
    );

    // flannel's shape: device MTU 1420 and the /32, the network route, FLANNEL_MTU, the
    // lease's BackendData, peers as `wg show` reads them.
    for host in 0..3 {
        let ns = &w.c.underlay.hosts[host].ns;
        let lease = w.lease(host);
        assert_eq!(lease["BackendType"], "wireguard");
        assert_eq!(lease["BackendData"]["Port"], 51820);
        let key = lease["BackendData"]["PublicKey"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(w.mounts[host].wg_public_key("flannel-wg"), key);
        let link: Value =
            serde_json::from_str(&ns.ip(&["-j", "-d", "link", "show", "flannel-wg"])).unwrap();
        assert_eq!(link[0]["mtu"], 1420);
        let route = ns.ip(&["route", "show", "10.244.0.0/16"]);
        assert!(
            route.contains("dev flannel-wg proto 91 scope link"),
            "{route}"
        );
        let env = std::fs::read_to_string(&w.c.nodes[host].subnet_file).unwrap();
        assert!(env.contains("FLANNEL_MTU=1420\n"), "{env}");
        for peer in w.mounts[host].wg_peers("flannel-wg") {
            let other = (0..3)
                .find(|&o| w.lease(o)["BackendData"]["PublicKey"] == peer.public_key.as_str())
                .unwrap();
            assert_eq!(
                peer.endpoint,
                format!("{}:51820", w.c.underlay.hosts[other].ip)
            );
        }
    }

    // The private key: 0600, in no log, no state view, no metric.
    let key_text = std::fs::read_to_string(w.key_file(0)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(w.key_file(0))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let ns0 = &w.c.underlay.hosts[0].ns;
    let state = ns0.http_get("http://127.0.0.1:8081/debug/state").unwrap().1;
    let metrics = wait_for("handshake metrics", LIMIT, || {
        let m = ns0.http_get("http://127.0.0.1:8081/metrics")?.1;
        m.lines()
            .any(|l| {
                l.starts_with("weft_wireguard_peer_last_handshake_seconds{") && !l.ends_with(" 0")
            })
            .then_some(m)
    });
    for text in [&w.c.nodes[0].log(), &state, &metrics] {
        assert!(!text.contains(key_text.trim()), "the private key leaked");
    }
    // The state view says the peers are alive: a recent handshake and bytes both ways.
    let state: Value = wait_for("a handshake in the state view", LIMIT, || {
        let doc: Value =
            serde_json::from_str(&ns0.http_get("http://127.0.0.1:8081/debug/state")?.1).ok()?;
        doc["peers"]
            .as_array()?
            .iter()
            .all(|p| {
                p["wireguard"][0]["latest_handshake_seconds_ago"]
                    .as_u64()
                    .is_some()
            })
            .then_some(doc)
    });
    for peer in state["peers"].as_array().unwrap() {
        let wg = &peer["wireguard"][0];
        assert_eq!(wg["device"], "flannel-wg");
        assert!(
            wg["rx_bytes"].as_u64().unwrap() > 0 && wg["tx_bytes"].as_u64().unwrap() > 0,
            "{wg}"
        );
        assert!(
            wg["latest_handshake_seconds_ago"].as_u64().unwrap() < 120,
            "{wg}"
        );
    }
    // Which WireGuard serves the device: here boringtun, the userspace fallback.
    assert_eq!(
        state["node"]["wireguard"],
        serde_json::json!([{"device": "flannel-wg", "implementation": "userspace"}])
    );
}

#[test]
fn restarts_deleted_devices_and_peers_and_a_new_key_are_repaired() {
    let mut w = WgCluster::new(3, CONFIG);
    // weftd on node 0 restarted under a 100/s ping to node 1's pod: nothing lost (the
    // device, its keys and sessions stay). A counted ping, so that none is in flight
    // when it is read.
    let ns = w.pods[0].ns.name.clone();
    let target = w.pods[1].ip.clone();
    let pinger = std::thread::spawn(move || {
        Command::new("ip")
            .args([
                "netns", "exec", &ns, "ping", "-c", "400", "-i", "0.01", "-W", "1", "-q", &target,
            ])
            .output()
            .expect("ping")
    });
    std::thread::sleep(Duration::from_millis(500));
    w.c.nodes[0].terminate();
    let again = w.start(0);
    w.c.nodes[again].wait_log("weftd is ready", LIMIT);
    let output = pinger.join().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    println!(
        "weftd restarted under ping: {}",
        text.lines()
            .find(|l| l.contains("transmitted"))
            .unwrap_or("")
    );
    assert!(
        text.contains("400 packets transmitted, 400 received"),
        "pings lost across a restart: {text}\n{}",
        w.c.nodes[again]
            .log()
            .lines()
            .filter(|l| l.contains("datapath") || l.contains("WARN"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        w.c.nodes[again].log_count("datapath: create flannel-wg"),
        0,
        "the device was kept"
    );

    // flannel-wg deleted by hand on node 1: re-created with its peers; pods talk again.
    let ns1 = w.c.underlay.hosts[1].ns.name.clone();
    let started = Instant::now();
    w.c.underlay.hosts[1].ns.ip(&["link", "del", "flannel-wg"]);
    wait_for("flannel-wg back on node 1 with both peers", LIMIT, || {
        (w.mounts[1].wg_peers("flannel-wg").len() == 2).then_some(())
    });
    wait_for(
        "pods to talk again after the device came back",
        LIMIT,
        || ping(&w.pods[0].ns, &w.pods[1].ip, 1).then_some(()),
    );
    println!(
        "device deleted on {ns1}: pods talk again after {:?}",
        started.elapsed()
    );

    // A peer removed by hand on node 0 is put back by the next full pass.
    let peers = w.mounts[0].wg_peers("flannel-wg");
    let gone = peers[0].public_key.clone();
    let out = w.mounts[0].exec(&["wg", "set", "flannel-wg", "peer", &gone, "remove"]);
    assert!(out.status.success());
    wait_for("the removed peer back", LIMIT, || {
        w.mounts[0]
            .wg_peers("flannel-wg")
            .iter()
            .any(|p| p.public_key == gone)
            .then_some(())
    });

    // An administrator's peer on weft's device (outside the cluster network) and a
    // foreign WireGuard device are left alone.
    let (_, admin_key) = w.mounts[0].wg_keypair();
    let set = w.mounts[0].exec(&[
        "wg",
        "set",
        "flannel-wg",
        "peer",
        &admin_key,
        "allowed-ips",
        "192.168.77.0/24",
    ]);
    assert!(set.status.success());
    let foreign = w.mounts[0].exec(&[
        support::wireguard::boringtun().to_str().unwrap(),
        "--disable-drop-privileges",
        "wg0",
    ]);
    assert!(foreign.status.success(), "{foreign:?}");

    // Node 2 gets a new key: its key file deleted, weftd restarted. Its lease carries the
    // new public key, the other nodes replace the old one, pods talk again.
    let old_key = w.lease(2)["BackendData"]["PublicKey"]
        .as_str()
        .unwrap()
        .to_string();
    w.c.nodes[2].terminate();
    std::fs::remove_file(w.key_file(2)).unwrap();
    let started = Instant::now();
    let node2 = w.start(2);
    w.c.nodes[node2].wait_log("generated a WireGuard private key", LIMIT);
    let new_key = wait_for("the new key on node 2's device", LIMIT, || {
        let k = w.mounts[2].wg_public_key("flannel-wg");
        (k != old_key && !k.is_empty()).then_some(k)
    });
    wait_for("pods talk to node 2 again", LIMIT, || {
        (ping(&w.pods[0].ns, &w.pods[2].ip, 1) && ping(&w.pods[2].ns, &w.pods[1].ip, 1))
            .then_some(())
    });
    println!(
        "key rotated on node 2: pods talk again after {:?}",
        started.elapsed()
    );
    assert_eq!(w.lease(2)["BackendData"]["PublicKey"], new_key.as_str());
    for host in 0..2 {
        let keys: Vec<String> = w.mounts[host]
            .wg_peers("flannel-wg")
            .into_iter()
            .map(|p| p.public_key)
            .collect();
        assert!(
            keys.contains(&new_key) && !keys.contains(&old_key),
            "node {host}: {keys:?}"
        );
    }
    // The administrator's peer and device are still there after several passes.
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        w.mounts[0]
            .wg_peers("flannel-wg")
            .iter()
            .any(|p| p.public_key == admin_key)
    );
    assert!(w.mounts[0].exec(&["wg", "show", "wg0"]).status.success());

    // Node 2 leaves (weftd stopped, lease deleted): its peer goes from the others.
    w.c.nodes[node2].terminate();
    let key =
        w.c.subnets_in_etcd()
            .into_iter()
            .find(|(_, v)| v.contains(&new_key))
            .unwrap()
            .0;
    w.c.etcd.etcdctl(&["del", &key]);
    for host in 0..2 {
        wait_for("the departed peer to go", LIMIT, || {
            (!w.mounts[host]
                .wg_peers("flannel-wg")
                .iter()
                .any(|p| p.public_key == new_key))
            .then_some(())
        });
    }
}

#[test]
fn dual_stack_separate_and_single_device_modes() {
    for (mode, devices) in [
        ("separate", vec!["flannel-wg", "flannel-wg-v6"]),
        ("ipv6", vec!["flannel-wg"]),
    ] {
        let config = format!(
            r#"{{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{{"Type":"wireguard","Mode":"{mode}"}}}}"#
        );
        let w = WgCluster::new(2, &config);
        for device in &devices {
            assert_eq!(w.mounts[0].wg_peers(device).len(), 1, "{mode}: {device}");
        }
        let v6 = w.pods[1].ipv6().expect("an IPv6 pod address").to_string();
        assert!(ping(&w.pods[0].ns, &w.pods[1].ip, 2), "{mode}: IPv4");
        // The first packets wait for the handshake (and IPv6 neighbour discovery on
        // the underlay): talking within a bound, then every packet.
        wait_for("the first IPv6 pings through", LIMIT, || {
            ping(&w.pods[0].ns, &v6, 1).then_some(())
        });
        assert!(ping(&w.pods[0].ns, &v6, 2), "{mode}: IPv6 to {v6}");
        let peer = &w.mounts[0].wg_peers(devices.last().unwrap())[0];
        let want = if mode == "separate" {
            "[fd00:198:18::12]:51821"
        } else {
            "[fd00:198:18::12]:51820"
        };
        assert_eq!(peer.endpoint, want, "{mode}");
    }
}

#[test]
fn kube_mode_pods_talk_through_wireguard() {
    let mut k = KubeCluster::new(3);
    std::fs::write(k.dir.path().join("net-conf.json"), CONFIG).unwrap();
    let mounts: Vec<NodeMounts> = (0..3)
        .map(|h| NodeMounts::new(&k.underlay.hosts[h].ns))
        .collect();
    let userspace = userspace_flag();
    for (host, node_mounts) in mounts.iter().enumerate() {
        k.register(host, &[&format!("10.244.{}.0/24", host + 1)]);
        let key = format!("{}", k.node_dir(host).join("wgkey").display());
        let launcher = node_mounts.launcher();
        let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
        k.start_via(
            host,
            &launcher,
            &[&userspace],
            &[("WIREGUARD_KEY_FILE", &key)],
        );
    }
    let mut pods = Vec::new();
    for (host, node_mounts) in mounts.iter().enumerate() {
        k.nodes[host].wait_log("weftd is ready", LIMIT);
        let node = &k.underlay.hosts[host].ns;
        pods.push(add_pod(
            node,
            &format!("{}-p", node.name),
            &k.node_dir(host),
        ));
        let data: Value =
            serde_json::from_str(&k.annotation(host, "backend-data").unwrap()).unwrap();
        assert_eq!(
            data["PublicKey"].as_str().unwrap(),
            node_mounts.wg_public_key("flannel-wg"),
            "{}",
            k.nodes[host].log()
        );
        assert_eq!(
            k.annotation(host, "backend-type").as_deref(),
            Some("wireguard")
        );
    }
    for m in &mounts {
        wait_for("2 WireGuard peers", LIMIT, || {
            (m.wg_peers("flannel-wg").len() == 2).then_some(())
        });
    }
    for (i, from) in pods.iter().enumerate() {
        for (j, to) in pods.iter().enumerate() {
            if i != j {
                assert!(ping(&from.ns, &to.ip, 2), "pod {i} cannot ping pod {j}");
            }
        }
    }
    assert_eq!(
        tcp_source_seen(&pods[2].ns, &pods[2].ip, &pods[0].ns, 7103),
        pods[0].ip
    );
    drop(pods);
    drop(mounts);
}

/// A node set up the way flanneld's wireguard backend sets one up (flannel.md §11), by
/// hand with `wg` and `ip`: boringtun's flannel-wg, the subnet's /32, the network's
/// scope-link route, its lease in flannel's JSON, a peer per weft node.
#[test]
fn a_flannel_shaped_wireguard_node_and_weft_nodes_talk_both_ways() {
    let mut c = Cluster::new(3, true);
    c.etcd.etcdctl(&["put", CONFIG_KEY, CONFIG]);
    let mounts: Vec<NodeMounts> = (0..3)
        .map(|h| NodeMounts::new(&c.underlay.hosts[h].ns))
        .collect();
    // The flannel node: 198.18.0.13, subnet 10.244.50.0/24.
    let flannel = &mounts[2];
    let (private, public) = flannel.wg_keypair();
    let key_file = c.dir.path().join("flannel-wgkey");
    std::fs::write(&key_file, &private).unwrap();
    flannel.hand_device(&key_file, "10.244.50.0/32", &[]);
    let lease = serde_json::json!({
        "PublicIP": "198.18.0.13", "PublicIPv6": null, "BackendType": "wireguard",
        "BackendData": {"PublicKey": public, "Port": 51820}, "BackendV6Data": null,
    });
    let put = c.etcd.etcdctl(&[
        "put",
        "/coreos.com/network/subnets/10.244.50.0-24",
        &lease.to_string(),
    ]);
    assert!(put.contains("OK"), "{put}");

    let userspace = userspace_flag();
    for (host, node_mounts) in mounts.iter().enumerate().take(2) {
        let launcher = node_mounts.launcher();
        let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
        let key = format!("{}", c.node_dir(host).join("wgkey").display());
        c.start_via(
            host,
            &launcher,
            &["--reconcile-interval=2", &userspace],
            &[("WIREGUARD_KEY_FILE", &key)],
        );
    }
    let pods = c.pods_when_ready(2, LIMIT);
    // flanneld's side of the weft leases: a peer each, endpoint and subnet from the lease.
    for (key, value) in c.subnets_in_etcd() {
        let attrs: Value = serde_json::from_str(&value).unwrap();
        if attrs["PublicIP"] == "198.18.0.13" {
            continue;
        }
        let subnet = key.rsplit('/').next().unwrap().replace('-', "/");
        let endpoint = format!(
            "{}:{}",
            attrs["PublicIP"].as_str().unwrap(),
            attrs["BackendData"]["Port"]
        );
        flannel.run(&[
            "wg",
            "set",
            "flannel-wg",
            "peer",
            attrs["BackendData"]["PublicKey"].as_str().unwrap(),
            "endpoint",
            &endpoint,
            "allowed-ips",
            &subnet,
        ]);
    }
    for (host, m) in mounts[..2].iter().enumerate() {
        let found = support::wait_for_result("the flannel node as a peer", LIMIT, || {
            m.wg_peers("flannel-wg")
                .iter()
                .any(|p| p.public_key == public)
                .then_some(())
        });
        assert!(
            found.is_some(),
            "node {host} has no peer {public}: {}",
            c.nodes[host].log()
        );
    }
    let flannel_ns = &c.underlay.hosts[2].ns;
    for pod in &pods {
        // Whoever sends first may have sent before the other side knew its key (a
        // dropped initiation, retried 5 s later): bounded, then every packet.
        wait_for("weft pod and flannel node to talk", LIMIT, || {
            ping(&pod.ns, "10.244.50.0", 1).then_some(())
        });
        assert!(
            ping(&pod.ns, "10.244.50.0", 2),
            "weft pod {} -> flannel node",
            pod.ip
        );
        assert!(
            ping(flannel_ns, &pod.ip, 2),
            "flannel node -> weft pod {}",
            pod.ip
        );
    }
    drop(pods);
}

#[test]
fn switching_between_vxlan_and_wireguard_leaves_nothing_behind() {
    let vxlan = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
    let mut w = WgCluster::new(2, vxlan);
    let device_names = |ns: &Netns| -> Vec<String> {
        let links: Value = serde_json::from_str(&ns.ip(&["-j", "link", "show"])).unwrap();
        links
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .filter(|n| n.starts_with("flannel"))
            .collect()
    };
    assert_eq!(device_names(&w.c.underlay.hosts[0].ns), vec!["flannel.1"]);
    for (config, want) in [(CONFIG, "flannel-wg"), (vxlan, "flannel.1")] {
        w.c.etcd.etcdctl(&["put", CONFIG_KEY, config]);
        for host in 0..2 {
            w.c.nodes[host].terminate();
        }
        for host in 0..2 {
            let i = w.start(host);
            w.c.nodes[i].wait_log("weftd is ready", LIMIT);
        }
        for host in 0..2 {
            wait_for(&format!("only {want} on node {host}"), LIMIT, || {
                (device_names(&w.c.underlay.hosts[host].ns) == vec![want.to_string()]).then_some(())
            });
            // Only the new backend's routes: the network route (wireguard) or the peer's.
            let routes = w.c.underlay.hosts[host]
                .ns
                .ip(&["route", "show", "proto", "91"]);
            assert!(
                routes.lines().all(|l| l.contains(want)),
                "node {host}: {routes}"
            );
        }
        wait_for("pods to talk after the switch", LIMIT, || {
            ping(&w.pods[0].ns, &w.pods[1].ip, 1).then_some(())
        });
        w.c.nodes.drain(..w.c.nodes.len() - 2);
    }
}
