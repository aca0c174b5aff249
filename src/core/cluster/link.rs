//! The connection to Redis and its health: up (limits shared) or down
//! (limits local), one multiplexed connection shared by every caller.
//!
//! Promises: no caller waits for Redis longer than `timeout` (connecting
//! happens in the background, never on the data path); a failure of any
//! call (refused, dropped, an error reply, no answer in time) marks the
//! link down at once, so the next connections are decided locally without
//! a round trip; each change of state is logged once; every failure is
//! counted (`tlb_cluster_errors_total`); no lock is held across an await.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use smol::Executor;

use crate::core::cluster::dial::Dialer;
use smol::channel;

use crate::core::cluster::scripts::Scripts;
use crate::core::config::ClusterSettings;
use crate::core::rt::timeout;

/// Link states (an `AtomicU8`).
const STARTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// The Redis client, its current connection and the link's health.
pub(crate) struct Link {
    dialer: Dialer,
    conn: Mutex<Option<MultiplexedConnection>>,
    state: AtomicU8,
    /// [`Link::close`] was called: never up again.
    closed: AtomicBool,
    errors: AtomicU64,
    /// Woken (best effort) when the link goes down, so the keeper
    /// reconnects at once.
    broken: channel::Sender<()>,
    /// The URL, for messages (it holds no password: validation refuses one).
    shown: String,
    pub(crate) timeout: Duration,
    connect_timeout: Duration,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("redis", &self.shown)
            .field("up", &self.is_up())
            .finish()
    }
}

impl Link {
    /// A link (down, not connected yet) and the receiver the keeper waits on.
    pub(crate) fn new(s: &ClusterSettings) -> Result<(Link, channel::Receiver<()>), String> {
        let dialer = Dialer::new(s)?;
        let (broken, rx) = channel::bounded(1);
        let link = Link {
            dialer,
            conn: Mutex::new(None),
            state: AtomicU8::new(STARTING),
            closed: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            broken,
            shown: s.redis.clone(),
            timeout: s.timeout,
            // Connecting is off the data path: a few round trips (HELLO,
            // AUTH, SELECT) get more than one call's time.
            connect_timeout: (s.liveness_ttl / 3).max(s.timeout),
        };
        Ok((link, rx))
    }

    pub(crate) fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The connection, when up.
    pub(crate) fn conn(&self) -> Option<MultiplexedConnection> {
        if !self.is_up() {
            return None;
        }
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs `call` on the connection, bounded by `timeout`; `None` (and the
    /// link marked down) when down, failed or late.
    pub(crate) async fn call<T, F, Fut>(&self, what: &str, call: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.conn()?;
        match timeout(self.timeout, call(conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.fail(what, &e);
                None
            }
            Err(_) => {
                let late = format!("no answer within {}", humantime::format_duration(self.timeout));
                self.fail(what, &late);
                None
            }
        }
    }

    /// Counts a failure and marks the link down (logged on the change only).
    pub(crate) fn fail(&self, what: &str, err: &dyn fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let before = {
            let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            slot.take();
            self.state.swap(DOWN, Ordering::AcqRel)
        };
        if before != DOWN {
            tracing::warn!(
                "cluster: Redis at {} failed ({what}: {err}); per-client limits fall back to this instance's share (limit / instances) until it is back",
                self.shown
            );
            let _ = self.broken.try_send(());
        }
    }

    /// Marks the link down for good (no log, no error counted): the
    /// instance leaves the fleet.
    pub(crate) fn close(&self) {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        self.closed.store(true, Ordering::Release);
        self.state.store(DOWN, Ordering::Release);
        slot.take();
        drop(slot);
        let _ = self.broken.try_send(());
    }

    /// Connects, loads the scripts and checks the link with them; marks it
    /// up on success (logged on the change only). Bounded by the connect
    /// timeout.
    pub(crate) async fn connect(&self, scripts: &Scripts, ex: &Executor<'static>) -> Result<(), String> {
        // No response timeout of the client's own: every call is already
        // bounded by ours (`timeout` in `call`, the connect timeout here),
        // and a second timer per call costs syscalls on the data path.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None);
        let attempt = async {
            let mut conn = self.dialer.dial(ex, config).await?;
            for s in [&scripts.admit, &scripts.refresh] {
                s.load_async(&mut conn).await?;
            }
            Ok::<_, redis::RedisError>(conn)
        };
        let conn = match timeout(self.connect_timeout, attempt).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(self.connect_failed(&e)),
            Err(_) => return Err(self.connect_failed(&"no answer in time")),
        };
        let before = {
            let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            // Under the lock `close` takes: a closed link stays down.
            if self.is_closed() {
                return Err("left the fleet".into());
            }
            *slot = Some(conn);
            self.state.swap(UP, Ordering::AcqRel)
        };
        if before != UP {
            tracing::info!(
                "cluster: Redis at {} reachable; per-client limits are shared",
                self.shown
            );
        }
        Ok(())
    }

    /// Counts a failed connect; logs it when it is news (the first attempt
    /// after start fails).
    fn connect_failed(&self, err: &dyn fmt::Display) -> String {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let msg = format!("connecting: {err}");
        if self
            .state
            .compare_exchange(STARTING, DOWN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::warn!(
                "cluster: Redis at {} unreachable ({msg}); per-client limits are this instance's share (limit / instances) until it is reachable",
                self.shown
            );
        }
        msg
    }
}
