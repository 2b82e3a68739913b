//! The kernel boundary: the only code in weft that talks netlink.

mod dump;
pub mod ethtool;
mod events;
mod executor;
mod generic;
mod host;
mod lookup;
mod nexthop;
pub mod wireguard;

use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use std::net::IpAddr;

pub use events::{KernelEvent, is_own_addition, subscribe};
pub use executor::Kernel;
pub use host::{HostAddress, HostLink, HostRoute, HostSnapshot, read_host, route_to};
pub use lookup::RouteAt;

/// A failed netlink operation.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("netlink {op} failed: {cause}")]
    Netlink {
        op: &'static str,
        cause: rtnetlink::Error,
    },
    #[error("no device named {0}")]
    NoDevice(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A WireGuard device's configuration could not be read or set.
    #[error("{0}")]
    Tunnel(String),
    /// An ethtool netlink request (device features) that failed.
    #[error("ethtool {op} failed: {error}")]
    Ethtool {
        op: &'static str,
        error: std::io::Error,
    },
    /// A request of weft's own netlink code (nexthop objects) the kernel refused.
    #[error("netlink {op} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Errno { op: &'static str, errno: i32 },
}

/// The main routing table.
pub(crate) const MAIN_TABLE: u32 = 254;

/// Opens a netlink connection in the current network namespace (its task spawned).
pub(crate) fn connect() -> Result<rtnetlink::Handle, KernelError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(KernelError::Socket)?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Maps an rtnetlink error of operation `op` to a [`KernelError`].
pub(crate) fn netlink(op: &'static str) -> impl Fn(rtnetlink::Error) -> KernelError {
    move |cause| KernelError::Netlink { op, cause }
}

/// The table of a route message (RTA_TABLE wins over the 8-bit header field).
pub(crate) fn route_table(message: &RouteMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table))
}

/// An IPv4 or IPv6 route address.
pub(crate) fn route_address(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

impl KernelError {
    /// The errno of a netlink error (positive), if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Netlink {
                cause: rtnetlink::Error::NetlinkError(message),
                ..
            } => message.code.map(|code| -code.get()),
            KernelError::Errno { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}
