//! weft-subnet: everything about leasing pod subnets, and nothing about the kernel.
//!
//! The pure core (config validation, lease encoding, allocation, the lease watcher) is the
//! crate weft-lease, re-exported here. The etcd edge lives in [`etcd`] and is
//! tested against a real etcd; the Kubernetes edge lives in [`kube`] and is tested at the
//! HTTP level (exact calls through a mock service, and a stateful fake API server).

pub mod backoff;
pub mod causes;
pub mod etcd;
pub mod kube;
pub mod observer;

// The shared model lives in weft-lease (no I/O, no datastore crates); re-exported so a
// datastore user names one crate.
pub use weft_lease::{
    BackendData, BackendType, Lease, LeaseAttrs, NetworkConfig, RawConfig, SubnetKey,
};
pub use weft_lease::{alloc, config, family, lease, text, watch};
