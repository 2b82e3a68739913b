//! Route notifications from a node's namespace, timestamped on arrival: how the
//! benchmarks see the moment a change reaches the kernel.

use super::netns::block_on_in;
use futures::StreamExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RouteChange {
    New,
    Del,
}

/// IPv4 route notifications in `netns` (destination, new or deleted, arrival time) on a
/// channel; the thread ends when the receiver is dropped and the next message arrives.
pub fn watch_routes(netns: &str) -> mpsc::Receiver<(String, RouteChange, Instant)> {
    let (tx, rx) = mpsc::channel();
    let netns = netns.to_string();
    std::thread::spawn(move || {
        block_on_in(&netns, move || async move {
            use rtnetlink::packet_route::RouteNetlinkMessage as M;
            use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
            let (conn, _, mut messages) =
                rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Ipv4Route])
                    .unwrap();
            tokio::spawn(conn);
            while let Some((message, _)) = messages.next().await {
                let now = Instant::now();
                let rtnetlink::packet_core::NetlinkPayload::InnerMessage(inner) = message.payload
                else {
                    continue;
                };
                let (route, change) = match inner {
                    M::NewRoute(r) => (r, RouteChange::New),
                    M::DelRoute(r) => (r, RouteChange::Del),
                    _ => continue,
                };
                let dst = route.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(ip.to_string()),
                    _ => None,
                });
                if let Some(dst) = dst
                    && tx.send((dst, change, now)).is_err()
                {
                    return;
                }
            }
        })
    });
    std::thread::sleep(Duration::from_millis(200));
    rx
}

/// Waits (bounded) for a `change` notification about `dst`; its arrival time.
pub fn wait_route(
    rx: &mpsc::Receiver<(String, RouteChange, Instant)>,
    dst: &str,
    change: RouteChange,
    limit: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (seen, kind, at) = rx.recv_timeout(left).ok()?;
        if seen == dst && kind == change {
            return Some(at);
        }
    }
}

/// Drains pending notifications.
pub fn drain<T>(rx: &mpsc::Receiver<T>) {
    while rx.try_recv().is_ok() {}
}
