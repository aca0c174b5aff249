//! Accepting on the app listeners while reloads add and remove them: one
//! accept loop per listen address of the current generation; each accepted
//! connection goes through the `[limits]` caps, then gets its own task.
//!
//! Promises: after a reload, an added address is accepted on and a removed
//! one is not: its accept loop stops and its socket (with the copy kept for
//! an upgrade) is closed, so its port refuses connections; the connections
//! of a removed app still open when `[timeouts] drain` ends are closed
//! (reason `app_removed`); stopping cancels every accept loop before the
//! drain starts; a connection over a `[limits]` cap is closed before any
//! TLS work (see [`admission`](super::admission)); accept errors back off
//! and are logged at most once a second (see [`listener`](super::listener));
//! a panicking connection task is logged and closed, never taking the
//! server down.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{Result, bail};
use futures_lite::FutureExt;
use smol::{Executor, Task, Timer, channel};
use tracing::info;

use crate::core::proxy::connection;
use crate::core::proxy::generation::Generation;
use crate::core::proxy::listener::Listener;
use crate::core::proxy::registry::Open;
use crate::core::proxy::server::Server;
use crate::core::tls::gate::CloseReason;

/// The advice when an app listener's accept runs out of descriptors.
pub(super) const EXHAUSTED_HINT: &str = "raise the open-file limit or lower [limits] max_connections";

/// `l`, registered, if it listens on an app's address of `g`; logged as
/// listening (`how`: how it came, e.g. ", added by a reload").
pub(super) fn app_listener(g: &Generation, l: TcpListener, how: &str) -> Result<Listener> {
    let l = Listener::new(l)?.with_exhausted_hint(EXHAUSTED_HINT);
    let addr = l.local_addr();
    if !g.listeners.contains_key(&addr) {
        bail!("listener {addr} is not the listen address of any [[app]] (serve [admin] listen with ops::admin::serve)");
    }
    info!("listening on {addr} (apps: {}){how}", g.app_names_on(addr));
    Ok(l)
}

/// What each connection task holds: a sender whose drop tells the drain it
/// ended, and the receiver that closes when the drain period is over.
#[derive(Clone)]
pub(super) struct ConnChannels {
    pub(super) held: channel::Sender<()>,
    pub(super) hard: channel::Receiver<()>,
}

impl Server {
    /// Accepts on `first`, then on what reloads add, until `stop` closes;
    /// stops accepting where a reload removed the address.
    pub(super) async fn serve_listeners(
        self: Arc<Self>,
        ex: Arc<Executor<'static>>,
        first: Vec<Listener>,
        conns: ConnChannels,
        stop: channel::Receiver<()>,
    ) {
        let mut accepting: HashMap<SocketAddr, Task<()>> = HashMap::new();
        for l in first {
            self.start_accepting(&ex, &mut accepting, l, &conns);
        }
        // Copies of `first` were kept by `run` already.
        loop {
            let woken = async {
                self.listening.handed().await;
                true
            };
            let stopped = async {
                let _ = stop.recv().await;
                false
            };
            if !woken.or(stopped).await {
                break;
            }
            self.reconcile(&ex, &mut accepting, &conns).await;
        }
        for (_, t) in accepting.drain() {
            t.cancel().await;
        }
        self.listening.clear();
    }

    /// Brings the accepting set in line with the current generation.
    async fn reconcile(
        self: &Arc<Self>,
        ex: &Arc<Executor<'static>>,
        accepting: &mut HashMap<SocketAddr, Task<()>>,
        conns: &ConnChannels,
    ) {
        let g = self.current();
        let (fresh, cuts) = self.listening.take();
        for s in fresh {
            // A later reload may have removed it again: then it is dropped (closed).
            let Ok(addr) = s.local_addr() else { continue };
            if !g.listeners.contains_key(&addr) || accepting.contains_key(&addr) {
                continue;
            }
            match app_listener(&g, s, ", added by a reload") {
                Ok(l) => {
                    self.keep_copy(&l);
                    self.start_accepting(ex, accepting, l, conns);
                }
                Err(e) => tracing::error!("listener {addr} added by a reload: {e:#}; not served"),
            }
        }
        let gone: Vec<SocketAddr> = accepting
            .keys()
            .filter(|a| !g.listeners.contains_key(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some(t) = accepting.remove(&addr) {
                t.cancel().await;
            }
            self.listening.forget(addr);
            info!("stopped listening on {addr}: no [[app]] listens there after the reload");
        }
        for (drain, open) in cuts {
            ex.spawn(cut_after(drain, open)).detach();
        }
    }

    pub(super) async fn accept_loop(
        self: Arc<Self>,
        ex: Arc<Executor<'static>>,
        listener: Listener,
        conns: ConnChannels,
    ) {
        let local = listener.local_addr();
        loop {
            let (stream, peer) = listener.accept(&self.accept_log).await;
            self.metrics.accepted.fetch_add(1, Ordering::Relaxed);
            let generation = self.current();
            let slot = match self.admit(&generation, peer) {
                Ok(slot) => slot,
                Err(cap) => {
                    self.refused_at_accept(cap, peer);
                    drop(stream);
                    continue;
                }
            };
            let held = conns.held.clone();
            let hard = conns.hard.clone();
            let server = self.clone();
            ex.spawn(async move {
                let _held = held;
                let work =
                    std::panic::AssertUnwindSafe(connection::handle(server, generation, slot, stream, local, peer))
                        .catch_unwind();
                let cut = async {
                    let _ = hard.recv().await;
                    Ok(())
                };
                if work.or(cut).await.is_err() {
                    tracing::error!(%peer, "connection task panicked (a bug); connection closed");
                }
            })
            .detach();
        }
    }

    /// Keeps a duplicate of `l` for an upgrade to be handed.
    pub(super) fn keep_copy(&self, l: &Listener) {
        let addr = l.local_addr();
        match l.dup() {
            Ok(dup) => self.listening.keep(addr, dup),
            Err(e) => tracing::warn!(
                "listener {addr}: keeping a copy for --upgrade failed ({e}); an upgrade will bind it anew"
            ),
        }
    }

    fn start_accepting(
        self: &Arc<Self>,
        ex: &Arc<Executor<'static>>,
        accepting: &mut HashMap<SocketAddr, Task<()>>,
        l: Listener,
        conns: &ConnChannels,
    ) {
        let addr = l.local_addr();
        let task = ex.spawn(self.clone().accept_loop(ex.clone(), l, conns.clone()));
        accepting.insert(addr, task);
    }
}

/// Closes the connections of a removed app still open after `drain`.
async fn cut_after(drain: Duration, open: Vec<Weak<Open>>) {
    Timer::after(drain).await;
    let mut cut = 0usize;
    for o in open.iter().filter_map(Weak::upgrade) {
        o.kill.fire(CloseReason::AppRemoved);
        cut = cut.saturating_add(1);
    }
    if cut > 0 {
        info!("drain over: closed {cut} connection(s) of app(s) removed by a reload");
    }
}
