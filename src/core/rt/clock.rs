//! Time as the balancer sees it: certificate validity, ticket age,
//! connection deadlines (wall clock), token buckets and health cooldowns
//! (monotonic clock) are read from an injected [`Clock`], so tests can move
//! time forward instead of waiting for it.
//!
//! Promises: [`SystemClock`] is the real time; [`ManualClock`] is the real
//! time plus an offset that only a test moves, the same offset for both
//! clocks; [`StoppedClock`] stands still unless a test moves it. Code that decides by time takes a `Clock` rather than calling
//! `SystemTime::now()` or `Instant::now()`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::UnixTime;

/// A source of wall-clock and monotonic time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Wall-clock time (certificate validity, tickets).
    fn now(&self) -> SystemTime;
    /// Monotonic time (rates, cooldowns, deadlines).
    fn instant(&self) -> Instant;
}

/// The system's real time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// Real time plus an offset that [`ManualClock::advance`] moves forward
/// (for tests: "the certificate has expired now").
#[derive(Debug, Default)]
pub struct ManualClock {
    ahead_ms: AtomicU64,
}

impl ManualClock {
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock::default())
    }

    /// Moves this clock `by` into the future.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let _ = self
            .ahead_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_add(ms)));
    }
}

impl ManualClock {
    fn ahead(&self) -> Duration {
        Duration::from_millis(self.ahead_ms.load(Ordering::Relaxed))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        let now = SystemTime::now();
        now.checked_add(self.ahead()).unwrap_or(now)
    }
    fn instant(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.ahead()).unwrap_or(now)
    }
}

/// A clock that stands still unless [`StoppedClock::advance`] moves it.
/// A [`ManualClock`] keeps running in real time, so a 1 s cooldown can
/// still pass by itself on a slow machine; with this one, "before the
/// cooldown" and "exactly when it is over" are the test's to say.
#[derive(Debug)]
pub struct StoppedClock {
    at: (Instant, SystemTime),
    ahead_ms: AtomicU64,
}

impl StoppedClock {
    /// A clock stopped at the current real time.
    pub fn new() -> Arc<StoppedClock> {
        Arc::new(StoppedClock {
            at: (Instant::now(), SystemTime::now()),
            ahead_ms: AtomicU64::new(0),
        })
    }

    /// Moves this clock `by` into the future.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let _ = self
            .ahead_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_add(ms)));
    }

    fn ahead(&self) -> Duration {
        Duration::from_millis(self.ahead_ms.load(Ordering::Relaxed))
    }
}

impl Clock for StoppedClock {
    fn now(&self) -> SystemTime {
        self.at.1.checked_add(self.ahead()).unwrap_or(self.at.1)
    }
    fn instant(&self) -> Instant {
        self.at.0.checked_add(self.ahead()).unwrap_or(self.at.0)
    }
}

/// The process's real clock, shared.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `clock` as rustls's time source (certificate validity in handshakes).
#[derive(Debug)]
pub struct RustlsTime(pub Arc<dyn Clock>);

impl rustls::time_provider::TimeProvider for RustlsTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(Duration::from_secs(unix_secs(self.0.now()))))
    }
}
