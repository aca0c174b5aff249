//! What one bench connection measured: latency histograms, counts, errors
//! by kind and upstreams seen, and their merge over every connection.
//!
//! Promises: each task owns its histograms (no shared lock per request);
//! latencies are clamped to the histogram's 1 us .. 60 s range; every error
//! is labelled and classed by the one classifier ([`super::diagnose`]), in
//! every mode; a connection counts (and its handshake is timed) only once
//! an echo came back on it, so a refused handshake is an error, never a
//! connection.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::Live;
use super::diagnose::{Class, Failure};

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
    /// Errors by label, each with its class.
    pub(super) errors: BTreeMap<String, (Class, u64)>,
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
    pub(super) fn error(&mut self, live: &Live, f: Failure) {
        live.errors.fetch_add(1, Ordering::Relaxed);
        let entry = self.errors.entry(f.label).or_insert((f.class, 0));
        entry.1 += 1;
    }

    /// A connection confirmed (an echo came back on it): counted, with the
    /// handshake time measured when it was opened.
    pub(super) fn connected(&mut self, live: &Live, handshake_us: u64) {
        let _ = self.handshake.record(handshake_us);
        self.handshakes += 1;
        live.connections.fetch_add(1, Ordering::Relaxed);
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
            for (k, (class, n)) in &r.errors {
                all.errors.entry(k.clone()).or_insert((*class, 0)).1 += n;
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
