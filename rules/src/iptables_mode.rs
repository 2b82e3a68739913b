//! iptables mode: flannel's chains through `iptables` (the nft or legacy variant found on
//! the host's search path), read per chain and applied with one atomic
//! `iptables-restore --noflush` per family.

use crate::RulesError;
use crate::iptables::{self, ChainState};
use crate::mode::{Check, RuleMode};
use crate::render::{self, CHAINS, ChainId, FAMILIES, RuleSpec};
use crate::report::CheckReport;
use crate::tools::{FamilyTools, IptablesTools, IptablesVariant, SearchPath, family_name, run};
use std::collections::HashMap;
use tracing::warn;
use weft_lease::family::Family;

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct IptablesMode {
    tools: Option<IptablesTools>,
    /// How iptables printed a chain right after weft applied it, when that differs
    /// from flannel's text: (wanted, printed).
    printed: HashMap<(Family, &'static str), (ChainState, ChainState)>,
}

/// One family's chains to bring to what is wanted.
struct FamilyPlan {
    /// `iptables-restore` lines per table.
    tables: Vec<(&'static str, Vec<String>)>,
    /// The chains those lines change: (chain, its rules if wanted, its wanted state).
    changed: Vec<(ChainId, Option<Vec<String>>, ChainState)>,
}

impl IptablesMode {
    /// Finds the iptables tools (once, at the first check).
    pub(crate) async fn discover(&mut self, path: &SearchPath, report: &mut CheckReport) {
        self.tools = IptablesTools::discover(path, report).await;
    }

    pub(crate) fn variant(&self) -> Option<IptablesVariant> {
        self.tools.as_ref().map(|t| t.variant)
    }

    async fn sync_family(
        &mut self,
        spec: &RuleSpec,
        family: Family,
        check: &mut Check<'_>,
    ) -> Result<(), RulesError> {
        let modern = self.tools.as_ref().is_none_or(IptablesTools::modern);
        let rules: Vec<(ChainId, Option<Vec<String>>)> = CHAINS
            .iter()
            .map(|id| (*id, render::iptables_rules(spec, family, id, modern)))
            .collect();
        let tools = self.tools.clone();
        let Some((tools, family_tools)) = tools
            .as_ref()
            .and_then(|t| Some((t, t.for_family(family)?)))
        else {
            // Without iptables there is nothing to read; that is only a problem when
            // rules are wanted.
            if rules.iter().any(|(_, r)| r.is_some()) {
                return Err(RulesError::NoIptables(check.path.text()));
            }
            return Ok(());
        };
        let ids: Vec<(ChainId, bool)> = rules.iter().map(|(id, r)| (*id, r.is_some())).collect();
        let observed = read_chains(tools.variant, family_tools, &ids, check.report)
            .await
            .map_err(|e| with_family(e, family))?;
        let plan = self.plan(family, &rules, &observed);
        if plan.changed.is_empty() {
            return Ok(());
        }
        restore(tools, family_tools, &plan.tables, check.report).await?;
        self.verify(tools, family_tools, family, plan.changed, check.report)
            .await
    }

    /// The chains whose observed state is not the wanted one, and the restore lines.
    fn plan(
        &self,
        family: Family,
        rules: &[(ChainId, Option<Vec<String>>)],
        observed: &[ChainState],
    ) -> FamilyPlan {
        let mut plan = FamilyPlan {
            tables: Vec::new(),
            changed: Vec::new(),
        };
        for ((id, rules), observed) in rules.iter().zip(observed) {
            let want = ChainState::wanted(id, rules.as_deref());
            let printed = self
                .printed
                .get(&(family, id.chain))
                .filter(|(w, _)| *w == want)
                .map(|(_, printed)| printed);
            if iptables::needs_change(&want, observed, printed) {
                let lines = iptables::restore_lines(id, rules.as_deref(), observed);
                plan.tables.push((id.table, lines));
                plan.changed.push((*id, rules.clone(), want));
            }
        }
        plan
    }

    /// Reads the changed chains back: the same shape as wanted, or the restore did not
    /// take. An iptables that spells a rule differently from flannel's text is learnt.
    async fn verify(
        &mut self,
        tools: &IptablesTools,
        family_tools: &FamilyTools,
        family: Family,
        changed: Vec<(ChainId, Option<Vec<String>>, ChainState)>,
        report: &mut CheckReport,
    ) -> Result<(), RulesError> {
        let ids: Vec<(ChainId, bool)> = changed
            .iter()
            .map(|(id, rules, _)| (*id, rules.is_some()))
            .collect();
        let after = read_chains(tools.variant, family_tools, &ids, report).await?;
        for ((id, _, want), printed) in changed.into_iter().zip(after) {
            if printed != want {
                // Same shape, different spelling: this iptables prints a rule
                // differently from flannel's text. Compare with its own printing.
                let same_shape = printed.exists == want.exists
                    && printed.rules.len() == want.rules.len()
                    && printed.jumps.len() == want.jumps.len();
                if !same_shape {
                    return Err(RulesError::NotApplied(format!(
                        "{}/{} ({}) reads back as {printed:?}",
                        id.table,
                        id.chain,
                        family_name(family)
                    )));
                }
                warn!(
                    chain = id.chain,
                    "iptables prints flannel's rules differently from flannel's text \
                     ({:?}); comparing with its own printing from now on",
                    printed.rules
                );
                self.printed
                    .insert((family, id.chain), (want.clone(), printed));
            }
            let what = if want.exists { "set" } else { "removed" };
            report.repaired.push(format!(
                "{what} iptables {}/{} ({})",
                id.table,
                id.chain,
                family_name(family)
            ));
        }
        Ok(())
    }
}

impl RuleMode for IptablesMode {
    async fn sync(&mut self, spec: &RuleSpec, check: &mut Check<'_>) -> Result<(), RulesError> {
        for family in FAMILIES {
            if spec.nets(family).is_some() {
                self.sync_family(spec, family, check).await?;
            }
        }
        Ok(())
    }

    /// nftables mode: flannel's iptables chains are removed, best effort (as flannel
    /// does; a host without iptables has none).
    async fn remove_leftovers(&mut self, check: &mut Check<'_>) {
        let Some(tools) = self.tools.clone() else {
            return;
        };
        for family in FAMILIES {
            let Some(family_tools) = tools.for_family(family) else {
                continue;
            };
            match remove_chains(&tools, family_tools, check.report).await {
                Ok(removed) => check.report.repaired.extend(removed.iter().map(|id| {
                    format!(
                        "removed iptables {}/{} ({}), a leftover of iptables mode",
                        id.table,
                        id.chain,
                        family_name(family)
                    )
                })),
                Err(e) => check.report.cleanup_errors.push(e.to_string()),
            }
        }
    }
}

/// Removes every chain of flannel's in one family; returns those that were there.
async fn remove_chains(
    tools: &IptablesTools,
    family_tools: &FamilyTools,
    report: &mut CheckReport,
) -> Result<Vec<ChainId>, RulesError> {
    let ids: Vec<(ChainId, bool)> = CHAINS.iter().map(|id| (*id, false)).collect();
    let observed = read_chains(tools.variant, family_tools, &ids, report).await?;
    let mut tables = Vec::new();
    let mut removed = Vec::new();
    for (id, observed) in CHAINS.iter().zip(&observed) {
        let lines = iptables::restore_lines(id, None, observed);
        if !lines.is_empty() {
            tables.push((id.table, lines));
            removed.push(*id);
        }
    }
    if !removed.is_empty() {
        restore(tools, family_tools, &tables, report).await?;
    }
    Ok(removed)
}

/// Applies `tables` (per table, `iptables-restore` lines) in one `--noflush` restore:
/// one process, and the kernel applies each table atomically.
async fn restore(
    tools: &IptablesTools,
    family_tools: &FamilyTools,
    tables: &[(&str, Vec<String>)],
    report: &mut CheckReport,
) -> Result<(), RulesError> {
    let input = iptables::restore_input(tables);
    run(
        &family_tools.restore,
        &tools.restore_args(),
        Some(&input),
        report,
    )
    .await
    .map(drop)
}

/// Reads flannel's chains `ids` of one family. iptables-nft lists each chain and its
/// built-in chain (`-S`: it fetches only those chains, a few ms however large the
/// table; `iptables-save` reads the whole ruleset, ~85 ms with 5,000 kube-proxy rules);
/// a chain that is not wanted and absent costs one listing. iptables-legacy reads all
/// tables with one `iptables-save` (it fetches whole tables whatever is asked, and
/// `iptables-save` does not take the xtables lock that `-S` would).
async fn read_chains(
    variant: IptablesVariant,
    tools: &FamilyTools,
    ids: &[(ChainId, bool)],
    report: &mut CheckReport,
) -> Result<Vec<ChainState>, RulesError> {
    if variant == IptablesVariant::Legacy {
        let saved = run(&tools.save, &[], None, report).await?;
        return Ok(ids
            .iter()
            .map(|(id, _)| iptables::observe(&saved, id))
            .collect());
    }
    let mut out = Vec::new();
    for (id, wanted) in ids {
        let list = |chain: &'static str| ["-t", id.table, "-S", chain];
        let hook = if *wanted {
            Some(list_hook(tools, id, report).await?)
        } else {
            None
        };
        // A chain that does not exist fails to list.
        let chain = run(&tools.binary, &list(id.chain), None, report).await.ok();
        let hook = match (hook, &chain) {
            (Some(hook), _) => Some(hook),
            (None, Some(_)) => Some(list_hook(tools, id, report).await?),
            (None, None) => None,
        };
        out.push(iptables::observe_listings(
            id,
            hook.as_deref(),
            chain.as_deref(),
        ));
    }
    Ok(out)
}

/// `iptables -t TABLE -S HOOK`; a table iptables cannot read is reported as such.
async fn list_hook(
    tools: &FamilyTools,
    id: &ChainId,
    report: &mut CheckReport,
) -> Result<String, RulesError> {
    let listing = run(
        &tools.binary,
        &["-t", id.table, "-S", id.hook],
        None,
        report,
    )
    .await;
    match listing {
        Err(RulesError::Failed { stderr, .. }) if stderr.contains("incompatible") => {
            Err(RulesError::Incompatible {
                table: id.table.to_string(),
                family: "",
            })
        }
        other => other,
    }
}

/// Names the family in an error that could not know it.
fn with_family(error: RulesError, family: Family) -> RulesError {
    match error {
        RulesError::Incompatible { table, .. } => RulesError::Incompatible {
            table,
            family: family_name(family),
        },
        other => other,
    }
}
