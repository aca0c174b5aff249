//! Least-connections balancing over an app's upstreams, with health, and
//! the connect to the chosen one with retries.
//!
//! Promises: a pick increments the chosen upstream's active count at once
//! (under a short lock that is never held across an await), so concurrent
//! picks spread exactly; ties are broken round-robin from a rotating start,
//! never always the first; DOWN upstreams are skipped, except for one
//! half-open trial at a time when the app is passive-only and the cooldown
//! is over (see `pool::health`); the returned [`UpstreamGuard`] gives the
//! slot back on drop, on every exit path, and releases an unfinished trial.
//! [`Balancer::connect`] retries at most twice within one connect budget,
//! refuses at once when no upstream is UP, and never blames an upstream
//! for the balancer's own resource errors. With `[app.upstream_tls]`, an
//! attempt is the TCP connect and then the TLS handshake, both within the
//! attempt's share of the budget; a failed handshake is a failure of that
//! upstream (reason `upstream_tls: ...`) and retried like a refused
//! connect. Without it, the upstream stream is the plain TCP connection.
//!
//! Outcomes of real connections go through [`Balancer::connected`] (TCP
//! established, and the TLS handshake done when configured: counted), [`Balancer::answered`] (the upstream sent its
//! first byte: a passive success) and [`Balancer::failed`] (a passive
//! failure), which feed the health state and log each state change once.
//! The connect budget is measured on the injected [`Clock`]; the wait for a
//! connect is a real timer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use tracing::warn;

use crate::core::pool::policy::HealthPolicy;
use crate::core::rt::clock::Clock;
use crate::core::rt::net::{TcpConn, describe_io, is_local_error};
use crate::core::rt::timeout;
use crate::core::tls::upstream::{UpstreamStream, UpstreamTlsClient};

/// What a pick hands out (defined in `pool::upstream`; re-exported so the
/// data path imports the balancer alone).
pub use crate::core::pool::upstream::{Upstream, UpstreamGuard};

/// Why [`Balancer::connect`] found no upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectError {
    /// No upstream is UP (and no half-open trial is due): refused at once.
    NoHealthyUpstream,
    /// Every attempt failed (refused, timed out), or the budget ran out.
    Failed,
    /// The balancer's own resources ran out (file descriptors, ports,
    /// memory): no upstream is blamed.
    LocalResource,
}

/// The upstreams of one app and how their health is judged.
#[derive(Debug)]
pub struct Balancer {
    app: Arc<str>,
    upstreams: Vec<Arc<Upstream>>,
    policy: HealthPolicy,
    clock: Arc<dyn Clock>,
    /// Rotating start of the tie-break scan; the lock also serializes picks
    /// so concurrent ones see each other's active counts.
    next: Mutex<usize>,
    /// `[app.upstream_tls]` of this generation; `None`: plain TCP.
    tls: Option<Arc<UpstreamTlsClient>>,
}

/// Why one connect attempt failed.
enum AttemptError {
    /// The balancer's own resources: stop, blame no upstream.
    Local(String),
    /// The upstream's failure: counted, then the next upstream.
    Upstream(String),
}

impl Balancer {
    /// `clock` measures connect budgets (the upstreams' health has its own,
    /// the same server clock).
    pub fn new(app: &str, upstreams: Vec<Arc<Upstream>>, policy: HealthPolicy, clock: Arc<dyn Clock>) -> Balancer {
        Balancer {
            app: Arc::from(app),
            upstreams,
            policy,
            clock,
            next: Mutex::new(0),
            tls: None,
        }
    }

    /// Reaches the upstreams over TLS with `tls` (`None`: plain TCP).
    pub fn with_tls(mut self, tls: Option<Arc<UpstreamTlsClient>>) -> Balancer {
        self.tls = tls;
        self
    }

    /// The TLS towards the upstreams, when configured (health checks use it).
    pub fn tls(&self) -> Option<&Arc<UpstreamTlsClient>> {
        self.tls.as_ref()
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
            } else if u.health.claim_trial(&self.policy) {
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
        UpstreamGuard::acquire(self.upstreams[i].clone(), trial)
    }

    /// The TCP connection to the guard's upstream was established.
    pub fn connected(&self, guard: &UpstreamGuard) {
        guard.count_connected();
    }

    /// The upstream sent its first byte on this connection: a passive
    /// success (and, for a half-open trial, the circuit closes).
    pub fn answered(&self, guard: &mut UpstreamGuard) {
        let trial = guard.take_trial();
        if let Some(t) = guard.upstream().health.passive_success(&self.policy, trial) {
            t.log(&self.app, &guard.upstream().name);
        }
    }

    /// A passive failure on the guard's upstream: connect refused or timed
    /// out, or reset before any byte. Returns the consecutive failure count.
    pub fn failed(&self, guard: &mut UpstreamGuard, reason: &str) -> u32 {
        let trial = guard.take_trial();
        let u = guard.upstream();
        if let Some(t) = u.health.passive_failure(&self.policy, reason, trial) {
            t.log(&self.app, &u.name);
        }
        u.health.consecutive_failures()
    }

    /// Connects to the best healthy upstream; on failure tries the next
    /// best, at most 2 retries, all within `budget`. Each attempt gets an
    /// equal share of what is left among the attempts still possible (an
    /// upstream that drops SYNs costs a third of the budget, not all of
    /// it); the last candidate gets all that is left. Each failure counts
    /// toward the upstream's `fall`; when no upstream is UP the refusal is
    /// immediate; the balancer's own resource errors are
    /// [`ConnectError::LocalResource`], never the upstream's fault.
    /// `preamble` (a PROXY protocol header, or nothing) is written in plain
    /// on each attempt's connection before anything else: a failed write is
    /// a failed attempt.
    pub async fn connect(
        &self,
        budget: Duration,
        preamble: &[u8],
    ) -> Result<(UpstreamGuard, UpstreamStream), ConnectError> {
        const MAX_ATTEMPTS: usize = 3;
        let now = self.clock.instant();
        let deadline = now
            .checked_add(budget)
            .unwrap_or(now + Duration::from_secs(86400 * 365));
        let mut tried = [usize::MAX; MAX_ATTEMPTS];
        let mut last = ConnectError::NoHealthyUpstream;
        for attempt in 0..MAX_ATTEMPTS {
            let Some((idx, mut guard)) = self.pick(&tried[..attempt]) else {
                return Err(last);
            };
            tried[attempt] = idx;
            let up = guard.upstream().clone();
            let left = deadline.saturating_duration_since(self.clock.instant());
            if left.is_zero() {
                return Err(ConnectError::Failed);
            }
            let later = self
                .healthy_excluding(&tried[..=attempt])
                .min(MAX_ATTEMPTS - 1 - attempt);
            let share = left / u32::try_from(later + 1).unwrap_or(1);
            // A half-open trial gets at most a third of the budget.
            let limit = if guard.is_trial() { share.min(budget / 3) } else { share };
            let reason = match self.attempt(&up, limit, preamble).await {
                Ok(s) => {
                    self.connected(&guard);
                    return Ok((guard, s));
                }
                Err(AttemptError::Local(why)) => {
                    // Our own resources ran out: not the upstream's failure, and
                    // another upstream would fail the same way.
                    warn!(app = %self.app, upstream = %up.name, "upstream connect failed on the balancer's side (local_resource): {why}");
                    return Err(ConnectError::LocalResource);
                }
                Err(AttemptError::Upstream(why)) => why,
            };
            let n = self.failed(&mut guard, &reason);
            warn!(app = %self.app, upstream = %up.name, consecutive_failures = n, "upstream connect failed: {reason}");
            last = ConnectError::Failed;
        }
        Err(last)
    }

    /// One attempt on `up` within `limit` (a real timer): the TCP connect,
    /// `preamble` in plain, then, with `[app.upstream_tls]`, the TLS
    /// handshake in what is left.
    async fn attempt(&self, up: &Upstream, limit: Duration, preamble: &[u8]) -> Result<UpstreamStream, AttemptError> {
        let started = std::time::Instant::now();
        let mut tcp = match timeout(limit, TcpConn::connect(up.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) if is_local_error(&e) => return Err(AttemptError::Local(describe_io(&e))),
            Ok(Err(e)) => return Err(AttemptError::Upstream(describe_io(&e))),
            Err(_) => return Err(AttemptError::Upstream(format!("connect timed out after {limit:?}"))),
        };
        if !preamble.is_empty() {
            let left = limit.saturating_sub(started.elapsed());
            match timeout(left, tcp.write_all(preamble)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(AttemptError::Upstream(format!(
                        "writing the PROXY header: {}",
                        describe_io(&e)
                    )));
                }
                Err(_) => {
                    return Err(AttemptError::Upstream(format!(
                        "writing the PROXY header: not done within {limit:?} of the connect"
                    )));
                }
            }
        }
        let Some(tls) = &self.tls else {
            return Ok(UpstreamStream::Plain(tcp));
        };
        let left = limit.saturating_sub(started.elapsed());
        let failed = match timeout(left, tls.handshake(tcp, &up.name)).await {
            Ok(Ok(s)) => return Ok(UpstreamStream::Tls(Box::new(s))),
            Ok(Err(e)) if e.local => return Err(AttemptError::Local(e.reason)),
            Ok(Err(e)) => e.reason,
            Err(_) => format!("upstream_tls: no TLS handshake within {limit:?} of the connect"),
        };
        up.count_tls_failure();
        Err(AttemptError::Upstream(failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::UpstreamAddr;
    use crate::core::pool::policy::COOLDOWN_BASE;
    use crate::core::rt::clock::StoppedClock;
    use std::net::SocketAddr;

    fn bal_on(n: usize, clock: Arc<StoppedClock>) -> Balancer {
        let upstreams = (0..n)
            .map(|i| {
                let addr = UpstreamAddr {
                    name: format!("u{i}"),
                    addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                };
                Arc::new(Upstream::new(&addr, clock.clone()))
            })
            .collect();
        Balancer::new("app", upstreams, HealthPolicy::new(None), clock)
    }

    fn bal(n: usize) -> Balancer {
        bal_on(n, StoppedClock::new())
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

    #[test]
    fn a_due_half_open_trial_goes_first_and_only_once() {
        let clock = StoppedClock::new();
        let b = bal_on(2, clock.clone());
        b.upstreams()[0].set_healthy(false);
        let (i, g) = b.pick(&[]).expect("an upstream");
        assert_eq!((i, g.is_trial()), (1, false), "no trial before the cooldown");
        drop(g);
        clock.advance(COOLDOWN_BASE);
        let (i, trial) = b.pick(&[]).expect("an upstream");
        assert_eq!((i, trial.is_trial()), (0, true));
        let (i, g) = b.pick(&[]).expect("an upstream");
        assert_eq!((i, g.is_trial()), (1, false), "one trial at a time");
        drop(trial);
        // Abandoned: the next trial waits the base cooldown again.
        assert_eq!(b.pick(&[]).map(|(i, _)| i), Some(1));
    }
}
