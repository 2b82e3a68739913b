//! The kernel boundary: the only code in weft that talks netlink.

mod host;

pub use host::{HostAddress, HostLink, HostRoute, HostSnapshot, read_host, route_to};

/// A failed netlink operation.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("netlink {op} failed: {source}")]
    Netlink {
        op: &'static str,
        source: rtnetlink::Error,
    },
}
