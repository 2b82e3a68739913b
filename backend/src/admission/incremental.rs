//! Incremental admission: a lease batch re-judges only the peers whose verdict can
//! change, and the verdicts equal those of a full admission of the whole set
//! ([`Admission::admit`]) run at the same point (checked by `tests/prop_admission.rs`).
//!
//! Why it is exact. A full pass judges peers one by one in its order (accepted by the
//! last pass first, then by revision, then key); a peer's verdict depends on this node
//! and on the claims (subnets, VTEP MACs) of the peers accepted before it, and a peer
//! reads and writes only the claims under its own subnets and MACs. Link two peers that
//! share a subnet or a MAC: peers of different connected groups touch disjoint claims,
//! so the full pass gives each group what judging that group alone, in the same order,
//! gives. A group whose peers' leases are unchanged and none of whose peers changed
//! acceptance in the last pass (so its order is unchanged) keeps its verdicts. So a pass
//! re-judges, in full admission's order, every group that holds a changed peer, a peer
//! that shared a subnet or MAC with a changed or removed peer's old lease, or a peer
//! whose acceptance changed in the last pass; a new or changed identity of this node
//! re-judges all.

use super::{Admission, Candidate, Identity, MacsOf, Rejection, judge};
use crate::mac::Mac;
use std::collections::{BTreeMap, HashMap, HashSet};
use weft_subnet::family::Net;
use weft_subnet::{Lease, SubnetKey};

/// Up to this many peers to re-judge, finding their groups costs microseconds whatever
/// the share of all peers.
const FEW: usize = 64;

/// What a peer can contend for with another peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Claim {
    Subnet(Net),
    Mac(Mac),
}

/// Who contends for what, and the verdicts of the last pass.
#[derive(Debug)]
pub(super) struct Index {
    identity: Identity,
    claims_of: HashMap<SubnetKey, Vec<Claim>>,
    holders: HashMap<Claim, Vec<SubnetKey>>,
    rejected: HashMap<SubnetKey, Rejection>,
}

impl Index {
    /// The index after a full admission of `judged`.
    pub(super) fn build(
        identity: &Identity,
        judged: &[Candidate<'_>],
        rejected: &[Rejection],
    ) -> Index {
        let mut index = Index {
            identity: identity.clone(),
            claims_of: HashMap::with_capacity(judged.len()),
            holders: HashMap::with_capacity(judged.len() * 2),
            rejected: rejected.iter().map(|r| (r.key, r.clone())).collect(),
        };
        for (lease, macs) in judged {
            index.insert(lease, macs);
        }
        index
    }

    fn insert(&mut self, lease: &Lease, macs: &[(weft_subnet::family::Family, Mac)]) {
        // Every subnet and MAC, used by this node or not: a larger group is still exact.
        let claims: Vec<Claim> = [lease.key.ipv4, lease.key.ipv6]
            .into_iter()
            .flatten()
            .map(Claim::Subnet)
            .chain(macs.iter().map(|(_, mac)| Claim::Mac(*mac)))
            .collect();
        for claim in &claims {
            self.holders.entry(*claim).or_default().push(lease.key);
        }
        self.claims_of.insert(lease.key, claims);
    }

    /// Forgets a peer's claims; returns them.
    fn remove(&mut self, key: &SubnetKey) -> Vec<Claim> {
        let claims = self.claims_of.remove(key).unwrap_or_default();
        for claim in &claims {
            if let Some(holders) = self.holders.get_mut(claim) {
                holders.retain(|k| k != key);
                if holders.is_empty() {
                    self.holders.remove(claim);
                }
            }
        }
        claims
    }

    /// Every present peer linked to `keys` or `claims` by shared subnets and MACs.
    fn group(&self, mut keys: Vec<SubnetKey>, mut claims: Vec<Claim>) -> Vec<SubnetKey> {
        let mut seen_keys = HashSet::new();
        let mut seen_claims = HashSet::new();
        loop {
            if let Some(key) = keys.pop() {
                if let Some(own) = self.claims_of.get(&key)
                    && seen_keys.insert(key)
                {
                    claims.extend(own);
                }
            } else if let Some(claim) = claims.pop() {
                if seen_claims.insert(claim)
                    && let Some(holders) = self.holders.get(&claim)
                {
                    keys.extend(holders);
                }
            } else {
                return seen_keys.into_iter().collect();
            }
        }
    }
}

impl Admission {
    /// Re-judges after the leases under `changed` were added, changed or removed in
    /// `peers` (the whole set now); returns the keys re-judged, removed ones included
    /// (see [`Admission::rejection`]). Without a full admission before, when this
    /// node's identity changed, or when most peers are to be re-judged, it runs a full
    /// admission and returns every key.
    pub fn admit_changes(
        &mut self,
        identity: &Identity,
        peers: &BTreeMap<SubnetKey, Lease>,
        changed: impl IntoIterator<Item = SubnetKey>,
        macs_of: MacsOf<'_>,
    ) -> Vec<SubnetKey> {
        let changed: Vec<SubnetKey> = changed.into_iter().collect();
        // After a pass that accepted most peers anew (the first one), their places all
        // move: judging everything at once is cheaper than finding the groups.
        let moved = changed.len() + self.flipped.len();
        let most = moved > FEW && moved > peers.len() / 2;
        let Some(mut index) = self
            .index
            .take()
            .filter(|index| index.identity == *identity && !most)
        else {
            self.admit(identity, peers.values(), macs_of);
            return peers.keys().chain(&changed).copied().collect();
        };
        let mut claims = Vec::new();
        for key in &changed {
            claims.extend(index.remove(key));
            index.rejected.remove(key);
            match peers.get(key) {
                Some(lease) => index.insert(lease, &macs_of(lease)),
                None => {
                    self.accepted.remove(key);
                }
            }
        }
        let seeds = changed.iter().chain(&self.flipped).copied().collect();
        let group = index.group(seeds, claims);
        self.rejudge(identity, &mut index, peers, &group, macs_of);
        self.index = Some(index);
        group
            .into_iter()
            .chain(changed.into_iter().filter(|k| !peers.contains_key(k)))
            .collect()
    }

    /// Judges `group` (closed under shared claims) in full admission's order, and notes
    /// whose acceptance changed.
    fn rejudge(
        &mut self,
        identity: &Identity,
        index: &mut Index,
        peers: &BTreeMap<SubnetKey, Lease>,
        group: &[SubnetKey],
        macs_of: MacsOf<'_>,
    ) {
        let mut ordered: Vec<Candidate<'_>> = group
            .iter()
            .filter_map(|key| peers.get(key))
            .map(|l| (l, macs_of(l)))
            .collect();
        ordered.sort_by_key(|(l, _)| self.place(l));
        let verdicts = judge(identity, &ordered);
        self.flipped.clear();
        for ((lease, _), verdict) in ordered.iter().zip(verdicts) {
            let key = lease.key;
            let was = self.accepted.contains(&key);
            if verdict.is_ok() != was {
                self.flipped.insert(key);
            }
            match verdict {
                Ok(()) => {
                    self.accepted.insert(key);
                    index.rejected.remove(&key);
                }
                Err((kind, reason)) => {
                    self.accepted.remove(&key);
                    index.rejected.insert(key, Rejection { key, kind, reason });
                }
            }
        }
    }

    /// Why the last pass rejected this peer; `None` if it admitted it or never saw it.
    pub fn rejection(&self, key: &SubnetKey) -> Option<&Rejection> {
        self.index.as_ref()?.rejected.get(key)
    }

    /// Every peer the last pass admitted.
    pub fn admitted(&self) -> impl Iterator<Item = &SubnetKey> {
        self.accepted.iter()
    }

    /// Every rejection of the last pass.
    pub fn rejections(&self) -> impl Iterator<Item = &Rejection> {
        self.index.iter().flat_map(|index| index.rejected.values())
    }

    /// Drops the index, so the next [`Admission::admit_changes`] judges everything (the
    /// caller judged peers without admission meanwhile).
    pub fn forget(&mut self) {
        self.index = None;
    }
}
