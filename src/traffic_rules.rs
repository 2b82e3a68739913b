//! flannel's traffic rules (`--ip-masq`, `--iptables-forward-rules`, `EnableNFTables`),
//! checked off the event loop: one task owns the [`Firewall`] and runs a check at start,
//! whenever it is woken (the `--iptables-resync` timer, a lease change) and whenever the
//! wanted rules change (a new own subnet). Each outcome comes back to the event loop as
//! a trigger. A check that waits for the xtables lock (`iptables-restore --wait`) or a
//! slow tool therefore never holds up lease handling, the datapath or shutdown; wakes
//! that arrive during a check are coalesced into one more check.

use crate::settings::NodeSettings;
use std::sync::Arc;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::{Notify, watch};
use weft_rules::{CheckReport, FamilyNets, Firewall, RuleSpec, RulesError};
use weft_subnet::config::SubnetPool;
use weft_subnet::family::Net;
use weft_subnet::{NetworkConfig, SubnetKey};

/// What one check came to: its report, or why it failed.
pub type Outcome = Result<CheckReport, RulesFailure>;

/// A failed check as it crosses from the rules task to the event loop: the error's text,
/// which is all the loop uses (to log it once and to say why the node is not ready), in
/// a type that compares, so a repeated failure is recognised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RulesFailure(String);

impl From<RulesError> for RulesFailure {
    fn from(error: RulesError) -> RulesFailure {
        RulesFailure(error.to_string())
    }
}

/// The handle the node keeps; dropping it ends the task.
#[derive(Debug)]
pub struct TrafficRules {
    spec: watch::Sender<RuleSpec>,
    wake: Arc<Notify>,
}

impl TrafficRules {
    /// Starts the task; its first check runs at once. Returns the outcomes' receiver.
    pub fn start(spec: RuleSpec, firewall: Firewall) -> (TrafficRules, UnboundedReceiver<Outcome>) {
        let (spec_tx, spec_rx) = watch::channel(spec);
        let wake = Arc::new(Notify::new());
        let (outcomes_tx, outcomes_rx) = unbounded_channel();
        tokio::spawn(run(firewall, spec_rx, wake.clone(), outcomes_tx));
        (
            TrafficRules {
                spec: spec_tx,
                wake,
            },
            outcomes_rx,
        )
    }

    /// A check as soon as the task is free (at most one more if one is running).
    pub fn check_now(&self) {
        self.wake.notify_one();
    }

    /// This node's subnets changed: the rules follow (a check starts if they differ).
    pub fn set_own(&self, config: &NetworkConfig, own: SubnetKey) {
        self.spec.send_if_modified(|spec| {
            let v4 = family_nets(config.ipv4, own.ipv4);
            let v6 = family_nets(config.ipv6, own.ipv6);
            let changed = (spec.v4, spec.v6) != (v4, v6);
            spec.v4 = v4;
            spec.v6 = v6;
            changed
        });
    }
}

/// The rules a node with these flags, config and subnets wants.
pub fn rule_spec(settings: &NodeSettings, config: &NetworkConfig, own: SubnetKey) -> RuleSpec {
    RuleSpec {
        masquerade: settings.ip_masq,
        fully_random: settings.masq_fully_random,
        forward: settings.forward_rules,
        nftables: config.enable_nftables,
        v4: family_nets(config.ipv4, own.ipv4),
        v6: family_nets(config.ipv6, own.ipv6),
    }
}

/// The br_netfilter switches flannel requires at startup (flannel.md §2 step 11) that
/// this host lacks: without them bridged pod-to-pod traffic bypasses iptables (kube-proxy,
/// network policies). Not needed in nftables mode, as in flannel.
pub fn missing_br_netfilter(
    config: &NetworkConfig,
    exists: impl Fn(&str) -> bool,
) -> Vec<&'static str> {
    if config.enable_nftables {
        return Vec::new();
    }
    [
        (
            config.ipv4.is_some(),
            "/proc/sys/net/bridge/bridge-nf-call-iptables",
        ),
        (
            config.ipv6.is_some(),
            "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
        ),
    ]
    .into_iter()
    .filter(|(wanted, path)| *wanted && !exists(path))
    .map(|(_, path)| path)
    .collect()
}

fn family_nets(pool: Option<SubnetPool>, own: Option<Net>) -> Option<FamilyNets> {
    Some(FamilyNets {
        network: pool?.network,
        own: own?,
    })
}

async fn run(
    mut firewall: Firewall,
    mut spec: watch::Receiver<RuleSpec>,
    wake: Arc<Notify>,
    outcomes: UnboundedSender<Outcome>,
) {
    loop {
        let current = spec.borrow_and_update().clone();
        let outcome = firewall.check(&current).await.map_err(RulesFailure::from);
        if outcomes.send(outcome).is_err() {
            return;
        }
        tokio::select! {
            () = wake.notified() => {}
            changed = spec.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn cli(args: &[&str]) -> NodeSettings {
        let mut all = vec![OsString::from("weftd")];
        all.extend(args.iter().map(OsString::from));
        crate::cli::Cli::try_parse_flannel_style(all)
            .unwrap()
            .node_settings()
    }

    fn key(v4: Option<&str>, v6: Option<&str>) -> SubnetKey {
        SubnetKey {
            ipv4: v4.map(|s| s.parse().unwrap()),
            ipv6: v6.map(|s| s.parse().unwrap()),
        }
    }

    #[test]
    fn the_spec_follows_flags_config_and_subnets() {
        let config = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/48","EnableNFTables":true}"#,
        )
        .unwrap();
        let own = key(Some("10.244.3.0/24"), Some("fd00:10:0:3::/64"));
        let spec = rule_spec(&cli(&[]), &config, own);
        // flannel's defaults: no masquerade, forward rules on, fully random allowed.
        assert!(!spec.masquerade && spec.forward && spec.fully_random && spec.nftables);
        assert_eq!(spec.v4.unwrap().own.to_string(), "10.244.3.0/24");
        assert_eq!(spec.v6.unwrap().network.to_string(), "fd00:10::/48");
        let spec = rule_spec(
            &cli(&[
                "--ip-masq",
                "--ip-masq-fully-random-disable",
                "--iptables-forward-rules=false",
            ]),
            &config,
            key(Some("10.244.3.0/24"), None),
        );
        assert!(spec.masquerade && !spec.fully_random && !spec.forward);
        assert!(spec.v6.is_none(), "no v6 rules without a v6 subnet");
    }

    #[test]
    fn br_netfilter_is_required_per_family_and_not_with_nftables() {
        let v4 = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        let dual = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/48"}"#,
        )
        .unwrap();
        let nft =
            NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","EnableNFTables":true}"#).unwrap();
        assert_eq!(
            missing_br_netfilter(&v4, |_| false),
            ["/proc/sys/net/bridge/bridge-nf-call-iptables"]
        );
        assert_eq!(missing_br_netfilter(&dual, |_| false).len(), 2);
        assert!(missing_br_netfilter(&dual, |_| true).is_empty());
        assert!(missing_br_netfilter(&nft, |_| false).is_empty());
    }
}
