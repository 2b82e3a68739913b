//! The interface both ways of holding flannel's rules implement: iptables (nft or
//! legacy, [`crate::iptables_mode`]) and nftables ([`crate::nft_mode`]). A check syncs
//! the wanted mode's rules and removes the other mode's leftovers (as flannel does when
//! `EnableNFTables` changes).

use crate::RulesError;
use crate::nfnetlink::{NFPROTO_IPV4, NFPROTO_IPV6, NfSocket};
use crate::render::RuleSpec;
use crate::report::CheckReport;
use crate::tools::SearchPath;
use weft_lease::family::Family;

/// What both modes use during a check: where the tools are, the netfilter netlink socket
/// (when it could be opened), and the report being written.
#[derive(Debug)]
pub(crate) struct Check<'a> {
    pub path: &'a SearchPath,
    pub netlink: Option<&'a mut NfSocket>,
    pub report: &'a mut CheckReport,
}

/// One way of holding flannel's rules.
// Called only from `Firewall::check`, on the daemon's one-thread runtime: the futures
// need no `Send` bound, which is what this lint is about.
#[allow(async_fn_in_trait)]
pub(crate) trait RuleMode {
    /// Brings this mode's rules to `spec` (the wanted mode).
    async fn sync(&mut self, spec: &RuleSpec, check: &mut Check<'_>) -> Result<(), RulesError>;

    /// Removes what this mode left when it is not the wanted one; best effort, problems
    /// go to the report's `cleanup_errors`.
    async fn remove_leftovers(&mut self, check: &mut Check<'_>);
}

/// A family as netfilter netlink numbers it.
pub(crate) fn nfproto(family: Family) -> u8 {
    match family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}
