//! What both subnet managers share once a node holds a subnet: the datapath, the traffic
//! rules, subnet.env, readiness (ready = subnet held, datapath programmed, traffic rules
//! in place, subnet.env written), the shared triggers of the event loop, and the log
//! lines about peers. The loop that drives it is `node_loop`; the modes reach it only
//! through its methods.

use crate::log_limit::{LogLimiter, REMINDER_PERIOD, Verdict, whole_seconds};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::settings::NodeSettings;
use crate::state_channel::{StateInbox, StateRequest};
use crate::state_view::{LastPass, NodeView, StateView};
use crate::state_wire::StateDoc;
use crate::subnet_file::{self, SubnetEnv};
use crate::traffic_rules::{self, Outcome, TrafficRules};
use crate::triggers::{PassTrigger, TICK, Trigger, Triggers};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::{debug, error, info, warn};
use weft_backend::backend::{ExternalSpec, MtuChange};
use weft_backend::kernel::KernelEvent;
use weft_backend::reconcile::drift::Cause;
use weft_backend::reconcile::{Reaction, Reconciler};
use weft_backend::tunnel::TunnelImplementation;
use weft_rules::Firewall;
use weft_subnet::LeaseAttrs;
use weft_subnet::watch::{LeaseEvent, LeaseWatcher};
use weft_subnet::{NetworkConfig, SubnetKey};

/// Where the node reports: the metrics, and the channel `/debug/state` asks through.
#[derive(Debug)]
pub struct Reporting {
    pub metrics: Arc<Metrics>,
    pub state_inbox: StateInbox,
}

/// See the module docs.
#[derive(Debug)]
pub struct NodeState {
    subnet_file: PathBuf,
    ip_masq: bool,
    config: NetworkConfig,
    /// This node's subnets.
    own: SubnetKey,
    readiness: Arc<Readiness>,
    env_written: bool,
    /// Keeps a lasting subnet.env write failure from logging on every tick.
    env_write_log: LogLimiter,
    datapath: Reconciler,
    /// Whether the last reconcile pass applied everything.
    datapath_ok: bool,
    triggers: Triggers,
    rules: TrafficRules,
    rules_status: RulesStatus,
    /// This node's subnet changed since the traffic rules were last in place (so a
    /// rewrite is a node change, not a repair).
    rules_own_changed: bool,
    /// Whether a traffic-rules check has ever succeeded (until then, rewrites count as
    /// startup).
    rules_ever_in_place: bool,
    /// Where the traffic rules live, and why: nftables, or which iptables (for the state
    /// view).
    rules_backend: Option<String>,
    metrics: Arc<Metrics>,
    state_inbox: StateInbox,
    /// When this node's lease expires (etcd mode; `None`: it does not, or Kubernetes).
    lease_expiry: Option<SystemTime>,
    /// The external interface's index, whose address changes are followed.
    underlay_index: Option<u32>,
    /// When to choose the external interface again (its addresses changed; debounced).
    underlay_check_at: Option<Instant>,
    last_pass: Option<LastPass>,
}

/// How the last traffic-rules check went.
#[derive(Debug, Clone, PartialEq)]
pub enum RulesStatus {
    /// No check has finished yet.
    NotChecked,
    InPlace,
    /// The last check failed; `logged` is when that was last logged (rate limit).
    Failed {
        reason: String,
        logged: Instant,
    },
}

/// How long address notifications of the external interface settle before it is
/// chosen again.
const UNDERLAY_SETTLE: Duration = Duration::from_millis(300);

/// A failing traffic-rules check is logged when its reason changes, else at most this
/// often.
const RULES_LOG_EVERY: Duration = Duration::from_secs(60);

impl NodeState {
    /// A node that holds `own` and has not written subnet.env yet.
    pub fn new(
        settings: &NodeSettings,
        config: NetworkConfig,
        own: SubnetKey,
        readiness: Arc<Readiness>,
        datapath: Reconciler,
        mut triggers: Triggers,
        reporting: Reporting,
    ) -> NodeState {
        for path in
            traffic_rules::missing_br_netfilter(&config, |p| std::path::Path::new(p).exists())
        {
            warn!(
                "{path} is missing (br_netfilter not loaded): bridged pod traffic bypasses \
                 iptables; flannel refuses to start here, weftd goes on"
            );
        }
        let spec = traffic_rules::rule_spec(settings, &config, own);
        let (rules, outcomes) = TrafficRules::start(spec, Firewall::from_env());
        triggers.with_rules(settings.rules_resync, outcomes);
        reporting.metrics.set_backend(config.backend.kind.name());
        reporting.state_inbox.start_serving();
        let mut state = NodeState {
            subnet_file: settings.subnet_file.clone(),
            ip_masq: settings.ip_masq,
            config,
            own,
            readiness,
            env_written: false,
            env_write_log: LogLimiter::new(REMINDER_PERIOD),
            datapath,
            datapath_ok: true,
            triggers,
            rules,
            rules_status: RulesStatus::NotChecked,
            rules_own_changed: false,
            rules_ever_in_place: false,
            rules_backend: None,
            metrics: reporting.metrics,
            state_inbox: reporting.state_inbox,
            lease_expiry: None,
            underlay_index: None,
            underlay_check_at: None,
            last_pass: None,
        };
        state.datapath.set_blackhole_own(settings.blackhole_own);
        state.set_own(own);
        state
    }

    /// Follows the addresses of the external interface `index`.
    pub fn watch_underlay(&mut self, index: u32) {
        self.underlay_index = Some(index);
    }

    /// When the external interface is to be chosen again (its addresses changed).
    pub fn underlay_check_at(&self) -> Option<Instant> {
        self.underlay_check_at
    }

    /// The external interface is to be chosen again soon (the datastore names other
    /// addresses for this node).
    pub fn recheck_underlay(&mut self) {
        self.underlay_check_at
            .get_or_insert_with(|| Instant::now() + UNDERLAY_SETTLE);
    }

    pub fn underlay_checked(&mut self) {
        self.underlay_check_at = None;
    }

    /// The external interface changed: the reconciler follows (a full pass comes next)
    /// and the attributes this node publishes from now on are returned.
    pub fn follow_external(
        &mut self,
        external: &ExternalSpec,
        public_v4: Option<Ipv4Addr>,
        public_v6: Option<Ipv6Addr>,
    ) -> LeaseAttrs {
        let public_ips = [public_v4.map(IpAddr::V4), public_v6.map(IpAddr::V6)]
            .into_iter()
            .flatten()
            .collect();
        self.datapath.follow_external(external, public_ips);
        self.datapath.backend().lease_attrs(public_v4, public_v6)
    }

    /// This node's subnets.
    pub fn own(&self) -> SubnetKey {
        self.own
    }

    /// The network config this node runs on (the one it started with).
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Not ready, and why (re-acquiring, the datastore went back in time).
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.readiness.set_not_ready(reason);
    }

    /// When this node's lease expires, for `/debug/state` and the metrics.
    pub fn set_lease_expiry(&mut self, expiry: Option<SystemTime>) {
        self.lease_expiry = expiry;
        self.metrics.set_lease_expiry(expiry);
    }

    /// Passes add and repair but remove no peer entries until `until`, then a pass
    /// sweeps (see `Reconciler::hold_removals`).
    pub fn hold_removals(&mut self, until: Instant) {
        self.datapath.hold_removals(until);
        self.schedule_sweep();
    }

    /// The pass that ends a hold on removals, if one is running.
    pub fn schedule_sweep(&mut self) {
        self.triggers.sweep_at(self.datapath.removals_held_until());
    }

    fn subnet_env(&self) -> SubnetEnv {
        SubnetEnv {
            network: self.config.ipv4.map(|p| p.network),
            subnet: self.own.ipv4,
            ipv6_network: self.config.ipv6.map(|p| p.network),
            ipv6_subnet: self.own.ipv6,
            mtu: self.datapath.backend().pod_mtu(),
            ip_masq: self.ip_masq,
        }
    }

    /// Makes `own` this node's subnet (after acquiring or re-acquiring it).
    pub fn set_own(&mut self, own: SubnetKey) {
        self.own = own;
        self.datapath.set_own(own);
        self.rules.set_own(&self.config, own);
        self.rules_own_changed = self.rules_ever_in_place;
    }

    /// Writes subnet.env; on failure marks the node not ready with the reason. Called again
    /// on every [`TICK`] until it works. Logged: the first failure and any change of the
    /// error, a reminder every [`REMINDER_PERIOD`] while it lasts, and the recovery.
    pub fn write_subnet_env(&mut self) {
        let path = &self.subnet_file;
        let now = Instant::now();
        match subnet_file::write_atomic(path, &self.subnet_env().render()) {
            Ok(()) => {
                self.metrics.record_subnet_env_write(true);
                match self.env_write_log.success(now) {
                    Some(failing_for) => info!(
                        file = %path.display(),
                        subnet = %self.own,
                        "wrote subnet.env again after failing for {:?}",
                        whole_seconds(failing_for)
                    ),
                    None => info!(file = %path.display(), subnet = %self.own, "wrote subnet.env"),
                }
                self.env_written = true;
                self.update_readiness();
            }
            Err(e) => {
                self.metrics.record_subnet_env_write(false);
                self.env_written = false;
                let reason = format!("cannot write {}: {e}", path.display());
                match self.env_write_log.failure(&reason, now) {
                    Verdict::New => error!("{reason}; retrying every {TICK:?}"),
                    Verdict::Reminder {
                        failing_for,
                        unlogged,
                    } => error!(
                        "{reason}; still failing after {:?} ({unlogged} retries not logged); \
                         retrying every {TICK:?}",
                        whole_seconds(failing_for)
                    ),
                    Verdict::Quiet => debug!("{reason}; retrying every {TICK:?}"),
                }
                self.readiness.set_not_ready(reason);
            }
        }
    }

    /// Ready when the subnet is held (callers mark re-acquisition), the datapath is
    /// programmed, the traffic rules are in place and subnet.env is written.
    pub fn update_readiness(&mut self) {
        let was_ready = self.readiness.get().is_ok();
        if !self.env_written {
            return;
        }
        if !self.datapath_ok {
            self.readiness
                .set_not_ready("the datapath is not fully programmed yet (see the log)");
            return;
        }
        match &self.rules_status {
            RulesStatus::NotChecked => {
                self.readiness
                    .set_not_ready("the traffic rules are not checked yet");
                return;
            }
            RulesStatus::Failed { reason, .. } => {
                self.readiness
                    .set_not_ready(format!("cannot install the traffic rules: {reason}"));
                return;
            }
            RulesStatus::InPlace => {}
        }
        self.readiness.set_ready();
        if !was_ready {
            info!("weftd is ready");
        }
    }

    /// Replaces the peer set with the watcher's (O(peers): for a change of this node's
    /// own subnet; lease batches pass their changes with [`NodeState::peer_events`]).
    pub fn set_peers(&mut self, watcher: &LeaseWatcher) {
        self.datapath.set_peers(watcher.peers());
    }

    /// Passes the watcher's peer changes on to the datapath (O(changes)).
    pub fn peer_events(&mut self, events: Vec<LeaseEvent>) {
        self.datapath.apply_peer_events(events);
    }

    /// One reconcile pass of the datapath, counted as run for `trigger`: targeted for a
    /// lease change or reported entries, full otherwise (see `datapath`).
    pub async fn converge(&mut self, trigger: PassTrigger) {
        let started = Instant::now();
        let result = if trigger.is_targeted() {
            self.datapath.converge_changes().await
        } else {
            self.datapath.converge().await
        };
        let duration = started.elapsed();
        self.metrics
            .record_pass(trigger, duration, &result, self.datapath.stats());
        if self.datapath.backend().as_wireguard().is_some() {
            self.metrics.set_tunnel_peers(&self.datapath.tunnel_peers());
        }
        if let Some((_, devices)) = self.datapath.tx_checksum() {
            let known = devices
                .iter()
                .filter_map(|(device, state)| Some((device.as_str(), *state.as_ref().ok()?)));
            self.metrics.set_tx_checksum(known);
        }
        self.datapath_ok = match &result {
            Ok(pass) => {
                self.last_pass = Some(LastPass {
                    at: SystemTime::now(),
                    trigger: trigger.label(),
                    changes: pass.changes as u64,
                    failed: pass.failures.len() as u64,
                    duration,
                });
                pass.failures.is_empty()
            }
            Err(e) => {
                warn!("cannot read the datapath state: {e}");
                false
            }
        };
        if self.datapath_ok {
            self.triggers.pass_succeeded();
        } else {
            let delay = self.triggers.pass_failed();
            info!("the datapath is retried by a full pass in {delay:.1?}");
        }
        self.update_readiness();
    }

    /// The peer set changed: a pass as soon as the loop is free, and the sweep pass of a
    /// datastore grace period (if one is running) when it ends.
    pub fn peers_changed(&mut self) {
        self.triggers.converge_now(PassTrigger::LeaseChange);
        self.rules.check_now();
        self.schedule_sweep();
    }

    /// The next shared trigger; an error when kernel notifications stopped. `/debug/state`
    /// requests are answered meanwhile.
    pub async fn next_trigger(&mut self) -> anyhow::Result<Trigger> {
        loop {
            tokio::select! {
                trigger = self.triggers.next() => {
                    return trigger.ok_or_else(|| {
                        anyhow::anyhow!("netlink notifications stopped unexpectedly")
                    });
                }
                Some(request) = self.state_inbox.requests.recv() => self.answer(request),
            }
        }
    }

    /// The WireGuard devices and who serves each (the wireguard backend only; empty
    /// before the first full pass).
    fn wireguard_devices(&self) -> Option<Vec<(String, TunnelImplementation)>> {
        self.datapath.backend().as_wireguard()?;
        let devices = self.datapath.tunnel_devices();
        Some(
            devices
                .map(|(device, implementation)| (device.to_string(), implementation))
                .collect(),
        )
    }

    /// The VXLAN devices' offload for the state view: `off on flannel.1
    /// (tx-checksum-ip-generic off: auto: ...)`, or why it could not be set.
    fn tx_checksum_text(&self) -> Option<String> {
        let (decision, devices) = self.datapath.tx_checksum()?;
        let states: Vec<String> = devices
            .iter()
            .map(|(device, state)| match state {
                Ok(true) => format!("on on {device}"),
                Ok(false) => format!("off on {device}"),
                Err(e) => format!("{device}: cannot set it: {e}"),
            })
            .collect();
        let states = if states.is_empty() {
            "no device yet".to_string()
        } else {
            states.join(", ")
        };
        Some(format!("{states} ({decision})"))
    }

    /// Answers a `/debug/state` request with a page of the view.
    fn answer(&self, request: StateRequest) {
        let now = SystemTime::now();
        let query = request.query;
        let mut summary = std::collections::BTreeMap::new();
        let mut matching = 0;
        let mut peers = Vec::new();
        for lease in self.datapath.peers() {
            let verdict = self.datapath.peer_view(lease, now, false).verdict;
            *summary.entry(verdict).or_insert(0) += 1;
            if !query.matches(verdict) {
                continue;
            }
            if matching >= query.offset && peers.len() < query.limit {
                peers.push(self.datapath.peer_view(lease, now, true));
            }
            matching += 1;
        }
        let view = StateView {
            node: NodeView {
                subnet: self.own,
                backend: self.config.backend.kind.name().to_string(),
                subnet_manager: self.metrics.subnet_manager().label().to_string(),
                lease_expires: self.lease_expiry,
                ready: self.readiness.get(),
                last_pass: self.last_pass.clone(),
                traffic_rules: self.rules_backend.clone(),
                vxlan_tx_checksum: self.tx_checksum_text(),
                wireguard: self.wireguard_devices(),
            },
            summary: summary.into_iter().collect(),
            query,
            matching,
            peers,
        };
        let _ = request.reply.send(StateDoc::from_view(&view, now));
    }

    pub async fn on_trigger(&mut self, trigger: Trigger) {
        match trigger {
            Trigger::Kernel(event) => self.on_kernel_event(&event),
            Trigger::Converge(why) => self.converge(why).await,
            Trigger::Sweep => self.converge(PassTrigger::GraceEnd).await,
            Trigger::Reconcile => self.converge(PassTrigger::Timer).await,
            Trigger::Tick => {
                if !self.env_written {
                    self.write_subnet_env();
                }
            }
            Trigger::RulesCheck => self.rules.check_now(),
            Trigger::RulesChecked(outcome) => self.rules_checked(outcome),
        }
    }

    /// Logs what a traffic-rules check did (failures rate-limited) and updates readiness.
    fn rules_checked(&mut self, outcome: Outcome) {
        let cause = match (self.rules_ever_in_place, self.rules_own_changed) {
            (false, _) => Cause::Startup,
            (true, true) => Cause::NodeChange,
            (true, false) => Cause::DriftRepair,
        };
        let counted = outcome.as_ref().map(|r| r.repaired.len()).map_err(|_| ());
        self.metrics.record_rules_check(counted, cause);
        match outcome {
            Ok(report) => {
                if let Some(iptables) = &report.iptables {
                    self.rules_backend = Some(if self.config.enable_nftables {
                        "nftables (EnableNFTables)".to_string()
                    } else {
                        iptables.clone()
                    });
                }
                self.rules_own_changed = false;
                self.rules_ever_in_place = true;
                for change in &report.repaired {
                    info!("traffic rules: {change}");
                }
                for problem in &report.cleanup_errors {
                    debug!("traffic rules: cannot remove a leftover (ignored): {problem}");
                }
                if report.read {
                    debug!(processes = report.processes, "traffic rules read");
                }
                if self.rules_status != RulesStatus::InPlace {
                    info!("traffic rules in place");
                }
                self.rules_status = RulesStatus::InPlace;
            }
            Err(error) => {
                let reason = error.to_string();
                let now = Instant::now();
                let logged = match &self.rules_status {
                    RulesStatus::Failed { reason: r, logged }
                        if *r == reason && now.duration_since(*logged) < RULES_LOG_EVERY =>
                    {
                        *logged
                    }
                    _ => {
                        warn!("cannot install the traffic rules, retrying: {reason}");
                        now
                    }
                };
                self.rules_status = RulesStatus::Failed { reason, logged };
            }
        }
        self.update_readiness();
    }

    /// Schedules a pass for a kernel change to weft's objects (debounced): a targeted
    /// one for deleted entries of weft's, a full one for what it cannot describe, at
    /// once after a notification overrun (changes may have been missed).
    fn on_kernel_event(&mut self, event: &KernelEvent) {
        if let Some(change) = self.datapath.follow_underlay_mtu(event) {
            return self.underlay_mtu_changed(change);
        }
        if let KernelEvent::Address { index } = event
            && Some(*index) == self.underlay_index
        {
            // An address change comes as several notifications (one removed, one
            // added): the interface is chosen again once they have settled.
            self.underlay_check_at
                .get_or_insert_with(|| Instant::now() + UNDERLAY_SETTLE);
        }
        if *event == KernelEvent::Overrun {
            self.datapath.reread_nexthops();
            self.triggers.converge_now(PassTrigger::KernelEvent);
            return;
        }
        match self.datapath.note_event(event) {
            Reaction::Ignore => {}
            Reaction::Repair => {
                debug!(?event, "entry of weft's deleted");
                self.triggers.converge_soon(PassTrigger::EntryRepair);
            }
            Reaction::Full => {
                debug!(?event, "kernel change to weft's objects");
                self.triggers.converge_soon(PassTrigger::KernelEvent);
            }
        }
    }
}

impl NodeState {
    /// The underlay's MTU changed (the reconciler recomputed its MTUs): a full pass sets
    /// the devices' MTU, and subnet.env says the new FLANNEL_MTU for pods created from
    /// now on. Pods already running keep theirs: the kernel does not change the MTU of a
    /// pod's interface, and a pod whose MTU is now too large loses large packets until
    /// it is recreated.
    fn underlay_mtu_changed(&mut self, change: MtuChange) {
        let MtuChange {
            underlay_before,
            underlay_after,
            pod_before,
            pod_after,
        } = change;
        if pod_before == pod_after {
            info!(
                "the underlay's MTU changed from {underlay_before} to {underlay_after}; the \
                 pod MTU stays {pod_after} (the network config sets it)"
            );
            return;
        }
        warn!(
            "the underlay's MTU changed from {underlay_before} to {underlay_after}: the pod \
             MTU becomes {pod_after} (was {pod_before}) on weft's devices and in subnet.env; \
             pods created before keep MTU {pod_before} until they are recreated"
        );
        self.triggers.converge_now(PassTrigger::KernelEvent);
        self.write_subnet_env();
    }
}

/// Logs peer changes: one line each for small batches, a summary for large ones.
pub fn log_peer_events(events: &[LeaseEvent]) {
    let verbose = events.len() <= 50;
    for event in events {
        let (what, lease) = match event {
            LeaseEvent::Added(lease) => ("peer added", &**lease),
            LeaseEvent::Removed(lease) => ("peer removed", lease),
        };
        if verbose {
            info!(subnet = %lease.key, public_ip = %lease.attrs.public_ip, backend = ?lease.attrs.backend_type, "{what}");
        } else {
            debug!(subnet = %lease.key, public_ip = %lease.attrs.public_ip, "{what}");
        }
    }
    if !verbose {
        let added = events
            .iter()
            .filter(|e| matches!(e, LeaseEvent::Added(_)))
            .count();
        info!(added, removed = events.len() - added, "peers changed");
    }
}
