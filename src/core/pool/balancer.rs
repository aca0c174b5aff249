//! Least-connections balancing over an app's upstreams, with health.
//!
//! Promises: a pick increments the chosen upstream's active count at once
//! (under a short lock that is never held across an await), so concurrent
//! picks spread exactly; ties are broken round-robin from a rotating start,
//! never always the first; DOWN upstreams are skipped, except for one
//! half-open trial at a time when the app is passive-only and the cooldown
//! is over (see [`crate::core::pool::health`]); the returned [`UpstreamGuard`] gives the
//! slot back on drop, on every exit path, and releases an unfinished trial.
//!
//! Outcomes of real connections go through [`Balancer::connected`] (TCP
//! established: counted), [`Balancer::answered`] (the upstream sent its
//! first byte: a passive success) and [`Balancer::failed`] (a passive
//! failure), which feed the health state and log each state change once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::core::config::UpstreamAddr;
use crate::core::pool::health::{HealthPolicy, UpstreamHealth};

/// One upstream server and its live counters. Kept across reloads while the
/// app and address stay the same.
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
    pub health: UpstreamHealth,
}

impl Upstream {
    pub fn new(u: &UpstreamAddr) -> Upstream {
        Upstream {
            name: u.name.clone(),
            addr: u.addr,
            active: AtomicU32::new(0),
            total: AtomicU64::new(0),
            bytes_to_upstream: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            health: UpstreamHealth::default(),
        }
    }
    /// Connections currently proxied to it.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
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
    fn set_healthy(&self, up: bool) {
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
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }
    /// Whether this connection is a half-open trial still waiting for its outcome.
    pub fn is_trial(&self) -> bool {
        self.trial
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

/// The upstreams of one app and how their health is judged.
#[derive(Debug)]
pub struct Balancer {
    app: Arc<str>,
    upstreams: Vec<Arc<Upstream>>,
    policy: HealthPolicy,
    /// Rotating start of the tie-break scan; the lock also serializes picks
    /// so concurrent ones see each other's active counts.
    next: Mutex<usize>,
}

impl Balancer {
    pub fn new(app: &str, upstreams: Vec<Arc<Upstream>>, policy: HealthPolicy) -> Balancer {
        Balancer {
            app: Arc::from(app),
            upstreams,
            policy,
            next: Mutex::new(0),
        }
    }

    pub fn app(&self) -> &Arc<str> {
        &self.app
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }

    /// The UP upstream with the fewest active connections (or a DOWN one
    /// whose half-open trial is due), skipping those in `exclude` (indices
    /// already tried). `None` when none is left: refuse at once.
    pub fn pick(&self, exclude: &[usize]) -> Option<(usize, UpstreamGuard)> {
        let n = self.upstreams.len();
        if n == 0 {
            return None;
        }
        let now = Instant::now();
        // Poisoning cannot leave state inconsistent: a counter only.
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let start = *next % n;
        *next = next.wrapping_add(1);
        let mut best: Option<(usize, u32)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if exclude.contains(&i) {
                continue;
            }
            let u = &self.upstreams[i];
            if u.is_healthy() {
                let a = u.active();
                if best.is_none_or(|(_, b)| a < b) {
                    best = Some((i, a));
                }
            } else if u.health.claim_trial(&self.policy, now) {
                // A due half-open trial goes first, so a recovered upstream
                // is probed at once even while others carry the load.
                return Some((i, self.take(i, true)));
            }
        }
        let (i, _) = best?;
        Some((i, self.take(i, false)))
    }

    /// UP upstreams not in `exclude` (candidates for a retry).
    pub fn healthy_excluding(&self, exclude: &[usize]) -> usize {
        self.upstreams
            .iter()
            .enumerate()
            .filter(|(i, u)| !exclude.contains(i) && u.is_healthy())
            .count()
    }

    fn take(&self, i: usize, trial: bool) -> UpstreamGuard {
        let u = self.upstreams[i].clone();
        u.active.fetch_add(1, Ordering::Relaxed);
        UpstreamGuard { upstream: u, trial }
    }

    /// The TCP connection to the guard's upstream was established.
    pub fn connected(&self, guard: &UpstreamGuard) {
        guard.upstream.total.fetch_add(1, Ordering::Relaxed);
    }

    /// The upstream sent its first byte on this connection: a passive
    /// success (and, for a half-open trial, the circuit closes).
    pub fn answered(&self, guard: &mut UpstreamGuard) {
        let trial = std::mem::take(&mut guard.trial);
        if let Some(t) = guard.upstream.health.passive_success(&self.policy, trial) {
            t.log(&self.app, &guard.upstream.name);
        }
    }

    /// A passive failure on the guard's upstream: connect refused or timed
    /// out, or reset before any byte. Returns the consecutive failure count.
    pub fn failed(&self, guard: &mut UpstreamGuard, reason: &str) -> u32 {
        let trial = std::mem::take(&mut guard.trial);
        let u = &guard.upstream;
        if let Some(t) = u.health.passive_failure(&self.policy, reason, trial, Instant::now()) {
            t.log(&self.app, &u.name);
        }
        u.health.consecutive_failures()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bal(n: usize) -> Balancer {
        Balancer::new(
            "app",
            (0..n)
                .map(|i| {
                    Arc::new(Upstream::new(&UpstreamAddr {
                        name: format!("u{i}"),
                        addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                    }))
                })
                .collect(),
            HealthPolicy::new(None),
        )
    }

    #[test]
    fn sequential_ties_rotate() {
        let b = bal(3);
        let mut seen = Vec::new();
        for _ in 0..6 {
            let (i, g) = b.pick(&[]).expect("an upstream");
            seen.push(i);
            drop(g);
        }
        for i in 0..3 {
            assert_eq!(seen.iter().filter(|&&x| x == i).count(), 2, "{seen:?}");
        }
    }

    #[test]
    fn held_connections_spread_evenly_and_release() {
        let b = bal(3);
        let guards: Vec<_> = (0..6).map(|_| b.pick(&[]).expect("an upstream")).collect();
        for u in b.upstreams() {
            assert_eq!(u.active(), 2);
        }
        drop(guards);
        for u in b.upstreams() {
            assert_eq!(u.active(), 0);
        }
    }

    #[test]
    fn least_connections_wins_and_unhealthy_skipped() {
        let b = bal(3);
        let _a = b.pick(&[]);
        let _b = b.pick(&[]);
        // One upstream has 0 active: it must be chosen.
        let (i, _g) = b.pick(&[]).expect("an upstream");
        assert_eq!(b.upstreams()[i].active(), 1);
        b.upstreams()[0].set_healthy(false);
        b.upstreams()[1].set_healthy(false);
        for _ in 0..3 {
            let (i, _g) = b.pick(&[]).expect("an upstream");
            assert_eq!(i, 2);
        }
        assert!(b.pick(&[2]).is_none());
    }
}
