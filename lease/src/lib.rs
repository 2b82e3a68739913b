//! weft-lease: the model every part of weft shares, with no I/O at all.
//!
//! Address families and networks ([`family`]), leases and their etcd keys ([`lease`]),
//! the validated net-conf.json ([`config`]), the lease watcher's events ([`watch`]) and
//! subnet allocation ([`alloc`]). The datastore clients (`weft-subnet`), the kernel side
//! (`weft-backend`) and the daemon all speak these types; this crate depends on no
//! datastore, netlink or Kubernetes crate, so the kernel side does not compile them.

pub mod alloc;
pub mod config;
pub mod family;
pub mod lease;
pub mod text;
pub mod watch;

pub use config::{BackendType, NetworkConfig, RawConfig};
pub use lease::{BackendData, Lease, LeaseAttrs, SubnetKey};
