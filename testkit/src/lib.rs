//! Property-test support for weft's parsers of outside data (lease values and keys,
//! net-conf.json, subnet.env, CNI stdin and environment, Node annotations).
//!
//! Every such parser must return `Ok` or `Err` for any input and never panic: a panic on a
//! peer's lease or a Node annotation would stop the daemon, one in the CNI plugin would
//! fail pod creation with a backtrace instead of an error object. The tests feed them:
//! - [`text`]: strings of every kind (any Unicode, long runs of multi-byte characters,
//!   ASCII runs that stop just past a multi-byte character, address-like text);
//! - [`json`]: any JSON value (nested objects and arrays, huge, negative and fractional
//!   numbers, the parser's own field names in any letter case), near-valid documents (a
//!   valid one with one value replaced, one field dropped or repeated) and bytes (random,
//!   or a document's text cut or with one byte changed).
//!
//! [`process::run_bounded`] runs a real program with a time limit, for the tests that
//! drive the CNI plugins, helm and `ip`.
//!
//! [`check`] runs a property with weft's settings and proves the cases ran; see
//! `docs/testing.md` for how to run the tests and the longer run.
//!
//! This is a crate of its own because the strategies serve four crates, one of which (the
//! CNI plugin) depends on no other weft crate; it is a dev-dependency only.

pub mod json;
pub mod process;
mod runner;
pub mod text;

pub use runner::{DEFAULT_CASES, Outcome, Tally, cases, check, config, outcome};
