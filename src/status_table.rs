//! The table `weftd status` prints for a `/debug/state` document: a head (the node, the
//! last pass, the peers counted by verdict), one row per peer, and where the page ends.

use crate::state_view::Verdict;
use crate::state_wire::{
    EntryDoc, LastPassDoc, NodeDoc, PageDoc, PeerDoc, StateDoc, SummaryDoc, WireguardDeviceDoc,
    WireguardPeerDoc,
};
use std::fmt::Write as _;

const HEADER: [&str; 4] = ["SUBNET", "PUBLIC IP", "VERDICT", "DETAIL"];

/// The whole table.
pub fn render(state: &StateDoc) -> String {
    let doc = match state {
        StateDoc::Starting(starting) => {
            let reason = starting.not_ready_reason.as_deref().unwrap_or("");
            return format!("weftd is starting: {reason}\n");
        }
        StateDoc::Running(doc) => doc,
    };
    let mut out = node_line(&doc.node);
    out.push_str(&last_pass_line(doc.last_pass.as_ref()));
    out.push_str(&summary_line(&doc.summary));
    let rows: Vec<[String; 4]> = doc.peers.iter().map(peer_row).collect();
    out.push_str(&table(&rows));
    out.push_str(&page_line(&doc.page));
    out
}

fn node_line(node: &NodeDoc) -> String {
    let ready = if node.ready {
        "ready".to_string()
    } else {
        let reason = node.not_ready_reason.as_deref().unwrap_or("");
        format!("NOT READY: {reason}")
    };
    let mut line = format!(
        "node {} ({}, {}): {ready}",
        node.subnet, node.backend, node.subnet_manager
    );
    if let Some(expires) = &node.lease_expires_at {
        let _ = write!(line, "; lease expires {expires}");
    }
    line.push('\n');
    if let Some(rules) = &node.traffic_rules {
        let _ = writeln!(line, "traffic rules: {rules}");
    }
    if let Some(offload) = &node.vxlan_tx_checksum {
        let _ = writeln!(line, "VXLAN TX checksum offload: {offload}");
    }
    if let Some(devices) = &node.wireguard {
        let _ = writeln!(line, "WireGuard: {}", wireguard_devices(devices));
    }
    line
}

fn last_pass_line(pass: Option<&LastPassDoc>) -> String {
    match pass {
        None => "no reconcile pass yet\n".to_string(),
        Some(p) => format!(
            "last pass {}s ago ({}): {} changes, {} failed, {} ms\n",
            p.seconds_ago, p.trigger, p.changes, p.failed_changes, p.duration_ms
        ),
    }
}

fn summary_line(summary: &SummaryDoc) -> String {
    let counts: Vec<String> = Verdict::ALL
        .iter()
        .map(|v| format!("{} {}", v.label(), summary.of(*v)))
        .collect();
    format!("peers: {} ({})\n", summary.peers, counts.join(", "))
}

fn peer_row(peer: &PeerDoc) -> [String; 4] {
    let detail: Vec<String> = peer
        .why
        .iter()
        .cloned()
        .chain(peer.entries.iter().map(entry_cell))
        .chain(peer.wireguard.iter().map(wireguard_cell))
        .collect();
    [
        peer.subnet.clone(),
        peer.public_ip.clone(),
        peer.verdict.clone(),
        detail.join("; "),
    ]
}

/// `flannel-wg: the kernel's WireGuard`, per device.
fn wireguard_devices(devices: &[WireguardDeviceDoc]) -> String {
    if devices.is_empty() {
        return "no device yet".to_string();
    }
    let described: Vec<String> = devices
        .iter()
        .map(|d| {
            let who = match d.implementation.as_str() {
                "kernel" => "the kernel's WireGuard",
                "userspace" => "a userspace WireGuard (TUN device, UAPI socket)",
                other => other,
            };
            format!("{}: {who}", d.device)
        })
        .collect();
    described.join(", ")
}

/// A WireGuard peer: `flannel-wg handshake 12s ago, rx 1.2 KiB, tx 3.4 KiB`.
fn wireguard_cell(p: &WireguardPeerDoc) -> String {
    let handshake = match p.latest_handshake_seconds_ago {
        Some(age) => format!("handshake {age}s ago"),
        None => "no handshake yet".to_string(),
    };
    format!(
        "{} {handshake}, rx {}, tx {}",
        p.device,
        bytes(p.rx_bytes),
        bytes(p.tx_bytes)
    )
}

/// Bytes as `wg show` prints them: B, KiB, MiB, GiB.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

/// One entry in the table: `route ok`, `route repaired 12s ago (found: missing)`, ...
fn entry_cell(e: &EntryDoc) -> String {
    let kind = &e.kind;
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    match e.state.as_str() {
        "repaired" => format!(
            "{kind} repaired {}s ago (found: {})",
            e.repaired_seconds_ago.unwrap_or(0),
            text(&e.found_before_repair)
        ),
        "missing" => format!("{kind} missing: {}", text(&e.error)),
        "withdrawn" => format!("{kind} withdrawn (foreign: {})", text(&e.observed)),
        state => format!("{kind} {state}"),
    }
}

/// The rows under a header, the first three columns padded to their widest cell.
fn table(rows: &[[String; 4]]) -> String {
    if rows.is_empty() {
        return "no peers to show\n".to_string();
    }
    let header = HEADER.map(String::from);
    let width = |i: usize| {
        rows.iter()
            .chain([&header])
            .map(|r| r[i].len())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let mut out = String::new();
    for row in [&header].into_iter().chain(rows) {
        let [subnet, ip, verdict, detail] = row;
        let _ = writeln!(out, "{subnet:w0$}  {ip:w1$}  {verdict:w2$}  {detail}");
    }
    out
}

/// `showing 1-100 of 5000; next page: --offset=100`, when the page has peers.
fn page_line(page: &PageDoc) -> String {
    if page.returned == 0 {
        return String::new();
    }
    let mut line = format!(
        "showing {}-{} of {}",
        page.offset + 1,
        page.offset + page.returned,
        page.matching
    );
    if page.only == "problems" {
        line.push_str(" peers with problems");
    }
    if let Some(next) = page.next_offset {
        let _ = write!(line, "; next page: --offset={next}");
    }
    line.push('\n');
    line
}
