//! The load balancer: accept, mTLS handshake with the app chosen by
//! listener + SNI, per-client limits, least-connections upstream choice with
//! retries, relay, one access-log line per connection.
//!
//! Entry points: [`Server::new`] builds a server from a validated
//! [`Config`] (loading certificates); [`Server::run`] serves
//! already-bound listeners until a shutdown future resolves, then drains.
//! Tests bind `127.0.0.1:0` themselves and need no sleeps.
//!
//! The same `run` also serves the admin endpoint (when one of the listeners
//! is `[admin] listen`) and runs the active health checks of the current
//! config generation, restarting them on reload.
//!
//! Promises: every network wait has a timeout (handshake, connect, idle);
//! an unauthorized client gets a TLS alert and never reaches an upstream;
//! a limited client is closed before any upstream is contacted; when every
//! upstream of the app is DOWN the client is refused at once; per-client
//! and per-upstream slots are released on every exit path (drop guards);
//! metrics are atomics only (see [`super::metrics`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_lite::FutureExt;
use futures_rustls::LazyConfigAcceptor;
use rustls::ServerConfig;
use smol::{Async, Executor, Task, Timer, channel};
use tracing::{debug, info, warn};

use super::balancer::{Balancer, Upstream, UpstreamGuard};
use super::config::{App, Config, Timeouts};
use super::health::{self, HealthPolicy};
use super::limiter::{ClientSlot, Limiter};
use super::metrics::{AppStats, HandshakeFailureKind, Metrics, Refusal};
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
    /// Counters kept across reloads while the app keeps its name.
    pub stats: Arc<AppStats>,
}

/// Apps reachable through one listener.
#[derive(Default)]
struct ListenerApps {
    by_sni: HashMap<String, Arc<AppRuntime>>,
    default: Option<Arc<AppRuntime>>,
}

impl ListenerApps {
    /// `sni` as rustls hands it over: lower-cased, without a trailing dot
    /// (config names are normalized the same way at load).
    fn select(&self, sni: Option<&str>) -> Option<&Arc<AppRuntime>> {
        sni.and_then(|name| self.by_sni.get(name)).or(self.default.as_ref())
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
            // Parsed (SPEC §2) but not built yet: refuse rather than silently
            // send plaintext, or no PROXY header, to upstreams expecting them.
            if app.upstream_tls.is_some() {
                bail!(
                    "app {:?}: [app.upstream_tls] is not supported by this version of tlb (upstreams are reached over plain TCP); remove the table",
                    app.name
                );
            }
            if app.proxy_protocol {
                bail!(
                    "app {:?}: proxy_protocol = true is not supported by this version of tlb; remove it or set it to false",
                    app.name
                );
            }
            let (server_config, policy) = tls
                .apps
                .get(&app.name)
                .cloned()
                .with_context(|| format!("internal: no TLS config for app {}", app.name))?;
            let rt = Arc::new(AppRuntime {
                name: app.name.clone(),
                balancer: Balancer::new(
                    &app.name,
                    upstreams_for(app, previous),
                    HealthPolicy::new(app.health.as_ref()),
                ),
                server_config,
                policy,
                stats: previous
                    .and_then(|p| p.app(&app.name))
                    .map(|a| a.stats.clone())
                    .unwrap_or_default(),
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

/// A running (or ready to run) load balancer.
pub struct Server {
    generation: RwLock<Arc<Generation>>,
    pub metrics: Metrics,
    draining: AtomicBool,
    started: Instant,
    /// A reload tells the health-check supervisor to restart the checks.
    reloaded_tx: channel::Sender<()>,
    reloaded_rx: channel::Receiver<()>,
}

/// The handshake did not complete.
#[derive(Debug)]
pub struct HandshakeFailure {
    pub kind: HandshakeFailureKind,
    pub detail: String,
}

impl Server {
    /// Loads certificates and builds the data-path state for `config`.
    pub fn new(config: Config) -> Result<Arc<Server>> {
        let generation = Generation::build(config, None)?;
        let (reloaded_tx, reloaded_rx) = channel::bounded(1);
        Ok(Arc::new(Server {
            generation: RwLock::new(Arc::new(generation)),
            metrics: Metrics::default(),
            draining: AtomicBool::new(false),
            started: Instant::now(),
            reloaded_tx,
            reloaded_rx,
        }))
    }

    /// True once shutdown has begun (no new connections are accepted).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Time since the server was created.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
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
        if old.config.admin != config.admin {
            bail!("[admin] changed; adding, moving or removing the admin endpoint needs a restart in this version");
        }
        let new = Generation::build(config, Some(&old))?;
        *self.generation.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        // Full means a restart is already pending: the supervisor reads the latest generation.
        let _ = self.reloaded_tx.try_send(());
        Ok(())
    }

    /// Binds every listener the config names (SO_REUSEADDR, backlog 1024),
    /// the admin endpoint's included.
    pub fn bind(config: &Config) -> Result<Vec<TcpListener>> {
        let mut addrs = config.listeners();
        if let Some(a) = &config.admin {
            addrs.push(a.listen);
        }
        addrs.into_iter().map(bind_listener).collect()
    }

    /// Serves `listeners` until `shutdown` resolves; then stops accepting,
    /// lets open connections finish for `timeouts.drain`, and returns.
    /// Each listener's local address must be an app's `listen` address or
    /// `[admin] listen`. Active health checks run meanwhile.
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
        let admin_addr = generation.config.admin.as_ref().map(|a| a.listen);
        let mut admin = None;
        for l in listeners {
            let addr = l.local_addr().context("reading a listener's address")?;
            l.set_nonblocking(true).context("setting a listener non-blocking")?;
            let l = Async::new(l).with_context(|| format!("registering listener {addr}"))?;
            if Some(addr) == admin_addr {
                info!("admin endpoint on http://{addr} (/metrics /healthz /status)");
                admin = Some(ex.spawn(super::admin::serve(self.clone(), ex.clone(), l)));
                continue;
            }
            if !generation.listeners.contains_key(&addr) {
                bail!("listener {addr} is not the listen address of any [[app]] nor [admin] listen");
            }
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
        let checks = ex.spawn(self.clone().supervise_health_checks(ex.clone()));
        shutdown.await;
        self.draining.store(true, Ordering::Relaxed);
        drop(stop_tx);
        for a in accepts {
            a.await;
        }
        let drain = self.current().config.timeouts.drain;
        let open = self.metrics.active.load(Ordering::Relaxed);
        if open > 0 {
            info!("draining {open} open connection(s) for up to {drain:?}");
        }
        if timeout(drain, conn_rx.recv()).await.is_err() {
            warn!(
                "drain period over: closing {} connection(s)",
                self.metrics.active.load(Ordering::Relaxed)
            );
            drop(hard_tx);
            // Connections notice the closed channel at once; wait for them.
            let _ = timeout(Duration::from_secs(5), conn_rx.recv()).await;
        }
        drop(checks);
        drop(admin);
        info!("stopped");
        Ok(())
    }

    /// Runs the active checks of the current generation; on each reload,
    /// cancels them and starts the new generation's (upstream state is kept).
    async fn supervise_health_checks(self: Arc<Self>, ex: Arc<Executor<'static>>) {
        loop {
            let generation = self.current();
            let mut tasks: Vec<Task<()>> = Vec::new();
            for app in &generation.apps {
                let policy = app.balancer.policy();
                if policy.active.is_none() {
                    continue;
                }
                for u in app.balancer.upstreams() {
                    tasks.push(ex.spawn(health::check_loop(
                        app.balancer.app().clone(),
                        u.clone(),
                        policy.clone(),
                    )));
                }
            }
            if self.reloaded_rx.recv().await.is_err() {
                return;
            }
            drop(tasks);
        }
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
                    self.metrics.accepted.fetch_add(1, Ordering::Relaxed);
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
        let _active = ActiveGuard::new(&self.metrics.active);
        let Some(apps) = generation.listeners.get(&local) else {
            return;
        };
        let hs = match timeout(timeouts.handshake, handshake(stream, apps, &generation.reject)).await {
            Ok(Ok(hs)) => hs,
            Ok(Err(Failed(f, io))) => {
                self.metrics.count_handshake_failure(f.kind);
                info!(%peer, %local, reason = f.kind.label(), "handshake failed: {}", f.detail);
                if let Some(io) = io {
                    close_and_drain_boxed(io).await;
                }
                return;
            }
            Err(_) => {
                self.metrics.count_handshake_failure(HandshakeFailureKind::Timeout);
                info!(%peer, %local, reason = HandshakeFailureKind::Timeout.label(), "handshake failed: not completed within {:?}", timeouts.handshake);
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
        self.metrics.handshake_seconds.observe(handshake_done);
        app.stats.handshakes.fetch_add(1, Ordering::Relaxed);
        let _app_active = ActiveGuard::new(&app.stats.active);
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

        // Limits: before any upstream is contacted. (An identity the
        // verifier admitted always has limiter state: both come from the
        // same generation's [[client]] list; refuse if it ever had not.)
        let admitted = match generation.limiter.get(&identity) {
            Some(c) => c.try_acquire(),
            None => Err(Refusal::Unauthorized),
        };
        let slot: ClientSlot = match admitted {
            Ok(slot) => slot,
            Err(r) => {
                self.metrics.count_refusal(r);
                log.close(r.access_reason());
                close_and_drain_boxed(tls).await;
                return;
            }
        };

        let (mut guard, upstream_stream) = match connect_upstream(&app.balancer, timeouts).await {
            Ok(x) => x,
            Err(r) => {
                drop(slot); // not held while the refusal lingers
                self.metrics.count_refusal(r);
                log.close(r.access_reason());
                close_and_drain_boxed(tls).await;
                return;
            }
        };
        let upstream = guard.upstream().clone();
        log.upstream = &upstream.name;
        self.metrics.proxied.fetch_add(1, Ordering::Relaxed);
        let mut up = Answered {
            conn: upstream_stream,
            pending: Some((&app.balancer, &mut guard)),
        };
        let end = relay(&mut tls, &mut up, timeouts.idle, &mut log.moved).await;
        // Closes the upstream connection and ends its borrow of the guard.
        drop(up);
        let reason: Cow<'static, str> = match &end {
            RelayEnd::Done => "done".into(),
            RelayEnd::Idle => "idle_timeout".into(),
            RelayEnd::Error(Side::A, e) => format!("client_error: {}", tls::describe_tls_error(e)).into(),
            RelayEnd::Error(Side::B, e) => format!("upstream_error: {e}").into(),
        };
        if log.moved.b_to_a == 0 {
            // The upstream never answered. A reset is a passive failure (an
            // upstream that accepts and dies), like a refused connect; so is
            // a half-open trial the upstream closed although the client had
            // spoken (a proxy in front of a dead backend). Otherwise the
            // guard's drop leaves a trial without a verdict.
            let reset = matches!(&end, RelayEnd::Error(Side::B, e) if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
            ));
            let silent_trial = guard.is_trial() && log.moved.a_to_b > 0 && matches!(end, RelayEnd::Done);
            if reset || silent_trial {
                let what = if reset {
                    "reset before any byte"
                } else {
                    "closed before any byte"
                };
                let n = app.balancer.failed(&mut guard, what);
                warn!(app = %app.name, upstream = %upstream.name, consecutive_failures = n, "upstream {what}");
            }
        }
        upstream
            .bytes_to_upstream
            .fetch_add(log.moved.a_to_b, Ordering::Relaxed);
        upstream.bytes_to_client.fetch_add(log.moved.b_to_a, Ordering::Relaxed);
        drop(tls);
        drop(guard);
        drop(slot);
        self.metrics.connection_seconds.observe(started.elapsed());
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

/// The upstream side of a relay: the first byte the upstream sends is
/// reported once as a passive success ([`Balancer::answered`]); an accept
/// alone proves little (a proxy in front of a dead backend accepts too).
struct Answered<'a> {
    conn: TcpConn,
    pending: Option<(&'a Balancer, &'a mut UpstreamGuard)>,
}

impl futures_lite::AsyncRead for Answered<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.conn).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r
            && *n > 0
            && let Some((balancer, guard)) = self.pending.take()
        {
            balancer.answered(guard);
        }
        r
    }
}

impl futures_lite::AsyncWrite for Answered<'_> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.conn).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.conn).poll_flush(cx)
    }
    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.conn).poll_close(cx)
    }
}

/// Holds one unit of an "open now" gauge; gives it back on drop.
struct ActiveGuard<'a>(&'a AtomicU64);

impl<'a> ActiveGuard<'a> {
    fn new(c: &'a AtomicU64) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(c)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
    fn close(&self, reason: impl AsRef<str>) {
        let reason = reason.as_ref();
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
    /// Boxed so moves of it stay pointer-sized in the connection task.
    tls: Box<ClientTls>,
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

/// The handshake, on the heap: its state (acceptor, buffers, verifier
/// calls) is only needed until it completes, and inline it would size every
/// connection task, idle ones included.
fn handshake<'a>(
    stream: Async<TcpStream>,
    apps: &'a ListenerApps,
    reject: &'a Arc<ServerConfig>,
) -> Pin<Box<dyn Future<Output = Result<Handshaken, Failed>> + Send + 'a>> {
    Box::pin(handshake_inline(stream, apps, reject))
}

async fn handshake_inline(
    stream: Async<TcpStream>,
    apps: &ListenerApps,
    reject: &Arc<ServerConfig>,
) -> Result<Handshaken, Failed> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), TcpConn::new(stream))
        .await
        .map_err(classify_io)?;
    let sni = start.client_hello().server_name().map(str::to_owned);
    let Some(app) = apps.select(sni.as_deref()).cloned() else {
        // Complete the refusal with an alert (access_denied) rather than a bare close.
        let io = start
            .into_stream(reject.clone())
            .into_fallible()
            .await
            .err()
            .map(|(_, io)| io);
        let f = HandshakeFailure {
            kind: HandshakeFailureKind::UnknownSni,
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
                kind: HandshakeFailureKind::Unauthorized,
                detail: denial.to_string(),
            };
            return Err(Failed(f, Some(io)));
        }
        Err((e, io, None)) => return Err(Failed(classify_io(e), Some(io))),
    };
    // The identity. A full handshake was authorized by the verifier; a
    // resumed one skipped verification, so it is authorized again (defence
    // in depth: tickets and session caches belong to one generation's
    // config, whose policy admitted the original handshake).
    let session = tls.get_ref().1;
    let cert = session.peer_certificates().and_then(|c| c.first());
    let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let checked = cert.map(|c| {
        if resumed {
            app.policy.authorize(c)
        } else {
            super::identity::common_name(c).ok_or_else(|| app.policy.no_identity())
        }
    });
    let identity = match checked {
        Some(Ok(id)) => id,
        Some(Err(denial)) => {
            return Err(Failed(
                HandshakeFailure {
                    kind: HandshakeFailureKind::Unauthorized,
                    detail: if resumed {
                        format!("{denial} (resumed session)")
                    } else {
                        denial.to_string()
                    },
                },
                None,
            ));
        }
        None => {
            return Err(Failed(
                HandshakeFailure {
                    kind: HandshakeFailureKind::NoCertificate,
                    detail: "no client certificate on the session".into(),
                },
                None,
            ));
        }
    };
    Ok(Handshaken {
        tls: Box::new(tls),
        app,
        identity,
        sni,
    })
}

/// Closes a connection that will not be relayed: after a failed handshake
/// (the alert is already written) or a refusal after it (close_notify +
/// FIN), then discards what the client still sends for a moment, so it sees
/// the alert or a clean "closed before any reply" instead of a reset (the
/// kernel resets a connection closed with unread data). Boxed: a rare path
/// whose state would otherwise size every connection task, idle ones too.
fn close_and_drain_boxed<S>(io: S) -> Pin<Box<dyn Future<Output = ()> + Send>>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(close_and_drain(io))
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
    use HandshakeFailureKind as K;
    use rustls::{CertificateError as CE, Error as TE};
    let detail = tls::describe_tls_error(&e);
    let kind = match e.get_ref().and_then(|i| i.downcast_ref::<TE>()) {
        Some(TE::NoCertificatesPresented) => K::NoCertificate,
        Some(TE::InvalidCertificate(CE::ApplicationVerificationFailure)) => K::Unauthorized,
        Some(TE::InvalidCertificate(_)) | Some(TE::InvalidCertRevocationList(_)) => K::BadCertificate,
        Some(TE::PeerIncompatible(_)) => K::Protocol,
        Some(TE::InvalidMessage(_))
        | Some(TE::InappropriateHandshakeMessage { .. })
        | Some(TE::InappropriateMessage { .. }) => K::NotTls,
        Some(TE::AlertReceived(_)) => K::ClientAlert,
        Some(_) => K::Other,
        None if e.kind() == io::ErrorKind::UnexpectedEof => K::Eof,
        None => K::Other,
    };
    HandshakeFailure { kind, detail }
}

/// Connects to the best healthy upstream; on failure tries the next best,
/// at most 2 retries, all within `timeouts.connect`. Each failure counts
/// toward the upstream's `fall`; when no upstream is UP the refusal is
/// immediate.
async fn connect_upstream(balancer: &Balancer, timeouts: Timeouts) -> Result<(UpstreamGuard, TcpConn), Refusal> {
    const MAX_ATTEMPTS: usize = 3;
    let now = Instant::now();
    let deadline = now
        .checked_add(timeouts.connect)
        .unwrap_or(now + Duration::from_secs(86400 * 365));
    let mut tried = [usize::MAX; MAX_ATTEMPTS];
    let mut last = Refusal::NoHealthyUpstream;
    for attempt in 0..MAX_ATTEMPTS {
        let Some((idx, mut guard)) = balancer.pick(&tried[..attempt]) else {
            return Err(last);
        };
        tried[attempt] = idx;
        let up = guard.upstream().clone();
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Refusal::UpstreamConnectFailed);
        }
        // A half-open trial gets a third of the budget: a blackholed upstream
        // must not eat the time the retries on UP upstreams need.
        let budget = if guard.is_trial() {
            left.min(timeouts.connect / 3)
        } else {
            left
        };
        let reason = match timeout(budget, TcpConn::connect(up.addr)).await {
            Ok(Ok(s)) => {
                balancer.connected(&guard);
                return Ok((guard, s));
            }
            Ok(Err(e)) if health::is_local_error(&e) => {
                // Our own resources ran out: not the upstream's failure, and
                // another upstream would fail the same way.
                warn!(app = %balancer.app(), upstream = %up.name, "upstream connect failed on the balancer's side: {}", health::describe_io(&e));
                return Err(Refusal::UpstreamConnectFailed);
            }
            Ok(Err(e)) => health::describe_io(&e),
            Err(_) => format!("connect timed out after {budget:?}"),
        };
        let n = balancer.failed(&mut guard, &reason);
        warn!(app = %balancer.app(), upstream = %up.name, consecutive_failures = n, "upstream connect failed: {reason}");
        last = Refusal::UpstreamConnectFailed;
    }
    Err(last)
}
