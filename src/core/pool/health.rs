//! Upstream health: active checks (TCP connect, or send/expect) with
//! rise/fall, and passive failures from real traffic feeding the same
//! counter — a circuit breaker.
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
//! - A check is bounded by its `timeout` and never blocks the data path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use smol::Timer;
use tracing::{info, warn};

use crate::core::config::HealthSettings;
use crate::core::pool::balancer::Upstream;
use crate::core::rt::net::TcpConn;
use crate::core::rt::timeout;

/// Consecutive passive failures that open the circuit when the app has no
/// `[app.health]` table.
pub const PASSIVE_FALL: u32 = 3;
/// First half-open retry delay after an ejection (passive only).
pub const COOLDOWN_BASE: Duration = Duration::from_secs(1);
/// Longest half-open retry delay.
pub const COOLDOWN_MAX: Duration = Duration::from_secs(60);
/// A send/expect check reads at most this much looking for `expect`.
const MAX_CHECK_READ: usize = 16 * 1024;

/// How an app judges its upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive failures that eject.
    pub fall: u32,
    /// Consecutive successful active checks that bring an upstream back.
    pub rise: u32,
    /// Active checks, or `None` for passive only (half-open retries).
    pub active: Option<HealthSettings>,
}

impl HealthPolicy {
    pub fn new(settings: Option<&HealthSettings>) -> HealthPolicy {
        match settings {
            Some(s) => HealthPolicy {
                fall: s.fall,
                rise: s.rise,
                active: Some(s.clone()),
            },
            None => HealthPolicy {
                fall: PASSIVE_FALL,
                rise: 1,
                active: None,
            },
        }
    }

    /// `"active"` (checks) or `"passive"` (traffic only).
    pub fn mode(&self) -> &'static str {
        if self.active.is_some() { "active" } else { "passive" }
    }
}

/// A state change, reported once to whoever caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Down { failures: u32, reason: String },
    Up { why: String },
}

impl Transition {
    /// Logs the change: `upstream up2 DOWN: 3 consecutive failures: connection refused`.
    pub fn log(&self, app: &str, upstream: &str) {
        match self {
            Transition::Down { failures, reason } => {
                warn!(
                    app,
                    upstream,
                    state = "down",
                    "upstream {upstream} DOWN: {failures} consecutive failures: {reason}"
                )
            }
            Transition::Up { why } => info!(app, upstream, state = "up", "upstream {upstream} UP: {why}"),
        }
    }
}

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
}

impl Default for UpstreamHealth {
    fn default() -> Self {
        UpstreamHealth {
            up: AtomicBool::new(true),
            fails: AtomicU32::new(0),
            checks_ok: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
            passive_failures: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
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
        g.retry_at = (!up).then(|| Instant::now() + cooldown(0));
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.fails.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        let g = self.lock();
        let now = Instant::now();
        HealthSnapshot {
            up: self.is_up(),
            consecutive_failures: self.consecutive_failures(),
            consecutive_successes: g.rises,
            last_error: g.last_error.clone(),
            last_check: g.last_check.clone(),
            last_change: g.changed_at,
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
    pub fn trial_due(&self, policy: &HealthPolicy, now: Instant) -> bool {
        self.trial_allowed(policy) && Self::due(&self.lock(), now)
    }

    /// Claims the half-open trial; false if it is not due or already taken.
    pub fn claim_trial(&self, policy: &HealthPolicy, now: Instant) -> bool {
        if !self.trial_allowed(policy) {
            return false;
        }
        let mut g = self.lock();
        if !Self::due(&g, now) {
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
            g.retry_at = Some(Instant::now() + COOLDOWN_BASE);
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
                self.mark_up(&mut g);
                return Some(Transition::Up {
                    why: "half-open trial connection succeeded".into(),
                });
            }
        }
        if self.is_up() {
            self.fails.store(0, Ordering::Relaxed);
        }
        None
    }

    /// A real connection failed (connect refused or timed out, reset before
    /// any byte). `trial`: it was the half-open trial.
    pub fn passive_failure(
        &self,
        policy: &HealthPolicy,
        reason: &str,
        trial: bool,
        now: Instant,
    ) -> Option<Transition> {
        self.passive_failures.fetch_add(1, Ordering::Relaxed);
        let mut g = self.lock();
        g.last_error = Some(reason.to_string());
        if trial {
            g.probing = false;
        }
        if !self.is_up() {
            if trial {
                g.failed_trials = g.failed_trials.saturating_add(1);
                g.retry_at = Some(now + cooldown(g.failed_trials));
            }
            return None;
        }
        self.count_failure(&mut g, policy, reason, now)
    }

    /// The outcome of one active check.
    pub fn check_result(
        &self,
        policy: &HealthPolicy,
        result: Result<(), CheckFailure>,
        took: Duration,
        now: Instant,
    ) -> Option<Transition> {
        let ok = result.is_ok();
        if ok {
            self.checks_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.checks_failed.fetch_add(1, Ordering::Relaxed);
        }
        let mut g = self.lock();
        g.last_check = Some(CheckRecord {
            at: SystemTime::now(),
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
                    let n = g.rises;
                    self.mark_up(&mut g);
                    Some(Transition::Up {
                        why: format!("{n} consecutive successful checks"),
                    })
                } else {
                    None
                }
            }
            Err(e) => {
                g.last_error = Some(e.clone());
                if self.is_up() {
                    self.count_failure(&mut g, policy, &e, now)
                } else {
                    g.rises = 0;
                    self.fails
                        .store(self.consecutive_failures().saturating_add(1), Ordering::Relaxed);
                    None
                }
            }
        }
    }

    fn count_failure(&self, g: &mut Inner, policy: &HealthPolicy, reason: &str, now: Instant) -> Option<Transition> {
        let fails = self.consecutive_failures().saturating_add(1);
        self.fails.store(fails, Ordering::Relaxed);
        if fails < policy.fall {
            return None;
        }
        self.up.store(false, Ordering::Relaxed);
        g.rises = 0;
        g.failed_trials = 0;
        // Half-open retries are for passive-only apps; active checks decide otherwise.
        g.retry_at = policy.active.is_none().then(|| now + cooldown(0));
        g.changed_at = Some(SystemTime::now());
        Some(Transition::Down {
            failures: fails,
            reason: reason.to_string(),
        })
    }

    fn mark_up(&self, g: &mut Inner) {
        self.up.store(true, Ordering::Relaxed);
        self.fails.store(0, Ordering::Relaxed);
        g.rises = 0;
        g.failed_trials = 0;
        g.retry_at = None;
        g.changed_at = Some(SystemTime::now());
    }
}

/// Half-open retry delay after `failed_trials` failed trials.
pub fn cooldown(failed_trials: u32) -> Duration {
    let factor = 1u32 << failed_trials.min(16);
    COOLDOWN_BASE.saturating_mul(factor).min(COOLDOWN_MAX)
}

/// A failed active check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure {
    pub detail: String,
    /// The balancer's own resources failed (see [`is_local_error`]): not counted.
    pub local: bool,
}

impl CheckFailure {
    fn upstream(detail: String) -> CheckFailure {
        CheckFailure { detail, local: false }
    }
    fn io(what: &str, e: &std::io::Error) -> CheckFailure {
        CheckFailure {
            detail: format!("{what}{}", describe_io(e)),
            local: is_local_error(e),
        }
    }
}

/// Errors that are the balancer's own, not the upstream's: out of file
/// descriptors (EMFILE, ENFILE), buffers (ENOBUFS), memory, or local ports
/// (EADDRNOTAVAIL). They never count as an upstream failure.
pub fn is_local_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    if matches!(e.kind(), K::AddrNotAvailable | K::OutOfMemory) {
        return true;
    }
    // EMFILE and ENFILE are 24 and 23 on every Unix; ENOBUFS is 105 on Linux.
    matches!(e.raw_os_error(), Some(23 | 24)) || (cfg!(target_os = "linux") && e.raw_os_error() == Some(105))
}

/// Short, stable wording for a connect or I/O error (logs, `/status`).
pub fn describe_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset".into(),
        K::TimedOut => "timed out".into(),
        K::UnexpectedEof => "closed by the upstream".into(),
        K::AddrNotAvailable => "no local address or port available (balancer side)".into(),
        _ => e.to_string(),
    }
}

/// One active check: connect; with `send`, write it; with `expect`, read
/// until those bytes appear. Bounded by `settings.timeout`.
pub async fn probe(addr: SocketAddr, settings: &HealthSettings) -> Result<(), CheckFailure> {
    let run = async {
        let mut conn = TcpConn::connect(addr).await.map_err(|e| CheckFailure::io("", &e))?;
        if !settings.send.is_empty() {
            conn.write_all(&settings.send)
                .await
                .map_err(|e| CheckFailure::io("sending the check payload: ", &e))?;
        }
        if !settings.expect.is_empty() {
            let mut seen = Vec::with_capacity(256);
            let mut buf = [0u8; 2048];
            loop {
                if contains(&seen, &settings.expect) {
                    break;
                }
                if seen.len() >= MAX_CHECK_READ {
                    return Err(CheckFailure::upstream(format!(
                        "expected {:?}, got {} bytes without it",
                        String::from_utf8_lossy(&settings.expect),
                        seen.len()
                    )));
                }
                let n = conn
                    .read(&mut buf)
                    .await
                    .map_err(|e| CheckFailure::io("reading the check reply: ", &e))?;
                if n == 0 {
                    return Err(CheckFailure::upstream(format!(
                        "expected {:?}, got {:?} before the upstream closed",
                        String::from_utf8_lossy(&settings.expect),
                        String::from_utf8_lossy(&seen[..seen.len().min(64)])
                    )));
                }
                seen.extend_from_slice(&buf[..n]);
            }
        }
        let _ = conn.close().await;
        Ok(())
    };
    match timeout(settings.timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(CheckFailure::upstream(format!(
            "no {} within {}",
            if settings.expect.is_empty() {
                "connection"
            } else {
                "expected reply"
            },
            humantime::format_duration(settings.timeout)
        ))),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Checks `upstream` every `interval` forever (the caller cancels the task).
/// The first check runs at once.
pub async fn check_loop(app: Arc<str>, upstream: Arc<Upstream>, policy: HealthPolicy) {
    let Some(settings) = policy.active.clone() else {
        return;
    };
    loop {
        let began = Instant::now();
        let result = probe(upstream.addr, &settings).await;
        if let Some(t) = upstream
            .health
            .check_result(&policy, result, began.elapsed(), Instant::now())
        {
            t.log(&app, &upstream.name);
        }
        match began.checked_add(settings.interval) {
            Some(next) => Timer::at(next).await,
            None => return, // an interval beyond the clock's range: one check only
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn fall_ejects_once_and_rise_restores_once() {
        let p = active(2, 3);
        let h = UpstreamHealth::default();
        let now = Instant::now();
        let d = Duration::ZERO;
        assert_eq!(h.check_result(&p, fail("x"), d, now), None);
        assert_eq!(h.passive_failure(&p, "connection refused", false, now), None);
        let t = h.check_result(&p, fail("timed out"), d, now);
        assert!(matches!(t, Some(Transition::Down { failures: 3, .. })), "{t:?}");
        assert!(!h.is_up());
        // Further failures while down are not new transitions.
        assert_eq!(h.check_result(&p, fail("x"), d, now), None);
        assert_eq!(h.check_result(&p, Ok(()), d, now), None);
        // A failure in between resets the rise count.
        assert_eq!(h.check_result(&p, fail("x"), d, now), None);
        assert_eq!(h.check_result(&p, Ok(()), d, now), None);
        assert!(matches!(
            h.check_result(&p, Ok(()), d, now),
            Some(Transition::Up { .. })
        ));
        assert!(h.is_up());
        assert_eq!(h.consecutive_failures(), 0);
    }

    fn fail(detail: &str) -> Result<(), CheckFailure> {
        Err(CheckFailure::upstream(detail.into()))
    }

    #[test]
    fn passive_only_success_resets_consecutive_failures() {
        let p = HealthPolicy::new(None);
        let h = UpstreamHealth::default();
        let now = Instant::now();
        h.passive_failure(&p, "a", false, now);
        h.passive_failure(&p, "b", false, now);
        assert_eq!(h.passive_success(&p, false), None);
        assert_eq!(h.consecutive_failures(), 0);
        h.passive_failure(&p, "c", false, now);
        assert!(h.is_up());
    }

    #[test]
    fn with_active_checks_traffic_does_not_mask_failing_checks() {
        let p = active(1, 3);
        let h = UpstreamHealth::default();
        let now = Instant::now();
        let d = Duration::ZERO;
        h.check_result(&p, fail("expected reply"), d, now);
        assert_eq!(h.passive_success(&p, false), None);
        h.check_result(&p, fail("expected reply"), d, now);
        assert_eq!(h.passive_success(&p, false), None);
        assert!(matches!(
            h.check_result(&p, fail("expected reply"), d, now),
            Some(Transition::Down { failures: 3, .. })
        ));
        // A good check does reset.
        h.check_result(&p, Ok(()), d, now);
        assert!(h.is_up());
        assert_eq!(h.consecutive_failures(), 0);
    }

    #[test]
    fn local_errors_never_count() {
        let p = active(1, 1);
        let h = UpstreamHealth::default();
        let emfile = std::io::Error::from_raw_os_error(24);
        assert!(is_local_error(&emfile));
        assert!(!is_local_error(&std::io::ErrorKind::ConnectionRefused.into()));
        let r = Err(CheckFailure::io("", &emfile));
        assert_eq!(h.check_result(&p, r, Duration::ZERO, Instant::now()), None);
        assert!(h.is_up());
    }

    #[test]
    fn passive_half_open_backs_off_and_one_success_closes() {
        let p = HealthPolicy::new(None);
        let h = UpstreamHealth::default();
        let t0 = Instant::now();
        for _ in 0..PASSIVE_FALL {
            h.passive_failure(&p, "connection refused", false, t0);
        }
        assert!(!h.is_up());
        assert!(!h.trial_due(&p, t0), "no trial before the cooldown");
        let t1 = t0 + cooldown(0);
        assert!(h.claim_trial(&p, t1));
        assert!(!h.claim_trial(&p, t1), "one trial at a time");
        assert_eq!(h.passive_failure(&p, "connection refused", true, t1), None);
        // Backed off: the next trial waits twice as long.
        assert!(!h.trial_due(&p, t1 + cooldown(0)));
        let t2 = t1 + cooldown(1);
        assert!(h.trial_due(&p, t2));
        assert!(h.claim_trial(&p, t2));
        h.abandon_trial();
        assert!(h.claim_trial(&p, t2));
        assert!(matches!(h.passive_success(&p, true), Some(Transition::Up { .. })));
        assert!(h.is_up());
    }

    #[test]
    fn active_policy_never_offers_trials() {
        let p = active(2, 1);
        let h = UpstreamHealth::default();
        let now = Instant::now();
        assert!(h.passive_failure(&p, "x", false, now).is_some());
        assert!(!h.claim_trial(&p, now + COOLDOWN_MAX));
    }

    #[test]
    fn cooldown_doubles_and_caps() {
        assert_eq!(cooldown(0), COOLDOWN_BASE);
        assert_eq!(cooldown(1), COOLDOWN_BASE * 2);
        assert_eq!(cooldown(30), COOLDOWN_MAX);
    }
}
