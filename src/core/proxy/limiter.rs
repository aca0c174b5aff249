//! Per-client limits, keyed by identity across all apps: concurrent
//! connections (`max_connections`) and a token bucket (`connection_rate`
//! new connections per second, `burst` capacity).
//!
//! Promises: a granted [`ClientSlot`] releases its concurrency slot on drop,
//! on every exit path; locks are held for a few arithmetic operations only;
//! state survives reloads (limits are updated in place).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::core::rt::clock::Clock;

use crate::core::config::{Client, Limits};
use crate::core::proxy::outcome::Refusal;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

/// Live state of one client identity.
#[derive(Debug)]
pub struct ClientState {
    pub name: String,
    active: AtomicU32,
    max: AtomicU32,
    total: AtomicU64,
    refused: AtomicU64,
    bucket: Mutex<Bucket>,
    /// Token refills are timed by this clock (tests move it).
    clock: Arc<dyn Clock>,
}

impl ClientState {
    fn new(name: &str, limits: Limits, clock: Arc<dyn Clock>) -> ClientState {
        ClientState {
            name: name.to_string(),
            active: AtomicU32::new(0),
            max: AtomicU32::new(limits.max_connections),
            total: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            bucket: Mutex::new(Bucket {
                tokens: f64::from(limits.burst),
                last: clock.instant(),
                rate: limits.connection_rate,
                burst: f64::from(limits.burst),
            }),
            clock,
        }
    }

    fn update(&self, limits: Limits) {
        self.max.store(limits.max_connections, Ordering::Relaxed);
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        b.rate = limits.connection_rate;
        b.burst = f64::from(limits.burst);
        b.tokens = b.tokens.min(b.burst);
    }

    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }
    pub fn max_connections(&self) -> u32 {
        self.max.load(Ordering::Relaxed)
    }
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The limits in force now.
    pub fn limits(&self) -> Limits {
        let b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        Limits {
            max_connections: self.max.load(Ordering::Relaxed),
            connection_rate: b.rate,
            burst: b.burst as u32,
        }
    }

    /// Counts a refusal decided by the fleet's shared limits.
    pub fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a concurrency slot and a token, or says why not
    /// ([`Refusal::MaxConnections`] or [`Refusal::RateLimited`]).
    pub fn try_acquire(self: &Arc<Self>) -> Result<ClientSlot, Refusal> {
        let max = self.max.load(Ordering::Relaxed);
        let prev = self.active.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::MaxConnections);
        }
        let slot = ClientSlot { client: self.clone() };
        let granted = {
            let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
            let now = self.clock.instant();
            let elapsed = now.duration_since(b.last).as_secs_f64();
            b.last = now;
            b.tokens = (b.tokens + elapsed * b.rate).min(b.burst);
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                true
            } else {
                false
            }
        };
        if !granted {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::RateLimited); // `slot` drops: concurrency slot released
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(slot)
    }
}

/// A held concurrency slot; released on drop.
#[derive(Debug)]
pub struct ClientSlot {
    client: Arc<ClientState>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.client.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Name of the one state unlisted clients admitted in audit mode share.
pub const UNLISTED: &str = "(unlisted)";

/// All clients' states.
#[derive(Debug)]
pub struct Limiter {
    clients: HashMap<String, Arc<ClientState>>,
    /// Unlisted clients admitted by audit mode, together, under `[defaults]`
    /// (one bounded state, not one per presented name).
    unlisted: Arc<ClientState>,
}

impl Limiter {
    /// States for `clients`; entries of `previous` with the same name are
    /// kept (so active counts and buckets survive a reload) with new limits.
    pub fn new(clients: &[Client], defaults: Limits, previous: Option<&Limiter>, clock: &Arc<dyn Clock>) -> Limiter {
        let mut map = HashMap::with_capacity(clients.len());
        for c in clients {
            let state = match previous.and_then(|p| p.clients.get(&c.name)) {
                Some(s) => {
                    s.update(c.limits);
                    s.clone()
                }
                None => Arc::new(ClientState::new(&c.name, c.limits, clock.clone())),
            };
            map.insert(c.name.clone(), state);
        }
        let unlisted = match previous {
            Some(p) => {
                p.unlisted.update(defaults);
                p.unlisted.clone()
            }
            None => Arc::new(ClientState::new(UNLISTED, defaults, clock.clone())),
        };
        Limiter { clients: map, unlisted }
    }

    /// The state of `identity`: its `[[client]]`'s when `listed`, else the
    /// shared one of unlisted clients admitted in audit mode.
    pub fn get(&self, identity: &str, listed: bool) -> Option<&Arc<ClientState>> {
        if listed {
            self.clients.get(identity)
        } else {
            Some(&self.unlisted)
        }
    }

    pub fn clients(&self) -> impl Iterator<Item = &Arc<ClientState>> {
        self.clients.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(max: u32, rate: f64, burst: u32) -> Arc<ClientState> {
        Arc::new(ClientState::new(
            "c",
            Limits {
                max_connections: max,
                connection_rate: rate,
                burst,
            },
            crate::core::rt::clock::system(),
        ))
    }

    #[test]
    fn max_connections_enforced_and_released() {
        let s = state(2, 1000.0, 100);
        let a = s.try_acquire().expect("first");
        let _b = s.try_acquire().expect("second");
        assert_eq!(s.try_acquire().unwrap_err(), Refusal::MaxConnections);
        drop(a);
        assert!(s.try_acquire().is_ok());
    }

    #[test]
    fn bucket_empties_and_refusal_releases_slot() {
        let s = state(100, 0.001, 3);
        for _ in 0..3 {
            drop(s.try_acquire().expect("within burst"));
        }
        assert_eq!(s.try_acquire().unwrap_err(), Refusal::RateLimited);
        assert_eq!(s.active(), 0);
        assert_eq!(s.refused(), 1);
    }
}
