//! The reconciler's reporting, kept apart from its reconcile state: what has already
//! been logged (each rejected or skipped peer, foreign-route conflict and taken nexthop
//! id once, until it goes away and comes back), and the counts the metrics read.

use crate::admission::RejectKind;
use crate::backend::SkipKind;
use std::collections::{BTreeMap, HashSet};
use weft_lease::SubnetKey;
use weft_lease::family::Net;

#[derive(Debug, Default)]
pub(super) struct Reports {
    /// Rejected or skipped peers already logged, with the reason, so each is logged once.
    pub logged: HashSet<(SubnetKey, String)>,
    /// Foreign-route conflicts already logged.
    pub conflicts: HashSet<(Net, String)>,
    /// Routes without their nexthop object (another program holds its id), logged.
    pub taken_nexthops: HashSet<Net>,
    /// Peers rejected by admission since start, by rule (each peer and reason once).
    pub rejections: BTreeMap<RejectKind, u64>,
    /// Rejections first logged since the last pass, for its metrics.
    pub new_rejections: Vec<RejectKind>,
    /// The last pass's skipped peers, for the state view and the metrics.
    pub last_skipped: BTreeMap<SubnetKey, Vec<(SkipKind, String)>>,
}
