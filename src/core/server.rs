//! The load balancer: accept, mTLS handshake with the app chosen by
//! listener + SNI, per-client limits, least-connections upstream choice with
//! retries, relay, one access-log line per connection.
//!
//! Entry points: [`Server::new`] builds a server from a validated
//! [`Config`] (loading certificates); [`Server::run`] serves
//! already-bound listeners until a shutdown future resolves, then drains.
//! Tests bind `127.0.0.1:0` themselves and need no sleeps.
//!
//! Promises: every network wait has a timeout (handshake, connect, idle);
//! an unauthorized client gets a TLS alert and never reaches an upstream;
//! a limited client is closed before any upstream is contacted; per-client
//! and per-upstream slots are released on every exit path (drop guards).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_lite::FutureExt;
use futures_rustls::LazyConfigAcceptor;
use rustls::ServerConfig;
use smol::{Async, Executor, Timer, channel};
use tracing::{debug, info, warn};

use super::balancer::{Balancer, Upstream, UpstreamGuard};
use super::config::{App, Config, Timeouts};
use super::limiter::{ClientSlot, Limiter};
use super::net::TcpConn;
use super::relay::{RelayEnd, Side, Transferred, relay};
use super::runtime::timeout;
use super::tls::{self, AppPolicy, ServerTls};

/// One app as the data path sees it.
pub struct AppRuntime {
    pub name: String,
    pub balancer: Balancer,
    server_config: Arc<ServerConfig>,
    policy: Arc<AppPolicy>,
    pub proxy_protocol: bool,
}

/// Apps reachable through one listener.
#[derive(Default)]
struct ListenerApps {
    by_sni: HashMap<String, Arc<AppRuntime>>,
    default: Option<Arc<AppRuntime>>,
}

impl ListenerApps {
    fn select(&self, sni: Option<&str>) -> Option<&Arc<AppRuntime>> {
        if let Some(name) = sni {
            let lower = name.to_ascii_lowercase();
            if let Some(app) = self.by_sni.get(lower.trim_end_matches('.')) {
                return Some(app);
            }
        }
        self.default.as_ref()
    }
}

/// Everything derived from one config: swapped whole on reload.
pub struct Generation {
    pub config: Config,
    pub apps: Vec<Arc<AppRuntime>>,
    listeners: HashMap<SocketAddr, ListenerApps>,
    reject: Arc<ServerConfig>,
    pub limiter: Limiter,
}

impl Generation {
    fn build(config: Config, previous: Option<&Generation>) -> Result<Generation> {
        let tls = ServerTls::load(&config)?;
        let mut apps = Vec::with_capacity(config.apps.len());
        let mut listeners: HashMap<SocketAddr, ListenerApps> = HashMap::new();
        for app in &config.apps {
            let (server_config, policy) = tls
                .apps
                .get(&app.name)
                .cloned()
                .with_context(|| format!("internal: no TLS config for app {}", app.name))?;
            let rt = Arc::new(AppRuntime {
                name: app.name.clone(),
                balancer: Balancer::new(upstreams_for(app, previous)),
                server_config,
                policy,
                proxy_protocol: app.proxy_protocol,
            });
            let entry = listeners.entry(app.listen).or_default();
            if app.server_names.is_empty() {
                entry.default = Some(rt.clone());
            }
            for n in &app.server_names {
                entry.by_sni.insert(n.clone(), rt.clone());
            }
            apps.push(rt);
        }
        let limiter = Limiter::new(&config.clients, previous.map(|p| &p.limiter));
        Ok(Generation {
            config,
            apps,
            listeners,
            reject: tls.reject,
            limiter,
        })
    }

    pub fn app(&self, name: &str) -> Option<&Arc<AppRuntime>> {
        self.apps.iter().find(|a| a.name == name)
    }
}

/// Upstream states are kept across reloads when the app and address match,
/// so active counts and health survive.
fn upstreams_for(app: &App, previous: Option<&Generation>) -> Vec<Arc<Upstream>> {
    let old = previous.and_then(|p| p.app(&app.name));
    app.upstreams
        .iter()
        .map(|u| {
            old.and_then(|o| {
                o.balancer
                    .upstreams()
                    .iter()
                    .find(|x| x.name == u.name && x.addr == u.addr)
                    .cloned()
            })
            .unwrap_or_else(|| Arc::new(Upstream::new(u)))
        })
        .collect()
}

/// Counters the server keeps regardless of the metrics exporter.
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub refused: AtomicU64,
    pub proxied: AtomicU64,
    pub active: AtomicU64,
}

/// A running (or ready to run) load balancer.
pub struct Server {
    generation: RwLock<Arc<Generation>>,
    pub counters: Counters,
}

/// Why a connection that passed the handshake was closed without relaying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Authorization re-check failed (resumed session after a reload).
    Unauthorized,
    MaxConnections,
    RateLimited,
    NoHealthyUpstream,
    UpstreamConnectFailed,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::MaxConnections => "max_connections",
            Refusal::RateLimited => "rate_limited",
            Refusal::NoHealthyUpstream => "no_healthy_upstream",
            Refusal::UpstreamConnectFailed => "upstream_connect_failed",
        }
    }
}

/// The handshake did not complete.
#[derive(Debug)]
pub struct HandshakeFailure {
    /// Short label for metrics: `timeout`, `unauthorized`, `bad_certificate`,
    /// `no_certificate`, `protocol`, `not_tls`, `unknown_sni`, `eof`, `io`.
    pub kind: &'static str,
    pub detail: String,
}

impl Server {
    /// Loads certificates and builds the data-path state for `config`.
    pub fn new(config: Config) -> Result<Arc<Server>> {
        let generation = Generation::build(config, None)?;
        Ok(Arc::new(Server {
            generation: RwLock::new(Arc::new(generation)),
            counters: Counters::default(),
        }))
    }

    /// The current configuration generation.
    pub fn current(&self) -> Arc<Generation> {
        self.generation.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swaps in a new config atomically; established connections keep the
    /// generation they started with. On error the old config stays.
    pub fn reload(&self, config: Config) -> Result<()> {
        let old = self.current();
        if old.config.listeners() != config.listeners() {
            bail!("listener addresses changed; adding or removing listeners needs a restart in this version");
        }
        let new = Generation::build(config, Some(&old))?;
        *self.generation.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        Ok(())
    }

    /// Binds every listener the config names (SO_REUSEADDR, backlog 1024).
    pub fn bind(config: &Config) -> Result<Vec<TcpListener>> {
        config.listeners().into_iter().map(bind_listener).collect()
    }

    /// Serves `listeners` until `shutdown` resolves; then stops accepting,
    /// lets open connections finish for `timeouts.drain`, and returns.
    /// Each listener's local address must be an app's `listen` address.
    pub async fn run<S>(
        self: &Arc<Self>,
        ex: &Arc<Executor<'static>>,
        listeners: Vec<TcpListener>,
        shutdown: S,
    ) -> Result<()>
    where
        S: Future<Output = ()>,
    {
        let generation = self.current();
        let mut accepts = Vec::new();
        // Open connections hold a sender; when all are dropped, `recv` ends.
        let (conn_tx, conn_rx) = channel::bounded::<()>(1);
        // Closing `hard_tx` cuts every connection still open after the drain.
        let (hard_tx, hard_rx) = channel::bounded::<()>(1);
        let (stop_tx, stop_rx) = channel::bounded::<()>(1);
        for l in listeners {
            let addr = l.local_addr().context("reading a listener's address")?;
            if !generation.listeners.contains_key(&addr) {
                bail!("listener {addr} is not the listen address of any [[app]]");
            }
            l.set_nonblocking(true).context("setting a listener non-blocking")?;
            let l = Async::new(l).with_context(|| format!("registering listener {addr}"))?;
            info!("listening on {addr} (apps: {})", app_names_on(&generation, addr));
            let server = self.clone();
            let ex2 = ex.clone();
            let conn_tx = conn_tx.clone();
            let hard_rx = hard_rx.clone();
            let stop_rx = stop_rx.clone();
            accepts.push(ex.spawn(async move {
                server
                    .accept_loop(&ex2, l, addr, conn_tx, hard_rx)
                    .or(async move {
                        let _ = stop_rx.recv().await;
                    })
                    .await
            }));
        }
        drop(conn_tx);
        shutdown.await;
        drop(stop_tx);
        for a in accepts {
            a.await;
        }
        let drain = self.current().config.timeouts.drain;
        let open = self.counters.active.load(Ordering::Relaxed);
        if open > 0 {
            info!("draining {open} open connection(s) for up to {drain:?}");
        }
        if timeout(drain, conn_rx.recv()).await.is_err() {
            warn!(
                "drain period over: closing {} connection(s)",
                self.counters.active.load(Ordering::Relaxed)
            );
            drop(hard_tx);
            // Connections notice the closed channel at once; wait for them.
            let _ = timeout(Duration::from_secs(5), conn_rx.recv()).await;
        }
        info!("stopped");
        Ok(())
    }

    async fn accept_loop(
        self: Arc<Self>,
        ex: &Arc<Executor<'static>>,
        listener: Async<TcpListener>,
        local: SocketAddr,
        conn_tx: channel::Sender<()>,
        hard_rx: channel::Receiver<()>,
    ) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                    let server = self.clone();
                    let held = conn_tx.clone();
                    let hard = hard_rx.clone();
                    ex.spawn(async move {
                        let _held = held;
                        let work = std::panic::AssertUnwindSafe(server.handle(stream, local, peer)).catch_unwind();
                        let cut = async {
                            let _ = hard.recv().await;
                            Ok(())
                        };
                        if work.or(cut).await.is_err() {
                            tracing::error!(%peer, "connection task panicked (a bug); connection closed");
                        }
                    })
                    .detach();
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!("accept on {local} failed: {e}");
                    Timer::after(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn handle(self: Arc<Self>, stream: Async<TcpStream>, local: SocketAddr, peer: SocketAddr) {
        let generation = self.current();
        let timeouts = generation.config.timeouts;
        let started = Instant::now();
        let _active = ActiveGuard::new(&self.counters);
        let Some(apps) = generation.listeners.get(&local) else {
            return;
        };
        let hs = match timeout(timeouts.handshake, handshake(stream, apps, &generation.reject)).await {
            Ok(Ok(hs)) => hs,
            Ok(Err(Failed(f, io))) => {
                self.counters.handshake_failures.fetch_add(1, Ordering::Relaxed);
                info!(%peer, %local, reason = f.kind, "handshake failed: {}", f.detail);
                if let Some(io) = io {
                    linger_close(io).await;
                }
                return;
            }
            Err(_) => {
                self.counters.handshake_failures.fetch_add(1, Ordering::Relaxed);
                info!(%peer, %local, reason = "timeout", "handshake failed: not completed within {:?}", timeouts.handshake);
                return;
            }
        };
        let Handshaken {
            mut tls,
            app,
            identity,
            sni,
        } = hs;
        let handshake_done = started.elapsed();
        debug!(%peer, identity = %identity, app = %app.name, "handshake done in {handshake_done:?}");

        let mut log = AccessLog {
            peer,
            identity: &identity,
            app: &app.name,
            upstream: "-",
            sni: sni.as_deref(),
            started,
            moved: Transferred::default(),
        };

        // Limits: before any upstream is contacted.
        let slot: ClientSlot = match generation.limiter.get(&identity).map(|c| c.try_acquire()) {
            Some(Ok(slot)) => slot,
            Some(Err(r)) => {
                let refusal = match r {
                    super::limiter::LimitRefusal::MaxConnections => Refusal::MaxConnections,
                    super::limiter::LimitRefusal::RateLimited => Refusal::RateLimited,
                };
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                log.close(&format!("refused: {}", refusal.label()));
                refuse_established(tls).await;
                return;
            }
            None => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                log.close("refused: unauthorized");
                refuse_established(tls).await;
                return;
            }
        };

        let (guard, upstream_stream) = match connect_upstream(&app.balancer, timeouts).await {
            Ok(x) => x,
            Err(r) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                log.close(&format!("refused: {}", r.label()));
                refuse_established(tls).await;
                return;
            }
        };
        let upstream = guard.upstream().clone();
        log.upstream = &upstream.name;
        self.counters.proxied.fetch_add(1, Ordering::Relaxed);
        let mut up = upstream_stream;
        let end = relay(&mut tls, &mut up, timeouts.idle, &mut log.moved).await;
        let reason = match end {
            RelayEnd::Done => "done".to_string(),
            RelayEnd::Idle => "idle_timeout".to_string(),
            RelayEnd::Error(Side::A, e) => format!("client_error: {}", tls::describe_tls_error(&e)),
            RelayEnd::Error(Side::B, e) => format!("upstream_error: {e}"),
        };
        drop(up);
        drop(tls);
        drop(guard);
        drop(slot);
        log.close(&reason);
    }
}

fn app_names_on(g: &Generation, addr: SocketAddr) -> String {
    g.config
        .apps
        .iter()
        .filter(|a| a.listen == addr)
        .map(|a| a.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binds one listener with SO_REUSEADDR and a deep backlog.
pub fn bind_listener(addr: SocketAddr) -> Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .with_context(|| format!("creating a socket for {addr}"))?;
    socket.set_reuse_address(true).context("setting SO_REUSEADDR")?;
    socket.bind(&addr.into()).with_context(|| {
        format!("binding {addr} (is another process using it? change the app's listen in the config)")
    })?;
    socket.listen(1024).with_context(|| format!("listening on {addr}"))?;
    Ok(socket.into())
}

struct ActiveGuard<'a>(&'a Counters);

impl<'a> ActiveGuard<'a> {
    fn new(c: &'a Counters) -> Self {
        c.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(c)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One access-log line at close.
struct AccessLog<'a> {
    peer: SocketAddr,
    identity: &'a str,
    app: &'a str,
    upstream: &'a str,
    sni: Option<&'a str>,
    started: Instant,
    moved: Transferred,
}

impl AccessLog<'_> {
    fn close(&self, reason: &str) {
        info!(
            target: "tlb::access",
            peer = %self.peer,
            identity = self.identity,
            app = self.app,
            upstream = self.upstream,
            sni = self.sni.unwrap_or("-"),
            bytes_in = self.moved.a_to_b,
            bytes_out = self.moved.b_to_a,
            duration_ms = self.started.elapsed().as_millis() as u64,
            reason,
            "access"
        );
    }
}

type ClientTls = futures_rustls::server::TlsStream<TcpConn>;

struct Handshaken {
    tls: ClientTls,
    app: Arc<AppRuntime>,
    identity: String,
    sni: Option<String>,
}

/// A failed handshake, with the TCP stream when it is still there (so the
/// alert can be delivered with a lingering close rather than an RST).
struct Failed(HandshakeFailure, Option<TcpConn>);

impl From<HandshakeFailure> for Failed {
    fn from(f: HandshakeFailure) -> Failed {
        Failed(f, None)
    }
}

async fn handshake(
    stream: Async<TcpStream>,
    apps: &ListenerApps,
    reject: &Arc<ServerConfig>,
) -> Result<Handshaken, Failed> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), TcpConn::new(stream))
        .await
        .map_err(classify_io)?;
    let sni = start.client_hello().server_name().map(|s| s.to_ascii_lowercase());
    let Some(app) = apps.select(sni.as_deref()).cloned() else {
        // Complete the refusal with an alert (access_denied) rather than a bare close.
        let io = start
            .into_stream(reject.clone())
            .into_fallible()
            .await
            .err()
            .map(|(_, io)| io);
        let f = HandshakeFailure {
            kind: "unknown_sni",
            detail: format!(
                "no app for server name {:?} on this listener",
                sni.as_deref().unwrap_or("")
            ),
        };
        return Err(Failed(f, io));
    };
    let mut accept = start.into_stream(app.server_config.clone()).into_fallible();
    // Poll the handshake ourselves so a denial recorded by the verifier is
    // read in the same poll that returns the error (see tls::take_denial).
    let result = std::future::poll_fn(|cx| {
        tls::clear_denial();
        match std::pin::Pin::new(&mut accept).poll(cx) {
            std::task::Poll::Ready(Err((e, io))) => {
                let denial = tls::take_denial();
                std::task::Poll::Ready(Err((e, io, denial)))
            }
            std::task::Poll::Ready(Ok(s)) => std::task::Poll::Ready(Ok(s)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    })
    .await;
    let tls = match result {
        Ok(s) => s,
        Err((_, io, Some(denial))) => {
            let f = HandshakeFailure {
                kind: "unauthorized",
                detail: denial.to_string(),
            };
            return Err(Failed(f, Some(io)));
        }
        Err((e, io, None)) => return Err(Failed(classify_io(e), Some(io))),
    };
    // Authorization again: a resumed session skips certificate verification,
    // and the policy may have changed since the session was created.
    let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
    let identity = match cert.map(|c| app.policy.authorize(c)) {
        Some(Ok(id)) => id,
        Some(Err(denial)) => {
            return Err(Failed(
                HandshakeFailure {
                    kind: "unauthorized",
                    detail: format!("{denial} (resumed session)"),
                },
                None,
            ));
        }
        None => {
            return Err(Failed(
                HandshakeFailure {
                    kind: "no_certificate",
                    detail: "no client certificate on the session".into(),
                },
                None,
            ));
        }
    };
    Ok(Handshaken {
        tls,
        app,
        identity,
        sni,
    })
}

/// Closes an established connection that will not be relayed (limits, no
/// upstream): close_notify + FIN, then discard what the client still sends
/// for a moment, so it sees a clean "closed before any reply" and not a reset.
async fn refuse_established(tls: ClientTls) {
    close_and_drain(tls).await;
}

/// Half-closes and discards what the client still sends, briefly, so the
/// alert already written reaches it instead of being lost to an RST (the
/// kernel resets a connection closed with unread data).
async fn linger_close(io: TcpConn) {
    close_and_drain(io).await;
}

/// Closes the write side (at most 1 s), then reads and discards up to
/// 64 KiB for at most 1 s, then drops the stream.
async fn close_and_drain<S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin>(mut io: S) {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    const LINGER: Duration = Duration::from_secs(1);
    const MAX_DISCARD: usize = 64 * 1024;
    let _ = timeout(LINGER, io.close()).await;
    let _ = timeout(LINGER, async {
        let mut scratch = [0u8; 2048];
        let mut total = 0;
        while total < MAX_DISCARD {
            match io.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

fn classify_io(e: io::Error) -> HandshakeFailure {
    use rustls::{CertificateError as CE, Error as TE, PeerIncompatible as PI};
    let detail = tls::describe_tls_error(&e);
    let kind = match e.get_ref().and_then(|i| i.downcast_ref::<TE>()) {
        Some(TE::NoCertificatesPresented) => "no_certificate",
        Some(TE::InvalidCertificate(CE::ApplicationVerificationFailure)) => "unauthorized",
        Some(TE::InvalidCertificate(_)) | Some(TE::InvalidCertRevocationList(_)) => "bad_certificate",
        Some(TE::PeerIncompatible(PI::SupportedVersionsExtensionRequired))
        | Some(TE::PeerIncompatible(PI::Tls12NotOffered))
        | Some(TE::PeerIncompatible(PI::Tls12NotOfferedOrEnabled))
        | Some(TE::PeerIncompatible(_)) => "protocol",
        Some(TE::InvalidMessage(_))
        | Some(TE::InappropriateHandshakeMessage { .. })
        | Some(TE::InappropriateMessage { .. }) => "not_tls",
        Some(TE::AlertReceived(_)) => "client_alert",
        Some(_) => "tls",
        None if e.kind() == io::ErrorKind::UnexpectedEof => "eof",
        None => "io",
    };
    HandshakeFailure { kind, detail }
}

/// Connects to the best healthy upstream; on failure tries the next best,
/// at most 2 retries, all within `timeouts.connect`.
async fn connect_upstream(balancer: &Balancer, timeouts: Timeouts) -> Result<(UpstreamGuard, TcpConn), Refusal> {
    const MAX_ATTEMPTS: usize = 3;
    let deadline = Instant::now() + timeouts.connect;
    let mut tried: Vec<usize> = Vec::with_capacity(MAX_ATTEMPTS);
    let mut last = Refusal::NoHealthyUpstream;
    while tried.len() < MAX_ATTEMPTS {
        let Some((idx, guard)) = balancer.pick(&tried) else {
            return Err(last);
        };
        tried.push(idx);
        let up = guard.upstream().clone();
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Refusal::UpstreamConnectFailed);
        }
        let reason = match timeout(left, TcpConn::connect(up.addr)).await {
            Ok(Ok(s)) => {
                up.record_success();
                return Ok((guard, s));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("connect timed out after {:?}", timeouts.connect),
        };
        let n = up.record_failure(&reason);
        warn!(upstream = %up.name, consecutive_failures = n, "upstream connect failed: {reason}");
        last = Refusal::UpstreamConnectFailed;
    }
    Err(last)
}
