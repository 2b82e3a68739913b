//! flannel's iptables chains as `iptables-save` shows them, and the
//! `iptables-restore --noflush` payload that makes them what is wanted (pure).
//!
//! weft owns `FLANNEL-POSTRTG` and `FLANNEL-FWD` whole: a chain that differs in any way
//! is flushed and refilled in one restore (`:CHAIN - [0:0]` flushes an existing chain
//! under `--noflush`), which iptables applies atomically per table, so there is no moment
//! without the rules. The jump from the built-in chain is kept where it is when it is the
//! only reference; otherwise every reference is deleted and one jump appended (as flannel
//! appends it). A chain that is not wanted is removed with its references.

use super::render::ChainId;

/// What `iptables-save` shows of one of flannel's chains.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChainState {
    /// The chain is declared (`:CHAIN - [0:0]`).
    pub exists: bool,
    /// Its rules, each after `-A <chain> `.
    pub rules: Vec<String>,
    /// Rules elsewhere that jump to it: (chain, rule after `-A <chain> `).
    pub jumps: Vec<(String, String)>,
}

impl ChainState {
    /// The state wanted for `id`: its rules and one jump from the built-in chain, or no
    /// chain at all.
    pub fn wanted(id: &ChainId, rules: Option<&[String]>) -> ChainState {
        match rules {
            Some(rules) => ChainState {
                exists: true,
                rules: rules.to_vec(),
                jumps: vec![(id.hook.to_string(), id.jump())],
            },
            None => ChainState::default(),
        }
    }
}

/// The state of `id` in `save`, the output of `iptables-save` (all tables, or `-t`).
pub fn observe(save: &str, id: &ChainId) -> ChainState {
    let mut state = ChainState::default();
    let mut in_table = false;
    for line in save.lines() {
        if let Some(table) = line.strip_prefix('*') {
            in_table = table.trim() == id.table;
            continue;
        }
        if !in_table {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            if decl.split_whitespace().next() == Some(id.chain) {
                state.exists = true;
            }
            continue;
        }
        let Some(rest) = line.strip_prefix("-A ") else {
            continue;
        };
        let (chain, rule) = rest.split_once(' ').unwrap_or((rest, ""));
        if chain == id.chain {
            state.rules.push(rule.to_string());
        } else if jumps_to(rule, id.chain) {
            state.jumps.push((chain.to_string(), rule.to_string()));
        }
    }
    state
}

/// Whether `rule` jumps (`-j`) or goes (`-g`) to `chain`.
fn jumps_to(rule: &str, chain: &str) -> bool {
    let mut words = rule.split_whitespace();
    while let Some(word) = words.next() {
        if (word == "-j" || word == "-g") && words.next() == Some(chain) {
            return true;
        }
    }
    false
}

/// The state of `id` from `iptables -t TABLE -S` listings of its built-in chain and of
/// the chain itself (`None`: not listed, or the chain does not exist).
pub fn observe_listings(id: &ChainId, hook: Option<&str>, chain: Option<&str>) -> ChainState {
    let mut save = format!("*{}\n", id.table);
    for line in hook.into_iter().chain(chain).flat_map(str::lines) {
        if let Some(name) = line.strip_prefix("-N ") {
            save.push_str(&format!(":{} - [0:0]\n", name.trim()));
        } else if line.starts_with("-A ") {
            save.push_str(line);
            save.push('\n');
        }
    }
    observe(&save, id)
}

/// Whether `observed` needs a change: it is neither what is wanted nor what iptables
/// printed right after weft last applied the same rules (`reference`, for an iptables
/// that prints a rule differently from flannel's text).
pub fn needs_change(
    wanted: &ChainState,
    observed: &ChainState,
    reference: Option<&ChainState>,
) -> bool {
    observed != wanted && reference != Some(observed)
}

/// The restore lines (inside the table's `*table` ... `COMMIT`) that turn `observed` into
/// `rules` (or remove the chain when `None`). Empty when there is nothing to remove.
pub fn restore_lines(id: &ChainId, rules: Option<&[String]>, observed: &ChainState) -> Vec<String> {
    let mut out = Vec::new();
    match rules {
        Some(rules) => {
            let jumps_ok = observed.jumps == ChainState::wanted(id, Some(rules)).jumps;
            out.push(format!(":{} - [0:0]", id.chain));
            if !jumps_ok {
                out.extend(observed.jumps.iter().map(|(c, r)| format!("-D {c} {r}")));
            }
            out.extend(rules.iter().map(|r| format!("-A {} {r}", id.chain)));
            if !jumps_ok {
                out.push(format!("-A {} {}", id.hook, id.jump()));
            }
        }
        None => {
            if !observed.exists && observed.jumps.is_empty() {
                return out;
            }
            out.push(format!(":{} - [0:0]", id.chain));
            out.extend(observed.jumps.iter().map(|(c, r)| format!("-D {c} {r}")));
            out.push(format!("-X {}", id.chain));
        }
    }
    out
}

/// An `iptables-restore --noflush` input: one `*table` ... `COMMIT` block per table that
/// has lines, in the order given.
pub fn restore_input(tables: &[(&str, Vec<String>)]) -> String {
    let mut out = String::new();
    for (table, lines) in tables.iter().filter(|(_, l)| !l.is_empty()) {
        out.push_str(&format!("*{table}\n"));
        for line in lines {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{FWD, POSTRTG, forward_rules};

    fn rules() -> Vec<String> {
        forward_rules("10.244.0.0/16".parse().unwrap())
    }

    /// What iptables-nft-save 1.8.9 printed for flannel's forward rules in a namespace.
    const SAVED: &str = r#"# Generated by iptables-nft-save v1.8.9 (nf_tables) on Sun Nov 29 09:42:41 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:FLANNEL-FWD - [0:0]
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
# Completed on Sun Nov 29 09:42:41 2026
*nat
:POSTROUTING ACCEPT [0:0]
:FLANNEL-FWD - [0:0]
-A POSTROUTING -j FLANNEL-FWD
COMMIT
"#;

    #[test]
    fn observes_only_the_chains_table() {
        let state = observe(SAVED, &FWD);
        assert_eq!(state, ChainState::wanted(&FWD, Some(&rules())));
        assert!(!needs_change(
            &ChainState::wanted(&FWD, Some(&rules())),
            &state,
            None
        ));
        assert_eq!(observe(SAVED, &POSTRTG), ChainState::default());
    }

    #[test]
    fn a_correct_chain_needs_no_restore_and_a_missing_one_is_created() {
        let wanted = ChainState::wanted(&FWD, Some(&rules()));
        let missing = observe("", &FWD);
        assert!(needs_change(&wanted, &missing, None));
        assert_eq!(
            restore_lines(&FWD, Some(&rules()), &missing),
            [
                ":FLANNEL-FWD - [0:0]",
                r#"-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
                r#"-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
                r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#,
            ]
        );
    }

    #[test]
    fn a_flushed_chain_is_refilled_and_its_jump_kept_in_place() {
        // `iptables -F FLANNEL-FWD`: the chain and the jump stay, the rules are gone.
        let flushed: String = SAVED
            .lines()
            .filter(|l| !l.starts_with("-A FLANNEL-FWD"))
            .map(|l| format!("{l}\n"))
            .collect();
        let observed = observe(&flushed, &FWD);
        assert!(observed.exists && observed.rules.is_empty() && observed.jumps.len() == 1);
        let lines = restore_lines(&FWD, Some(&rules()), &observed);
        assert_eq!(lines[0], ":FLANNEL-FWD - [0:0]");
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines.iter().all(|l| !l.contains("FORWARD ")), "{lines:?}");
    }

    #[test]
    fn extra_or_foreign_references_are_deleted_and_one_jump_appended() {
        let doubled = SAVED.replace(
            "-A FLANNEL-FWD -s",
            "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n-A FORWARD -i eth0 -g FLANNEL-FWD\n-A FLANNEL-FWD -s",
        );
        let observed = observe(&doubled, &FWD);
        assert_eq!(observed.jumps.len(), 3);
        let lines = restore_lines(&FWD, Some(&rules()), &observed);
        assert_eq!(
            lines,
            [
                ":FLANNEL-FWD - [0:0]",
                r#"-D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#,
                r#"-D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#,
                "-D FORWARD -i eth0 -g FLANNEL-FWD",
                r#"-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
                r#"-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
                r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#,
            ]
        );
    }

    #[test]
    fn an_unwanted_chain_is_removed_with_its_jump() {
        let observed = observe(SAVED, &FWD);
        let wanted = ChainState::wanted(&FWD, None);
        assert!(needs_change(&wanted, &observed, None));
        assert_eq!(
            restore_lines(&FWD, None, &observed),
            [
                ":FLANNEL-FWD - [0:0]",
                r#"-D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#,
                "-X FLANNEL-FWD",
            ]
        );
        assert!(restore_lines(&FWD, None, &ChainState::default()).is_empty());
        assert!(!needs_change(&wanted, &ChainState::default(), None));
    }

    #[test]
    fn changed_rules_are_replaced() {
        // A node whose subnet changed: its old rules are replaced, not added to.
        let old = observe(SAVED, &FWD);
        let new = forward_rules("10.245.0.0/16".parse().unwrap());
        let wanted = ChainState::wanted(&FWD, Some(&new));
        assert!(needs_change(&wanted, &old, None));
        let lines = restore_lines(&FWD, Some(&new), &old);
        assert_eq!(lines.len(), 3);
        assert!(lines[1].contains("10.245.0.0/16") && lines[2].contains("10.245.0.0/16"));
    }

    #[test]
    fn what_iptables_printed_after_an_apply_is_accepted() {
        let wanted = ChainState::wanted(&FWD, Some(&rules()));
        let mut printed = wanted.clone();
        printed.rules[0] = printed.rules[0].replace("-s ", "--source ");
        assert!(needs_change(&wanted, &printed, None));
        assert!(!needs_change(&wanted, &printed, Some(&printed)));
    }

    #[test]
    fn listings_read_like_save_output() {
        let hook = "-P FORWARD DROP\n-A FORWARD -i eth9 -j ACCEPT\n-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n";
        let chain = "-N FLANNEL-FWD\n-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n";
        assert_eq!(
            observe_listings(&FWD, Some(hook), Some(chain)),
            ChainState::wanted(&FWD, Some(&rules()))
        );
        // Absent chain, not listed hook: nothing.
        assert_eq!(observe_listings(&FWD, None, None), ChainState::default());
        // Hook listed, chain missing: no chain, and no jump to it.
        let state = observe_listings(&FWD, Some("-P FORWARD ACCEPT\n"), None);
        assert_eq!(state, ChainState::default());
    }

    #[test]
    fn restore_input_has_one_block_per_table_with_lines() {
        let input = restore_input(&[
            ("nat", vec![":FLANNEL-POSTRTG - [0:0]".into()]),
            ("filter", vec![]),
        ]);
        assert_eq!(input, "*nat\n:FLANNEL-POSTRTG - [0:0]\nCOMMIT\n");
    }
}
