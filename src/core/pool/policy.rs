//! How an app judges its upstreams, and the words of its verdicts: the
//! [`HealthPolicy`] built from its `[app.health]` table (active checks with
//! rise/fall) or, without one, the passive-only circuit breaker's defaults
//! and cooldown schedule; what a failed check is ([`CheckFailure`]); what a
//! state change reports ([`Transition`]).
//!
//! Promises: passive only, `fall` is [`PASSIVE_FALL`] and a DOWN upstream's
//! half-open retry waits [`cooldown`]`(n)` after `n` failed trials: 1 s,
//! doubling, at most 60 s. Pure data and arithmetic: no state, no time, no
//! I/O (a transition only knows how to word its log line).

use std::time::Duration;

use tracing::{info, warn};

use crate::core::config::HealthSettings;

/// Consecutive passive failures that open the circuit when the app has no
/// `[app.health]` table.
pub const PASSIVE_FALL: u32 = 3;
/// First half-open retry delay after an ejection (passive only).
pub const COOLDOWN_BASE: Duration = Duration::from_secs(1);
/// Longest half-open retry delay.
pub const COOLDOWN_MAX: Duration = Duration::from_secs(60);

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

/// Half-open retry delay after `failed_trials` failed trials.
pub fn cooldown(failed_trials: u32) -> Duration {
    let factor = 1u32 << failed_trials.min(16);
    COOLDOWN_BASE.saturating_mul(factor).min(COOLDOWN_MAX)
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

/// A failed active check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure {
    pub detail: String,
    /// The balancer's own resources failed (see
    /// [`is_local_error`](crate::core::rt::net::is_local_error)): not counted.
    pub local: bool,
}

impl CheckFailure {
    /// The upstream's failure (counted).
    pub fn upstream(detail: String) -> CheckFailure {
        CheckFailure { detail, local: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldown_doubles_and_caps() {
        assert_eq!(cooldown(0), COOLDOWN_BASE);
        assert_eq!(cooldown(1), COOLDOWN_BASE * 2);
        assert_eq!(cooldown(30), COOLDOWN_MAX);
    }
}
