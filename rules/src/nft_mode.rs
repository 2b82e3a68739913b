//! nftables mode (`EnableNFTables`): flannel's tables through `nft`, one table per family,
//! compared with nft's own listing of what weft applied and replaced in one `nft -f`.

use crate::RulesError;
use crate::mode::{Check, RuleMode, nfproto};
use crate::render::{self, FAMILIES, RuleSpec};
use crate::report::CheckReport;
use crate::tools::{SearchPath, run};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tracing::debug;
use weft_lease::family::Family;

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct NftMode {
    nft: Option<PathBuf>,
    /// Whether this nft takes `masquerade fully-random` (probed once).
    fully_random: Option<bool>,
    /// How nft listed a table right after weft applied it: (wanted block, listing).
    printed: HashMap<Family, (String, String)>,
}

impl NftMode {
    /// Finds `nft` (once, at the first check).
    pub(crate) fn discover(&mut self, path: &SearchPath) {
        self.nft = path.find("nft");
    }

    /// Whether masquerading may be fully random: asked, and this nft takes it.
    async fn fully_random(
        &mut self,
        spec: &RuleSpec,
        nft: &Path,
        report: &mut CheckReport,
    ) -> bool {
        if !(spec.masquerade && spec.fully_random) {
            return false;
        }
        if self.fully_random.is_none() {
            let input = Some(render::NFT_FULLY_RANDOM_PROBE);
            let probe = run(nft, &["--check", "-f", "-"], input, report).await;
            if let Err(e) = &probe {
                debug!("nftables has no fully-random masquerade: {e}");
            }
            self.fully_random = Some(probe.is_ok());
        }
        self.fully_random == Some(true)
    }

    /// The tables to write (a block) or delete (`None`): those not as weft last left them.
    async fn stale_tables(
        &self,
        spec: &RuleSpec,
        fully_random: bool,
        nft: &Path,
        check: &mut Check<'_>,
    ) -> Vec<(Family, Option<String>)> {
        let mut tables = Vec::new();
        for family in FAMILIES {
            let (keyword, name) = render::nft_table(family);
            let Some(block) = render::nft_table_block(spec, family, fully_random) else {
                if table_exists(family, nft, check).await {
                    tables.push((family, None));
                }
                continue;
            };
            let listing = run(nft, &["list", "table", keyword, name], None, check.report)
                .await
                .ok();
            let right = match (&listing, self.printed.get(&family)) {
                (Some(listing), Some((applied, printed))) => {
                    *applied == block && listing == printed
                }
                _ => false,
            };
            if !right {
                tables.push((family, Some(block)));
            }
        }
        tables
    }
}

impl RuleMode for NftMode {
    async fn sync(&mut self, spec: &RuleSpec, check: &mut Check<'_>) -> Result<(), RulesError> {
        let wanted = FAMILIES
            .iter()
            .any(|f| render::nft_table_block(spec, *f, false).is_some());
        let nft = match self.nft.clone() {
            Some(nft) => nft,
            // Without nft no table of flannel's can have been made here by this host's
            // tools; without rules wanted there is nothing to do.
            None if !wanted => return Ok(()),
            None => return Err(RulesError::NoNft(check.path.text())),
        };
        let fully_random = self.fully_random(spec, &nft, check.report).await;
        let tables = self.stale_tables(spec, fully_random, &nft, check).await;
        if tables.is_empty() {
            return Ok(());
        }
        let script = render::nft_script(&tables);
        run(&nft, &["-f", "-"], Some(&script), check.report).await?;
        for (family, block) in tables {
            let (keyword, name) = render::nft_table(family);
            let Some(block) = block else {
                let line = format!("deleted nftables table {keyword} {name}");
                check.report.repaired.push(line);
                continue;
            };
            let listing = run(&nft, &["list", "table", keyword, name], None, check.report).await?;
            self.printed.insert(family, (block, listing));
            let line = format!("set nftables table {keyword} {name}");
            check.report.repaired.push(line);
        }
        Ok(())
    }

    /// iptables mode: flannel's nftables tables are deleted (over netlink, so no `nft`
    /// binary is needed), best effort as in flannel.
    async fn remove_leftovers(&mut self, check: &mut Check<'_>) {
        for family in FAMILIES {
            let (keyword, name) = render::nft_table(family);
            match self.remove_table(family, check).await {
                Ok(true) => check.report.repaired.push(format!(
                    "deleted nftables table {keyword} {name}, a leftover of nftables mode"
                )),
                Ok(false) => {}
                Err(e) => check.report.cleanup_errors.push(e),
            }
        }
    }
}

impl NftMode {
    /// Deletes flannel's table of `family`; whether it was there.
    async fn remove_table(&self, family: Family, check: &mut Check<'_>) -> Result<bool, String> {
        let (keyword, name) = render::nft_table(family);
        if let Some(socket) = check.netlink.as_deref_mut() {
            // Asked first: a delete of a missing table is an aborted nftables
            // transaction, which costs the kernel milliseconds (an RCU grace period).
            return match socket.table_exists(nfproto(family), name) {
                Ok(false) => Ok(false),
                _ => socket
                    .delete_table(nfproto(family), name)
                    .map_err(|e| format!("cannot delete nftables table {keyword} {name}: {e}")),
            };
        }
        let Some(nft) = &self.nft else {
            return Ok(false);
        };
        let listed = run(nft, &["list", "table", keyword, name], None, check.report).await;
        if listed.is_err() {
            return Ok(false);
        }
        run(nft, &["delete", "table", keyword, name], None, check.report)
            .await
            .map(|_| true)
            .map_err(|e| e.to_string())
    }
}

/// Whether flannel's nftables table of `family` exists: over netlink, or with `nft`
/// when netlink cannot tell.
async fn table_exists(family: Family, nft: &Path, check: &mut Check<'_>) -> bool {
    let (keyword, name) = render::nft_table(family);
    if let Some(socket) = check.netlink.as_deref_mut()
        && let Ok(exists) = socket.table_exists(nfproto(family), name)
    {
        return exists;
    }
    run(nft, &["list", "table", keyword, name], None, check.report)
        .await
        .is_ok()
}
