//! The firewall tools: where they are (a search path, as flannel's image and a host
//! differ), which iptables this is, and running one with a time limit. Child processes
//! run through `tokio::process` (the runtime is never blocked).

use crate::RulesError;
use crate::report::CheckReport;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};
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

/// The directories tools are looked up in, in order.
#[derive(Debug, Clone)]
pub(crate) struct SearchPath(Vec<PathBuf>);

impl SearchPath {
    pub(crate) fn new(dirs: Vec<PathBuf>) -> SearchPath {
        SearchPath(dirs)
    }

    /// `PATH`, then the usual system directories.
    pub(crate) fn from_env() -> SearchPath {
        let mut path: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        for dir in SYSTEM_DIRS {
            if !path.iter().any(|p| p == Path::new(dir)) {
                path.push(dir.into());
            }
        }
        SearchPath(path)
    }

    pub(crate) fn find(&self, name: &str) -> Option<PathBuf> {
        self.0
            .iter()
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    }

    /// The path as `PATH` spells it, for messages.
    pub(crate) fn text(&self) -> String {
        let dirs: Vec<String> = self.0.iter().map(|p| p.display().to_string()).collect();
        dirs.join(":")
    }
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

/// The iptables found, per family.
#[derive(Debug, Clone)]
pub(crate) struct IptablesTools {
    pub variant: IptablesVariant,
    pub version: (u32, u32, u32),
    /// The tools per family, IPv4 first.
    tools: [Option<FamilyTools>; 2],
}

/// One family's binary and its -save and -restore tools.
#[derive(Debug, Clone)]
pub(crate) struct FamilyTools {
    pub binary: PathBuf,
    pub save: PathBuf,
    pub restore: PathBuf,
}

impl IptablesTools {
    pub(crate) fn for_family(&self, family: Family) -> Option<&FamilyTools> {
        let index = match family {
            Family::V4 => 0,
            Family::V6 => 1,
        };
        self.tools[index].as_ref()
    }

    /// flannel's rule: `--random-fully` and `--wait` from iptables 1.6.2 on.
    pub(crate) fn modern(&self) -> bool {
        self.version >= (1, 6, 2)
    }

    pub(crate) fn restore_args(&self) -> Vec<&'static str> {
        if self.modern() {
            vec!["--noflush", "--wait"]
        } else {
            vec!["--noflush"]
        }
    }

    /// Finds iptables and decides which variant holds the rules. A host (or an image)
    /// with both `iptables-nft` and `iptables-legacy` gets the variant its kubelet and
    /// kube-proxy use, decided as the kube ecosystem's iptables-wrapper decides (see
    /// [`host_variant`]); otherwise `iptables`, else `iptables-nft`, else
    /// `iptables-legacy`, each with its -save and -restore tools. Runs `iptables --version`
    /// once.
    pub(crate) async fn discover(
        path: &SearchPath,
        report: &mut CheckReport,
    ) -> Option<IptablesTools> {
        let mut order = vec![
            ("iptables", "the first iptables on the search path"),
            ("iptables-nft", "the only iptables variant found"),
            ("iptables-legacy", "the only iptables variant found"),
        ];
        let both = ["iptables-nft", "iptables-legacy"]
            .iter()
            .all(|base| FamilyTools::find(path, base).is_some());
        if both {
            let (base, reason) = host_variant(path, report).await;
            order.insert(0, (base, reason));
        }
        for (base, reason) in order {
            if let Some(tools) = Self::try_base(path, base, reason, report).await {
                return Some(tools);
            }
        }
        None
    }

    async fn try_base(
        path: &SearchPath,
        base: &str,
        reason: &str,
        report: &mut CheckReport,
    ) -> Option<IptablesTools> {
        let v4 = FamilyTools::find(path, base)?;
        let version = match run(&v4.binary, &["--version"], None, report).await {
            Ok(text) => text,
            Err(e) => {
                warn!("{e}");
                return None;
            }
        };
        let Some((version, variant)) = parse_version(&version) else {
            let binary = v4.binary.display();
            warn!("cannot tell the version of {binary}: {version:?}");
            return None;
        };
        let v6 = FamilyTools::find(path, &base.replacen("iptables", "ip6tables", 1));
        let (major, minor, patch) = version;
        let choice = format!("{base} v{major}.{minor}.{patch} ({variant:?}): {reason}");
        info!(binary = %v4.binary.display(), "traffic rules through {choice}");
        report.iptables = Some(choice);
        Some(IptablesTools {
            variant,
            version,
            tools: [Some(v4), v6],
        })
    }
}

/// The iptables variant this host's kubelet and kube-proxy use, as the kube ecosystem's
/// iptables-wrapper (kubernetes-sigs/iptables-wrappers) decides it: kubelet (1.17 and
/// later) creates `KUBE-IPTABLES-HINT` or `KUBE-KUBELET-CANARY` in the mangle table, so
/// the variant whose rules hold one of them is the host's; iptables-nft is asked first
/// (its mangle table alone), then iptables-legacy (its whole ruleset: asking for the
/// mangle table would create it). With neither, the host's default: `iptables` on the
/// search path when there is one (the wrapper's default is nft, which is what a
/// container image's plain `iptables` is).
async fn host_variant(path: &SearchPath, report: &mut CheckReport) -> (&'static str, &'static str) {
    let holds = |output: Result<String, RulesError>| output.is_ok_and(|o| has_kubelet_chains(&o));
    for save in ["iptables-nft-save", "ip6tables-nft-save"] {
        if let Some(save) = path.find(save)
            && holds(run(&save, &["-t", "mangle"], None, report).await)
        {
            return (
                "iptables-nft",
                "kubelet's chains are in iptables-nft (the host's variant)",
            );
        }
    }
    for save in ["iptables-legacy-save", "ip6tables-legacy-save"] {
        if let Some(save) = path.find(save)
            && holds(run(&save, &[], None, report).await)
        {
            return (
                "iptables-legacy",
                "kubelet's chains are in iptables-legacy (the host's variant)",
            );
        }
    }
    if path.find("iptables").is_some() {
        (
            "iptables",
            "no kubelet chains in either variant: the default iptables",
        )
    } else {
        (
            "iptables-nft",
            "no kubelet chains in either variant: nft, the default",
        )
    }
}

/// Whether `iptables-save` output declares one of kubelet's chains.
pub fn has_kubelet_chains(save_output: &str) -> bool {
    save_output.lines().any(|line| {
        line.strip_prefix(':').is_some_and(|chain| {
            let name = chain.split_whitespace().next().unwrap_or("");
            name == "KUBE-IPTABLES-HINT" || name == "KUBE-KUBELET-CANARY"
        })
    })
}

impl FamilyTools {
    fn find(path: &SearchPath, base: &str) -> Option<FamilyTools> {
        Some(FamilyTools {
            binary: path.find(base)?,
            save: path.find(&format!("{base}-save"))?,
            restore: path.find(&format!("{base}-restore"))?,
        })
    }
}

/// Runs `program args` (input on stdin) with a time limit; its stdout on success.
pub(crate) async fn run(
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
    let spawn_failed = |cause| RulesError::Spawn {
        command: command.clone(),
        cause,
    };
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
        .map_err(spawn_failed)?;
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
        .map_err(spawn_failed)?;
    if !output.status.success() {
        return Err(RulesError::Failed {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// How a family is named in messages.
pub(crate) fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
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

    #[test]
    fn kubelet_chains_are_found_in_save_output() {
        let nft_mangle = "# Generated by iptables-nft-save v1.8.9\n*mangle\n\
                          :PREROUTING ACCEPT [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n";
        assert!(has_kubelet_chains(nft_mangle));
        assert!(has_kubelet_chains(
            "*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n"
        ));
        // A rule mentioning the name, or a longer name, is not the chain.
        assert!(!has_kubelet_chains(
            "*filter\n-A FORWARD -j KUBE-IPTABLES-HINT\nCOMMIT\n"
        ));
        assert!(!has_kubelet_chains(":KUBE-IPTABLES-HINTS - [0:0]\n"));
        assert!(!has_kubelet_chains(""));
    }
}
