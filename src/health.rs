//! Health endpoints: `/healthz` (the process is alive) and `/readyz` (this node holds a
//! lease, the datapath is programmed and subnet.env is written). Readiness is truthful:
//! it turns false again, with the reason in the body, when the lease is lost.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// Whether the node is ready, and if not, why.
#[derive(Debug)]
pub struct Readiness {
    state: Mutex<Result<(), String>>,
}

impl Readiness {
    pub fn new(initial_reason: &str) -> Arc<Readiness> {
        Arc::new(Readiness {
            state: Mutex::new(Err(initial_reason.to_string())),
        })
    }

    pub fn set_ready(&self) {
        *self.lock() = Ok(());
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.lock() = Err(reason.into());
    }

    pub fn get(&self) -> Result<(), String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Result<(), String>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Binds the health server; the returned future serves until dropped.
pub async fn bind(
    address: SocketAddr,
    readiness: Arc<Readiness>,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()>)> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let serve = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let readiness = readiness.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = respond(&request, &readiness);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    };
    Ok((bound, serve))
}

fn respond<B>(request: &Request<B>, readiness: &Readiness) -> Response<Full<Bytes>> {
    let (status, body) = match request.uri().path() {
        "/healthz" => (StatusCode::OK, "weftd is running\n".to_string()),
        "/readyz" => match readiness.get() {
            Ok(()) => (StatusCode::OK, "weftd is ready\n".to_string()),
            Err(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("weftd is not ready yet: {reason}\n"),
            ),
        },
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_reports_reason() {
        let readiness = Readiness::new("no lease yet");
        let request = Request::get("/readyz").body(()).unwrap();
        assert_eq!(
            respond(&request, &readiness).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        readiness.set_ready();
        assert_eq!(respond(&request, &readiness).status(), StatusCode::OK);
        readiness.set_not_ready("lease lost");
        assert_eq!(readiness.get(), Err("lease lost".to_string()));
        let request = Request::get("/healthz").body(()).unwrap();
        assert_eq!(respond(&request, &readiness).status(), StatusCode::OK);
    }
}
