//! The counters the data path records: process-wide [`Metrics`], per-app
//! [`AppStats`], and fixed-bucket [`Histogram`]s of durations.
//!
//! Promises: recording is relaxed atomic adds only (no lock, no allocation,
//! no map lookup): reasons are the fixed enums of [`outcome`](super::outcome)
//! indexing arrays; per-upstream and per-client counters live in structs the
//! data path already holds. Counters survive reloads with the server, apps,
//! upstreams and clients they belong to. Reading them (the exposition in
//! `ops::metrics`, `/status`, tests) is relaxed loads.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::core::proxy::outcome::{Cap, HandshakeFailureKind, Refusal};
use crate::core::tls::gate::CloseReason;
use crate::core::tls::policy::{Denial, DenialReason};

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

    /// `(upper bound, count)` per bucket, not cumulative, the last bound
    /// being +Inf.
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.counts.iter().enumerate().map(|(i, c)| {
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            (bound, c.load(Ordering::Relaxed))
        })
    }

    /// Sum of the observations, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
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
    /// Changed TLS file sets `[tls] watch` loaded.
    pub rotations_loaded: AtomicU64,
    /// Changed TLS file sets `[tls] watch` refused (each set once, when logged).
    pub rotations_refused: AtomicU64,
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
            rotations_loaded: AtomicU64::new(0),
            rotations_refused: AtomicU64::new(0),
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
    /// Connections audit mode admitted that enforce mode would refuse.
    pub audit_denied: AtomicU64,
    /// (identity, reason) pairs already logged by audit mode, at most
    /// [`AUDIT_LOGGED_MAX`].
    audit_logged: Mutex<HashSet<(String, DenialReason)>>,
    audit_overflow_logged: AtomicBool,
}

/// How many distinct (identity, reason) pairs audit mode logs per app; past
/// it, would-be refusals are only counted (one line says so).
pub const AUDIT_LOGGED_MAX: usize = 4096;

impl AppStats {
    /// Counts an audit-mode admission; true the first time its identity
    /// and reason are seen (log it then, once).
    pub fn audit(&self, d: &Denial) -> bool {
        self.audit_denied.fetch_add(1, Ordering::Relaxed);
        let key = (d.identity.clone().unwrap_or_default(), d.reason);
        let mut seen = self.audit_logged.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(&key) {
            return false;
        }
        if seen.len() >= AUDIT_LOGGED_MAX {
            drop(seen);
            if !self.audit_overflow_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(app = %d.app, "audit: {AUDIT_LOGGED_MAX} identities logged; further would-be refusals are only counted (tlb_audit_denied_total)");
            }
            return false;
        }
        seen.insert(key)
    }
}
