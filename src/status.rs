//! `weftd status`: asks a running weftd for `/debug/state` and prints it as a table.
//!
//! It talks to the health server (`--healthz-ip`/`--healthz-port`, as given to weftd, or
//! `--url`) with one HTTP/1.1 GET (hyper's client connection, the same HTTP stack the
//! server uses), and reads the answer into the same typed document the server sent
//! (`state_wire`).
//!
//! Exit status: 0 when the node is ready and every peer is `ok` or `repaired`; 2 when it
//! answered but is not ready or some peer is not; 1 when it could not be asked.

use crate::cli::normalize_args;
use crate::state_view;
use crate::state_wire::StateDoc;
use crate::status_table;
use clap::Parser;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// For the whole exchange once connected.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// More than any page of 1,000 peers needs.
const MAX_ANSWER: usize = 32 * 1024 * 1024;

/// Why `weftd status` could not show the state.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("--url={0}: only http:// URLs are supported")]
    NotHttp(String),
    #[error("give --healthz-port (weftd's) or --url")]
    NoTarget,
    #[error("--healthz-ip={0}: not an IP address")]
    BadIp(String),
    #[error("{authority}: {error}")]
    Resolve {
        authority: String,
        error: std::io::Error,
    },
    #[error("cannot connect to {authority}: {error}")]
    Connect {
        authority: String,
        error: std::io::Error,
    },
    #[error("{authority}: {error}")]
    Http {
        authority: String,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{authority}: no answer within {IO_TIMEOUT:?}")]
    Timeout { authority: String },
    #[error("http://{authority}{path} answered {code}: {body}")]
    NotState {
        authority: String,
        path: String,
        code: u16,
        body: String,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

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
    fn target(&self) -> Result<(String, String), StatusError> {
        let query = format!(
            "offset={}&limit={}&only={}",
            self.offset,
            self.limit,
            if self.problems { "problems" } else { "all" }
        );
        if let Some(url) = &self.url {
            let rest = url
                .strip_prefix("http://")
                .ok_or_else(|| StatusError::NotHttp(url.clone()))?;
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, "/debug/state"),
            };
            let separator = if path.contains('?') { '&' } else { '?' };
            return Ok((authority.to_string(), format!("{path}{separator}{query}")));
        }
        let port = self.healthz_port.ok_or(StatusError::NoTarget)?;
        let ip: IpAddr = self
            .healthz_ip
            .parse()
            .map_err(|_| StatusError::BadIp(self.healthz_ip.clone()))?;
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

/// One GET on a runtime of its own (`weftd status` is a short-lived client); returns
/// the status code and the body.
fn http_get(authority: &str, path: &str) -> Result<(u16, Bytes), StatusError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StatusError::Runtime)?;
    runtime.block_on(get(authority, path))
}

async fn get(authority: &str, path: &str) -> Result<(u16, Bytes), StatusError> {
    let stream = connect(authority).await?;
    let http = |error: Box<dyn std::error::Error + Send + Sync>| StatusError::Http {
        authority: authority.to_string(),
        error,
    };
    let exchange = async {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(e.into()))?;
        tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .body(Empty::<Bytes>::new())
            .map_err(|e| http(e.into()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http(e.into()))?;
        let code = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(http)?;
        Ok((code, body.to_bytes()))
    };
    tokio::time::timeout(IO_TIMEOUT, exchange)
        .await
        .map_err(|_| StatusError::Timeout {
            authority: authority.to_string(),
        })?
}

async fn connect(authority: &str) -> Result<tokio::net::TcpStream, StatusError> {
    let connect_error = |error| StatusError::Connect {
        authority: authority.to_string(),
        error,
    };
    let address = tokio::net::lookup_host(authority)
        .await
        .map_err(|error| StatusError::Resolve {
            authority: authority.to_string(),
            error,
        })?
        .next()
        .ok_or_else(|| StatusError::Resolve {
            authority: authority.to_string(),
            error: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
        })?;
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
        Ok(connected) => connected.map_err(connect_error),
        Err(_) => Err(connect_error(std::io::ErrorKind::TimedOut.into())),
    }
}

/// Asks for the state and reads the document.
fn fetch(authority: &str, path: &str) -> Result<(StateDoc, Bytes), StatusError> {
    let (code, body) = http_get(authority, path)?;
    match serde_json::from_slice::<StateDoc>(&body) {
        Ok(doc) => Ok((doc, body)),
        Err(_) => Err(StatusError::NotState {
            authority: authority.to_string(),
            path: path.to_string(),
            code,
            body: String::from_utf8_lossy(&body).trim().to_string(),
        }),
    }
}

/// Runs `weftd status ARGS` (`args[0]` is the program, `args[1]` is `status`).
pub fn run(args: Vec<OsString>) -> ExitCode {
    let mut args = normalize_args(args);
    args.remove(1);
    let cli = StatusCli::parse_from(args);
    let fetched = cli
        .target()
        .and_then(|(authority, path)| fetch(&authority, &path));
    let (doc, body) = match fetched {
        Ok(fetched) => fetched,
        Err(problem) => {
            eprintln!("weftd status: {problem}");
            return ExitCode::FAILURE;
        }
    };
    if cli.json {
        // As weftd served it (already pretty-printed JSON).
        print!("{}", String::from_utf8_lossy(&body));
    } else {
        print!("{}", status_table::render(&doc));
    }
    if doc.healthy() {
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
            cli(&["-healthz-port=8081", "--problems"]).target().unwrap(),
            (
                "127.0.0.1:8081".into(),
                "/debug/state?offset=0&limit=100&only=problems".into()
            )
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
            .target()
            .unwrap(),
            (
                "198.18.0.11:8081".into(),
                "/debug/state?offset=100&limit=50&only=all".into()
            )
        );
        assert_eq!(
            cli(&["--url=https://x/debug/state"])
                .target()
                .unwrap_err()
                .to_string(),
            "--url=https://x/debug/state: only http:// URLs are supported"
        );
        assert!(
            cli(&[])
                .target()
                .unwrap_err()
                .to_string()
                .contains("--healthz-port")
        );
    }

    #[test]
    fn healthy_means_ready_with_every_peer_fine() {
        let state = |ready: bool, missing: u64| {
            serde_json::from_value::<StateDoc>(serde_json::json!({
                "node": {"subnet": "10.244.1.0/24", "backend": "vxlan", "subnet_manager": "etcd",
                         "lease_expires_at": null, "ready": ready, "not_ready_reason": null},
                "last_pass": null,
                "summary": {"peers": 3 + missing, "ok": 2, "repaired": 1, "pending": 0,
                            "withdrawn": 0, "missing": missing, "skipped": 0, "rejected": 0},
                "page": {"offset": 0, "limit": 100, "only": "all", "matching": 0,
                         "returned": 0, "next_offset": null},
                "peers": [],
            }))
            .unwrap()
        };
        assert!(state(true, 0).healthy());
        assert!(!state(true, 1).healthy());
        assert!(!state(false, 0).healthy());
    }

    #[test]
    fn an_answer_that_is_not_the_state_is_shown_with_its_code() {
        // A server on this test's own loopback port that answers like a proxy would.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(
                b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 12\r\nconnection: close\r\n\r\nno upstream\n",
            );
        });
        let problem = fetch(&authority, "/debug/state?offset=0").unwrap_err();
        server.join().unwrap();
        assert_eq!(
            problem.to_string(),
            format!("http://{authority}/debug/state?offset=0 answered 502: no upstream")
        );
    }
}
