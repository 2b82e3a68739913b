//! When a retry loop should log a problem it meets again and again: in full the first
//! time and whenever the problem changes, then as a reminder at most once per period, and
//! once more when it is over. A loop that retries every 5 s must not write 720 identical
//! lines an hour, but an operator must still see that the problem lasts.
//!
//! The decision is pure (the caller passes the time), so it is tested without waiting,
//! and any loop can use it: the subnet.env writer, the health server's accept loop.

use std::time::{Duration, Instant};

/// How often a lasting problem is repeated in the log (docs/design.md promises "once
/// plus a reminder every 30 s").
pub const REMINDER_PERIOD: Duration = Duration::from_secs(30);

/// What to do with one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The first failure, or a different message than the last one: log it.
    New,
    /// The same message, and the reminder is due: log it again with how long it has
    /// lasted and how many failures were not logged since the last line.
    Reminder {
        failing_for: Duration,
        unlogged: u32,
    },
    /// The same message, logged recently: stay quiet.
    Quiet,
}

/// See the module docs.
#[derive(Debug)]
pub struct LogLimiter {
    period: Duration,
    ongoing: Option<Ongoing>,
}

#[derive(Debug)]
struct Ongoing {
    message: String,
    /// When the failures started (a change of message does not restart it).
    since: Instant,
    last_logged: Instant,
    unlogged: u32,
}

impl LogLimiter {
    /// A limiter that repeats a lasting problem at most once per `period`.
    pub fn new(period: Duration) -> LogLimiter {
        LogLimiter {
            period,
            ongoing: None,
        }
    }

    /// Records a failure described by `message` at `now` and says whether to log it.
    pub fn failure(&mut self, message: &str, now: Instant) -> Verdict {
        let Some(ongoing) = &mut self.ongoing else {
            self.ongoing = Some(Ongoing {
                message: message.to_string(),
                since: now,
                last_logged: now,
                unlogged: 0,
            });
            return Verdict::New;
        };
        if ongoing.message != message {
            ongoing.message = message.to_string();
            ongoing.last_logged = now;
            ongoing.unlogged = 0;
            return Verdict::New;
        }
        if now.saturating_duration_since(ongoing.last_logged) >= self.period {
            let verdict = Verdict::Reminder {
                failing_for: now.saturating_duration_since(ongoing.since),
                unlogged: ongoing.unlogged,
            };
            ongoing.last_logged = now;
            ongoing.unlogged = 0;
            return verdict;
        }
        ongoing.unlogged += 1;
        Verdict::Quiet
    }

    /// Records a success at `now`. If failures were going on, returns how long they
    /// lasted: the caller logs the recovery once.
    pub fn success(&mut self, now: Instant) -> Option<Duration> {
        self.ongoing
            .take()
            .map(|ongoing| now.saturating_duration_since(ongoing.since))
    }
}

/// A duration rounded down to whole seconds, for log lines ("35s", not "35.002817s").
pub fn whole_seconds(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(30);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_repeated_failure_is_logged_once_then_once_per_period() {
        let start = Instant::now();
        let mut limiter = LogLimiter::new(PERIOD);
        // A retry every 5 s, as the subnet.env writer does.
        let verdicts: Vec<Verdict> = (0..=12)
            .map(|tick| limiter.failure("disk full", start + secs(5 * tick)))
            .collect();
        let reminder = Verdict::Reminder {
            failing_for: secs(30),
            unlogged: 5,
        };
        let second_reminder = Verdict::Reminder {
            failing_for: secs(60),
            unlogged: 5,
        };
        let mut expected = vec![Verdict::New];
        expected.extend([Verdict::Quiet; 5]);
        expected.push(reminder);
        expected.extend([Verdict::Quiet; 5]);
        expected.push(second_reminder);
        assert_eq!(verdicts, expected);
    }

    #[test]
    fn a_changed_message_is_logged_at_once_and_keeps_the_start() {
        let start = Instant::now();
        let mut limiter = LogLimiter::new(PERIOD);
        assert_eq!(limiter.failure("disk full", start), Verdict::New);
        assert_eq!(
            limiter.failure("disk full", start + secs(5)),
            Verdict::Quiet
        );
        assert_eq!(
            limiter.failure("permission denied", start + secs(10)),
            Verdict::New
        );
        assert_eq!(
            limiter.failure("permission denied", start + secs(35)),
            Verdict::Quiet,
            "the period counts from the last line, the changed message"
        );
        assert_eq!(
            limiter.failure("permission denied", start + secs(40)),
            Verdict::Reminder {
                failing_for: secs(40),
                unlogged: 1
            }
        );
    }

    #[test]
    fn recovery_is_reported_once_and_restarts_the_cycle() {
        let start = Instant::now();
        let mut limiter = LogLimiter::new(PERIOD);
        assert_eq!(limiter.success(start), None, "nothing was failing");
        assert_eq!(limiter.failure("disk full", start), Verdict::New);
        assert_eq!(
            limiter.failure("disk full", start + secs(5)),
            Verdict::Quiet
        );
        assert_eq!(limiter.success(start + secs(12)), Some(secs(12)));
        assert_eq!(limiter.success(start + secs(17)), None);
        assert_eq!(
            limiter.failure("disk full", start + secs(20)),
            Verdict::New,
            "a failure after a recovery is news again"
        );
    }

    #[test]
    fn a_clock_that_goes_backwards_does_not_panic() {
        let start = Instant::now() + secs(100);
        let mut limiter = LogLimiter::new(PERIOD);
        assert_eq!(limiter.failure("x", start), Verdict::New);
        assert_eq!(limiter.failure("x", start - secs(50)), Verdict::Quiet);
        assert_eq!(limiter.success(start - secs(60)), Some(Duration::ZERO));
    }

    #[test]
    fn durations_print_in_whole_seconds() {
        let shown = format!("{:?}", whole_seconds(Duration::from_millis(35_002)));
        assert_eq!(shown, "35s");
    }
}
