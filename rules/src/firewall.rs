//! The executor of the traffic rules: finds the tools, skips a check the nftables
//! generation says is not needed, and has the wanted mode ([`IptablesMode`] or
//! [`NftMode`]) sync its rules while the other removes its leftovers.

use crate::RulesError;
use crate::iptables_mode::IptablesMode;
use crate::mode::{Check, RuleMode};
use crate::nfnetlink::NfSocket;
use crate::nft_mode::NftMode;
use crate::render::RuleSpec;
use crate::report::CheckReport;
use crate::tools::{IptablesVariant, SearchPath};
use std::path::PathBuf;
use tracing::debug;

/// See the module docs.
#[derive(Debug)]
pub struct Firewall {
    path: SearchPath,
    discovered: bool,
    iptables: IptablesMode,
    nft: NftMode,
    netlink: Option<NfSocket>,
    /// The nftables generation and the spec of the last check that found everything
    /// right: while both are unchanged, a check reads nothing.
    verified: Option<(u32, RuleSpec)>,
}

impl Firewall {
    /// A firewall whose tools are looked up in `search_path` (in order).
    pub fn new(search_path: Vec<PathBuf>) -> Firewall {
        Firewall::with_path(SearchPath::new(search_path))
    }

    /// Tools looked up in `PATH`, then the usual system directories.
    pub fn from_env() -> Firewall {
        Firewall::with_path(SearchPath::from_env())
    }

    fn with_path(path: SearchPath) -> Firewall {
        Firewall {
            path,
            discovered: false,
            iptables: IptablesMode::default(),
            nft: NftMode::default(),
            netlink: None,
            verified: None,
        }
    }

    /// Checks the rules against `spec` and repairs them. Reads nothing when the
    /// nftables generation has not moved since the last check that found everything
    /// right for the same spec (and the rules live in nftables).
    pub async fn check(&mut self, spec: &RuleSpec) -> Result<CheckReport, RulesError> {
        let mut report = CheckReport::default();
        let generation = self.generation();
        if let (Some(now), Some((seen, seen_spec))) = (generation, &self.verified)
            && now == *seen
            && seen_spec == spec
            && self.generation_covers(spec)
        {
            return Ok(report);
        }
        self.verified = None;
        report.read = true;
        if !self.discovered {
            self.iptables.discover(&self.path, &mut report).await;
            self.nft.discover(&self.path);
            self.discovered = true;
        }
        let mut check = Check {
            path: &self.path,
            netlink: self.netlink.as_mut(),
            report: &mut report,
        };
        if spec.nftables {
            switch(&mut self.nft, &mut self.iptables, spec, &mut check).await?;
        } else {
            switch(&mut self.iptables, &mut self.nft, spec, &mut check).await?;
        }
        // After a repair the next check reads again, which also verifies the repair.
        if report.repaired.is_empty()
            && let Some(generation) = generation
        {
            self.verified = Some((generation, spec.clone()));
        }
        Ok(report)
    }

    /// The iptables variant in use, once a check found it.
    pub fn iptables_variant(&self) -> Option<IptablesVariant> {
        self.iptables.variant()
    }

    /// Whether every rule `spec` concerns lives in nftables, so the generation counter
    /// sees every change.
    fn generation_covers(&self, spec: &RuleSpec) -> bool {
        spec.nftables || self.iptables_variant() == Some(IptablesVariant::Nft)
    }

    /// The nftables ruleset generation, or `None` if it cannot be read.
    fn generation(&mut self) -> Option<u32> {
        if self.netlink.is_none() {
            match NfSocket::open() {
                Ok(socket) => self.netlink = Some(socket),
                Err(e) => {
                    debug!("cannot open a netfilter netlink socket: {e}");
                    return None;
                }
            }
        }
        let socket = self.netlink.as_mut()?;
        match socket.generation() {
            Ok(generation) => Some(generation),
            Err(e) => {
                debug!("cannot read the nftables generation: {e}");
                self.netlink = None;
                None
            }
        }
    }
}

/// The wanted mode syncs; the other removes what it left.
async fn switch(
    wanted: &mut impl RuleMode,
    other: &mut impl RuleMode,
    spec: &RuleSpec,
    check: &mut Check<'_>,
) -> Result<(), RulesError> {
    wanted.sync(spec, check).await?;
    other.remove_leftovers(check).await;
    Ok(())
}
