//! The node's event loop, one for both subnet managers.
//!
//! A mode is a [`Source`]: the items its datastore watch delivers (etcd's lease batches,
//! the Node tracker's outputs), its own timer (etcd's lease renewal, Kubernetes'
//! annotation re-publish) and what it does with its own part of an item (etcd's config
//! key and store resets, this Node's annotations and podCIDR). Everything else is here,
//! once: the shared lease watcher, the first listing before the first pass, the batching
//! of a burst into one pass, the shared triggers (kernel events, timers, traffic rules,
//! `/debug/state`), and [`NodeLoop::change_own_subnet`], the one path by which this
//! node's subnet changes in either mode.
//!
//! A trait over the two modes' event sources, not over the datastores: the datastore
//! clients stay concrete (`weft_subnet::etcd`, `weft_subnet::kube`), as before; only
//! the loop's inputs are shared.

use crate::bring_up;
use crate::iface::{ExternalInterface, IfaceRequest};
use crate::node_state::{NodeState, log_peer_events};
use crate::shutdown::Shutdown;
use crate::triggers::{PassTrigger, sleep_until};
use anyhow::bail;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use weft_subnet::watch::{LeaseWatcher, OwnLeaseChange, WatchBatch};
use weft_subnet::{LeaseAttrs, SubnetKey};

/// What a mode's own part of an item leaves for the shared loop.
#[derive(Debug, Default)]
pub struct Received {
    /// The peers' lease batch, for the shared lease watcher.
    pub batch: Option<WatchBatch>,
    /// The datastore gave this node another subnet (a Node re-created with another
    /// podCIDR).
    pub own_subnet: Option<SubnetKey>,
    /// This node's addresses as the datastore now names them (its Node's InternalIPs,
    /// which kubelet updates after a re-addressing): the interface is chosen again.
    pub node_ips: Option<Vec<IpAddr>>,
}

/// One subnet manager's side of the loop (see the module docs).
// The loop runs on weftd's one-thread runtime and is never spawned: its futures need no
// `Send` bound, which is what this lint is about.
#[allow(async_fn_in_trait)]
pub trait Source {
    /// What the datastore watch delivers.
    type Item: Send + 'static;
    /// Names the watch in errors ("the lease watch").
    const WATCH: &'static str;

    /// Takes the mode's own part of an item and returns the rest.
    fn receive(&mut self, item: Self::Item, state: &mut NodeState) -> Received;

    /// The lease watch saw this node's own lease (etcd mode; a Node is never its own
    /// peer). Returns the subnet this node holds afterwards when it had to act.
    async fn own_lease_seen(
        &mut self,
        change: OwnLeaseChange,
        state: &mut NodeState,
        shutdown: &mut Shutdown,
    ) -> Option<SubnetKey>;

    /// When the mode's own timer fires next (`None`: not armed).
    fn wake_at(&self) -> Option<Instant>;

    /// The mode's own timer fired. Returns the subnet this node holds afterwards when it
    /// had to act.
    async fn wake(&mut self, state: &mut NodeState, shutdown: &mut Shutdown) -> Option<SubnetKey>;

    /// The datapath is programmed and subnet.env written for the first time; `false`
    /// when shut down meanwhile.
    async fn programmed(&mut self, shutdown: &mut Shutdown) -> bool;

    /// This node's address changed: connections to the datastore bound to the old one
    /// stall (until TCP gives up, minutes later), so the mode opens new ones and starts
    /// its watch again over them.
    async fn reconnect(&mut self);

    /// This node publishes `attrs` from now on (its public IP changed): the mode writes
    /// them to the datastore from its own timer (etcd: a lease renewal now; Kubernetes:
    /// a re-publish of the annotations now), with its retries.
    async fn publish_attrs(&mut self, attrs: LeaseAttrs);
}

/// The external interface: how it was asked for (flags, the Node's addresses, the routes
/// to etcd or `--iface-can-reach`) and what was chosen, so a change of its addresses is
/// followed by choosing again by the same rules.
#[derive(Debug)]
pub struct Underlay {
    pub request: IfaceRequest,
    pub external: ExternalInterface,
    /// The interface addresses the datastore connections were opened from.
    pub connected_from: (Option<Ipv4Addr>, Option<Ipv6Addr>),
}

impl Underlay {
    pub fn new(request: IfaceRequest, external: ExternalInterface) -> Underlay {
        let connected_from = (external.iface_addr, external.iface_v6_addr);
        Underlay {
            request,
            external,
            connected_from,
        }
    }
}

/// The loop's state: the mode's source, the node, and the shared lease watcher.
#[derive(Debug)]
pub struct NodeLoop<S> {
    source: S,
    state: NodeState,
    underlay: Underlay,
    watcher: LeaseWatcher,
    /// The startup pass has run: from then on a change of this node's subnet runs a
    /// pass of its own (before, the startup pass covers it).
    started: bool,
}

impl<S: Source> NodeLoop<S> {
    pub fn new(source: S, mut state: NodeState, underlay: Underlay) -> NodeLoop<S> {
        let watcher = LeaseWatcher::new(Some(state.own()));
        state.watch_underlay(underlay.external.index);
        NodeLoop {
            source,
            state,
            underlay,
            watcher,
            started: false,
        }
    }

    /// Runs until shutdown: the first listing programs the datapath, then every item,
    /// the mode's timer and the shared triggers.
    pub async fn run(
        mut self,
        items: &mut mpsc::Receiver<S::Item>,
        shutdown: &mut Shutdown,
    ) -> anyhow::Result<()> {
        if !self.first_listing(items, shutdown).await? {
            return Ok(());
        }
        self.state.converge(PassTrigger::Startup).await;
        self.state.write_subnet_env();
        self.started = true;
        self.state.schedule_sweep();
        if !self.source.programmed(shutdown).await {
            return Ok(());
        }
        loop {
            tokio::select! {
                () = shutdown.wait() => return Ok(()),
                item = items.recv() => {
                    let Some(item) = item else { bail!("{} stopped unexpectedly", S::WATCH) };
                    self.receive_burst(item, items, shutdown).await;
                }
                () = sleep_until(self.source.wake_at()) => {
                    if let Some(own) = self.source.wake(&mut self.state, shutdown).await {
                        self.change_own_subnet(own).await;
                    }
                }
                () = sleep_until(self.state.underlay_check_at()) => self.follow_address_change().await,
                trigger = self.state.next_trigger() => self.state.on_trigger(trigger?).await,
            }
        }
    }

    /// The external interface's addresses changed (DHCP, re-addressing): the interface
    /// and the public IP are chosen again by the same rules as at startup. What changed
    /// is followed without a restart: the reconciler (a VXLAN device whose `local`
    /// changed is re-created), the published attributes (the peers follow), the log.
    async fn follow_address_change(&mut self) {
        self.state.underlay_checked();
        let request = self.underlay.request.clone();
        let (host, external) = match bring_up::choose_interface(request, self.state.config()).await
        {
            Ok(chosen) => chosen,
            Err(e) => {
                let name = &self.underlay.external.name;
                warn!(
                    "{name}'s addresses changed and the interface cannot be chosen again: {e:#}; keeping what was chosen"
                );
                return;
            }
        };
        let old = &self.underlay.external;
        if addresses(old) == addresses(&external) {
            return;
        }
        let from = (external.iface_addr, external.iface_v6_addr);
        if self.underlay.connected_from != from {
            self.source.reconnect().await;
            self.underlay.connected_from = from;
        }
        let old = &self.underlay.external;
        let named = &self.underlay.request.node_ips;
        let addresses_now = [
            external.iface_addr.map(IpAddr::V4),
            external.iface_v6_addr.map(IpAddr::V6),
        ];
        if !named.is_empty() && !addresses_now.iter().flatten().any(|a| named.contains(a)) {
            // The Node still names the old address: kubelet updates it, and its update
            // brings this check again. Until then nothing changes.
            info!(
                "{} changed, but this node's Node names {named:?}: waiting for kubelet to \
                 update it before following",
                describe(&external)
            );
            return;
        }
        warn!(
            "this node's external interface changed: {} -> {}; following it (the peers \
             follow the published address), no restart",
            describe(old),
            describe(&external)
        );
        if self.underlay.request.public_ip.is_some() || self.underlay.request.public_ipv6.is_some()
        {
            info!("the public IP stays as --public-ip/--public-ipv6 set it");
        }
        let (public_v4, public_v6) = (external.ext_addr, external.ext_v6_addr);
        let spec = bring_up::external_spec(&external, &host);
        let published = (old.ext_addr, old.ext_v6_addr) != (public_v4, public_v6);
        let attrs = self.state.follow_external(&spec, public_v4, public_v6);
        if published {
            self.source.publish_attrs(attrs).await;
        }
        self.state.watch_underlay(external.index);
        self.underlay.external = external;
        self.state.converge(PassTrigger::UnderlayChange).await;
    }

    /// Program the datapath only once the peers are known: converging with an empty
    /// peer set would remove the entries a previous run left, and drop traffic on a
    /// restart. Returns `false` when shut down meanwhile.
    async fn first_listing(
        &mut self,
        items: &mut mpsc::Receiver<S::Item>,
        shutdown: &mut Shutdown,
    ) -> anyhow::Result<bool> {
        loop {
            let Some(item) = shutdown.until(items.recv()).await else {
                return Ok(false);
            };
            let Some(item) = item else {
                bail!("{} stopped unexpectedly", S::WATCH)
            };
            if self.receive(item, shutdown).await.listing {
                return Ok(true);
            }
        }
    }

    /// Takes an item and every item already waiting, so a burst costs one pass.
    async fn receive_burst(
        &mut self,
        first: S::Item,
        items: &mut mpsc::Receiver<S::Item>,
        shutdown: &mut Shutdown,
    ) {
        let mut pending = vec![first];
        while let Ok(more) = items.try_recv() {
            pending.push(more);
        }
        let mut peers_changed = false;
        for item in pending {
            peers_changed |= self.receive(item, shutdown).await.peers_changed;
        }
        // What changes nothing to program (a kubelet's heartbeat on this Node, a config
        // key rewrite) runs no pass.
        if peers_changed {
            self.state.peers_changed();
        }
    }

    async fn receive(&mut self, item: S::Item, shutdown: &mut Shutdown) -> Ingested {
        let received = self.source.receive(item, &mut self.state);
        let mut ingested = Ingested::default();
        if let Some(batch) = received.batch {
            ingested.listing = matches!(batch, WatchBatch::Snapshot(_));
            if let Some(changes) = self.watcher.ingest(batch) {
                ingested.peers_changed = true;
                log_peer_events(&changes.peers);
                // A peer under this node's own key never reaches the peer set: the
                // watcher reports it as this node's own lease instead.
                self.state.peer_events(changes.peers);
                if let Some(change) = changes.own {
                    let seen = self
                        .source
                        .own_lease_seen(change, &mut self.state, shutdown);
                    if let Some(own) = seen.await {
                        self.change_own_subnet(own).await;
                    }
                }
            }
        }
        if let Some(own) = received.own_subnet {
            self.change_own_subnet(own).await;
        }
        if let Some(ips) = received.node_ips {
            self.underlay.request.node_ips = ips;
            self.state.recheck_underlay();
        }
        ingested
    }

    /// This node holds `new` now (re-acquired in etcd, or its Node's podCIDR changed):
    /// the same steps in both modes. The datapath is reprogrammed first (a full pass),
    /// then subnet.env names the new subnet, so the CNI plugin hands out its addresses
    /// only once the node routes them.
    async fn change_own_subnet(&mut self, new: SubnetKey) {
        let old = self.state.own();
        if new == old {
            self.state.update_readiness();
            return;
        }
        error!(
            old = %old,
            new = %new,
            "this node's subnet changed; pods created before keep addresses from the old one \
             and must be recreated"
        );
        log_peer_events(&self.watcher.set_own(Some(new)));
        self.state.set_own(new);
        self.state.set_peers(&self.watcher);
        if self.started {
            self.state.converge(PassTrigger::SubnetChange).await;
            self.state.write_subnet_env();
        }
    }
}

/// A spawned datastore watch, ended when dropped (a reconnect, the end of the loop).
#[derive(Debug)]
pub struct WatchTask(tokio::task::JoinHandle<()>);

impl WatchTask {
    pub fn spawn(watch: impl Future<Output = ()> + Send + 'static) -> WatchTask {
        WatchTask(tokio::spawn(watch))
    }
}

impl Drop for WatchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What of the external interface the node depends on.
fn addresses(
    external: &ExternalInterface,
) -> (
    u32,
    Option<Ipv4Addr>,
    Option<Ipv6Addr>,
    Option<Ipv4Addr>,
    Option<Ipv6Addr>,
) {
    (
        external.index,
        external.iface_addr,
        external.iface_v6_addr,
        external.ext_addr,
        external.ext_v6_addr,
    )
}

/// `eth0 198.18.0.11 (public 198.18.0.11)`.
fn describe(external: &ExternalInterface) -> String {
    let addresses = joined(external.iface_addr, external.iface_v6_addr);
    let public = joined(external.ext_addr, external.ext_v6_addr);
    format!("{} {addresses} (public {public})", external.name)
}

/// `198.18.0.11`, `fd00::11` or both, comma-separated.
fn joined(v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> String {
    let v4 = v4.map(|a| a.to_string());
    let v6 = v6.map(|a| a.to_string());
    v4.into_iter().chain(v6).collect::<Vec<_>>().join(",")
}

/// What one item did to the loop's input.
#[derive(Debug, Default)]
struct Ingested {
    /// It was a full listing.
    listing: bool,
    /// The peer set (or its listing) changed: a pass is due.
    peers_changed: bool,
}
