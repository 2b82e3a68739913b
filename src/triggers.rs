//! The triggers both modes share once a node holds a subnet: kernel notifications about
//! weft's objects (debounced), a pass soon after a lease change, the pass that sweeps
//! once a datastore grace period is over, the retry of a pass that failed (backing off up
//! to the reconcile interval), the reconcile timer, the housekeeping tick, and the traffic
//! rules' timer (`--iptables-resync`) and check outcomes.
//! Each mode's event loop then selects over shutdown, its own datastore, and these.

use crate::traffic_rules::Outcome;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Interval, MissedTickBehavior};
use weft_backend::kernel::KernelEvent;
use weft_subnet::backoff::Backoff;

/// Quiet period after a kernel notification before a reconcile pass, so a burst of
/// notifications (an admin script, a device deletion) costs one pass.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// The first retry of a failed pass comes this soon; later ones back off, doubling up to
/// the reconcile interval. A change the kernel refused once (a device not up yet, a
/// gateway not yet reachable) usually goes through at once the second time, and waiting
/// for the timer kept the node not ready and its peers unreachable for a whole interval.
pub const RETRY_FIRST: Duration = Duration::from_millis(500);

/// Period of the housekeeping tick (retrying a failed subnet.env write). The retry runs
/// on every tick; its log line is rate-limited by `LogLimiter`.
pub const TICK: Duration = Duration::from_secs(5);

/// Why a reconcile pass runs; bounded, so it can label a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PassTrigger {
    /// The first pass, once the first lease listing is in.
    Startup,
    /// The peer set changed: a targeted pass over the changed peers (a full one while
    /// one is due: nothing observed yet, a change failed, the node changed).
    LeaseChange,
    /// A kernel notification about weft's objects that the targeted path cannot describe
    /// (a device, an address, a route someone added through weft's device), or lost
    /// notifications: a full pass.
    KernelEvent,
    /// Notifications reported entries of weft's deleted: a targeted pass puts back
    /// exactly those (a full one while one is due).
    EntryRepair,
    /// The periodic pass (`--reconcile-interval`).
    Timer,
    /// A datastore grace period ended: the pass that removes entries again.
    GraceEnd,
    /// This node's own subnet changed (re-acquired, or a new podCIDR).
    SubnetChange,
    /// This node's external interface or its address changed.
    UnderlayChange,
    /// The previous pass failed (a change the kernel refused, or the state could not be
    /// read): a full pass again after a backoff.
    Retry,
}

impl PassTrigger {
    pub const ALL: [PassTrigger; 9] = [
        PassTrigger::Startup,
        PassTrigger::LeaseChange,
        PassTrigger::KernelEvent,
        PassTrigger::EntryRepair,
        PassTrigger::Timer,
        PassTrigger::GraceEnd,
        PassTrigger::SubnetChange,
        PassTrigger::UnderlayChange,
        PassTrigger::Retry,
    ];

    pub fn label(self) -> &'static str {
        match self {
            PassTrigger::Startup => "startup",
            PassTrigger::LeaseChange => "lease_change",
            PassTrigger::KernelEvent => "kernel_event",
            PassTrigger::EntryRepair => "entry_repair",
            PassTrigger::Timer => "timer",
            PassTrigger::GraceEnd => "grace_end",
            PassTrigger::SubnetChange => "subnet_change",
            PassTrigger::UnderlayChange => "underlay_change",
            PassTrigger::Retry => "retry",
        }
    }

    /// Whether this trigger asks for a targeted pass (the others run a full one).
    pub fn is_targeted(self) -> bool {
        matches!(self, PassTrigger::LeaseChange | PassTrigger::EntryRepair)
    }

    /// Which of two waiting triggers the one pass runs as: a full pass covers a targeted
    /// one, and a lease change's targeted pass also repairs reported entries.
    fn rank(self) -> u8 {
        match self {
            PassTrigger::EntryRepair => 0,
            PassTrigger::LeaseChange => 1,
            _ => 2,
        }
    }
}

/// What woke the node up.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// A kernel notification (the node decides whether it concerns weft).
    Kernel(KernelEvent),
    /// A pass scheduled by a lease change or a relevant kernel notification (when several
    /// are waiting, one pass runs as the broadest: a full pass, else a lease change).
    Converge(PassTrigger),
    /// The datastore grace period is over: a pass that may remove entries again.
    Sweep,
    /// The periodic full pass (`--reconcile-interval`).
    Reconcile,
    /// Housekeeping: retry a failed subnet.env write.
    Tick,
    /// Time for a traffic-rules check (`--iptables-resync`).
    RulesCheck,
    /// A traffic-rules check finished.
    RulesChecked(Outcome),
}

/// See the module docs.
#[derive(Debug)]
pub struct Triggers {
    kernel_events: UnboundedReceiver<KernelEvent>,
    reconcile: Interval,
    /// Paces the retries of failed passes; reset by a pass that succeeds.
    retry: Backoff,
    /// When the failed pass is retried. Its own deadline, not `converge_at`: a retry may
    /// be seconds away, and must neither delay a notification's pass nor be cancelled
    /// with it.
    retry_at: Option<Instant>,
    tick: Interval,
    converge_at: Option<Instant>,
    converge_why: PassTrigger,
    sweep_at: Option<Instant>,
    rules_check: Option<Interval>,
    rules_outcomes: Option<UnboundedReceiver<Outcome>>,
}

impl Triggers {
    pub fn new(kernel_events: UnboundedReceiver<KernelEvent>, reconcile_every: Duration) -> Self {
        let reconcile_every = reconcile_every.max(Duration::from_secs(1));
        let mut reconcile = tokio::time::interval(reconcile_every);
        // A pass that overran its period is not followed by a burst of catch-up passes.
        reconcile.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Triggers {
            kernel_events,
            reconcile,
            retry: Backoff::new(RETRY_FIRST, reconcile_every.max(RETRY_FIRST)),
            retry_at: None,
            tick,
            converge_at: None,
            converge_why: PassTrigger::KernelEvent,
            sweep_at: None,
            rules_check: None,
            rules_outcomes: None,
        }
    }

    /// Adds the traffic rules: a check every `every` (the first after one period: the
    /// rules task checks at start by itself) and the outcomes of the checks.
    pub fn with_rules(&mut self, every: Duration, outcomes: UnboundedReceiver<Outcome>) {
        let every = every.max(Duration::from_secs(1));
        let mut check = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.rules_check = Some(check);
        self.rules_outcomes = Some(outcomes);
    }

    /// A pass as soon as the loop is free (after a lease batch, or a notification overrun).
    pub fn converge_now(&mut self, why: PassTrigger) {
        self.note(why);
        self.converge_at = Some(now());
    }

    /// A pass after the debounce delay, unless one is already scheduled.
    pub fn converge_soon(&mut self, why: PassTrigger) {
        self.note(why);
        self.converge_at.get_or_insert_with(|| now() + DEBOUNCE);
    }

    /// The last pass failed: a full pass after the next backoff delay. Returns the delay.
    pub fn pass_failed(&mut self) -> Duration {
        let delay = self.retry.next_delay();
        self.retry_at = Some(now() + delay);
        delay
    }

    /// The last pass applied everything: no retry is due, and the next failure is
    /// retried quickly again.
    pub fn pass_succeeded(&mut self) {
        self.retry.reset();
        self.retry_at = None;
    }

    fn note(&mut self, why: PassTrigger) {
        if self.converge_at.is_none() || why.rank() > self.converge_why.rank() {
            self.converge_why = why;
        }
    }

    /// A pass at `at` (the end of a datastore grace period), replacing any earlier one.
    pub fn sweep_at(&mut self, at: Option<Instant>) {
        self.sweep_at = at;
    }

    /// The next trigger; `None` when the kernel notifications stopped (fatal).
    pub async fn next(&mut self) -> Option<Trigger> {
        tokio::select! {
            event = self.kernel_events.recv() => event.map(Trigger::Kernel),
            () = sleep_until(self.converge_at) => {
                self.converge_at = None;
                Some(Trigger::Converge(self.converge_why))
            }
            () = sleep_until(self.sweep_at) => {
                self.sweep_at = None;
                Some(Trigger::Sweep)
            }
            () = sleep_until(self.retry_at) => {
                self.retry_at = None;
                // The retry is a full pass: the timer's next one is a period after it, so a
                // change that keeps failing costs one full pass per backoff delay, not two.
                self.reconcile.reset();
                Some(Trigger::Converge(PassTrigger::Retry))
            }
            _ = self.reconcile.tick() => Some(Trigger::Reconcile),
            _ = self.tick.tick() => Some(Trigger::Tick),
            () = tick_if_some(self.rules_check.as_mut()) => Some(Trigger::RulesCheck),
            outcome = recv_if_some(self.rules_outcomes.as_mut()) => Some(Trigger::RulesChecked(outcome)),
        }
    }
}

/// The next tick of `interval`; forever without one.
async fn tick_if_some(interval: Option<&mut Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The next message; forever without a receiver or once its sender is gone.
async fn recv_if_some<T>(receiver: Option<&mut UnboundedReceiver<T>>) -> T {
    match receiver {
        Some(receiver) => match receiver.recv().await {
            Some(value) => value,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Now, on tokio's clock (the same as the system's, except in tests that pause time):
/// every deadline here is slept on with tokio's timer.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Sleeps until `at`; forever when there is nothing scheduled.
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic_rules::RulesFailure;
    use weft_rules::RulesError;

    #[tokio::test(start_paused = true)]
    async fn scheduled_passes_fire_in_order_and_once() {
        let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut t = Triggers::new(rx, Duration::from_secs(3600));
        // Both intervals fire at once on creation.
        assert!(matches!(
            t.next().await,
            Some(Trigger::Reconcile | Trigger::Tick)
        ));
        assert!(matches!(
            t.next().await,
            Some(Trigger::Reconcile | Trigger::Tick)
        ));
        t.converge_soon(PassTrigger::EntryRepair);
        t.converge_soon(PassTrigger::LeaseChange); // debounced: still one pass
        t.converge_soon(PassTrigger::EntryRepair);
        t.sweep_at(Some(Instant::now() + Duration::from_secs(2)));
        // A lease change's targeted pass also repairs the reported entries.
        assert_eq!(
            t.next().await,
            Some(Trigger::Converge(PassTrigger::LeaseChange))
        );
        // A full pass covers a lease change waiting with it.
        t.converge_now(PassTrigger::LeaseChange);
        t.converge_soon(PassTrigger::KernelEvent);
        t.converge_soon(PassTrigger::LeaseChange);
        assert_eq!(
            t.next().await,
            Some(Trigger::Converge(PassTrigger::KernelEvent))
        );
        assert_eq!(t.next().await, Some(Trigger::Sweep));
        // Then only the housekeeping tick remains.
        assert_eq!(t.next().await, Some(Trigger::Tick));
    }

    #[tokio::test(start_paused = true)]
    async fn each_pass_is_counted_as_what_scheduled_it() {
        let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut t = Triggers::new(rx, Duration::from_secs(3600));
        let _ = t.next().await;
        let _ = t.next().await;
        t.converge_now(PassTrigger::LeaseChange);
        assert_eq!(
            t.next().await,
            Some(Trigger::Converge(PassTrigger::LeaseChange))
        );
        t.converge_soon(PassTrigger::KernelEvent);
        assert_eq!(
            t.next().await,
            Some(Trigger::Converge(PassTrigger::KernelEvent))
        );
    }

    /// The time until the retry pass (the timers' triggers on the way let through).
    async fn time_to_retry(t: &mut Triggers) -> Duration {
        let started = tokio::time::Instant::now();
        for _ in 0..10 {
            match t.next().await {
                Some(Trigger::Converge(PassTrigger::Retry)) => return started.elapsed(),
                Some(Trigger::Reconcile | Trigger::Tick) => {}
                other => panic!("expected the retry pass, got {other:?}"),
            }
        }
        panic!("no retry pass among the next 10 triggers")
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_pass_is_retried_soon_backing_off_to_the_interval() {
        let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let interval = Duration::from_secs(4);
        let mut t = Triggers::new(rx, interval);
        let _ = t.next().await;
        let _ = t.next().await;
        // Each delay is jittered into [d/2, d]; d doubles from RETRY_FIRST to the interval.
        let mut bound = RETRY_FIRST;
        for _ in 0..4 {
            let delay = t.pass_failed();
            assert!(
                delay >= bound / 2 && delay <= bound,
                "{delay:?} vs {bound:?}"
            );
            let waited = time_to_retry(&mut t).await;
            assert!(waited >= delay, "{waited:?} < {delay:?}");
            bound = (bound * 2).min(interval);
        }
        assert_eq!(bound, interval, "the backoff reached its cap");
        let delay = t.pass_failed();
        assert!(
            delay >= interval / 2 && delay <= interval,
            "capped: {delay:?}"
        );
        let _ = time_to_retry(&mut t).await;
        // Success starts over.
        t.pass_succeeded();
        assert!(t.pass_failed() <= RETRY_FIRST);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_retry_delays_no_other_pass_and_a_success_cancels_it() {
        let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut t = Triggers::new(rx, Duration::from_secs(3600));
        let _ = t.next().await;
        let _ = t.next().await;
        let delay = t.pass_failed();
        assert!(delay > DEBOUNCE);
        let started = tokio::time::Instant::now();
        t.converge_soon(PassTrigger::KernelEvent);
        assert_eq!(
            t.next().await,
            Some(Trigger::Converge(PassTrigger::KernelEvent))
        );
        assert_eq!(started.elapsed(), DEBOUNCE);
        // That pass applied everything: no retry comes, only the housekeeping tick.
        t.pass_succeeded();
        assert_eq!(t.next().await, Some(Trigger::Tick));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_pass_moves_the_timer_a_period_after_it() {
        let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let interval = Duration::from_secs(4);
        let mut t = Triggers::new(rx, interval);
        let started = tokio::time::Instant::now();
        let _ = t.next().await;
        let _ = t.next().await;
        let _ = t.pass_failed();
        let retried = time_to_retry(&mut t).await;
        loop {
            match t.next().await {
                Some(Trigger::Reconcile) => break,
                Some(Trigger::Tick) => {}
                other => panic!("expected the timer, got {other:?}"),
            }
        }
        assert_eq!(started.elapsed(), retried + interval);
    }

    #[tokio::test(start_paused = true)]
    async fn kernel_events_pass_through_and_their_end_is_reported() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut t = Triggers::new(rx, Duration::from_secs(3600));
        let _ = t.next().await;
        let _ = t.next().await;
        tx.send(KernelEvent::Overrun).unwrap();
        assert_eq!(t.next().await, Some(Trigger::Kernel(KernelEvent::Overrun)));
        drop(tx);
        assert_eq!(t.next().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn rules_checks_every_period_and_outcomes_pass_through() {
        let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut t = Triggers::new(rx, Duration::from_secs(3600));
        let _ = t.next().await;
        let _ = t.next().await;
        let (outcomes_tx, outcomes_rx) = tokio::sync::mpsc::unbounded_channel();
        t.with_rules(Duration::from_secs(5), outcomes_rx);
        let start = tokio::time::Instant::now();
        // Not at once (the task checks at start by itself), then every 5 s, before the
        // 5 s housekeeping tick that is due at the same time.
        let first = t.next().await;
        assert!(matches!(first, Some(Trigger::RulesCheck | Trigger::Tick)));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        outcomes_tx
            .send(Err(RulesFailure::from(RulesError::NotApplied(
                "no iptables".into(),
            ))))
            .unwrap();
        let mut seen = vec![first];
        for _ in 0..2 {
            seen.push(t.next().await);
        }
        assert!(seen.iter().any(|t| matches!(
            t,
            Some(Trigger::RulesChecked(Err(failure)))
                if failure.to_string() == "the rules are still wrong after applying them: no iptables"
        )));
        assert!(seen.contains(&Some(Trigger::RulesCheck)));
        // A dropped task is not an error: no more outcomes, the timer goes on.
        drop(outcomes_tx);
        for _ in 0..4 {
            assert!(matches!(
                t.next().await,
                Some(Trigger::RulesCheck | Trigger::Tick)
            ));
        }
    }
}
