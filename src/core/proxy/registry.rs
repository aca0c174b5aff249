//! The open connections a reload re-checks: each admitted connection is
//! registered with its app, identity and certificate chain, and a
//! [`KillSignal`] that tells it to close and why.
//!
//! Promises: the lock is held for a map insert, a map remove, or a snapshot
//! copy of the entries, never across an await; a `Tracked` guard removes
//! its entry on drop, on every exit path; `recheck` asks a connection to
//! close and never blocks (the first reason wins).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use rustls::pki_types::CertificateDer;
use tracing::info;

use crate::core::proxy::generation::Generation;
use crate::core::rt::log::escaped;
use crate::core::tls::gate::CloseReason;

/// An admitted connection, as a reload re-checks it.
pub(super) struct Open {
    pub app: String,
    pub identity: String,
    /// The client's certificate chain, end entity first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Tells the connection to close, and why.
    pub kill: KillSignal,
}

/// A one-shot "close now, because" from a reload (or a late re-check) to
/// one open connection. The connection polls it on every wake-up, so until
/// it fires a poll is one atomic load and a waker check: no channel, no
/// event listener.
#[derive(Debug, Default)]
pub(super) struct KillSignal {
    /// 0 until fired; then 1 + the [`CloseReason`]'s index.
    reason: AtomicU8,
    waker: AtomicWaker,
}

impl KillSignal {
    /// Fires with `reason` (the first reason wins) and wakes the connection.
    pub(super) fn fire(&self, reason: CloseReason) {
        let code = u8::try_from(reason.index()).map_or(u8::MAX, |i| i.saturating_add(1));
        let _ = self
            .reason
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.waker.wake();
    }

    /// Ready with the reason once fired.
    pub(super) fn poll_fired(&self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        if let Some(r) = self.fired() {
            return Poll::Ready(r);
        }
        self.waker.register(cx.waker());
        // A fire between the load and the registration woke no one: look again.
        self.fired().map_or(Poll::Pending, Poll::Ready)
    }

    fn fired(&self) -> Option<CloseReason> {
        match self.reason.load(Ordering::Acquire) {
            0 => None,
            code => CloseReason::ALL
                .get(usize::from(code) - 1)
                .copied()
                .or(Some(CloseReason::Deauthorized)),
        }
    }
}

/// Open connections by id.
#[derive(Default)]
pub(super) struct Registry(Mutex<Entries>);

#[derive(Default)]
struct Entries {
    next: u64,
    open: HashMap<u64, Arc<Open>>,
}

impl Registry {
    /// Registers `open` until the returned guard drops; `under_lock` runs
    /// while the entry is inserted (see [`Registry::snapshot`]).
    pub(super) fn insert<T>(self: &Arc<Self>, open: Arc<Open>, under_lock: impl FnOnce() -> T) -> (Tracked, T) {
        let mut entries = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let id = entries.next;
        entries.next = entries.next.wrapping_add(1);
        entries.open.insert(id, open);
        let t = under_lock();
        drop(entries);
        (
            Tracked {
                registry: self.clone(),
                id,
            },
            t,
        )
    }

    /// The open connections, after running `under_lock` while no connection
    /// can register: a connection registering at the same time is either in
    /// the snapshot or registered after `under_lock` ran.
    pub(super) fn snapshot(&self, under_lock: impl FnOnce()) -> Vec<Arc<Open>> {
        let entries = self.0.lock().unwrap_or_else(|p| p.into_inner());
        under_lock();
        entries.open.values().cloned().collect()
    }
}

/// Registration of an open connection; removed on drop.
pub(super) struct Tracked {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut entries = self.registry.0.lock().unwrap_or_else(|p| p.into_inner());
        entries.open.remove(&self.id);
    }
}

/// What a re-check decided for an open connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recheck {
    /// Still admitted (or `keep_deauthorized`): left alone.
    Admitted,
    /// Refused by the new generation: told to close now.
    Closed,
    /// Its app is gone, its certificate still trusted: it drains.
    AppRemoved,
}

/// Asks `open` to close if `g` no longer admits it on its app. A connection
/// whose app `g` removed is still checked against `g`'s trust (CA, CRL,
/// validity) and closed if refused, else left to drain.
pub(super) fn recheck(g: &Generation, open: &Open) -> Recheck {
    let keep = g.config.tls.keep_deauthorized;
    let decided = match g.app(&open.app) {
        Some(_) if keep => return Recheck::Admitted,
        Some(app) => app.gate.decide_chain(&open.chain).map(|_| Recheck::Admitted),
        None => match g.apps.first() {
            Some(any) if !keep => any.gate.trusts_chain(&open.chain).map(|()| Recheck::AppRemoved),
            _ => Ok(Recheck::AppRemoved),
        },
    };
    match decided {
        Ok(r) => r,
        Err(refused) => {
            info!(
                identity = %escaped(&open.identity),
                app = %open.app,
                reason = refused.close_reason().label(),
                "closing an open connection: {refused}"
            );
            open.kill.fire(refused.close_reason());
            Recheck::Closed
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    use super::*;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_kill_wakes_the_connection_once_with_the_first_reason() {
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let kill = KillSignal::default();
        assert_eq!(kill.poll_fired(&mut cx), Poll::Pending);
        assert_eq!(kill.poll_fired(&mut cx), Poll::Pending, "polling again stays pending");
        assert_eq!(count.0.load(Ordering::Relaxed), 0);
        kill.fire(CloseReason::Revoked);
        assert_eq!(count.0.load(Ordering::Relaxed), 1, "the registered waker is woken");
        kill.fire(CloseReason::Expired);
        assert_eq!(
            kill.poll_fired(&mut cx),
            Poll::Ready(CloseReason::Revoked),
            "the first reason wins"
        );
    }

    #[test]
    fn a_kill_before_the_first_poll_is_seen() {
        for reason in CloseReason::ALL {
            let kill = KillSignal::default();
            kill.fire(reason);
            let mut cx = Context::from_waker(Waker::noop());
            assert_eq!(kill.poll_fired(&mut cx), Poll::Ready(reason));
        }
    }
}
