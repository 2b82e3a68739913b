//! Health endpoints: `/healthz` (the process is alive) and `/readyz` (this node holds a
//! lease, the datapath is programmed and subnet.env is written). Readiness is truthful:
//! it turns false again, with the reason in the body, when the lease is lost. The same
//! server answers `/metrics` (Prometheus text format, see `metrics`) and `/debug/state`
//! (JSON, see `state_view`).
//!
//! ## Limits
//! The port listens on `--healthz-ip`, 0.0.0.0 by default as in flannel, so anyone who
//! reaches the node can connect. Whatever they send, the server's cost stays bounded and
//! `/readyz` keeps answering once the flood stops:
//! - **Request headers within 2 s** ([`HEADER_READ_TIMEOUT`]). A probe sends its request
//!   as soon as it connects and gives up after 1 s (kubelet's default probe timeout), so
//!   an honest client never comes close; an idle connection is closed after 2 s.
//! - **One request per connection, closed within 5 s in all** ([`CONNECTION_LIFETIME`]).
//!   kubelet's prober does not reuse connections, so keep-alive only served idle
//!   clients. Without keep-alive hyper closes right after the answer, even when the
//!   request announced a body it never sends (tested); the lifetime is the backstop that
//!   does not depend on such details of hyper.
//! - **Reads of at most 8 KiB** (hyper's minimum buffer): requests here are a line and a
//!   few headers; the default (~400 KiB per connection) let 256 slow clients hold 100 MB.
//! - **At most 256 connections at once** ([`connection_cap`]), fewer with a low fd limit:
//!   never more than a quarter of the soft `RLIMIT_NOFILE`, so the health port cannot
//!   take the descriptors etcd, netlink and the subnet.env writer need. 256 is far above
//!   what probes need (a few per second) and bounds memory to a few MB. Over the cap a
//!   new connection is closed at once: a probe then fails fast and is retried, instead
//!   of waiting in a queue behind the flood.
//! - **Accept errors back off** from 10 ms doubling to 1 s (a successful accept resets
//!   it). At the fd limit `accept` fails at once, again and again; retrying at once spun
//!   a core. Errors are logged through a [`LogLimiter`]: once, on change, every 30 s.

use crate::log_limit::{LogLimiter, REMINDER_PERIOD, Verdict};
use crate::metrics::{self, Metrics};
use crate::readiness::Readiness;
use crate::state_view::{self, StateClient, StateQuery, Unavailable};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};
use weft_subnet::backoff::Backoff;

/// See the module docs.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// See the module docs.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(5);
/// See the module docs.
pub const MAX_CONNECTIONS: usize = 256;
/// hyper's smallest allowed read buffer.
const READ_BUFFER: usize = 8192;
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How many connections the server serves at once, given the soft fd limit (`None`:
/// unknown): [`MAX_CONNECTIONS`], but never more than a quarter of the limit.
pub fn connection_cap(fd_soft_limit: Option<u64>) -> usize {
    let quarter = fd_soft_limit.map_or(u64::MAX, |limit| limit / 4);
    usize::try_from(quarter)
        .unwrap_or(usize::MAX)
        .clamp(1, MAX_CONNECTIONS)
}

fn fd_soft_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// What the endpoints answer from.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    pub state: StateClient,
}

/// Binds the health server; the returned future serves until dropped.
pub async fn bind(
    address: SocketAddr,
    endpoints: Endpoints,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()>)> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let cap = connection_cap(fd_soft_limit());
    debug!(max_connections = cap, "health server limits");
    Ok((bound, serve(listener, endpoints, cap)))
}

/// The accept loop: admits up to `cap` connections, closes the rest at once, and backs off
/// on accept errors.
async fn serve(listener: TcpListener, endpoints: Endpoints, cap: usize) {
    let slots = Arc::new(Semaphore::new(cap));
    let mut backoff = Backoff::new(ACCEPT_BACKOFF_FIRST, ACCEPT_BACKOFF_MAX);
    let mut accept_errors = LogLimiter::new(REMINDER_PERIOD);
    let mut rejections = LogLimiter::new(REMINDER_PERIOD);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                let delay = backoff.next_delay();
                log_accept_error(&mut accept_errors, &e, delay);
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        backoff.reset();
        // Errors are not reported as recovered: at the fd limit accepts alternate between
        // failing and succeeding, and each recovery line would make the next error news.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Dropping the stream closes it.
            log_rejection(&mut rejections, cap);
            continue;
        };
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            serve_connection(stream, endpoints).await;
            drop(slot);
        });
    }
}

/// Serves one request on `stream` within the limits of the module docs.
async fn serve_connection(stream: TcpStream, endpoints: Endpoints) {
    let service = hyper::service::service_fn(move |request| {
        let endpoints = endpoints.clone();
        async move { Ok::<_, std::convert::Infallible>(respond(&request, &endpoints).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(READ_BUFFER)
        .serve_connection(TokioIo::new(stream), service);
    // Errors here are the client's (a timeout, a malformed request, a reset): nothing to
    // report. Past the lifetime, dropping the connection closes it.
    match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("health connection closed: {e}"),
        Err(_) => debug!("health connection closed after {CONNECTION_LIFETIME:?}"),
    }
}

fn log_accept_error(limiter: &mut LogLimiter, error: &std::io::Error, delay: Duration) {
    let message = format!("health server cannot accept a connection: {error}");
    match limiter.failure(&message, Instant::now()) {
        Verdict::New => warn!("{message}; backing off (now {delay:?})"),
        Verdict::Reminder { unlogged, .. } => {
            warn!("{message}; backing off (now {delay:?}; {unlogged} more since the last line)")
        }
        Verdict::Quiet => debug!("{message}; backing off {delay:?}"),
    }
}

fn log_rejection(limiter: &mut LogLimiter, cap: usize) {
    let message = format!("health server at its limit of {cap} connections; closing new ones");
    match limiter.failure(&message, Instant::now()) {
        Verdict::New => warn!("{message}"),
        Verdict::Reminder { unlogged, .. } => {
            warn!("{message} ({unlogged} more closed since the last line)")
        }
        Verdict::Quiet => {}
    }
}

async fn respond<B>(request: &Request<B>, endpoints: &Endpoints) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    const JSON: &str = "application/json";
    let (status, content_type, body) = match request.uri().path() {
        "/healthz" => (StatusCode::OK, TEXT, "weftd is running\n".to_string()),
        "/readyz" => match endpoints.readiness.get() {
            Ok(()) => (StatusCode::OK, TEXT, "weftd is ready\n".to_string()),
            Err(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("weftd is not ready yet: {reason}\n"),
            ),
        },
        "/metrics" => (
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            endpoints.metrics.encode(),
        ),
        "/debug/state" => match StateQuery::parse(request.uri().query()) {
            Err(problem) => (StatusCode::BAD_REQUEST, TEXT, format!("{problem}\n")),
            Ok(query) => match endpoints.state.ask(query).await {
                Ok(state) => (StatusCode::OK, JSON, format!("{state:#}\n")),
                Err(Unavailable::Starting) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    JSON,
                    format!(
                        "{:#}\n",
                        state_view::starting_json(&endpoints.readiness.get())
                    ),
                ),
                Err(Unavailable::Busy) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "busy answering another /debug/state request; try again\n".to_string(),
                ),
            },
        },
        _ => (StatusCode::NOT_FOUND, TEXT, "not found\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn endpoints(readiness: Arc<Readiness>) -> (Endpoints, state_view::StateInbox) {
        let metrics = Arc::new(Metrics::new(
            crate::metrics::SubnetManager::Etcd,
            readiness.clone(),
        ));
        let (state, inbox) = state_view::channel();
        let endpoints = Endpoints {
            readiness,
            metrics,
            state,
        };
        (endpoints, inbox)
    }

    async fn body(response: Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt;
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn readiness_reports_reason() {
        let readiness = Readiness::new("no lease yet");
        let (endpoints, _inbox) = endpoints(readiness.clone());
        let request = Request::get("/readyz").body(()).unwrap();
        assert_eq!(
            respond(&request, &endpoints).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        readiness.set_ready();
        assert_eq!(respond(&request, &endpoints).await.status(), StatusCode::OK);
        readiness.set_not_ready("lease lost");
        assert_eq!(readiness.get(), Err("lease lost".to_string()));
        let request = Request::get("/healthz").body(()).unwrap();
        assert_eq!(respond(&request, &endpoints).await.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_and_state_are_served_with_their_content_types() {
        let readiness = Readiness::new("no lease yet");
        let (endpoints, mut inbox) = endpoints(readiness.clone());
        let response = respond(&Request::get("/metrics").body(()).unwrap(), &endpoints).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[hyper::header::CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert!(body(response).await.contains("\nweft_ready 0\n"));
        // Before a subnet is held: 503 with the reason, as JSON.
        let state = Request::get("/debug/state").body(()).unwrap();
        let response = respond(&state, &endpoints).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body(response)
                .await
                .contains("\"not_ready_reason\": \"no lease yet\"")
        );
        // Then the event loop answers the page asked for.
        inbox.start_serving();
        tokio::spawn(async move {
            let request = inbox.requests.recv().await.unwrap();
            let page = serde_json::json!({ "offset": request.query.offset });
            let _ = request.reply.send(page);
        });
        let state = Request::get("/debug/state?offset=7").body(()).unwrap();
        let response = respond(&state, &endpoints).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[hyper::header::CONTENT_TYPE],
            "application/json"
        );
        assert!(body(response).await.contains("\"offset\": 7"));
        let bad = Request::get("/debug/state?limit=all").body(()).unwrap();
        assert_eq!(
            respond(&bad, &endpoints).await.status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn the_cap_leaves_three_quarters_of_the_fds_to_the_daemon() {
        assert_eq!(connection_cap(None), MAX_CONNECTIONS);
        assert_eq!(connection_cap(Some(1_048_576)), MAX_CONNECTIONS);
        assert_eq!(connection_cap(Some(1024)), 256);
        assert_eq!(connection_cap(Some(64)), 16);
        assert_eq!(
            connection_cap(Some(2)),
            1,
            "one connection at the very least"
        );
    }

    /// Sends `request` on a fresh connection and reads until the server closes it. A
    /// connection the server resets counts as an empty answer.
    async fn exchange(address: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let _ = stream.write_all(request).await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer));
        let _ = read.await.expect("the server closes the connection");
        String::from_utf8_lossy(&answer).into_owned()
    }

    async fn start(cap: usize) -> (SocketAddr, Arc<Readiness>) {
        let readiness = Readiness::new("no lease yet");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        // The inbox is dropped: /debug/state answers "starting" here.
        let (endpoints, _) = endpoints(readiness.clone());
        tokio::spawn(serve(listener, endpoints, cap));
        (address, readiness)
    }

    #[tokio::test]
    async fn answers_one_request_and_closes_even_when_asked_to_keep_alive() {
        let (address, readiness) = start(4).await;
        let answer = exchange(
            address,
            b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            answer.ends_with("weftd is not ready yet: no lease yet\n"),
            "{answer}"
        );
        readiness.set_ready();
        let answer = exchange(address, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("weftd is running\n"), "{answer}");
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_header_timeout() {
        let (address, _) = start(4).await;
        let mut idle = TcpStream::connect(address).await.unwrap();
        let start = Instant::now();
        let mut buffer = [0u8; 512];
        let read = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buffer));
        // Closed without an answer, or with a 408 from hyper: either way, closed.
        let _ = read.await.expect("the server closes an idle connection");
        let waited = start.elapsed();
        assert!(
            waited >= HEADER_READ_TIMEOUT - Duration::from_millis(100)
                && waited < HEADER_READ_TIMEOUT + Duration::from_secs(1),
            "closed after {waited:?}"
        );
    }

    #[tokio::test]
    async fn a_request_with_an_unfinished_body_does_not_hold_the_connection() {
        let (address, _) = start(4).await;
        let mut stream = TcpStream::connect(address).await.unwrap();
        let start = Instant::now();
        let request = b"POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nab";
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(
            CONNECTION_LIFETIME + Duration::from_secs(1),
            stream.read_to_end(&mut answer),
        );
        let _ = read.await.expect("the server closes the connection");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn over_the_cap_new_connections_are_closed_at_once_and_slots_come_back() {
        let (address, _) = start(2).await;
        let first = TcpStream::connect(address).await.unwrap();
        let second = TcpStream::connect(address).await.unwrap();
        // Give the server a moment to admit both.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = Instant::now();
        let answer = exchange(address, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(answer, "", "closed without an answer");
        assert!(start.elapsed() < Duration::from_secs(1), "closed at once");
        drop((first, second));
        let answer = wait_for_answer(address).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    /// Tries `/healthz` every 50 ms for up to 5 s until it answers.
    async fn wait_for_answer(address: SocketAddr) -> String {
        for _ in 0..100 {
            let answer = exchange(address, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
            if !answer.is_empty() {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no answer within 5 s");
    }
}
