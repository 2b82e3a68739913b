//! Property tests of weft-subnet's parsers of outside data: lease values and keys from
//! etcd, net-conf.json, and Node objects from the Kubernetes API. For any input each
//! returns `Ok` or `Err` and never panics (a panic would stop weftd on one malformed
//! peer); where cheap, values also survive a round trip. Inputs come from
//! `weft_testkit`; every test is named `prop_*` (see docs/testing.md).

mod config;
mod kube;
mod lease;

use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use weft_subnet::family::Net;

/// Any IPv4 (or IPv6) network, host bits cleared, of any prefix length. Built without
/// filtering, so that no case is ever rejected.
pub fn net(v6: bool) -> impl Strategy<Value = Net> {
    let width: u8 = if v6 { 128 } else { 32 };
    (any::<u128>(), 0..=width).prop_map(move |(bits, prefix)| {
        let ip = if v6 {
            IpAddr::V6(Ipv6Addr::from(bits))
        } else {
            IpAddr::V4(Ipv4Addr::from(bits as u32))
        };
        Net::new_masked(ip, prefix)
    })
}
