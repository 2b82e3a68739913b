//! weft-subnet: everything about leasing pod subnets, and nothing about the kernel.
//!
//! The pure core (config validation, lease encoding, allocation, the lease watcher) has no
//! I/O and is tested without root or a datastore. The etcd edge lives in [`etcd`] and is
//! tested against a real etcd; the Kubernetes edge lives in [`kube`] and is tested at the
//! HTTP level (exact calls through a mock service, and a stateful fake API server).

pub mod alloc;
pub mod backoff;
pub mod causes;
pub mod config;
pub mod etcd;
pub mod family;
pub mod kube;
pub mod lease;
pub mod observer;
pub mod text;
pub mod watch;

pub use config::{BackendType, NetworkConfig, RawConfig};
pub use lease::{BackendData, Lease, LeaseAttrs, SubnetKey};
