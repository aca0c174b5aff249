//! Server metrics: lock-free counters and histograms on the hot path, and a
//! Prometheus exposition (via `prometheus-client`) built at scrape time.
//!
//! Promises: recording is relaxed atomic adds only (no lock, no allocation,
//! no map lookup): reasons are fixed enums indexing arrays, per-app,
//! per-upstream and per-client counters live in structs the data path
//! already holds. A scrape reads everything from the current config
//! generation; counters survive reloads with the apps, upstreams and
//! clients they belong to.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::core::proxy::server::Server;
use crate::core::tls::gate::CloseReason;

/// Why a handshake did not complete (the `reason` label of
/// `tlb_handshake_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailureKind {
    /// Not completed within `timeouts.handshake`.
    Timeout,
    /// Certificate invalid: unknown CA, expired, revoked, wrong usage.
    BadCertificate,
    /// The client sent no certificate.
    NoCertificate,
    /// Valid certificate, identity not allowed on the app (or SPKI pin mismatch).
    Unauthorized,
    /// SNI matches no app on the listener and there is no default app.
    UnknownSni,
    /// TLS version or parameters the server does not accept.
    Protocol,
    /// Not TLS at all, or a malformed handshake.
    NotTls,
    /// The client aborted with an alert.
    ClientAlert,
    /// The client closed before finishing.
    Eof,
    /// Other TLS or socket errors.
    Other,
}

impl HandshakeFailureKind {
    pub const ALL: [HandshakeFailureKind; 10] = [
        Self::Timeout,
        Self::BadCertificate,
        Self::NoCertificate,
        Self::Unauthorized,
        Self::UnknownSni,
        Self::Protocol,
        Self::NotTls,
        Self::ClientAlert,
        Self::Eof,
        Self::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Timeout => "handshake_timeout",
            Self::BadCertificate => "bad_certificate",
            Self::NoCertificate => "no_certificate",
            Self::Unauthorized => "unauthorized",
            Self::UnknownSni => "unknown_sni",
            Self::Protocol => "protocol",
            Self::NotTls => "not_tls",
            Self::ClientAlert => "client_alert",
            Self::Eof => "eof",
            Self::Other => "other",
        }
    }
}

/// Why a connection that completed its handshake was not relayed (the
/// `reason` label of `tlb_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The identity has no `[[client]]` state. Cannot happen with a
    /// consistent generation (the verifier admits only configured clients;
    /// a resumed session failing its re-check is a handshake failure,
    /// `unauthorized`); kept so the data path refuses rather than panics.
    Unauthorized,
    MaxConnections,
    RateLimited,
    /// Every upstream of the app is DOWN (refused at once).
    NoHealthyUpstream,
    /// Connecting failed on every upstream tried (up to 3, within `timeouts.connect`).
    UpstreamConnectFailed,
    /// The balancer's own resources ran out while connecting (EMFILE,
    /// ENOBUFS, no local port...): not the upstream's fault.
    LocalResource,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Self::Unauthorized,
        Self::MaxConnections,
        Self::RateLimited,
        Self::NoHealthyUpstream,
        Self::UpstreamConnectFailed,
        Self::LocalResource,
    ];

    /// The access log's `reason` for this refusal.
    pub fn access_reason(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "refused: unauthorized",
            Refusal::MaxConnections => "refused: max_connections",
            Refusal::RateLimited => "refused: rate_limited",
            Refusal::NoHealthyUpstream => "refused: no_healthy_upstream",
            Refusal::UpstreamConnectFailed => "refused: upstream_connect_failed",
            Refusal::LocalResource => "refused: local_resource",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::MaxConnections => "max_connections",
            Refusal::RateLimited => "rate_limited",
            Refusal::NoHealthyUpstream => "no_healthy_upstream",
            Refusal::UpstreamConnectFailed => "upstream_connect_failed",
            Refusal::LocalResource => "local_resource",
        }
    }
}

/// A `[limits]` cap that closed a connection at accept, before any TLS
/// work (the `reason` label of `tlb_preauth_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// `[limits] max_connections`: client connections open at once.
    MaxConnections,
    /// `[limits] max_handshakes`: handshakes in progress.
    MaxHandshakes,
    /// `[limits] max_handshakes_per_ip`: handshakes in progress from one address.
    MaxHandshakesPerIp,
}

impl Cap {
    pub const ALL: [Cap; 3] = [Cap::MaxConnections, Cap::MaxHandshakes, Cap::MaxHandshakesPerIp];

    pub fn label(self) -> &'static str {
        match self {
            Cap::MaxConnections => "max_connections",
            Cap::MaxHandshakes => "max_handshakes",
            Cap::MaxHandshakesPerIp => "max_handshakes_per_ip",
        }
    }
}

/// A fixed-bucket histogram of durations, in seconds, recorded with atomics.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, plus the +Inf bucket.
    counts: Box<[AtomicU64]>,
    /// Microseconds: a u64 holds 584,000 years of summed durations.
    sum_micros: AtomicU64,
}

/// Handshake durations: 0.5 ms to 5 s.
pub const HANDSHAKE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Connection durations: 1 ms to 1 h.
pub const CONNECTION_BUCKETS: &[f64] = &[0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.iter().position(|&b| secs <= b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn encode(&self, enc: &mut DescriptorEncoder, name: &str, help: &str) -> std::fmt::Result {
        let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, c.load(Ordering::Relaxed)));
        }
        let count = buckets.iter().map(|b| b.1).sum();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        enc.encode_descriptor(name, help, None, MetricType::Histogram)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }
}

/// Process-wide counters of one server (kept across reloads).
#[derive(Debug)]
pub struct Metrics {
    /// TCP connections accepted.
    pub accepted: AtomicU64,
    /// Connections open now (any stage).
    pub active: AtomicU64,
    /// Connections relayed to an upstream.
    pub proxied: AtomicU64,
    handshake_failures_by: [AtomicU64; HandshakeFailureKind::ALL.len()],
    refused_by: [AtomicU64; Refusal::ALL.len()],
    capped_by: [AtomicU64; Cap::ALL.len()],
    closed_by: [AtomicU64; CloseReason::ALL.len()],
    /// Handshakes in progress now.
    pub handshakes_active: AtomicU64,
    /// Handshakes that resumed a session (after the gate admitted it again).
    pub resumed: AtomicU64,
    /// Session tickets presented but refused by the gate (expired,
    /// revoked, de-authorized, too old): those clients did a full handshake.
    pub tickets_refused: Arc<AtomicU64>,
    /// Accept to handshake done, successful handshakes.
    pub handshake_seconds: Histogram,
    /// Whole life of relayed connections.
    pub connection_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            accepted: AtomicU64::new(0),
            active: AtomicU64::new(0),
            proxied: AtomicU64::new(0),
            handshake_failures_by: Default::default(),
            refused_by: Default::default(),
            capped_by: Default::default(),
            closed_by: Default::default(),
            handshakes_active: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            tickets_refused: Arc::default(),
            handshake_seconds: Histogram::new(HANDSHAKE_BUCKETS),
            connection_seconds: Histogram::new(CONNECTION_BUCKETS),
        }
    }
}

impl Metrics {
    pub fn count_handshake_failure(&self, kind: HandshakeFailureKind) {
        self.handshake_failures_by[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_refusal(&self, r: Refusal) {
        self.refused_by[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Handshakes that did not complete, all reasons.
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures_by
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Connections refused after the handshake, all reasons.
    pub fn refused(&self) -> u64 {
        self.refused_by.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn handshake_failures_for(&self, kind: HandshakeFailureKind) -> u64 {
        self.handshake_failures_by[kind as usize].load(Ordering::Relaxed)
    }

    pub fn refused_for(&self, r: Refusal) -> u64 {
        self.refused_by[r as usize].load(Ordering::Relaxed)
    }

    pub fn count_cap(&self, c: Cap) {
        self.capped_by[c as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn capped_for(&self, c: Cap) -> u64 {
        self.capped_by[c as usize].load(Ordering::Relaxed)
    }

    pub fn count_closed(&self, r: CloseReason) {
        self.closed_by[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed_for(&self, r: CloseReason) -> u64 {
        self.closed_by[r.index()].load(Ordering::Relaxed)
    }
}

/// Per-app counters (kept across reloads while the app keeps its name).
#[derive(Debug, Default)]
pub struct AppStats {
    /// Handshakes completed for this app.
    pub handshakes: AtomicU64,
    /// Connections of this app open now (after the handshake).
    pub active: AtomicU64,
}

/// A registry whose single collector reads `server` at each scrape.
pub fn registry(server: &Arc<Server>) -> Registry {
    let mut r = Registry::with_prefix("tlb");
    r.register_collector(Box::new(ServerCollector(server.clone())));
    r
}

/// The whole exposition, OpenMetrics text (what Prometheus scrapes).
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

struct ServerCollector(Arc<Server>);

impl std::fmt::Debug for ServerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerCollector")
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

/// One metric family with one sample per label set.
fn family<L, V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, V)>,
) -> std::fmt::Result
where
    L: prometheus_client::encoding::EncodeLabelSet,
    V: Into<u64>,
{
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in samples {
        let v: u64 = v.into();
        let fam = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(v).encode(fam)?,
            _ => ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(fam)?,
        }
    }
    Ok(())
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Collector for ServerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let server = &self.0;
        let m = &server.metrics;
        let g = server.current();
        let e = &mut enc;
        counter(e, "connections_accepted", "TCP connections accepted", load(&m.accepted))?;
        gauge(
            e,
            "connections_active",
            "Connections open now, any stage",
            i64::try_from(load(&m.active)).unwrap_or(i64::MAX),
        )?;
        counter(
            e,
            "connections_proxied",
            "Connections relayed to an upstream",
            load(&m.proxied),
        )?;
        family(
            e,
            "handshake_failures",
            "TLS handshakes that did not complete, by reason",
            MetricType::Counter,
            HandshakeFailureKind::ALL.map(|k| ([("reason", k.label())], m.handshake_failures_for(k))),
        )?;
        family(
            e,
            "refused",
            "Connections closed after the handshake without being relayed, by reason",
            MetricType::Counter,
            Refusal::ALL.map(|r| ([("reason", r.label())], m.refused_for(r))),
        )?;
        family(
            e,
            "preauth_refused",
            "Connections closed at accept by a [limits] cap, before any TLS work, by cap",
            MetricType::Counter,
            Cap::ALL.map(|c| ([("reason", c.label())], m.capped_for(c))),
        )?;
        family(
            e,
            "connections_closed",
            "Established connections closed by tlb: revoked or de-authorized by a reload, certificate expired, max_lifetime",
            MetricType::Counter,
            CloseReason::ALL.map(|r| ([("reason", r.label())], m.closed_for(r))),
        )?;
        gauge(
            e,
            "handshakes_active",
            "TLS handshakes in progress now",
            i64::try_from(load(&m.handshakes_active)).unwrap_or(i64::MAX),
        )?;
        counter(
            e,
            "resumptions",
            "Handshakes that resumed a session (the gate admitted its chain again)",
            load(&m.resumed),
        )?;
        counter(
            e,
            "resumptions_refused",
            "Session tickets refused by the gate (chain no longer admitted, or older than session_lifetime); the client did a full handshake",
            load(&m.tickets_refused),
        )?;
        if let Some(t) = g.crl_next_update {
            gauge(
                e,
                "crl_next_update_timestamp_seconds",
                "nextUpdate of [tls] crl (Unix time); re-sign it with `tlb pki crl` before then",
                i64::try_from(crate::core::rt::clock::unix_secs(t)).unwrap_or(i64::MAX),
            )?;
        }
        m.handshake_seconds.encode(
            e,
            "handshake_duration_seconds",
            "TCP accept to TLS handshake done (completed handshakes)",
        )?;
        m.connection_seconds.encode(
            e,
            "connection_duration_seconds",
            "Life of relayed connections, accept to close",
        )?;

        let apps = || g.apps.iter();
        family(
            e,
            "app_connections",
            "Handshakes completed per app",
            MetricType::Counter,
            apps().map(|a| ([("app", a.name.as_str())], load(&a.stats.handshakes))),
        )?;
        family(
            e,
            "app_connections_active",
            "Connections open now per app (after the handshake)",
            MetricType::Gauge,
            apps().map(|a| ([("app", a.name.as_str())], load(&a.stats.active))),
        )?;
        let ups = || {
            apps().flat_map(|a| {
                a.balancer
                    .upstreams()
                    .iter()
                    .map(move |u| (a.name.as_str(), u.as_ref()))
            })
        };
        family(
            e,
            "upstream_connections",
            "Connections established to each upstream",
            MetricType::Counter,
            ups().map(|(a, u)| ([("app", a), ("upstream", u.name.as_str())], u.total())),
        )?;
        family(
            e,
            "upstream_connections_active",
            "Connections open now to each upstream",
            MetricType::Gauge,
            ups().map(|(a, u)| ([("app", a), ("upstream", u.name.as_str())], u.active())),
        )?;
        family(
            e,
            "upstream_up",
            "1 while the upstream receives new connections, 0 while ejected",
            MetricType::Gauge,
            ups().map(|(a, u)| ([("app", a), ("upstream", u.name.as_str())], u64::from(u.is_healthy()))),
        )?;
        family(
            e,
            "upstream_consecutive_failures",
            "Consecutive failed checks or connection attempts",
            MetricType::Gauge,
            ups().map(|(a, u)| {
                (
                    [("app", a), ("upstream", u.name.as_str())],
                    u.health.consecutive_failures(),
                )
            }),
        )?;
        family(
            e,
            "upstream_health_checks",
            "Active health checks by result",
            MetricType::Counter,
            ups().flat_map(|(a, u)| {
                [
                    (
                        [("app", a), ("upstream", u.name.as_str()), ("result", "ok")],
                        u.health.checks_ok(),
                    ),
                    (
                        [("app", a), ("upstream", u.name.as_str()), ("result", "failed")],
                        u.health.checks_failed(),
                    ),
                ]
            }),
        )?;
        family(
            e,
            "upstream_passive_failures",
            "Failed connection attempts from real traffic (refused, timed out, reset before any byte)",
            MetricType::Counter,
            ups().map(|(a, u)| ([("app", a), ("upstream", u.name.as_str())], u.health.passive_failures())),
        )?;
        family(
            e,
            "bytes",
            "Bytes relayed, counted when each connection closes",
            MetricType::Counter,
            ups().flat_map(|(a, u)| {
                [
                    (
                        [("app", a), ("upstream", u.name.as_str()), ("direction", "to_upstream")],
                        load(&u.bytes_to_upstream),
                    ),
                    (
                        [("app", a), ("upstream", u.name.as_str()), ("direction", "to_client")],
                        load(&u.bytes_to_client),
                    ),
                ]
            }),
        )?;

        let mut clients: Vec<_> = g.limiter.clients().collect();
        clients.sort_by(|a, b| a.name.cmp(&b.name));
        family(
            e,
            "client_connections_active",
            "Connections open now per client identity",
            MetricType::Gauge,
            clients.iter().map(|c| ([("client", c.name.as_str())], c.active())),
        )?;
        family(
            e,
            "client_connections",
            "Connections admitted per client identity",
            MetricType::Counter,
            clients.iter().map(|c| ([("client", c.name.as_str())], c.total())),
        )?;
        family(
            e,
            "client_refused",
            "Connections refused by the client's limits",
            MetricType::Counter,
            clients.iter().map(|c| ([("client", c.name.as_str())], c.refused())),
        )?;
        Ok(())
    }
}
