//! One device feature over ethtool's generic netlink family (Linux 5.6+): read whether a
//! named feature is active (`ETHTOOL_MSG_FEATURES_GET`) and turn it on or off
//! (`ETHTOOL_MSG_FEATURES_SET`), as `ethtool -k` / `ethtool -K` do. weft uses it for the
//! VXLAN device's `tx-checksum-ip-generic` (see `crate::offload`).
//!
//! Hand-encoded like `weft-rules`' netfilter messages: the `ethtool` crate reads features
//! but cannot set them, and would add a second netlink stack to the tree. Encoding and
//! decoding are pure functions with byte-level tests; [`EthtoolSocket`] sends them over
//! the generic netlink socket weft shares with WireGuard (`super::generic`).
//!
//! Layout (include/uapi/linux/ethtool_netlink.h, Documentation/networking/ethtool-netlink.rst):
//! `nlmsghdr`, `genlmsghdr` (cmd, version 1), then `ETHTOOL_A_FEATURES_HEADER` (nest:
//! `HEADER_DEV_INDEX`, `HEADER_FLAGS`) and, to set, `ETHTOOL_A_FEATURES_WANTED`: a verbose
//! bitset (nest: `BITSET_BITS` → `BITS_BIT` → `BIT_NAME`, and the `BIT_VALUE` flag for
//! on) without `NOMASK`, so only the named feature changes. A get's reply lists the
//! active features as a verbose bitset without mask: the names of the bits that are set.

use super::generic::{
    GenericSocket, NLM_F_ACK, NLM_F_REQUEST, Reply, attr, attributes, message, nest, string,
};
use std::io;

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
    socket: GenericSocket,
}

impl EthtoolSocket {
    /// Opens the socket and looks up the ethtool family (absent before Linux 5.6).
    pub fn open() -> io::Result<EthtoolSocket> {
        Ok(EthtoolSocket {
            socket: GenericSocket::open("ethtool")?,
        })
    }

    /// Whether feature `name` of device `index` is active.
    pub fn feature(&mut self, index: u32, name: &str) -> io::Result<bool> {
        let seq = self.socket.next_seq();
        let request = get_features(self.socket.family(), seq, index);
        match self.socket.exchange(&request, seq)? {
            Reply::Generic { attrs, .. } => is_active(&attrs, name)
                .ok_or_else(|| io::Error::other("no active features in the answer")),
            Reply::Error { code, .. } => Err(io::Error::from_raw_os_error(-code)),
        }
    }

    /// Turns feature `name` of device `index` on or off.
    pub fn set(&mut self, index: u32, name: &str, on: bool) -> io::Result<()> {
        let seq = self.socket.next_seq();
        let request = set_feature(self.socket.family(), seq, index, name, on);
        match self.socket.exchange(&request, seq)? {
            Reply::Error { code: 0, .. } | Reply::Generic { .. } => Ok(()),
            Reply::Error { code, .. } => Err(io::Error::from_raw_os_error(-code)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            wanted_type,
            ETHTOOL_A_FEATURES_WANTED | super::super::generic::NLA_F_NESTED
        );
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
    }
}
