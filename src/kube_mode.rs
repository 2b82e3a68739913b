//! Kubernetes mode (`--kube-subnet-mgr`): the subnet is the Node's podCIDR, peers are the
//! other Nodes, and this node publishes itself through flannel's annotations.
//!
//! Startup: net-conf.json from `--net-config-path` → client → node name → this Node
//! (waited for) → external interface (preferring the Node's InternalIP) → backend (the
//! VTEP MAC read back from the Node's own `backend-data`) → podCIDR (waited for, checked
//! against the network) → annotations published → first Node listing → datapath →
//! subnet.env → ready → `NetworkUnavailable=False`. Then the shared node loop
//! (`node_loop`), fed by the Node watch, with the annotations' re-publish as this mode's
//! own timer.
//!
//! Unlike flannel, which writes its annotations once at startup, weftd keeps them
//! asserted: when this Node's annotations drift (an admin edit, a `public-ip-overwrite`
//! added later, a Node re-created by the kubelet) or its condition is reset, they are
//! published again.

use crate::bring_up::{self, BackendSpec};
use crate::iface::IfaceRequest;
use crate::node_loop::{NodeLoop, Received, Source, Underlay, WatchTask};
use crate::node_state::{NodeState, Reporting};
use crate::readiness::Readiness;
use crate::settings::{KubeSettings, NodeSettings};
use crate::shutdown::Shutdown;
use crate::triggers::Triggers;
use anyhow::Context;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use weft_subnet::RawConfig;
use weft_subnet::kube::{
    self as kube_subnet, AnnotationKeys, ClusterNetworks, KubeSubnetManager, Node, NodeNameSource,
    OwnNode, RetryPolicy, TrackerOutput, node,
};
use weft_subnet::watch::OwnLeaseChange;
use weft_subnet::{LeaseAttrs, NetworkConfig, SubnetKey};

/// How soon a failed re-publish of this node's annotations is retried.
const REPUBLISH_RETRY: Duration = Duration::from_secs(5);

/// Runs Kubernetes mode until shutdown.
pub async fn run(
    settings: &Settings,
    request: IfaceRequest,
    mut shutdown: Shutdown,
    readiness: Arc<Readiness>,
    reporting: Reporting,
) -> anyhow::Result<()> {
    let Some(node) = start(settings, request, &mut shutdown, &readiness, reporting).await? else {
        return Ok(());
    };
    let (sink, mut outputs) = mpsc::channel::<TrackerOutput>(64);
    let mut source = node.source;
    source.start_watch(sink);
    // The watch ends with the loop (its task is aborted when the source is dropped).
    let result = NodeLoop::new(source, node.state, node.underlay)
        .run(&mut outputs, &mut shutdown)
        .await;
    if result.is_ok() {
        info!("shutting down; the annotations, subnet.env and the datapath are left in place");
    }
    result
}

/// What Kubernetes mode runs on: this node's settings and the API's.
#[derive(Debug)]
pub struct Settings {
    pub node: NodeSettings,
    pub kube: KubeSettings,
}

/// A node holding its podCIDR, ready for the loop.
struct Started {
    source: KubeSource,
    state: NodeState,
    underlay: Underlay,
}

/// Startup up to a held podCIDR; `None` when shut down meanwhile.
async fn start(
    settings: &Settings,
    mut request: IfaceRequest,
    shutdown: &mut Shutdown,
    readiness: &Arc<Readiness>,
    reporting: Reporting,
) -> anyhow::Result<Option<Started>> {
    let kube = &settings.kube;
    let config = read_config(&kube.net_config_path)?;
    info!(config = %config.summary(), "network config");
    let keys = AnnotationKeys::new(&kube.annotation_prefix)?;
    let networks = ClusterNetworks {
        ipv4: config.ipv4.map(|p| p.network),
        ipv6: config.ipv6.map(|p| p.network),
    };
    let client = kube_subnet::client(&kube.api_url, &kube.kubeconfig_file).await?;
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
    let (host, external) = bring_up::choose_interface(request.clone(), &config).await?;
    bring_up::check_network(&config, &host, &external)?;
    let published = node::published_backend_data(&own_node, &keys);
    let (datapath, kernel_events) =
        bring_up::build_datapath(&config, &external, &host, published, &settings.node).await?;
    let attrs = datapath
        .backend()
        .lease_attrs(external.ext_addr, external.ext_v6_addr);

    readiness.set_not_ready(format!("no podCIDR from node {node_name} yet"));
    let Some(lease) = shutdown.until(manager.acquire(&attrs, &mut report)).await else {
        return Ok(None);
    };
    info!(subnet = %lease.key, node = %node_name, "lease acquired from the Node's podCIDR");
    bring_up::check_own_subnet(&lease.key, &datapath)?;
    let triggers = Triggers::new(kernel_events, settings.node.reconcile_interval);
    let state = NodeState::new(
        &settings.node,
        config,
        lease.key,
        readiness.clone(),
        datapath,
        triggers,
        reporting,
    );
    state.set_not_ready("waiting for the first Node listing");
    let source = KubeSource {
        manager,
        attrs,
        set_network_unavailable: kube.set_network_unavailable,
        republish_at: None,
        internal_ips: request.node_ips.clone(),
        api_url: kube.api_url.clone(),
        kubeconfig_file: kube.kubeconfig_file.clone(),
        watch: None,
        problems: Vec::new(),
    };
    let underlay = Underlay::new(request, external);
    Ok(Some(Started {
        source,
        state,
        underlay,
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
fn read_config(path: &Path) -> anyhow::Result<NetworkConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read net conf: {}", path.display()))?;
    let config = RawConfig::parse(&text)
        .and_then(|raw| raw.for_kube())
        .with_context(|| format!("error parsing subnet config ({})", path.display()))?;
    BackendSpec::from_config(&config)
        .map_err(|problem| anyhow::anyhow!("{}: {problem}", path.display()))?;
    Ok(config)
}

/// Kubernetes mode's side of the node loop: the Node tracker's outputs, and this node's
/// own Node kept carrying what this node publishes.
#[derive(Debug)]
struct KubeSource {
    manager: KubeSubnetManager,
    attrs: LeaseAttrs,
    /// `--set-node-network-unavailable`.
    set_network_unavailable: bool,
    republish_at: Option<Instant>,
    /// The Node's InternalIPs as last seen (kubelet updates them after a re-addressing).
    internal_ips: Vec<IpAddr>,
    /// For a new client when this node's address changed.
    api_url: String,
    kubeconfig_file: String,
    /// The Node watch, and where it sends its outputs.
    watch: Option<(WatchTask, mpsc::Sender<TrackerOutput>)>,
    /// Operator mistakes on this Node (a malformed overwrite) last reported.
    problems: Vec<String>,
}

impl Source for KubeSource {
    type Item = TrackerOutput;
    const WATCH: &'static str = "the Node watch";

    fn receive(&mut self, output: TrackerOutput, state: &mut NodeState) -> Received {
        let mut node_ips = None;
        let own_subnet = match output.own {
            Some(OwnNode::Present(node)) => {
                if self.drifted(&node) {
                    // Re-publish from the event loop's timer, not from here: one GET + PATCH.
                    self.republish_at.get_or_insert_with(Instant::now);
                }
                let ips = node::internal_ips(&node);
                if ips != self.internal_ips {
                    self.internal_ips.clone_from(&ips);
                    node_ips = Some(ips);
                }
                self.pod_subnet(&node, state.own())
            }
            Some(OwnNode::Deleted) => {
                warn!(
                    node = %self.manager.node_name(),
                    "this node's Node object is gone; keeping the datapath, and publishing \
                     again when it comes back"
                );
                None
            }
            None => None,
        };
        Received {
            batch: output.batch,
            own_subnet,
            node_ips,
        }
    }

    /// A Node is never its own peer: the tracker reports a peer under this node's key
    /// as a conflict, so the lease watcher has nothing of this node's to report.
    async fn own_lease_seen(
        &mut self,
        _change: OwnLeaseChange,
        _state: &mut NodeState,
        _shutdown: &mut Shutdown,
    ) -> Option<SubnetKey> {
        None
    }

    fn wake_at(&self) -> Option<Instant> {
        self.republish_at
    }

    /// Publishes this node's annotations and condition again (one GET and PATCH).
    async fn wake(
        &mut self,
        _state: &mut NodeState,
        _shutdown: &mut Shutdown,
    ) -> Option<SubnetKey> {
        self.republish_at = None;
        match self.manager.get_node().await {
            Ok(node) => self.reassert(&node).await,
            Err(e) => self.retry_later(&e.to_string()),
        }
        None
    }

    async fn reconnect(&mut self) {
        match kube_subnet::client(&self.api_url, &self.kubeconfig_file).await {
            Ok(client) => {
                self.manager = self.manager.with_client(client);
                if let Some((_, sink)) = self.watch.take() {
                    self.start_watch(sink);
                }
                info!("reconnected to the API server from this node's new address");
            }
            Err(e) => warn!(
                "cannot reconnect to the API server after the address change, keeping the \
                 old connection: {e:#}"
            ),
        }
    }

    /// The annotations are published again now, with the new attributes (one GET and
    /// PATCH, retried as every re-publish is).
    async fn publish_attrs(&mut self, attrs: LeaseAttrs) {
        self.attrs = attrs;
        self.republish_at = Some(Instant::now());
    }

    /// `NetworkUnavailable=False` once the node is programmed, as flannel does.
    async fn programmed(&mut self, shutdown: &mut Shutdown) -> bool {
        if !self.set_network_unavailable {
            return true;
        }
        let mut report = |problem: &str| warn!("{problem}");
        shutdown
            .until(self.manager.complete(&mut report))
            .await
            .is_some()
    }
}

impl KubeSource {
    /// Watches the Nodes over the current client, into `sink`.
    fn start_watch(&mut self, sink: mpsc::Sender<TrackerOutput>) {
        let manager = self.manager.clone();
        let outputs = sink.clone();
        let task = WatchTask::spawn(async move { manager.watch_nodes(outputs).await });
        self.watch = Some((task, sink));
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
            || (self.set_network_unavailable && !node::network_marked_available(node))
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
        if self.set_network_unavailable && !node::network_marked_available(node) {
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

    /// The subnet this Node's podCIDR names when it is not `own` (a Node re-created with
    /// another podCIDR: the loop adopts it, as etcd mode adopts a re-acquired subnet).
    fn pod_subnet(&self, node: &Node, own: SubnetKey) -> Option<SubnetKey> {
        match node::pod_subnets(node, self.manager.networks()) {
            Ok(key) => (key != own).then_some(key),
            Err(e) => {
                error!("{e}; keeping subnet {own}");
                None
            }
        }
    }
}
