//! The load balancer's state: the current configuration generation, the
//! counters, the open-connection registry, and what the `[limits]` caps
//! count. Reloads happen here; serving is [`Server::run`] (in the `serve`
//! module, above this one); what happens to one connection is in the
//! `connection` module.
//!
//! Entry points: [`Server::new`] builds a server from a validated
//! [`Config`] (loading certificates); [`Server::bind`] binds its app
//! listeners; [`Server::run`] serves them until a shutdown future
//! resolves, then drains. Tests bind `127.0.0.1:0` themselves and need no
//! sleeps. The admin endpoint is not served here: callers spawn
//! `ops::admin::serve` next to `run`.
//!
//! Promises: a reload swaps the generation atomically (all or nothing: on
//! error the old one stays); unless `keep_deauthorized`, every open
//! connection whose chain the new generation's gate refuses is closed at
//! once (revoked, de-authorized, expired), including one admitted by the
//! old generation while the swap happened.

use std::collections::HashMap;
use std::net::{IpAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use smol::channel;
use tracing::info;

use crate::core::cluster::Cluster;
use crate::core::config::Config;
use crate::core::pool::balancer::Upstream;
use crate::core::proxy::activation::Inherited;
use crate::core::proxy::generation::{Deps, Generation};
use crate::core::proxy::listening::{self, Listening};
use crate::core::proxy::registry::{Open, Recheck, Registry, Tracked, recheck};
use crate::core::proxy::stats::Metrics;
use crate::core::rt::clock::{self, Clock};
use crate::core::rt::log::Throttle;
use crate::core::tls::{Material, TicketKeys};

/// A running (or ready to run) load balancer.
pub struct Server {
    generation: RwLock<Arc<Generation>>,
    pub metrics: Metrics,
    pub(super) draining: AtomicBool,
    started: Instant,
    deps: Deps,
    /// Open connections, for reload re-checks.
    registry: Arc<Registry>,
    /// Handshakes in progress per source (see `admission`): an entry exists
    /// only while it counts at least one, so at most `max_handshakes` entries.
    pub(super) handshakes_per_source: Mutex<HashMap<IpAddr, u32>>,
    /// Connections closed at accept by a `[limits]` cap.
    pub(super) cap_log: Throttle,
    /// Accept errors of every app listener.
    pub(super) accept_log: Throttle,
    /// A reload tells the health-check supervisor to restart the checks.
    reloaded_tx: channel::Sender<()>,
    pub(super) reloaded_rx: channel::Receiver<()>,
    /// `[cluster]`'s shared limits, started by [`Server::run`].
    pub(super) cluster: OnceLock<Cluster>,
    /// Listeners reloads bound, for the accept side (see `listening`).
    pub(super) listening: Listening,
    /// Upstreams a reload removed while connections to them were open.
    retired: Mutex<Vec<Retired>>,
}

/// An upstream no generation names any more, until its connections end.
pub struct Retired {
    pub app: String,
    pub upstream: Arc<Upstream>,
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
        let deps = Deps {
            clock,
            ticket_keys: TicketKeys::default(),
            tickets_refused: metrics.tickets_refused.clone(),
            reloads: Mutex::new(()),
        };
        let generation = Generation::build(config, None, &deps)?;
        generation.log_crl_state(deps.clock.now());
        let (reloaded_tx, reloaded_rx) = channel::bounded(1);
        Ok(Arc::new(Server {
            generation: RwLock::new(Arc::new(generation)),
            metrics,
            draining: AtomicBool::new(false),
            started: Instant::now(),
            deps,
            registry: Arc::default(),
            handshakes_per_source: Mutex::default(),
            cap_log: Throttle::new(Duration::from_secs(1)),
            accept_log: Throttle::new(Duration::from_secs(1)),
            reloaded_tx,
            reloaded_rx,
            cluster: OnceLock::new(),
            listening: Listening::default(),
            retired: Mutex::default(),
        }))
    }

    /// Binds the listen address of every app (SO_REUSEADDR, backlog 1024,
    /// `reuse_port`), for [`Server::run`]; [`Inherited`] also takes sockets
    /// handed over. `[admin] listen` is not among them: bind it for
    /// `ops::admin::serve`.
    pub fn bind(config: &Config) -> Result<Vec<TcpListener>> {
        Inherited::none().app_listeners(config)
    }

    /// True once shutdown has begun (no new connections are accepted).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Time since the server was created.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The fleet's shared limits, once serving with `[cluster]`.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.get()
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
    /// closed. Listen addresses the new config adds are bound first (one
    /// that cannot be bound rejects the reload); those it removes stop
    /// accepting, and a removed app's connections are closed once
    /// `[timeouts] drain` has passed. On error the old config stays.
    pub fn reload(&self, config: Config) -> Result<()> {
        self.reload_from(config, &Material::disk(), None)
    }

    /// [`Server::reload`] with the TLS files taken from `files` where it
    /// holds them (the certificate watcher's checked bytes) and, with
    /// `base`, only while `base` is still the current generation (a reload
    /// that happened meanwhile is never undone). One reload at a time.
    pub fn reload_from(&self, config: Config, files: &Material, base: Option<&Arc<Generation>>) -> Result<()> {
        let _one_at_a_time = self.deps.reloads.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current();
        if base.is_some_and(|b| !Arc::ptr_eq(b, &old)) {
            bail!("the configuration was reloaded meanwhile; not replacing it");
        }
        restart_only(&old.config, &config)?;
        let fresh = listening::bind_added(&old.config, &config)?;
        let new = Arc::new(Generation::build_from(config, Some(&old), &self.deps, files)?);
        // Swapped under the registry lock: a connection registering at the
        // same time is either in this snapshot or sees the new generation.
        let open = self.registry.snapshot(|| {
            *self.generation.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        });
        // Full means a restart is already pending: the supervisor reads the latest generation.
        let _ = self.reloaded_tx.try_send(());
        new.log_crl_state(self.deps.clock.now());
        let mut closed = 0usize;
        let mut orphans = Vec::new();
        for o in &open {
            match recheck(&new, o) {
                Recheck::Admitted => {}
                Recheck::Closed => closed = closed.saturating_add(1),
                Recheck::AppRemoved => orphans.push(Arc::downgrade(o)),
            }
        }
        if closed > 0 {
            info!("reload: closing {closed} open connection(s) the new configuration no longer admits");
        }
        let drain = new.config.timeouts.drain;
        if !orphans.is_empty() {
            info!(
                "reload: {} open connection(s) of removed app(s) may finish within [timeouts] drain ({drain:?})",
                orphans.len()
            );
        }
        self.listening
            .hand(fresh, (!orphans.is_empty()).then_some((drain, orphans)));
        self.retire_upstreams(&old, &new);
        Ok(())
    }

    /// Upstreams of `old` that `new` does not keep, while connections to them are open.
    fn retire_upstreams(&self, old: &Generation, new: &Generation) {
        let kept = |u: &Arc<Upstream>| {
            new.apps
                .iter()
                .any(|a| a.balancer.upstreams().iter().any(|k| Arc::ptr_eq(k, u)))
        };
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|r| r.upstream.active() > 0 && !kept(&r.upstream));
        for a in &old.apps {
            for u in a.balancer.upstreams() {
                if u.active() > 0 && !kept(u) {
                    retired.push(Retired {
                        app: a.name.clone(),
                        upstream: u.clone(),
                    });
                }
            }
        }
    }

    /// Duplicates of the app sockets being accepted on (what an upgrade is handed).
    pub fn listening_sockets(&self) -> std::io::Result<Vec<TcpListener>> {
        self.listening.sockets()
    }

    /// Upstreams removed by reloads that still have open connections
    /// (those that reached zero are forgotten).
    pub fn draining_upstreams(&self) -> Vec<(String, Arc<Upstream>)> {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|r| r.upstream.active() > 0);
        retired.iter().map(|r| (r.app.clone(), r.upstream.clone())).collect()
    }

    /// Registers an admitted connection for reload re-checks; it stays
    /// registered until the returned guard drops. `handshake_generation` is
    /// the generation that admitted it: if a reload swapped it meanwhile,
    /// the connection is re-checked at once.
    pub(super) fn track(&self, open: Arc<Open>, handshake_generation: &Arc<Generation>) -> Tracked {
        let (tracked, current) = self.registry.insert(open.clone(), || self.current());
        if !Arc::ptr_eq(&current, handshake_generation) && recheck(&current, &open) == Recheck::AppRemoved {
            // The reload that removed its app did not see it: its drain starts now.
            let drain = current.config.timeouts.drain;
            self.listening
                .hand(Vec::new(), Some((drain, vec![Arc::downgrade(&open)])));
        }
        tracked
    }
}

/// What a reload may not change: these need a restart (or an upgrade).
fn restart_only(old: &Config, new: &Config) -> Result<()> {
    // The admin token follows the reload (the endpoint reads the current
    // generation per request); its address does not.
    let admin_listen = |c: &Config| c.admin.as_ref().map(|a| a.listen);
    if admin_listen(old) != admin_listen(new) {
        bail!(
            "[admin] listen changed; adding, moving or removing the admin endpoint needs a restart (or `tlb serve --upgrade`)"
        );
    }
    if old.control != new.control {
        bail!("[control] socket changed; moving the control socket needs a restart (or `tlb serve --upgrade`)");
    }
    if old.cluster != new.cluster {
        bail!("[cluster] changed; joining, leaving or changing the fleet needs a restart (or `tlb serve --upgrade`)");
    }
    Ok(())
}
