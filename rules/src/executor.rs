//! The executor of the traffic rules: finds the tools, reads the kernel's rules, and
//! applies what [`super::render`] and [`super::iptables`] decide. Child processes run
//! through `tokio::process` (the runtime is never blocked) with a time limit; netlink
//! requests are answered synchronously by the kernel.

use super::RulesError;
use super::iptables::{self, ChainState};
use super::nfnetlink::{NFPROTO_IPV4, NFPROTO_IPV6, NfSocket};
use super::render::{self, CHAINS, ChainId, FAMILIES, RuleSpec};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};
use weft_lease::family::Family;

/// Longest a tool may run. `iptables-restore --wait` waits for the xtables lock, which a
/// busy kube-proxy may hold for seconds, but not for this long.
const PROCESS_LIMIT: Duration = Duration::from_secs(60);

/// Where to look for the tools when `PATH` lacks them (a container's PATH may have no
/// sbin directories).
const SYSTEM_DIRS: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// What one check did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Whether the rules were read: the nftables generation moved, the wanted rules
    /// changed, or nothing tells cheaply whether they changed (iptables-legacy).
    pub read: bool,
    /// Child processes spawned.
    pub processes: u32,
    /// What was changed: one line per chain or table.
    pub repaired: Vec<String>,
    /// Problems removing the other mode's leftovers (best effort, as in flannel).
    pub cleanup_errors: Vec<String>,
}

/// Which kernel interface an `iptables` binary drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesVariant {
    /// iptables-nft: the rules live in nftables tables `ip nat`, `ip filter`, ...
    Nft,
    /// iptables-legacy: the kernel's xt tables.
    Legacy,
}

/// Parses `iptables --version` ("iptables v1.8.9 (nf_tables)"): the version and variant.
pub fn parse_version(text: &str) -> Option<((u32, u32, u32), IptablesVariant)> {
    let word = text.split_whitespace().find(|w| w.starts_with('v'))?;
    let mut numbers = word[1..].split('.').map(|n| n.parse::<u32>().ok());
    let version = (
        numbers.next()??,
        numbers.next().flatten().unwrap_or(0),
        numbers.next().flatten().unwrap_or(0),
    );
    let variant = if text.contains("nf_tables") {
        IptablesVariant::Nft
    } else {
        IptablesVariant::Legacy
    };
    Some((version, variant))
}

#[derive(Debug, Clone)]
struct IptablesTools {
    variant: IptablesVariant,
    version: (u32, u32, u32),
    /// The tools per family, IPv4 first.
    tools: [Option<FamilyTools>; 2],
}

#[derive(Debug, Clone)]
struct FamilyTools {
    binary: PathBuf,
    save: PathBuf,
    restore: PathBuf,
}

impl IptablesTools {
    fn for_family(&self, family: Family) -> Option<&FamilyTools> {
        self.tools[index(family)].as_ref()
    }

    /// flannel's rule: `--random-fully` and `--wait` from iptables 1.6.2 on.
    fn modern(&self) -> bool {
        self.version >= (1, 6, 2)
    }

    fn restore_args(&self) -> Vec<&'static str> {
        if self.modern() {
            vec!["--noflush", "--wait"]
        } else {
            vec!["--noflush"]
        }
    }

    /// Applies `tables` (per table, `iptables-restore` lines) in one `--noflush` restore:
    /// one process, and the kernel applies each table atomically.
    async fn restore(
        &self,
        family_tools: &FamilyTools,
        tables: &[(&str, Vec<String>)],
        report: &mut CheckReport,
    ) -> Result<(), RulesError> {
        let input = iptables::restore_input(tables);
        run(
            &family_tools.restore,
            &self.restore_args(),
            Some(&input),
            report,
        )
        .await
        .map(drop)
    }
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
    match run(
        &tools.binary,
        &["-t", id.table, "-S", id.hook],
        None,
        report,
    )
    .await
    {
        Err(RulesError::Failed { stderr, .. }) if stderr.contains("incompatible") => {
            Err(RulesError::Incompatible {
                table: id.table.to_string(),
                family: "",
            })
        }
        other => other,
    }
}

fn index(family: Family) -> usize {
    match family {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

fn nfproto(family: Family) -> u8 {
    match family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Firewall {
    search_path: Vec<PathBuf>,
    discovered: bool,
    iptables: Option<IptablesTools>,
    nft: Option<PathBuf>,
    nft_fully_random: Option<bool>,
    netlink: Option<NfSocket>,
    /// The nftables generation and the spec of the last check that found everything
    /// right: while both are unchanged, a check reads nothing.
    verified: Option<(u32, RuleSpec)>,
    /// How iptables printed a chain right after weft applied it, when that differs
    /// from flannel's text: (wanted, printed).
    iptables_printed: HashMap<(Family, &'static str), (ChainState, ChainState)>,
    /// How nft listed a table right after weft applied it: (wanted block, listing).
    nft_printed: HashMap<Family, (String, String)>,
}

impl Firewall {
    /// A firewall whose tools are looked up in `search_path` (in order).
    pub fn new(search_path: Vec<PathBuf>) -> Firewall {
        Firewall {
            search_path,
            discovered: false,
            iptables: None,
            nft: None,
            nft_fully_random: None,
            netlink: None,
            verified: None,
            iptables_printed: HashMap::new(),
            nft_printed: HashMap::new(),
        }
    }

    /// Tools looked up in `PATH`, then the usual system directories.
    pub fn from_env() -> Firewall {
        let mut path: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        for dir in SYSTEM_DIRS {
            if !path.iter().any(|p| p == Path::new(dir)) {
                path.push(dir.into());
            }
        }
        Firewall::new(path)
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
            self.discover(&mut report).await;
            self.discovered = true;
        }
        if spec.nftables {
            self.sync_nft(spec, &mut report).await?;
            self.remove_iptables_leftovers(&mut report).await;
        } else {
            self.sync_iptables(spec, &mut report).await?;
            self.remove_nft_leftovers(&mut report).await;
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
        self.iptables.as_ref().map(|t| t.variant)
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

    fn find(&self, name: &str) -> Option<PathBuf> {
        self.search_path
            .iter()
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    }

    fn search_text(&self) -> String {
        let dirs: Vec<String> = self
            .search_path
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        dirs.join(":")
    }

    /// Finds iptables (`iptables`, else `iptables-nft`, else `iptables-legacy`, each with
    /// its -save and -restore tools) and nft. Runs `iptables --version` once.
    async fn discover(&mut self, report: &mut CheckReport) {
        for base in ["iptables", "iptables-nft", "iptables-legacy"] {
            let (Some(binary), Some(save), Some(restore)) = (
                self.find(base),
                self.find(&format!("{base}-save")),
                self.find(&format!("{base}-restore")),
            ) else {
                continue;
            };
            let version = match run(&binary, &["--version"], None, report).await {
                Ok(text) => text,
                Err(e) => {
                    warn!("{e}");
                    continue;
                }
            };
            let Some((version, variant)) = parse_version(&version) else {
                warn!(
                    "cannot tell the version of {}: {version:?}",
                    binary.display()
                );
                continue;
            };
            let family_tools = |base: &str| {
                Some(FamilyTools {
                    binary: self.find(base)?,
                    save: self.find(&format!("{base}-save"))?,
                    restore: self.find(&format!("{base}-restore"))?,
                })
            };
            let v4 = FamilyTools {
                binary,
                save,
                restore,
            };
            let v6 = family_tools(&base.replacen("iptables", "ip6tables", 1));
            debug!(binary = %v4.binary.display(), ?version, ?variant, "using iptables");
            self.iptables = Some(IptablesTools {
                variant,
                version,
                tools: [Some(v4), v6],
            });
            break;
        }
        self.nft = self.find("nft");
    }

    async fn sync_iptables(
        &mut self,
        spec: &RuleSpec,
        report: &mut CheckReport,
    ) -> Result<(), RulesError> {
        for family in FAMILIES {
            if spec.nets(family).is_none() {
                continue;
            }
            let modern = self.iptables.as_ref().is_none_or(IptablesTools::modern);
            let rules: Vec<(ChainId, Option<Vec<String>>)> = CHAINS
                .iter()
                .map(|id| (*id, render::iptables_rules(spec, family, id, modern)))
                .collect();
            let family_tools = self.iptables.as_ref().and_then(|t| t.for_family(family));
            let (Some(tools), Some(family_tools)) = (self.iptables.clone(), family_tools.cloned())
            else {
                // Without iptables there is nothing to read; that is only a problem when
                // rules are wanted.
                if rules.iter().any(|(_, r)| r.is_some()) {
                    return Err(RulesError::NoIptables(self.search_text()));
                }
                continue;
            };
            let family_tools = &family_tools;
            let ids: Vec<(ChainId, bool)> =
                rules.iter().map(|(id, r)| (*id, r.is_some())).collect();
            let observed = read_chains(tools.variant, family_tools, &ids, report)
                .await
                .map_err(|e| with_family(e, family))?;
            let mut tables = Vec::new();
            let mut changed = Vec::new();
            for ((id, rules), observed) in rules.iter().zip(&observed) {
                let want = ChainState::wanted(id, rules.as_deref());
                let printed = self
                    .iptables_printed
                    .get(&(family, id.chain))
                    .filter(|(w, _)| *w == want)
                    .map(|(_, printed)| printed);
                if iptables::needs_change(&want, observed, printed) {
                    tables.push((
                        id.table,
                        iptables::restore_lines(id, rules.as_deref(), observed),
                    ));
                    changed.push((*id, rules.clone(), want));
                }
            }
            if changed.is_empty() {
                continue;
            }
            tools.restore(family_tools, &tables, report).await?;
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
                    self.iptables_printed
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
        }
        Ok(())
    }

    /// nftables mode: flannel's iptables chains are removed, best effort (as flannel
    /// does; a host without iptables has none).
    async fn remove_iptables_leftovers(&mut self, report: &mut CheckReport) {
        let Some(tools) = self.iptables.clone() else {
            return;
        };
        for family in FAMILIES {
            let Some(family_tools) = tools.for_family(family) else {
                continue;
            };
            let result = async {
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
                    tools.restore(family_tools, &tables, report).await?;
                }
                Ok::<_, RulesError>(removed)
            }
            .await;
            match result {
                Ok(removed) => report.repaired.extend(removed.iter().map(|id| {
                    format!(
                        "removed iptables {}/{} ({}), a leftover of iptables mode",
                        id.table,
                        id.chain,
                        family_name(family)
                    )
                })),
                Err(e) => report.cleanup_errors.push(e.to_string()),
            }
        }
    }

    async fn sync_nft(
        &mut self,
        spec: &RuleSpec,
        report: &mut CheckReport,
    ) -> Result<(), RulesError> {
        let wanted = FAMILIES
            .iter()
            .any(|f| render::nft_table_block(spec, *f, false).is_some());
        let nft = match self.nft.clone() {
            Some(nft) => nft,
            // Without nft no table of flannel's can have been made here by this host's
            // tools; without rules wanted there is nothing to do.
            None if !wanted => return Ok(()),
            None => return Err(RulesError::NoNft(self.search_text())),
        };
        let fully_random = spec.masquerade && spec.fully_random && {
            if self.nft_fully_random.is_none() {
                let probe = run(
                    &nft,
                    &["--check", "-f", "-"],
                    Some(render::NFT_FULLY_RANDOM_PROBE),
                    report,
                )
                .await;
                if let Err(e) = &probe {
                    debug!("nftables has no fully-random masquerade: {e}");
                }
                self.nft_fully_random = Some(probe.is_ok());
            }
            self.nft_fully_random == Some(true)
        };
        let mut tables = Vec::new();
        for family in FAMILIES {
            let (keyword, name) = render::nft_table(family);
            match render::nft_table_block(spec, family, fully_random) {
                Some(block) => {
                    let listing = run(&nft, &["list", "table", keyword, name], None, report)
                        .await
                        .ok();
                    let right = match (&listing, self.nft_printed.get(&family)) {
                        (Some(listing), Some((applied, printed))) => {
                            *applied == block && listing == printed
                        }
                        _ => false,
                    };
                    if !right {
                        tables.push((family, Some(block)));
                    }
                }
                None => {
                    if self.nft_table_exists(family, &nft, report).await {
                        tables.push((family, None));
                    }
                }
            }
        }
        if tables.is_empty() {
            return Ok(());
        }
        run(
            &nft,
            &["-f", "-"],
            Some(&render::nft_script(&tables)),
            report,
        )
        .await?;
        for (family, block) in tables {
            let (keyword, name) = render::nft_table(family);
            match block {
                Some(block) => {
                    let listing =
                        run(&nft, &["list", "table", keyword, name], None, report).await?;
                    self.nft_printed.insert(family, (block, listing));
                    report
                        .repaired
                        .push(format!("set nftables table {keyword} {name}"));
                }
                None => report
                    .repaired
                    .push(format!("deleted nftables table {keyword} {name}")),
            }
        }
        Ok(())
    }

    /// Whether flannel's nftables table of `family` exists: over netlink, or with `nft`
    /// when netlink cannot tell.
    async fn nft_table_exists(
        &mut self,
        family: Family,
        nft: &Path,
        report: &mut CheckReport,
    ) -> bool {
        let (keyword, name) = render::nft_table(family);
        if let Some(socket) = self.netlink.as_mut()
            && let Ok(exists) = socket.table_exists(nfproto(family), name)
        {
            return exists;
        }
        run(nft, &["list", "table", keyword, name], None, report)
            .await
            .is_ok()
    }

    /// iptables mode: flannel's nftables tables are deleted (over netlink, so no `nft`
    /// binary is needed), best effort as in flannel.
    async fn remove_nft_leftovers(&mut self, report: &mut CheckReport) {
        for family in FAMILIES {
            let (keyword, name) = render::nft_table(family);
            // Asked first: a delete of a missing table is an aborted nftables
            // transaction, which costs the kernel milliseconds (an RCU grace period).
            let result = match self.netlink.as_mut() {
                Some(socket) => match socket.table_exists(nfproto(family), name) {
                    Ok(false) => Ok(false),
                    _ => socket
                        .delete_table(nfproto(family), name)
                        .map_err(|e| format!("cannot delete nftables table {keyword} {name}: {e}")),
                },
                None => match self.nft.clone() {
                    Some(nft) => {
                        let exists = run(&nft, &["list", "table", keyword, name], None, report)
                            .await
                            .is_ok();
                        if exists {
                            run(&nft, &["delete", "table", keyword, name], None, report)
                                .await
                                .map(|_| true)
                                .map_err(|e| e.to_string())
                        } else {
                            Ok(false)
                        }
                    }
                    None => Ok(false),
                },
            };
            match result {
                Ok(true) => report.repaired.push(format!(
                    "deleted nftables table {keyword} {name}, a leftover of nftables mode"
                )),
                Ok(false) => {}
                Err(e) => report.cleanup_errors.push(e),
            }
        }
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

/// Runs `program args` (input on stdin) with a time limit; its stdout on success.
async fn run(
    program: &Path,
    args: &[&str],
    input: Option<&str>,
    report: &mut CheckReport,
) -> Result<String, RulesError> {
    let command = if args.is_empty() {
        program.display().to_string()
    } else {
        format!("{} {}", program.display(), args.join(" "))
    };
    report.processes += 1;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|cause| RulesError::Spawn {
            command: command.clone(),
            cause,
        })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A tool that exits early reports why on stderr; its status says the rest.
        let _ = stdin.write_all(input.as_bytes()).await;
    }
    let output = tokio::time::timeout(PROCESS_LIMIT, child.wait_with_output())
        .await
        .map_err(|_| RulesError::Timeout {
            command: command.clone(),
            seconds: PROCESS_LIMIT.as_secs(),
        })?
        .map_err(|cause| RulesError::Spawn {
            command: command.clone(),
            cause,
        })?;
    if !output.status.success() {
        return Err(RulesError::Failed {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_variants() {
        assert_eq!(
            parse_version("iptables v1.8.9 (nf_tables)\n"),
            Some(((1, 8, 9), IptablesVariant::Nft))
        );
        assert_eq!(
            parse_version("iptables v1.8.9 (legacy)\n"),
            Some(((1, 8, 9), IptablesVariant::Legacy))
        );
        assert_eq!(
            parse_version("iptables v1.6.1\n"),
            Some(((1, 6, 1), IptablesVariant::Legacy))
        );
        assert_eq!(parse_version("garbage"), None);
    }
}
