//! The open connections a reload re-checks: each admitted connection is
//! registered with its app, identity and certificate chain, and a channel
//! that tells it to close and why.
//!
//! Promises: the lock is held for a map insert, a map remove, or a snapshot
//! copy of the entries, never across an await; a `Tracked` guard removes
//! its entry on drop, on every exit path; `recheck` asks a connection to
//! close at most once per reason and never blocks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::pki_types::CertificateDer;
use smol::channel;
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
    pub kill: channel::Sender<CloseReason>,
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

/// Asks `open` to close if `g` no longer admits it on its app; true if so.
/// A connection whose app is gone is left to drain.
pub(super) fn recheck(g: &Generation, open: &Open) -> bool {
    let Some(app) = g.app(&open.app) else {
        return false;
    };
    match app.gate.decide_chain(&open.chain) {
        Ok(_) => false,
        Err(refused) => {
            info!(
                identity = %escaped(&open.identity),
                app = %open.app,
                reason = refused.close_reason().label(),
                "closing an open connection: {refused}"
            );
            // Full: a reason is already pending; closed: already gone.
            let _ = open.kill.try_send(refused.close_reason());
            true
        }
    }
}
