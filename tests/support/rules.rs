//! Traffic-rule helpers: tool directories that stand for hosts with only some firewall
//! tools, flannel's expected rule text, and readers of what a namespace holds.

use super::netns::Netns;
use std::path::Path;

/// Which firewall tools a simulated host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tools {
    /// `iptables-nft*` and `ip6tables-nft*` only (no plain `iptables`, no `nft`).
    IptablesNftOnly,
    /// `iptables-legacy*` and `ip6tables-legacy*` only.
    IptablesLegacyOnly,
    /// `nft` only: no iptables binary at all.
    NftOnly,
    /// `iptables-nft*` (as `iptables*`) and `nft`.
    Both,
    /// `iptables-legacy*` as `iptables*` (a host whose default iptables is legacy).
    LegacyAsDefault,
    /// `iptables-nft*` and `iptables-legacy*`, with `iptables*` the nft ones (Debian's
    /// default alternative, and weft's image).
    BothVariants,
}

/// A directory of symlinks to the system's tools, standing for a host that has only
/// `tools`; pass it as the firewall's search path.
pub fn tool_dir(tools: Tools) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tool dir");
    let mut links: Vec<(String, String)> = Vec::new();
    let xtables = |variant: &str, links: &mut Vec<(String, String)>, plain: bool| {
        for family in ["iptables", "ip6tables"] {
            for suffix in ["", "-save", "-restore"] {
                let real = format!("{family}-{variant}{suffix}");
                let name = if plain {
                    format!("{family}{suffix}")
                } else {
                    real.clone()
                };
                links.push((name, real));
            }
        }
    };
    match tools {
        Tools::IptablesNftOnly => xtables("nft", &mut links, false),
        Tools::IptablesLegacyOnly => xtables("legacy", &mut links, false),
        Tools::NftOnly => links.push(("nft".into(), "nft".into())),
        Tools::Both => {
            xtables("nft", &mut links, true);
            links.push(("nft".into(), "nft".into()));
        }
        Tools::LegacyAsDefault => xtables("legacy", &mut links, true),
        Tools::BothVariants => {
            xtables("nft", &mut links, false);
            xtables("legacy", &mut links, false);
            xtables("nft", &mut links, true);
        }
    }
    for (name, real) in links {
        let target = Path::new("/usr/sbin").join(&real);
        assert!(
            target.exists(),
            "{} is missing: install iptables and nftables",
            target.display()
        );
        std::os::unix::fs::symlink(&target, dir.path().join(name)).expect("symlink");
    }
    dir
}

/// The lines of `iptables-save` (run as `save`) in `ns` that belong to flannel: its
/// chains' rules and every jump to them, in the order printed.
pub fn flannel_lines(ns: &Netns, save: &str) -> Vec<String> {
    let output = ns.exec(&[save]);
    assert!(output.status.success(), "{save} failed in {}", ns.name);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with("-A ") && l.contains("FLANNEL-"))
        .map(String::from)
        .collect()
}

/// `nft list table FAMILY NAME` in `ns`; `None` when the table does not exist.
pub fn nft_table(ns: &Netns, family: &str, name: &str) -> Option<String> {
    let output = ns.exec(&["nft", "list", "table", family, name]);
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a firewall command in `ns`, asserting success.
pub fn run_ok(ns: &Netns, args: &[&str]) {
    let output = ns.exec(args);
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// flannel's masquerade rules as `iptables-save` prints them (flannel.md §12.1), for
/// network `n` and node subnet `p`; multicast `m` (224.0.0.0/4 or ff00::/8).
pub fn flannel_masq(n: &str, p: &str, m: &str, random_fully: bool) -> Vec<String> {
    let c = r#"-m comment --comment "flanneld masq""#;
    let masq = if random_fully {
        "-j MASQUERADE --random-fully"
    } else {
        "-j MASQUERADE"
    };
    vec![
        format!("-A POSTROUTING {c} -j FLANNEL-POSTRTG"),
        format!("-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s {p} -d {n} {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s {n} -d {p} {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG ! -s {n} -d {p} {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s {n} ! -d {m} {c} {masq}"),
        format!("-A FLANNEL-POSTRTG ! -s {n} -d {n} {c} {masq}"),
    ]
}

/// flannel's FORWARD rules as `iptables-save` prints them, for network `n`.
pub fn flannel_forward(n: &str) -> Vec<String> {
    let c = r#"-m comment --comment "flanneld forward""#;
    vec![
        format!("-A FORWARD {c} -j FLANNEL-FWD"),
        format!("-A FLANNEL-FWD -s {n} {c} -j ACCEPT"),
        format!("-A FLANNEL-FWD -d {n} {c} -j ACCEPT"),
    ]
}

/// `iptables-save` prints the filter table before nat.
pub fn flannel_save(forward: &[String], masq: &[String]) -> Vec<String> {
    forward.iter().chain(masq).cloned().collect()
}
