//! This node's etcd lease as a pure state machine: what the watch and the renewals show
//! of the own key, and when to renew next. etcd mode performs the I/O it asks for
//! (renew, re-acquire); keeping the renewal time inside this value means no path (the
//! first snapshot included) can drop a "renew now".

use std::time::{Duration, Instant, SystemTime};
use tracing::{error, info, warn};
use weft_subnet::watch::OwnLeaseChange;
use weft_subnet::{Lease, LeaseAttrs};

/// What the caller must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Nothing,
    /// The key is gone or another node's: acquire a lease again (same subnet if free).
    Reacquire,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct OwnLease {
    pub lease: Lease,
    /// What this node publishes.
    pub attrs: LeaseAttrs,
    /// What it publishes once the key is rewritten (its address changed): until then
    /// the key rightly holds `attrs`, and a listing showing them is no takeover.
    pub pending: Option<LeaseAttrs>,
    /// When to renew next; `None` for a reservation (no TTL) or while re-acquiring.
    pub renew_at: Option<Instant>,
    margin: Duration,
}

impl OwnLease {
    /// `ttl` is the etcd lease TTL, `margin` how long before expiry to renew (capped at
    /// half the TTL).
    pub fn new(lease: Lease, attrs: LeaseAttrs, ttl: Duration, margin: Duration) -> OwnLease {
        let mut own = OwnLease {
            lease,
            attrs,
            pending: None,
            renew_at: None,
            margin: margin.min(ttl / 2),
        };
        own.renew_at = own.deadline();
        own
    }

    /// The renewal margin before expiry; `None` without an expiry (a reservation).
    fn deadline(&self) -> Option<Instant> {
        let expiration = self.lease.expiration?;
        let remaining = expiration
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Some(Instant::now() + remaining.saturating_sub(self.margin))
    }

    /// A lease was (re-)acquired.
    pub fn acquired(&mut self, lease: Lease) {
        self.lease = lease;
        self.renew_at = self.deadline();
    }

    /// What the watch shows of the own key.
    pub fn observe(&mut self, change: OwnLeaseChange) -> Next {
        let current = match change {
            OwnLeaseChange::Deleted => {
                warn!(subnet = %self.lease.key, "this node's lease was deleted from etcd; re-acquiring it");
                return Next::Reacquire;
            }
            OwnLeaseChange::Written(current) => current,
        };
        if self.pending.as_ref().is_some_and(|p| {
            current.attrs.public_ip == p.public_ip && current.attrs.public_ipv6 == p.public_ipv6
        }) {
            // This node's own rewrite with its new address, seen before its answer.
            self.attrs = self.pending.take().unwrap_or_default();
        }
        if current.revision <= self.lease.revision {
            // Not newer than this node's last write of the key: a listing taken before
            // it (a watch started again), nothing to act on.
            return Next::Nothing;
        }
        if current.attrs.public_ip != self.attrs.public_ip
            || current.attrs.public_ipv6 != self.attrs.public_ipv6
        {
            error!(
                subnet = %current.key,
                other_public_ip = %current.attrs.public_ip,
                "this node's subnet was taken over by another node; acquiring a new lease"
            );
            return Next::Reacquire;
        }
        let lease_changed = current.etcd_lease != self.lease.etcd_lease;
        let attrs_changed = current.attrs != self.attrs;
        self.lease.revision = current.revision;
        if lease_changed || attrs_changed {
            // Someone else rewrote our key (an admin turning it into a reservation, or
            // changing its attributes): take it as it is now, and re-assert our
            // attributes and TTL right away unless it is a reservation.
            info!(subnet = %current.key, reservation = current.is_reservation(),
                "this node's lease was rewritten in etcd");
            self.lease.etcd_lease = current.etcd_lease;
            self.lease.expiration = None;
            self.renew_at = (!current.is_reservation()).then(Instant::now);
        }
        Next::Nothing
    }

    /// A renewal went through (with the pending attributes, if any).
    pub fn renewed(&mut self, lease: Lease) {
        if self.pending.as_ref() == Some(&lease.attrs) {
            self.attrs = lease.attrs.clone();
            self.pending = None;
        }
        self.acquired(lease);
    }

    /// This node publishes `attrs` from now on: the next renewal, now, writes them.
    pub fn publish(&mut self, attrs: LeaseAttrs) {
        self.pending = Some(attrs);
        self.renew_at = Some(Instant::now());
    }

    /// What the next renewal writes.
    pub fn to_write(&self) -> &LeaseAttrs {
        self.pending.as_ref().unwrap_or(&self.attrs)
    }

    /// A renewal found the key changed: `current` is what it holds now.
    pub fn renew_lost(&mut self, current: Option<Lease>) -> Next {
        match current {
            Some(c) if c.attrs.public_ip == self.attrs.public_ip => {
                // Rewritten by someone, but still ours: adopt it and retry soon.
                self.lease.revision = c.revision;
                self.lease.etcd_lease = c.etcd_lease;
                self.renew_at =
                    (!c.is_reservation()).then(|| Instant::now() + Duration::from_secs(1));
                Next::Nothing
            }
            _ => {
                warn!(subnet = %self.lease.key, "lost this node's lease while renewing it; re-acquiring");
                Next::Reacquire
            }
        }
    }

    /// A renewal failed (etcd unreachable): retry within half the remaining lifetime,
    /// at most a minute, at least half a second. Returns the delay.
    pub fn renew_failed(&mut self) -> Duration {
        let remaining = self
            .lease
            .expiration
            .and_then(|x| x.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        let retry = Duration::from_secs(60)
            .min(remaining / 2)
            .max(Duration::from_millis(500));
        self.renew_at = Some(Instant::now() + retry);
        retry
    }

    /// etcd went back in time: the revision we hold belongs to the lost history. Take
    /// the key as the next snapshot shows it, and renew at once so the lease gets a fresh
    /// TTL in the new store.
    pub fn store_reset(&mut self) {
        self.lease.revision = 0;
        self.renew_at = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_subnet::SubnetKey;

    fn attrs(ip: &str) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: ip.parse().unwrap(),
            backend_type: "vxlan".into(),
            ..LeaseAttrs::default()
        }
    }

    fn lease(ip: &str, etcd_lease: i64, revision: i64) -> Lease {
        Lease {
            key: SubnetKey::parse("10.244.3.0-24").unwrap(),
            attrs: attrs(ip),
            etcd_lease,
            expiration: (etcd_lease != 0)
                .then(|| SystemTime::now() + Duration::from_secs(24 * 3600)),
            revision,
        }
    }

    fn own() -> OwnLease {
        OwnLease::new(
            lease("198.18.0.11", 7, 10),
            attrs("198.18.0.11"),
            Duration::from_secs(24 * 3600),
            Duration::from_secs(60 * 60),
        )
    }

    fn soon(at: Option<Instant>) -> bool {
        at.is_some_and(|at| at <= Instant::now() + Duration::from_secs(2))
    }

    #[test]
    fn renewal_is_scheduled_the_margin_before_expiry() {
        let o = own();
        let at = o.renew_at.unwrap();
        let in_23h = Instant::now() + Duration::from_secs(23 * 3600);
        assert!(at <= in_23h && at + Duration::from_secs(5) >= in_23h);
    }

    #[test]
    fn a_key_rewritten_with_another_etcd_lease_is_renewed_now() {
        // This is what the first snapshot can show (someone rewrote the key between
        // acquiring and listing): the renewal must be scheduled, not dropped.
        let mut o = own();
        let next = o.observe(OwnLeaseChange::Written(Box::new(lease(
            "198.18.0.11",
            99,
            11,
        ))));
        assert_eq!(next, Next::Nothing);
        assert!(soon(o.renew_at), "renew now");
        assert_eq!((o.lease.etcd_lease, o.lease.revision), (99, 11));
    }

    #[test]
    fn a_key_turned_into_a_reservation_is_not_renewed() {
        let mut o = own();
        o.observe(OwnLeaseChange::Written(Box::new(lease(
            "198.18.0.11",
            0,
            11,
        ))));
        assert_eq!(o.renew_at, None);
    }

    #[test]
    fn an_older_or_own_write_changes_nothing() {
        let mut o = own();
        let before = o.renew_at;
        let next = o.observe(OwnLeaseChange::Written(Box::new(lease(
            "198.18.0.11",
            99,
            10,
        ))));
        assert_eq!(
            (next, o.renew_at, o.lease.etcd_lease),
            (Next::Nothing, before, 7)
        );
    }

    #[test]
    fn a_takeover_or_a_deletion_means_reacquiring() {
        let mut o = own();
        let taken = lease("198.18.0.66", 99, 11);
        assert_eq!(
            o.observe(OwnLeaseChange::Written(Box::new(taken))),
            Next::Reacquire
        );
        assert_eq!(o.observe(OwnLeaseChange::Deleted), Next::Reacquire);
    }

    #[test]
    fn a_lost_renewal_of_a_key_still_ours_is_retried_soon() {
        let mut o = own();
        let next = o.renew_lost(Some(lease("198.18.0.11", 42, 20)));
        assert_eq!(next, Next::Nothing);
        assert_eq!((o.lease.etcd_lease, o.lease.revision), (42, 20));
        assert!(soon(o.renew_at));
        // Rewritten as a reservation: nothing to renew.
        assert_eq!(
            o.renew_lost(Some(lease("198.18.0.11", 0, 21))),
            Next::Nothing
        );
        assert_eq!(o.renew_at, None);
    }

    #[test]
    fn a_lost_renewal_of_a_key_taken_or_gone_means_reacquiring() {
        let mut o = own();
        assert_eq!(
            o.renew_lost(Some(lease("198.18.0.66", 42, 20))),
            Next::Reacquire
        );
        assert_eq!(o.renew_lost(None), Next::Reacquire);
    }

    #[test]
    fn a_failed_renewal_is_retried_within_a_minute() {
        let mut o = own();
        let retry = o.renew_failed();
        assert_eq!(retry, Duration::from_secs(60));
        o.lease.expiration = Some(SystemTime::now());
        assert_eq!(o.renew_failed(), Duration::from_millis(500));
    }

    #[test]
    fn a_store_reset_renews_now_and_adopts_the_next_write() {
        let mut o = own();
        o.store_reset();
        assert!(soon(o.renew_at));
        // The restored store holds the key at an older revision: adopted.
        o.observe(OwnLeaseChange::Written(Box::new(lease(
            "198.18.0.11",
            7,
            3,
        ))));
        assert_eq!(o.lease.revision, 3);
    }

    #[test]
    fn a_listing_of_the_old_address_while_the_new_one_is_pending_is_no_takeover() {
        let mut own = own();
        own.publish(attrs("198.18.0.111"));
        assert!(own.renew_at.is_some(), "written by a renewal now");
        assert_eq!(own.to_write().public_ip.to_string(), "198.18.0.111");
        // A new watch's listing still shows the key as this node last wrote it.
        let listed = OwnLeaseChange::Written(Box::new(lease("198.18.0.11", 7, 10)));
        assert_eq!(own.observe(listed), Next::Nothing);
        // The rewrite seen in the watch before its answer: adopted.
        let rewritten = OwnLeaseChange::Written(Box::new(lease("198.18.0.111", 8, 11)));
        assert_eq!(own.observe(rewritten), Next::Nothing);
        assert_eq!(own.attrs.public_ip.to_string(), "198.18.0.111");
        assert!(own.pending.is_none());
        // From then on the old address is another node's.
        let other = OwnLeaseChange::Written(Box::new(lease("198.18.0.11", 9, 12)));
        assert_eq!(own.observe(other), Next::Reacquire);
    }

    #[test]
    fn a_listing_older_than_the_rewrite_with_the_new_address_is_stale() {
        let mut own = own();
        own.publish(attrs("198.18.0.111"));
        own.renewed(lease("198.18.0.111", 8, 11));
        assert_eq!(own.attrs.public_ip.to_string(), "198.18.0.111");
        // A watch started again lists the key as it was before the rewrite.
        let stale = OwnLeaseChange::Written(Box::new(lease("198.18.0.11", 7, 10)));
        assert_eq!(own.observe(stale), Next::Nothing);
        // A newer write with another address is a takeover.
        let taken = OwnLeaseChange::Written(Box::new(lease("198.18.0.12", 9, 12)));
        assert_eq!(own.observe(taken), Next::Reacquire);
    }
}
