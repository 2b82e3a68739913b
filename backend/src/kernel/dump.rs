//! Streaming netlink dumps for the full pass.
//!
//! rtnetlink's connection task reads a dump from its socket until the socket would block
//! and queues every decoded message before the caller sees the first one, so a full pass
//! at 15,000 peers held the whole dump (45,000 decoded routes, neighbours and FDB entries)
//! at once. Here a dump is read one datagram at a time into one reused buffer, and each
//! message is decoded, handed to the caller (who keeps a compact entry, or nothing) and
//! dropped before the next: the peak is one datagram and one message.
//!
//! The socket asks the kernel for strict checking of dump requests
//! (`NETLINK_GET_STRICT_CHK`, Linux 4.20), so the filters in a request (the main table
//! for routes, the device for neighbour and FDB entries) are applied by the kernel. On an
//! older kernel the option is refused and the kernel dumps everything: the callers filter
//! again, so the result is the same.

use super::KernelError;
use rtnetlink::packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::protocols::NETLINK_ROUTE;
use rtnetlink::sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};

/// The kernel caps a dump datagram at 32 KiB; twice that never truncates.
pub(super) const BUFFER: usize = 64 * 1024;

/// A route netlink socket bound to a port of its own; connected to the kernel unless it
/// only listens (to multicast groups).
pub(super) fn route_socket(connect: bool) -> Result<TokioSocket, KernelError> {
    let mut socket = TokioSocket::new(NETLINK_ROUTE).map_err(KernelError::Socket)?;
    socket
        .socket_mut()
        .bind_auto()
        .map_err(KernelError::Socket)?;
    if connect {
        socket
            .socket_ref()
            .connect(&SocketAddr::new(0, 0))
            .map_err(KernelError::Socket)?;
    }
    Ok(socket)
}

/// `inner` as a request with `flags` (besides `NLM_F_REQUEST`) and `sequence`.
pub(super) fn request<M: NetlinkSerializable>(inner: M, flags: u16, sequence: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
    message.finalize();
    let mut out = vec![0; message.buffer_len()];
    message.serialize(&mut out);
    out
}

/// Reads the next datagram from `socket` into `buffer` (cleared first); `op` names the
/// request in errors.
pub(super) async fn receive(
    socket: &mut TokioSocket,
    buffer: &mut Vec<u8>,
    op: &str,
) -> Result<(), KernelError> {
    buffer.clear();
    socket.recv(buffer).await.map_err(KernelError::Socket)?;
    if buffer.is_empty() {
        return Err(KernelError::Invalid(format!("{op}: empty datagram")));
    }
    Ok(())
}

/// One message of a datagram.
pub(super) enum Frame<M> {
    Message(NetlinkMessage<M>),
    /// Framed well, but its payload does not decode (the reason).
    Undecodable(String),
    /// A length that does not fit the datagram: nothing after it can be read.
    Broken(String),
}

/// The messages of one datagram in order (4-byte aligned, as the kernel sends them).
pub(super) fn messages<M: NetlinkDeserializable>(
    datagram: &[u8],
) -> impl Iterator<Item = Frame<M>> + '_ {
    let mut offset = 0;
    std::iter::from_fn(move || {
        if offset >= datagram.len() {
            return None;
        }
        let bytes = &datagram[offset..];
        let length = match NetlinkBuffer::new_checked(bytes) {
            Ok(buffer) => buffer.length() as usize,
            Err(e) => {
                offset = datagram.len();
                return Some(Frame::Broken(e.to_string()));
            }
        };
        offset += (length + 3) & !3;
        Some(match NetlinkMessage::<M>::deserialize(&bytes[..length]) {
            Ok(message) => Frame::Message(message),
            Err(e) => Frame::Undecodable(e.to_string()),
        })
    })
}

/// A netlink socket for dumps, with its receive buffer.
pub(crate) struct Dumper {
    socket: TokioSocket,
    buffer: Vec<u8>,
    sequence: u32,
}

impl std::fmt::Debug for Dumper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dumper")
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

impl Dumper {
    /// A socket in the current network namespace (needs a tokio runtime).
    pub(crate) fn new() -> Result<Dumper, KernelError> {
        let socket = route_socket(true)?;
        // Best effort: without it the kernel ignores the filters, and callers filter.
        let _ = socket.socket_ref().set_netlink_get_strict_chk(true);
        Ok(Dumper {
            socket,
            buffer: Vec::with_capacity(BUFFER),
            sequence: 0,
        })
    }

    /// Sends `request` as a dump and calls `each` with every message of the answer, in
    /// order, one at a time. `op` names the dump in errors.
    pub(crate) async fn dump(
        &mut self,
        request: RouteNetlinkMessage,
        op: &'static str,
        mut each: impl FnMut(RouteNetlinkMessage),
    ) -> Result<(), KernelError> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let out = self::request(request, NLM_F_DUMP, sequence);
        self.socket.send(&out).await.map_err(KernelError::Socket)?;
        self.read(sequence, op, &mut each).await
    }

    async fn read(
        &mut self,
        sequence: u32,
        op: &'static str,
        each: &mut impl FnMut(RouteNetlinkMessage),
    ) -> Result<(), KernelError> {
        loop {
            receive(&mut self.socket, &mut self.buffer, op).await?;
            for message in messages::<RouteNetlinkMessage>(&self.buffer) {
                let message = match message {
                    Frame::Message(message) => message,
                    // One entry the library cannot decode does not fail the pass (as with
                    // rtnetlink's connection, which logs and skips it); a broken frame does.
                    Frame::Undecodable(e) => {
                        tracing::debug!("{op}: skipping an undecodable message: {e}");
                        continue;
                    }
                    Frame::Broken(e) => return Err(KernelError::Invalid(format!("{op}: {e}"))),
                };
                if message.header.sequence_number != sequence {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::InnerMessage(inner) => each(inner),
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(error) if error.code.is_some() => {
                        return Err(KernelError::Netlink {
                            op,
                            cause: rtnetlink::Error::NetlinkError(error),
                        });
                    }
                    _ => {}
                }
            }
        }
    }
}
