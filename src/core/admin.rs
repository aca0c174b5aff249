//! The plain-HTTP admin endpoint (`[admin] listen`): `/metrics`
//! (Prometheus / OpenMetrics text), `/healthz` and `/status` (JSON).
//!
//! Promises: it reads the same atomics and snapshots as the data path and
//! takes no lock the data path waits on for more than a few instructions;
//! every admin connection is bounded (headers within 2 s, whole connection
//! within 60 s, at most 64 at once); it never shows keys or certificates.
//! `/healthz` is 200 while serving and 503 once draining.

use std::convert::Infallible;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use serde::Serialize;
use smol::lock::Semaphore;
use smol::{Async, Executor, Timer};
use smol_hyper::rt::{FuturesIo, SmolTimer};
use tracing::{debug, warn};

use super::metrics;
use super::runtime::timeout;
use super::server::Server;

/// Admin connections open at once; more get a 503 and are closed.
const MAX_CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves the admin endpoint on `listener` until the returned future is dropped.
pub async fn serve(server: Arc<Server>, ex: Arc<Executor<'static>>, listener: Async<TcpListener>) {
    let registry = Arc::new(metrics::registry(&server));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("admin accept failed: {e}");
                Timer::after(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = slots.try_acquire_arc() else {
            debug!(%peer, "admin: too many connections; answered 503");
            // A probe gets an answer rather than a silent close (bounded: 100 ms).
            let mut s = stream;
            let busy = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            let _ = timeout(
                Duration::from_millis(100),
                futures_lite::AsyncWriteExt::write_all(&mut s, busy),
            )
            .await;
            continue;
        };
        let server = server.clone();
        let registry = registry.clone();
        ex.spawn(async move {
            let _slot = slot; // released when the connection ends, however it ends
            let svc = hyper::service::service_fn(move |req| {
                let resp = respond(&server, &registry, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(SmolTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(FuturesIo::new(stream), svc);
            match timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, "admin connection: {e}"),
                Err(_) => debug!(%peer, "admin connection cut after {CONNECTION_TIMEOUT:?}"),
            }
        })
        .detach();
    }
}

fn respond<B>(server: &Arc<Server>, registry: &Registry, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => match metrics::render(registry) {
            Ok(body) => with_type(
                StatusCode::OK,
                body.into_bytes(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
            Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed\n"),
        },
        "/healthz" => {
            if server.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::OK, "ok\n")
            }
        }
        "/status" => match serde_json::to_vec_pretty(&status(server)) {
            Ok(mut body) => {
                body.push(b'\n');
                with_type(StatusCode::OK, body, "application/json")
            }
            Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding status failed\n"),
        },
        "/" => text(StatusCode::OK, "tlb admin: /metrics /healthz /status\n"),
        _ => text(StatusCode::NOT_FOUND, "not found; try /metrics, /healthz or /status\n"),
    }
}

fn text(code: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(code, body.as_bytes().to_vec(), "text/plain; charset=utf-8")
}

fn with_type(code: StatusCode, body: Vec<u8>, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// `/status`: the whole picture, as JSON.
#[derive(Debug, Serialize)]
pub struct Status {
    /// `serving` or `draining`.
    pub state: &'static str,
    pub uptime_seconds: u64,
    pub connections: ConnectionStatus,
    pub apps: Vec<AppStatus>,
    pub clients: Vec<ClientStatus>,
}

#[derive(Debug, Serialize)]
pub struct ConnectionStatus {
    pub active: u64,
    pub accepted: u64,
    pub proxied: u64,
    pub handshake_failures: u64,
    pub refused: u64,
}

#[derive(Debug, Serialize)]
pub struct AppStatus {
    pub name: String,
    pub listen: String,
    pub server_names: Vec<String>,
    /// `active` (checks) or `passive` (circuit breaker on real traffic only).
    pub health_mode: &'static str,
    pub active_connections: u64,
    pub connections: u64,
    pub upstreams: Vec<UpstreamStatus>,
}

#[derive(Debug, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub address: String,
    /// `up` or `down`.
    pub state: &'static str,
    pub active_connections: u32,
    pub connections: u64,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub last_check: Option<CheckStatus>,
    /// When the state last changed (RFC 3339), if it ever did.
    pub last_change: Option<String>,
    /// While down: consecutive good checks so far (it returns at `rise`).
    pub consecutive_successes: u32,
    /// Passive only, while down: milliseconds until the next half-open trial.
    pub retry_in_ms: Option<u64>,
    pub bytes_to_upstream: u64,
    pub bytes_to_client: u64,
}

#[derive(Debug, Serialize)]
pub struct CheckStatus {
    pub at: String,
    pub ok: bool,
    pub detail: String,
    pub took_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct ClientStatus {
    pub name: String,
    pub apps: Vec<String>,
    pub active_connections: u32,
    pub max_connections: u32,
    pub connection_rate: f64,
    pub burst: u32,
    pub connections: u64,
    pub refused: u64,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A consistent-enough snapshot of `server` (each number is read once).
pub fn status(server: &Server) -> Status {
    let g = server.current();
    let m = &server.metrics;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let apps = g
        .apps
        .iter()
        .zip(&g.config.apps)
        .map(|(a, cfg)| AppStatus {
            name: a.name.clone(),
            listen: cfg.listen.to_string(),
            server_names: cfg.server_names.clone(),
            health_mode: a.balancer.policy().mode(),
            active_connections: load(&a.stats.active),
            connections: load(&a.stats.handshakes),
            upstreams: a
                .balancer
                .upstreams()
                .iter()
                .map(|u| {
                    let h = u.health.snapshot();
                    let passive = a.balancer.policy().active.is_none();
                    UpstreamStatus {
                        name: u.name.clone(),
                        address: u.addr.to_string(),
                        state: if h.up { "up" } else { "down" },
                        active_connections: u.active(),
                        connections: u.total(),
                        consecutive_failures: h.consecutive_failures,
                        last_error: h.last_error,
                        last_check: h.last_check.map(|c| CheckStatus {
                            at: rfc3339(c.at),
                            ok: c.ok,
                            detail: c.detail,
                            took_ms: (c.took.as_secs_f64() * 1e6).round() / 1e3,
                        }),
                        last_change: h.last_change.map(rfc3339),
                        consecutive_successes: h.consecutive_successes,
                        retry_in_ms: h
                            .retry_in
                            .filter(|_| passive)
                            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                        bytes_to_upstream: load(&u.bytes_to_upstream),
                        bytes_to_client: load(&u.bytes_to_client),
                    }
                })
                .collect(),
        })
        .collect();
    let clients = g
        .config
        .clients
        .iter()
        .filter_map(|c| {
            let s = g.limiter.get(&c.name)?;
            Some(ClientStatus {
                name: c.name.clone(),
                apps: c.apps.clone(),
                active_connections: s.active(),
                max_connections: s.max_connections(),
                connection_rate: c.limits.connection_rate,
                burst: c.limits.burst,
                connections: s.total(),
                refused: s.refused(),
            })
        })
        .collect();
    Status {
        state: if server.is_draining() { "draining" } else { "serving" },
        uptime_seconds: server.uptime().as_secs(),
        connections: ConnectionStatus {
            active: load(&m.active),
            accepted: load(&m.accepted),
            proxied: load(&m.proxied),
            handshake_failures: m.handshake_failures(),
            refused: m.refused(),
        },
        apps,
        clients,
    }
}
