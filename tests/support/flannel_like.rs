//! A stand-in for flanneld in migration tests. It programs exactly flannel's kernel shape
//! (flannel.md §9: `flannel.1` with VNI 1, port 8472, nolearning, MTU 1450, the subnet's
//! /32; per peer a permanent neighbour, a `self permanent` FDB entry and an onlink route
//! with the default route protocol, no weft mark), writes flannel's lease JSON on a 24 h
//! etcd lease (or flannel's Node annotations) and flannel's subnet.env.

use super::etcd::EtcdServer;
use super::netns::Netns;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com/";

/// One node as flannel would lease it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlannelNode {
    /// e.g. 10.244.5.0/24
    pub subnet: String,
    pub public_ip: String,
    pub mac: String,
}

impl FlannelNode {
    pub fn new(index: u8, public_ip: &str) -> FlannelNode {
        FlannelNode {
            subnet: format!("10.244.{}.0/24", 40 + index),
            public_ip: public_ip.to_string(),
            mac: format!("0a:58:0a:f4:{:02x}:00", 40 + index),
        }
    }

    /// The subnet's network address (the vxlan gateway and neighbour IP).
    pub fn network(&self) -> &str {
        self.subnet.split('/').next().unwrap_or_default()
    }

    pub fn etcd_key(&self) -> String {
        format!(
            "/coreos.com/network/subnets/{}",
            self.subnet.replace('/', "-")
        )
    }

    /// flannel's LeaseAttrs JSON, byte for byte.
    pub fn lease_json(&self) -> String {
        format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            self.public_ip, self.mac
        )
    }

    /// flannel's annotations on its Node (kube mode).
    pub fn annotations(&self) -> Value {
        json!({
            format!("{ANNOTATION_PREFIX}backend-data"): format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, self.mac),
            format!("{ANNOTATION_PREFIX}backend-type"): "vxlan",
            format!("{ANNOTATION_PREFIX}kube-subnet-manager"): "true",
            format!("{ANNOTATION_PREFIX}public-ip"): self.public_ip,
        })
    }

    /// Publishes the lease as flanneld does: a 24 h etcd lease, then the key on it.
    pub fn publish(&self, etcd: &EtcdServer) {
        let granted = etcd.etcdctl(&["lease", "grant", "86400"]);
        // "lease 694d7a3b9c2c4e05 granted with TTL(86400s)"
        let id = granted
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("unexpected lease grant output: {granted}"));
        etcd.etcdctl(&[
            "put",
            &self.etcd_key(),
            &self.lease_json(),
            &format!("--lease={id}"),
        ]);
    }

    /// flannel's subnet.env for this node.
    pub fn write_subnet_env(&self, path: &Path) {
        let host = self
            .network()
            .rsplit_once('.')
            .map(|(a, _)| a)
            .unwrap_or("");
        let text = format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={host}.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Programs this node's device and the entries for `peers`, as flanneld does (its
    /// netlink calls, written as the equivalent iproute2 commands). Idempotent.
    pub fn program(&self, ns: &Netns, peers: &[&FlannelNode]) {
        if !ns
            .exec(&["ip", "link", "show", "flannel.1"])
            .status
            .success()
        {
            ns.ip(&[
                "link",
                "add",
                "flannel.1",
                "type",
                "vxlan",
                "id",
                "1",
                "local",
                &self.public_ip,
                "dev",
                "eth0",
                "dstport",
                "8472",
                "nolearning",
            ]);
            ns.ip(&[
                "link",
                "set",
                "flannel.1",
                "address",
                &self.mac,
                "mtu",
                "1450",
            ]);
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/32", self.network()),
                "dev",
                "flannel.1",
            ]);
            ns.ip(&["link", "set", "flannel.1", "up"]);
        }
        for peer in peers {
            ns.ip(&[
                "neigh",
                "replace",
                peer.network(),
                "lladdr",
                &peer.mac,
                "dev",
                "flannel.1",
                "nud",
                "permanent",
            ]);
            let out = ns.exec(&[
                "bridge",
                "fdb",
                "replace",
                &peer.mac,
                "dev",
                "flannel.1",
                "dst",
                &peer.public_ip,
                "self",
                "permanent",
            ]);
            assert!(out.status.success(), "bridge fdb replace: {out:?}");
            ns.ip(&[
                "route",
                "replace",
                &peer.subnet,
                "via",
                peer.network(),
                "dev",
                "flannel.1",
                "onlink",
            ]);
        }
    }
}

/// A ping at 100 packets/s from a pod namespace, counted by ping itself.
pub struct FastPing {
    child: Child,
    pub target: String,
}

impl FastPing {
    pub fn start(from: &Netns, target: &str) -> FastPing {
        // -w bounds it whatever happens to the test.
        let child = Command::new("ip")
            .args([
                "netns", "exec", &from.name, "ping", "-i", "0.01", "-W", "1", "-w", "600", "-q",
                target,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ping");
        FastPing {
            child,
            target: target.to_string(),
        }
    }

    /// Stops the ping (SIGINT, so it prints its statistics); returns (sent, received).
    pub fn stop(mut self) -> (u64, u64) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let output =
            std::mem::replace(&mut self.child, Command::new("true").spawn().expect("true"))
                .wait_with_output()
                .expect("ping output");
        let text = String::from_utf8_lossy(&output.stdout);
        // "1234 packets transmitted, 1234 received, 0% packet loss, time 12345ms"
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping statistics: {text}"));
        let numbers: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .take(2)
            .map(|s| s.parse().unwrap())
            .collect();
        (numbers[0], numbers[1])
    }
}

impl Drop for FastPing {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
