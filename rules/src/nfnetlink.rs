//! The few nftables netlink messages weft sends itself (no `nft` process): read the
//! ruleset generation, ask whether a table exists, delete a table. Encoding and decoding
//! are pure functions; [`NfSocket`] sends them.
//!
//! Message layout: `nlmsghdr` (16 bytes, host order), `nfgenmsg` (family, version 0,
//! res_id big-endian), then attributes (`nlattr`: length, type, payload padded to 4).
//! Changes go in a batch (`NFNL_MSG_BATCH_BEGIN` ... `NFNL_MSG_BATCH_END`).

use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use std::io;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_GEN_ID: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const HEADER: usize = 16;

/// netfilter protocol families.
pub const NFPROTO_UNSPEC: u8 = 0;
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

const fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

fn message(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) -> Vec<u8> {
    let len = HEADER + 4 + attrs.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
    out
}

/// A NUL-terminated string attribute, padded to 4 bytes.
fn string_attr(kind: u16, value: &str) -> Vec<u8> {
    let len = 4 + value.len() + 1;
    let mut out = Vec::with_capacity(len.next_multiple_of(4));
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value.as_bytes());
    out.push(0);
    out.resize(len.next_multiple_of(4), 0);
    out
}

/// `NFT_MSG_GETGEN`: the ruleset generation.
pub fn get_generation(seq: u32) -> Vec<u8> {
    message(
        nft_type(NFT_MSG_GETGEN),
        NLM_F_REQUEST,
        seq,
        NFPROTO_UNSPEC,
        0,
        &[],
    )
}

/// `NFT_MSG_GETTABLE` for one table (answered by the table or ENOENT).
pub fn get_table(seq: u32, family: u8, name: &str) -> Vec<u8> {
    message(
        nft_type(NFT_MSG_GETTABLE),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        family,
        0,
        &string_attr(NFTA_TABLE_NAME, name),
    )
}

/// A batch deleting one table; the `NFT_MSG_DELTABLE` has sequence number `seq + 1`.
pub fn delete_table(seq: u32, family: u8, name: &str) -> Vec<u8> {
    let mut out = message(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        NFPROTO_UNSPEC,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    out.extend(message(
        nft_type(NFT_MSG_DELTABLE),
        NLM_F_REQUEST | NLM_F_ACK,
        seq + 1,
        family,
        0,
        &string_attr(NFTA_TABLE_NAME, name),
    ));
    out.extend(message(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq + 2,
        NFPROTO_UNSPEC,
        NFNL_SUBSYS_NFTABLES,
        &[],
    ));
    out
}

/// One message of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `NLMSG_ERROR`: 0 for an acknowledgement, else a negative errno.
    Error { seq: u32, code: i32 },
    /// `NFT_MSG_NEWGEN` with its generation ID.
    Generation { seq: u32, id: u32 },
    /// `NFT_MSG_NEWTABLE`: the table asked for exists.
    Table { seq: u32 },
    /// Anything else.
    Other { seq: u32 },
}

/// Splits a buffer received from the socket into replies (malformed tails are ignored).
pub fn parse(buf: &[u8]) -> Vec<Reply> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= HEADER {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < HEADER || len > rest.len() {
            break;
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
        let body = &rest[HEADER..len];
        out.push(match kind {
            NLMSG_ERROR if body.len() >= 4 => Reply::Error {
                seq,
                code: i32::from_ne_bytes([body[0], body[1], body[2], body[3]]),
            },
            k if k == nft_type(NFT_MSG_NEWGEN) => match generation_id(body) {
                Some(id) => Reply::Generation { seq, id },
                None => Reply::Other { seq },
            },
            k if k == nft_type(NFT_MSG_NEWTABLE) => Reply::Table { seq },
            NLMSG_DONE => Reply::Other { seq },
            _ => Reply::Other { seq },
        });
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    out
}

/// `NFTA_GEN_ID` of a NEWGEN body (after the nlmsghdr).
fn generation_id(body: &[u8]) -> Option<u32> {
    let mut attrs = body.get(4..)?;
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == NFTA_GEN_ID && len == 8 {
            return Some(u32::from_be_bytes([attrs[4], attrs[5], attrs[6], attrs[7]]));
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    None
}

/// A netfilter netlink socket in the current network namespace. Requests are answered
/// by the kernel while it handles the send, so the socket is non-blocking and a read
/// that finds nothing is an error, never a wait.
#[derive(Debug)]
pub struct NfSocket {
    socket: Socket,
    seq: u32,
}

impl NfSocket {
    pub fn open() -> io::Result<NfSocket> {
        let socket = Socket::new(NETLINK_NETFILTER)?;
        socket.set_non_blocking(true)?;
        Ok(NfSocket { socket, seq: 1 })
    }

    fn next_seq(&mut self, count: u32) -> u32 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(count);
        seq
    }

    /// Sends `request` and returns the reply that ends the exchange for sequence `seq`.
    fn exchange(
        &mut self,
        request: &[u8],
        seq: u32,
        done: impl Fn(&Reply) -> bool,
    ) -> io::Result<Reply> {
        self.socket.send_to(request, &SocketAddr::new(0, 0), 0)?;
        // Bounded: the kernel's answer to one request is a few messages.
        for _ in 0..16 {
            let (buf, _) = self.socket.recv_from_full()?;
            for reply in parse(&buf) {
                let reply_seq = match &reply {
                    Reply::Error { seq, .. }
                    | Reply::Generation { seq, .. }
                    | Reply::Table { seq }
                    | Reply::Other { seq } => *seq,
                };
                if reply_seq == seq && done(&reply) {
                    return Ok(reply);
                }
            }
        }
        Err(io::Error::other("no answer from nftables"))
    }

    /// The current ruleset generation: it changes with every nftables transaction.
    pub fn generation(&mut self) -> io::Result<u32> {
        let seq = self.next_seq(1);
        match self.exchange(&get_generation(seq), seq, |_| true)? {
            Reply::Generation { id, .. } => Ok(id),
            Reply::Error { code, .. } => Err(io::Error::from_raw_os_error(-code)),
            other => Err(io::Error::other(format!("unexpected answer {other:?}"))),
        }
    }

    /// Whether the table exists.
    pub fn table_exists(&mut self, family: u8, name: &str) -> io::Result<bool> {
        let seq = self.next_seq(1);
        let reply = self.exchange(&get_table(seq, family, name), seq, |r| {
            matches!(r, Reply::Table { .. } | Reply::Error { .. })
        })?;
        match reply {
            Reply::Table { .. } => Ok(true),
            Reply::Error { code, .. } if code == -libc_enoent() => Ok(false),
            Reply::Error { code, .. } => Err(io::Error::from_raw_os_error(-code)),
            other => Err(io::Error::other(format!("unexpected answer {other:?}"))),
        }
    }

    /// Deletes the table; `Ok(false)` when there was none.
    pub fn delete_table(&mut self, family: u8, name: &str) -> io::Result<bool> {
        let seq = self.next_seq(3);
        let reply = self.exchange(&delete_table(seq, family, name), seq + 1, |r| {
            matches!(r, Reply::Error { .. })
        })?;
        match reply {
            Reply::Error { code: 0, .. } => Ok(true),
            Reply::Error { code, .. } if code == -libc_enoent() => Ok(false),
            Reply::Error { code, .. } => Err(io::Error::from_raw_os_error(-code)),
            other => Err(io::Error::other(format!("unexpected answer {other:?}"))),
        }
    }
}

const fn libc_enoent() -> i32 {
    2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getgen_request_bytes() {
        let bytes = get_generation(7);
        assert_eq!(bytes.len(), 20);
        assert_eq!(&bytes[0..4], &20u32.to_ne_bytes());
        assert_eq!(&bytes[4..6], &0x0a10u16.to_ne_bytes());
        assert_eq!(&bytes[6..8], &1u16.to_ne_bytes());
        assert_eq!(&bytes[8..12], &7u32.to_ne_bytes());
        assert_eq!(&bytes[16..20], &[0, 0, 0, 0]);
    }

    #[test]
    fn table_name_attribute_is_nul_terminated_and_padded() {
        let bytes = get_table(1, NFPROTO_IPV6, "flannel-ipv6");
        // 16 + 4 + attr(4 + 13 -> 20)
        assert_eq!(bytes.len(), 40);
        assert_eq!(bytes[16], NFPROTO_IPV6);
        assert_eq!(&bytes[20..22], &17u16.to_ne_bytes());
        assert_eq!(&bytes[22..24], &1u16.to_ne_bytes());
        assert_eq!(&bytes[24..36], b"flannel-ipv6");
        assert_eq!(&bytes[36..40], &[0, 0, 0, 0]);
    }

    #[test]
    fn delete_is_a_batch_of_three() {
        let bytes = delete_table(10, NFPROTO_IPV4, "flannel-ipv4");
        let replies = parse(&bytes);
        assert_eq!(
            replies,
            [
                Reply::Other { seq: 10 },
                Reply::Other { seq: 11 },
                Reply::Other { seq: 12 }
            ]
        );
        // Batch begin carries the nftables subsystem as res_id, big-endian.
        assert_eq!(&bytes[18..20], &[0, 10]);
        assert_eq!(&bytes[24..26], &0x0a02u16.to_ne_bytes());
    }

    #[test]
    fn parses_generation_and_errors() {
        let mut gen_attr = Vec::new();
        gen_attr.extend_from_slice(&8u16.to_ne_bytes());
        gen_attr.extend_from_slice(&NFTA_GEN_ID.to_ne_bytes());
        gen_attr.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        let mut buf = message(nft_type(NFT_MSG_NEWGEN), 0, 3, 0, 0, &gen_attr);
        let mut err = message(NLMSG_ERROR, 0, 4, 0, 0, &[]);
        // An error body starts with the errno where nfgenmsg would be.
        err.truncate(HEADER);
        err.extend_from_slice(&(-2i32).to_ne_bytes());
        err[0..4].copy_from_slice(&20u32.to_ne_bytes());
        buf.extend(err);
        assert_eq!(
            parse(&buf),
            [
                Reply::Generation {
                    seq: 3,
                    id: 0x0102_0304
                },
                Reply::Error { seq: 4, code: -2 }
            ]
        );
        // Garbage and truncation do not panic.
        assert!(parse(&[1, 2, 3]).is_empty());
        assert!(parse(&buf[..30]).len() <= 1);
    }
}
