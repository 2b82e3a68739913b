//! NodeTracker: turns the Node watch (kube-runtime watcher events) into lease batches for
//! the [`LeaseWatcher`](crate::watch::LeaseWatcher), pure.
//!
//! Leases are keyed by subnet, nodes by name; the tracker keeps the name → lease map so
//! that a node whose podCIDR changed yields a Delete of its old subnet (no stale route),
//! a node that lost its annotations or became malformed is removed, and an update to
//! either family's annotations is delivered (flannel drops some dual-stack updates).
//! It also reports what an operator must hear about, once each: nodes that cannot be
//! used, and two nodes advertising the same public IP or the same subnet.

use super::annotations::AnnotationKeys;
use super::node::{self, ClusterNetworks, NodeError};
use super::objects::Node;
use crate::family::Net;
use crate::lease::Lease;
use crate::watch::DatastoreEvent;
use crate::watch::WatchBatch;
use ::kube::runtime::watcher::Event;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

/// This node's own Node object, as last seen.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnNode {
    Present(Box<Node>),
    Deleted,
}

/// Something to log, with its severity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A node is skipped (malformed or incomplete).
    Skipped(String),
    /// A node that was skipped is usable again.
    Recovered(String),
    /// Two nodes collide: traffic for one of them goes to the other.
    Conflict(String),
}

/// What one watcher event means for the daemon.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrackerOutput {
    pub batch: Option<WatchBatch>,
    pub own: Option<OwnNode>,
    pub notices: Vec<Notice>,
}

impl TrackerOutput {
    pub fn is_empty(&self) -> bool {
        self.batch.is_none() && self.own.is_none() && self.notices.is_empty()
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct NodeTracker {
    own_name: String,
    keys: AnnotationKeys,
    networks: ClusterNetworks,
    /// Usable leases by node name, this node's included (for the conflict checks).
    leases: BTreeMap<String, Lease>,
    /// The problem last reported per skipped node.
    skipped: BTreeMap<String, String>,
    /// Conflicts already reported and still present, by the value shared.
    conflicts: BTreeMap<Claim, String>,
    /// What an initial listing has shown so far, before `InitDone`.
    listing: Option<Listing>,
}

/// An initial listing in progress: each Node's lease or problem, in listing order, and
/// this node's own Node. A Node is read into its lease as it arrives rather than kept
/// whole until the listing ends: against a real API server a Node object also carries
/// labels, every condition and its managedFields, and 15,000 of them held at once were
/// most of weftd's peak memory (docs/benchmarks.md, "Kube mode against a real API
/// server"). What an operator hears about (skipped nodes) is still decided at `InitDone`,
/// so a listing broken off and started again reports nothing twice and loses nothing.
#[derive(Debug, Default)]
struct Listing {
    nodes: Vec<(String, Result<Lease, NodeError>)>,
    own: Option<Box<Node>>,
}

impl NodeTracker {
    pub fn new(own_name: &str, keys: AnnotationKeys, networks: ClusterNetworks) -> NodeTracker {
        NodeTracker {
            own_name: own_name.to_string(),
            keys,
            networks,
            leases: BTreeMap::new(),
            skipped: BTreeMap::new(),
            conflicts: BTreeMap::new(),
            listing: None,
        }
    }

    /// Number of usable peer leases.
    pub fn peer_count(&self) -> usize {
        self.leases.len() - usize::from(self.leases.contains_key(&self.own_name))
    }

    pub fn apply(&mut self, event: Event<Node>) -> TrackerOutput {
        let mut out = TrackerOutput::default();
        // Conflicts can only appear or go when a lease does (not on kubelet heartbeats),
        // and only on the values that lease held before or holds now.
        let mut affected: Option<Vec<Claim>> = None;
        let mut leases_changed = false;
        match event {
            Event::Init => self.listing = Some(Listing::default()),
            Event::InitApply(node) => {
                let listing = self.listing.get_or_insert_with(Listing::default);
                let name = node::name(&node).to_string();
                let lease = node::node_to_lease(&node, &self.keys, &self.networks);
                if name == self.own_name {
                    listing.own = Some(Box::new(node));
                }
                listing.nodes.push((name, lease));
            }
            Event::InitDone => {
                let listing = self.listing.take().unwrap_or_default();
                let mut fresh = BTreeMap::new();
                let listed: BTreeSet<String> =
                    listing.nodes.iter().map(|(name, _)| name.clone()).collect();
                out.own = Some(listing.own.map_or(OwnNode::Deleted, OwnNode::Present));
                for (name, lease) in listing.nodes {
                    if let Some(lease) = self.note(&name, lease, &mut out.notices) {
                        fresh.insert(name, lease);
                    }
                }
                // Nodes that vanished while the watch was down: forget their problems.
                self.skipped.retain(|name, _| listed.contains(name));
                self.leases = fresh;
                leases_changed = true;
                let peers = self
                    .leases
                    .iter()
                    .filter(|(name, _)| **name != self.own_name)
                    .map(|(_, lease)| lease.clone())
                    .collect();
                out.batch = Some(WatchBatch::Snapshot(peers));
            }
            Event::Apply(node) => {
                let name = node::name(&node).to_string();
                let lease = self.convert(&node, &mut out.notices);
                let previous = match &lease {
                    Some(lease) => self.leases.insert(name.clone(), lease.clone()),
                    None => self.leases.remove(&name),
                };
                if previous != lease {
                    affected = Some(self.affected(previous.as_ref(), lease.as_ref()));
                }
                if name == self.own_name {
                    out.own = Some(OwnNode::Present(Box::new(node)));
                } else {
                    out.batch = peer_events(previous, lease);
                }
            }
            Event::Delete(node) => {
                let name = node::name(&node).to_string();
                self.skipped.remove(&name);
                let previous = self.leases.remove(&name);
                affected = Some(self.affected(previous.as_ref(), None));
                if name == self.own_name {
                    out.own = Some(OwnNode::Deleted);
                } else {
                    out.batch = peer_events(previous, None);
                }
            }
        }
        if leases_changed {
            self.check_all_conflicts(&mut out.notices);
        } else if let Some(affected) = affected {
            self.check_conflicts(affected, &mut out.notices);
        }
        out
    }

    /// The node's lease, or `None` with a notice the first time a given problem appears.
    fn convert(&mut self, node: &Node, notices: &mut Vec<Notice>) -> Option<Lease> {
        let lease = node::node_to_lease(node, &self.keys, &self.networks);
        self.note(node::name(node), lease, notices)
    }

    /// [`convert`](Self::convert) of a Node already read into its lease (or problem).
    fn note(
        &mut self,
        name: &str,
        lease: Result<Lease, NodeError>,
        notices: &mut Vec<Notice>,
    ) -> Option<Lease> {
        let name = name.to_string();
        match lease {
            Ok(lease) => {
                if self.skipped.remove(&name).is_some() {
                    notices.push(Notice::Recovered(format!(
                        "node {name:?} is usable again: {}",
                        lease.key
                    )));
                }
                Some(lease)
            }
            Err(error) => {
                // Not-yet-annotated nodes and this node's own problems are not news here
                // (the daemon reports its own node).
                let quiet = error.is_unmanaged()
                    || name == self.own_name
                    || matches!(error, NodeError::PodCidrNotAssigned(_));
                let text = error.to_string();
                if !quiet && self.skipped.get(&name) != Some(&text) {
                    notices.push(Notice::Skipped(format!("skipping node {name:?}: {text}")));
                }
                self.skipped.insert(name, text);
                None
            }
        }
    }

    /// The values a lease change may have put into or out of conflict: every value the
    /// lease holds now and did not before (another node may hold it), and the values it no
    /// longer holds that were in conflict. A value it gave up that nobody else held stays
    /// out of conflict: `conflicts` holds exactly the values two leases share, so no scan
    /// of the leases is needed for it. (A Node deleted at 15,000 Nodes cost weftd 2.28 ms,
    /// nearly all of it that scan: docs/benchmarks.md.)
    fn affected(&self, previous: Option<&Lease>, current: Option<&Lease>) -> Vec<Claim> {
        let before = previous.map(claims).unwrap_or_default();
        let after = current.map(claims).unwrap_or_default();
        let gained = after.iter().filter(|c| !before.contains(c));
        let lost = before
            .iter()
            .filter(|c| !after.contains(c) && self.conflicts.contains_key(c));
        gained.chain(lost).copied().collect()
    }

    /// Reports new conflicts (same public IP, same subnet) once; forgets resolved ones.
    /// After a listing: every value of every lease.
    fn check_all_conflicts(&mut self, notices: &mut Vec<Notice>) {
        let mut holders: BTreeMap<Claim, Vec<&str>> = BTreeMap::new();
        for (name, lease) in &self.leases {
            for claim in claims(lease) {
                holders.entry(claim).or_default().push(name);
            }
        }
        let current: BTreeMap<Claim, String> = holders
            .into_iter()
            .filter(|(_, names)| names.len() > 1)
            .map(|(claim, names)| (claim, conflict_message(claim, &names)))
            .collect();
        for (claim, message) in &current {
            if self.conflicts.get(claim) != Some(message) {
                notices.push(Notice::Conflict(message.clone()));
            }
        }
        self.conflicts = current;
    }

    /// The same for the values one lease change touched: a scan of the leases that
    /// compares addresses and subnets, so a change costs microseconds, not a message per
    /// node.
    fn check_conflicts(&mut self, mut affected: Vec<Claim>, notices: &mut Vec<Notice>) {
        affected.sort();
        affected.dedup();
        for claim in affected {
            let names: Vec<&str> = self
                .leases
                .iter()
                .filter(|(_, lease)| holds(lease, claim))
                .map(|(name, _)| name.as_str())
                .collect();
            if names.len() < 2 {
                self.conflicts.remove(&claim);
                continue;
            }
            let message = conflict_message(claim, &names);
            if self.conflicts.get(&claim) != Some(&message) {
                notices.push(Notice::Conflict(message.clone()));
                self.conflicts.insert(claim, message);
            }
        }
    }
}

/// A value two nodes must not share: traffic for one of them would reach the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Claim {
    PublicIp(Ipv4Addr),
    PublicIpv6(Ipv6Addr),
    Subnet(Net),
}

/// The values `lease` holds (a public address only for a family it has a subnet of).
fn claims(lease: &Lease) -> Vec<Claim> {
    let attrs = &lease.attrs;
    let mut claims = Vec::with_capacity(4);
    if lease.key.ipv4.is_some() && !attrs.public_ip.is_unspecified() {
        claims.push(Claim::PublicIp(attrs.public_ip));
    }
    if let (Some(_), Some(v6)) = (lease.key.ipv6, attrs.public_ipv6) {
        claims.push(Claim::PublicIpv6(v6));
    }
    claims.extend(
        [lease.key.ipv4, lease.key.ipv6]
            .into_iter()
            .flatten()
            .map(Claim::Subnet),
    );
    claims
}

/// Whether `lease` holds `claim` (as [`claims`] lists them, without allocating).
fn holds(lease: &Lease, claim: Claim) -> bool {
    let attrs = &lease.attrs;
    match claim {
        Claim::PublicIp(ip) => lease.key.ipv4.is_some() && attrs.public_ip == ip,
        Claim::PublicIpv6(ip) => lease.key.ipv6.is_some() && attrs.public_ipv6 == Some(ip),
        Claim::Subnet(net) => lease.key.ipv4 == Some(net) || lease.key.ipv6 == Some(net),
    }
}

fn conflict_message(claim: Claim, names: &[&str]) -> String {
    let what = match claim {
        Claim::PublicIp(ip) => format!("public IP {ip}"),
        Claim::PublicIpv6(ip) => format!("public IPv6 {ip}"),
        Claim::Subnet(net) => format!("subnet {net}"),
    };
    format!(
        "nodes {} all advertise {what}: traffic meant for one of them reaches another; fix \
         the node addresses (--iface, --public-ip or the public-ip-overwrite annotation) or \
         podCIDRs",
        names.join(", ")
    )
}

/// The datastore events for one peer whose lease went from `previous` to `current`.
fn peer_events(previous: Option<Lease>, current: Option<Lease>) -> Option<WatchBatch> {
    let mut events = Vec::new();
    match (previous, current) {
        (None, None) => return None,
        (Some(old), Some(new)) if old == new => return None,
        (Some(old), new) => {
            if new.as_ref().is_none_or(|n| n.key != old.key) {
                events.push(DatastoreEvent::Delete {
                    key: old.key,
                    previous: Some(old),
                });
            }
            events.extend(new.map(DatastoreEvent::Put));
        }
        (None, Some(new)) => events.push(DatastoreEvent::Put(new)),
    }
    Some(WatchBatch::Events(events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::objects::NodeSpec;

    const PREFIX: &str = "flannel.alpha.coreos.com/";

    fn node(name: &str, cidr: &str, public_ip: &str, mac: &str) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some(name.into());
        let pairs = [
            ("kube-subnet-manager", "true".to_string()),
            ("backend-type", "vxlan".to_string()),
            ("backend-data", format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#)),
            ("public-ip", public_ip.to_string()),
        ];
        node.metadata.annotations = Some(
            pairs
                .into_iter()
                .map(|(k, v)| (format!("{PREFIX}{k}"), v))
                .collect(),
        );
        node.spec = Some(NodeSpec {
            pod_cidrs: Some(vec![cidr.into()]),
            ..NodeSpec::default()
        });
        node
    }

    fn tracker() -> NodeTracker {
        NodeTracker::new(
            "n1",
            AnnotationKeys::new(PREFIX).unwrap(),
            ClusterNetworks {
                ipv4: Some("10.244.0.0/16".parse().unwrap()),
                ipv6: None,
            },
        )
    }

    fn list(t: &mut NodeTracker, nodes: Vec<Node>) -> TrackerOutput {
        t.apply(Event::Init);
        for n in nodes {
            assert!(t.apply(Event::InitApply(n)).is_empty());
        }
        t.apply(Event::InitDone)
    }

    fn keys_of(batch: &Option<WatchBatch>) -> Vec<String> {
        match batch {
            Some(WatchBatch::Snapshot(leases)) => leases
                .iter()
                .map(|l| format!("snapshot {}", l.key))
                .collect(),
            Some(WatchBatch::Events(events)) => events
                .iter()
                .map(|e| match e {
                    DatastoreEvent::Put(l) => format!("put {}", l.key),
                    DatastoreEvent::Delete { key, .. } => format!("delete {key}"),
                })
                .collect(),
            Some(other) => vec![format!("{other:?}")],
            None => Vec::new(),
        }
    }

    #[test]
    fn the_initial_listing_is_a_snapshot_of_peers_and_reports_the_own_node() {
        let mut t = tracker();
        let out = list(
            &mut t,
            vec![
                node("n1", "10.244.1.0/24", "198.18.0.11", "02:00:00:00:00:01"),
                node("n2", "10.244.2.0/24", "198.18.0.12", "02:00:00:00:00:02"),
            ],
        );
        assert_eq!(keys_of(&out.batch), ["snapshot 10.244.2.0-24"]);
        assert!(
            matches!(out.own, Some(OwnNode::Present(n)) if n.metadata.name.as_deref() == Some("n1"))
        );
        assert_eq!(t.peer_count(), 1);
        let out = list(&mut t, vec![]);
        assert_eq!(out.own, Some(OwnNode::Deleted));
    }

    #[test]
    fn updates_deletes_and_pod_cidr_changes() {
        let mut t = tracker();
        list(&mut t, vec![]);
        let n2 = node("n2", "10.244.2.0/24", "198.18.0.12", "02:00:00:00:00:02");
        assert_eq!(
            keys_of(&t.apply(Event::Apply(n2.clone())).batch),
            ["put 10.244.2.0-24"]
        );
        // A status-only update (same lease) is not news.
        assert_eq!(t.apply(Event::Apply(n2.clone())).batch, None);
        // New public IP: delivered.
        let moved = node("n2", "10.244.2.0/24", "198.18.0.22", "02:00:00:00:00:02");
        assert_eq!(
            keys_of(&t.apply(Event::Apply(moved)).batch),
            ["put 10.244.2.0-24"]
        );
        // A podCIDR change removes the old subnet first.
        let renumbered = node("n2", "10.244.9.0/24", "198.18.0.22", "02:00:00:00:00:02");
        assert_eq!(
            keys_of(&t.apply(Event::Apply(renumbered.clone())).batch),
            ["delete 10.244.2.0-24", "put 10.244.9.0-24"]
        );
        assert_eq!(
            keys_of(&t.apply(Event::Delete(renumbered)).batch),
            ["delete 10.244.9.0-24"]
        );
        assert_eq!(t.peer_count(), 0);
    }

    #[test]
    fn malformed_nodes_are_removed_and_reported_once() {
        let mut t = tracker();
        list(&mut t, vec![]);
        let good = node("n2", "10.244.2.0/24", "198.18.0.12", "02:00:00:00:00:02");
        t.apply(Event::Apply(good.clone()));
        let mut bad = good.clone();
        bad.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(format!("{PREFIX}backend-data"), "garbage".into());
        let out = t.apply(Event::Apply(bad.clone()));
        assert_eq!(keys_of(&out.batch), ["delete 10.244.2.0-24"]);
        assert_eq!(
            out.notices,
            [Notice::Skipped(
                "skipping node \"n2\": node \"n2\": annotation flannel.alpha.coreos.com/backend-data=\"garbage\" is not JSON".into()
            )]
        );
        assert!(
            t.apply(Event::Apply(bad.clone())).notices.is_empty(),
            "reported once"
        );
        // A re-list that still contains the broken node does not report it again.
        let out = list(&mut t, vec![bad.clone()]);
        assert!(out.notices.is_empty(), "{:?}", out.notices);
        assert_eq!(keys_of(&out.batch), Vec::<String>::new());
        assert!(t.apply(Event::Apply(bad)).notices.is_empty(), "still once");
        let out = t.apply(Event::Apply(good));
        assert_eq!(keys_of(&out.batch), ["put 10.244.2.0-24"]);
        assert_eq!(
            out.notices,
            [Notice::Recovered(
                "node \"n2\" is usable again: 10.244.2.0-24".into()
            )]
        );
        // Outside the cluster network: skipped, never routed.
        let outside = node("n3", "10.99.0.0/24", "198.18.0.13", "02:00:00:00:00:03");
        let out = t.apply(Event::Apply(outside));
        assert_eq!(out.batch, None);
        assert!(
            matches!(&out.notices[..], [Notice::Skipped(text)] if text.contains("doesn't contain \"10.99.0.0/24\""))
        );
        // Unannotated nodes (not ours yet) are skipped quietly.
        let mut plain = Node::default();
        plain.metadata.name = Some("n4".into());
        assert!(t.apply(Event::Apply(plain)).is_empty());
    }

    #[test]
    fn a_conflict_resolved_by_a_change_is_forgotten_and_reported_again_when_it_returns() {
        let mut t = tracker();
        list(
            &mut t,
            vec![
                node("n1", "10.244.1.0/24", "198.18.0.11", "02:00:00:00:00:01"),
                node("n2", "10.244.2.0/24", "198.18.0.12", "02:00:00:00:00:02"),
            ],
        );
        let clash = node("n2", "10.244.2.0/24", "198.18.0.11", "02:00:00:00:00:02");
        let out = t.apply(Event::Apply(clash.clone()));
        assert!(
            matches!(&out.notices[..], [Notice::Conflict(text)] if text.starts_with("nodes n1, n2 all advertise public IP 198.18.0.11:")),
            "{:?}",
            out.notices
        );
        let moved = node("n2", "10.244.2.0/24", "198.18.0.12", "02:00:00:00:00:02");
        assert!(t.apply(Event::Apply(moved)).notices.is_empty());
        assert!(t.conflicts.is_empty(), "resolved: {:?}", t.conflicts);
        assert_eq!(t.apply(Event::Apply(clash.clone())).notices.len(), 1);
        // A third node on the same address: the conflict's message names all three.
        let third = node("n3", "10.244.3.0/24", "198.18.0.11", "02:00:00:00:00:03");
        let out = t.apply(Event::Apply(third.clone()));
        assert!(
            matches!(&out.notices[..], [Notice::Conflict(text)] if text.starts_with("nodes n1, n2, n3 all advertise public IP 198.18.0.11:"))
        );
        // Deleting two of them resolves it.
        t.apply(Event::Delete(third));
        assert_eq!(t.conflicts.len(), 1, "n1 and n2 still clash");
        t.apply(Event::Delete(clash));
        assert!(t.conflicts.is_empty());
    }

    #[test]
    fn duplicate_public_ips_and_subnets_are_reported_once() {
        let mut t = tracker();
        let out = list(
            &mut t,
            vec![
                node("n1", "10.244.1.0/24", "10.0.2.15", "02:00:00:00:00:01"),
                node("n2", "10.244.2.0/24", "10.0.2.15", "02:00:00:00:00:02"),
            ],
        );
        assert!(
            matches!(&out.notices[..], [Notice::Conflict(text)] if text.starts_with("nodes n1, n2 all advertise public IP 10.0.2.15"))
        );
        let n3 = node("n3", "10.244.3.0/24", "198.18.0.13", "02:00:00:00:00:03");
        assert!(
            t.apply(Event::Apply(n3)).notices.is_empty(),
            "reported once"
        );
        let n4 = node("n4", "10.244.3.0/24", "198.18.0.14", "02:00:00:00:00:04");
        let out = t.apply(Event::Apply(n4));
        assert!(
            matches!(&out.notices[..], [Notice::Conflict(text)] if text.starts_with("nodes n3, n4 all advertise subnet 10.244.3.0/24"))
        );
    }
}
