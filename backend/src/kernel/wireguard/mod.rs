//! WireGuard devices, through one of two implementations of the same configuration
//! protocol:
//! - the kernel's: the device created over rtnetlink (kind `wireguard`), configured over
//!   generic netlink ([`genl`]);
//! - a userspace program's, when the kernel has no WireGuard and `--wireguard-userspace`
//!   names one (e.g. `boringtun-cli --disable-drop-privileges`): weftd starts it with the
//!   device name, it creates a TUN device and serves the configuration on its UAPI
//!   socket ([`uapi`]), which weftd then speaks.
//!
//! Which one serves an existing device is read from it: a device with a UAPI socket is a
//! userspace one. The program is started detached (it daemonizes, as `wg-quick` relies
//! on), so a weftd restart keeps the device and its sessions, as the kernel's would.

pub mod genl;
pub mod uapi;

use super::KernelError;
use crate::desired::WireguardLink;
use crate::tunnel::{TunnelChange, TunnelState};
use futures::TryStreamExt as _;
use rtnetlink::{Handle, LinkUnspec, LinkWireguard};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::debug;

const EOPNOTSUPP: i32 = 95;
const ENOENT: i32 = 2;

/// How long a started userspace implementation may take to create its device.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates, reads and configures WireGuard devices (see the module docs).
#[derive(Debug)]
pub struct TunnelDriver {
    /// The userspace program and its arguments (the device name is appended).
    userspace: Option<Vec<String>>,
    socket_dir: PathBuf,
    genl: Mutex<Option<genl::GenlSocket>>,
}

impl Default for TunnelDriver {
    fn default() -> TunnelDriver {
        TunnelDriver::new(None)
    }
}

impl TunnelDriver {
    pub fn new(userspace: Option<Vec<String>>) -> TunnelDriver {
        TunnelDriver {
            userspace: userspace.filter(|c| !c.is_empty()),
            socket_dir: PathBuf::from(uapi::SOCKET_DIR),
            genl: Mutex::new(None),
        }
    }

    /// The UAPI socket of device `name`, if it has one (a userspace device).
    fn socket(&self, name: &str) -> Option<PathBuf> {
        let path = uapi::socket_path(&self.socket_dir, name);
        path.exists().then_some(path)
    }

    /// Whether a userspace implementation serves device `name` (it has a UAPI socket).
    pub fn is_userspace(&self, name: &str) -> bool {
        self.socket(name).is_some()
    }

    /// The configuration device `name` holds.
    pub fn read(&self, name: &str) -> Result<TunnelState, KernelError> {
        match self.socket(name) {
            Some(path) => uapi::get(&path).map_err(|e| KernelError::Tunnel(e.to_string())),
            None => self.with_genl("read", |socket| socket.get(name)),
        }
    }

    /// Applies `change` to its device.
    pub fn configure(&self, change: &TunnelChange) -> Result<(), KernelError> {
        match self.socket(&change.device) {
            Some(path) => uapi::set(&path, change).map_err(|e| KernelError::Tunnel(e.to_string())),
            None => self.with_genl("configure", |socket| socket.set(change)),
        }
    }

    fn with_genl<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut genl::GenlSocket) -> std::io::Result<T>,
    ) -> Result<T, KernelError> {
        let mut guard = self.genl.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(genl::GenlSocket::open().map_err(|e| no_wireguard(op, e))?);
        }
        let result = guard
            .as_mut()
            .map(f)
            .unwrap_or_else(|| Err(std::io::Error::other("no socket")));
        if result.is_err() {
            *guard = None;
        }
        result.map_err(|error| KernelError::Tunnel(format!("wireguard {op} failed: {error}")))
    }

    /// Creates the device: the kernel's, or, when the kernel has no WireGuard and a
    /// userspace implementation is configured, that program's.
    pub async fn create(&self, handle: &Handle, link: &WireguardLink) -> Result<(), KernelError> {
        let message = LinkWireguard::new(&link.name).mtu(link.mtu).up().build();
        let error = match handle.link().add(message).execute().await {
            Ok(()) => return Ok(()),
            Err(e) => super::netlink("create wireguard device")(e),
        };
        if error.errno() != Some(EOPNOTSUPP) {
            return Err(error);
        }
        let Some(command) = &self.userspace else {
            return Err(KernelError::Tunnel(format!(
                "cannot create {}: this kernel has no WireGuard (\"Unknown device type\"); \
                 load the wireguard module, or name a userspace implementation with \
                 --wireguard-userspace (e.g. \"boringtun-cli --disable-drop-privileges\")",
                link.name
            )));
        };
        self.start_userspace(command, &link.name).await?;
        // The program's TUN device comes down and at 1500: the kernel's is created up,
        // at the wanted MTU (the routes through it need it up).
        let index = find_index(handle, &link.name).await?;
        let message = LinkUnspec::new_with_index(index).mtu(link.mtu).up().build();
        handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(super::netlink("set wireguard device up"))
    }

    /// Starts `command <name>` and waits for its device's socket.
    async fn start_userspace(&self, command: &[String], name: &str) -> Result<(), KernelError> {
        let describe = command.join(" ");
        let failed =
            |why: String| KernelError::Tunnel(format!("cannot start `{describe} {name}`: {why}"));
        // The daemon's flag parsing never hands over an empty command; a caller that does
        // gets an error, not a panic.
        let (program, args) = command
            .split_first()
            .ok_or_else(|| failed("no program named".into()))?;
        let output = Command::new(program)
            .args(args)
            .arg(name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failed(e.to_string()))?;
        // The program daemonizes: the command returns once its device exists.
        let output = tokio::task::spawn_blocking(move || output.wait_with_output())
            .await
            .map_err(|e| failed(e.to_string()))?
            .map_err(|e| failed(e.to_string()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: String = stderr
                .trim()
                .chars()
                .rev()
                .take(300)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(failed(format!("{} ({tail})", output.status)));
        }
        let path = uapi::socket_path(&self.socket_dir, name);
        let started = Instant::now();
        while !path.exists() {
            if started.elapsed() > START_TIMEOUT {
                return Err(failed(format!(
                    "its socket {} did not appear within {} s",
                    path.display(),
                    START_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// At most this many peers are primed per change (a first pass at thousands of peers
/// would start thousands of handshakes at once; the rest start on their first packet).
pub const PRIME_LIMIT: usize = 1024;

/// One empty datagram through the tunnel to each peer set (the discard port of its
/// subnet's first address), so this side starts the handshakes:
/// - a re-created device (or one with a new key) has no sessions, and its peers keep
///   sending on their old ones: WireGuard on their side starts a new handshake only
///   after 15 s without an answer (REKEY_TIMEOUT + KEEPALIVE_TIMEOUT);
/// - a peer that learns of this node after this node's first packet to it dropped that
///   handshake (unknown key): the retry comes 5 s later (REKEY_TIMEOUT).
///
/// One started here takes a round trip. Sent after the pass's routes are in place (the
/// network's route goes with the device), from sockets bound to the device: if that
/// route is missing (its change failed), a datagram to a pod address must not take the
/// default route out of the node unencrypted. Bound, it enters the device or nothing
/// (the kernel takes a bound socket's destination without a route as on-link).
pub fn prime_handshakes(change: &TunnelChange) {
    let bound = |any: &str| bound_socket(any, &change.device);
    let (v4, v6) = (bound("0.0.0.0:0"), bound("[::]:0"));
    for (_, peer) in change.set.iter().take(PRIME_LIMIT) {
        let Some(net) = peer.allowed_ips.first() else {
            continue;
        };
        let socket = if net.ip().is_ipv4() { &v4 } else { &v6 };
        if let Some(socket) = socket {
            let _ = socket.send_to(&[], (net.ip(), 9));
        }
    }
}

/// A non-blocking UDP socket whose datagrams can only leave through `device`
/// (SO_BINDTODEVICE); `None` when it cannot be made (then nothing is primed: the
/// handshakes start on the first packet, as WireGuard's do by themselves).
fn bound_socket(any: &str, device: &str) -> Option<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let address: std::net::SocketAddr = any.parse().ok()?;
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )
    .ok()?;
    if let Err(e) = socket.bind_device(Some(device.as_bytes())) {
        debug!("cannot bind a socket to {device} to start handshakes: {e}");
        return None;
    }
    socket.set_nonblocking(true).ok()?;
    socket.bind(&address.into()).ok()?;
    Some(socket.into())
}

async fn find_index(handle: &Handle, name: &str) -> Result<u32, KernelError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link.header.index),
        Ok(None) => Err(KernelError::NoDevice(name.to_string())),
        Err(e) => Err(super::netlink("find wireguard device")(e)),
    }
}

fn no_wireguard(op: &'static str, error: std::io::Error) -> KernelError {
    if error.raw_os_error() == Some(ENOENT) {
        KernelError::Tunnel(format!(
            "wireguard {op}: this kernel has no WireGuard generic netlink family"
        ))
    } else {
        KernelError::Tunnel(format!(
            "wireguard {op}: cannot open generic netlink: {error}"
        ))
    }
}
