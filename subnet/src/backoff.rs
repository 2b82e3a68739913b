//! Exponential backoff with jitter, for reconnect and retry loops, and the one retry
//! step both subnet managers use: they, not the daemon, decide what is retried.

use std::time::Duration;
use tracing::warn;

/// Retry pacing of a manager's startup steps (shortened in tests).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    pub fn backoff(self) -> Backoff {
        Backoff::new(self.initial, self.max)
    }
}

/// Logs `problem`, hands it to `report` (readiness), and sleeps the next delay.
pub async fn retry_later(problem: &str, backoff: &mut Backoff, report: &mut dyn FnMut(&str)) {
    let delay = backoff.next_delay();
    warn!("{problem}; retrying in {delay:?}");
    report(problem);
    tokio::time::sleep(delay).await;
}

/// Doubles from `initial` up to `max`; each delay is randomised in [delay/2, delay] so
/// a fleet of nodes does not reconnect in lockstep after an etcd restart.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = delay / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// So kube-runtime's watcher can use the same policy.
impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

impl ::kube::runtime::utils::Backoff for Backoff {
    fn reset(&mut self) {
        Backoff::reset(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[9] >= Duration::from_millis(2500) && delays[9] <= Duration::from_secs(5));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
