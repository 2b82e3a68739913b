//! The Kubernetes subnet manager (`--kube-subnet-mgr`): the node's subnet is its
//! `spec.podCIDR(s)`, peers are the other Node objects, and each node publishes its
//! lease attributes as flannel's annotations.
//!
//! The pure parts are [`annotations`] (names and the published set), [`node`] (Node →
//! lease) and [`tracker`] (watch events → lease batches). This module is the thin edge:
//! the client, GET/PATCH of the own Node, and the Node watch (kube-runtime's watcher,
//! which lists, watches with bookmarks, and re-lists on `410 Gone`).
//!
//! Differences from flannel: every step retries with backoff instead of exiting (a
//! missing podCIDR is waited for), the annotations are compared with what would be
//! published (so `public-ip-overwrite` does not cause a patch on every start), and the
//! daemon re-asserts them when they drift (see `weftd`).

pub mod annotations;
pub mod node;
pub mod objects;
pub mod tracker;

pub use annotations::{AnnotationKeys, PrefixError};
pub use node::{ClusterNetworks, NodeError};
pub use objects::{Node, PodPlacement};
pub use tracker::{NodeTracker, Notice, OwnNode, TrackerOutput};

pub use crate::backoff::RetryPolicy;
use crate::backoff::{Backoff, retry_later};
use crate::causes::Causes;
use crate::lease::{Lease, LeaseAttrs};
use crate::observer::{Observer, WatchRestart, unobserved};
use ::kube::api::{Api, Patch, PatchParams};
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::runtime::WatchStreamExt;
use ::kube::runtime::watcher;
use ::kube::{Client, Config};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

/// A failed step against the API server, naming what was attempted.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot read kubeconfig {path}: {}", Causes(cause))]
    Kubeconfig {
        path: String,
        cause: ::kube::config::KubeconfigError,
    },
    #[error("--kube-api-url={0:?}: not a URL")]
    ApiUrl(String),
    #[error(
        "no Kubernetes API to talk to: not running in a pod ({0}) and neither \
         --kubeconfig-file nor --kube-api-url is set"
    )]
    NotInCluster(::kube::config::InClusterError),
    #[error("cannot build the Kubernetes client: {}", Causes(.0))]
    Client(::kube::Error),
    #[error("env variables POD_NAME and POD_NAMESPACE must be set")]
    NoNodeName,
    #[error("pod {namespace}/{name} has no spec.nodeName")]
    PodNotScheduled { namespace: String, name: String },
    #[error("node {0:?} does not exist in the Kubernetes API (yet)")]
    NodeNotFound(String),
    /// The cause's whole chain: kube's own text often hides why (see `causes`).
    #[error("{what}: {}", Causes(cause))]
    Api { what: String, cause: ::kube::Error },
}

impl KubeError {
    fn api(what: impl Into<String>) -> impl FnOnce(::kube::Error) -> KubeError {
        let what = what.into();
        move |cause| KubeError::Api { what, cause }
    }
}

/// A client from `--kubeconfig-file` (with `--kube-api-url` overriding its server), from
/// `--kube-api-url` alone, or from the in-cluster service account.
pub async fn client(api_url: &str, kubeconfig_file: &str) -> Result<Client, KubeError> {
    let url = match api_url {
        "" => None,
        text => Some(
            text.parse::<http::Uri>()
                .ok()
                .filter(|u| u.scheme().is_some() && u.host().is_some())
                .ok_or_else(|| KubeError::ApiUrl(text.to_string()))?,
        ),
    };
    let mut config = if !kubeconfig_file.is_empty() {
        let kubeconfig_error = |cause| KubeError::Kubeconfig {
            path: kubeconfig_file.to_string(),
            cause,
        };
        let kubeconfig =
            Kubeconfig::read_from(Path::new(kubeconfig_file)).map_err(kubeconfig_error)?;
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(kubeconfig_error)?;
        if let Some(url) = url {
            config.cluster_url = url;
        }
        config
    } else if let Some(url) = url {
        Config::new(url)
    } else {
        Config::incluster().map_err(KubeError::NotInCluster)?
    };
    // An unreachable API server should be noticed (and retried) quickly.
    config.connect_timeout = Some(Duration::from_secs(10));
    // kube-rs sends no User-Agent; the API server's audit log, its metrics and API
    // Priority and Fairness then cannot tell weftd from any other client.
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    ));
    Client::try_from(config).map_err(KubeError::Client)
}

/// What weftd calls itself to the API server (as flanneld does: `flanneld/<version>`).
pub const USER_AGENT: &str = concat!("weftd/", env!("CARGO_PKG_VERSION"));

/// Where the node name comes from: `NODE_NAME`, else the pod's `spec.nodeName`.
#[derive(Debug, Clone, Default)]
pub struct NodeNameSource {
    pub node_name: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
}

impl NodeNameSource {
    pub fn from_env() -> NodeNameSource {
        let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
        NodeNameSource {
            node_name: var("NODE_NAME"),
            pod_name: var("POD_NAME"),
            pod_namespace: var("POD_NAMESPACE"),
        }
    }

    /// [`resolve`](Self::resolve), retrying API errors with backoff; a missing variable
    /// or an unscheduled pod is returned at once (no retry fixes them).
    pub async fn resolve_retrying(
        &self,
        client: &Client,
        retry: RetryPolicy,
        report: &mut dyn FnMut(&str),
    ) -> Result<String, KubeError> {
        let mut backoff = Backoff::new(retry.initial, retry.max);
        loop {
            match self.resolve(client).await {
                Err(e @ KubeError::Api { .. }) => {
                    retry_later(&e.to_string(), &mut backoff, report).await
                }
                done => return done,
            }
        }
    }

    /// Resolves the name (one GET of the pod when `NODE_NAME` is unset).
    pub async fn resolve(&self, client: &Client) -> Result<String, KubeError> {
        if let Some(name) = &self.node_name {
            return Ok(name.clone());
        }
        let (Some(name), Some(namespace)) = (&self.pod_name, &self.pod_namespace) else {
            return Err(KubeError::NoNodeName);
        };
        let pods: Api<PodPlacement> = Api::namespaced(client.clone(), namespace);
        let pod = pods
            .get(name)
            .await
            .map_err(KubeError::api(format!("cannot get pod {namespace}/{name}")))?;
        pod.spec
            .and_then(|s| s.node_name)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| KubeError::PodNotScheduled {
                namespace: namespace.clone(),
                name: name.clone(),
            })
    }
}

/// What [`KubeSubnetManager::publish`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Published {
    /// The annotations patched; `None` when the node already carried them.
    pub patched: Option<BTreeMap<String, String>>,
    /// Operator mistakes found on the way (a malformed overwrite annotation).
    pub problems: Vec<String>,
}

/// The API operations, as reported to the [`DatastoreObserver`](crate::observer::DatastoreObserver).
pub const OPERATIONS: [&str; 3] = ["get_node", "patch_node_status", "watch_nodes"];

/// The Kubernetes side of one node; see the module docs.
#[derive(Clone)]
pub struct KubeSubnetManager {
    nodes: Api<Node>,
    /// Hears every contact and failure (metrics); ignores them by default.
    observer: Observer,
    node_name: String,
    keys: AnnotationKeys,
    networks: ClusterNetworks,
    retry: RetryPolicy,
}

impl std::fmt::Debug for KubeSubnetManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSubnetManager")
            .field("node_name", &self.node_name)
            .field("networks", &self.networks)
            .finish_non_exhaustive()
    }
}

impl KubeSubnetManager {
    /// The same manager over another client: a new connection, after this node's
    /// address changed (connections bound to the old one stall).
    pub fn with_client(&self, client: Client) -> KubeSubnetManager {
        KubeSubnetManager {
            nodes: Api::all(client),
            observer: self.observer.clone(),
            node_name: self.node_name.clone(),
            keys: self.keys.clone(),
            networks: self.networks,
            retry: self.retry,
        }
    }

    pub fn new(
        client: Client,
        node_name: String,
        keys: AnnotationKeys,
        networks: ClusterNetworks,
    ) -> KubeSubnetManager {
        KubeSubnetManager {
            nodes: Api::all(client),
            observer: unobserved(),
            node_name,
            keys,
            networks,
            retry: RetryPolicy::default(),
        }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> KubeSubnetManager {
        self.retry = retry;
        self
    }

    /// Reports contacts, failed requests and watch restarts to `observer`.
    pub fn with_observer(mut self, observer: Observer) -> KubeSubnetManager {
        self.observer = observer;
        self
    }

    /// Tells the observer how a request named `operation` went.
    fn observe<T, E>(&self, operation: &'static str, result: Result<T, E>) -> Result<T, E> {
        match &result {
            Ok(_) => self.observer.contact(),
            Err(_) => self.observer.error(operation),
        }
        result
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    pub fn keys(&self) -> &AnnotationKeys {
        &self.keys
    }

    pub fn networks(&self) -> &ClusterNetworks {
        &self.networks
    }

    /// One GET of this node.
    pub async fn get_node(&self) -> Result<Node, KubeError> {
        let result = self.nodes.get_opt(&self.node_name).await;
        self.observe("get_node", result)
            .map_err(KubeError::api(format!(
                "cannot get node {}",
                self.node_name
            )))?
            .ok_or_else(|| KubeError::NodeNotFound(self.node_name.clone()))
    }

    /// GETs this node until it exists; `report` hears each failure (for readiness).
    pub async fn wait_for_node(&self, report: &mut dyn FnMut(&str)) -> Node {
        let mut backoff = self.backoff();
        loop {
            match self.get_node().await {
                Ok(node) => return node,
                Err(e) => retry_later(&e.to_string(), &mut backoff, report).await,
            }
        }
    }

    /// Publishes `attrs` as annotations through `PATCH nodes/<name>/status` (the only
    /// write flannel's RBAC grants), sending only the annotations that differ.
    pub async fn publish(&self, node: &Node, attrs: &LeaseAttrs) -> Result<Published, KubeError> {
        let current = node::annotations(node);
        let (wanted, problems) = self.keys.published(attrs, &current);
        let Some(changes) = annotations::annotation_changes(&current, &wanted) else {
            return Ok(Published {
                patched: None,
                problems,
            });
        };
        let patch = json!({ "metadata": { "annotations": changes } });
        self.patch_status(patch, "patch the annotations").await?;
        Ok(Published {
            patched: Some(changes),
            problems,
        })
    }

    /// Sets `NetworkUnavailable=False` (reason `FlannelIsUp`), as flannel does.
    pub async fn mark_network_available(&self) -> Result<(), KubeError> {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let patch = json!({ "status": { "conditions": [node::network_available_condition(now)] } });
        self.patch_status(patch, "set the NetworkUnavailable condition")
            .await
    }

    /// A strategic-merge patch of this Node through the `status` subresource: the only
    /// write flannel's RBAC grants (`nodes/status: patch`). Real API servers apply the
    /// metadata part there too (the status strategy only resets `spec`).
    async fn patch_status(&self, patch: serde_json::Value, what: &str) -> Result<(), KubeError> {
        let result = self
            .nodes
            .patch_status(
                &self.node_name,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await;
        self.observe("patch_node_status", result)
            .map_err(KubeError::api(format!(
                "cannot {what} of node {}",
                self.node_name
            )))?;
        Ok(())
    }

    /// The node's lease: waits (GET, retried) until it has a usable podCIDR inside the
    /// cluster network, then publishes `attrs` (retried). Never gives up: a node whose
    /// podCIDR is not assigned yet gets one eventually, and a wrong one is fixed by
    /// re-creating the Node; each retry says why in the log and through `report`.
    pub async fn acquire(&self, attrs: &LeaseAttrs, report: &mut dyn FnMut(&str)) -> Lease {
        let mut backoff = self.backoff();
        loop {
            let problem = match self.try_acquire(attrs).await {
                Ok(lease) => return lease,
                Err(AcquireStep::Node(e @ NodeError::PodCidrNotAssigned(_))) => format!(
                    "{e}; waiting for one (kube-controller-manager --allocate-node-cidrs=true \
                     --cluster-cidr=..., or set spec.podCIDR)"
                ),
                Err(AcquireStep::Node(e)) => e.to_string(),
                Err(AcquireStep::Api(e)) => e.to_string(),
            };
            retry_later(&problem, &mut backoff, report).await;
        }
    }

    async fn try_acquire(&self, attrs: &LeaseAttrs) -> Result<Lease, AcquireStep> {
        let node = self.get_node().await.map_err(AcquireStep::Api)?;
        let key = node::pod_subnets(&node, &self.networks).map_err(AcquireStep::Node)?;
        let published = self.publish(&node, attrs).await.map_err(AcquireStep::Api)?;
        for problem in &published.problems {
            error!(node = %self.node_name, "{problem}");
        }
        match &published.patched {
            Some(changes) => {
                info!(node = %self.node_name, annotations = ?changes, "published this node's annotations")
            }
            None => debug!(node = %self.node_name, "this node's annotations are up to date"),
        }
        Ok(Lease {
            key,
            attrs: attrs.clone(),
            etcd_lease: 0,
            expiration: None,
            revision: 0,
        })
    }

    /// [`mark_network_available`](Self::mark_network_available), retried until it works.
    pub async fn complete(&self, report: &mut dyn FnMut(&str)) {
        let mut backoff = self.backoff();
        while let Err(e) = self.mark_network_available().await {
            retry_later(&e.to_string(), &mut backoff, report).await;
        }
        info!(node = %self.node_name, "set condition NetworkUnavailable=False (FlannelIsUp)");
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.retry.initial, self.retry.max)
    }

    /// Watches all Nodes until `sink` closes, sending what each event means. The watcher
    /// re-lists after a `410 Gone` or a broken connection, with backoff (0.5 s doubling
    /// to 10 s); problems are logged once per 30 s while they last.
    pub async fn watch_nodes(&self, sink: mpsc::Sender<TrackerOutput>) {
        let mut tracker = NodeTracker::new(&self.node_name, self.keys.clone(), self.networks);
        let config = watcher::Config::default().page_size(500);
        let stream = watcher(self.nodes.clone(), config).backoff(Backoff::new(
            Duration::from_millis(500),
            Duration::from_secs(10),
        ));
        let mut stream = std::pin::pin!(stream);
        let mut failing_since: Option<Instant> = None;
        let mut last_logged: Option<Instant> = None;
        let mut listed = false;
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(event) => {
                    self.observer.contact();
                    self.observer.watch_open(true);
                    // The first listing is the start, not a restart.
                    if matches!(event, watcher::Event::Init) && std::mem::replace(&mut listed, true)
                    {
                        self.observer.watch_restart(WatchRestart::Relist);
                    }
                    event
                }
                Err(e) => {
                    self.observer.error("watch_nodes");
                    self.observer.watch_open(false);
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if last_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                        warn!(
                            failing_for = ?since.elapsed(),
                            "Node watch: {e}; keeping the last known peers and retrying"
                        );
                        last_logged = Some(Instant::now());
                    }
                    continue;
                }
            };
            if let Some(since) = failing_since.take() {
                info!(after = ?since.elapsed(), "Node watch recovered");
                last_logged = None;
            }
            let output = tracker.apply(event);
            for notice in &output.notices {
                match notice {
                    Notice::Skipped(text) => warn!("{text}"),
                    Notice::Recovered(text) => info!("{text}"),
                    Notice::Conflict(text) => error!("{text}"),
                }
            }
            if (output.batch.is_some() || output.own.is_some()) && sink.send(output).await.is_err()
            {
                return;
            }
        }
    }
}

enum AcquireStep {
    Node(NodeError),
    Api(KubeError),
}
