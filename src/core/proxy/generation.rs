//! A configuration generation: everything the data path derives from one
//! [`Config`] (apps with their TLS configs, gates and balancers, the apps
//! of each listener by SNI, per-client limiter state, TLS towards each
//! app's upstreams, read from its files again), built whole and
//! swapped whole on reload.
//!
//! Promises: building is all-or-nothing (an error leaves nothing half
//! applied); every TLS file is read once per build (from disk, or the bytes
//! handed in), and the generation names what it loaded (each file's
//! SHA-256, each certificate file's expiry); a generation is immutable once built; what must outlive a
//! reload is carried over from the previous generation by name: upstream
//! states (same app, name and address), app counters (same app name) and
//! client limiter state (same client name).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{Context, Result};
use rustls::ServerConfig;
use tracing::warn;

use crate::core::config::{App, Config, ProxyProtocol};
use crate::core::pool::balancer::{Balancer, Upstream};
use crate::core::pool::policy::HealthPolicy;
use crate::core::proxy::limiter::Limiter;
use crate::core::proxy::stats::AppStats;
use crate::core::rt::clock::Clock;
use crate::core::tls::expiry::{self, CertExpiry};
use crate::core::tls::gate::Gate;
use crate::core::tls::material::{Digest, Material};
use crate::core::tls::upstream::UpstreamTlsClient;
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
    /// The PROXY header its upstream connections (and checks) start with.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// With v2: the client certificate goes in the header.
    pub proxy_protocol_cert: bool,
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
    /// Every TLS file this generation was built from, with the SHA-256 of
    /// the bytes it used, by path: what `[tls] watch` compares the disk with.
    pub files: Vec<(PathBuf, Digest)>,
    /// When each certificate file it loaded expires.
    pub cert_expiry: Vec<CertExpiry>,
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

/// What building a generation needs from the server, the same for every
/// generation.
pub(super) struct Deps {
    pub clock: Arc<dyn Clock>,
    pub ticket_keys: TicketKeys,
    pub tickets_refused: Arc<AtomicU64>,
    /// Held for the whole of a reload: one at a time.
    pub reloads: Mutex<()>,
}

impl Generation {
    /// Loads the TLS material of `config` from disk and builds its
    /// data-path state, carrying state over from `previous` (see the
    /// module's promises).
    pub(super) fn build(config: Config, previous: Option<&Generation>, deps: &Deps) -> Result<Generation> {
        Generation::build_from(config, previous, deps, &Material::disk())
    }

    /// [`Generation::build`] with the TLS files read from `files`.
    pub(super) fn build_from(
        config: Config,
        previous: Option<&Generation>,
        deps: &Deps,
        files: &Material,
    ) -> Result<Generation> {
        let tls = ServerTls::load(&config, files, &deps.clock, &deps.ticket_keys, &deps.tickets_refused)?;
        let mut apps = Vec::with_capacity(config.apps.len());
        let mut listeners: HashMap<SocketAddr, ListenerApps> = HashMap::new();
        for app in &config.apps {
            let (server_config, gate) = tls
                .apps
                .get(&app.name)
                .cloned()
                .with_context(|| format!("internal: no TLS config for app {}", app.name))?;
            let upstream_tls = match &app.upstream_tls {
                Some(t) => Some(Arc::new(UpstreamTlsClient::load(app, t, files)?)),
                None => None,
            };
            let rt = Arc::new(AppRuntime {
                name: app.name.clone(),
                balancer: Balancer::new(
                    &app.name,
                    upstreams_for(app, previous, &deps.clock),
                    HealthPolicy::new(app.health.as_ref()),
                    deps.clock.clone(),
                )
                .with_tls(upstream_tls),
                server_config,
                gate,
                stats: previous
                    .and_then(|p| p.app(&app.name))
                    .map(|a| a.stats.clone())
                    .unwrap_or_default(),
                proxy_protocol: app.proxy_protocol,
                proxy_protocol_cert: app.proxy_protocol_cert,
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
        let limiter = Limiter::new(
            &config.clients,
            config.defaults,
            previous.map(|p| &p.limiter),
            &deps.clock,
        );
        let max_connections = config.limits.max_connections.unwrap_or_else(default_max_connections);
        let cert_expiry = expiry::of(&config, files);
        Ok(Generation {
            config,
            apps,
            listeners,
            reject: tls.reject,
            limiter,
            crl_next_update: tls.crl_next_update,
            max_connections,
            files: files.digests(),
            cert_expiry,
        })
    }

    pub fn app(&self, name: &str) -> Option<&Arc<AppRuntime>> {
        self.apps.iter().find(|a| a.name == name)
    }

    /// The names of the apps served on listener `addr`, comma-separated.
    pub fn app_names_on(&self, addr: SocketAddr) -> String {
        self.config
            .apps
            .iter()
            .filter(|a| a.listen == addr)
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Warns when `[tls] crl` is past its nextUpdate (it is still used).
    pub(super) fn log_crl_state(&self, now: SystemTime) {
        if let (Some(next), Some(path)) = (self.crl_next_update, self.config.tls.crl.as_ref())
            && next < now
        {
            warn!(
                "CRL {} is past its nextUpdate ({}); it is still enforced, but re-sign it with `tlb pki crl` and reload",
                path.display(),
                humantime::format_rfc3339_seconds(next)
            );
        }
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
