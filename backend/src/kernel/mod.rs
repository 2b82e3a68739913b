//! The kernel boundary: the only code in weft that talks netlink.

mod events;
mod executor;
mod host;

pub use events::{KernelEvent, subscribe};
pub use executor::Kernel;
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
    #[error("no device named {0}")]
    NoDevice(String),
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl KernelError {
    /// The errno of a netlink error (positive), if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Netlink {
                source: rtnetlink::Error::NetlinkError(message),
                ..
            } => message.code.map(|code| -code.get()),
            _ => None,
        }
    }
}
