//! The plain-HTTP admin endpoint (`[admin] listen`): `/metrics`
//! (Prometheus / OpenMetrics text), `/healthz` and `/status` (JSON).
//!
//! Promises: it reads the same atomics and snapshots as the data path and
//! takes no lock the data path waits on for more than a few instructions;
//! every admin connection is bounded (headers within 2 s, whole connection
//! within 60 s, at most 64 at once and at most 8 from one source, an IPv4
//! address or an IPv6 /64, so a flood from one source leaves room for
//! scrapers elsewhere; over either cap, a 503 and close); it never shows
//! keys, certificates or the admin token. With `[admin] token_file`,
//! `/metrics` and `/status` need `Authorization: Bearer <token>` (checked in
//! constant time; otherwise a 401 that says nothing more) and the token a
//! reload brings applies to the next request; `/healthz` stays open for
//! probes. A listen address that is not loopback, without a token, is
//! warned about at start. `/healthz` is 200 while serving and 503 once
//! draining.
//!
//! `Server::run` does not serve it: callers [`bind`] `[admin] listen` and
//! [`spawn`] the endpoint next to `run`, dropping it once `run` returns.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::Result;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use serde::Serialize;
use smol::lock::Semaphore;
use smol::{Async, Executor, Task};
use smol_hyper::rt::{FuturesIo, SmolTimer};
use tracing::{debug, info, warn};

use crate::core::cluster::{Cluster, ClusterStatus};
use crate::core::config::Config;
use crate::core::ops::metrics;
use crate::core::pool::balancer::{Balancer, Upstream};
use crate::core::proxy::generation::Generation;
use crate::core::proxy::listener::{Listener, bind_listener};
use crate::core::proxy::server::Server;
use crate::core::rt::log::Throttle;
use crate::core::rt::net::source_of;
use crate::core::rt::timeout;

/// Admin connections open at once; more get a 503 and are closed.
const MAX_CONNECTIONS: usize = 64;
/// Admin connections open at once from one source (see [`source_of`](crate::core::rt::net::source_of)).
const MAX_PER_SOURCE: usize = 8;
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Binds `[admin] listen`, when the config has one (SO_REUSEADDR, backlog
/// 1024), for [`spawn`].
pub fn bind(config: &Config) -> Result<Option<TcpListener>> {
    config.admin.as_ref().map(|a| bind_listener(a.listen)).transpose()
}

/// Serves the admin endpoint of `server` on `listener` (bound by [`bind`])
/// in a task of `ex`, until the returned task is dropped. Spawn it next to
/// [`Server::run`] and drop it once `run` returns, so `/healthz` answers
/// 503 during the drain.
pub fn spawn(server: &Arc<Server>, ex: &Arc<Executor<'static>>, listener: TcpListener) -> Result<Task<()>> {
    let listener = Listener::new(listener)?;
    Ok(ex.spawn(serve(server.clone(), ex.clone(), listener)))
}

/// Serves the admin endpoint on `listener` until the returned future is dropped.
pub async fn serve(server: Arc<Server>, ex: Arc<Executor<'static>>, listener: Listener) {
    announce(&server, &listener);
    let registry = Arc::new(metrics::registry(&server));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let sources = Arc::new(Sources::default());
    let accept_errors = Throttle::new(Duration::from_secs(1));
    loop {
        let (stream, peer) = listener.accept(&accept_errors).await;
        let Some(slot) = slots.try_acquire_arc() else {
            busy(stream, peer, "all admin connection slots are taken").await;
            continue;
        };
        let Some(source_slot) = sources.try_acquire(peer.ip()) else {
            busy(stream, peer, "this source holds its share of admin connections").await;
            continue;
        };
        let server = server.clone();
        let registry = registry.clone();
        ex.spawn(async move {
            // Both released when the connection ends, however it ends.
            let _slots = (slot, source_slot);
            let svc = hyper::service::service_fn(move |req| {
                let resp = respond(&server, &registry, &req, peer);
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

/// Logs, once at start, who can reach the endpoint and what it asks of them.
fn announce(server: &Server, listener: &Listener) {
    let addr = listener.local_addr();
    info!("admin endpoint on http://{addr} (/metrics /healthz /status)");
    let Some(admin) = server.current().config.admin.clone() else {
        return;
    };
    if admin.token.is_some() {
        info!(
            "admin endpoint on {addr}: /metrics and /status need the bearer token of [admin] token_file; /healthz is open"
        );
    } else if !addr.ip().to_canonical().is_loopback() {
        warn!(
            "admin endpoint on {addr} is reachable from the network; /status lists client identities; set [admin] token_file or bind 127.0.0.1"
        );
    }
}

/// Answers 503 and closes (the write bounded to 100 ms), so a probe gets an
/// answer rather than a silent close.
async fn busy(mut stream: Async<TcpStream>, peer: SocketAddr, why: &str) {
    debug!(%peer, "admin: {why}; answered 503");
    let busy = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let _ = timeout(
        Duration::from_millis(100),
        futures_lite::AsyncWriteExt::write_all(&mut stream, busy),
    )
    .await;
}

/// Open admin connections per source: at most one entry per open
/// connection, removed when its last connection ends.
#[derive(Default)]
struct Sources(Mutex<HashMap<IpAddr, usize>>);

/// One connection's share of its source's cap; given back on drop.
struct SourceSlot {
    sources: Arc<Sources>,
    source: IpAddr,
}

impl Sources {
    fn try_acquire(self: &Arc<Self>, peer: IpAddr) -> Option<SourceSlot> {
        let source = source_of(peer);
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(source).or_default();
        if *n >= MAX_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            sources: self.clone(),
            source,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.sources.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// Whether `req` may see `/metrics` and `/status`: no token is configured,
/// or it carries `Authorization: Bearer <the token>`.
fn authorized<B>(server: &Server, req: &Request<B>) -> bool {
    let generation = server.current();
    let Some(token) = generation.config.admin.as_ref().and_then(|a| a.token.as_ref()) else {
        return true;
    };
    let Some(value) = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes) else {
        return false;
    };
    let Some(space) = value.iter().position(|&b| b == b' ') else {
        return false;
    };
    let (scheme, credentials) = value.split_at(space);
    scheme.eq_ignore_ascii_case(b"bearer") && token.matches(credentials.trim_ascii())
}

fn respond<B>(server: &Arc<Server>, registry: &Registry, req: &Request<B>, peer: SocketAddr) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let path = req.uri().path();
    if matches!(path, "/metrics" | "/status") && !authorized(server, req) {
        debug!(%peer, "admin: {path} without the right bearer token; answered 401");
        let mut r = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
        r.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tlb admin\""));
        return r;
    }
    match path {
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
    /// `[cluster]`, when configured: `mode` is `shared` or `local`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    /// Upstreams a reload removed, while connections to them are still open.
    pub draining_upstreams: Vec<DrainingUpstream>,
}

#[derive(Debug, Serialize)]
pub struct DrainingUpstream {
    pub app: String,
    pub name: String,
    pub address: String,
    pub active_connections: u32,
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
    /// `enforce`, or `audit` (would-be refusals admitted and counted).
    pub mode: &'static str,
    /// Connections audit mode admitted that enforce mode would refuse.
    pub audit_denied: u64,
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
    let apps = g
        .apps
        .iter()
        .zip(&g.config.apps)
        .map(|(a, cfg)| AppStatus {
            name: a.name.clone(),
            listen: cfg.listen.to_string(),
            server_names: cfg.server_names.clone(),
            health_mode: a.balancer.policy().mode(),
            mode: match cfg.mode {
                crate::core::config::AppMode::Enforce => "enforce",
                crate::core::config::AppMode::Audit => "audit",
            },
            audit_denied: load(&a.stats.audit_denied),
            active_connections: load(&a.stats.active),
            connections: load(&a.stats.handshakes),
            upstreams: a
                .balancer
                .upstreams()
                .iter()
                .map(|u| upstream_status(&a.balancer, u))
                .collect(),
        })
        .collect();
    let clients = client_statuses(&g);
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
        cluster: server.cluster().map(Cluster::status),
        draining_upstreams: server
            .draining_upstreams()
            .into_iter()
            .map(|(app, u)| DrainingUpstream {
                app,
                name: u.name.clone(),
                address: u.addr.to_string(),
                active_connections: u.active(),
            })
            .collect(),
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn upstream_status(balancer: &Balancer, u: &Upstream) -> UpstreamStatus {
    let h = u.health.snapshot();
    let passive = balancer.policy().active.is_none();
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
}

fn client_statuses(g: &Generation) -> Vec<ClientStatus> {
    g.config
        .clients
        .iter()
        .filter_map(|c| {
            let s = g.limiter.get(&c.name, true)?;
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
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_an_ipv4_address_or_an_ipv6_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(source_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_ne!(source_of(ip("2001:db8:1:2::1")), source_of(ip("2001:db8:1:3::1")));
    }

    #[test]
    fn a_source_gets_its_slots_back() {
        let sources = Arc::new(Sources::default());
        let peer = IpAddr::from([127, 0, 0, 1]);
        let held: Vec<SourceSlot> = (0..MAX_PER_SOURCE).filter_map(|_| sources.try_acquire(peer)).collect();
        assert_eq!(held.len(), MAX_PER_SOURCE);
        assert!(sources.try_acquire(peer).is_none());
        assert!(sources.try_acquire(IpAddr::from([127, 0, 0, 2])).is_some());
        drop(held);
        assert!(sources.0.lock().unwrap_or_else(PoisonError::into_inner).is_empty());
    }
}
