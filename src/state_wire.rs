//! The JSON of `/debug/state`, as one set of types with serde on both ends: the event
//! loop builds a [`StateDoc`] from its [`StateView`], the health server serializes it, and
//! `weftd status` deserializes the same type to print its table (`status_table`). A field
//! renamed or retyped here changes both ends at once.
//!
//! The shape is the documented one (README, "weftd status and /debug/state"): a running
//! node's document, or a starting node's, which has nothing but the readiness reason.

use crate::state_view::{EntryView, LastPass, NodeView, PeerView, StateView, Verdict};
use serde::{Deserialize, Serialize};
use std::time::SystemTime;
use weft_backend::reconcile::drift::EntryState;
use weft_backend::reconcile::tunnels::TunnelPeerView;
use weft_subnet::SubnetKey;

/// `/debug/state`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StateDoc {
    Running(Box<RunningDoc>),
    Starting(StartingDoc),
}

/// A node that holds a subnet: itself, the last pass, every peer counted by verdict, and
/// one page of peers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningDoc {
    pub node: NodeDoc,
    pub last_pass: Option<LastPassDoc>,
    pub summary: SummaryDoc,
    pub page: PageDoc,
    pub peers: Vec<PeerDoc>,
}

/// A node that holds no subnet yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartingDoc {
    /// Always `null`: a starting node has nothing to describe yet.
    pub node: Option<Box<NodeDoc>>,
    pub starting: bool,
    pub not_ready_reason: Option<String>,
    pub peers: Vec<PeerDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeDoc {
    pub subnet: String,
    pub backend: String,
    pub subnet_manager: String,
    pub lease_expires_at: Option<String>,
    pub ready: bool,
    pub not_ready_reason: Option<String>,
    /// Where the traffic rules live: nftables, or which iptables and why.
    #[serde(default)]
    pub traffic_rules: Option<String>,
    /// The VXLAN devices' TX checksum offload (`tx-checksum-ip-generic`), and why.
    #[serde(default)]
    pub vxlan_tx_checksum: Option<String>,
    /// The WireGuard devices and which implementation serves each (the wireguard
    /// backend only).
    #[serde(default)]
    pub wireguard: Option<Vec<WireguardDeviceDoc>>,
}

/// One of weft's WireGuard devices, and who serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireguardDeviceDoc {
    pub device: String,
    /// `kernel`, or `userspace` (a TUN device with a UAPI socket).
    pub implementation: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastPassDoc {
    pub at: Option<String>,
    pub seconds_ago: u64,
    pub trigger: String,
    pub changes: u64,
    pub failed_changes: u64,
    pub duration_ms: f64,
}

/// Every peer, counted by verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryDoc {
    pub peers: u64,
    pub ok: u64,
    pub repaired: u64,
    pub pending: u64,
    pub withdrawn: u64,
    pub missing: u64,
    pub skipped: u64,
    pub rejected: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageDoc {
    pub offset: u64,
    pub limit: u64,
    /// `all` or `problems`.
    pub only: String,
    pub matching: u64,
    pub returned: u64,
    pub next_offset: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerDoc {
    pub subnet: String,
    pub public_ip: String,
    pub backend_type: String,
    /// A [`Verdict`] label.
    pub verdict: String,
    pub why: Vec<String>,
    pub last_repair_at: Option<String>,
    pub entries: Vec<EntryDoc>,
    /// The WireGuard peers carrying its subnets, as `wg show` reports them (the
    /// wireguard backend; as of the last full pass).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wireguard: Vec<WireguardPeerDoc>,
}

/// One WireGuard peer (never a key but the public one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireguardPeerDoc {
    pub device: String,
    pub public_key: String,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// `null`: no handshake yet (WireGuard reports zero).
    pub latest_handshake_at: Option<String>,
    pub latest_handshake_seconds_ago: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl WireguardPeerDoc {
    fn new(peer: &TunnelPeerView, now: SystemTime) -> WireguardPeerDoc {
        WireguardPeerDoc {
            device: peer.device.clone(),
            public_key: peer.public_key.to_base64(),
            endpoint: peer.endpoint.map(|e| e.to_string()),
            allowed_ips: peer.allowed_ips.iter().map(ToString::to_string).collect(),
            latest_handshake_at: peer.last_handshake.and_then(timestamp),
            latest_handshake_seconds_ago: peer
                .last_handshake
                .map(|t| now.duration_since(t).map_or(0, |d| d.as_secs())),
            rx_bytes: peer.rx_bytes,
            tx_bytes: peer.tx_bytes,
        }
    }
}

/// One kernel entry weft wants for a peer, and what the last pass found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryDoc {
    /// `route`, `neighbour`, `fdb`, ...
    pub kind: String,
    pub desired: String,
    /// `ok`, `repaired`, `missing`, `withdrawn` or `pending`.
    pub state: String,
    /// What the kernel holds (`null` while pending).
    pub observed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repaired_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repaired_seconds_ago: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found_before_repair: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StateDoc {
    /// The document of a page of the view.
    pub fn from_view(view: &StateView, now: SystemTime) -> StateDoc {
        let end = view.query.offset + view.peers.len();
        StateDoc::Running(Box::new(RunningDoc {
            node: NodeDoc::from_view(&view.node),
            last_pass: view
                .node
                .last_pass
                .as_ref()
                .map(|p| LastPassDoc::new(p, now)),
            summary: SummaryDoc::count(&view.summary),
            page: PageDoc {
                offset: view.query.offset as u64,
                limit: view.query.limit as u64,
                only: if view.query.problems_only {
                    "problems"
                } else {
                    "all"
                }
                .to_string(),
                matching: view.matching as u64,
                returned: view.peers.len() as u64,
                next_offset: (end < view.matching).then_some(end as u64),
            },
            peers: view.peers.iter().map(|p| PeerDoc::new(p, now)).collect(),
        }))
    }

    /// The document of a node that holds no subnet yet.
    pub fn starting(ready: &Result<(), String>) -> StateDoc {
        StateDoc::Starting(StartingDoc {
            node: None,
            starting: true,
            not_ready_reason: ready.as_ref().err().cloned(),
            peers: Vec::new(),
        })
    }

    /// Whether the node is ready and every peer is `ok` or `repaired`.
    pub fn healthy(&self) -> bool {
        match self {
            StateDoc::Running(doc) => {
                let s = &doc.summary;
                doc.node.ready && s.peers == s.ok + s.repaired
            }
            StateDoc::Starting(_) => false,
        }
    }
}

impl NodeDoc {
    fn from_view(node: &NodeView) -> NodeDoc {
        NodeDoc {
            subnet: subnet_text(&node.subnet),
            backend: node.backend.clone(),
            subnet_manager: node.subnet_manager.clone(),
            lease_expires_at: node.lease_expires.and_then(timestamp),
            ready: node.ready.is_ok(),
            not_ready_reason: node.ready.as_ref().err().cloned(),
            traffic_rules: node.traffic_rules.clone(),
            vxlan_tx_checksum: node.vxlan_tx_checksum.clone(),
            wireguard: node.wireguard.as_ref().map(|devices| {
                devices
                    .iter()
                    .map(|(device, implementation)| WireguardDeviceDoc {
                        device: device.clone(),
                        implementation: implementation.label().to_string(),
                    })
                    .collect()
            }),
        }
    }
}

impl LastPassDoc {
    fn new(pass: &LastPass, now: SystemTime) -> LastPassDoc {
        LastPassDoc {
            at: timestamp(pass.at),
            seconds_ago: ago(pass.at, now),
            trigger: pass.trigger.to_string(),
            changes: pass.changes,
            failed_changes: pass.failed,
            // Tenths of a millisecond: enough to tell passes apart, short to read.
            duration_ms: (pass.duration.as_secs_f64() * 1e4).round() / 10.0,
        }
    }
}

impl SummaryDoc {
    fn count(summary: &[(Verdict, usize)]) -> SummaryDoc {
        let mut doc = SummaryDoc::default();
        for &(verdict, n) in summary {
            let n = n as u64;
            doc.peers += n;
            *doc.slot(verdict) += n;
        }
        doc
    }

    fn slot(&mut self, verdict: Verdict) -> &mut u64 {
        match verdict {
            Verdict::Ok => &mut self.ok,
            Verdict::Repaired => &mut self.repaired,
            Verdict::Pending => &mut self.pending,
            Verdict::Withdrawn => &mut self.withdrawn,
            Verdict::Missing => &mut self.missing,
            Verdict::Skipped => &mut self.skipped,
            Verdict::Rejected => &mut self.rejected,
        }
    }

    /// The count of one verdict.
    pub fn of(&self, verdict: Verdict) -> u64 {
        match verdict {
            Verdict::Ok => self.ok,
            Verdict::Repaired => self.repaired,
            Verdict::Pending => self.pending,
            Verdict::Withdrawn => self.withdrawn,
            Verdict::Missing => self.missing,
            Verdict::Skipped => self.skipped,
            Verdict::Rejected => self.rejected,
        }
    }
}

impl PeerDoc {
    fn new(peer: &PeerView, now: SystemTime) -> PeerDoc {
        PeerDoc {
            subnet: subnet_text(&peer.key),
            public_ip: peer.public_ip.clone(),
            backend_type: peer.backend_type.clone(),
            verdict: peer.verdict.label().to_string(),
            why: peer.why.clone(),
            last_repair_at: peer.last_repair.and_then(timestamp),
            entries: peer.entries.iter().map(|e| EntryDoc::new(e, now)).collect(),
            wireguard: peer
                .tunnel
                .iter()
                .map(|t| WireguardPeerDoc::new(t, now))
                .collect(),
        }
    }
}

impl EntryDoc {
    fn new(entry: &EntryView, now: SystemTime) -> EntryDoc {
        let mut doc = EntryDoc {
            kind: entry.kind.label().to_string(),
            desired: entry.desired.clone(),
            state: String::new(),
            observed: None,
            repaired_at: None,
            repaired_seconds_ago: None,
            found_before_repair: None,
            failed_at: None,
            error: None,
        };
        if let Some(foreign) = &entry.withdrawn_by {
            doc.state = "withdrawn".into();
            doc.observed = Some(foreign.clone());
            return doc;
        }
        match &entry.state {
            EntryState::Ok => {
                doc.state = "ok".into();
                doc.observed = Some(entry.desired.clone());
            }
            EntryState::Repaired { at, found } => {
                doc.state = "repaired".into();
                doc.observed = Some(entry.desired.clone());
                doc.repaired_at = timestamp(*at);
                doc.repaired_seconds_ago = Some(ago(*at, now));
                doc.found_before_repair = Some(found.clone());
            }
            EntryState::Missing { at, found, error } => {
                doc.state = "missing".into();
                doc.observed = Some(found.clone());
                doc.failed_at = timestamp(*at);
                doc.error = Some(error.clone());
            }
            EntryState::Pending => doc.state = "pending".into(),
        }
        doc
    }
}

/// A subnet key as a person writes it: `10.244.1.0/24`, or `10.244.1.0/24,fc00::/64`.
pub fn subnet_text(key: &SubnetKey) -> String {
    [key.ipv4, key.ipv6]
        .into_iter()
        .flatten()
        .map(|net| net.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// RFC 3339, UTC, whole seconds.
fn timestamp(at: SystemTime) -> Option<String> {
    let seconds = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    k8s_openapi::jiff::Timestamp::from_second(seconds as i64)
        .ok()
        .map(|t| t.to_string())
}

fn ago(at: SystemTime, now: SystemTime) -> u64 {
    now.duration_since(at).unwrap_or_default().as_secs()
}
