//! Health endpoints: `/healthz` (the process is alive) and `/readyz` (this node holds a
//! lease, the datapath is programmed and subnet.env is written). Readiness is truthful:
//! it turns false again, with the reason in the body, when the lease is lost. The same
//! server answers `/metrics` (Prometheus text format, see `metrics`) and `/debug/state`
//! (JSON, see `state_wire`).
//!
//! ## Limits
//! The port listens on `--healthz-ip`, 0.0.0.0 by default as in flannel, so anyone who
//! reaches the node can connect, every pod included. Whatever they send, the server's
//! cost stays bounded and probes keep being answered while the flood goes on
//! (docs/design.md, "The health server under a flood", has the measurements):
//! - **A thread of its own.** The server runs on its own thread and runtime, so a long
//!   reconcile pass (about 100 ms at 15,000 peers) or a slow datastore call never delays
//!   a probe, and a flood never delays the datapath.
//! - **Room for every address** ([`admission`]): one source address holds at most
//!   `--healthz-max-connections-per-address` connections (32), the server at most
//!   `--healthz-max-connections` (256, [`connection_cap`]). Over either limit the *oldest
//!   idle* connection (no request yet) of that address, or of the address holding the
//!   most, is closed, and the new one is served: a probe, which sends its request at
//!   once, is never what a flood pushes out. Counted in
//!   `weft_health_connections_shed_total` by reason.
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
//! - **Never more than a quarter of the fd limit** ([`connection_cap`]): the health port
//!   cannot take the descriptors etcd, netlink and the subnet.env writer need.
//! - **Accept errors back off** from 10 ms doubling to 1 s (a successful accept resets
//!   it). At the fd limit `accept` fails at once, again and again; retrying at once spun
//!   a core. Errors are logged through a [`LogLimiter`]: once, on change, every 30 s.

pub mod admission;

use crate::log_limit::{LogLimiter, REMINDER_PERIOD, Verdict};
use crate::metrics::{self, Metrics};
use crate::readiness::Readiness;
use crate::state_channel::{StateClient, Unavailable};
use crate::state_view::StateQuery;
use crate::state_wire::StateDoc;
use admission::{Admission, ConnectionId, ConnectionTable};
pub use admission::{Limits, REFUSED, ShedReason};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tracing::{debug, warn};
use weft_subnet::backoff::Backoff;

/// See the module docs.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// See the module docs.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(5);
/// Default of `--healthz-max-connections`.
pub const MAX_CONNECTIONS: u16 = 256;
/// Default of `--healthz-max-connections-per-address`: an eighth of the server, far
/// above what one prober or scraper needs (one or two at a time).
pub const MAX_CONNECTIONS_PER_ADDRESS: u16 = 32;
/// See [`listen`]; tokio's default is 1024.
const BACKLOG: u32 = 4096;
/// hyper's smallest allowed read buffer.
const READ_BUFFER: usize = 8192;
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How many connections the server serves at once: `wanted`, but never more than a
/// quarter of the soft fd limit (`None`: unknown), and at least one.
pub fn connection_cap(wanted: usize, fd_soft_limit: Option<u64>) -> usize {
    let quarter = fd_soft_limit.map_or(u64::MAX, |limit| limit / 4);
    usize::try_from(quarter)
        .unwrap_or(usize::MAX)
        .min(wanted)
        .max(1)
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

/// Starts the health server on a thread of its own, listening on `address`, and returns
/// the address it bound once it listens. `limits` are the wanted ones; the capacity is
/// lowered to a quarter of the fd limit.
pub async fn start(
    address: SocketAddr,
    limits: Limits,
    endpoints: Endpoints,
) -> std::io::Result<SocketAddr> {
    let limits = Limits {
        capacity: connection_cap(limits.capacity, fd_soft_limit()),
        ..limits
    };
    let (bound_tx, bound_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("weftd-health".to_string())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = bound_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match listen(address) {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                        return;
                    }
                };
                let _ = bound_tx.send(listener.local_addr());
                debug!(?limits, "health server limits");
                serve(listener, endpoints, limits).await;
            });
        })?;
    bound_rx
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("the health server's thread ended")))
}

/// The listening socket, with a backlog of [`BACKLOG`] (the kernel caps it at
/// `net.core.somaxconn`, 4096 by default): a flood's connections wait there while the
/// health thread is off the CPU, and a probe's SYN is dropped only when it is full.
fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std's and tokio's bind: a restarted weftd can listen again at once.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

type Table = Arc<Mutex<ConnectionTable<oneshot::Sender<()>>>>;

/// Locks the table; a panic elsewhere cannot leave it inconsistent (every change is one
/// call), so a poisoned lock is used as it is.
fn lock(table: &Table) -> std::sync::MutexGuard<'_, ConnectionTable<oneshot::Sender<()>>> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The accept loop: admits connections by the [`admission`] rules, and backs off on
/// accept errors.
async fn serve(listener: TcpListener, endpoints: Endpoints, limits: Limits) {
    let table: Table = Arc::new(Mutex::new(ConnectionTable::new(limits)));
    let mut backoff = Backoff::new(ACCEPT_BACKOFF_FIRST, ACCEPT_BACKOFF_MAX);
    let mut accept_errors = LogLimiter::new(REMINDER_PERIOD);
    let mut shedding = Shedding::new(limits);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
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
        let (shed_tx, shed_rx) = oneshot::channel();
        let admission = lock(&table).admit(peer.ip(), shed_tx);
        let (id, shed) = match admission {
            Admission::Admitted(id) => (id, None),
            Admission::AdmittedShedding {
                id,
                shed,
                shed_address,
                reason,
            } => (id, Some((shed, shed_address, reason))),
            Admission::Refused(reason) => {
                // Dropping the stream closes it.
                shedding.refused(reason, peer.ip(), &endpoints.metrics);
                continue;
            }
        };
        // Registered before any await, so the entry goes with the task whatever happens.
        let registration = Registration {
            table: table.clone(),
            id,
        };
        if let Some((shed, address, reason)) = shed {
            // Dropping the sender wakes the shed connection's task, which closes it.
            // Yielding lets it run before the next accept: a backlog of a flood would
            // otherwise be accepted in one go (tokio's budget is 128), each new connection
            // open before the one it replaces is closed, and the server would briefly hold
            // half as many descriptors again as its cap.
            drop(shed);
            shedding.shed(reason, address, &endpoints.metrics);
            tokio::task::yield_now().await;
        }
        tokio::spawn(serve_connection(
            stream,
            endpoints.clone(),
            registration,
            shed_rx,
        ));
    }
}

/// A connection's place in the table, given back when its task ends (whichever way).
struct Registration {
    table: Table,
    id: ConnectionId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.table).closed(self.id);
    }
}

/// Serves one request on `stream` within the limits of the module docs, unless the
/// table sheds it first (`shed` resolves).
async fn serve_connection(
    stream: TcpStream,
    endpoints: Endpoints,
    registration: Registration,
    shed: oneshot::Receiver<()>,
) {
    let table = registration.table.clone();
    let id = registration.id;
    let service = hyper::service::service_fn(move |request| {
        lock(&table).in_service(id);
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
    // report. Past the lifetime, or when shed, dropping the connection closes it.
    tokio::select! {
        served = tokio::time::timeout(CONNECTION_LIFETIME, connection) => match served {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!("health connection closed: {e}"),
            Err(_) => debug!("health connection closed after {CONNECTION_LIFETIME:?}"),
        },
        _ = shed => {}
    }
    drop(registration);
}

/// Counts and logs the connections closed before their request: each one in the
/// metrics, in the log once per kind, then a reminder every 30 s while it goes on.
struct Shedding {
    limits: Limits,
    logs: [LogLimiter; 3],
}

impl Shedding {
    fn new(limits: Limits) -> Shedding {
        Shedding {
            limits,
            logs: std::array::from_fn(|_| LogLimiter::new(REMINDER_PERIOD)),
        }
    }

    /// An idle connection from `address` was closed to make room.
    fn shed(&mut self, reason: ShedReason, address: IpAddr, metrics: &Metrics) {
        metrics.record_health_shed(reason.label());
        let (index, message) = match reason {
            ShedReason::AddressLimit => (
                0,
                "health server: an address holds its limit of connections \
                 (--healthz-max-connections-per-address); closing its oldest idle ones",
            ),
            ShedReason::ServerFull => (
                1,
                "health server: at its limit of connections (--healthz-max-connections); \
                 closing the oldest idle ones of the address holding the most",
            ),
        };
        self.log(index, message, address);
    }

    /// A new connection from `address` was closed: every slot it could take is answering.
    fn refused(&mut self, reason: ShedReason, address: IpAddr, metrics: &Metrics) {
        metrics.record_health_shed(REFUSED);
        let message = match reason {
            ShedReason::AddressLimit => {
                "health server: an address holds its limit of connections, all answering \
                 requests; closing its new ones"
            }
            ShedReason::ServerFull => {
                "health server: every connection is answering a request; closing new ones"
            }
        };
        self.log(2, message, address);
    }

    fn log(&mut self, index: usize, message: &str, address: IpAddr) {
        let limits = self.limits;
        match self.logs[index].failure(message, Instant::now()) {
            Verdict::New => warn!(%address, ?limits, "{message}"),
            Verdict::Reminder { unlogged, .. } => {
                warn!(%address, ?limits, "{message} ({unlogged} more since the last line)")
            }
            Verdict::Quiet => {}
        }
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
                Ok(state) => (StatusCode::OK, JSON, json_text(&state)),
                Err(Unavailable::Starting) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    JSON,
                    json_text(&StateDoc::starting(&endpoints.readiness.get())),
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

/// A document as `/debug/state` sends it: pretty JSON, one trailing newline.
fn json_text(doc: &StateDoc) -> String {
    match serde_json::to_string_pretty(doc) {
        Ok(text) => text + "\n",
        // Plain data of strings and numbers: serializing cannot fail; say so if it did.
        Err(e) => format!("{{\"error\": \"cannot serialize the state: {e}\"}}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_channel;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn endpoints(readiness: Arc<Readiness>) -> (Endpoints, state_channel::StateInbox) {
        let metrics = Arc::new(Metrics::new(
            crate::metrics::SubnetManager::Etcd,
            readiness.clone(),
        ));
        let (state, inbox) = state_channel::channel();
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
            let reason = format!("a stand-in page at offset {}", request.query.offset);
            let _ = request.reply.send(StateDoc::starting(&Err(reason)));
        });
        let state = Request::get("/debug/state?offset=7").body(()).unwrap();
        let response = respond(&state, &endpoints).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[hyper::header::CONTENT_TYPE],
            "application/json"
        );
        assert!(
            body(response)
                .await
                .contains("\"not_ready_reason\": \"a stand-in page at offset 7\"")
        );
        let bad = Request::get("/debug/state?limit=all").body(()).unwrap();
        assert_eq!(
            respond(&bad, &endpoints).await.status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn the_cap_leaves_three_quarters_of_the_fds_to_the_daemon() {
        assert_eq!(connection_cap(256, None), 256);
        assert_eq!(
            connection_cap(usize::from(MAX_CONNECTIONS), Some(1_048_576)),
            256
        );
        assert_eq!(connection_cap(256, Some(1024)), 256);
        assert_eq!(connection_cap(256, Some(64)), 16);
        assert_eq!(connection_cap(1000, Some(1_048_576)), 1000, "as asked");
        assert_eq!(
            connection_cap(256, Some(2)),
            1,
            "one connection at the very least"
        );
        assert_eq!(connection_cap(0, None), 1);
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

    async fn start(capacity: usize, per_address: usize) -> (SocketAddr, Arc<Readiness>) {
        let readiness = Readiness::new("no lease yet");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        // The inbox is dropped: /debug/state answers "starting" here.
        let (endpoints, _) = endpoints(readiness.clone());
        let limits = Limits {
            capacity,
            per_address,
        };
        tokio::spawn(serve(listener, endpoints, limits));
        (address, readiness)
    }

    #[tokio::test]
    async fn answers_one_request_and_closes_even_when_asked_to_keep_alive() {
        let (address, readiness) = start(4, 4).await;
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
        let (address, _) = start(4, 4).await;
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
        let (address, _) = start(4, 4).await;
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

    /// Shorter than the header timeout: a connection closed within it was shed.
    const SOON: Duration = Duration::from_millis(500);

    /// Reads from `stream` until the server closes it; `Err` when it is still open after
    /// `wait`.
    async fn closed_by_server(stream: &mut TcpStream, wait: Duration) -> Result<(), ()> {
        let mut buffer = [0u8; 512];
        loop {
            match tokio::time::timeout(wait, stream.read(&mut buffer)).await {
                Err(_) => return Err(()),
                Ok(Ok(0) | Err(_)) => return Ok(()),
                Ok(Ok(_)) => {}
            }
        }
    }

    #[tokio::test]
    async fn over_the_limits_the_oldest_idle_connection_makes_room_for_the_newest() {
        // Two slots for one address: the two idle connections hold them.
        let (address, _) = start(8, 2).await;
        let mut oldest = TcpStream::connect(address).await.unwrap();
        let mut second = TcpStream::connect(address).await.unwrap();
        // Give the server a moment to admit both.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = Instant::now();
        let answer = exchange(address, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(start.elapsed() < Duration::from_secs(1), "answered at once");
        // The request took the oldest idle connection's place: it is closed, long before
        // the 2 s header timeout would have closed it.
        assert_eq!(closed_by_server(&mut oldest, SOON).await, Ok(()));
        assert!(
            start.elapsed() < HEADER_READ_TIMEOUT,
            "{:?}",
            start.elapsed()
        );
        // The second one was kept, and is answered when it asks.
        second
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        second.read_to_end(&mut answer).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn a_full_server_sheds_the_heaviest_address_not_a_newcomer() {
        // The server holds 3; 127.0.0.1 holds all 3, idle. A connection from 127.0.0.2
        // (another address of the loopback device) is served, and one of 127.0.0.1's
        // idle connections is closed for it.
        let (address, _) = start(3, 3).await;
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(TcpStream::connect(address).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut other = socket.connect(address).await.unwrap();
        other
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        other.read_to_end(&mut answer).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 200"));
        assert_eq!(
            closed_by_server(&mut idle[0], SOON).await,
            Ok(()),
            "the oldest"
        );
        // Well within its 2 s header timeout, which would close it too.
        assert_eq!(closed_by_server(&mut idle[1], SOON).await, Err(()), "kept");
    }
}
