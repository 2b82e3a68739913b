//! What the admitted peers claim: their subnets and VTEP MACs, kept between passes so a
//! change is judged against them without re-judging every peer.
//!
//! Kept for every peer all the time, so it is compact: ordered maps (no empty hash
//! buckets), a peer's MACs inline, and no index of IPv4 subnets (a key starts with its
//! IPv4 subnet, so the admitted keys in order find its holder).

use crate::mac::Mac;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::net::IpAddr;
use weft_subnet::SubnetKey;
use weft_subnet::family::{Family, Net};

/// The public addresses a VTEP MAC was claimed at (one per family used, at most two).
pub(super) type Ips = [Option<IpAddr>; 2];

/// The VTEP MACs one peer claimed (one per family used, at most two).
pub(super) type Macs = [Option<Mac>; 2];

/// One VTEP MAC and the admitted peers that publish it, all at the same addresses (one
/// node's FDB entry); the first one is named when a newcomer is turned away.
#[derive(Debug)]
pub(super) struct MacClaim {
    pub ips: Ips,
    pub first: SubnetKey,
    /// Further peers at the same addresses (rare; empty takes no allocation).
    others: Vec<SubnetKey>,
}

/// Claims of the admitted peers.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// Every admitted peer, with the MACs it claimed.
    held: BTreeMap<SubnetKey, Macs>,
    /// The IPv6 subnets of admitted peers (their IPv4 subnets are found in `held`).
    v6_subnets: BTreeMap<Net, SubnetKey>,
    macs: BTreeMap<Mac, MacClaim>,
}

impl Ledger {
    /// Whether `key` is admitted.
    pub fn holds(&self, key: &SubnetKey) -> bool {
        self.held.contains_key(key)
    }

    pub fn admitted(&self) -> impl Iterator<Item = &SubnetKey> {
        self.held.keys()
    }

    /// The admitted peer holding `subnet`.
    pub fn subnet_holder(&self, subnet: &Net) -> Option<&SubnetKey> {
        match subnet.family {
            Family::V4 => {
                let lowest = SubnetKey {
                    ipv4: Some(*subnet),
                    ipv6: None,
                };
                self.held
                    .range(lowest..)
                    .next()
                    .map(|(key, _)| key)
                    .filter(|key| key.ipv4 == Some(*subnet))
            }
            Family::V6 => self.v6_subnets.get(subnet),
        }
    }

    pub fn mac_claim(&self, mac: &Mac) -> Option<&MacClaim> {
        self.macs.get(mac)
    }

    /// Records an admitted peer's claims.
    pub fn claim(&mut self, key: SubnetKey, macs: Macs, ips: Ips) {
        if let Some(v6) = key.ipv6 {
            self.v6_subnets.insert(v6, key);
        }
        for mac in macs.iter().flatten() {
            match self.macs.entry(*mac) {
                Entry::Vacant(vacant) => {
                    vacant.insert(MacClaim {
                        ips,
                        first: key,
                        others: Vec::new(),
                    });
                }
                Entry::Occupied(mut claim) => {
                    let claim = claim.get_mut();
                    if claim.first != key && !claim.others.contains(&key) {
                        claim.others.push(key);
                    }
                }
            }
        }
        self.held.insert(key, macs);
    }

    /// Gives up what `key` claimed; whether it was admitted.
    pub fn release(&mut self, key: &SubnetKey) -> bool {
        let Some(macs) = self.held.remove(key) else {
            return false;
        };
        if let Some(v6) = key.ipv6
            && self.v6_subnets.get(&v6) == Some(key)
        {
            self.v6_subnets.remove(&v6);
        }
        for mac in macs.iter().flatten() {
            if let Entry::Occupied(mut entry) = self.macs.entry(*mac) {
                let claim = entry.get_mut();
                claim.others.retain(|k| k != key);
                if claim.first == *key {
                    if claim.others.is_empty() {
                        entry.remove();
                    } else {
                        claim.first = claim.others.remove(0);
                    }
                }
            }
        }
        true
    }
}
