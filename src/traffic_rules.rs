//! flannel's traffic rules (`--ip-masq`, `--iptables-forward-rules`, `EnableNFTables`),
//! checked off the event loop: one task owns the [`Firewall`] and runs a check at start,
//! whenever it is woken (the `--iptables-resync` timer, a lease change) and whenever the
//! wanted rules change (a new own subnet). Each outcome comes back to the event loop as
//! a trigger. A check that waits for the xtables lock (`iptables-restore --wait`) or a
//! slow tool therefore never holds up lease handling, the datapath or shutdown; wakes
//! that arrive during a check are coalesced into one more check.

use std::sync::Arc;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::{Notify, watch};
use weft_backend::rules::{CheckReport, FamilyNets, Firewall, RuleSpec};
use weft_subnet::config::SubnetPool;
use weft_subnet::family::Net;
use weft_subnet::{NetworkConfig, SubnetKey};

/// What one check came to: its report, or why it failed.
pub type Outcome = Result<CheckReport, String>;

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
pub fn rule_spec(cli: &crate::cli::Cli, config: &NetworkConfig, own: SubnetKey) -> RuleSpec {
    RuleSpec {
        masquerade: cli.ip_masq,
        fully_random: !cli.ip_masq_fully_random_disable,
        forward: cli.iptables_forward_rules,
        nftables: config.enable_nftables,
        v4: family_nets(config.ipv4, own.ipv4),
        v6: family_nets(config.ipv6, own.ipv6),
    }
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
        let outcome = firewall.check(&current).await.map_err(|e| e.to_string());
        if outcomes.send(outcome).is_err() {
            return;
        }
        tokio::select! {
            () = wake.notified() => {}
            changed = spec.changed() => if changed.is_err() { return },
        }
    }
}
