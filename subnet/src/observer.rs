//! What the subnet managers tell the daemon about their datastore: each successful
//! contact, each failed request by operation, watch restarts and whether the watch stream
//! is open. The daemon turns this into metrics; this crate stays free of any metrics
//! library (it reports outcomes, the daemon decides how to expose them).
//!
//! Every label a manager passes is a `&'static str` from a fixed set (the operation names
//! in [`etcd`](crate::etcd) and [`kube`](crate::kube), [`WatchRestart::label`]), so an
//! exporter's label cardinality is bounded by construction.

use std::sync::Arc;

/// Why a datastore watch started over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WatchRestart {
    /// The stream broke or could not be opened (a reconnect with backoff follows).
    Error,
    /// The revision to resume from was compacted away: a fresh listing follows.
    Compacted,
    /// The store went back in time (or looked like it): a fresh listing follows.
    WentBack,
    /// The Kubernetes watcher started a new listing (at start, after `410 Gone` or a
    /// broken connection).
    Relist,
}

impl WatchRestart {
    pub const ALL: [WatchRestart; 4] = [
        WatchRestart::Error,
        WatchRestart::Compacted,
        WatchRestart::WentBack,
        WatchRestart::Relist,
    ];

    pub fn label(self) -> &'static str {
        match self {
            WatchRestart::Error => "error",
            WatchRestart::Compacted => "compacted",
            WatchRestart::WentBack => "went_back",
            WatchRestart::Relist => "relist",
        }
    }
}

/// Receives what a subnet manager sees of its datastore. Methods are called from the
/// managers' tasks and must be cheap (a counter increment, a timestamp).
pub trait DatastoreObserver: Send + Sync + std::fmt::Debug {
    /// A request succeeded, or a watch delivered a message.
    fn contact(&self);
    /// A request to the datastore failed; `operation` is one of the manager's fixed
    /// operation names (e.g. `list_leases`, `renew_lease`, `watch_nodes`).
    fn error(&self, operation: &'static str);
    /// The watch started over.
    fn watch_restart(&self, reason: WatchRestart);
    /// The watch stream was opened (`true`) or ended (`false`). While it is open the
    /// datastore is in contact: the connection is kept alive by pings.
    fn watch_open(&self, open: bool);
}

/// An observer that ignores everything (the default of the managers, and of tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct Unobserved;

impl DatastoreObserver for Unobserved {
    fn contact(&self) {}
    fn error(&self, _operation: &'static str) {}
    fn watch_restart(&self, _reason: WatchRestart) {}
    fn watch_open(&self, _open: bool) {}
}

/// A shared observer.
pub type Observer = Arc<dyn DatastoreObserver>;

/// The default observer.
pub fn unobserved() -> Observer {
    Arc::new(Unobserved)
}
