//! One upstream server as the pool holds it: its address, live counters and
//! health state, and the guard that holds one of its connection slots.
//!
//! Promises: the counters are relaxed atomics (the hot path takes no lock);
//! an [`UpstreamGuard`] is the only way to hold an active slot and gives it
//! back on drop, on every exit path, releasing an unfinished half-open trial
//! too. An `Upstream` is kept across reloads while the app and address stay
//! the same, so its counters and health survive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::core::config::UpstreamAddr;
use crate::core::pool::health::UpstreamHealth;
use crate::core::rt::clock::Clock;

/// One upstream server and its live counters.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    active: AtomicU32,
    total: AtomicU64,
    /// Bytes relayed client -> upstream, counted when a connection closes.
    pub bytes_to_upstream: AtomicU64,
    /// Bytes relayed upstream -> client, counted when a connection closes.
    pub bytes_to_client: AtomicU64,
    /// Failed TLS handshakes with it on real traffic (`[app.upstream_tls]`).
    tls_failures: AtomicU64,
    pub health: UpstreamHealth,
}

impl Upstream {
    /// UP and idle; its health decides by `clock`.
    pub fn new(u: &UpstreamAddr, clock: Arc<dyn Clock>) -> Upstream {
        Upstream {
            name: u.name.clone(),
            addr: u.addr,
            active: AtomicU32::new(0),
            total: AtomicU64::new(0),
            bytes_to_upstream: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            tls_failures: AtomicU64::new(0),
            health: UpstreamHealth::new(clock),
        }
    }
    /// Connections currently proxied to it.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }
    /// Failed TLS handshakes with it on real traffic: its certificate
    /// refused, or tlb's refused by it.
    pub fn tls_failures(&self) -> u64 {
        self.tls_failures.load(Ordering::Relaxed)
    }
    /// Counts a failed TLS handshake with it (see [`Upstream::tls_failures`]).
    pub fn count_tls_failure(&self) {
        self.tls_failures.fetch_add(1, Ordering::Relaxed);
    }
    /// Connections ever established to it (by the data path).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
    pub fn is_healthy(&self) -> bool {
        self.health.is_up()
    }
    /// Forces the health state (tests); not logged as a transition.
    #[cfg(test)]
    pub(super) fn set_healthy(&self, up: bool) {
        self.health.set_up(up);
    }
}

/// Gives the upstream's active slot back when dropped.
#[derive(Debug)]
pub struct UpstreamGuard {
    upstream: Arc<Upstream>,
    /// This connection is the half-open trial and its outcome is not known yet.
    trial: bool,
}

impl UpstreamGuard {
    /// Takes one active slot on `upstream` at once; `trial`: for its
    /// half-open trial (already claimed from its health).
    pub(super) fn acquire(upstream: Arc<Upstream>, trial: bool) -> UpstreamGuard {
        upstream.active.fetch_add(1, Ordering::Relaxed);
        UpstreamGuard { upstream, trial }
    }
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }
    /// Whether this connection is a half-open trial still waiting for its outcome.
    pub fn is_trial(&self) -> bool {
        self.trial
    }
    /// Whether it was the trial; from now on it is not (its outcome is being reported).
    pub(super) fn take_trial(&mut self) -> bool {
        std::mem::take(&mut self.trial)
    }
    /// Counts an established connection on the upstream.
    pub(super) fn count_connected(&self) {
        self.upstream.total.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for UpstreamGuard {
    fn drop(&mut self) {
        self.upstream.active.fetch_sub(1, Ordering::Relaxed);
        if self.trial {
            self.upstream.health.abandon_trial();
        }
    }
}
