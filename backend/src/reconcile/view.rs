//! What the reconciler knows about each peer, as plain values: the entries it wants for
//! the peer, what the last pass found, and a verdict. The daemon renders these for
//! `/debug/state` and `weftd status`; the verdicts are described there.

use super::drift::{ChangeKind, EntryState};
use std::time::{Duration, SystemTime};
use weft_lease::SubnetKey;

/// How long a repair keeps a peer's verdict at `repaired` (then `ok`, with the time of
/// the last repair still shown).
pub const REPAIRED_SHOWN_FOR: Duration = Duration::from_secs(600);
/// A peer's verdict, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Ok,
    Repaired,
    Pending,
    Withdrawn,
    Missing,
    Skipped,
    Rejected,
}

impl Verdict {
    pub const ALL: [Verdict; 7] = [
        Verdict::Ok,
        Verdict::Repaired,
        Verdict::Pending,
        Verdict::Withdrawn,
        Verdict::Missing,
        Verdict::Skipped,
        Verdict::Rejected,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Repaired => "repaired",
            Verdict::Pending => "pending",
            Verdict::Withdrawn => "withdrawn",
            Verdict::Missing => "missing",
            Verdict::Skipped => "skipped",
            Verdict::Rejected => "rejected",
        }
    }
}

/// One kernel entry weft wants for a peer, and its state as of the last pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryView {
    pub kind: ChangeKind,
    pub desired: String,
    pub state: EntryState,
    /// The foreign route that holds the prefix, when the route is withdrawn.
    pub withdrawn_by: Option<String>,
}

/// One peer in the state view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    pub key: SubnetKey,
    pub public_ip: String,
    pub backend_type: String,
    pub verdict: Verdict,
    /// Why it is skipped or rejected.
    pub why: Vec<String>,
    pub entries: Vec<EntryView>,
    pub last_repair: Option<SystemTime>,
    /// The WireGuard peers carrying its subnets (the wireguard backend, with detail).
    pub tunnel: Vec<super::tunnels::TunnelPeerView>,
}

impl EntryView {
    /// An entry no foreign route withdraws.
    pub fn new(kind: ChangeKind, desired: impl Into<String>, state: EntryState) -> EntryView {
        EntryView {
            kind,
            desired: desired.into(),
            state,
            withdrawn_by: None,
        }
    }
}

impl PeerView {
    /// The verdict of a peer from its entries (not skipped or rejected).
    pub fn verdict_of(entries: &[EntryView], now: SystemTime) -> Verdict {
        entries
            .iter()
            .map(|e| match (&e.state, &e.withdrawn_by) {
                (_, Some(_)) => Verdict::Withdrawn,
                (EntryState::Missing { .. }, _) => Verdict::Missing,
                (EntryState::Pending, _) => Verdict::Pending,
                (EntryState::Repaired { at, .. }, _) if recent(*at, now) => Verdict::Repaired,
                _ => Verdict::Ok,
            })
            .max()
            .unwrap_or(Verdict::Ok)
    }
}

fn recent(at: SystemTime, now: SystemTime) -> bool {
    now.duration_since(at).unwrap_or_default() < REPAIRED_SHOWN_FOR
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn entry(kind: ChangeKind, desired: &str, state: EntryState) -> EntryView {
        EntryView::new(kind, desired, state)
    }

    #[test]
    fn verdicts_take_the_worst_entry_and_repairs_fade_to_ok() {
        let ok = entry(ChangeKind::Fdb, "x", EntryState::Ok);
        let repaired = entry(
            ChangeKind::Route,
            "r",
            EntryState::Repaired {
                at: at(1000),
                found: "missing".into(),
            },
        );
        let now = at(1010);
        assert_eq!(
            PeerView::verdict_of(&[ok.clone(), repaired.clone()], now),
            Verdict::Repaired
        );
        let later = at(1000) + REPAIRED_SHOWN_FOR;
        assert_eq!(
            PeerView::verdict_of(&[ok.clone(), repaired.clone()], later),
            Verdict::Ok
        );
        let missing = entry(
            ChangeKind::Neighbour,
            "n",
            EntryState::Missing {
                at: at(1000),
                found: "missing".into(),
                error: "No such device".into(),
            },
        );
        assert_eq!(
            PeerView::verdict_of(&[repaired, missing, ok], now),
            Verdict::Missing
        );
        assert_eq!(PeerView::verdict_of(&[], now), Verdict::Ok);
        let mut withdrawn = entry(ChangeKind::Route, "r", EntryState::Pending);
        withdrawn.withdrawn_by = Some("10.244.2.0/24 dev eth0 proto static".into());
        assert_eq!(PeerView::verdict_of(&[withdrawn], now), Verdict::Withdrawn);
    }
}
