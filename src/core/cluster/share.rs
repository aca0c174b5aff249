//! This instance's part of the shared limits: what it holds per identity
//! (for the refreshes that keep Redis's counts true), the "over the rate
//! until T" answers Redis gave, and the local share enforced while Redis
//! is unreachable (`limit / instances`).
//!
//! Promises: one entry per identity the caller names (the caller passes
//! config-bounded names: `[[client]]` names and one name for unlisted
//! clients), so the map is bounded by the config; the lock is held for a
//! few arithmetic operations, never across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::core::config::Limits;

/// Why a connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The identity holds `max_connections` (fleet-wide, or this
    /// instance's share while Redis is unreachable).
    MaxConnections,
    /// Over `connection_rate`/`burst`.
    RateLimited,
}

#[derive(Debug)]
struct Entry {
    /// Connections of this identity open on this instance.
    held: u32,
    /// Redis said: over the rate until then (no round trip before it).
    blocked_until: Option<Instant>,
    /// The local share's GCRA arrival time.
    tat: Instant,
    /// Redis was told this instance holds none (no refresh needed until
    /// it holds one again).
    zero_reported: bool,
}

/// Per identity state, behind one lock.
#[derive(Debug, Default)]
pub(crate) struct Shares {
    map: Mutex<HashMap<Arc<str>, Entry>>,
}

/// `limit / instances`, at least 1.
pub(crate) fn share(limits: Limits, instances: u32) -> Limits {
    let n = instances.max(1);
    Limits {
        max_connections: (limits.max_connections / n).max(1),
        connection_rate: limits.connection_rate / f64::from(n),
        burst: (limits.burst / n).max(1),
    }
}

impl Shares {
    /// Takes one connection of `identity` unless Redis's cached answer
    /// refuses it, or (`local`: Redis unreachable) the share `limits` does.
    /// Returns the identity's name as stored.
    pub(crate) fn take(&self, identity: &str, local: Option<Limits>, now: Instant) -> Result<Arc<str>, Denied> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let key: Arc<str> = match map.get_key_value(identity) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = Arc::from(identity);
                let e = Entry {
                    held: 0,
                    blocked_until: None,
                    tat: now,
                    zero_reported: false,
                };
                map.insert(k.clone(), e);
                k
            }
        };
        let Some(e) = map.get_mut(identity) else {
            return Err(Denied::MaxConnections); // just inserted: unreachable
        };
        if e.blocked_until.is_some_and(|until| until > now) {
            return Err(Denied::RateLimited);
        }
        if let Some(l) = local {
            if e.held >= l.max_connections {
                return Err(Denied::MaxConnections);
            }
            let interval = Duration::from_secs_f64((1.0 / l.connection_rate).min(1e9));
            let tat = e.tat.max(now);
            let Some(new_tat) = tat.checked_add(interval) else {
                return Err(Denied::RateLimited);
            };
            let tolerance = interval.saturating_mul(l.burst);
            if new_tat.saturating_duration_since(now) > tolerance {
                return Err(Denied::RateLimited);
            }
            e.tat = new_tat;
        }
        e.held = e.held.saturating_add(1);
        e.zero_reported = false;
        Ok(key)
    }

    /// Gives back one connection of `identity`.
    pub(crate) fn give_back(&self, identity: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(identity) {
            e.held = e.held.saturating_sub(1);
        }
    }

    /// Remembers Redis's "over the rate for `retry`".
    pub(crate) fn block(&self, identity: &str, until: Instant) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(identity) {
            e.blocked_until = Some(until);
        }
    }

    /// What this instance holds, per identity: every identity it holds
    /// connections of, and those it holds none of any more until a refresh
    /// has said so ([`Shares::zero_reported`]); idle identities cost no
    /// refresh.
    pub(crate) fn snapshot(&self) -> Vec<(Arc<str>, u32)> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(_, e)| e.held > 0 || !e.zero_reported)
            .map(|(k, e)| (k.clone(), e.held))
            .collect()
    }

    /// A refresh wrote "none" for `identity`: skip it until it holds one
    /// again (unless it already does).
    pub(crate) fn zero_reported(&self, identity: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(identity)
            && e.held == 0
        {
            e.zero_reported = true;
        }
    }

    /// Connections of `identity` held here.
    pub(crate) fn held(&self, identity: &str) -> u32 {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(identity).map_or(0, |e| e.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: u32, rate: f64, burst: u32) -> Limits {
        Limits {
            max_connections: max,
            connection_rate: rate,
            burst,
        }
    }

    #[test]
    fn the_share_is_the_limit_over_the_fleet_at_least_one() {
        assert_eq!(share(limits(10, 20.0, 40), 4), limits(2, 5.0, 10));
        assert_eq!(share(limits(3, 1.0, 1), 8), limits(1, 0.125, 1));
        assert_eq!(share(limits(3, 1.0, 1), 0), limits(3, 1.0, 1));
    }

    #[test]
    fn the_local_share_caps_concurrency_and_rate() {
        let s = Shares::default();
        let now = Instant::now();
        let l = limits(2, 1.0, 3);
        s.take("a", Some(l), now).expect("1");
        s.take("a", Some(l), now).expect("2");
        assert_eq!(s.take("a", Some(l), now), Err(Denied::MaxConnections));
        s.give_back("a");
        s.take("a", Some(l), now).expect("3: burst");
        s.give_back("a");
        assert_eq!(s.take("a", Some(l), now), Err(Denied::RateLimited), "burst of 3 spent");
        assert!(
            s.take("a", Some(l), now + Duration::from_millis(1100)).is_ok(),
            "one more a second later"
        );
        assert_eq!(s.held("a"), 2);
    }

    #[test]
    fn refreshes_skip_identities_whose_zero_was_reported() {
        let s = Shares::default();
        let now = Instant::now();
        s.take("a", None, now).expect("a");
        s.take("b", None, now).expect("b");
        s.give_back("b");
        let mut snap = s.snapshot();
        snap.sort();
        assert_eq!(snap, [(Arc::from("a"), 1), (Arc::from("b"), 0)]);
        s.zero_reported("b");
        s.zero_reported("a"); // holds one: not skipped
        assert_eq!(s.snapshot(), [(Arc::from("a"), 1)]);
        s.take("b", None, now).expect("b again");
        assert_eq!(s.snapshot().len(), 2, "b holds one again");
    }

    #[test]
    fn a_cached_rate_refusal_holds_until_its_time() {
        let s = Shares::default();
        let now = Instant::now();
        s.take("a", None, now).expect("first");
        s.block("a", now + Duration::from_millis(500));
        assert_eq!(s.take("a", None, now), Err(Denied::RateLimited));
        assert!(s.take("a", None, now + Duration::from_millis(501)).is_ok());
    }
}
