//! This instance's part of the shared limits: what it holds per identity
//! (the connections counted in Redis, which the refreshes renew), the
//! closes Redis has not been told of yet, the "over the rate until T"
//! answers Redis gave, and the local share enforced while Redis is
//! unreachable (`limit / instances`).
//!
//! Promises: one entry per identity the caller names (the caller passes
//! config-bounded names: `[[client]]` names and one name for unlisted
//! clients), so the map is bounded by the config, and each entry's set by
//! the connections open; the closes still to tell Redis are at most
//! [`UNRELEASED_MAX`] (past that, Redis forgets them by their deadline,
//! within `liveness_ttl`); the locks are held for a few operations, never
//! across an await.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::core::config::Limits;

/// Most closes kept for telling Redis once it is back (a connection each).
pub(crate) const UNRELEASED_MAX: usize = 65_536;

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
    /// Connections of this identity open on this instance, and those
    /// waiting for Redis's answer.
    held: u32,
    /// The open ones Redis counts (it said yes), or should count (decided
    /// by the local share): what a refresh renews, by sequence number.
    counted: HashSet<u64>,
    /// Redis said: over the rate until then (no round trip before it).
    blocked_until: Option<Instant>,
    /// The local share's GCRA arrival time.
    tat: Instant,
}

/// Per identity state, behind one lock; the closes Redis missed, behind
/// another.
#[derive(Debug, Default)]
pub(crate) struct Shares {
    map: Mutex<HashMap<Arc<str>, Entry>>,
    unreleased: Mutex<Vec<(Arc<str>, u64)>>,
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
                    counted: HashSet::new(),
                    blocked_until: None,
                    tat: now,
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
        Ok(key)
    }

    /// Connection `seq` of `identity` (taken) is counted in Redis, or
    /// should be: refreshes renew it from now on.
    pub(crate) fn count(&self, identity: &str, seq: u64) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(identity) {
            e.counted.insert(seq);
        }
    }

    /// Gives back connection `seq` of `identity` (refused or closed).
    pub(crate) fn give_back(&self, identity: &str, seq: u64) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(identity) {
            e.held = e.held.saturating_sub(1);
            e.counted.remove(&seq);
        }
    }

    /// Whether connection `seq` of `identity` is still open and counted.
    pub(crate) fn counts(&self, identity: &str, seq: u64) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(identity).is_some_and(|e| e.counted.contains(&seq))
    }

    /// Remembers Redis's "over the rate for `retry`".
    pub(crate) fn block(&self, identity: &str, until: Instant) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(identity) {
            e.blocked_until = Some(until);
        }
    }

    /// What a refresh renews: the counted connections of every identity
    /// that has any (idle identities cost no refresh).
    pub(crate) fn snapshot(&self) -> Vec<(Arc<str>, Vec<u64>)> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(_, e)| !e.counted.is_empty())
            .map(|(k, e)| (k.clone(), e.counted.iter().copied().collect()))
            .collect()
    }

    /// A close (or a refusal Redis may have counted anyway) that Redis
    /// could not be told of: told at the next refresh. Returns false (and
    /// keeps nothing) past [`UNRELEASED_MAX`].
    pub(crate) fn unreleased(&self, identity: Arc<str>, seq: u64) -> bool {
        let mut v = self.unreleased.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() >= UNRELEASED_MAX {
            return false;
        }
        v.push((identity, seq));
        true
    }

    /// The closes to tell Redis of now, by identity (taken: a failed
    /// telling puts them back).
    pub(crate) fn take_unreleased(&self) -> HashMap<Arc<str>, Vec<u64>> {
        let v = std::mem::take(&mut *self.unreleased.lock().unwrap_or_else(|p| p.into_inner()));
        let mut by: HashMap<Arc<str>, Vec<u64>> = HashMap::new();
        for (identity, seq) in v {
            by.entry(identity).or_default().push(seq);
        }
        by
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
        s.give_back("a", 0);
        s.take("a", Some(l), now).expect("3: burst");
        s.give_back("a", 0);
        assert_eq!(s.take("a", Some(l), now), Err(Denied::RateLimited), "burst of 3 spent");
        assert!(
            s.take("a", Some(l), now + Duration::from_millis(1100)).is_ok(),
            "one more a second later"
        );
        assert_eq!(s.held("a"), 2);
    }

    #[test]
    fn refreshes_renew_only_counted_open_connections() {
        let s = Shares::default();
        let now = Instant::now();
        s.take("a", None, now).expect("a 1");
        s.take("a", None, now).expect("a 2: Redis has not answered yet");
        s.take("b", None, now).expect("b");
        s.count("a", 1);
        s.count("b", 7);
        s.give_back("b", 7);
        assert_eq!(
            s.snapshot(),
            [(Arc::from("a"), vec![1])],
            "b closed, a's 2nd not counted yet"
        );
        assert!(s.counts("a", 1) && !s.counts("a", 2) && !s.counts("b", 7));
        assert_eq!(s.held("a"), 2);
        s.give_back("a", 2);
        assert_eq!(s.held("a"), 1);
    }

    #[test]
    fn unreleased_closes_are_bounded_and_grouped() {
        let s = Shares::default();
        let a: Arc<str> = Arc::from("a");
        for seq in 0..UNRELEASED_MAX as u64 {
            assert!(s.unreleased(a.clone(), seq));
        }
        assert!(!s.unreleased(a.clone(), u64::MAX), "full: left to the deadline");
        assert!(!s.unreleased(Arc::from("b"), 1), "for every identity");
        let by = s.take_unreleased();
        assert_eq!(by.get("a").map(Vec::len), Some(UNRELEASED_MAX));
        assert!(s.take_unreleased().is_empty(), "taken");
        assert!(s.unreleased(Arc::from("b"), 1));
        assert_eq!(s.take_unreleased().get("b"), Some(&vec![1]));
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
