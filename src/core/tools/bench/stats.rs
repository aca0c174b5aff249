//! What one bench connection measured: latency histograms, counts, errors
//! by kind and upstreams seen, and their merge over every connection.
//!
//! Promises: each task owns its histograms (no shared lock per request);
//! latencies are clamped to the histogram's 1 us .. 60 s range; every error
//! is labelled by the one classifier, in every mode.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::core::tools::client::{ClientError, refused_or_io};

use super::Live;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    pub(super) fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

fn new_hist() -> Histogram<u64> {
    // 1 us .. 60 s, 3 significant digits. Bounds are constants: cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// One task's results (or, merged, the run's).
pub(super) struct TaskResult {
    pub(super) handshake: Histogram<u64>,
    pub(super) request: Histogram<u64>,
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) upstreams: BTreeMap<String, u64>,
    pub(super) handshakes: u64,
    pub(super) requests: u64,
    pub(super) bytes: u64,
}

impl TaskResult {
    pub(super) fn new() -> TaskResult {
        TaskResult {
            handshake: new_hist(),
            request: new_hist(),
            errors: BTreeMap::new(),
            upstreams: BTreeMap::new(),
            handshakes: 0,
            requests: 0,
            bytes: 0,
        }
    }
    pub(super) fn error(&mut self, live: &Live, kind: String) {
        live.errors.fetch_add(1, Ordering::Relaxed);
        *self.errors.entry(kind).or_insert(0) += 1;
    }

    /// One echo done: `bytes` echoed, latency from `t0` (when timed), and
    /// the upstream that greeted, if one did.
    pub(super) fn echoed(&mut self, live: &Live, t0: Option<Instant>, bytes: usize, upstream: Option<String>) {
        if let Some(t0) = t0 {
            let _ = self.request.record(us(t0.elapsed()));
        }
        if let Some(n) = upstream {
            *self.upstreams.entry(n).or_insert(0) += 1;
        }
        self.requests += 1;
        self.bytes += bytes as u64;
        live.requests.fetch_add(1, Ordering::Relaxed);
        live.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Every task's results added up.
    pub(super) fn merged(results: &[TaskResult]) -> TaskResult {
        let mut all = TaskResult::new();
        for r in results {
            let _ = all.handshake.add(&r.handshake);
            let _ = all.request.add(&r.request);
            for (k, v) in &r.errors {
                *all.errors.entry(k.clone()).or_insert(0) += v;
            }
            for (k, v) in &r.upstreams {
                *all.upstreams.entry(k.clone()).or_insert(0) += v;
            }
            all.handshakes += r.handshakes;
            all.requests += r.requests;
            all.bytes += r.bytes;
        }
        all
    }
}

pub(super) fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, 60_000_000)
}

/// Short label for an error, for the "errors by kind" table.
pub(super) fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Resolve(..) => "resolve".into(),
        ClientError::Connect { source, .. } => format!("connect: {}", source.kind()),
        ClientError::TlsRefused { detail, .. } => format!("tls refused: {detail}"),
        ClientError::ClosedBeforeReply { .. } => "closed before reply".into(),
        ClientError::Timeout { what, .. } => format!("timeout: {what}"),
        ClientError::Io { detail, .. } => format!("io: {detail}"),
    }
}

/// The one classifier for an I/O error on an established connection, in
/// every mode: an EOF is "closed before reply" when nothing was echoed yet
/// on it, else "closed mid-exchange"; a TLS alert (a refusal arrives on the
/// first read with TLS 1.3) is "tls refused: alert ...".
pub(super) fn io_kind(addr: SocketAddr, e: io::Error, before_reply: bool) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof if before_reply => "closed before reply".into(),
        io::ErrorKind::UnexpectedEof => "closed mid-exchange".into(),
        _ => error_kind(&refused_or_io(addr, e)),
    }
}
