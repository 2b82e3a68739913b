//! Generic netlink, the part weft's two families share (ethtool's device features and
//! the kernel's WireGuard): the message layout (`nlmsghdr`, `genlmsghdr`, attributes),
//! the family lookup through `nlctrl` (`CTRL_CMD_GETFAMILY`), replies split into
//! acknowledgements and messages, and [`GenericSocket`], which sends requests and reads
//! the replies for their sequence number. Pure functions with byte-level tests; the
//! socket is the only I/O.

use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};
use std::io;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
pub(super) const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_ERROR: u16 = 2;
pub(super) const NLM_F_REQUEST: u16 = 1;
pub(super) const NLM_F_ACK: u16 = 4;
const HEADER: usize = 16;
const GENL_HEADER: usize = 4;

/// One netlink attribute, its payload padded to 4 bytes.
pub(super) fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut out = Vec::with_capacity(len.next_multiple_of(4));
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(len.next_multiple_of(4), 0);
    out
}

pub(super) fn nest(kind: u16, inner: &[Vec<u8>]) -> Vec<u8> {
    attr(kind | NLA_F_NESTED, &inner.concat())
}

pub(super) fn string(kind: u16, value: &str) -> Vec<u8> {
    let mut payload = value.as_bytes().to_vec();
    payload.push(0);
    attr(kind, &payload)
}

/// A whole request: headers, then `attrs`.
pub(super) fn message(
    family: u16,
    flags: u16,
    seq: u32,
    cmd: u8,
    version: u8,
    attrs: &[u8],
) -> Vec<u8> {
    let len = HEADER + GENL_HEADER + attrs.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    out.extend_from_slice(&family.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[cmd, version, 0, 0]);
    out.extend_from_slice(attrs);
    out
}

/// `CTRL_CMD_GETFAMILY <name>`: the family's id.
pub fn family_request(name: &str, seq: u32) -> Vec<u8> {
    let name = string(CTRL_ATTR_FAMILY_NAME, name);
    message(
        GENL_ID_CTRL,
        NLM_F_REQUEST,
        seq,
        CTRL_CMD_GETFAMILY,
        1,
        &name,
    )
}

/// (type without flags, payload) of each attribute in `bytes`; stops at a malformed one.
pub(super) fn attributes(mut bytes: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > bytes.len() {
            break;
        }
        out.push((kind, &bytes[4..len]));
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
    }
    out
}

/// One message of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An error or acknowledgement (`code` 0).
    Error { seq: u32, code: i32 },
    /// A generic netlink message: its command and attributes.
    Generic {
        seq: u32,
        kind: u16,
        cmd: u8,
        attrs: Vec<u8>,
    },
}

/// Splits a datagram into replies; truncated or malformed parts are dropped.
pub fn parse(mut buf: &[u8]) -> Vec<Reply> {
    let mut out = Vec::new();
    while buf.len() >= HEADER {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < HEADER || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let body = &buf[HEADER..len];
        if kind == NLMSG_ERROR && body.len() >= 4 {
            let code = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
            out.push(Reply::Error { seq, code });
        } else if body.len() >= GENL_HEADER {
            out.push(Reply::Generic {
                seq,
                kind,
                cmd: body[0],
                attrs: body[GENL_HEADER..].to_vec(),
            });
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

/// The family id in a `CTRL_CMD_GETFAMILY` answer.
pub fn family_id(attrs: &[u8]) -> Option<u16> {
    attributes(attrs)
        .into_iter()
        .find(|(kind, payload)| *kind == CTRL_ATTR_FAMILY_ID && payload.len() >= 2)
        .map(|(_, p)| u16::from_ne_bytes([p[0], p[1]]))
}

/// A generic netlink socket for one family, in the current network namespace.
#[derive(Debug)]
pub struct GenericSocket {
    socket: Socket,
    family: u16,
    seq: u32,
}

impl GenericSocket {
    /// Opens the socket and looks family `name` up; `ENOENT` when the kernel has none.
    pub fn open(name: &str) -> io::Result<GenericSocket> {
        let socket = Socket::new(NETLINK_GENERIC)?;
        socket.set_non_blocking(true)?;
        let mut this = GenericSocket {
            socket,
            family: 0,
            seq: 1,
        };
        let seq = this.next_seq();
        this.family = match this.exchange(&family_request(name, seq), seq)? {
            Reply::Generic { attrs, .. } => family_id(&attrs)
                .ok_or_else(|| io::Error::other("no family id in nlctrl's answer"))?,
            Reply::Error { code, .. } => return Err(io::Error::from_raw_os_error(-code)),
        };
        Ok(this)
    }

    /// The family's id.
    pub fn family(&self) -> u16 {
        self.family
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Reserves `n` sequence numbers after the next one (several requests at once).
    pub fn reserve_seqs(&mut self, n: u32) {
        self.seq = self.seq.wrapping_add(n);
    }

    pub fn send(&self, request: &[u8]) -> io::Result<()> {
        self.socket
            .send_to(request, &SocketAddr::new(0, 0), 0)
            .map(|_| ())
    }

    /// One datagram as received (a dump's part).
    pub fn receive(&mut self) -> io::Result<Vec<u8>> {
        self.socket.recv_from_full().map(|(buf, _)| buf)
    }

    /// The first reply for `seq` (the kernel answers in the send: everything is there
    /// when it returns).
    pub fn receive_one(&mut self, seq: u32) -> io::Result<Reply> {
        // Bounded: one request's answer is a message or two.
        for _ in 0..8 {
            let buf = self.receive()?;
            if let Some(reply) = parse(&buf).into_iter().find(|r| match r {
                Reply::Error { seq: s, .. } | Reply::Generic { seq: s, .. } => *s == seq,
            }) {
                return Ok(reply);
            }
        }
        Err(io::Error::other("no answer from generic netlink"))
    }

    /// Sends `request` and returns the first reply for `seq`.
    pub fn exchange(&mut self, request: &[u8], seq: u32) -> io::Result<Reply> {
        self.send(request)?;
        self.receive_one(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_request_asks_nlctrl_for_the_name() {
        let bytes = family_request("ethtool", 5);
        // 16 + 4 + attr(4 + "ethtool\0" = 12)
        assert_eq!(bytes.len(), 32);
        assert_eq!(&bytes[4..6], &GENL_ID_CTRL.to_ne_bytes());
        assert_eq!(&bytes[8..12], &5u32.to_ne_bytes());
        assert_eq!(&bytes[16..18], &[CTRL_CMD_GETFAMILY, 1]);
        assert_eq!(&bytes[20..22], &12u16.to_ne_bytes());
        assert_eq!(&bytes[22..24], &CTRL_ATTR_FAMILY_NAME.to_ne_bytes());
        assert_eq!(&bytes[24..32], b"ethtool\0");
        let wireguard = family_request("wireguard", 6);
        assert_eq!(&wireguard[24..34], b"wireguard\0");
    }

    #[test]
    fn nlctrl_answers_carry_the_family_id() {
        let attrs = [
            string(CTRL_ATTR_FAMILY_NAME, "ethtool"),
            attr(CTRL_ATTR_FAMILY_ID, &0x1du16.to_ne_bytes()),
        ]
        .concat();
        assert_eq!(family_id(&attrs), Some(0x1d));
        assert_eq!(family_id(&[]), None);
        // Garbage does not panic.
        assert!(parse(&[1, 2, 3]).is_empty());
    }
}
