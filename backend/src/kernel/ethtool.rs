//! One device feature over ethtool's generic netlink family (Linux 5.6+): read whether a
//! named feature is active (`ETHTOOL_MSG_FEATURES_GET`) and turn it on or off
//! (`ETHTOOL_MSG_FEATURES_SET`), as `ethtool -k` / `ethtool -K` do. weft uses it for the
//! VXLAN device's `tx-checksum-ip-generic` (see `crate::offload`).
//!
//! Hand-encoded like `weft-rules`' netfilter messages: the `ethtool` crate reads features
//! but cannot set them, and would add a second netlink stack to the tree. Encoding and
//! decoding are pure functions with byte-level tests; [`EthtoolSocket`] sends them.
//!
//! Layout (include/uapi/linux/ethtool_netlink.h, Documentation/networking/ethtool-netlink.rst):
//! `nlmsghdr`, `genlmsghdr` (cmd, version 1), then `ETHTOOL_A_FEATURES_HEADER` (nest:
//! `HEADER_DEV_INDEX`, `HEADER_FLAGS`) and, to set, `ETHTOOL_A_FEATURES_WANTED`: a verbose
//! bitset (nest: `BITSET_BITS` → `BITS_BIT` → `BIT_NAME`, and the `BIT_VALUE` flag for
//! on) without `NOMASK`, so only the named feature changes. A get's reply lists the
//! active features as a verbose bitset without mask: the names of the bits that are set.

use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};
use std::io;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const ETHTOOL_GENL_VERSION: u8 = 1;
const ETHTOOL_MSG_FEATURES_GET: u8 = 11;
const ETHTOOL_MSG_FEATURES_SET: u8 = 12;
const ETHTOOL_A_FEATURES_HEADER: u16 = 1;
const ETHTOOL_A_FEATURES_WANTED: u16 = 3;
const ETHTOOL_A_FEATURES_ACTIVE: u16 = 4;
const ETHTOOL_A_HEADER_DEV_INDEX: u16 = 1;
const ETHTOOL_A_HEADER_FLAGS: u16 = 3;
const ETHTOOL_FLAG_OMIT_REPLY: u32 = 2;
const ETHTOOL_A_BITSET_BITS: u16 = 3;
const ETHTOOL_A_BITSET_BITS_BIT: u16 = 1;
const ETHTOOL_A_BITSET_BIT_NAME: u16 = 2;
const ETHTOOL_A_BITSET_BIT_VALUE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const HEADER: usize = 16;
const GENL_HEADER: usize = 4;

/// One netlink attribute, its payload padded to 4 bytes.
fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut out = Vec::with_capacity(len.next_multiple_of(4));
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(len.next_multiple_of(4), 0);
    out
}

fn nest(kind: u16, inner: &[Vec<u8>]) -> Vec<u8> {
    attr(kind | NLA_F_NESTED, &inner.concat())
}

fn string(kind: u16, value: &str) -> Vec<u8> {
    let mut payload = value.as_bytes().to_vec();
    payload.push(0);
    attr(kind, &payload)
}

fn message(family: u16, flags: u16, seq: u32, cmd: u8, version: u8, attrs: &[u8]) -> Vec<u8> {
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

/// `CTRL_CMD_GETFAMILY "ethtool"`: the family's id.
pub fn get_family(seq: u32) -> Vec<u8> {
    let name = string(CTRL_ATTR_FAMILY_NAME, "ethtool");
    message(
        GENL_ID_CTRL,
        NLM_F_REQUEST,
        seq,
        CTRL_CMD_GETFAMILY,
        1,
        &name,
    )
}

fn features_header(index: u32, flags: u32) -> Vec<u8> {
    nest(
        ETHTOOL_A_FEATURES_HEADER,
        &[
            attr(ETHTOOL_A_HEADER_DEV_INDEX, &index.to_ne_bytes()),
            attr(ETHTOOL_A_HEADER_FLAGS, &flags.to_ne_bytes()),
        ],
    )
}

/// `ETHTOOL_MSG_FEATURES_GET` for device `index` (verbose bitsets).
pub fn get_features(family: u16, seq: u32, index: u32) -> Vec<u8> {
    let header = features_header(index, 0);
    message(
        family,
        NLM_F_REQUEST,
        seq,
        ETHTOOL_MSG_FEATURES_GET,
        ETHTOOL_GENL_VERSION,
        &header,
    )
}

/// `ETHTOOL_MSG_FEATURES_SET`: feature `name` of device `index` on or off, nothing else
/// (no `NOMASK`); the kernel's reply is omitted, only its acknowledgement comes back.
pub fn set_feature(family: u16, seq: u32, index: u32, name: &str, on: bool) -> Vec<u8> {
    let mut bit = vec![string(ETHTOOL_A_BITSET_BIT_NAME, name)];
    if on {
        bit.push(attr(ETHTOOL_A_BITSET_BIT_VALUE, &[]));
    }
    let wanted = nest(
        ETHTOOL_A_FEATURES_WANTED,
        &[nest(
            ETHTOOL_A_BITSET_BITS,
            &[nest(ETHTOOL_A_BITSET_BITS_BIT, &bit)],
        )],
    );
    let attrs = [features_header(index, ETHTOOL_FLAG_OMIT_REPLY), wanted].concat();
    message(
        family,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        ETHTOOL_MSG_FEATURES_SET,
        ETHTOOL_GENL_VERSION,
        &attrs,
    )
}

/// (type without flags, payload) of each attribute in `bytes`; stops at a malformed one.
fn attributes(mut bytes: &[u8]) -> Vec<(u16, &[u8])> {
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

/// Whether feature `name` is among the active ones in a `FEATURES_GET` reply; `None`
/// when the reply has no active set.
pub fn is_active(attrs: &[u8], name: &str) -> Option<bool> {
    let active = attributes(attrs)
        .into_iter()
        .find(|(kind, _)| *kind == ETHTOOL_A_FEATURES_ACTIVE)?
        .1;
    let bits = attributes(active)
        .into_iter()
        .find(|(kind, _)| *kind == ETHTOOL_A_BITSET_BITS)
        .map_or(&[][..], |(_, bits)| bits);
    let listed = attributes(bits).into_iter().any(|(_, bit)| {
        attributes(bit).into_iter().any(|(kind, payload)| {
            kind == ETHTOOL_A_BITSET_BIT_NAME
                && payload.split(|b| *b == 0).next() == Some(name.as_bytes())
        })
    });
    Some(listed)
}

/// A generic netlink socket for ethtool requests, in the current network namespace.
#[derive(Debug)]
pub struct EthtoolSocket {
    socket: Socket,
    family: u16,
    seq: u32,
}

impl EthtoolSocket {
    /// Opens the socket and looks up the ethtool family (absent before Linux 5.6).
    pub fn open() -> io::Result<EthtoolSocket> {
        let socket = Socket::new(NETLINK_GENERIC)?;
        socket.set_non_blocking(true)?;
        let mut this = EthtoolSocket {
            socket,
            family: 0,
            seq: 1,
        };
        let seq = this.next_seq();
        this.family = match this.exchange(&get_family(seq), seq)? {
            Reply::Generic { attrs, .. } => family_id(&attrs)
                .ok_or_else(|| io::Error::other("no family id in nlctrl's answer"))?,
            Reply::Error { code, .. } => return Err(io::Error::from_raw_os_error(-code)),
        };
        Ok(this)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `request` and returns the first reply for `seq` (the kernel answers in the
    /// send: everything is there when it returns).
    fn exchange(&mut self, request: &[u8], seq: u32) -> io::Result<Reply> {
        self.socket.send_to(request, &SocketAddr::new(0, 0), 0)?;
        // Bounded: one request's answer is a message or two.
        for _ in 0..8 {
            let (buf, _) = self.socket.recv_from_full()?;
            if let Some(reply) = parse(&buf).into_iter().find(|r| match r {
                Reply::Error { seq: s, .. } | Reply::Generic { seq: s, .. } => *s == seq,
            }) {
                return Ok(reply);
            }
        }
        Err(io::Error::other("no answer from ethtool netlink"))
    }

    /// Whether feature `name` of device `index` is active.
    pub fn feature(&mut self, index: u32, name: &str) -> io::Result<bool> {
        let seq = self.next_seq();
        match self.exchange(&get_features(self.family, seq, index), seq)? {
            Reply::Generic { attrs, .. } => is_active(&attrs, name)
                .ok_or_else(|| io::Error::other("no active features in the answer")),
            Reply::Error { code, .. } => Err(io::Error::from_raw_os_error(-code)),
        }
    }

    /// Turns feature `name` of device `index` on or off.
    pub fn set(&mut self, index: u32, name: &str, on: bool) -> io::Result<()> {
        let seq = self.next_seq();
        match self.exchange(&set_feature(self.family, seq, index, name, on), seq)? {
            Reply::Error { code: 0, .. } => Ok(()),
            Reply::Error { code, .. } => Err(io::Error::from_raw_os_error(-code)),
            Reply::Generic { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_family_asks_nlctrl_for_ethtool() {
        let bytes = get_family(5);
        // 16 + 4 + attr(4 + "ethtool\0" = 12)
        assert_eq!(bytes.len(), 32);
        assert_eq!(&bytes[4..6], &GENL_ID_CTRL.to_ne_bytes());
        assert_eq!(&bytes[8..12], &5u32.to_ne_bytes());
        assert_eq!(&bytes[16..18], &[CTRL_CMD_GETFAMILY, 1]);
        assert_eq!(&bytes[20..22], &12u16.to_ne_bytes());
        assert_eq!(&bytes[22..24], &CTRL_ATTR_FAMILY_NAME.to_ne_bytes());
        assert_eq!(&bytes[24..32], b"ethtool\0");
    }

    #[test]
    fn set_names_one_feature_in_a_verbose_bitset_without_nomask() {
        let family = 0x1d;
        let off = set_feature(family, 9, 7, "tx-checksum-ip-generic", false);
        let on = set_feature(family, 9, 7, "tx-checksum-ip-generic", true);
        assert_eq!(&off[4..6], &family.to_ne_bytes());
        assert_eq!(&off[6..8], &(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        assert_eq!(&off[16..18], &[ETHTOOL_MSG_FEATURES_SET, 1]);
        let top = attributes(&off[20..]);
        assert_eq!(top.len(), 2);
        // The header: device index 7, replies omitted.
        assert_eq!(top[0].0, ETHTOOL_A_FEATURES_HEADER);
        assert_eq!(
            attributes(top[0].1),
            [
                (ETHTOOL_A_HEADER_DEV_INDEX, &7u32.to_ne_bytes()[..]),
                (
                    ETHTOOL_A_HEADER_FLAGS,
                    &ETHTOOL_FLAG_OMIT_REPLY.to_ne_bytes()[..]
                )
            ]
        );
        // WANTED → BITS → BIT → NAME, and no NOMASK anywhere.
        assert_eq!(top[1].0, ETHTOOL_A_FEATURES_WANTED);
        let wanted = attributes(top[1].1);
        assert_eq!(wanted.len(), 1);
        assert_eq!(wanted[0].0, ETHTOOL_A_BITSET_BITS);
        let bit = attributes(attributes(wanted[0].1)[0].1);
        assert_eq!(
            bit,
            [(ETHTOOL_A_BITSET_BIT_NAME, &b"tx-checksum-ip-generic\0"[..])]
        );
        // Nested attributes carry NLA_F_NESTED (strict validation requires it).
        let wanted_type = u16::from_ne_bytes([off[20 + 20 + 2], off[20 + 20 + 3]]);
        assert_eq!(wanted_type, ETHTOOL_A_FEATURES_WANTED | NLA_F_NESTED);
        // On: the same, plus the empty VALUE flag.
        let on_bit = attributes(attributes(attributes(attributes(&on[20..])[1].1)[0].1)[0].1);
        assert_eq!(on_bit.len(), 2);
        assert_eq!(on_bit[1], (ETHTOOL_A_BITSET_BIT_VALUE, &[][..]));
        assert_eq!(on.len(), off.len() + 4);
    }

    #[test]
    fn a_get_reply_lists_the_active_features_by_name() {
        let bit = |name: &str| {
            nest(
                ETHTOOL_A_BITSET_BITS_BIT,
                &[string(ETHTOOL_A_BITSET_BIT_NAME, name)],
            )
        };
        let active = |names: &[&str]| {
            let bits: Vec<Vec<u8>> = names.iter().map(|n| bit(n)).collect();
            nest(
                ETHTOOL_A_FEATURES_ACTIVE,
                &[nest(ETHTOOL_A_BITSET_BITS, &bits)],
            )
        };
        let reply = active(&["tx-checksum-ip-generic", "tx-gso-partial"]);
        assert_eq!(is_active(&reply, "tx-checksum-ip-generic"), Some(true));
        assert_eq!(
            is_active(&reply, "tx-checksum"),
            Some(false),
            "a prefix is not the name"
        );
        assert_eq!(
            is_active(&active(&["highdma"]), "tx-checksum-ip-generic"),
            Some(false)
        );
        assert_eq!(is_active(&[], "tx-checksum-ip-generic"), None);
        // Garbage does not panic.
        assert_eq!(is_active(&[0xff, 0xff, 4, 0, 1], "x"), None);
        assert!(parse(&[1, 2, 3]).is_empty());
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
    }
}
