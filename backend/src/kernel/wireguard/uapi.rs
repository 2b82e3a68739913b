//! WireGuard's cross-platform userspace API (<https://www.wireguard.com/xplatform/>):
//! `key=value` lines over the unix socket `/var/run/wireguard/<device>.sock`, served by
//! userspace implementations (boringtun, wireguard-go) and spoken by `wg(8)`. Keys are
//! hex. A `get=1` request answers the device and its peers; a `set=1` request changes
//! them; both answers end with `errno=<n>` and a blank line.
//!
//! Small enough to write here: the crates that speak it (`wireguard-uapi`,
//! `defguard_wireguard_rs`) bring a second netlink stack or copy of
//! netlink-packet-route, for a protocol of a dozen keys. Render and parse are pure and
//! unit-tested; [`exchange`] does the socket.

use crate::tunnel::key::{KEY_LEN, PublicKey, SecretKey, from_hex};
use crate::tunnel::{PeerState, TunnelChange, TunnelState};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use weft_lease::family::Net;
use zeroize::Zeroizing;

/// Where userspace implementations put their sockets.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// The socket of device `name`.
pub fn socket_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

/// Why a UAPI exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    #[error("cannot talk to {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} answered errno={errno}")]
    Errno { path: PathBuf, errno: i32 },
    #[error("{path} answered a line weft cannot read: {line:?}")]
    Malformed { path: PathBuf, line: String },
}

/// The `set=1` request for `change` (secret: it may hold keys).
pub fn render_set(change: &TunnelChange) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::from("set=1\n"));
    if let Some(key) = &change.private_key {
        out.push_str("private_key=");
        out.push_str(&key.to_hex());
        out.push('\n');
    }
    if let Some(port) = change.listen_port {
        out.push_str(&format!("listen_port={port}\n"));
    }
    for key in &change.remove {
        out.push_str(&format!("public_key={}\nremove=true\n", key.to_hex()));
    }
    for (key, peer) in &change.set {
        out.push_str(&format!("public_key={}\n", key.to_hex()));
        out.push_str("preshared_key=");
        match &peer.psk {
            Some(psk) => out.push_str(&psk.to_hex()),
            // Zero clears a pre-shared key set before.
            None => out.push_str(&"0".repeat(2 * KEY_LEN)),
        }
        out.push('\n');
        out.push_str(&format!("endpoint={}\n", peer.endpoint));
        out.push_str(&format!(
            "persistent_keepalive_interval={}\n",
            peer.keepalive
        ));
        out.push_str("replace_allowed_ips=true\n");
        for ip in &peer.allowed_ips {
            out.push_str(&format!("allowed_ip={ip}\n"));
        }
    }
    out.push('\n');
    out
}

/// The device's state from a `get=1` answer (without its `errno=` line).
pub fn parse_get(lines: &[String]) -> Result<TunnelState, String> {
    let mut state = TunnelState::default();
    let mut peer: Option<(PublicKey, PeerState)> = None;
    let mut handshake_sec = 0u64;
    let mut handshake_nsec = 0u32;
    for line in lines {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| "(a line without =)".to_string())?;
        // A malformed line is named, unless it may hold a key.
        let bad = || {
            if key.ends_with("_key") {
                format!("{key}=(not shown)")
            } else {
                line.clone()
            }
        };
        if key == "public_key" {
            if let Some((k, mut p)) = peer.take() {
                p.last_handshake = handshake(handshake_sec, handshake_nsec);
                state.peers.insert(k, p);
            }
            (handshake_sec, handshake_nsec) = (0, 0);
            let k = from_hex(value).ok_or_else(bad)?;
            peer = Some((PublicKey(k), PeerState::default()));
            continue;
        }
        let Some((_, p)) = peer.as_mut() else {
            match key {
                "private_key" => {
                    let bytes = Zeroizing::new(from_hex(value).ok_or_else(bad)?);
                    if *bytes != [0; KEY_LEN] {
                        let secret = SecretKey::from_bytes(*bytes);
                        state.public_key = Some(secret.public_key());
                        state.private_key = Some(secret);
                    }
                }
                "listen_port" => state.listen_port = value.parse().map_err(|_| bad())?,
                // boringtun answers its public key instead of the private one.
                "own_public_key" => {
                    state.public_key = Some(PublicKey(from_hex(value).ok_or_else(bad)?));
                }
                _ => {}
            }
            continue;
        };
        match key {
            "preshared_key" => {
                let bytes = Zeroizing::new(from_hex(value).ok_or_else(bad)?);
                p.psk = (*bytes != [0; KEY_LEN]).then(|| SecretKey::from_bytes(*bytes));
            }
            "endpoint" => {
                p.endpoint = Some(value.parse::<SocketAddr>().map_err(|_| bad())?);
            }
            "persistent_keepalive_interval" => {
                p.keepalive = value.parse().map_err(|_| bad())?;
            }
            "allowed_ip" => p.allowed_ips.push(value.parse::<Net>().map_err(|_| bad())?),
            "rx_bytes" => p.rx_bytes = value.parse().map_err(|_| bad())?,
            "tx_bytes" => p.tx_bytes = value.parse().map_err(|_| bad())?,
            "last_handshake_time_sec" => handshake_sec = value.parse().map_err(|_| bad())?,
            "last_handshake_time_nsec" => handshake_nsec = value.parse().map_err(|_| bad())?,
            _ => {}
        }
    }
    if let Some((k, mut p)) = peer.take() {
        p.last_handshake = handshake(handshake_sec, handshake_nsec);
        state.peers.insert(k, p);
    }
    Ok(state)
}

/// Before this, a handshake time is not a date: boringtun answers how long ago the
/// handshake was (the protocol, the kernel and wireguard-go: when, since the epoch).
const FIRST_DATE: u64 = 946_684_800; // 2000-01-01

/// Zero means no handshake yet (`wg show` would print a date in 1970); a small value is
/// an age (see [`FIRST_DATE`]), turned into a time here.
fn handshake(sec: u64, nsec: u32) -> Option<SystemTime> {
    if sec == 0 && nsec == 0 {
        return None;
    }
    let value = Duration::new(sec, nsec.min(999_999_999));
    if sec < FIRST_DATE {
        return SystemTime::now().checked_sub(value);
    }
    Some(SystemTime::UNIX_EPOCH + value)
}

/// Sends `request` to the socket at `path` and returns the answer's lines before its
/// `errno=` line; a non-zero errno is an error.
pub fn exchange(path: &Path, request: &str) -> Result<Vec<String>, UapiError> {
    let io = |source| UapiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(io)?;
    let timeout = Some(Duration::from_secs(5));
    stream.set_read_timeout(timeout).map_err(io)?;
    stream.set_write_timeout(timeout).map_err(io)?;
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut lines = Vec::new();
    // Bounded: a device with 100,000 peers answers about a million lines.
    for line in BufReader::new(stream).lines().take(4_000_000) {
        let line = line.map_err(io)?;
        if let Some(errno) = line.strip_prefix("errno=") {
            let errno = errno.parse().map_err(|_| UapiError::Malformed {
                path: path.to_path_buf(),
                line: line.clone(),
            })?;
            if errno != 0 {
                return Err(UapiError::Errno {
                    path: path.to_path_buf(),
                    errno,
                });
            }
            return Ok(lines);
        }
        if line.is_empty() {
            continue;
        }
        lines.push(line);
    }
    Err(UapiError::Malformed {
        path: path.to_path_buf(),
        line: "(the answer ended without errno=)".into(),
    })
}

/// Reads the device's state over its socket.
pub fn get(path: &Path) -> Result<TunnelState, UapiError> {
    let lines = exchange(path, "get=1\n\n")?;
    parse_get(&lines).map_err(|line| UapiError::Malformed {
        path: path.to_path_buf(),
        line,
    })
}

/// Applies `change` over the device's socket.
pub fn set(path: &Path, change: &TunnelChange) -> Result<(), UapiError> {
    exchange(path, &render_set(change)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::TunnelPeer;

    #[test]
    fn a_set_request_is_the_protocols_text() {
        let change = TunnelChange {
            device: "flannel-wg".into(),
            private_key: Some(SecretKey::from_bytes([0xab; 32])),
            listen_port: Some(51820),
            remove: vec![PublicKey([0x01; 32])],
            set: vec![(
                PublicKey([0x02; 32]),
                TunnelPeer {
                    endpoint: "[fd00::2]:51821".parse().unwrap(),
                    allowed_ips: vec![
                        "10.244.2.0/24".parse().unwrap(),
                        "fc00:0:0:2::/64".parse().unwrap(),
                    ],
                    keepalive: 25,
                    psk: None,
                },
            )],
        };
        let expected = format!(
            "set=1\nprivate_key={}\nlisten_port=51820\npublic_key={}\nremove=true\n\
             public_key={}\npreshared_key={}\nendpoint=[fd00::2]:51821\n\
             persistent_keepalive_interval=25\nreplace_allowed_ips=true\n\
             allowed_ip=10.244.2.0/24\nallowed_ip=fc00:0:0:2::/64\n\n",
            "ab".repeat(32),
            "01".repeat(32),
            "02".repeat(32),
            "0".repeat(64)
        );
        assert_eq!(*render_set(&change), expected);
    }

    #[test]
    fn a_get_answer_is_read_with_zero_meaning_none() {
        let text = format!(
            "private_key={}\nlisten_port=51820\npublic_key={}\npreshared_key={}\n\
             endpoint=198.18.0.12:51820\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n\
             tx_bytes=92\nrx_bytes=0\npersistent_keepalive_interval=0\nallowed_ip=10.244.2.0/24\n\
             public_key={}\npreshared_key={}\nlast_handshake_time_sec=1700000000\n\
             last_handshake_time_nsec=5\nrx_bytes=1000\ntx_bytes=2000\nallowed_ip=10.244.3.0/24\n\
             protocol_version=1",
            "ab".repeat(32),
            "02".repeat(32),
            "0".repeat(64),
            "03".repeat(32),
            "07".repeat(32),
        );
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let state = parse_get(&lines).unwrap();
        assert_eq!(state.private_key, Some(SecretKey::from_bytes([0xab; 32])));
        assert_eq!(state.listen_port, 51820);
        let first = &state.peers[&PublicKey([2; 32])];
        assert_eq!(first.psk, None);
        assert_eq!(first.last_handshake, None, "zero is never, not 1970");
        assert_eq!(first.endpoint, Some("198.18.0.12:51820".parse().unwrap()));
        assert_eq!((first.tx_bytes, first.rx_bytes), (92, 0));
        let second = &state.peers[&PublicKey([3; 32])];
        assert_eq!(second.psk, Some(SecretKey::from_bytes([7; 32])));
        assert_eq!(
            second.last_handshake,
            Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );
        assert_eq!(second.allowed_ips, vec!["10.244.3.0/24".parse().unwrap()]);
    }

    #[test]
    fn boringtuns_handshake_age_is_read_as_an_age() {
        let lines: Vec<String> = [
            format!("public_key={}", "02".repeat(32)),
            "last_handshake_time_sec=3".into(),
            "last_handshake_time_nsec=0".into(),
        ]
        .into();
        let state = parse_get(&lines).unwrap();
        let at = state.peers[&PublicKey([2; 32])].last_handshake.unwrap();
        let age = SystemTime::now().duration_since(at).unwrap();
        assert!(
            age >= Duration::from_secs(3) && age < Duration::from_secs(60),
            "{age:?}"
        );
    }

    #[test]
    fn a_malformed_answer_names_the_line_but_never_a_key() {
        let lines = vec!["listen_port=many".to_string()];
        assert_eq!(parse_get(&lines).unwrap_err(), "listen_port=many");
        let lines = vec![format!("private_key={}zz", "ab".repeat(31))];
        assert_eq!(parse_get(&lines).unwrap_err(), "private_key=(not shown)");
    }
}
