//! `weftd status`: asks a running weftd for `/debug/state` and prints it as a table.
//!
//! It talks to the health server (`--healthz-ip`/`--healthz-port`, as given to weftd, or
//! `--url`) with one plain HTTP/1.1 GET over a TCP connection: the server is weftd's own,
//! answers with a Content-Length and closes, so no HTTP client library is needed.
//!
//! Exit status: 0 when the node is ready and every peer is `ok` or `repaired`; 2 when it
//! answered but is not ready or some peer is not; 1 when it could not be asked.

use crate::cli::normalize_args;
use crate::state_view;
use clap::Parser;
use serde_json::Value;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// More than any page of 1,000 peers needs.
const MAX_ANSWER: u64 = 32 * 1024 * 1024;

/// See the module docs.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "weftd status",
    bin_name = "weftd status",
    about = "Shows this node's lease, backend and, per peer, the kernel entries weftd wants \
             and what it found (from a running weftd's /debug/state)"
)]
pub struct StatusCli {
    /// The address weftd's health server listens on (0.0.0.0 and :: mean this host).
    #[arg(long, env = "FLANNELD_HEALTHZ_IP", default_value = "127.0.0.1")]
    pub healthz_ip: String,
    /// The port weftd's health server listens on (weftd's --healthz-port).
    #[arg(long, env = "FLANNELD_HEALTHZ_PORT")]
    pub healthz_port: Option<u16>,
    /// The state URL instead, e.g. http://198.18.0.11:8081/debug/state (plain HTTP).
    #[arg(long)]
    pub url: Option<String>,
    /// Peers per page (at most 1000).
    #[arg(long, default_value_t = state_view::DEFAULT_LIMIT)]
    pub limit: usize,
    /// The first peer to show (see "next page" under the table).
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Only peers whose verdict is not ok.
    #[arg(long)]
    pub problems: bool,
    /// Print the JSON as weftd served it, instead of the table.
    #[arg(long)]
    pub json: bool,
}

impl StatusCli {
    /// `host:port` and the path with its query.
    fn target(&self) -> Result<(String, String), String> {
        let query = format!(
            "offset={}&limit={}&only={}",
            self.offset,
            self.limit,
            if self.problems { "problems" } else { "all" }
        );
        if let Some(url) = &self.url {
            let rest = url
                .strip_prefix("http://")
                .ok_or_else(|| format!("--url={url}: only http:// URLs are supported"))?;
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, "/debug/state"),
            };
            let separator = if path.contains('?') { '&' } else { '?' };
            return Ok((authority.to_string(), format!("{path}{separator}{query}")));
        }
        let Some(port) = self.healthz_port else {
            return Err("give --healthz-port (weftd's) or --url".into());
        };
        let ip: IpAddr = self
            .healthz_ip
            .parse()
            .map_err(|_| format!("--healthz-ip={}: not an IP address", self.healthz_ip))?;
        let ip = match ip {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Ok((
            SocketAddr::new(ip, port).to_string(),
            format!("/debug/state?{query}"),
        ))
    }
}

/// One GET; returns the status code and the body.
pub fn http_get(authority: &str, path: &str) -> Result<(u16, String), String> {
    let address = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let io = |e: std::io::Error| format!("{authority}: {e}");
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(io)?;
    parse_response(&answer)
}

/// Splits an HTTP/1.1 response into its status code and body.
fn parse_response(answer: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "the answer is not an HTTP response".to_string())?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "unexpected status line: {}",
                head.lines().next().unwrap_or("")
            )
        })?;
    Ok((code, body.to_string()))
}

/// Whether the node is ready and every peer is ok or repaired.
fn healthy(state: &Value) -> bool {
    let summary = &state["summary"];
    let fine = ["ok", "repaired"]
        .iter()
        .filter_map(|k| summary[*k].as_u64())
        .sum::<u64>();
    state["node"]["ready"].as_bool() == Some(true) && summary["peers"].as_u64() == Some(fine)
}

/// Runs `weftd status ARGS` (`args[0]` is the program, `args[1]` is `status`).
pub fn run(args: Vec<OsString>) -> ExitCode {
    let mut args = normalize_args(args);
    args.remove(1);
    let cli = StatusCli::parse_from(args);
    let (authority, path) = match cli.target() {
        Ok(target) => target,
        Err(problem) => {
            eprintln!("weftd status: {problem}");
            return ExitCode::FAILURE;
        }
    };
    let (code, body) = match http_get(&authority, &path) {
        Ok(answer) => answer,
        Err(problem) => {
            eprintln!("weftd status: {problem}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(state) = serde_json::from_str::<Value>(&body) else {
        eprintln!(
            "weftd status: http://{authority}{path} answered {code}: {}",
            body.trim()
        );
        return ExitCode::FAILURE;
    };
    if cli.json {
        println!("{state:#}");
    } else {
        print!("{}", state_view::status_table(&state));
    }
    if healthy(&state) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> StatusCli {
        let mut all = vec!["weftd"];
        all.extend(args);
        StatusCli::try_parse_from(normalize_args(all.iter().map(OsString::from).collect())).unwrap()
    }

    #[test]
    fn the_target_comes_from_weftds_flags_or_a_url() {
        assert_eq!(
            cli(&["-healthz-port=8081", "--problems"]).target(),
            Ok((
                "127.0.0.1:8081".into(),
                "/debug/state?offset=0&limit=100&only=problems".into()
            ))
        );
        assert_eq!(
            cli(&["--healthz-ip=0.0.0.0", "--healthz-port=9"])
                .target()
                .unwrap()
                .0,
            "127.0.0.1:9"
        );
        assert_eq!(
            cli(&["--healthz-ip=::", "--healthz-port=9"])
                .target()
                .unwrap()
                .0,
            "[::1]:9"
        );
        assert_eq!(
            cli(&[
                "--url=http://198.18.0.11:8081",
                "--offset=100",
                "--limit=50"
            ])
            .target(),
            Ok((
                "198.18.0.11:8081".into(),
                "/debug/state?offset=100&limit=50&only=all".into()
            ))
        );
        assert!(cli(&["--url=https://x/debug/state"]).target().is_err());
        assert!(cli(&[]).target().unwrap_err().contains("--healthz-port"));
    }

    #[test]
    fn responses_split_into_code_and_body() {
        let answer = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(answer), Ok((503, "{}".into())));
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn healthy_means_ready_with_every_peer_fine() {
        let state = |ready: bool, missing: u64| {
            serde_json::json!({
                "node": {"ready": ready},
                "summary": {"peers": 3 + missing, "ok": 2, "repaired": 1, "missing": missing},
            })
        };
        assert!(healthy(&state(true, 0)));
        assert!(!healthy(&state(true, 1)));
        assert!(!healthy(&state(false, 0)));
    }
}
