//! The Prometheus exposition (via `prometheus-client`) of a running
//! server, built at scrape time from what the data path records
//! ([`crate::core::proxy::stats`]) and the current config generation.
//!
//! Promises: nothing here runs on the data path; a scrape reads relaxed
//! atomics and one generation snapshot, takes no lock the data path waits
//! on, and shows counters that survive reloads with the apps, upstreams and
//! clients they belong to.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::core::proxy::outcome::{Cap, HandshakeFailureKind, Refusal};
use crate::core::proxy::server::Server;
use crate::core::proxy::stats::Histogram;
use crate::core::rt::clock::unix_secs;
use crate::core::tls::gate::CloseReason;

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

fn histogram(enc: &mut DescriptorEncoder, name: &str, help: &str, h: &Histogram) -> std::fmt::Result {
    let buckets: Vec<(f64, u64)> = h.buckets().collect();
    let count = buckets.iter().map(|b| b.1).sum();
    enc.encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(h.sum_seconds(), count, &buckets, None)
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
        if let Some(c) = server.cluster() {
            let st = c.status();
            gauge(
                e,
                "cluster_up",
                "1 while per-client limits are shared through Redis; 0 while this instance enforces its share (limit / instances)",
                i64::from(st.up),
            )?;
            counter(
                e,
                "cluster_errors",
                "Redis calls that failed, were refused or answered later than [cluster] timeout, and failed reconnects",
                st.errors,
            )?;
            counter(
                e,
                "cluster_local_decisions",
                "New connections decided by this instance's share because Redis was unreachable",
                st.local_decisions,
            )?;
        }
        if let Some(t) = g.crl_next_update {
            gauge(
                e,
                "crl_next_update_timestamp_seconds",
                "nextUpdate of [tls] crl (Unix time); re-sign it with `tlb pki crl` before then",
                i64::try_from(unix_secs(t)).unwrap_or(i64::MAX),
            )?;
        }
        family(
            e,
            "certificate_expiry_timestamp_seconds",
            "notAfter (Unix time) of each certificate file loaded, by path: a certificate's leaf, a CA file's earliest",
            MetricType::Gauge,
            g.cert_expiry
                .iter()
                .map(|c| ([("file", c.file.display().to_string())], unix_secs(c.not_after))),
        )?;
        family(
            e,
            "certificate_rotations",
            "Changed TLS file sets [tls] watch loaded, or refused (each bad set once) while the old one kept serving",
            MetricType::Counter,
            [
                ([("result", "loaded")], load(&m.rotations_loaded)),
                ([("result", "refused")], load(&m.rotations_refused)),
            ],
        )?;
        histogram(
            e,
            "handshake_duration_seconds",
            "TCP accept to TLS handshake done (completed handshakes)",
            &m.handshake_seconds,
        )?;
        histogram(
            e,
            "connection_duration_seconds",
            "Life of relayed connections, accept to close",
            &m.connection_seconds,
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
        family(
            e,
            "audit_denied",
            "Connections an app in audit mode admitted that enforce mode would refuse",
            MetricType::Counter,
            apps().map(|a| ([("app", a.name.as_str())], load(&a.stats.audit_denied))),
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
            "upstream_tls_failures",
            "Failed TLS handshakes with the upstream on real traffic ([app.upstream_tls]): its certificate refused, or tlb's refused by it",
            MetricType::Counter,
            ups().map(|(a, u)| ([("app", a), ("upstream", u.name.as_str())], u.tls_failures())),
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
