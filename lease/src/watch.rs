//! LeaseWatcher: turns datastore snapshots and events into peer Added/Removed events.
//!
//! Pure: no I/O. Compared with flannel's watcher it also reports a peer whose attributes
//! changed (new VTEP MAC or public IP) as Added, including changes that happened while
//! the watch was down and only show up in a re-list; renewals that change nothing are
//! not reported. Events about this node's own key are reported separately, so the
//! daemon can notice its lease being deleted or taken over.

use crate::lease::{Lease, SubnetKey};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One change from the datastore.
#[derive(Debug, Clone, PartialEq)]
pub enum DatastoreEvent {
    Put(Lease),
    /// A key was deleted or expired; `previous` is its last value when the store knows it.
    Delete {
        key: SubnetKey,
        previous: Option<Lease>,
    },
}

/// What a subnet manager's watch delivers (etcd's lease watch, or the Kubernetes Node
/// tracker).
#[derive(Debug, Clone, PartialEq)]
pub enum WatchBatch {
    /// A full listing (at start, after a compaction or a reconnect that lost history).
    Snapshot(Vec<Lease>),
    Events(Vec<DatastoreEvent>),
    /// The datastore went back in time (restored from a snapshot, or restarted empty):
    /// a fresh Snapshot follows. The text says what showed it.
    StoreReset(String),
    /// The network config key was written (`Some(value)`) or deleted (`None`).
    Config(Option<String>),
}

/// A change in the set of peer leases.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseEvent {
    /// A new peer, or a known peer whose attributes changed (the lease the watcher keeps,
    /// shared).
    Added(Arc<Lease>),
    /// A peer is gone; carries its last known attributes.
    Removed(Lease),
}

/// What happened to this node's own key.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnLeaseChange {
    Written(Box<Lease>),
    Deleted,
}

/// The result of applying a snapshot or a batch of events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub peers: Vec<LeaseEvent>,
    pub own: Option<OwnLeaseChange>,
}

/// Tracks peer leases; see the module docs.
///
/// Each lease is kept behind an `Arc`, so the datapath's copy of the peer set
/// ([`LeaseWatcher::peers`]) shares it instead of holding a second one.
#[derive(Debug, Default)]
pub struct LeaseWatcher {
    own: Option<SubnetKey>,
    peers: BTreeMap<SubnetKey, Arc<Lease>>,
}

impl LeaseWatcher {
    pub fn new(own: Option<SubnetKey>) -> LeaseWatcher {
        LeaseWatcher {
            own,
            peers: BTreeMap::new(),
        }
    }

    /// Changes which key is this node's own (after re-acquiring a different subnet).
    /// A peer entry under the new own key is dropped and reported as removed.
    pub fn set_own(&mut self, own: Option<SubnetKey>) -> Vec<LeaseEvent> {
        self.own = own;
        own.and_then(|key| self.peers.remove(&key))
            .map(|lease| LeaseEvent::Removed(Arc::unwrap_or_clone(lease)))
            .into_iter()
            .collect()
    }

    /// Known peer leases, ordered by subnet.
    pub fn peers(&self) -> impl Iterator<Item = &Arc<Lease>> {
        self.peers.values()
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Applies a watch batch: a snapshot replaces the known set, events update it.
    /// Control messages (a store reset, a config write) change no lease: `None`.
    pub fn ingest(&mut self, batch: WatchBatch) -> Option<Changes> {
        match batch {
            WatchBatch::Snapshot(leases) => Some(self.reset(leases)),
            WatchBatch::Events(events) => Some(self.apply(events)),
            WatchBatch::StoreReset(_) | WatchBatch::Config(_) => None,
        }
    }

    /// Replaces the known set with a full listing.
    pub fn reset(&mut self, snapshot: Vec<Lease>) -> Changes {
        let mut changes = Changes::default();
        let mut fresh = Vec::with_capacity(snapshot.len());
        for lease in snapshot {
            if Some(lease.key) == self.own {
                changes.own = Some(OwnLeaseChange::Written(Box::new(lease)));
                continue;
            }
            fresh.push((lease.key, Arc::new(lease)));
        }
        // Built in bulk (sorted, the last of equal keys kept, as inserts would): full nodes.
        let fresh: BTreeMap<SubnetKey, Arc<Lease>> = fresh.into_iter().collect();
        if self.own.is_some() && changes.own.is_none() {
            changes.own = Some(OwnLeaseChange::Deleted);
        }
        for (key, lease) in &fresh {
            if self
                .peers
                .get(key)
                .is_none_or(|known| known.attrs != lease.attrs)
            {
                changes.peers.push(LeaseEvent::Added(Arc::clone(lease)));
            }
        }
        for (key, lease) in std::mem::take(&mut self.peers) {
            if !fresh.contains_key(&key) {
                changes
                    .peers
                    .push(LeaseEvent::Removed(Arc::unwrap_or_clone(lease)));
            }
        }
        self.peers = fresh;
        changes
    }

    /// Applies incremental events in order.
    pub fn apply(&mut self, events: Vec<DatastoreEvent>) -> Changes {
        let mut changes = Changes::default();
        for event in events {
            match event {
                DatastoreEvent::Put(lease) => {
                    if Some(lease.key) == self.own {
                        changes.own = Some(OwnLeaseChange::Written(Box::new(lease)));
                        continue;
                    }
                    let changed = self
                        .peers
                        .get(&lease.key)
                        .is_none_or(|known| known.attrs != lease.attrs);
                    let lease = Arc::new(lease);
                    if changed {
                        changes.peers.push(LeaseEvent::Added(Arc::clone(&lease)));
                    }
                    self.peers.insert(lease.key, lease);
                }
                DatastoreEvent::Delete { key, previous } => {
                    if Some(key) == self.own {
                        changes.own = Some(OwnLeaseChange::Deleted);
                        continue;
                    }
                    // Prefer the stored attributes: they are what was programmed.
                    let stored = self.peers.remove(&key).map(Arc::unwrap_or_clone);
                    if let Some(lease) = stored.or(previous) {
                        changes.peers.push(LeaseEvent::Removed(lease));
                    }
                }
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

    fn lease(key: &str, ip: &str) -> Lease {
        Lease {
            key: SubnetKey::parse(key).unwrap(),
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                ..LeaseAttrs::default()
            },
            etcd_lease: 1,
            expiration: None,
            revision: 1,
        }
    }

    fn own() -> Option<SubnetKey> {
        SubnetKey::parse("10.244.1.0-24").ok()
    }

    #[test]
    fn snapshot_adds_and_removes_and_skips_own() {
        let mut w = LeaseWatcher::new(own());
        let a = lease("10.244.2.0-24", "198.18.0.2");
        let b = lease("10.244.3.0-24", "198.18.0.3");
        let mine = lease("10.244.1.0-24", "198.18.0.1");
        let c = w.reset(vec![a.clone(), b.clone(), mine.clone()]);
        assert_eq!(
            c.peers,
            vec![
                LeaseEvent::Added(Arc::new(a.clone())),
                LeaseEvent::Added(Arc::new(b.clone()))
            ]
        );
        assert_eq!(c.own, Some(OwnLeaseChange::Written(Box::new(mine.clone()))));
        // b vanished and a changed its public IP while the watch was down.
        let a2 = lease("10.244.2.0-24", "198.18.0.22");
        let c = w.reset(vec![a2.clone(), mine]);
        assert_eq!(
            c.peers,
            vec![LeaseEvent::Added(Arc::new(a2)), LeaseEvent::Removed(b)]
        );
        assert_eq!(w.peer_count(), 1);
        // Own key gone from a snapshot is reported.
        let c = w.reset(vec![]);
        assert_eq!(c.own, Some(OwnLeaseChange::Deleted));
    }

    #[test]
    fn events_report_changes_only() {
        let mut w = LeaseWatcher::new(own());
        let a = lease("10.244.2.0-24", "198.18.0.2");
        let c = w.apply(vec![DatastoreEvent::Put(a.clone())]);
        assert_eq!(c.peers, vec![LeaseEvent::Added(Arc::new(a.clone()))]);
        // A renewal (same attrs, new revision) is not a change.
        let renewed = Lease {
            revision: 9,
            etcd_lease: 2,
            ..a.clone()
        };
        assert!(
            w.apply(vec![DatastoreEvent::Put(renewed.clone())])
                .peers
                .is_empty()
        );
        // Delete without a previous value still removes with the stored attributes.
        let c = w.apply(vec![DatastoreEvent::Delete {
            key: a.key,
            previous: None,
        }]);
        assert_eq!(c.peers, vec![LeaseEvent::Removed(renewed)]);
        // Deleting an unknown key reports the previous value if etcd sent one.
        let b = lease("10.244.3.0-24", "198.18.0.3");
        let c = w.apply(vec![DatastoreEvent::Delete {
            key: b.key,
            previous: Some(b.clone()),
        }]);
        assert_eq!(c.peers, vec![LeaseEvent::Removed(b)]);
        let c = w.apply(vec![DatastoreEvent::Delete {
            key: own().unwrap(),
            previous: None,
        }]);
        assert_eq!(
            c,
            Changes {
                peers: vec![],
                own: Some(OwnLeaseChange::Deleted)
            }
        );
    }

    #[test]
    fn set_own_drops_a_peer_entry_under_the_new_key() {
        let mut w = LeaseWatcher::new(own());
        let a = lease("10.244.2.0-24", "198.18.0.2");
        w.apply(vec![DatastoreEvent::Put(a.clone())]);
        assert_eq!(w.set_own(Some(a.key)), vec![LeaseEvent::Removed(a)]);
        assert_eq!(w.peer_count(), 0);
    }
}
