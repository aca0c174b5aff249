//! The load balancer as a whole: configuration generations, listeners,
//! the accept loop with its pre-authentication caps, reloads, and the
//! registry of open connections that a reload re-checks.
//!
//! Entry points: [`Server::new`] builds a server from a validated
//! [`Config`] (loading certificates); [`Server::run`] serves
//! already-bound listeners until a shutdown future resolves, then drains.
//! Tests bind `127.0.0.1:0` themselves and need no sleeps. What happens to
//! one connection is in [`crate::core::proxy::connection`].
//!
//! The same `run` also serves the admin endpoint (when one of the listeners
//! is `[admin] listen`) and runs the active health checks of the current
//! config generation, restarting them on reload.
//!
//! Promises:
//! - `[limits]` caps are applied at accept, before any TLS work: a
//!   connection over a cap is closed at once, counted, and logged at most
//!   once a second (a summary, never a line per connection).
//! - A reload swaps the generation atomically; unless `keep_deauthorized`,
//!   every open connection whose chain the new generation's gate refuses
//!   is closed at once (revoked, de-authorized, expired).
//! - Accept errors (EMFILE...) back off and are logged at most once a second.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use futures_lite::FutureExt;
use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use smol::{Async, Executor, Task, Timer, channel};
use tracing::{info, warn};

use crate::core::config::{App, Config};
use crate::core::ops::logging::{Throttle, escaped};
use crate::core::ops::metrics::{AppStats, Cap, Metrics};
use crate::core::pool::balancer::{Balancer, Upstream};
use crate::core::pool::checker;
use crate::core::pool::policy::HealthPolicy;
use crate::core::proxy::limiter::Limiter;
use crate::core::rt::clock::{self, Clock};
use crate::core::rt::net::{is_local_error, source_of};
use crate::core::rt::timeout;
use crate::core::tls::gate::{CloseReason, Gate};
use crate::core::tls::{ServerTls, TicketKeys};

/// One app as the data path sees it.
pub struct AppRuntime {
    pub name: String,
    pub balancer: Balancer,
    pub(super) server_config: Arc<ServerConfig>,
    /// The app's admission decision in this generation.
    pub gate: Arc<Gate>,
    /// Counters kept across reloads while the app keeps its name.
    pub stats: Arc<AppStats>,
}

/// Apps reachable through one listener.
#[derive(Default)]
pub(super) struct ListenerApps {
    by_sni: HashMap<String, Arc<AppRuntime>>,
    default: Option<Arc<AppRuntime>>,
}

impl ListenerApps {
    /// `sni` as rustls hands it over: lower-cased, without a trailing dot
    /// (config names are normalized the same way at load).
    pub(super) fn select(&self, sni: Option<&str>) -> Option<&Arc<AppRuntime>> {
        sni.and_then(|name| self.by_sni.get(name)).or(self.default.as_ref())
    }
}

/// Everything derived from one config: swapped whole on reload.
pub struct Generation {
    pub config: Config,
    pub apps: Vec<Arc<AppRuntime>>,
    pub(super) listeners: HashMap<SocketAddr, ListenerApps>,
    pub(super) reject: Arc<ServerConfig>,
    pub limiter: Limiter,
    /// `[tls] crl`'s nextUpdate, when set.
    pub crl_next_update: Option<SystemTime>,
    /// `[limits] max_connections` as applied (derived from the open-file
    /// limit when the config leaves it out).
    pub max_connections: u32,
}

/// Open files kept for listeners, the admin endpoint, health checks and logs
/// when `[limits] max_connections` is derived from the open-file limit.
const RESERVED_FDS: u64 = 100;

/// The default `[limits] max_connections`: every relayed connection holds
/// two descriptors (client and upstream).
pub fn default_max_connections() -> u32 {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(s, _)| s);
    u32::try_from((soft.saturating_sub(RESERVED_FDS) / 2).max(1)).unwrap_or(u32::MAX)
}

impl Generation {
    fn build(config: Config, previous: Option<&Generation>, server: &ServerDeps) -> Result<Generation> {
        let tls = ServerTls::load(&config, &server.clock, &server.ticket_keys, &server.tickets_refused)?;
        let mut apps = Vec::with_capacity(config.apps.len());
        let mut listeners: HashMap<SocketAddr, ListenerApps> = HashMap::new();
        for app in &config.apps {
            // Parsed but not built yet: refuse rather than silently send
            // plaintext, or no PROXY header, to upstreams expecting them.
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
            let (server_config, gate) = tls
                .apps
                .get(&app.name)
                .cloned()
                .with_context(|| format!("internal: no TLS config for app {}", app.name))?;
            let rt = Arc::new(AppRuntime {
                name: app.name.clone(),
                balancer: Balancer::new(
                    &app.name,
                    upstreams_for(app, previous, &server.clock),
                    HealthPolicy::new(app.health.as_ref()),
                    server.clock.clone(),
                ),
                server_config,
                gate,
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
        let max_connections = config.limits.max_connections.unwrap_or_else(default_max_connections);
        Ok(Generation {
            config,
            apps,
            listeners,
            reject: tls.reject,
            limiter,
            crl_next_update: tls.crl_next_update,
            max_connections,
        })
    }

    pub fn app(&self, name: &str) -> Option<&Arc<AppRuntime>> {
        self.apps.iter().find(|a| a.name == name)
    }
}

/// Upstream states are kept across reloads when the app and address match,
/// so active counts and health survive.
fn upstreams_for(app: &App, previous: Option<&Generation>, clock: &Arc<dyn Clock>) -> Vec<Arc<Upstream>> {
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
            .unwrap_or_else(|| Arc::new(Upstream::new(u, clock.clone())))
        })
        .collect()
}

/// What building a generation needs from the server.
struct ServerDeps {
    clock: Arc<dyn Clock>,
    ticket_keys: TicketKeys,
    tickets_refused: Arc<AtomicU64>,
}

/// An admitted connection, as a reload re-checks it.
pub(super) struct Open {
    pub app: String,
    pub identity: String,
    /// The client's certificate chain, end entity first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Tells the connection to close, and why.
    pub kill: channel::Sender<CloseReason>,
}

/// Open connections by id.
#[derive(Default)]
struct Registry {
    next: u64,
    open: HashMap<u64, Arc<Open>>,
}

/// Handshakes in progress per source address (bounded: an entry exists
/// only while it counts at least one handshake, so at most
/// `max_handshakes` entries).
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, u32>>);

/// A running (or ready to run) load balancer.
pub struct Server {
    generation: RwLock<Arc<Generation>>,
    pub metrics: Metrics,
    draining: AtomicBool,
    started: Instant,
    deps: ServerDeps,
    /// Open connections (for reload re-checks); lock held for map updates only.
    registry: Mutex<Registry>,
    per_ip: PerIp,
    cap_log: Throttle,
    accept_log: Throttle,
    /// A reload tells the health-check supervisor to restart the checks.
    reloaded_tx: channel::Sender<()>,
    reloaded_rx: channel::Receiver<()>,
}

impl Server {
    /// Loads certificates and builds the data-path state for `config`.
    pub fn new(config: Config) -> Result<Arc<Server>> {
        Server::with_clock(config, clock::system())
    }

    /// Like [`Server::new`], with the wall clock the gate reads
    /// (certificate validity, ticket age, expiry of open connections).
    pub fn with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Arc<Server>> {
        let metrics = Metrics::default();
        let deps = ServerDeps {
            clock,
            ticket_keys: TicketKeys::default(),
            tickets_refused: metrics.tickets_refused.clone(),
        };
        let generation = Generation::build(config, None, &deps)?;
        log_crl_state(&generation, deps.clock.now());
        let (reloaded_tx, reloaded_rx) = channel::bounded(1);
        Ok(Arc::new(Server {
            generation: RwLock::new(Arc::new(generation)),
            metrics,
            draining: AtomicBool::new(false),
            started: Instant::now(),
            deps,
            registry: Mutex::default(),
            per_ip: PerIp::default(),
            cap_log: Throttle::new(Duration::from_secs(1)),
            accept_log: Throttle::new(Duration::from_secs(1)),
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

    /// The gate's wall clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.deps.clock
    }

    /// The current configuration generation.
    pub fn current(&self) -> Arc<Generation> {
        self.generation.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swaps in a new config atomically; established connections keep the
    /// generation they started with, except that (unless
    /// `keep_deauthorized`) those the new generation's gate refuses are
    /// closed. On error the old config stays.
    pub fn reload(&self, config: Config) -> Result<()> {
        let old = self.current();
        if old.config.listeners() != config.listeners() {
            bail!("listener addresses changed; adding or removing listeners needs a restart in this version");
        }
        // The admin token follows the reload (the endpoint reads the current
        // generation per request); its address does not.
        let admin_listen = |c: &Config| c.admin.as_ref().map(|a| a.listen);
        if admin_listen(&old.config) != admin_listen(&config) {
            bail!(
                "[admin] listen changed; adding, moving or removing the admin endpoint needs a restart in this version"
            );
        }
        let new = Arc::new(Generation::build(config, Some(&old), &self.deps)?);
        // Swapped under the registry lock: a connection registering at the
        // same time is either in this snapshot or sees the new generation.
        let open: Vec<Arc<Open>> = {
            let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            *self.generation.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
            reg.open.values().cloned().collect()
        };
        // Full means a restart is already pending: the supervisor reads the latest generation.
        let _ = self.reloaded_tx.try_send(());
        log_crl_state(&new, self.deps.clock.now());
        if !new.config.tls.keep_deauthorized {
            let closed = open.iter().filter(|o| recheck(&new, o)).count();
            if closed > 0 {
                info!("reload: closing {closed} open connection(s) the new configuration no longer admits");
            }
        }
        Ok(())
    }

    /// Registers an admitted connection for reload re-checks; it stays
    /// registered until the returned guard drops. `handshake_generation` is
    /// the generation that admitted it: if a reload swapped it meanwhile,
    /// the connection is re-checked at once.
    pub(super) fn track(self: &Arc<Self>, open: Open, handshake_generation: &Arc<Generation>) -> Tracked {
        let open = Arc::new(open);
        let (id, current) = {
            let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            let id = reg.next;
            reg.next = reg.next.wrapping_add(1);
            reg.open.insert(id, open.clone());
            (id, self.current())
        };
        if !Arc::ptr_eq(&current, handshake_generation) && !current.config.tls.keep_deauthorized {
            recheck(&current, &open);
        }
        Tracked {
            server: self.clone(),
            id,
        }
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
        let l = &generation.config.limits;
        info!(
            "limits: max_connections {}{}, max_handshakes {}, max_handshakes_per_ip {}",
            generation.max_connections,
            if l.max_connections.is_none() {
                " (from the open-file limit)"
            } else {
                ""
            },
            l.max_handshakes,
            l.max_handshakes_per_ip
        );
        for l in listeners {
            let addr = l.local_addr().context("reading a listener's address")?;
            l.set_nonblocking(true).context("setting a listener non-blocking")?;
            let l = Async::new(l).with_context(|| format!("registering listener {addr}"))?;
            if Some(addr) == admin_addr {
                info!("admin endpoint on http://{addr} (/metrics /healthz /status)");
                admin = Some(ex.spawn(crate::core::ops::admin::serve(self.clone(), ex.clone(), l)));
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
        let summaries = ex.spawn(self.clone().log_summaries());
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
        drop(summaries);
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
                    tasks.push(ex.spawn(checker::check_loop(
                        app.balancer.app().clone(),
                        u.clone(),
                        policy.clone(),
                        self.clock().clone(),
                    )));
                }
            }
            if self.reloaded_rx.recv().await.is_err() {
                return;
            }
            drop(tasks);
        }
    }

    /// Once a second: the summary of throttled log lines (caps, accept errors).
    async fn log_summaries(self: Arc<Self>) {
        loop {
            Timer::after(Duration::from_secs(1)).await;
            let now = Instant::now();
            if let Some(n) = self.cap_log.flush(now) {
                warn!(
                    "[limits]: {n} more connection(s) closed at accept in the last second (max_connections {}, max_handshakes {}, max_handshakes_per_ip {} refused so far)",
                    self.metrics.capped_for(Cap::MaxConnections),
                    self.metrics.capped_for(Cap::MaxHandshakes),
                    self.metrics.capped_for(Cap::MaxHandshakesPerIp),
                );
            }
            if let Some(n) = self.accept_log.flush(now) {
                warn!("accept failed {n} more time(s) in the last second");
            }
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
                    let generation = self.current();
                    let slot = match self.admit_preauth(&generation, source_of(peer.ip())) {
                        Ok(slot) => slot,
                        Err(cap) => {
                            self.metrics.count_cap(cap);
                            if let Some(more) = self.cap_log.allow(Instant::now()) {
                                warn!(
                                    %peer,
                                    "[limits] {} reached: connection closed at accept{}",
                                    cap.label(),
                                    if more > 0 {
                                        format!(" ({more} more since the last line)")
                                    } else {
                                        String::new()
                                    }
                                );
                            }
                            drop(stream);
                            continue;
                        }
                    };
                    let held = conn_tx.clone();
                    let hard = hard_rx.clone();
                    let server = self.clone();
                    ex.spawn(async move {
                        let _held = held;
                        let work = std::panic::AssertUnwindSafe(crate::core::proxy::connection::handle(
                            server, generation, slot, stream, local, peer,
                        ))
                        .catch_unwind();
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
                    // EMFILE and friends: back off instead of spinning, and
                    // say so at most once a second.
                    if let Some(more) = self.accept_log.allow(Instant::now()) {
                        let hint = if is_local_error(&e) {
                            " (out of file descriptors or buffers: raise the open-file limit or lower [limits] max_connections)"
                        } else {
                            ""
                        };
                        let more = if more > 0 {
                            format!("; {more} more since the last line")
                        } else {
                            String::new()
                        };
                        warn!("accept on {local} failed: {e}{hint}{more}");
                    }
                    Timer::after(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Takes a connection slot and a handshake slot for a new connection
    /// from source `ip` ([`source_of`]: an IPv4 address or an IPv6 /64), or
    /// names the `[limits]` cap that refuses it.
    fn admit_preauth(self: &Arc<Self>, g: &Generation, ip: IpAddr) -> Result<Slot, Cap> {
        let limits = &g.config.limits;
        let m = &self.metrics;
        if m.active.fetch_add(1, Ordering::AcqRel) >= u64::from(g.max_connections) {
            m.active.fetch_sub(1, Ordering::AcqRel);
            return Err(Cap::MaxConnections);
        }
        // From here on, the slot's drop gives back what was taken.
        let mut slot = Slot {
            server: self.clone(),
            handshaking: None,
        };
        if m.handshakes_active.fetch_add(1, Ordering::AcqRel) >= u64::from(limits.max_handshakes) {
            m.handshakes_active.fetch_sub(1, Ordering::AcqRel);
            return Err(Cap::MaxHandshakes);
        }
        let mut per_ip = self.per_ip.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= limits.max_handshakes_per_ip {
            if *n == 0 {
                per_ip.remove(&ip);
            }
            drop(per_ip);
            m.handshakes_active.fetch_sub(1, Ordering::AcqRel);
            return Err(Cap::MaxHandshakesPerIp);
        }
        *n += 1;
        drop(per_ip);
        slot.handshaking = Some(ip);
        Ok(slot)
    }
}

/// One connection's share of the `[limits]` counters: a connection slot
/// until dropped, and a handshake slot until [`Slot::handshake_done`].
pub(super) struct Slot {
    server: Arc<Server>,
    handshaking: Option<IpAddr>,
}

impl Slot {
    /// The handshake ended (either way): its handshake slot is free.
    pub(super) fn handshake_done(&mut self) {
        let Some(ip) = self.handshaking.take() else {
            return;
        };
        let s = &self.server;
        s.metrics.handshakes_active.fetch_sub(1, Ordering::AcqRel);
        let mut per_ip = s.per_ip.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.handshake_done();
        self.server.metrics.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Registration of an open connection; removed on drop.
pub(super) struct Tracked {
    server: Arc<Server>,
    id: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut reg = self.server.registry.lock().unwrap_or_else(|p| p.into_inner());
        reg.open.remove(&self.id);
    }
}

/// Asks `open` to close if `g` no longer admits it on its app; true if so.
/// A connection whose app is gone is left to drain.
fn recheck(g: &Generation, open: &Open) -> bool {
    let Some(app) = g.app(&open.app) else {
        return false;
    };
    match app.gate.decide_chain(&open.chain) {
        Ok(_) => false,
        Err(refused) => {
            info!(
                identity = %escaped(&open.identity),
                app = %open.app,
                reason = refused.close_reason().label(),
                "closing an open connection: {refused}"
            );
            // Full: a reason is already pending; closed: already gone.
            let _ = open.kill.try_send(refused.close_reason());
            true
        }
    }
}

/// Warns when `[tls] crl` is past its nextUpdate (it is still used).
fn log_crl_state(g: &Generation, now: SystemTime) {
    if let (Some(next), Some(path)) = (g.crl_next_update, g.config.tls.crl.as_ref())
        && next < now
    {
        warn!(
            "CRL {} is past its nextUpdate ({}); it is still enforced, but re-sign it with `tlb pki crl` and reload",
            path.display(),
            humantime::format_rfc3339_seconds(next)
        );
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

/// Accepted TCP stream type, as the connection path receives it.
pub(super) type Accepted = Async<TcpStream>;
