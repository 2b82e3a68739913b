//! weft-backend: the kernel side of weft. It knows nothing about etcd or Kubernetes.
//!
//! The datapath is programmed by level-triggered reconciliation: [`vxlan::desired_state`]
//! turns the full lease set into a [`desired::Desired`] value, the kernel executor reads
//! the [`desired::Observed`] state of the objects weft owns, and the pure [`diff::diff`]
//! turns the gap into [`diff::Op`]s applied in a safe order.

pub mod adjacency;
pub mod admission;
pub mod backend;
pub mod backend_field;
pub mod desired;
pub mod diff;
pub mod hostgw;
pub mod kernel;
pub mod mac;
pub mod nexthop;
pub mod offload;
pub mod reconcile;
pub mod tunnel;
pub mod vxlan;
pub mod wireguard;

/// The route protocol number weft marks its routes with (`ip route ... proto 91`), so
/// that it can find and sweep its own routes and leave everybody else's alone.
pub const ROUTE_PROTOCOL: u8 = 91;
