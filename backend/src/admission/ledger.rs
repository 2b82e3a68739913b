//! What the admitted peers claim: their subnets and VTEP MACs, kept between passes so a
//! change is judged against them without re-judging every peer.
//!
//! Kept for every peer all the time, so it is compact (about 60 bytes per peer at 15,000
//! peers): ordered maps packed after a full admission (no empty hash buckets, no half
//! empty tree nodes), a peer's MACs inline, no index of IPv4 subnets (a key starts with
//! its IPv4 subnet, so the admitted keys in order find its holder) and no copy of the
//! holders' addresses (the caller reads them from their leases).

use crate::mac::Mac;
use std::collections::BTreeMap;
use std::net::IpAddr;
use weft_lease::SubnetKey;
use weft_lease::family::{Family, Net};

/// The public addresses of a peer, one per family this node uses.
pub(super) type Ips = [Option<IpAddr>; 2];

/// The VTEP MACs one peer claimed (one per family used, at most two).
pub(super) type Macs = [Option<Mac>; 2];

/// Claims of the admitted peers.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// Every admitted peer, with the MACs it claimed.
    held: BTreeMap<SubnetKey, Macs>,
    /// The IPv6 subnets of admitted peers (their IPv4 subnets are found in `held`).
    v6_subnets: BTreeMap<Net, SubnetKey>,
    /// Each claimed MAC's first holder: the one named when a newcomer is turned away.
    macs: BTreeMap<Mac, SubnetKey>,
    /// Further holders of a MAC, at the same addresses as the first (one node's FDB
    /// entry published under several leases; rare).
    shared: BTreeMap<Mac, Vec<SubnetKey>>,
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

    /// The first admitted peer claiming `mac`.
    pub fn mac_holder(&self, mac: &Mac) -> Option<&SubnetKey> {
        self.macs.get(mac)
    }

    /// Records an admitted peer's claims.
    pub fn claim(&mut self, key: SubnetKey, macs: Macs) {
        if let Some(v6) = key.ipv6 {
            self.v6_subnets.insert(v6, key);
        }
        for mac in macs.iter().flatten() {
            match self.macs.get(mac) {
                None => {
                    self.macs.insert(*mac, key);
                }
                Some(first) if *first != key => {
                    let others = self.shared.entry(*mac).or_default();
                    if !others.contains(&key) {
                        others.push(key);
                    }
                }
                Some(_) => {}
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
            let others = self.shared.get_mut(mac);
            if self.macs.get(mac) != Some(key) {
                if let Some(others) = others {
                    others.retain(|k| k != key);
                    if others.is_empty() {
                        self.shared.remove(mac);
                    }
                }
                continue;
            }
            // The first holder leaves: the next one (if any) holds the MAC now.
            match others.filter(|o| !o.is_empty()).map(|o| o.remove(0)) {
                Some(next) => {
                    self.macs.insert(*mac, next);
                    if self.shared.get(mac).is_some_and(Vec::is_empty) {
                        self.shared.remove(mac);
                    }
                }
                None => {
                    self.macs.remove(mac);
                }
            }
        }
        true
    }

    /// Rebuilds the maps packed: filled in key order (as a full admission of a fresh
    /// listing does), a B-tree's nodes stay half empty.
    pub fn pack(&mut self) {
        self.held = std::mem::take(&mut self.held).into_iter().collect();
        self.v6_subnets = std::mem::take(&mut self.v6_subnets).into_iter().collect();
        self.macs = std::mem::take(&mut self.macs).into_iter().collect();
    }
}
