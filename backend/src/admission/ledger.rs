//! What the admitted peers claim: their subnets and VTEP MACs, kept between passes so a
//! change is judged against them without re-judging every peer.

use crate::mac::Mac;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use weft_subnet::SubnetKey;
use weft_subnet::family::Net;

/// The public addresses a VTEP MAC was claimed at (one per family used, at most two).
pub(super) type Ips = [Option<IpAddr>; 2];

/// One VTEP MAC and the admitted peers that publish it, all at the same addresses (one
/// node's FDB entry); the first one is named when a newcomer is turned away.
#[derive(Debug)]
pub(super) struct MacClaim {
    pub ips: Ips,
    pub holders: Vec<SubnetKey>,
}

/// Claims of the admitted peers.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    subnets: HashMap<Net, SubnetKey>,
    macs: HashMap<Mac, MacClaim>,
    /// Every admitted peer, with the MACs it claimed.
    held: HashMap<SubnetKey, Vec<Mac>>,
}

impl Ledger {
    pub fn with_capacity(peers: usize) -> Ledger {
        Ledger {
            subnets: HashMap::with_capacity(peers),
            macs: HashMap::with_capacity(peers),
            held: HashMap::with_capacity(peers),
        }
    }

    /// Whether `key` is admitted.
    pub fn holds(&self, key: &SubnetKey) -> bool {
        self.held.contains_key(key)
    }

    pub fn admitted(&self) -> impl Iterator<Item = &SubnetKey> {
        self.held.keys()
    }

    pub fn subnet_holder(&self, subnet: &Net) -> Option<&SubnetKey> {
        self.subnets.get(subnet)
    }

    pub fn mac_claim(&self, mac: &Mac) -> Option<&MacClaim> {
        self.macs.get(mac)
    }

    /// Records an admitted peer's claims.
    pub fn claim(&mut self, key: SubnetKey, macs: Vec<Mac>, ips: Ips) {
        for net in [key.ipv4, key.ipv6].into_iter().flatten() {
            self.subnets.insert(net, key);
        }
        for mac in &macs {
            let claim = self.macs.entry(*mac).or_insert_with(|| MacClaim {
                ips,
                holders: Vec::with_capacity(1),
            });
            if !claim.holders.contains(&key) {
                claim.holders.push(key);
            }
        }
        self.held.insert(key, macs);
    }

    /// Gives up what `key` claimed; whether it was admitted.
    pub fn release(&mut self, key: &SubnetKey) -> bool {
        let Some(macs) = self.held.remove(key) else {
            return false;
        };
        for net in [key.ipv4, key.ipv6].into_iter().flatten() {
            if self.subnets.get(&net) == Some(key) {
                self.subnets.remove(&net);
            }
        }
        for mac in macs {
            if let Entry::Occupied(mut claim) = self.macs.entry(mac) {
                claim.get_mut().holders.retain(|k| k != key);
                if claim.get().holders.is_empty() {
                    claim.remove();
                }
            }
        }
        true
    }
}
