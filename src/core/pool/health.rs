//! Upstream health, the state machine: the state of one upstream
//! ([`UpstreamHealth`]) under an app's [`HealthPolicy`], fed by active check
//! results (from `pool::checker`) and by passive outcomes of real traffic
//! (from `pool::balancer`) — rise/fall and a circuit breaker. No I/O here;
//! time is read from the injected [`Clock`].
//!
//! Promises:
//! - An upstream starts UP. `fall` consecutive failures (active checks and
//!   passive failures alike) take it DOWN; with active checks, `rise`
//!   consecutive successful checks bring it back, and only a successful
//!   check resets the failure count (real traffic cannot mask a failing
//!   send/expect check). Passive-only, a successful connection resets it.
//! - A passive success is a connection on which the upstream sent a byte
//!   (an accept alone proves little: a proxy with a dead backend accepts);
//!   a passive failure is a refused or timed-out connect, or a reset before
//!   the upstream sent any byte. Errors that are the balancer's own
//!   (out of file descriptors, ports or memory) never count against an
//!   upstream.
//! - Without `[app.health]` (passive only, `fall` = 3), a DOWN upstream is
//!   retried half-open after a cooldown of 1 s that doubles after each
//!   failed trial (at most 60 s); one trial connection at a time; a
//!   successful trial closes the circuit.
//! - Each state change is reported exactly once (a [`Transition`] returned
//!   to the one caller that made it), so it is logged once.
//! - The hot path costs relaxed atomic loads per pick and per answered
//!   connection; the state lock is taken only on failures, checks, and (for
//!   a passive-only app with a DOWN upstream) to see whether its half-open
//!   trial is due: a few assignments, never across an await.
//! - Every decision (cooldowns, whether a half-open trial is due,
//!   `retry_in`) reads the monotonic time of the [`Clock`] the upstream was
//!   built with, and every recorded time (`last_change`, a check's `at`) its
//!   wall time: a test moves them with the clock instead of waiting.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::core::pool::policy::{COOLDOWN_BASE, CheckFailure, HealthPolicy, Transition, cooldown};
use crate::core::rt::clock::Clock;

/// The last active check of an upstream.
#[derive(Debug, Clone)]
pub struct CheckRecord {
    pub at: SystemTime,
    pub ok: bool,
    /// `"ok"` or what failed.
    pub detail: String,
    pub took: Duration,
}

/// State changed only under the lock (the failure count too, though it
/// lives in an atomic so the hot path can read it without the lock).
#[derive(Debug, Default)]
struct Inner {
    rises: u32,
    /// Failed half-open trials since the ejection (passive only).
    failed_trials: u32,
    retry_at: Option<Instant>,
    probing: bool,
    last_error: Option<String>,
    last_check: Option<CheckRecord>,
    changed_at: Option<SystemTime>,
    last_transition: Option<Transition>,
}

/// Health state of one upstream; survives reloads with the upstream.
#[derive(Debug)]
pub struct UpstreamHealth {
    up: AtomicBool,
    /// Consecutive failures. Written only under `inner`'s lock; read
    /// without it (a success on a clean upstream takes no lock).
    fails: AtomicU32,
    checks_ok: AtomicU64,
    checks_failed: AtomicU64,
    passive_failures: AtomicU64,
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
}

impl UpstreamHealth {
    /// UP, no failures; decides and records time by `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        UpstreamHealth {
            up: AtomicBool::new(true),
            fails: AtomicU32::new(0),
            checks_ok: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
            passive_failures: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
            clock,
        }
    }
}

/// A read-only copy of the state, for `/status` and tests.
#[derive(Debug, Clone)]
pub struct HealthSnapshot {
    pub up: bool,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    pub last_error: Option<String>,
    pub last_check: Option<CheckRecord>,
    pub last_change: Option<SystemTime>,
    /// The last state change, as it was reported (for a `Down`, the failure
    /// count at the moment of the ejection: later failures do not change it).
    pub last_transition: Option<Transition>,
    /// Passive only, while DOWN: when the next half-open trial may start.
    pub retry_in: Option<Duration>,
    pub checks_ok: u64,
    pub checks_failed: u64,
    pub passive_failures: u64,
}

impl UpstreamHealth {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent under poisoning: each update is a few assignments.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while the upstream may receive new connections normally.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Forces the state (tests, and operators' tools later). Not a transition.
    pub fn set_up(&self, up: bool) {
        let mut g = self.lock();
        self.up.store(up, Ordering::Relaxed);
        self.fails.store(0, Ordering::Relaxed);
        g.rises = 0;
        g.failed_trials = 0;
        g.retry_at = (!up).then(|| self.clock.instant() + cooldown(0));
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.fails.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        let g = self.lock();
        let now = self.clock.instant();
        HealthSnapshot {
            up: self.is_up(),
            consecutive_failures: self.consecutive_failures(),
            consecutive_successes: g.rises,
            last_error: g.last_error.clone(),
            last_check: g.last_check.clone(),
            last_change: g.changed_at,
            last_transition: g.last_transition.clone(),
            retry_in: if self.is_up() {
                None
            } else {
                g.retry_at.map(|t| t.saturating_duration_since(now))
            },
            checks_ok: self.checks_ok.load(Ordering::Relaxed),
            checks_failed: self.checks_failed.load(Ordering::Relaxed),
            passive_failures: self.passive_failures.load(Ordering::Relaxed),
        }
    }

    /// Checks made so far, by result, and passive failures (cheap reads for scrapes).
    pub fn checks_ok(&self) -> u64 {
        self.checks_ok.load(Ordering::Relaxed)
    }
    pub fn checks_failed(&self) -> u64 {
        self.checks_failed.load(Ordering::Relaxed)
    }
    pub fn passive_failures(&self) -> u64 {
        self.passive_failures.load(Ordering::Relaxed)
    }

    /// Passive only: whether a half-open trial may start now (without claiming it).
    pub fn trial_due(&self, policy: &HealthPolicy) -> bool {
        self.trial_allowed(policy) && Self::due(&self.lock(), self.clock.instant())
    }

    /// Claims the half-open trial; false if it is not due or already taken.
    pub fn claim_trial(&self, policy: &HealthPolicy) -> bool {
        if !self.trial_allowed(policy) {
            return false;
        }
        let mut g = self.lock();
        if !Self::due(&g, self.clock.instant()) {
            return false;
        }
        g.probing = true;
        true
    }

    /// Trials are for passive-only apps, and only while DOWN (no lock taken).
    fn trial_allowed(&self, policy: &HealthPolicy) -> bool {
        policy.active.is_none() && !self.is_up()
    }

    fn due(g: &Inner, now: Instant) -> bool {
        !g.probing && g.retry_at.is_none_or(|t| now >= t)
    }

    /// A claimed trial ended without a verdict (e.g. neither side sent a
    /// byte): the next one waits the base cooldown, so an upstream that
    /// never answers is not handed every new client.
    pub fn abandon_trial(&self) {
        let mut g = self.lock();
        g.probing = false;
        if !self.is_up() {
            g.retry_at = Some(self.clock.instant() + COOLDOWN_BASE);
        }
    }

    /// A real connection reached the upstream. `trial`: it was the half-open trial.
    pub fn passive_success(&self, policy: &HealthPolicy, trial: bool) -> Option<Transition> {
        // The hot path: with active checks only checks reset the count; passive
        // only, there is nothing to reset on a clean upstream.
        if !trial && (policy.active.is_some() || self.fails.load(Ordering::Relaxed) == 0) {
            return None;
        }
        let mut g = self.lock();
        if trial {
            g.probing = false;
            if !self.is_up() {
                return Some(self.mark_up(&mut g, "half-open trial connection succeeded".into()));
            }
        }
        if self.is_up() {
            self.fails.store(0, Ordering::Relaxed);
        }
        None
    }

    /// A real connection failed (connect refused or timed out, reset before
    /// any byte). `trial`: it was the half-open trial.
    pub fn passive_failure(&self, policy: &HealthPolicy, reason: &str, trial: bool) -> Option<Transition> {
        self.passive_failures.fetch_add(1, Ordering::Relaxed);
        let mut g = self.lock();
        g.last_error = Some(reason.to_string());
        if trial {
            g.probing = false;
        }
        if !self.is_up() {
            if trial {
                g.failed_trials = g.failed_trials.saturating_add(1);
                g.retry_at = Some(self.clock.instant() + cooldown(g.failed_trials));
            }
            return None;
        }
        self.count_failure(&mut g, policy, reason)
    }

    /// The outcome of one active check, which took `took`.
    pub fn check_result(
        &self,
        policy: &HealthPolicy,
        result: Result<(), CheckFailure>,
        took: Duration,
    ) -> Option<Transition> {
        let ok = result.is_ok();
        if ok {
            self.checks_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.checks_failed.fetch_add(1, Ordering::Relaxed);
        }
        let mut g = self.lock();
        g.last_check = Some(CheckRecord {
            at: self.clock.now(),
            ok,
            detail: match &result {
                Ok(()) => "ok".into(),
                Err(e) => e.detail.clone(),
            },
            took,
        });
        let result = match result {
            // The balancer's own trouble says nothing about the upstream.
            Err(e) if e.local => return None,
            Ok(()) => Ok(()),
            Err(e) => Err(e.detail),
        };
        match result {
            Ok(()) if self.is_up() => {
                self.fails.store(0, Ordering::Relaxed);
                None
            }
            Ok(()) => {
                g.rises += 1;
                if g.rises >= policy.rise {
                    let why = format!("{} consecutive successful checks", g.rises);
                    Some(self.mark_up(&mut g, why))
                } else {
                    None
                }
            }
            Err(e) => {
                g.last_error = Some(e.clone());
                if self.is_up() {
                    self.count_failure(&mut g, policy, &e)
                } else {
                    g.rises = 0;
                    self.fails
                        .store(self.consecutive_failures().saturating_add(1), Ordering::Relaxed);
                    None
                }
            }
        }
    }

    fn count_failure(&self, g: &mut Inner, policy: &HealthPolicy, reason: &str) -> Option<Transition> {
        let fails = self.consecutive_failures().saturating_add(1);
        self.fails.store(fails, Ordering::Relaxed);
        if fails < policy.fall {
            return None;
        }
        self.up.store(false, Ordering::Relaxed);
        g.rises = 0;
        g.failed_trials = 0;
        // Half-open retries are for passive-only apps; active checks decide otherwise.
        g.retry_at = policy.active.is_none().then(|| self.clock.instant() + cooldown(0));
        g.changed_at = Some(self.clock.now());
        let t = Transition::Down {
            failures: fails,
            reason: reason.to_string(),
        };
        g.last_transition = Some(t.clone());
        Some(t)
    }

    fn mark_up(&self, g: &mut Inner, why: String) -> Transition {
        self.up.store(true, Ordering::Relaxed);
        self.fails.store(0, Ordering::Relaxed);
        g.rises = 0;
        g.failed_trials = 0;
        g.retry_at = None;
        g.changed_at = Some(self.clock.now());
        let t = Transition::Up { why };
        g.last_transition = Some(t.clone());
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::HealthSettings;
    use crate::core::pool::policy::{COOLDOWN_MAX, PASSIVE_FALL};
    use crate::core::rt::clock::Clock;
    use crate::core::rt::clock::StoppedClock;

    fn active(rise: u32, fall: u32) -> HealthPolicy {
        HealthPolicy::new(Some(&HealthSettings {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise,
            fall,
            send: vec![],
            expect: vec![],
        }))
    }

    /// A state machine on a clock that only the test moves.
    fn health() -> (UpstreamHealth, Arc<StoppedClock>) {
        let clock = StoppedClock::new();
        (UpstreamHealth::new(clock.clone()), clock)
    }

    fn fail(detail: &str) -> Result<(), CheckFailure> {
        Err(CheckFailure::upstream(detail.into()))
    }

    #[test]
    fn fall_ejects_once_and_rise_restores_once() {
        let p = active(2, 3);
        let (h, clock) = health();
        let d = Duration::from_millis(7);
        clock.advance(Duration::from_secs(3600));
        assert_eq!(h.check_result(&p, fail("x"), d), None);
        assert_eq!(h.passive_failure(&p, "connection refused", false), None);
        let t = h.check_result(&p, fail("timed out"), d);
        assert!(matches!(t, Some(Transition::Down { failures: 3, .. })), "{t:?}");
        assert!(!h.is_up());
        // Recorded times are the clock's.
        let snap = h.snapshot();
        assert_eq!(snap.last_change, Some(clock.now()));
        assert_eq!(snap.last_check.map(|c| (c.at, c.took)), Some((clock.now(), d)));
        // Further failures while down are not new transitions (the count
        // goes on; the recorded transition keeps the count at the ejection).
        assert_eq!(h.check_result(&p, fail("x"), d), None);
        assert_eq!(h.consecutive_failures(), 4);
        assert_eq!(h.snapshot().last_transition, t);
        assert_eq!(h.check_result(&p, Ok(()), d), None);
        // A failure in between resets the rise count.
        assert_eq!(h.check_result(&p, fail("x"), d), None);
        assert_eq!(h.check_result(&p, Ok(()), d), None);
        assert!(matches!(h.check_result(&p, Ok(()), d), Some(Transition::Up { .. })));
        assert!(h.is_up());
        assert_eq!(h.consecutive_failures(), 0);
    }

    #[test]
    fn passive_only_success_resets_consecutive_failures() {
        let p = HealthPolicy::new(None);
        let (h, _) = health();
        h.passive_failure(&p, "a", false);
        h.passive_failure(&p, "b", false);
        assert_eq!(h.passive_success(&p, false), None);
        assert_eq!(h.consecutive_failures(), 0);
        h.passive_failure(&p, "c", false);
        assert!(h.is_up());
    }

    #[test]
    fn with_active_checks_traffic_does_not_mask_failing_checks() {
        let p = active(1, 3);
        let (h, _) = health();
        let d = Duration::ZERO;
        h.check_result(&p, fail("expected reply"), d);
        assert_eq!(h.passive_success(&p, false), None);
        h.check_result(&p, fail("expected reply"), d);
        assert_eq!(h.passive_success(&p, false), None);
        assert!(matches!(
            h.check_result(&p, fail("expected reply"), d),
            Some(Transition::Down { failures: 3, .. })
        ));
        // A good check does reset.
        h.check_result(&p, Ok(()), d);
        assert!(h.is_up());
        assert_eq!(h.consecutive_failures(), 0);
    }

    #[test]
    fn local_errors_never_count() {
        let p = active(1, 1);
        let (h, _) = health();
        let r = Err(CheckFailure {
            detail: "too many open files".into(),
            local: true,
        });
        assert_eq!(h.check_result(&p, r, Duration::ZERO), None);
        assert!(h.is_up());
    }

    #[test]
    fn passive_half_open_backs_off_and_one_success_closes() {
        let p = HealthPolicy::new(None);
        let (h, clock) = health();
        for _ in 0..PASSIVE_FALL {
            h.passive_failure(&p, "connection refused", false);
        }
        assert!(!h.is_up());
        assert!(!h.trial_due(&p), "no trial before the cooldown");
        assert_eq!(h.snapshot().retry_in, Some(cooldown(0)));
        clock.advance(cooldown(0));
        assert!(h.claim_trial(&p));
        assert!(!h.claim_trial(&p), "one trial at a time");
        assert_eq!(h.passive_failure(&p, "connection refused", true), None);
        // Backed off: the next trial waits twice as long.
        clock.advance(cooldown(0));
        assert!(!h.trial_due(&p));
        clock.advance(cooldown(1) - cooldown(0));
        assert!(h.trial_due(&p));
        assert!(h.claim_trial(&p));
        h.abandon_trial();
        // An abandoned trial waits the base cooldown again.
        assert!(!h.trial_due(&p));
        clock.advance(COOLDOWN_BASE);
        assert!(h.claim_trial(&p));
        assert!(matches!(h.passive_success(&p, true), Some(Transition::Up { .. })));
        assert!(h.is_up());
    }

    #[test]
    fn active_policy_never_offers_trials() {
        let p = active(2, 1);
        let (h, clock) = health();
        assert!(h.passive_failure(&p, "x", false).is_some());
        clock.advance(COOLDOWN_MAX);
        assert!(!h.claim_trial(&p));
    }
}
