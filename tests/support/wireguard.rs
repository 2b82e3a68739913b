//! WireGuard nodes for end-to-end tests. This machine's kernel has no WireGuard, so the
//! nodes use the userspace path: weftd runs `boringtun-cli` (see
//! `--wireguard-userspace`), which serves the devices on UAPI sockets in
//! /run/wireguard. That directory is the host's, shared by every network namespace: each
//! node gets its own mount namespace with a tmpfs there, held by a `sleep` process
//! (weftd and `wg` enter it with nsenter, so a restarted weftd finds the same sockets).

use super::cluster::{CONFIG_KEY, Cluster};
use super::netns::Netns;
use super::pods::Pod;
use super::wait_for;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const LIMIT: Duration = Duration::from_secs(30);
pub const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#;

/// The userspace implementation the tests use; `scripts/setup.sh` installs it.
pub fn boringtun() -> PathBuf {
    let found = ["/usr/local/bin/boringtun-cli"]
        .into_iter()
        .map(PathBuf::from)
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/boringtun-cli")))
        .find(|p| p.exists());
    found.expect(
        "boringtun-cli not found in /usr/local/bin or ~/.cargo/bin: the wireguard tests need \
         it (./scripts/setup.sh installs it: cargo install --locked boringtun-cli@0.7.1)",
    )
}

/// The `--wireguard-userspace` flag for weftd.
pub fn userspace_flag() -> String {
    format!(
        "--wireguard-userspace={} --disable-drop-privileges",
        boringtun().display()
    )
}

/// A node's own mount namespace with a private /run/wireguard.
pub struct NodeMounts {
    holder: Child,
    pub netns: String,
}

impl NodeMounts {
    pub fn new(netns: &Netns) -> NodeMounts {
        std::fs::create_dir_all("/run/wireguard").expect("/run/wireguard");
        let holder = Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns.name,
                "unshare",
                "--mount",
                "--propagation",
                "private",
            ])
            .args([
                "sh",
                "-c",
                "mount -t tmpfs -o size=1m,mode=0700 weft-test /run/wireguard && exec sleep 3600",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare");
        let mounts = NodeMounts {
            holder,
            netns: netns.name.clone(),
        };
        let mountinfo = format!("/proc/{}/mountinfo", mounts.holder.id());
        super::wait_for(
            "the node's /run/wireguard tmpfs",
            Duration::from_secs(5),
            || {
                std::fs::read_to_string(&mountinfo)
                    .ok()
                    .filter(|m| m.contains(" /run/wireguard ") && m.contains("weft-test"))
            },
        );
        mounts
    }

    /// `nsenter` into the node's mount and network namespaces. Entering a mount
    /// namespace resets the root directory to the namespace's own: `--root` and `--wd`
    /// keep the holder's (the test's), so that paths mean the same inside a chroot too
    /// (`scripts/fresh-machine-check.sh` runs the suite in one).
    pub fn launcher(&self) -> Vec<String> {
        vec![
            "nsenter".into(),
            format!("--target={}", self.holder.id()),
            "--mount".into(),
            "--net".into(),
            "--root".into(),
            "--wd".into(),
            "--".into(),
        ]
    }

    /// Runs a command in the node (its mount and network namespaces).
    pub fn exec(&self, args: &[&str]) -> Output {
        let launcher = self.launcher();
        Command::new(&launcher[0])
            .args(&launcher[1..])
            .args(args)
            .output()
            .expect("nsenter")
    }

    /// `wg show <device> dump`: (public key, endpoint, allowed ips, latest handshake)
    /// per peer; empty when the device does not answer.
    pub fn wg_peers(&self, device: &str) -> Vec<WgPeer> {
        let output = self.exec(&["wg", "show", device, "dump"]);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .skip(1)
            .filter_map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                (f.len() >= 8).then(|| WgPeer {
                    public_key: f[0].to_string(),
                    endpoint: f[2].to_string(),
                    allowed_ips: f[3].to_string(),
                    latest_handshake: f[4].parse().unwrap_or(0),
                    keepalive: f[7].to_string(),
                })
            })
            .collect()
    }

    /// The device's public key, in base64. Asked on its UAPI socket (through the
    /// holder's view of the node's mounts): `wg show <device> public-key` prints
    /// `(none)` for boringtun, which answers its public key, not its private one.
    pub fn wg_public_key(&self, device: &str) -> String {
        use std::io::{Read, Write};
        let path = format!(
            "/proc/{}/root/run/wireguard/{device}.sock",
            self.holder.id()
        );
        let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&path) else {
            return String::new();
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = stream.write_all(b"get=1\n\n");
        let mut answer = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            answer.push_str(&String::from_utf8_lossy(&buf[..n]));
            if answer.contains("errno=") {
                break;
            }
        }
        answer
            .lines()
            .find_map(|l| l.strip_prefix("own_public_key="))
            .and_then(weft_backend::tunnel::key::from_hex)
            .map(|k| weft_backend::tunnel::key::PublicKey(k).to_base64())
            .unwrap_or_default()
    }
}

impl NodeMounts {
    /// Runs a command in the node, asserting success; its output, trimmed.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A new key pair, (private, public), from `wg genkey` and `wg pubkey`.
    pub fn wg_keypair(&self) -> (String, String) {
        use std::io::Write;
        let private = self.run(&["wg", "genkey"]);
        let launcher = self.launcher();
        let mut child = Command::new(&launcher[0])
            .args(&launcher[1..])
            .args(["wg", "pubkey"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("wg pubkey");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(private.as_bytes())
            .expect("write the key");
        let out = child.wait_with_output().expect("wg pubkey");
        let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (private, public)
    }

    /// `flannel-wg` set up by hand as flanneld sets it up (flannel.md §11): boringtun's
    /// device, the key from `key_file`, port 51820, `address` (the subnet's /32), MTU
    /// 1420, the network's scope-link route, and `peers` as (public key, endpoint,
    /// allowed IPs).
    pub fn hand_device(
        &self,
        key_file: &std::path::Path,
        address: &str,
        peers: &[(&str, &str, &str)],
    ) {
        let boringtun = boringtun();
        self.run(&[
            boringtun.to_str().unwrap(),
            "--disable-drop-privileges",
            "flannel-wg",
        ]);
        let key_file = key_file.to_str().unwrap();
        self.run(&[
            "wg",
            "set",
            "flannel-wg",
            "private-key",
            key_file,
            "listen-port",
            "51820",
        ]);
        for (key, endpoint, allowed) in peers {
            self.run(&[
                "wg",
                "set",
                "flannel-wg",
                "peer",
                key,
                "endpoint",
                endpoint,
                "allowed-ips",
                allowed,
            ]);
        }
        self.run(&["ip", "addr", "add", address, "dev", "flannel-wg"]);
        self.run(&["ip", "link", "set", "flannel-wg", "mtu", "1420", "up"]);
        self.run(&[
            "ip",
            "route",
            "add",
            "10.244.0.0/16",
            "dev",
            "flannel-wg",
            "scope",
            "link",
        ]);
    }
}

impl Drop for NodeMounts {
    fn drop(&mut self) {
        // The userspace devices' processes live in the node's network namespace, which
        // `Netns` empties on drop; the holder goes here, and the tmpfs with it.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// One peer as `wg show dump` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeer {
    pub public_key: String,
    pub endpoint: String,
    pub allowed_ips: String,
    pub latest_handshake: u64,
    pub keepalive: String,
}

/// A running wireguard cluster in etcd mode: one weftd and one pod per node.
pub struct WgCluster {
    pub pods: Vec<Pod>,
    pub mounts: Vec<NodeMounts>,
    pub c: Cluster,
}

impl WgCluster {
    pub fn new(nodes: usize, config: &str) -> WgCluster {
        let c = Cluster::new(nodes, true);
        c.etcd.etcdctl(&["put", CONFIG_KEY, config]);
        let mounts: Vec<NodeMounts> = (0..nodes)
            .map(|h| NodeMounts::new(&c.underlay.hosts[h].ns))
            .collect();
        let mut w = WgCluster {
            pods: Vec::new(),
            mounts,
            c,
        };
        for host in 0..nodes {
            w.start(host);
        }
        w.pods = w.c.pods_when_ready(nodes, LIMIT);
        if config.contains("wireguard") {
            w.wait_peers(nodes - 1);
        }
        w.wait_talking();
        w
    }

    /// Every pod reaches every other (the sessions are up: a first packet may wait for a
    /// handshake, which a loaded machine can stretch past ping's timeout).
    pub fn wait_talking(&self) {
        for from in &self.pods {
            for to in &self.pods {
                if from.ip != to.ip {
                    wait_for(&format!("{} to reach {}", from.ip, to.ip), LIMIT, || {
                        super::pods::ping(&from.ns, &to.ip, 1).then_some(())
                    });
                }
            }
        }
    }

    pub fn key_file(&self, host: usize) -> PathBuf {
        self.c.node_dir(host).join("wgkey")
    }

    /// Starts (again) node `host`'s weftd; returns its index in `c.nodes`.
    pub fn start(&mut self, host: usize) -> usize {
        let launcher = self.mounts[host].launcher();
        let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
        let key = format!("{}", self.key_file(host).display());
        let userspace = userspace_flag();
        self.c.start_via(
            host,
            &launcher,
            &["--reconcile-interval=2", &userspace],
            &[("WIREGUARD_KEY_FILE", &key)],
        )
    }

    /// Every node's flannel-wg has `peers` peers, each with a handshake-able endpoint.
    pub fn wait_peers(&self, peers: usize) {
        for (host, mounts) in self.mounts.iter().enumerate() {
            wait_for(
                &format!("{peers} WireGuard peers on node {host}"),
                LIMIT,
                || (mounts.wg_peers("flannel-wg").len() == peers).then_some(()),
            );
        }
    }

    pub fn lease(&self, host: usize) -> Value {
        let ip = &self.c.underlay.hosts[host].ip;
        self.c
            .subnets_in_etcd()
            .into_iter()
            .map(|(_, v)| serde_json::from_str::<Value>(&v).unwrap())
            .find(|v| v["PublicIP"] == ip.as_str())
            .unwrap_or_else(|| panic!("no lease of {ip}"))
    }
}
