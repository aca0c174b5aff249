//! Least-connections balancing over an app's upstreams.
//!
//! Promises: a pick increments the chosen upstream's active count at once
//! (under a short lock that is never held across an await), so concurrent
//! picks spread exactly; ties are broken round-robin from a rotating start,
//! never always the first; unhealthy upstreams are skipped; the returned
//! [`UpstreamGuard`] gives the slot back on drop, on every exit path.
//!
//! Health is a seam: [`Upstream::record_failure`] / [`Upstream::record_success`]
//! are called by the data path (passive checks) and the state they keep is
//! what the health module turns into ejection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::config::UpstreamAddr;

/// One upstream server and its live counters.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    active: AtomicU32,
    total: AtomicU64,
    healthy: AtomicBool,
    consecutive_failures: AtomicU32,
    last_error: Mutex<Option<String>>,
}

impl Upstream {
    pub fn new(u: &UpstreamAddr) -> Upstream {
        Upstream {
            name: u.name.clone(),
            addr: u.addr,
            active: AtomicU32::new(0),
            total: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            consecutive_failures: AtomicU32::new(0),
            last_error: Mutex::new(None),
        }
    }
    /// Connections currently proxied to it.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }
    /// Connections ever proxied to it.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
    pub fn set_healthy(&self, up: bool) {
        self.healthy.store(up, Ordering::Relaxed);
    }
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|g| g.clone())
    }
    /// A connection attempt failed (refused, timed out, reset before any byte).
    /// Returns the number of consecutive failures.
    pub fn record_failure(&self, reason: &str) -> u32 {
        if let Ok(mut g) = self.last_error.lock() {
            *g = Some(reason.to_string());
        }
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }
    /// A connection attempt succeeded.
    pub fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }
}

/// Gives the upstream's active slot back when dropped.
#[derive(Debug)]
pub struct UpstreamGuard {
    upstream: Arc<Upstream>,
}

impl UpstreamGuard {
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }
}

impl Drop for UpstreamGuard {
    fn drop(&mut self) {
        self.upstream.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The upstreams of one app.
#[derive(Debug)]
pub struct Balancer {
    upstreams: Vec<Arc<Upstream>>,
    next: AtomicUsize,
    pick_lock: Mutex<()>,
}

impl Balancer {
    pub fn new(upstreams: Vec<Arc<Upstream>>) -> Balancer {
        Balancer {
            upstreams,
            next: AtomicUsize::new(0),
            pick_lock: Mutex::new(()),
        }
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// True when at least one upstream is healthy.
    pub fn any_healthy(&self) -> bool {
        self.upstreams.iter().any(|u| u.is_healthy())
    }

    /// The healthy upstream with the fewest active connections, skipping
    /// those in `exclude` (indices already tried). `None` when none is left.
    pub fn pick(&self, exclude: &[usize]) -> Option<(usize, UpstreamGuard)> {
        let n = self.upstreams.len();
        if n == 0 {
            return None;
        }
        // Poisoning cannot leave state inconsistent here: the lock guards no data.
        let _g = self.pick_lock.lock().unwrap_or_else(|p| p.into_inner());
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, u32)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if exclude.contains(&i) {
                continue;
            }
            let u = &self.upstreams[i];
            if !u.is_healthy() {
                continue;
            }
            let a = u.active();
            if best.is_none_or(|(_, b)| a < b) {
                best = Some((i, a));
            }
        }
        let (i, _) = best?;
        let u = self.upstreams[i].clone();
        u.active.fetch_add(1, Ordering::Relaxed);
        u.total.fetch_add(1, Ordering::Relaxed);
        Some((i, UpstreamGuard { upstream: u }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bal(n: usize) -> Balancer {
        Balancer::new(
            (0..n)
                .map(|i| {
                    Arc::new(Upstream::new(&UpstreamAddr {
                        name: format!("u{i}"),
                        addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                    }))
                })
                .collect(),
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
