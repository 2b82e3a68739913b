//! Running a property with weft's settings, and proving that its cases ran.
//!
//! - Cases: [`DEFAULT_CASES`] per property, or `PROPTEST_CASES` for a longer run. A value
//!   of 0 or one that does not parse fails the test instead of silently running nothing.
//! - No failure persistence: proptest would otherwise write `proptest-regressions/` files
//!   into the source tree. A failure instead prints the minimal input and the seed that
//!   reproduces the whole run (`PROPTEST_RNG_SEED=<seed>`).
//! - Every case returns an [`Outcome`] label (e.g. `"ok"`, `"err"`); [`check`] counts them
//!   and fails unless exactly the configured number of cases ran, and the caller asserts
//!   with [`Tally::assert_seen`] that the generators reached every outcome that matters (a
//!   generator that never produces a valid document tests only the first error path).

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hash::{BuildHasher as _, RandomState};
use std::time::Instant;

/// Cases per property in a normal `cargo test` run.
pub const DEFAULT_CASES: u32 = 2048;

/// The label of what one case did, for [`Tally`].
pub type Outcome = &'static str;

/// `"ok"` or `"err"`: the usual outcome of a parser call.
pub fn outcome<T, E>(result: &Result<T, E>) -> Outcome {
    if result.is_ok() { "ok" } else { "err" }
}

/// The number of cases to run: `PROPTEST_CASES`, else [`DEFAULT_CASES`].
///
/// # Panics
/// If `PROPTEST_CASES` is set to anything but a positive number.
pub fn cases() -> u32 {
    let Some(text) = std::env::var_os("PROPTEST_CASES") else {
        return DEFAULT_CASES;
    };
    match text.to_str().and_then(|t| t.trim().parse::<u32>().ok()) {
        Some(n) if n > 0 => n,
        _ => panic!("PROPTEST_CASES={text:?}: expected a positive number of cases"),
    }
}

/// proptest's configuration for weft's property tests (see the module docs). The seed is
/// `PROPTEST_RNG_SEED` if set, else a fresh random one, so every run explores new inputs
/// and a failing run can be replayed.
pub fn config() -> Config {
    let defaults = Config::default();
    let rng_seed = match defaults.rng_seed {
        RngSeed::Fixed(seed) => RngSeed::Fixed(seed),
        RngSeed::Random => RngSeed::Fixed(RandomState::new().hash_one("weft")),
    };
    Config {
        cases: cases(),
        failure_persistence: None,
        rng_seed,
        ..defaults
    }
}

/// How many cases ended in each [`Outcome`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally(BTreeMap<Outcome, u32>);

impl Tally {
    pub fn count(&self, outcome: Outcome) -> u32 {
        self.0.get(outcome).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u32 {
        self.0.values().sum()
    }

    /// Fails unless every one of `outcomes` happened at least once.
    ///
    /// # Panics
    /// With the tally, if an outcome never happened.
    pub fn assert_seen(&self, outcomes: &[Outcome]) {
        for outcome in outcomes {
            assert!(
                self.count(outcome) > 0,
                "no case ended in {outcome:?}; the generators do not reach it: {self:?}"
            );
        }
    }
}

/// Runs `property` on [`cases`] values of `strategy` and returns how the cases ended. A
/// panic inside `property` is a failure (proptest catches it and shrinks the input).
///
/// # Panics
/// If a case fails (with the minimal failing input and the seed to replay the run), or
/// if not every case ran to an outcome.
pub fn check<S>(strategy: S, property: impl Fn(S::Value) -> Result<Outcome, TestCaseError>) -> Tally
where
    S: Strategy,
{
    let config = config();
    let (cases, seed) = (config.cases, config.rng_seed);
    let tally = RefCell::new(Tally::default());
    let started = Instant::now();
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |value| {
        let outcome = property(value)?;
        *tally.borrow_mut().0.entry(outcome).or_insert(0) += 1;
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}\nreplay this run with PROPTEST_RNG_SEED={seed}");
    }
    let tally = tally.into_inner();
    // Shown with `--nocapture`: what ran, how the cases ended, and what it cost.
    eprintln!(
        "{}: {} cases in {:.2?}: {:?}",
        std::thread::current().name().unwrap_or("property"),
        tally.total(),
        started.elapsed(),
        tally.0
    );
    assert_eq!(
        tally.total(),
        cases,
        "expected {cases} cases to run, got {tally:?}"
    );
    tally
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_case_runs_and_is_counted() {
        let tally = check(any::<u8>(), |n| Ok(if n % 2 == 0 { "even" } else { "odd" }));
        assert_eq!(tally.total(), cases());
        tally.assert_seen(&["even", "odd"]);
    }

    #[test]
    #[should_panic(expected = "minimal failing input")]
    fn a_panic_in_the_property_is_a_failure() {
        check(any::<u8>(), |n| {
            assert!(n < 200, "too big");
            Ok("ok")
        });
    }

    #[test]
    #[should_panic(expected = "no case ended in \"missing\"")]
    fn an_outcome_never_reached_fails() {
        check(Just(()), |()| Ok("ok")).assert_seen(&["ok", "missing"]);
    }
}
