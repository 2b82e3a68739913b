//! flannel's rules as text, for a [`RuleSpec`] (pure). The iptables rules are written in
//! `iptables-save` notation, exactly as `iptables-save` prints them, so what is read back
//! can be compared line by line; the nftables rules as an `nft -f` script.

use weft_lease::family::{Family, Net};

/// The networks the rules of one family are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyNets {
    /// The cluster network (`Network` / `IPv6Network`).
    pub network: Net,
    /// This node's subnet.
    pub own: Net,
}

/// What rules a node wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// `--ip-masq`.
    pub masquerade: bool,
    /// Not `--ip-masq-fully-random-disable` (used only where the tools support it).
    pub fully_random: bool,
    /// `--iptables-forward-rules`.
    pub forward: bool,
    /// `EnableNFTables` in net-conf.json.
    pub nftables: bool,
    pub v4: Option<FamilyNets>,
    pub v6: Option<FamilyNets>,
}

impl RuleSpec {
    /// The networks of `family`, if the cluster has that family.
    pub fn nets(&self, family: Family) -> Option<FamilyNets> {
        match family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
    }
}

/// Both families, IPv4 first.
pub const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// One of flannel's iptables chains: where it lives and how it is jumped to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainId {
    pub table: &'static str,
    pub chain: &'static str,
    /// The built-in chain that jumps to it.
    pub hook: &'static str,
    pub comment: &'static str,
}

/// `nat/FLANNEL-POSTRTG`, jumped to from POSTROUTING (`--ip-masq`).
pub const POSTRTG: ChainId = ChainId {
    table: "nat",
    chain: "FLANNEL-POSTRTG",
    hook: "POSTROUTING",
    comment: "flanneld masq",
};

/// `filter/FLANNEL-FWD`, jumped to from FORWARD (`--iptables-forward-rules`).
pub const FWD: ChainId = ChainId {
    table: "filter",
    chain: "FLANNEL-FWD",
    hook: "FORWARD",
    comment: "flanneld forward",
};

/// flannel's two chains, in the order they are checked.
pub const CHAINS: [ChainId; 2] = [POSTRTG, FWD];

impl ChainId {
    /// The jump rule in the built-in chain, after `-A <hook> `.
    pub fn jump(&self) -> String {
        format!(
            "-m comment --comment \"{}\" -j {}",
            self.comment, self.chain
        )
    }
}

/// The rules (after `-A <chain> `) `spec` wants in `id` for `family`; `None` when the
/// chain should not exist. `random_fully` says whether iptables supports it.
pub fn iptables_rules(
    spec: &RuleSpec,
    family: Family,
    id: &ChainId,
    random_fully: bool,
) -> Option<Vec<String>> {
    if spec.nftables {
        return None;
    }
    let nets = spec.nets(family)?;
    if *id == POSTRTG && spec.masquerade {
        Some(masq_rules(nets, family, random_fully && spec.fully_random))
    } else if *id == FWD && spec.forward {
        Some(forward_rules(nets.network))
    } else {
        None
    }
}

/// flannel's masquerade rules (flannel.md §12.1), in order.
pub fn masq_rules(nets: FamilyNets, family: Family, random_fully: bool) -> Vec<String> {
    let FamilyNets { network: n, own: p } = nets;
    let c = format!("-m comment --comment \"{}\"", POSTRTG.comment);
    let masq = if random_fully {
        "-j MASQUERADE --random-fully"
    } else {
        "-j MASQUERADE"
    };
    vec![
        format!("-m mark --mark 0x4000/0x4000 {c} -j RETURN"),
        format!("-s {p} -d {n} {c} -j RETURN"),
        format!("-s {n} -d {p} {c} -j RETURN"),
        format!("! -s {n} -d {p} {c} -j RETURN"),
        format!("-s {n} ! -d {} {c} {masq}", multicast(family)),
        format!("! -s {n} -d {n} {c} {masq}"),
    ]
}

/// flannel's FORWARD accept rules (flannel.md §12.1), in order.
pub fn forward_rules(network: Net) -> Vec<String> {
    let c = format!("-m comment --comment \"{}\"", FWD.comment);
    vec![
        format!("-s {network} {c} -j ACCEPT"),
        format!("-d {network} {c} -j ACCEPT"),
    ]
}

fn multicast(family: Family) -> &'static str {
    match family {
        Family::V4 => "224.0.0.0/4",
        Family::V6 => "ff00::/8",
    }
}

/// flannel's nftables table of `family`: (family keyword, table name).
pub fn nft_table(family: Family) -> (&'static str, &'static str) {
    match family {
        Family::V4 => ("ip", "flannel-ipv4"),
        Family::V6 => ("ip6", "flannel-ipv6"),
    }
}

/// The nftables table `spec` wants for `family` (an `nft -f` block); `None` when it
/// should not exist (iptables mode, a family the cluster does not have, or neither
/// masquerade nor forward rules: flannel would create the table empty).
/// `fully_random` says whether nftables supports it.
pub fn nft_table_block(spec: &RuleSpec, family: Family, fully_random: bool) -> Option<String> {
    if !spec.nftables || !(spec.masquerade || spec.forward) {
        return None;
    }
    let FamilyNets { network: n, own: p } = spec.nets(family)?;
    let (keyword, name) = nft_table(family);
    let addr = match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    };
    let mut out = format!("table {keyword} {name} {{\n\tcomment \"rules for {name}\"\n");
    if spec.masquerade {
        let masq = if fully_random && spec.fully_random {
            "masquerade fully-random"
        } else {
            "masquerade"
        };
        let m = multicast(family);
        out.push_str(&format!(
            "\tchain postrtg {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tcomment \"chain to manage traffic masquerading by flannel\"\n\
             \t\tmeta mark 0x4000 return\n\
             \t\t{addr} saddr {p} {addr} daddr {n} return\n\
             \t\t{addr} saddr {n} {addr} daddr {p} return\n\
             \t\t{addr} saddr != {p} {addr} daddr {n} return\n\
             \t\t{addr} saddr {n} {addr} daddr != {m} {masq}\n\
             \t\t{addr} saddr != {n} {addr} daddr {n} {masq}\n\
             \t}}\n"
        ));
    }
    if spec.forward {
        out.push_str(&format!(
            "\tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tcomment \"chain to accept flannel traffic\"\n\
             \t\t{addr} saddr {n} accept\n\
             \t\t{addr} daddr {n} accept\n\
             \t}}\n"
        ));
    }
    out.push_str("}\n");
    Some(out)
}

/// One `nft -f` transaction that makes each family's table what is wanted: a wanted table
/// is replaced whole (`add`, `delete`, then the new table: atomic, no moment without
/// rules), an unwanted one deleted.
pub fn nft_script(tables: &[(Family, Option<String>)]) -> String {
    let mut out = String::new();
    for (family, block) in tables {
        let (keyword, name) = nft_table(*family);
        out.push_str(&format!(
            "add table {keyword} {name}\ndelete table {keyword} {name}\n"
        ));
        if let Some(block) = block {
            out.push_str(block);
        }
    }
    out
}

/// The `nft --check` script flannel uses to see whether `fully-random` is supported.
pub const NFT_FULLY_RANDOM_PROBE: &str = "table ip weft-probe {\n\tchain masqueradeTest {\n\t\t\
    type nat hook postrouting priority srcnat;\n\t\tip saddr != 127.0.0.1 masquerade fully-random\n\t}\n}\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Net {
        s.parse().unwrap()
    }

    fn v4() -> FamilyNets {
        FamilyNets {
            network: net("10.244.0.0/16"),
            own: net("10.244.1.0/24"),
        }
    }

    fn v6() -> FamilyNets {
        FamilyNets {
            network: net("fc00::/48"),
            own: net("fc00:0:0:1::/64"),
        }
    }

    fn spec(masquerade: bool, fully_random: bool, forward: bool) -> RuleSpec {
        RuleSpec {
            masquerade,
            fully_random,
            forward,
            nftables: false,
            v4: Some(v4()),
            v6: None,
        }
    }

    /// `iptables-save` lines (`-A CHAIN rule`) of what `spec` wants, flannel's order.
    fn save_lines(spec: &RuleSpec, family: Family, supported: bool) -> Vec<String> {
        let mut out = Vec::new();
        for id in CHAINS {
            if let Some(rules) = iptables_rules(spec, family, &id, supported) {
                out.push(format!("-A {} {}", id.hook, id.jump()));
                out.extend(rules.iter().map(|r| format!("-A {} {r}", id.chain)));
            }
        }
        out
    }

    /// flannel.md §12.1, with N = 10.244.0.0/16 and P = 10.244.1.0/24.
    const FLANNEL_MASQ_V4: &str = r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#;

    const FLANNEL_FWD_V4: &str = r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(String::from).collect()
    }

    #[test]
    fn masquerade_and_forward_are_flannels_exact_text() {
        let mut want = lines(FLANNEL_MASQ_V4);
        want.extend(lines(FLANNEL_FWD_V4));
        assert_eq!(save_lines(&spec(true, true, true), Family::V4, true), want);
    }

    #[test]
    fn random_fully_is_dropped_when_disabled_or_unsupported() {
        let want: Vec<String> = lines(FLANNEL_MASQ_V4)
            .iter()
            .map(|l| l.replace(" --random-fully", ""))
            .collect();
        assert_eq!(
            save_lines(&spec(true, false, false), Family::V4, true),
            want
        );
        assert_eq!(
            save_lines(&spec(true, true, false), Family::V4, false),
            want
        );
    }

    #[test]
    fn each_flag_alone() {
        assert_eq!(
            save_lines(&spec(true, true, false), Family::V4, true),
            lines(FLANNEL_MASQ_V4)
        );
        assert_eq!(
            save_lines(&spec(false, true, true), Family::V4, true),
            lines(FLANNEL_FWD_V4)
        );
        assert!(save_lines(&spec(false, true, false), Family::V4, true).is_empty());
    }

    #[test]
    fn ipv6_uses_ff00_and_only_families_the_cluster_has() {
        let mut dual = spec(true, true, true);
        dual.v6 = Some(v6());
        let v6_lines = save_lines(&dual, Family::V6, true);
        let want: Vec<String> = [
            r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#,
            r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#,
            r#"-A FLANNEL-POSTRTG -s fc00:0:0:1::/64 -d fc00::/48 -m comment --comment "flanneld masq" -j RETURN"#,
            r#"-A FLANNEL-POSTRTG -s fc00::/48 -d fc00:0:0:1::/64 -m comment --comment "flanneld masq" -j RETURN"#,
            r#"-A FLANNEL-POSTRTG ! -s fc00::/48 -d fc00:0:0:1::/64 -m comment --comment "flanneld masq" -j RETURN"#,
            r#"-A FLANNEL-POSTRTG -s fc00::/48 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
            r#"-A FLANNEL-POSTRTG ! -s fc00::/48 -d fc00::/48 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
            r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#,
            r#"-A FLANNEL-FWD -s fc00::/48 -m comment --comment "flanneld forward" -j ACCEPT"#,
            r#"-A FLANNEL-FWD -d fc00::/48 -m comment --comment "flanneld forward" -j ACCEPT"#,
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(v6_lines, want);
        // Dual stack: the v4 rules are unchanged by v6.
        let mut want_v4 = lines(FLANNEL_MASQ_V4);
        want_v4.extend(lines(FLANNEL_FWD_V4));
        assert_eq!(save_lines(&dual, Family::V4, true), want_v4);
        // v6 only: no v4 rules.
        let v6_only = RuleSpec { v4: None, ..dual };
        assert!(save_lines(&v6_only, Family::V4, true).is_empty());
        assert_eq!(save_lines(&v6_only, Family::V6, true), want);
    }

    #[test]
    fn nftables_mode_wants_no_iptables_rules_and_iptables_mode_no_tables() {
        let mut nft = spec(true, true, true);
        nft.nftables = true;
        assert!(save_lines(&nft, Family::V4, true).is_empty());
        assert!(nft_table_block(&spec(true, true, true), Family::V4, true).is_none());
    }

    /// flannel.md §12.2, with N = 10.244.0.0/16 and P = 10.244.1.0/24.
    const FLANNEL_NFT_V4: &str = "table ip flannel-ipv4 {
\tcomment \"rules for flannel-ipv4\"
\tchain postrtg {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tcomment \"chain to manage traffic masquerading by flannel\"
\t\tmeta mark 0x4000 return
\t\tip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return
\t\tip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return
\t\tip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return
\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tcomment \"chain to accept flannel traffic\"
\t\tip saddr 10.244.0.0/16 accept
\t\tip daddr 10.244.0.0/16 accept
\t}
}
";

    #[test]
    fn nftables_tables_are_flannels_exact_rules() {
        let mut s = spec(true, true, true);
        s.nftables = true;
        assert_eq!(
            nft_table_block(&s, Family::V4, true).unwrap(),
            FLANNEL_NFT_V4
        );
        // fully-random dropped when disabled or unsupported.
        let plain = FLANNEL_NFT_V4.replace(" fully-random", "");
        assert_eq!(nft_table_block(&s, Family::V4, false).unwrap(), plain);
        s.fully_random = false;
        assert_eq!(nft_table_block(&s, Family::V4, true).unwrap(), plain);
        // Each chain only with its flag; no empty table (flannel would create one).
        s.forward = false;
        let masq_only = nft_table_block(&s, Family::V4, true).unwrap();
        assert!(masq_only.contains("chain postrtg") && !masq_only.contains("chain forward"));
        s.masquerade = false;
        assert_eq!(nft_table_block(&s, Family::V4, true), None);
    }

    #[test]
    fn nftables_ipv6_table() {
        let mut s = spec(true, true, true);
        s.nftables = true;
        s.v6 = Some(v6());
        let block = nft_table_block(&s, Family::V6, true).unwrap();
        let rules: Vec<&str> = block.lines().map(str::trim).collect();
        for want in [
            "table ip6 flannel-ipv6 {",
            "comment \"rules for flannel-ipv6\"",
            "meta mark 0x4000 return",
            "ip6 saddr fc00:0:0:1::/64 ip6 daddr fc00::/48 return",
            "ip6 saddr fc00::/48 ip6 daddr fc00:0:0:1::/64 return",
            "ip6 saddr != fc00:0:0:1::/64 ip6 daddr fc00::/48 return",
            "ip6 saddr fc00::/48 ip6 daddr != ff00::/8 masquerade fully-random",
            "ip6 saddr != fc00::/48 ip6 daddr fc00::/48 masquerade fully-random",
            "ip6 saddr fc00::/48 accept",
            "ip6 daddr fc00::/48 accept",
        ] {
            assert!(rules.contains(&want), "{want} missing from\n{block}");
        }
        // v4-only cluster: no v6 table.
        s.v6 = None;
        assert!(nft_table_block(&s, Family::V6, true).is_none());
    }

    #[test]
    fn nft_script_replaces_wanted_tables_and_deletes_the_rest() {
        let script = nft_script(&[
            (Family::V4, Some("table ip flannel-ipv4 {\n}\n".into())),
            (Family::V6, None),
        ]);
        assert_eq!(
            script,
            "add table ip flannel-ipv4\ndelete table ip flannel-ipv4\ntable ip flannel-ipv4 {\n}\n\
             add table ip6 flannel-ipv6\ndelete table ip6 flannel-ipv6\n"
        );
    }
}
