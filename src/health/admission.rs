//! Which connections the health server keeps when more arrive than it serves at once
//! (pure: no sockets, no clock; the server owns one table behind a lock).
//!
//! A flood is a client that keeps opening connections and sends nothing on them. Closing
//! the *newest* connection once the server is full (the rule before this one) hands the
//! server to whoever opens connections fastest: a probe that arrives mid-flood is the one
//! closed. This table instead keeps room for everyone else:
//! - **Per address**: one source address holds at most `per_address` connections. At that
//!   limit its *oldest idle* connection (accepted, no request yet) is closed to make room
//!   for its newest, so a flood from an address shared with a prober (loopback) sheds
//!   its own stale connections and the probe, which sends its request at once, is served.
//! - **Server full**: the oldest idle connection of the address holding the most
//!   connections is closed, so an address with few connections (a kubelet, a Prometheus
//!   server) always gets in, however many other addresses flood.
//! - Only when nothing is idle (every slot is answering a request, which takes well under
//!   a millisecond) is the new connection itself closed.
//!
//! Addresses are compared exactly (an IPv4-mapped IPv6 address as its IPv4 address).

use std::collections::HashMap;
use std::net::IpAddr;

/// A connection's handle in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(u64);

/// What the table decided for a new connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission<H> {
    /// Serve it; nothing else closed.
    Admitted(ConnectionId),
    /// Serve it, and close the idle connection whose handle is given (from
    /// `shed_address`), for this reason.
    AdmittedShedding {
        id: ConnectionId,
        shed: H,
        shed_address: IpAddr,
        reason: ShedReason,
    },
    /// Close the new connection: every slot it could take is answering a request.
    Refused(ShedReason),
}

/// The metric label of a new connection closed because nothing was idle to shed.
pub const REFUSED: &str = "refused";

/// Why a connection was closed before it sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// Its address held `per_address` connections.
    AddressLimit,
    /// The server held `capacity` connections.
    ServerFull,
}

impl ShedReason {
    pub const ALL: [ShedReason; 2] = [ShedReason::AddressLimit, ShedReason::ServerFull];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            ShedReason::AddressLimit => "address_limit",
            ShedReason::ServerFull => "server_full",
        }
    }
}

/// The limits the table keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once, in all.
    pub capacity: usize,
    /// Connections one source address may hold at once.
    pub per_address: usize,
}

#[derive(Debug)]
struct Entry<H> {
    id: ConnectionId,
    address: IpAddr,
    /// Sent its request: the server is answering it.
    in_service: bool,
    handle: H,
}

/// The connections being served, oldest first. At most a few hundred entries, so the
/// scans below cost about a microsecond; a flood's connections are turned away by them.
#[derive(Debug)]
pub struct ConnectionTable<H> {
    limits: Limits,
    entries: Vec<Entry<H>>,
    per_address: HashMap<IpAddr, usize>,
    next_id: u64,
}

impl<H> ConnectionTable<H> {
    /// A table with `limits`, each raised to at least 1 (and `per_address` to at most
    /// `capacity`).
    pub fn new(limits: Limits) -> ConnectionTable<H> {
        let capacity = limits.capacity.max(1);
        let limits = Limits {
            capacity,
            per_address: limits.per_address.clamp(1, capacity),
        };
        ConnectionTable {
            limits,
            entries: Vec::with_capacity(capacity),
            per_address: HashMap::new(),
            next_id: 0,
        }
    }

    /// Connections `address` holds now.
    pub fn held_by(&self, address: IpAddr) -> usize {
        self.per_address
            .get(&address.to_canonical())
            .copied()
            .unwrap_or(0)
    }

    /// Decides for a connection just accepted from `address`; `handle` is what closes it
    /// should it be shed later (returned in [`Admission::AdmittedShedding`]). A refused
    /// connection's handle is dropped.
    pub fn admit(&mut self, address: IpAddr, handle: H) -> Admission<H> {
        let address = address.to_canonical();
        let shed = if self.held_by(address) >= self.limits.per_address {
            match self.oldest_idle_of(address) {
                Some(index) => Some((index, ShedReason::AddressLimit)),
                None => return Admission::Refused(ShedReason::AddressLimit),
            }
        } else if self.entries.len() >= self.limits.capacity {
            match self.oldest_idle_of_heaviest() {
                Some(index) => Some((index, ShedReason::ServerFull)),
                None => return Admission::Refused(ShedReason::ServerFull),
            }
        } else {
            None
        };
        let shed = shed.map(|(index, reason)| (self.remove_at(index), reason));
        let id = ConnectionId(self.next_id);
        self.next_id += 1;
        self.entries.push(Entry {
            id,
            address,
            in_service: false,
            handle,
        });
        *self.per_address.entry(address).or_insert(0) += 1;
        match shed {
            None => Admission::Admitted(id),
            Some((shed, reason)) => Admission::AdmittedShedding {
                id,
                shed: shed.handle,
                shed_address: shed.address,
                reason,
            },
        }
    }

    /// `id` sent its request: it is no longer idle, so it is never shed.
    pub fn in_service(&mut self, id: ConnectionId) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.id == id) {
            entry.in_service = true;
        }
    }

    /// `id` is closed (answered, timed out or shed); unknown ids are ignored.
    pub fn closed(&mut self, id: ConnectionId) {
        if let Some(index) = self.entries.iter().position(|e| e.id == id) {
            self.remove_at(index);
        }
    }

    fn oldest_idle_of(&self, address: IpAddr) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.address == address && !e.in_service)
    }

    /// The oldest idle connection of the address holding the most connections (among the
    /// addresses with an idle one).
    fn oldest_idle_of_heaviest(&self) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None; // (held, index)
        for (index, entry) in self.entries.iter().enumerate() {
            if entry.in_service {
                continue;
            }
            let held = self.held_by(entry.address);
            // Strictly more: among equals the first seen, the oldest, stays.
            if best.is_none_or(|(most, _)| held > most) {
                best = Some((held, index));
            }
        }
        best.map(|(_, index)| index)
    }

    fn remove_at(&mut self, index: usize) -> Entry<H> {
        // Order matters (oldest first), so no swap_remove; the table is small.
        let entry = self.entries.remove(index);
        if let Some(held) = self.per_address.get_mut(&entry.address) {
            *held -= 1;
            if *held == 0 {
                self.per_address.remove(&entry.address);
            }
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn table(capacity: usize, per_address: usize) -> ConnectionTable<&'static str> {
        ConnectionTable::new(Limits {
            capacity,
            per_address,
        })
    }

    fn admitted(admission: Admission<&'static str>) -> ConnectionId {
        match admission {
            Admission::Admitted(id) => id,
            other => panic!("expected Admitted, got {other:?}"),
        }
    }

    #[test]
    fn admits_until_an_address_reaches_its_limit_then_sheds_its_oldest_idle() {
        let mut t = table(8, 2);
        admitted(t.admit(ip("10.244.1.2"), "a1"));
        admitted(t.admit(ip("10.244.1.2"), "a2"));
        assert_eq!(t.held_by(ip("10.244.1.2")), 2);
        match t.admit(ip("10.244.1.2"), "a3") {
            Admission::AdmittedShedding { shed, reason, .. } => {
                assert_eq!((shed, reason), ("a1", ShedReason::AddressLimit));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.held_by(ip("10.244.1.2")), 2);
        // Another address is not affected by the first one's limit.
        admitted(t.admit(ip("127.0.0.1"), "probe"));
        assert_eq!(t.entries.len(), 3);
    }

    #[test]
    fn a_connection_answering_a_request_is_never_shed() {
        let mut t = table(8, 2);
        let first = admitted(t.admit(ip("127.0.0.1"), "first"));
        admitted(t.admit(ip("127.0.0.1"), "second"));
        t.in_service(first);
        match t.admit(ip("127.0.0.1"), "third") {
            Admission::AdmittedShedding { shed, .. } => assert_eq!(shed, "second"),
            other => panic!("{other:?}"),
        }
        // At the limit with nothing idle, the newest is refused.
        let mut t = table(8, 1);
        let only = admitted(t.admit(ip("127.0.0.1"), "only"));
        t.in_service(only);
        assert_eq!(
            t.admit(ip("127.0.0.1"), "new"),
            Admission::Refused(ShedReason::AddressLimit)
        );
        assert_eq!(t.entries.len(), 1);
    }

    #[test]
    fn when_full_the_heaviest_address_gives_up_its_oldest_idle_connection() {
        let mut t = table(5, 3);
        for handle in ["f1", "f2", "f3"] {
            admitted(t.admit(ip("10.244.1.2"), handle));
        }
        admitted(t.admit(ip("10.244.2.2"), "g1"));
        admitted(t.admit(ip("10.244.2.2"), "g2"));
        match t.admit(ip("198.18.0.1"), "probe") {
            Admission::AdmittedShedding {
                shed,
                shed_address,
                reason,
                ..
            } => {
                assert_eq!((shed, reason), ("f1", ShedReason::ServerFull));
                assert_eq!(
                    shed_address,
                    ip("10.244.1.2"),
                    "the heaviest, not the newcomer"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.entries.len(), 5);
        assert_eq!(t.held_by(ip("198.18.0.1")), 1);
        assert_eq!(t.held_by(ip("10.244.1.2")), 2);
    }

    #[test]
    fn among_equally_heavy_addresses_the_oldest_idle_connection_goes() {
        let mut t = table(3, 3);
        admitted(t.admit(ip("10.0.0.1"), "one"));
        admitted(t.admit(ip("10.0.0.2"), "two"));
        admitted(t.admit(ip("10.0.0.3"), "three"));
        match t.admit(ip("10.0.0.4"), "four") {
            Admission::AdmittedShedding { shed, .. } => assert_eq!(shed, "one"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn when_every_slot_is_answering_the_new_connection_is_refused() {
        let mut t = table(2, 2);
        let a = admitted(t.admit(ip("10.0.0.1"), "a"));
        let b = admitted(t.admit(ip("10.0.0.2"), "b"));
        t.in_service(a);
        t.in_service(b);
        assert_eq!(
            t.admit(ip("10.0.0.3"), "c"),
            Admission::Refused(ShedReason::ServerFull)
        );
        t.closed(a);
        admitted(t.admit(ip("10.0.0.3"), "c"));
    }

    #[test]
    fn closing_frees_the_address_and_the_slot_and_unknown_ids_are_ignored() {
        let mut t = table(4, 2);
        let a = admitted(t.admit(ip("10.0.0.1"), "a"));
        t.closed(a);
        t.closed(a);
        assert!(t.entries.is_empty());
        assert_eq!(t.held_by(ip("10.0.0.1")), 0);
        assert!(t.per_address.is_empty(), "no empty counters are kept");
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_their_ipv4_address() {
        let mut t = table(8, 1);
        admitted(t.admit(ip("10.0.0.1"), "v4"));
        assert!(matches!(
            t.admit(ip("::ffff:10.0.0.1"), "mapped"),
            Admission::AdmittedShedding {
                shed: "v4",
                reason: ShedReason::AddressLimit,
                ..
            }
        ));
        assert_eq!(t.held_by(ip("10.0.0.1")), 1);
    }

    #[test]
    fn limits_are_kept_sane() {
        let t = table(0, 0);
        assert_eq!(
            t.limits,
            Limits {
                capacity: 1,
                per_address: 1
            }
        );
        let t = table(4, 100);
        assert_eq!(t.limits.per_address, 4);
    }

    /// A flood from one address, whatever its length, never holds more than its share,
    /// and a second address's connection is always admitted.
    #[test]
    fn a_long_flood_stays_within_its_share() {
        let mut t = ConnectionTable::new(Limits {
            capacity: 256,
            per_address: 32,
        });
        for n in 0..10_000u32 {
            let _ = t.admit(ip("10.244.1.2"), n);
            assert!(t.held_by(ip("10.244.1.2")) <= 32);
        }
        assert!(matches!(
            t.admit(ip("127.0.0.1"), 0),
            Admission::Admitted(_)
        ));
    }
}
