//! `[cluster]`: per-client limits shared by a fleet of instances through
//! Redis, failing open to a local share of each limit.
//!
//! - [`scripts`]: the keys (hash-tagged by identity), the member naming one
//!   connection, and the Lua scripts (admit: liveness, concurrency and GCRA
//!   rate in one atomic call, timed by Redis `TIME`; refresh);
//! - [`dial`]: opening a connection, its driver on tlb's executor;
//! - [`link`]: the connection to Redis and its up/down state;
//! - [`share`]: what this instance holds, cached refusals, the local share.
//!
//! Promises: [`Cluster::admit`] makes at most one Redis call, bounded by
//! `timeout`, and none while Redis is down or while a cached "over the rate
//! until T" holds; a granted [`ClusterSlot`] gives its connection back on
//! drop, on every exit path (to Redis in the background, bounded by
//! `timeout`; a close Redis could not be told of is told at the next
//! refresh); while Redis is unreachable, slow or refusing, each identity
//! gets `limit / instances` on this instance, and a background keeper
//! reconnects on its own; every third of `liveness_ttl` the keeper renews
//! the deadline of every connection this instance holds (and writes back
//! those Redis lost), or `PING`s Redis when it holds none (so `/status`
//! of an idle instance says when Redis is gone), so connections of crashed
//! instances are forgotten within `liveness_ttl`, and Redis counts each
//! open connection once whatever order its writes arrive in (one member
//! per connection: see [`scripts`]).

pub(crate) mod dial;
pub(crate) mod link;
pub(crate) mod scripts;
pub(crate) mod share;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::Value;
use smol::{Executor, channel};

use crate::core::cluster::link::Link;
use crate::core::cluster::scripts::{Scripts, conns_key, member, rate_key};
pub use crate::core::cluster::share::Denied;
use crate::core::cluster::share::Shares;
use crate::core::config::{ClusterSettings, Limits};
use crate::core::rt::timeout;

/// Reconnect back-off while Redis is unreachable.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Longest a "over the rate until T" answer is trusted without asking again.
const MAX_CACHED_REFUSAL: Duration = Duration::from_secs(60);
/// Most members per refresh or release call (a few KiB of command).
const CHUNK: usize = 256;

/// A handle on the shared limits (cheap to clone).
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("instance", &self.inner.settings.instance)
            .field("link", &self.inner.link)
            .finish()
    }
}

struct Inner {
    settings: ClusterSettings,
    link: Link,
    scripts: Scripts,
    shares: Shares,
    ex: Arc<Executor<'static>>,
    /// Connections decided by the local share (Redis unreachable).
    local_decisions: AtomicU64,
    /// `INSTANCE#RANDOM`: this process's part of every member it writes.
    token: String,
    /// The next connection's sequence number.
    seq: AtomicU64,
}

/// What `/status` shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClusterStatus {
    /// `"shared"` (Redis up) or `"local"` (each limit / instances).
    pub mode: &'static str,
    pub up: bool,
    pub redis: String,
    pub instance: String,
    pub instances: u32,
    pub errors: u64,
    pub local_decisions: u64,
}

impl Cluster {
    /// Starts the keeper (connects in the background: until Redis answers,
    /// limits are local) on `ex`. Fails only on a URL the client refuses
    /// (or a system without randomness).
    pub fn start(settings: ClusterSettings, ex: &Arc<Executor<'static>>) -> Result<Cluster, String> {
        let (link, broken) = Link::new(&settings)?;
        let mut random = [0u8; 8];
        aws_lc_rs::rand::fill(&mut random).map_err(|_| {
            "the system random number generator failed (needed to name this instance's connections in Redis)"
                .to_string()
        })?;
        let token = format!("{}#{}", settings.instance, hex::encode(random));
        tracing::info!(
            "cluster: instance {:?}, Redis at {}, fleet of {}, timeout {}",
            settings.instance,
            settings.redis,
            settings.instances,
            humantime::format_duration(settings.timeout)
        );
        let inner = Arc::new(Inner {
            settings,
            link,
            scripts: Scripts::new(),
            shares: Shares::default(),
            ex: ex.clone(),
            local_decisions: AtomicU64::new(0),
            token,
            seq: AtomicU64::new(0),
        });
        ex.spawn(keep(Arc::downgrade(&inner), broken)).detach();
        Ok(Cluster { inner })
    }

    /// Whether limits are shared now (Redis up).
    pub fn is_up(&self) -> bool {
        self.inner.link.is_up()
    }

    pub fn status(&self) -> ClusterStatus {
        let i = &self.inner;
        let up = i.link.is_up();
        ClusterStatus {
            mode: if up { "shared" } else { "local" },
            up,
            redis: i.settings.redis.clone(),
            instance: i.settings.instance.clone(),
            instances: i.settings.instances,
            errors: i.link.errors(),
            local_decisions: i.local_decisions.load(Ordering::Relaxed),
        }
    }

    /// Stops talking to Redis for good (at exit): no more refreshes or
    /// releases, limits local from now on. The fleet forgets this
    /// instance's counts within `liveness_ttl`, as after a crash.
    pub fn leave(&self) {
        self.inner.link.close();
    }

    /// Connections of `identity` this instance holds.
    pub fn held(&self, identity: &str) -> u32 {
        self.inner.shares.held(identity)
    }

    /// Admits one new connection of `identity` under `limits` (fleet-wide
    /// when Redis is up, `limits / instances` here when it is not).
    pub async fn admit(&self, identity: &str, limits: Limits) -> Result<ClusterSlot, Denied> {
        let i = &self.inner;
        let now = Instant::now();
        let seq = i.seq.fetch_add(1, Ordering::Relaxed);
        if !i.link.is_up() {
            return self.admit_locally(identity, limits, seq, now);
        }
        let key = i.shares.take(identity, None, now)?;
        let slot = ClusterSlot {
            inner: i.clone(),
            identity: key.clone(),
            seq,
            release: true,
        };
        match self.admit_shared(identity, seq, limits).await {
            Some(Shared::Admitted) => {
                i.shares.count(&key, seq);
                Ok(slot)
            }
            Some(Shared::OverMax) => Err(slot.forget(Denied::MaxConnections)),
            Some(Shared::OverRate(retry)) => {
                // Remembered for at most a minute (then Redis is asked again).
                if let Some(until) = Instant::now().checked_add(retry.min(MAX_CACHED_REFUSAL)) {
                    i.shares.block(identity, until);
                }
                Err(slot.forget(Denied::RateLimited))
            }
            None => {
                // Redis failed or was late, and may still count this
                // member: the share decides, for the same member; a refusal
                // is told to Redis once it is back.
                let _ = slot.forget(Denied::RateLimited);
                let decided = self.admit_locally(identity, limits, seq, Instant::now());
                if decided.is_err() {
                    i.shares.unreleased(key, seq);
                }
                decided
            }
        }
    }

    fn admit_locally(&self, identity: &str, limits: Limits, seq: u64, now: Instant) -> Result<ClusterSlot, Denied> {
        let i = &self.inner;
        let share = share::share(limits, i.settings.instances);
        let key = i.shares.take(identity, Some(share), now)?;
        // Counted: the next refresh writes it to Redis.
        i.shares.count(&key, seq);
        i.local_decisions.fetch_add(1, Ordering::Relaxed);
        Ok(ClusterSlot {
            inner: i.clone(),
            identity: key,
            seq,
            release: true,
        })
    }

    /// The admit script; `None` when Redis failed (the link is then down).
    async fn admit_shared(&self, identity: &str, seq: u64, limits: Limits) -> Option<Shared> {
        let i = &self.inner;
        let s = &i.settings;
        let interval_us = (1e6 / limits.connection_rate).min(1e15);
        let ttl_ms = ms(s.liveness_ttl);
        let mut inv = i.scripts.admit.prepare_invoke();
        inv.key(rate_key(&s.prefix, identity))
            .key(conns_key(&s.prefix, identity));
        inv.arg(member(&i.token, seq))
            .arg(limits.max_connections)
            .arg(interval_us)
            .arg(limits.burst)
            .arg(ttl_ms);
        let reply: Vec<Value> = i
            .link
            .call("admit", |mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        let parsed = parse_admit(&reply);
        if parsed.is_none() {
            i.link.fail("admit", &format!("unexpected reply {reply:?}"));
        }
        parsed
    }
}

/// The admit script's answer.
#[derive(Debug, PartialEq)]
enum Shared {
    Admitted,
    OverMax,
    OverRate(Duration),
}

fn parse_admit(reply: &[Value]) -> Option<Shared> {
    let int = |v: &Value| redis::from_redis_value_ref::<i64>(v).ok();
    match reply {
        [first] if int(first) == Some(1) => Some(Shared::Admitted),
        [first, why, n] if int(first) == Some(0) => match redis::from_redis_value_ref::<String>(why).ok()?.as_str() {
            "max" => Some(Shared::OverMax),
            "rate" => Some(Shared::OverRate(Duration::from_millis(u64::try_from(int(n)?).ok()?))),
            _ => None,
        },
        _ => None,
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One admitted connection; gives it back on drop.
pub struct ClusterSlot {
    inner: Arc<Inner>,
    identity: Arc<str>,
    seq: u64,
    release: bool,
}

impl std::fmt::Debug for ClusterSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSlot")
            .field("identity", &self.identity)
            .field("seq", &self.seq)
            .finish()
    }
}

impl ClusterSlot {
    /// Drops the slot without telling Redis (it never counted it).
    fn forget(mut self, why: Denied) -> Denied {
        self.release = false;
        why
    }
}

impl Drop for ClusterSlot {
    fn drop(&mut self) {
        let i = &self.inner;
        i.shares.give_back(&self.identity, self.seq);
        if !self.release || i.link.is_closed() {
            return; // never counted, or this instance left the fleet
        }
        if !i.link.is_up() {
            i.shares.unreleased(self.identity.clone(), self.seq);
            return;
        }
        let inner = self.inner.clone();
        let identity = self.identity.clone();
        let seq = self.seq;
        i.ex.spawn(async move { remove(&inner, &identity, &[seq]).await })
            .detach();
    }
}

/// `ZREM`s the members `seqs` of `identity`; when Redis fails (the link is
/// then down, and a call on a down link fails at once) they are kept to be
/// told at the next refresh, so no close is lost.
async fn remove(inner: &Inner, identity: &Arc<str>, seqs: &[u64]) {
    let mut cmd = redis::cmd("ZREM");
    cmd.arg(conns_key(&inner.settings.prefix, identity));
    for &seq in seqs {
        cmd.arg(member(&inner.token, seq));
    }
    let done: Option<i64> = inner
        .link
        .call("release", |mut c| async move { cmd.query_async(&mut c).await })
        .await;
    if done.is_none() {
        for &seq in seqs {
            inner.shares.unreleased(identity.clone(), seq);
        }
    }
}

/// The keeper: connects (and reconnects, with back-off), then every third
/// of `liveness_ttl`, or at once after a reconnect, tells Redis of the
/// closes it missed and renews this instance's connections (or checks
/// that Redis answers). Ends when the [`Cluster`] is dropped.
async fn keep(weak: Weak<Inner>, broken: channel::Receiver<()>) {
    let mut retry = RETRY_MIN;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.link.is_closed() {
            return;
        }
        if !inner.link.is_up() {
            if inner.link.connect(&inner.scripts, &inner.ex).await.is_err() {
                drop(inner);
                smol::Timer::after(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
            retry = RETRY_MIN;
        }
        refresh(&inner).await;
        let period = inner.settings.liveness_ttl / 3;
        drop(inner);
        let _ = timeout(period, broken.recv()).await;
    }
}

/// Tells Redis of the closes it missed, then renews what this instance
/// counts ([`renew`]), or, holding nothing, `PING`s it: an idle instance
/// also notices a Redis that went away (and says so in `/status`) within a
/// third of `liveness_ttl`, rather than at its next connection. Stops at
/// the first failure of a renewal (the link is then down and the keeper
/// reconnects); closes it could not tell are kept ([`remove`]).
async fn refresh(inner: &Arc<Inner>) {
    let untold = inner.shares.take_unreleased();
    let counted = inner.shares.snapshot();
    if untold.is_empty() && counted.is_empty() {
        let _: Option<String> = inner
            .link
            .call(
                "ping",
                |mut c| async move { redis::cmd("PING").query_async(&mut c).await },
            )
            .await;
        return;
    }
    // Every chunk is tried: after a failure the rest fail at once and are
    // kept with it.
    for (identity, seqs) in untold {
        for chunk in seqs.chunks(CHUNK) {
            remove(inner, &identity, chunk).await;
        }
    }
    if inner.link.is_up() {
        renew(inner, counted).await;
    }
}

/// Renews the deadline of every connection in `counted` (restoring those
/// Redis lost), then removes again those that closed meanwhile: their own
/// removal may have run before the renewal re-added them. Stops at the
/// first failure.
async fn renew(inner: &Arc<Inner>, counted: Vec<(Arc<str>, Vec<u64>)>) {
    let ttl_ms = ms(inner.settings.liveness_ttl);
    for (identity, seqs) in counted {
        for chunk in seqs.chunks(CHUNK) {
            let mut inv = inner.scripts.refresh.prepare_invoke();
            inv.key(conns_key(&inner.settings.prefix, &identity)).arg(ttl_ms);
            for &seq in chunk {
                inv.arg(member(&inner.token, seq));
            }
            let done: Option<i64> = inner
                .link
                .call("refresh", |mut c| async move { inv.invoke_async(&mut c).await })
                .await;
            if done.is_none() {
                return;
            }
            let closed: Vec<u64> = chunk
                .iter()
                .copied()
                .filter(|&seq| !inner.shares.counts(&identity, seq))
                .collect();
            if !closed.is_empty() {
                remove(inner, &identity, &closed).await;
            }
        }
    }
}

#[cfg(test)]
mod races;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_replies_are_read_strictly() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(parse_admit(&[Value::Int(1)]), Some(Shared::Admitted));
        assert_eq!(
            parse_admit(&[Value::Int(0), b("max"), Value::Int(4)]),
            Some(Shared::OverMax)
        );
        assert_eq!(
            parse_admit(&[Value::Int(0), b("rate"), Value::Int(250)]),
            Some(Shared::OverRate(Duration::from_millis(250)))
        );
        assert_eq!(parse_admit(&[Value::Int(0), b("rate"), Value::Int(-1)]), None);
        assert_eq!(parse_admit(&[Value::Int(0), b("what"), Value::Int(1)]), None);
        assert_eq!(parse_admit(&[]), None);
    }
}
