//! Nexthop objects over netlink (`RTM_NEWNEXTHOP`, `RTM_DELNEXTHOP`, `RTM_GETNEXTHOP`,
//! Linux ≥ 5.3; see [`crate::nexthop`] for why weft uses them).
//!
//! netlink-packet-route 0.34 has no nexthop messages, so this module defines the one it
//! needs (`struct nhmsg` and the attributes weft uses) on netlink-packet-core's framing,
//! and talks over a socket of its own: requests, acknowledgements and dumps, one at a
//! time.
//!
//! weft never changes another program's nexthop: an object is created exclusively
//! (`NLM_F_EXCL`); when the id exists, it is read, and replaced only if it carries weft's
//! protocol. The same check guards deletion.

use super::dump::{self, BUFFER, Frame, messages, route_socket};
use super::{KernelError, KernelEvent};
use crate::ROUTE_PROTOCOL;
use rtnetlink::packet_core::{
    DecodeError, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NlasIterator,
};
use rtnetlink::sys::{AsyncSocket, AsyncSocketExt, TokioSocket};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use tokio::sync::mpsc;

const RTM_NEWNEXTHOP: u16 = 104;
const RTM_DELNEXTHOP: u16 = 105;
const RTM_GETNEXTHOP: u16 = 106;
const NHA_ID: u16 = 1;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
const RTNH_F_ONLINK: u32 = 4;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `struct nhmsg`: family, scope, protocol, reserved, flags (u32).
const HEADER_LEN: usize = 8;
const ENOENT: i32 = 2;
const EEXIST: i32 = 17;

/// Whether `errno` answers a request the kernel does not know: EOPNOTSUPP (95) or EINVAL
/// (22) from a kernel without nexthop objects (before 5.3).
pub(super) fn unknown_request(errno: i32) -> bool {
    matches!(errno, 95 | 22)
}

/// A nexthop object: a gateway on a device, by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nexthop {
    pub id: NonZeroU32,
    pub gateway: IpAddr,
    pub oif: u32,
    pub onlink: bool,
}

/// A nexthop object as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenNexthop {
    pub id: u32,
    pub protocol: u8,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
}

impl SeenNexthop {
    fn is(&self, want: &Nexthop) -> bool {
        self.gateway == Some(want.gateway)
            && self.oif == Some(want.oif)
            && self.onlink == want.onlink
    }
}

/// One nexthop message (request or answer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct NexthopMessage {
    kind: u16,
    family: u8,
    protocol: u8,
    flags: u32,
    id: Option<u32>,
    oif: Option<u32>,
    gateway: Option<IpAddr>,
}

impl NexthopMessage {
    fn attributes(&self) -> Vec<(u16, Vec<u8>)> {
        let mut attributes = Vec::new();
        if let Some(id) = self.id {
            attributes.push((NHA_ID, id.to_ne_bytes().to_vec()));
        }
        if let Some(oif) = self.oif {
            attributes.push((NHA_OIF, oif.to_ne_bytes().to_vec()));
        }
        match self.gateway {
            Some(IpAddr::V4(v4)) => attributes.push((NHA_GATEWAY, v4.octets().to_vec())),
            Some(IpAddr::V6(v6)) => attributes.push((NHA_GATEWAY, v6.octets().to_vec())),
            None => {}
        }
        attributes
    }

    fn seen(&self) -> Option<SeenNexthop> {
        Some(SeenNexthop {
            id: self.id?,
            protocol: self.protocol,
            gateway: self.gateway,
            oif: self.oif,
            onlink: self.flags & RTNH_F_ONLINK != 0,
        })
    }
}

/// An attribute's length with its 4-byte header, padded to 4 bytes.
fn padded(value_len: usize) -> usize {
    (4 + value_len + 3) & !3
}

impl NetlinkSerializable for NexthopMessage {
    fn message_type(&self) -> u16 {
        self.kind
    }

    fn buffer_len(&self) -> usize {
        HEADER_LEN
            + self
                .attributes()
                .iter()
                .map(|(_, v)| padded(v.len()))
                .sum::<usize>()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        buffer.fill(0);
        buffer[0] = self.family;
        buffer[2] = self.protocol;
        buffer[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        let mut at = HEADER_LEN;
        for (kind, value) in self.attributes() {
            let length = 4 + value.len();
            buffer[at..at + 2].copy_from_slice(&(length as u16).to_ne_bytes());
            buffer[at + 2..at + 4].copy_from_slice(&kind.to_ne_bytes());
            buffer[at + 4..at + length].copy_from_slice(&value);
            at += padded(value.len());
        }
    }
}

impl NetlinkDeserializable for NexthopMessage {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        if payload.len() < HEADER_LEN {
            return Err(DecodeError::from("nexthop message shorter than its header"));
        }
        let mut message = NexthopMessage {
            kind: header.message_type,
            family: payload[0],
            protocol: payload[2],
            flags: u32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]),
            ..NexthopMessage::default()
        };
        let u32_of = |value: &[u8]| {
            <[u8; 4]>::try_from(value)
                .map(u32::from_ne_bytes)
                .map_err(|_| DecodeError::from("nexthop attribute is not 4 bytes"))
        };
        for attribute in NlasIterator::new(&payload[HEADER_LEN..]) {
            let attribute = attribute?;
            let value = attribute.value();
            match attribute.kind() {
                NHA_ID => message.id = Some(u32_of(value)?),
                NHA_OIF => message.oif = Some(u32_of(value)?),
                NHA_GATEWAY => {
                    message.gateway = match value.len() {
                        4 => <[u8; 4]>::try_from(value)
                            .ok()
                            .map(|b| Ipv4Addr::from(b).into()),
                        16 => <[u8; 16]>::try_from(value)
                            .ok()
                            .map(|b| Ipv6Addr::from(b).into()),
                        _ => return Err(DecodeError::from("nexthop gateway of odd length")),
                    }
                }
                _ => {}
            }
        }
        Ok(message)
    }
}

/// The multicast group of nexthop notifications (`RTNLGRP_NEXTHOP`): above 31, so it is
/// joined by socket option, not by the bind mask rtnetlink's connection uses.
const RTNLGRP_NEXTHOP: u32 = 32;
const ENOBUFS: i32 = 105;

/// Forwards nexthop notifications to `sender` (until it closes): deleting a nexthop
/// object deletes the routes through it without a route notification, so this is how a
/// hand-deleted object is heard of. A kernel without nexthop objects has no such group:
/// nothing to watch, and not an error.
pub(crate) fn watch(sender: mpsc::UnboundedSender<KernelEvent>) -> Result<(), KernelError> {
    let socket = route_socket(false)?;
    if let Err(e) = socket.socket_ref().add_membership(RTNLGRP_NEXTHOP) {
        tracing::debug!("no nexthop notifications on this kernel: {e}");
        return Ok(());
    }
    tokio::spawn(async move {
        let mut buffer = Vec::with_capacity(BUFFER);
        loop {
            buffer.clear();
            if let Err(e) = socket.recv(&mut buffer).await {
                let event = if e.raw_os_error() == Some(ENOBUFS) {
                    KernelEvent::Overrun
                } else {
                    tracing::warn!(
                        "no more nexthop notifications ({e}): a nexthop object deleted by \
                         hand is repaired by the reconcile timer's full pass from now on"
                    );
                    return;
                };
                if sender.send(event).is_err() {
                    return;
                }
                continue;
            }
            for event in notifications(&buffer) {
                if sender.send(event).is_err() {
                    return;
                }
            }
        }
    });
    Ok(())
}

/// The events in one datagram of nexthop notifications; weft's own additions dropped.
fn notifications(datagram: &[u8]) -> Vec<KernelEvent> {
    messages::<NexthopMessage>(datagram)
        .filter_map(|frame| match frame {
            Frame::Message(NetlinkMessage {
                payload: NetlinkPayload::InnerMessage(m),
                ..
            }) => Some(m),
            _ => None,
        })
        .filter_map(|m| {
            let deleted = m.kind == RTM_DELNEXTHOP;
            let own_addition = !deleted && m.protocol == ROUTE_PROTOCOL;
            (!own_addition).then_some(KernelEvent::Nexthop {
                id: m.id?,
                protocol: m.protocol,
                deleted,
            })
        })
        .collect()
}

/// A netlink socket for nexthop objects.
pub(crate) struct NexthopSocket {
    socket: TokioSocket,
    buffer: Vec<u8>,
    sequence: u32,
}

impl std::fmt::Debug for NexthopSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NexthopSocket").finish_non_exhaustive()
    }
}

/// How the kernel answered one request (its messages went to the caller one by one).
enum Answer {
    Done,
    Errno(i32),
}

impl NexthopSocket {
    /// A socket in the current network namespace (needs a tokio runtime).
    pub(crate) fn new() -> Result<NexthopSocket, KernelError> {
        Ok(NexthopSocket {
            socket: route_socket(true)?,
            buffer: Vec::with_capacity(BUFFER),
            sequence: 0,
        })
    }

    /// Every nexthop object of the namespace, handed to `each` as it is decoded (at
    /// 15,000 peers the decoded dump would be ~1 MB at once); `None` if the kernel has no
    /// nexthop objects (before 5.3: the message type is unknown).
    pub(crate) async fn dump(
        &mut self,
        mut each: impl FnMut(SeenNexthop),
    ) -> Result<Option<()>, KernelError> {
        let request = NexthopMessage {
            kind: RTM_GETNEXTHOP,
            ..NexthopMessage::default()
        };
        let mut each = |message: NexthopMessage| {
            if let Some(seen) = message.seen() {
                each(seen);
            }
        };
        match self.exchange(request, NLM_F_DUMP, &mut each).await? {
            Answer::Done => Ok(Some(())),
            Answer::Errno(errno) if unknown_request(errno) => Ok(None),
            Answer::Errno(errno) => Err(KernelError::Errno {
                op: "dump nexthops",
                errno,
            }),
        }
    }

    /// The nexthop object `id`, if it exists.
    pub(crate) async fn get(&mut self, id: NonZeroU32) -> Result<Option<SeenNexthop>, KernelError> {
        let request = NexthopMessage {
            kind: RTM_GETNEXTHOP,
            id: Some(id.get()),
            ..NexthopMessage::default()
        };
        let mut found = None;
        let mut keep = |message: NexthopMessage| found = found.or(message.seen());
        match self.exchange(request, 0, &mut keep).await? {
            Answer::Done => Ok(found),
            Answer::Errno(ENOENT) => Ok(None),
            Answer::Errno(errno) => Err(KernelError::Errno {
                op: "get nexthop",
                errno,
            }),
        }
    }

    /// Makes `want` exist: created, left alone when weft's object already is `want`,
    /// replaced when weft's object differs. Another program's object at this id fails.
    pub(crate) async fn ensure(&mut self, want: &Nexthop) -> Result<(), KernelError> {
        let request = NexthopMessage {
            kind: RTM_NEWNEXTHOP,
            family: match want.gateway {
                IpAddr::V4(_) => AF_INET,
                IpAddr::V6(_) => AF_INET6,
            },
            protocol: ROUTE_PROTOCOL,
            flags: if want.onlink { RTNH_F_ONLINK } else { 0 },
            id: Some(want.id.get()),
            oif: Some(want.oif),
            gateway: Some(want.gateway),
        };
        let create = NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK;
        match self.exchange(request.clone(), create, &mut drop).await? {
            Answer::Done => return Ok(()),
            Answer::Errno(EEXIST) => {}
            Answer::Errno(errno) => {
                return Err(KernelError::Errno {
                    op: "add nexthop",
                    errno,
                });
            }
        }
        match self.get(want.id).await? {
            Some(seen) if seen.protocol != ROUTE_PROTOCOL => {
                return Err(KernelError::Invalid(format!(
                    "nexthop id {} belongs to another program (protocol {}); the route goes \
                     without it from the next full pass",
                    want.id, seen.protocol
                )));
            }
            Some(seen) if seen.is(want) => return Ok(()),
            _ => {}
        }
        let replace = NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK;
        match self.exchange(request, replace, &mut drop).await? {
            Answer::Done => Ok(()),
            Answer::Errno(errno) => Err(KernelError::Errno {
                op: "replace nexthop",
                errno,
            }),
        }
    }

    /// Deletes weft's nexthop object `id` (which deletes the routes through it); one
    /// that is gone, or another program's, is left as it is.
    pub(crate) async fn delete(&mut self, id: NonZeroU32) -> Result<(), KernelError> {
        match self.get(id).await? {
            Some(seen) if seen.protocol == ROUTE_PROTOCOL => {}
            _ => return Ok(()),
        }
        let request = NexthopMessage {
            kind: RTM_DELNEXTHOP,
            id: Some(id.get()),
            ..NexthopMessage::default()
        };
        match self.exchange(request, NLM_F_ACK, &mut drop).await? {
            Answer::Done | Answer::Errno(ENOENT) => Ok(()),
            Answer::Errno(errno) => Err(KernelError::Errno {
                op: "delete nexthop",
                errno,
            }),
        }
    }

    /// Sends one request and reads its answer: the messages up to the end of a dump, the
    /// one message of a get (each handed to `each` as it is decoded), or the
    /// acknowledgement (an error code, 0 for success).
    async fn exchange(
        &mut self,
        request: NexthopMessage,
        flags: u16,
        each: &mut dyn FnMut(NexthopMessage),
    ) -> Result<Answer, KernelError> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let ack = flags & NLM_F_ACK != 0;
        let out = dump::request(request, flags, sequence);
        self.socket.send(&out).await.map_err(KernelError::Socket)?;
        loop {
            dump::receive(&mut self.socket, &mut self.buffer, "nexthop request").await?;
            for frame in messages::<NexthopMessage>(&self.buffer) {
                let decoded = match frame {
                    Frame::Message(message) => message,
                    Frame::Undecodable(e) | Frame::Broken(e) => {
                        return Err(KernelError::Invalid(format!("nexthop answer: {e}")));
                    }
                };
                if decoded.header.sequence_number != sequence {
                    continue;
                }
                match decoded.payload {
                    NetlinkPayload::InnerMessage(inner) => {
                        each(inner);
                        if !dump && !ack {
                            return Ok(Answer::Done);
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(Answer::Done),
                    NetlinkPayload::Error(error) => {
                        return Ok(match error.code {
                            None => Answer::Done,
                            Some(code) => Answer::Errno(-code.get()),
                        });
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_encodes_as_iproute2_sends_it_and_decodes_back() {
        let message = NexthopMessage {
            kind: RTM_NEWNEXTHOP,
            family: AF_INET,
            protocol: ROUTE_PROTOCOL,
            flags: RTNH_F_ONLINK,
            id: Some(0x1000_0005),
            oif: Some(7),
            gateway: Some("10.244.5.0".parse().unwrap()),
        };
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        // nhmsg, then NHA_ID, NHA_OIF, NHA_GATEWAY (8 bytes each with their headers).
        assert_eq!(bytes.len(), 8 + 8 + 8 + 8);
        assert_eq!(&bytes[..8], &[AF_INET, 0, 91, 0, 4, 0, 0, 0]);
        assert_eq!(&bytes[8..12], &[8, 0, 1, 0]);
        assert_eq!(&bytes[28..32], &[10, 244, 5, 0]);
        let mut header = NetlinkHeader::default();
        header.message_type = RTM_NEWNEXTHOP;
        assert_eq!(
            NexthopMessage::deserialize(&header, &bytes).unwrap(),
            message
        );
        let v6 = NexthopMessage {
            gateway: Some("fd00::1".parse().unwrap()),
            ..message
        };
        let mut bytes = vec![0; v6.buffer_len()];
        v6.serialize(&mut bytes);
        assert_eq!(NexthopMessage::deserialize(&header, &bytes).unwrap(), v6);
    }

    fn datagram(messages: &[NexthopMessage]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            let mut header = NetlinkHeader::default();
            header.message_type = m.kind;
            let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(m.clone()));
            message.finalize();
            let mut bytes = vec![0; message.buffer_len()];
            message.serialize(&mut bytes);
            out.extend(bytes);
        }
        out
    }

    #[test]
    fn notifications_report_deletions_and_foreign_changes_not_weft_additions() {
        let weft = |kind| NexthopMessage {
            kind,
            family: AF_INET,
            protocol: ROUTE_PROTOCOL,
            id: Some(7),
            ..NexthopMessage::default()
        };
        let foreign = NexthopMessage {
            protocol: 4,
            ..weft(RTM_NEWNEXTHOP)
        };
        let events = notifications(&datagram(&[
            weft(RTM_NEWNEXTHOP),
            weft(RTM_DELNEXTHOP),
            foreign,
        ]));
        assert_eq!(
            events,
            [
                KernelEvent::Nexthop {
                    id: 7,
                    protocol: ROUTE_PROTOCOL,
                    deleted: true
                },
                KernelEvent::Nexthop {
                    id: 7,
                    protocol: 4,
                    deleted: false
                },
            ]
        );
        // Garbage ends the datagram's events, no panic.
        assert_eq!(notifications(&[1, 2, 3]), []);
        let mut cut = datagram(&[weft(RTM_DELNEXTHOP)]);
        cut.truncate(cut.len() - 2);
        assert_eq!(notifications(&cut), []);
    }

    #[test]
    fn truncated_or_odd_answers_are_errors_not_panics() {
        let header = NetlinkHeader::default();
        assert!(NexthopMessage::deserialize(&header, &[2, 0, 91]).is_err());
        // An NHA_ID attribute of 3 bytes, and a gateway of 5.
        let bad_id = [2, 0, 91, 0, 0, 0, 0, 0, 7, 0, 1, 0, 1, 2, 3, 0];
        assert!(NexthopMessage::deserialize(&header, &bad_id).is_err());
        let bad_gateway = [2, 0, 91, 0, 0, 0, 0, 0, 9, 0, 6, 0, 1, 2, 3, 4, 5, 0, 0, 0];
        assert!(NexthopMessage::deserialize(&header, &bad_gateway).is_err());
        // An attribute longer than the message.
        let overlong = [2, 0, 91, 0, 0, 0, 0, 0, 40, 0, 1, 0, 1, 2, 3, 4];
        assert!(NexthopMessage::deserialize(&header, &overlong).is_err());
    }
}
