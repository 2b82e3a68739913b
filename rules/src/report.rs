//! What one rules check did, as the daemon logs and counts it.

/// What one check did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Whether the rules were read: the nftables generation moved, the wanted rules
    /// changed, or nothing tells cheaply whether they changed (iptables-legacy).
    pub read: bool,
    /// Child processes spawned.
    pub processes: u32,
    /// What was changed: one line per chain or table.
    pub repaired: Vec<String>,
    /// Problems removing the other mode's leftovers (best effort, as in flannel).
    pub cleanup_errors: Vec<String>,
    /// At the first check: which iptables holds the rules, and why (e.g.
    /// `iptables-legacy v1.8.9 (Legacy): kubelet's chains are in iptables-legacy ...`).
    pub iptables: Option<String>,
}
