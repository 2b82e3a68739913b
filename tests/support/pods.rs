//! Pods created the way kubelet creates them: weft's CNI plugin (run inside the node's
//! namespace) delegating to the real `bridge` and `host-local` plugins in /usr/lib/cni.

use super::netns::Netns;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Pod {
    pub ns: Netns,
    /// The first address (IPv4 when the pod has one).
    pub ip: String,
    /// Every address, in the CNI result's order.
    pub ips: Vec<String>,
}

impl Pod {
    pub fn ipv6(&self) -> Option<&str> {
        self.ips
            .iter()
            .map(String::as_str)
            .find(|ip| ip.contains(':'))
    }
}

/// The CNI plugin binary, built by the workspace next to weftd.
pub fn cni_plugin() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_weftd")).with_file_name("weft");
    assert!(
        path.exists(),
        "{} is missing: build the workspace (cargo build --workspace)",
        path.display()
    );
    path
}

/// Runs the CNI plugin in `node` for `pod` and returns its stdout.
fn cni(node: &Netns, command: &str, pod: &str, node_dir: &Path) -> Result<String, String> {
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "flannel",
        "subnetFile": node_dir.join("subnet.env"),
        "dataDir": node_dir.join("cni-data"),
        // weftd masquerades (--ip-masq) or nothing does: keep the bridge plugin from it,
        // as flannel's CNI plugin does when FLANNEL_IPMASQ=true.
        "delegate": {"hairpinMode": true, "isDefaultGateway": true, "ipMasq": false},
        "ipam": {"dataDir": node_dir.join("ipam")},
    });
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.name])
        .arg(cni_plugin())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", pod)
        .env("CNI_NETNS", format!("/var/run/netns/{pod}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the CNI plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(config.to_string().as_bytes())
        .expect("write config");
    let output = child.wait_with_output().expect("CNI plugin output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Creates a pod namespace on `node` through CNI ADD.
pub fn add_pod(node: &Netns, name: &str, node_dir: &Path) -> Pod {
    let ns = Netns::new(name);
    let result = cni(node, "ADD", name, node_dir)
        .unwrap_or_else(|e| panic!("CNI ADD for {name} failed: {e}"));
    let result: serde_json::Value = serde_json::from_str(&result).expect("CNI result JSON");
    let ips: Vec<String> = result["ips"]
        .as_array()
        .expect("ips in the CNI result")
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .map(|a| a.split('/').next().unwrap_or(a).to_string())
        .collect();
    let ip = ips
        .iter()
        .find(|ip| !ip.contains(':'))
        .or(ips.first())
        .expect("an IP in the CNI result")
        .clone();
    Pod { ns, ip, ips }
}

/// `ping` from inside a namespace; returns whether all `count` replies came back.
pub fn ping(from: &Netns, to: &str, count: u32) -> bool {
    let family = if to.contains(':') { "-6" } else { "-4" };
    let output = from.exec(&[
        "ping",
        family,
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "1",
        "-q",
        to,
    ]);
    output.status.success()
        && String::from_utf8_lossy(&output.stdout).contains(&format!("{count} received"))
}

/// Opens a TCP connection from `client` to `server_ip:port` in `server` and returns the
/// source address the server saw.
pub fn tcp_source_seen(server: &Netns, server_ip: &str, client: &Netns, port: u16) -> String {
    let ip: std::net::IpAddr = server_ip.parse().expect("server IP");
    let address = std::net::SocketAddr::new(ip, port).to_string();
    let listener_ns = server.name.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let accept = std::thread::spawn({
        let address = address.clone();
        move || {
            super::netns::run_in(&listener_ns, move || {
                let listener = std::net::TcpListener::bind(&address).expect("listen in pod");
                ready_tx.send(()).expect("ready");
                listener.set_nonblocking(true).expect("nonblocking");
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                loop {
                    match listener.accept() {
                        Ok((_, peer)) => return peer.ip().to_string(),
                        Err(_) if std::time::Instant::now() < deadline => {
                            std::thread::sleep(std::time::Duration::from_millis(10))
                        }
                        Err(e) => panic!("no TCP connection arrived within 10 s: {e}"),
                    }
                }
            })
        }
    });
    ready_rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("listener ready");
    let client_ns = client.name.clone();
    super::netns::run_in(&client_ns, move || {
        let addr: std::net::SocketAddr = address.parse().expect("address");
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
            .expect("connect across nodes");
    });
    accept.join().expect("accept thread")
}

/// Sends UDP datagrams from `client` to `server_ip:port` in `server` (10, 100 ms apart)
/// and returns the source address the first one arrived with; `None` if none arrived
/// within 5 s. Needs no reply, so it also sees traffic that cannot be answered.
pub fn udp_source_seen(
    server: &Netns,
    server_ip: &str,
    client: &Netns,
    port: u16,
) -> Option<String> {
    let ip: std::net::IpAddr = server_ip.parse().expect("server IP");
    let address = std::net::SocketAddr::new(ip, port);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let listener_ns = server.name.clone();
    let receive = std::thread::spawn(move || {
        super::netns::run_in(&listener_ns, move || {
            let socket = std::net::UdpSocket::bind(address).expect("bind UDP");
            socket
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("timeout");
            ready_tx.send(()).expect("ready");
            let mut buf = [0u8; 64];
            socket
                .recv_from(&mut buf)
                .ok()
                .map(|(_, from)| from.ip().to_string())
        })
    });
    ready_rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("UDP listener ready");
    let client_ns = client.name.clone();
    let sender = std::thread::spawn(move || {
        super::netns::run_in(&client_ns, move || {
            let any = if address.is_ipv6() {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let socket = std::net::UdpSocket::bind(any).expect("client socket");
            for _ in 0..10 {
                let _ = socket.send_to(b"weft", address);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
    });
    let seen = receive.join().expect("receive thread");
    sender.join().expect("send thread");
    seen
}

/// TCP throughput from `client` to `server_ip` in `server`, in Gbit/s: `iperf3 -t 5 -O 1`
/// (needs iperf3; `scripts/bench.sh` installs it).
pub fn iperf_gbits(server: &Netns, server_ip: &str, client: &Netns) -> f64 {
    let mut daemon = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &server.name,
            "iperf3",
            "-s",
            "-1",
            "-B",
            server_ip,
            "-p",
            "5201",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 (apt-get install iperf3)");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = client.exec(&[
        "iperf3", "-c", server_ip, "-p", "5201", "-t", "5", "-O", "1", "-J",
    ]);
    let _ = daemon.wait();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
        / 1e9
}
