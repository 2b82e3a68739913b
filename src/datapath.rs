//! The datapath of this node: what the backend programs and how it converges.
//!
//! The datapath keeps the full set of peer leases and, on every trigger (a lease batch, a
//! kernel notification about one of weft's objects, a timer), runs one reconcile pass:
//! the backend's desired state, the kernel's observed state, the diff, applied. `alloc`
//! wants nothing, so its passes only sweep routes weft left marked as its own.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;
use tracing::{debug, info, warn};
use weft_backend::backend::Backend;
use weft_backend::diff;
use weft_backend::kernel::{Kernel, KernelEvent};
use weft_subnet::{Lease, SubnetKey};

/// The outcome of one reconcile pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub changes: usize,
    pub failures: Vec<String>,
}

/// This node's datapath: a backend and the kernel.
#[derive(Debug)]
pub struct Datapath {
    pub backend: Box<dyn Backend>,
    kernel: Kernel,
    peers: BTreeMap<SubnetKey, Lease>,
    /// Skipped peers already reported, so each reason is logged once.
    reported: HashSet<(SubnetKey, String)>,
    /// Indices of weft's devices as last observed, to filter kernel notifications.
    device_indices: HashSet<u32>,
}

impl Datapath {
    pub fn new(backend: Box<dyn Backend>, kernel: Kernel) -> Datapath {
        Datapath {
            backend,
            kernel,
            peers: BTreeMap::new(),
            reported: HashSet::new(),
            device_indices: HashSet::new(),
        }
    }

    pub fn set_own(&mut self, own: SubnetKey) {
        self.backend.set_own(own);
    }

    /// Replaces the peer set (the full set of remote leases).
    pub fn set_peers<'a>(&mut self, peers: impl IntoIterator<Item = &'a Lease>) {
        self.peers = peers.into_iter().map(|l| (l.key, l.clone())).collect();
    }

    /// One reconcile pass: observe, diff, apply (every op is tried; failures are
    /// returned and retried by the next pass).
    pub async fn converge(&mut self) -> Result<Pass, weft_backend::kernel::KernelError> {
        let started = Instant::now();
        let (desired, skipped) = self.backend.desired_state(&mut self.peers.values());
        for skip in skipped {
            if self.reported.insert((skip.key, skip.reason.clone())) {
                warn!(subnet = %skip.key, "ignoring peer lease: {}", skip.reason);
            }
        }
        let observed = self.kernel.observe(&desired).await?;
        self.device_indices = observed.links.iter().map(|l| l.index).collect();
        let ops = diff::diff(&desired, &observed);
        for op in &ops {
            match op {
                diff::Op::DeleteLink { .. } | diff::Op::CreateLink(_) => info!("datapath: {op}"),
                _ => tracing::trace!("datapath: {op}"),
            }
        }
        let observed_in = started.elapsed();
        let failures = self.kernel.apply(&ops).await;
        let pass = Pass {
            changes: ops.len() - failures.len(),
            failures: failures
                .iter()
                .map(|(op, e)| format!("{op}: {e}"))
                .collect(),
        };
        for failure in &pass.failures {
            warn!("datapath change failed (retried on the next pass): {failure}");
        }
        debug!(
            changes = ops.len(),
            peers = self.peers.len(),
            observe_us = observed_in.as_micros() as u64,
            elapsed_us = started.elapsed().as_micros() as u64,
            "reconcile pass"
        );
        let devices_changed = ops
            .iter()
            .any(|op| matches!(op, diff::Op::CreateLink(_) | diff::Op::DeleteLink { .. }));
        if devices_changed {
            // A (re)created device has a new index; read just the links, not a full
            // observation, so a pass at thousands of peers is not dumped twice.
            let mut indices = HashSet::new();
            for name in desired.device_names() {
                if let Ok(Some((index, _))) = self.kernel.link(name).await {
                    indices.insert(index);
                }
            }
            self.device_indices = indices;
        }
        if !ops.is_empty() {
            info!(
                changes = pass.changes,
                failed = pass.failures.len(),
                peers = self.peers.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "datapath converged"
            );
        }
        Ok(pass)
    }

    /// Whether a kernel notification concerns weft's objects (and so needs a pass).
    /// Additions weft makes itself are not interesting; deletions and foreign changes are.
    pub fn is_relevant(&self, event: &KernelEvent) -> bool {
        let ours = |index: &u32| self.device_indices.contains(index);
        match event {
            KernelEvent::Link { index, name, .. } => {
                ours(index) || name.as_deref().is_some_and(|n| self.backend.owns_device(n))
            }
            KernelEvent::Address { index } => ours(index),
            KernelEvent::Route {
                oif,
                protocol,
                deleted,
            } => {
                let on_ours = oif.is_some_and(|i| ours(&i));
                let by_us = *protocol == weft_backend::ROUTE_PROTOCOL;
                if *deleted {
                    on_ours || by_us
                } else {
                    on_ours && !by_us
                }
            }
            KernelEvent::Neighbour { ifindex, deleted } => *deleted && ours(ifindex),
            KernelEvent::Overrun => true,
        }
    }
}
