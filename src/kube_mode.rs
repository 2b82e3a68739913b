//! Kubernetes mode (`--kube-subnet-mgr`): the subnet is the Node's podCIDR, peers are the
//! other Nodes, and this node publishes itself through flannel's annotations.
//!
//! Startup: net-conf.json from `--net-config-path` → client → node name → this Node
//! (waited for) → external interface (preferring the Node's InternalIP) → backend (the
//! VTEP MAC read back from the Node's own `backend-data`) → podCIDR (waited for, checked
//! against the network) → annotations published → first Node listing → datapath →
//! subnet.env → ready → `NetworkUnavailable=False`. Then the Node watch drives the datapath.
//!
//! Unlike flannel, which writes its annotations once at startup, weftd keeps them
//! asserted: when this Node's annotations drift (an admin edit, a `public-ip-overwrite`
//! added later, a Node re-created by the kubelet) or its condition is reset, they are
//! published again.

use crate::bring_up::{self, BackendSpec};
use crate::cli::Cli;
use crate::iface::IfaceRequest;
use crate::node_state::{NodeState, Reporting, log_peer_events};
use crate::readiness::Readiness;
use crate::shutdown::Shutdown;
use crate::triggers::{PassTrigger, Triggers, sleep_until};
use anyhow::{Context, bail};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use weft_subnet::RawConfig;
use weft_subnet::kube::{
    self as kube_subnet, AnnotationKeys, ClusterNetworks, KubeSubnetManager, Node, NodeNameSource,
    OwnNode, RetryPolicy, TrackerOutput, node,
};
use weft_subnet::watch::{LeaseWatcher, WatchBatch};
use weft_subnet::{LeaseAttrs, NetworkConfig};

/// How soon a failed re-publish of this node's annotations is retried.
const REPUBLISH_RETRY: Duration = Duration::from_secs(5);

/// Runs Kubernetes mode until shutdown.
pub async fn run(
    cli: &Cli,
    request: IfaceRequest,
    mut shutdown: Shutdown,
    readiness: Arc<Readiness>,
    reporting: Reporting,
) -> anyhow::Result<()> {
    let Some(mut node) = start(cli, request, &mut shutdown, &readiness, reporting).await? else {
        return Ok(());
    };
    let (sink, mut outputs) = mpsc::channel::<TrackerOutput>(64);
    let watch_manager = node.manager.clone();
    let watch_task = tokio::spawn(async move { watch_manager.watch_nodes(sink).await });
    let result = node.run(&mut outputs, &mut shutdown).await;
    watch_task.abort();
    if result.is_ok() {
        info!("shutting down; the annotations, subnet.env and the datapath are left in place");
    }
    result
}

/// Startup up to a held podCIDR; `None` when shut down meanwhile.
async fn start<'a>(
    cli: &'a Cli,
    mut request: IfaceRequest,
    shutdown: &mut Shutdown,
    readiness: &Arc<Readiness>,
    reporting: Reporting,
) -> anyhow::Result<Option<KubeNode<'a>>> {
    let config = read_config(cli)?;
    info!(config = %config.summary(), "network config");
    let keys = AnnotationKeys::new(&cli.kube_annotation_prefix)?;
    let networks = ClusterNetworks {
        ipv4: config.ipv4.map(|p| p.network),
        ipv6: config.ipv6.map(|p| p.network),
    };
    let client = kube_subnet::client(&cli.kube_api_url, &cli.kubeconfig_file).await?;
    let mut report = |problem: &str| readiness.set_not_ready(problem.to_string());
    let names = NodeNameSource::from_env();
    let resolving = names.resolve_retrying(&client, RetryPolicy::default(), &mut report);
    let Some(node_name) = shutdown.until(resolving).await else {
        return Ok(None);
    };
    let node_name = node_name?;
    info!(node = %node_name, "Kubernetes subnet manager for node {node_name}");
    let manager = KubeSubnetManager::new(client, node_name.clone(), keys.clone(), networks)
        .with_observer(reporting.metrics.clone());

    let Some(own_node) = shutdown.until(manager.wait_for_node(&mut report)).await else {
        return Ok(None);
    };
    addresses_from_node(&own_node, &keys, &mut request);
    let (host, external) = bring_up::choose_interface(request, &config).await?;
    bring_up::check_network(&config, &host, &external)?;
    let published = node::published_backend_data(&own_node, &keys);
    let (datapath, kernel_events) =
        bring_up::build_datapath(&config, &external, &host, published, cli.nexthop_objects).await?;
    let attrs = datapath
        .backend
        .lease_attrs(external.ext_addr, external.ext_v6_addr);

    readiness.set_not_ready(format!("no podCIDR from node {node_name} yet"));
    let Some(lease) = shutdown.until(manager.acquire(&attrs, &mut report)).await else {
        return Ok(None);
    };
    info!(subnet = %lease.key, node = %node_name, "lease acquired from the Node's podCIDR");
    bring_up::check_own_subnet(&lease.key, &datapath)?;
    let triggers = Triggers::new(kernel_events, Duration::from_secs(cli.reconcile_interval));
    let readiness = readiness.clone();
    let state = NodeState::new(
        cli, config, lease.key, readiness, datapath, triggers, reporting,
    );
    state
        .readiness
        .set_not_ready("waiting for the first Node listing");
    Ok(Some(KubeNode {
        cli,
        manager,
        attrs,
        republish_at: None,
        problems: Vec::new(),
        state,
        watcher: LeaseWatcher::new(Some(lease.key)),
    }))
}

/// The Node's `node-public-ip(v6)` annotations and InternalIPs, for choosing the interface.
fn addresses_from_node(own_node: &Node, keys: &AnnotationKeys, request: &mut IfaceRequest) {
    match node::node_public_ips(own_node, keys) {
        Ok((v4, v6)) => {
            if let Some(ip) = v4 {
                info!(
                    "using {ip} from annotation {} as the public IP",
                    keys.node_public_ip
                );
                request.public_ip = Some(ip);
            }
            if let Some(ip) = v6 {
                info!(
                    "using {ip} from annotation {} as the public IPv6",
                    keys.node_public_ipv6
                );
                request.public_ipv6 = Some(ip);
            }
        }
        Err(e) => error!("{e}; ignoring it"),
    }
    request.node_ips = node::internal_ips(own_node);
}

/// net-conf.json, parsed as flannel's kube mode does (not validated), with its messages.
fn read_config(cli: &Cli) -> anyhow::Result<NetworkConfig> {
    let path = &cli.net_config_path;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read net conf: {}", path.display()))?;
    let config = RawConfig::parse(&text)
        .and_then(|raw| raw.for_kube())
        .with_context(|| format!("error parsing subnet config ({})", path.display()))?;
    BackendSpec::from_config(&config)
        .map_err(|problem| anyhow::anyhow!("{}: {problem}", path.display()))?;
    Ok(config)
}

/// This node in Kubernetes mode: the peers from the Node watch, and its own Node kept
/// carrying what this node publishes.
struct KubeNode<'a> {
    cli: &'a Cli,
    manager: KubeSubnetManager,
    attrs: LeaseAttrs,
    republish_at: Option<Instant>,
    /// Operator mistakes on this Node (a malformed overwrite) last reported.
    problems: Vec<String>,
    state: NodeState,
    watcher: LeaseWatcher,
}

impl KubeNode<'_> {
    /// The event loop: the first listing programs the datapath, then every tracker
    /// output, the re-publish timer and the shared triggers.
    async fn run(
        &mut self,
        outputs: &mut mpsc::Receiver<TrackerOutput>,
        shutdown: &mut Shutdown,
    ) -> anyhow::Result<()> {
        // Program the datapath only once the peers are known (see etcd mode).
        loop {
            let Some(output) = shutdown.until(outputs.recv()).await else {
                return Ok(());
            };
            let Some(output) = output else {
                bail!("the Node watch stopped unexpectedly")
            };
            let snapshot = matches!(output.batch, Some(WatchBatch::Snapshot(_)));
            self.apply(output);
            if snapshot {
                break;
            }
        }
        self.state.converge(PassTrigger::Startup).await;
        self.state.write_subnet_env();
        if self.cli.set_node_network_unavailable {
            let mut report = |problem: &str| warn!("{problem}");
            if shutdown
                .until(self.manager.complete(&mut report))
                .await
                .is_none()
            {
                return Ok(());
            }
        }
        loop {
            tokio::select! {
                () = shutdown.wait() => return Ok(()),
                output = outputs.recv() => {
                    let Some(output) = output else { bail!("the Node watch stopped unexpectedly") };
                    let mut pending = vec![output];
                    while let Ok(more) = outputs.try_recv() {
                        pending.push(more);
                    }
                    let mut peers_changed = false;
                    for output in pending {
                        peers_changed |= self.apply(output);
                    }
                    // This Node's own updates (kubelet heartbeats) change nothing to program.
                    if peers_changed {
                        self.state.peers_changed();
                    }
                }
                () = sleep_until(self.republish_at) => self.republish().await,
                trigger = self.state.next_trigger() => self.state.on_trigger(trigger?).await,
            }
        }
    }

    /// Publishes this node's annotations and condition again (one GET and PATCH).
    async fn republish(&mut self) {
        self.republish_at = None;
        match self.manager.get_node().await {
            Ok(node) => self.reassert(&node).await,
            Err(e) => self.retry_later(&e.to_string()),
        }
    }

    /// Applies one tracker output; returns whether the datapath's input changed (peers,
    /// or this node's subnet).
    fn apply(&mut self, output: TrackerOutput) -> bool {
        let mut changed = false;
        if let Some(batch) = output.batch {
            changed = true;
            let Some(changes) = self.watcher.ingest(batch) else {
                return changed;
            };
            log_peer_events(&changes.peers);
            // A peer under this node's own key was already reported as a conflict by the
            // tracker; the lease watcher keeps it out of the peer set.
            self.state.peer_events(changes.peers);
        }
        match output.own {
            Some(OwnNode::Present(node)) => {
                changed |= self.check_pod_cidr(&node);
                if self.drifted(&node) {
                    // Re-publish from the event loop, not from here: one GET + PATCH.
                    self.republish_at.get_or_insert_with(Instant::now);
                }
            }
            Some(OwnNode::Deleted) => warn!(
                node = %self.manager.node_name(),
                "this node's Node object is gone; keeping the datapath, and publishing \
                 again when it comes back"
            ),
            None => {}
        }
        changed
    }

    /// Whether the Node lacks what this node publishes (annotations or condition).
    /// Reports operator mistakes on the Node when they change.
    fn drifted(&mut self, node: &Node) -> bool {
        let current = node::annotations(node);
        let (wanted, problems) = self.manager.keys().published(&self.attrs, &current);
        if problems != self.problems {
            for problem in &problems {
                error!(node = %self.manager.node_name(), "{problem}");
            }
            self.problems = problems;
        }
        kube_subnet::annotations::annotation_changes(&current, &wanted).is_some()
            || (self.cli.set_node_network_unavailable && !node::network_marked_available(node))
    }

    async fn reassert(&mut self, node: &Node) {
        match self.manager.publish(node, &self.attrs).await {
            Ok(published) => {
                if let Some(changes) = published.patched {
                    warn!(annotations = ?changes, "this node's annotations had drifted; published them again");
                }
            }
            Err(e) => return self.retry_later(&e.to_string()),
        }
        if self.cli.set_node_network_unavailable && !node::network_marked_available(node) {
            match self.manager.mark_network_available().await {
                Ok(()) => info!("set condition NetworkUnavailable=False (FlannelIsUp) again"),
                Err(e) => self.retry_later(&e.to_string()),
            }
        }
    }

    fn retry_later(&mut self, problem: &str) {
        warn!("{problem}; retrying in {REPUBLISH_RETRY:?}");
        self.republish_at = Some(Instant::now() + REPUBLISH_RETRY);
    }

    /// A Node re-created with another podCIDR: adopt it, as etcd mode adopts a
    /// re-acquired subnet, and say loudly what it means for existing pods. Returns
    /// whether the subnet changed.
    fn check_pod_cidr(&mut self, node: &Node) -> bool {
        let (watcher, state) = (&mut self.watcher, &mut self.state);
        let key = match node::pod_subnets(node, self.manager.networks()) {
            Ok(key) => key,
            Err(e) => {
                error!("{e}; keeping subnet {}", state.own);
                return false;
            }
        };
        if key == state.own {
            return false;
        }
        error!(
            old = %state.own,
            new = %key,
            "this node's podCIDR changed; pods created before keep addresses from the old \
             one and must be recreated"
        );
        log_peer_events(&watcher.set_own(Some(key)));
        state.set_own(key);
        state.set_peers(watcher);
        state.write_subnet_env();
        true
    }
}
