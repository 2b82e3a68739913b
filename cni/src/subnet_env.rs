//! Reading subnet.env, the file weftd (like flanneld) writes once it holds this node's
//! lease: [`parse`] applies flannel's plugin's rules to the bytes, [`load`] reads the file,
//! waiting a bounded time for it to appear.
//!
//! flannel's rules, kept exactly: one `KEY=VALUE` per line, split on the first `=`, no
//! quoting and no trimming, unknown keys ignored, a later line overriding an earlier one;
//! `*_NETWORK` are comma-separated CIDR lists, de-duplicated; `*_SUBNET` are single CIDRs
//! reduced to their network address; `FLANNEL_MTU` is a decimal `uint32`;
//! `FLANNEL_IPMASQ` is true iff its value is exactly `true`.

use crate::cidr::{Cidr, CidrError};
use std::io::Read as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often [`load`] looks for a missing subnet.env.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What subnet.env says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`: the cluster's IPv4 network(s).
    pub networks: Vec<Cidr>,
    /// `FLANNEL_SUBNET`: this node's IPv4 pod subnet (network address).
    pub subnet: Option<Cidr>,
    /// `FLANNEL_IPV6_NETWORK`.
    pub ipv6_networks: Vec<Cidr>,
    /// `FLANNEL_IPV6_SUBNET` (network address).
    pub ipv6_subnet: Option<Cidr>,
    /// `FLANNEL_MTU`.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`: whether weftd itself masquerades pod traffic.
    pub ipmasq: bool,
}

/// Why the content of subnet.env is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    Cidr(#[from] CidrError),
    /// Go's `strconv.ParseUint` text, as flannel reports it.
    #[error("strconv.ParseUint: parsing {value:?}: {reason}")]
    Mtu { value: String, reason: &'static str },
    /// A known key with no `=`. (flannel's plugin panics on such a line.)
    #[error("line {0:?} has no '='")]
    NoValue(String),
    /// Required keys that are absent, in flannel's order and spelling.
    #[error("missing {}", .0.join(", "))]
    Missing(Vec<&'static str>),
}

/// Why subnet.env could not be loaded. The messages keep flannel's wording (people and
/// alerts grep for it), except where weft says more about a file that never appeared.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file did not appear within the wait: weftd has no lease on this node yet.
    #[error(
        "{PREFIX}open {path}: no such file or directory (waited {waited:?}). weftd has not \
         leased a subnet on this node yet: it writes this file once it holds the node's lease \
         and has set up the node's network. To find out why not, read the log of weftd on this \
         node and query its /readyz endpoint (served on --healthz-port), which gives the \
         reason it is not ready"
    )]
    NotYetWritten { path: String, waited: Duration },
    /// Any other failure to read the file.
    #[error("{PREFIX}{op} {path}: {reason}{SUFFIX}")]
    Io {
        op: &'static str,
        path: String,
        reason: String,
    },
    /// flannel's `<file> is missing <list>`.
    #[error("{PREFIX}{path} is missing {}{SUFFIX}", .missing.join(", "))]
    Missing {
        path: String,
        missing: Vec<&'static str>,
    },
    /// A value that does not parse.
    #[error("{PREFIX}{0}{SUFFIX}")]
    Invalid(ParseError),
}

const PREFIX: &str = "failed to load flannel 'subnet.env' file: ";
const SUFFIX: &str = ". Check the flannel pod log for this node.";

/// Parses subnet.env content with flannel's rules.
pub fn parse(content: &[u8]) -> Result<SubnetEnv, ParseError> {
    let mut networks: Option<Vec<Cidr>> = None;
    let mut ipv6_networks: Option<Vec<Cidr>> = None;
    let (mut subnet, mut ipv6_subnet, mut mtu, mut ipmasq) = (None, None, None, None);

    for line in lines(content) {
        let line = String::from_utf8_lossy(line);
        let (key, value) = match line.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (line.as_ref(), None),
        };
        let known = matches!(
            key,
            "FLANNEL_NETWORK"
                | "FLANNEL_SUBNET"
                | "FLANNEL_IPV6_NETWORK"
                | "FLANNEL_IPV6_SUBNET"
                | "FLANNEL_MTU"
                | "FLANNEL_IPMASQ"
        );
        if !known {
            continue;
        }
        let value = value.ok_or_else(|| ParseError::NoValue(key.to_owned()))?;
        match key {
            "FLANNEL_NETWORK" => networks = Some(parse_network_list(value)?),
            "FLANNEL_IPV6_NETWORK" => ipv6_networks = Some(parse_network_list(value)?),
            "FLANNEL_SUBNET" => subnet = Some(Cidr::parse(value)?.network()),
            "FLANNEL_IPV6_SUBNET" => ipv6_subnet = Some(Cidr::parse(value)?.network()),
            "FLANNEL_MTU" => mtu = Some(parse_mtu(value)?),
            _ => ipmasq = Some(value == "true"),
        }
    }

    let networks = networks.unwrap_or_default();
    let ipv6_networks = ipv6_networks.unwrap_or_default();
    let mut missing = Vec::new();
    if networks.is_empty() && ipv6_networks.is_empty() {
        missing.extend(["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]);
    }
    if subnet.is_none() && ipv6_subnet.is_none() {
        missing.extend(["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]);
    }
    if mtu.is_none() {
        missing.push("FLANNEL_MTU");
    }
    if ipmasq.is_none() {
        missing.push("FLANNEL_IPMASQ");
    }
    match (mtu, ipmasq) {
        (Some(mtu), Some(ipmasq)) if missing.is_empty() => Ok(SubnetEnv {
            networks,
            subnet,
            ipv6_networks,
            ipv6_subnet,
            mtu,
            ipmasq,
        }),
        _ => Err(ParseError::Missing(missing)),
    }
}

/// Lines as Go's `bufio.Scanner` yields them: split on `\n`, one trailing `\r` dropped,
/// a final line without newline included, no empty token after a final newline.
fn lines(content: &[u8]) -> impl Iterator<Item = &[u8]> {
    let content = content.strip_suffix(b"\n").unwrap_or(content);
    let empty = content.is_empty();
    content
        .split(|b| *b == b'\n')
        .filter(move |_| !empty)
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
}

/// A comma-separated CIDR list; duplicates (by network address and prefix) dropped, first
/// occurrence kept.
fn parse_network_list(value: &str) -> Result<Vec<Cidr>, CidrError> {
    let mut out: Vec<Cidr> = Vec::new();
    for item in value.split(',') {
        let network = Cidr::parse(item)?.network();
        if !out.contains(&network) {
            out.push(network);
        }
    }
    Ok(out)
}

/// `strconv.ParseUint(value, 10, 32)`.
fn parse_mtu(value: &str) -> Result<u32, ParseError> {
    let err = |reason| ParseError::Mtu {
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err("invalid syntax"));
    }
    value.parse::<u32>().map_err(|_| err("value out of range"))
}

/// Reads and parses `path`. If it does not exist, looks again every [`POLL_INTERVAL`] until
/// `wait` has passed: weftd writes the file moments after it starts, and failing at once
/// would cost the pod a kubelet back-off cycle for nothing.
pub fn load(path: &Path, wait: Duration) -> Result<SubnetEnv, LoadError> {
    let shown = path.display().to_string();
    let start = Instant::now();
    loop {
        match std::fs::File::open(path) {
            Ok(mut file) => {
                let mut content = Vec::new();
                if let Err(e) = file.read_to_end(&mut content) {
                    let reason = go_io_reason(&e);
                    return Err(LoadError::Io {
                        op: "read",
                        path: shown,
                        reason,
                    });
                }
                return parse(&content).map_err(|e| match e {
                    ParseError::Missing(missing) => LoadError::Missing {
                        path: shown,
                        missing,
                    },
                    other => LoadError::Invalid(other),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let waited = start.elapsed();
                if waited >= wait {
                    return Err(LoadError::NotYetWritten {
                        path: shown,
                        waited: wait,
                    });
                }
                std::thread::sleep(POLL_INTERVAL.min(wait - waited));
            }
            Err(e) => {
                return Err(LoadError::Io {
                    op: "open",
                    path: shown,
                    reason: go_io_reason(&e),
                });
            }
        }
    }
}

/// The lower-case errno text Go puts in its file errors (`open X: permission denied`).
pub fn go_io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => "no such file or directory".into(),
        K::PermissionDenied => "permission denied".into(),
        K::IsADirectory => "is a directory".into(),
        K::NotADirectory => "not a directory".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    #[test]
    fn single_stack_as_weftd_writes_it() {
        let env = parse(
            b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        assert_eq!(
            env,
            SubnetEnv {
                networks: vec![cidr("10.244.0.0/16")],
                subnet: Some(cidr("10.244.1.0/24")),
                ipv6_networks: vec![],
                ipv6_subnet: None,
                mtu: 1450,
                ipmasq: true,
            }
        );
    }

    #[test]
    fn dual_stack() {
        let env = parse(
            b"FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\n\
              FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n\
              FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        assert_eq!(env.networks, vec![cidr("10.42.0.0/16")]);
        assert_eq!(env.subnet.unwrap().to_string(), "10.42.0.0/24");
        assert_eq!(env.ipv6_networks, vec![cidr("2001:cafe:42::/56")]);
        assert_eq!(env.ipv6_subnet.unwrap().to_string(), "2001:cafe:42::/64");
        assert!(!env.ipmasq);
    }

    #[test]
    fn ipv6_only() {
        let env = parse(
            b"FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        assert!(env.networks.is_empty() && env.subnet.is_none());
        assert_eq!(env.ipv6_subnet.unwrap().to_string(), "fc00::/64");
    }

    #[test]
    fn network_lists_are_split_on_commas_and_deduplicated() {
        let env = parse(
            b"FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16,10.1.0.0/16,10.1.99.1/16\n\
              FLANNEL_IPV6_NETWORK=fc00::/48,fc00:0::/48,fd00::/48\n\
              FLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        assert_eq!(
            env.networks,
            vec![cidr("10.1.0.0/16"), cidr("192.168.0.0/16")]
        );
        assert_eq!(
            env.ipv6_networks,
            vec![cidr("fc00::/48"), cidr("fd00::/48")]
        );
        // A different prefix length is a different network.
        let env = parse(
            b"FLANNEL_NETWORK=10.1.0.0/16,10.1.0.0/17\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1\nFLANNEL_IPMASQ=true",
        )
        .unwrap();
        assert_eq!(env.networks.len(), 2);
    }

    #[test]
    fn ipmasq_is_true_only_for_exactly_true() {
        for (value, expected) in [
            ("true", true),
            ("false", false),
            ("True", false),
            ("TRUE", false),
            ("1", false),
            ("yes", false),
            ("true ", false),
            (" true", false),
            ("", false),
        ] {
            let content = format!(
                "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ={value}\n"
            );
            assert_eq!(
                parse(content.as_bytes()).unwrap().ipmasq,
                expected,
                "{value:?}"
            );
        }
    }

    #[test]
    fn missing_keys_are_listed_in_flannels_order() {
        assert_eq!(
            parse(b"foo=bar"),
            Err(ParseError::Missing(vec![
                "FLANNEL_NETWORK",
                "FLANNEL_IPV6_NETWORK",
                "FLANNEL_SUBNET",
                "FLANNEL_IPV6_SUBNET",
                "FLANNEL_MTU",
                "FLANNEL_IPMASQ",
            ]))
        );
        assert_eq!(
            parse(b"FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1450\n"),
            Err(ParseError::Missing(vec!["FLANNEL_IPMASQ"]))
        );
        // Empty input, and keys that only look right (no trimming), are missing too.
        assert_eq!(
            parse(b"").unwrap_err().to_string(),
            "missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"
        );
        assert_eq!(
            parse(b"FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n FLANNEL_MTU=1450\nexport FLANNEL_IPMASQ=true\n"),
            Err(ParseError::Missing(vec!["FLANNEL_MTU", "FLANNEL_IPMASQ"]))
        );
    }

    #[test]
    fn missing_keys_message_is_flannels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        std::fs::write(
            &path,
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n",
        )
        .unwrap();
        let err = load(&path, Duration::ZERO).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "failed to load flannel 'subnet.env' file: {} is missing FLANNEL_MTU, FLANNEL_IPMASQ. \
                 Check the flannel pod log for this node.",
                path.display()
            )
        );
    }

    #[test]
    fn line_handling_follows_bufio_scanner() {
        // CRLF endings, no final newline, later lines override earlier ones, unknown keys
        // and values with '=' in them are fine.
        let env = parse(
            b"# comment\r\nFLANNEL_MTU=1\r\nFLANNEL_NETWORK=10.1.0.0/16\r\nOTHER=a=b\r\n\r\nFLANNEL_SUBNET=10.1.17.1/24\r\nFLANNEL_MTU=1400\r\nFLANNEL_IPMASQ=true",
        )
        .unwrap();
        assert_eq!(env.mtu, 1400);
        assert!(env.ipmasq);
    }

    #[test]
    fn bad_values_give_gos_messages() {
        let base =
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPMASQ=true\n";
        let with = |line: &str| {
            parse(format!("{base}{line}\n").as_bytes())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            with("FLANNEL_MTU=abc"),
            r#"strconv.ParseUint: parsing "abc": invalid syntax"#
        );
        assert_eq!(
            with("FLANNEL_MTU="),
            r#"strconv.ParseUint: parsing "": invalid syntax"#
        );
        assert_eq!(
            with("FLANNEL_MTU=-1"),
            r#"strconv.ParseUint: parsing "-1": invalid syntax"#
        );
        assert_eq!(
            with("FLANNEL_MTU=4294967296"),
            r#"strconv.ParseUint: parsing "4294967296": value out of range"#
        );
        assert_eq!(
            with("FLANNEL_SUBNET=10.1.17.1"),
            "invalid CIDR address: 10.1.17.1"
        );
        assert_eq!(
            with("FLANNEL_NETWORK=10.1.0.0/16, 10.2.0.0/16"),
            "invalid CIDR address:  10.2.0.0/16"
        );
        assert_eq!(with("FLANNEL_MTU"), r#"line "FLANNEL_MTU" has no '='"#);
        assert_eq!(
            parse(format!("{base}FLANNEL_MTU=01450").as_bytes())
                .unwrap()
                .mtu,
            1450
        );
    }

    #[test]
    fn invalid_values_are_wrapped_as_flannel_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        std::fs::write(&path, "FLANNEL_SUBNET=nope\n").unwrap();
        assert_eq!(
            load(&path, Duration::ZERO).unwrap_err().to_string(),
            "failed to load flannel 'subnet.env' file: invalid CIDR address: nope. \
             Check the flannel pod log for this node."
        );
    }

    #[test]
    fn a_missing_file_is_waited_for_then_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        let start = Instant::now();
        let err = load(&path, Duration::from_millis(300)).unwrap_err();
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        assert!(matches!(err, LoadError::NotYetWritten { .. }));
        assert_eq!(
            err.to_string(),
            format!(
                "failed to load flannel 'subnet.env' file: open {}: no such file or directory \
                 (waited 300ms). weftd has not leased a subnet on this node yet: it writes this \
                 file once it holds the node's lease and has set up the node's network. To find \
                 out why not, read the log of weftd on this node and query its /readyz endpoint \
                 (served on --healthz-port), which gives the reason it is not ready",
                path.display()
            )
        );
    }

    #[test]
    fn a_file_that_appears_during_the_wait_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(250));
                let tmp = path.with_extension("tmp");
                std::fs::write(
                    &tmp,
                    "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
                )
                .unwrap();
                std::fs::rename(tmp, path).unwrap();
            })
        };
        let env = load(&path, Duration::from_secs(10)).unwrap();
        writer.join().unwrap();
        assert_eq!(env.mtu, 1450);
    }

    #[test]
    fn other_read_errors_are_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let err = load(dir.path(), Duration::from_secs(10)).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(
            err.to_string(),
            format!(
                "failed to load flannel 'subnet.env' file: read {}: is a directory. \
                 Check the flannel pod log for this node.",
                dir.path().display()
            )
        );
    }
}
