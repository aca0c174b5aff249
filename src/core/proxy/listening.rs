//! The app listeners as reloads change them: a reload binds the addresses
//! the new config adds (before anything is swapped) and queues them here
//! with the connections of the apps it removed; the accepting side
//! (`accepting`) takes them, and keeps here the copies of the sockets it
//! accepts on that an upgrade is handed.
//!
//! Promises: a reload that cannot bind every added address changes
//! nothing (the sockets it did bind are closed); an address both configs
//! name keeps its socket (no connection is refused across a reload); the
//! queue holds what reloads added until the accepting side wakes (one
//! pending wake-up at most); every lock here is held for a push or a
//! take, never across an await.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Mutex, MutexGuard, Weak};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use smol::channel;

use crate::core::config::Config;
use crate::core::proxy::listener::bind_shared_listener;
use crate::core::proxy::registry::Open;

/// Connections of apps a reload removed, and how long they may drain.
pub(super) type Cut = (Duration, Vec<Weak<Open>>);

/// What reloads hand to the accepting side, and what an upgrade is handed.
pub(super) struct Listening {
    queued: Mutex<Queued>,
    wake_tx: channel::Sender<()>,
    wake_rx: channel::Receiver<()>,
}

#[derive(Default)]
struct Queued {
    /// Bound by reloads, not yet accepted on.
    fresh: Vec<TcpListener>,
    /// Connections of apps a reload removed: cut after the drain period.
    cuts: Vec<Cut>,
    /// Duplicates of the sockets being accepted on, by address.
    serving: Vec<(SocketAddr, TcpListener)>,
}

impl Default for Listening {
    fn default() -> Listening {
        let (wake_tx, wake_rx) = channel::bounded(1);
        Listening {
            queued: Mutex::default(),
            wake_tx,
            wake_rx,
        }
    }
}

impl Listening {
    fn lock(&self) -> MutexGuard<'_, Queued> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues what a reload bound and the connections of the apps it
    /// removed, and wakes the accepting side.
    pub(super) fn hand(&self, fresh: Vec<TcpListener>, cut: Option<Cut>) {
        let mut q = self.lock();
        q.fresh.extend(fresh);
        q.cuts.extend(cut);
        drop(q);
        // Full means a wake-up is already pending; it takes everything queued.
        let _ = self.wake_tx.try_send(());
    }

    /// Resolves when something was handed since the last [`Listening::take`].
    pub(super) async fn handed(&self) {
        let _ = self.wake_rx.recv().await;
    }

    /// Everything handed so far.
    pub(super) fn take(&self) -> (Vec<TcpListener>, Vec<Cut>) {
        let mut q = self.lock();
        (std::mem::take(&mut q.fresh), std::mem::take(&mut q.cuts))
    }

    /// Records a duplicate of a socket being accepted on.
    pub(super) fn keep(&self, addr: SocketAddr, dup: TcpListener) {
        self.lock().serving.push((addr, dup));
    }

    /// Closes the duplicate of `addr`'s socket (it is no longer accepted on).
    pub(super) fn forget(&self, addr: SocketAddr) {
        self.lock().serving.retain(|(a, _)| *a != addr);
    }

    /// Closes every duplicate and every socket not yet accepted on.
    pub(super) fn clear(&self) {
        let mut q = self.lock();
        q.serving.clear();
        q.fresh.clear();
    }

    /// Duplicates of the sockets being accepted on (for an upgrade).
    pub(super) fn sockets(&self) -> std::io::Result<Vec<TcpListener>> {
        self.lock().serving.iter().map(|(_, s)| s.try_clone()).collect()
    }
}

/// Binds the listen addresses `new` adds to `old`; an error (naming the
/// address) when one cannot be bound, or when a kept address changes
/// `reuse_port` (a socket cannot change that in place).
pub(super) fn bind_added(old: &Config, new: &Config) -> Result<Vec<TcpListener>> {
    let kept = old.listen_sockets();
    let mut fresh = Vec::new();
    for (addr, reuse_port) in new.listen_sockets() {
        match kept.iter().find(|(a, _)| *a == addr) {
            Some((_, was)) if *was != reuse_port => bail!(
                "[[app]] listen {addr}: reuse_port changed; a listening socket cannot change it in place: restart, or `tlb serve --upgrade`"
            ),
            Some(_) => {}
            None => fresh.push(bind_shared_listener(addr, reuse_port).with_context(|| {
                format!("the new config adds listener {addr}, which cannot be bound (free the port, or fix its [[app]] listen)")
            })?),
        }
    }
    Ok(fresh)
}
