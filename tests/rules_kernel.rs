//! The traffic-rule executor against a real kernel, in throwaway network namespaces: each
//! host kind (only iptables-nft, only iptables-legacy, only nft), flannel's exact rules
//! read back with the system's own tools, repairs after an admin flushed or deleted
//! them, the other mode's leftovers removed, and what a steady-state check costs.

mod support;

use support::netns::{Netns, block_on_in};
use support::rules::{
    Tools, flannel_forward, flannel_lines, flannel_masq, flannel_save, nft_table, run_ok, tool_dir,
};
use support::unique;
use weft_rules::{CheckReport, FamilyNets, Firewall, RuleSpec};

const N4: &str = "10.244.0.0/16";
const P4: &str = "10.244.1.0/24";
const N6: &str = "fd00:10:244::/56";
const P6: &str = "fd00:10:244:1::/64";

fn nets(n: &str, p: &str) -> FamilyNets {
    FamilyNets {
        network: n.parse().unwrap(),
        own: p.parse().unwrap(),
    }
}

fn spec(nftables: bool, dual: bool) -> RuleSpec {
    RuleSpec {
        masquerade: true,
        fully_random: true,
        forward: true,
        nftables,
        v4: Some(nets(N4, P4)),
        v6: dual.then(|| nets(N6, P6)),
    }
}

/// Runs one check inside `ns` (child processes and netlink sockets live there).
fn check(ns: &Netns, firewall: Firewall, spec: &RuleSpec) -> (Firewall, CheckReport) {
    let spec = spec.clone();
    block_on_in(&ns.name, move || async move {
        let mut firewall = firewall;
        let report = firewall
            .check(&spec)
            .await
            .unwrap_or_else(|e| panic!("rules check failed: {e}"));
        (firewall, report)
    })
}

fn firewall(dir: &tempfile::TempDir) -> Firewall {
    Firewall::new(vec![dir.path().to_path_buf()])
}

/// Checks until a check reads nothing (bounded), returning how many it took.
fn settle(ns: &Netns, mut fw: Firewall, spec: &RuleSpec) -> Firewall {
    for _ in 0..3 {
        let (next, report) = check(ns, fw, spec);
        fw = next;
        if !report.read {
            assert_eq!(report.processes, 0, "{report:?}");
            return fw;
        }
        assert!(
            report.repaired.is_empty(),
            "repairs without a change: {report:?}"
        );
    }
    panic!("the rules never settled");
}

fn want_v4(random_fully: bool) -> Vec<String> {
    flannel_save(
        &flannel_forward(N4),
        &flannel_masq(N4, P4, "224.0.0.0/4", random_fully),
    )
}

fn want_v6() -> Vec<String> {
    flannel_save(
        &flannel_forward(N6),
        &flannel_masq(N6, P6, "ff00::/8", true),
    )
}

/// A host with both iptables variants (weft's image is one): the rules go where the
/// host's kubelet keeps its chains, decided as the kube ecosystem's iptables-wrapper
/// decides, and nothing lands in the other variant.
#[test]
fn with_both_variants_the_rules_follow_the_variant_kubelet_uses() {
    let cases = [
        (
            "iptables-legacy",
            "iptables-legacy-save",
            "iptables-nft-save",
            "KUBE-IPTABLES-HINT",
        ),
        (
            "iptables-nft",
            "iptables-nft-save",
            "iptables-legacy-save",
            "KUBE-KUBELET-CANARY",
        ),
    ];
    for (kubelet, chosen, other, chain) in cases {
        let ns = Netns::new(&unique("wr-host"));
        // What kubelet (1.17 and later) leaves in the mangle table of its variant.
        run_ok(&ns, &[kubelet, "-t", "mangle", "-N", chain]);
        let tools = tool_dir(Tools::BothVariants);
        let (_fw, report) = check(&ns, firewall(&tools), &spec(false, true));
        let choice = report.iptables.clone().unwrap_or_default();
        assert!(
            choice.starts_with(kubelet)
                && choice.ends_with(&format!(
                    "kubelet's chains are in {kubelet} (the host's variant)"
                )),
            "{choice}"
        );
        assert_eq!(flannel_lines(&ns, chosen), want_v4(true), "{kubelet}");
        assert_eq!(
            flannel_lines(&ns, other),
            Vec::<String>::new(),
            "nothing in the variant kubelet does not use"
        );
    }
    // No kubelet chains anywhere: the default iptables (the nft one here).
    let ns = Netns::new(&unique("wr-host"));
    let tools = tool_dir(Tools::BothVariants);
    let (_fw, report) = check(&ns, firewall(&tools), &spec(false, false));
    assert_eq!(
        report.iptables.as_deref(),
        Some("iptables v1.8.9 (Nft): no kubelet chains in either variant: the default iptables")
            .map(|s| s.replace("1.8.9", &iptables_version()))
            .as_deref()
    );
    assert_eq!(flannel_lines(&ns, "iptables-nft-save"), want_v4(true));
    assert_eq!(
        flannel_lines(&ns, "iptables-legacy-save"),
        Vec::<String>::new()
    );
}

/// The system's iptables version, as `iptables-nft --version` prints it (`1.8.9`).
fn iptables_version() -> String {
    let output = std::process::Command::new("iptables-nft")
        .arg("--version")
        .output()
        .expect("iptables-nft --version");
    let text = String::from_utf8_lossy(&output.stdout);
    let word = text
        .split_whitespace()
        .find(|w| w.starts_with('v'))
        .expect("a version");
    word.trim_start_matches('v').to_string()
}

#[test]
fn iptables_nft_rules_are_flannels_and_repaired_with_no_process_when_unchanged() {
    let ns = Netns::new(&unique("wr-ipt"));
    let tools = tool_dir(Tools::IptablesNftOnly);
    let spec = spec(false, true);
    let (fw, first) = check(&ns, firewall(&tools), &spec);
    assert!(first.repaired.len() == 4, "{first:?}");
    assert_eq!(flannel_lines(&ns, "iptables-nft-save"), want_v4(true));
    assert_eq!(flannel_lines(&ns, "ip6tables-nft-save"), want_v6());

    // Steady state: the nftables generation did not move, so nothing is read or spawned.
    let mut fw = settle(&ns, fw, &spec);
    for _ in 0..3 {
        let (next, report) = check(&ns, fw, &spec);
        fw = next;
        assert_eq!(report, CheckReport::default());
    }

    // An admin flushes the masquerade chain: refilled, the jump left in place.
    run_ok(&ns, &["iptables-nft", "-t", "nat", "-F", "FLANNEL-POSTRTG"]);
    let (fw, report) = check(&ns, fw, &spec);
    assert_eq!(report.repaired, ["set iptables nat/FLANNEL-POSTRTG (IPv4)"]);
    assert_eq!(flannel_lines(&ns, "iptables-nft-save"), want_v4(true));

    // The FORWARD jump deleted, and an IPv6 chain flushed: both back.
    run_ok(
        &ns,
        &[
            "iptables-nft",
            "-D",
            "FORWARD",
            "-m",
            "comment",
            "--comment",
            "flanneld forward",
            "-j",
            "FLANNEL-FWD",
        ],
    );
    run_ok(&ns, &["ip6tables-nft", "-F", "FLANNEL-FWD"]);
    let (fw, report) = check(&ns, fw, &spec);
    assert_eq!(
        report.repaired,
        [
            "set iptables filter/FLANNEL-FWD (IPv4)",
            "set iptables filter/FLANNEL-FWD (IPv6)"
        ]
    );
    assert_eq!(flannel_lines(&ns, "iptables-nft-save"), want_v4(true));
    assert_eq!(flannel_lines(&ns, "ip6tables-nft-save"), want_v6());

    // A change elsewhere in nftables costs a read (`iptables -S` of each chain and its
    // hook: 4 processes per family), not a repair.
    let fw = settle(&ns, fw, &spec);
    run_ok(&ns, &["iptables-nft", "-t", "nat", "-N", "SOMEONE-ELSE"]);
    let (fw, report) = check(&ns, fw, &spec);
    assert!(report.read && report.repaired.is_empty(), "{report:?}");
    assert_eq!(report.processes, 8, "{report:?}");
    let fw = settle(&ns, fw, &spec);

    // --ip-masq turned off: the chain and its jump are removed; --random-fully disabled.
    let no_masq = RuleSpec {
        masquerade: false,
        ..spec.clone()
    };
    let (fw, report) = check(&ns, fw, &no_masq);
    assert_eq!(
        report.repaired,
        [
            "removed iptables nat/FLANNEL-POSTRTG (IPv4)",
            "removed iptables nat/FLANNEL-POSTRTG (IPv6)"
        ]
    );
    assert_eq!(flannel_lines(&ns, "iptables-nft-save"), flannel_forward(N4));
    let plain = RuleSpec {
        fully_random: false,
        ..spec.clone()
    };
    let (_, _) = check(&ns, fw, &plain);
    assert_eq!(flannel_lines(&ns, "iptables-nft-save"), want_v4(false));
}

#[test]
fn a_new_subnet_replaces_the_old_rules() {
    let ns = Netns::new(&unique("wr-sub"));
    let tools = tool_dir(Tools::IptablesNftOnly);
    let old = spec(false, false);
    let (fw, _) = check(&ns, firewall(&tools), &old);
    let new = RuleSpec {
        v4: Some(nets(N4, "10.244.7.0/24")),
        ..old
    };
    let (_, report) = check(&ns, fw, &new);
    assert_eq!(report.repaired, ["set iptables nat/FLANNEL-POSTRTG (IPv4)"]);
    assert_eq!(
        flannel_lines(&ns, "iptables-nft-save"),
        flannel_save(
            &flannel_forward(N4),
            &flannel_masq(N4, "10.244.7.0/24", "224.0.0.0/4", true)
        )
    );
}

#[test]
fn iptables_legacy_only_host() {
    let ns = Netns::new(&unique("wr-leg"));
    let tools = tool_dir(Tools::IptablesLegacyOnly);
    let spec = spec(false, true);
    let (fw, _) = check(&ns, firewall(&tools), &spec);
    assert_eq!(flannel_lines(&ns, "iptables-legacy-save"), want_v4(true));
    assert_eq!(flannel_lines(&ns, "ip6tables-legacy-save"), want_v6());
    // Nothing in nftables: iptables-nft sees no flannel rules.
    assert!(flannel_lines(&ns, "iptables-nft-save").is_empty());

    // Legacy tables have no generation counter: a check reads them (one process per
    // family) but changes nothing.
    let (fw, report) = check(&ns, fw, &spec);
    assert!(report.read && report.repaired.is_empty(), "{report:?}");
    assert_eq!(report.processes, 2, "{report:?}");

    run_ok(
        &ns,
        &["iptables-legacy", "-t", "nat", "-F", "FLANNEL-POSTRTG"],
    );
    let (_, report) = check(&ns, fw, &spec);
    assert_eq!(report.repaired, ["set iptables nat/FLANNEL-POSTRTG (IPv4)"]);
    assert_eq!(flannel_lines(&ns, "iptables-legacy-save"), want_v4(true));
}

/// `nft list table` as nft 1.0.6 prints flannel's IPv4 table.
const NFT_V4: &str = "table ip flannel-ipv4 {
\tcomment \"rules for flannel-ipv4\"
\tchain postrtg {
\t\tcomment \"chain to manage traffic masquerading by flannel\"
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark 0x00004000 return
\t\tip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return
\t\tip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return
\t\tip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return
\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
\t}

\tchain forward {
\t\tcomment \"chain to accept flannel traffic\"
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 10.244.0.0/16 accept
\t\tip daddr 10.244.0.0/16 accept
\t}
}
";

#[test]
fn nftables_mode_on_a_host_without_iptables() {
    let ns = Netns::new(&unique("wr-nft"));
    let tools = tool_dir(Tools::NftOnly);
    let spec = spec(true, true);
    let (fw, first) = check(&ns, firewall(&tools), &spec);
    assert_eq!(
        first.repaired,
        [
            "set nftables table ip flannel-ipv4",
            "set nftables table ip6 flannel-ipv6"
        ]
    );
    assert_eq!(
        nft_table(&ns, "ip", "flannel-ipv4").as_deref(),
        Some(NFT_V4)
    );
    let v6 = nft_table(&ns, "ip6", "flannel-ipv6").expect("v6 table");
    for rule in [
        "ip6 saddr fd00:10:244:1::/64 ip6 daddr fd00:10:244::/56 return",
        "ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random",
        "ip6 daddr fd00:10:244::/56 accept",
    ] {
        assert!(v6.contains(rule), "{rule} missing from\n{v6}");
    }
    let fw = settle(&ns, fw, &spec);

    // An admin deletes the table: recreated whole.
    run_ok(&ns, &["nft", "delete", "table", "ip", "flannel-ipv4"]);
    let (fw, report) = check(&ns, fw, &spec);
    assert_eq!(report.repaired, ["set nftables table ip flannel-ipv4"]);
    assert_eq!(
        nft_table(&ns, "ip", "flannel-ipv4").as_deref(),
        Some(NFT_V4)
    );

    // A rule deleted from a chain: the table is replaced.
    run_ok(
        &ns,
        &["nft", "flush", "chain", "ip6", "flannel-ipv6", "forward"],
    );
    let (fw, report) = check(&ns, fw, &spec);
    assert_eq!(report.repaired, ["set nftables table ip6 flannel-ipv6"]);
    assert_eq!(nft_table(&ns, "ip6", "flannel-ipv6"), Some(v6));

    // IPv6 dropped from the config: its table goes.
    let v4_only = RuleSpec {
        v6: None,
        ..spec.clone()
    };
    let (_, report) = check(&ns, fw, &v4_only);
    assert_eq!(report.repaired, ["deleted nftables table ip6 flannel-ipv6"]);
    assert_eq!(nft_table(&ns, "ip6", "flannel-ipv6"), None);
}

#[test]
fn nftables_mode_needs_nft_and_iptables_mode_needs_iptables() {
    let ns = Netns::new(&unique("wr-none"));
    let only_nft = tool_dir(Tools::NftOnly);
    let only_iptables = tool_dir(Tools::IptablesNftOnly);
    for (dir, spec, want) in [
        (&only_nft, spec(false, false), "no iptables binary found"),
        (&only_iptables, spec(true, false), "no nft binary found"),
    ] {
        let fw = firewall(dir);
        let error = block_on_in(&ns.name, move || async move {
            let mut fw = fw;
            fw.check(&spec).await.map(|_| ()).unwrap_err().to_string()
        });
        assert!(error.contains(want), "{error}");
    }
    // Neither masquerade nor forward rules: no tool needed in either mode.
    for (dir, nftables) in [(&only_nft, false), (&only_iptables, true)] {
        let spec = RuleSpec {
            masquerade: false,
            forward: false,
            ..spec(nftables, false)
        };
        let (_, report) = check(&ns, firewall(dir), &spec);
        assert!(report.repaired.is_empty(), "{report:?}");
    }
}

#[test]
fn switching_modes_removes_the_other_modes_leftovers() {
    let ns = Netns::new(&unique("wr-sw"));
    let tools = tool_dir(Tools::Both);
    let iptables_mode = spec(false, true);
    let nft_mode = spec(true, true);
    let (fw, _) = check(&ns, firewall(&tools), &iptables_mode);
    assert_eq!(flannel_lines(&ns, "iptables-nft-save"), want_v4(true));

    // nftables mode: the tables appear and flannel's iptables chains go (both families).
    let (fw, report) = check(&ns, fw, &nft_mode);
    assert!(report.cleanup_errors.is_empty(), "{report:?}");
    assert_eq!(
        report.repaired.len(),
        2 + 4,
        "two tables set, four chains removed: {report:?}"
    );
    assert!(flannel_lines(&ns, "iptables-nft-save").is_empty());
    assert!(flannel_lines(&ns, "ip6tables-nft-save").is_empty());
    assert_eq!(
        nft_table(&ns, "ip", "flannel-ipv4").as_deref(),
        Some(NFT_V4)
    );
    let fw = settle(&ns, fw, &nft_mode);

    // Back to iptables mode: flannel's nftables tables are deleted over netlink.
    let (_, report) = check(&ns, fw, &iptables_mode);
    assert!(
        report.repaired.contains(
            &"deleted nftables table ip flannel-ipv4, a leftover of nftables mode".into()
        ),
        "{report:?}"
    );
    assert_eq!(nft_table(&ns, "ip", "flannel-ipv4"), None);
    assert_eq!(nft_table(&ns, "ip6", "flannel-ipv6"), None);
    assert_eq!(flannel_lines(&ns, "iptables-nft-save"), want_v4(true));
}
