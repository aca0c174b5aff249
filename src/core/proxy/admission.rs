//! The `[limits]` caps, applied at accept before any TLS work:
//! `max_connections` (client connections open at once), `max_handshakes`
//! (handshakes in progress) and `max_handshakes_per_ip` (handshakes in
//! progress from one source: an IPv4 address or an IPv6 /64).
//!
//! Promises: a connection over a cap is refused at once, counted by cap,
//! and logged at most once a second (a summary, never a line per
//! connection); an admitted connection holds a `Slot` that gives back
//! its connection share on drop and its handshake share when the
//! handshake ends, on every exit path; the per-source lock is held for a
//! map update only, and the map holds only sources with a handshake in
//! progress.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::warn;

use crate::core::proxy::generation::Generation;
use crate::core::proxy::outcome::Cap;
use crate::core::proxy::server::Server;
use crate::core::rt::net::source_of;

impl Server {
    /// Takes a connection slot and a handshake slot for a new connection
    /// from `peer` (counted per [`source_of`] its address), or names the
    /// `[limits]` cap that refuses it.
    pub(super) fn admit(self: &Arc<Self>, g: &Generation, peer: SocketAddr) -> Result<Slot, Cap> {
        let ip = source_of(peer.ip());
        let limits = &g.config.limits;
        let m = &self.metrics;
        if m.active.fetch_add(1, Ordering::AcqRel) >= u64::from(g.max_connections) {
            m.active.fetch_sub(1, Ordering::AcqRel);
            return Err(Cap::MaxConnections);
        }
        // From here on, the slot's drop gives back what was taken.
        let mut slot = Slot {
            server: self.clone(),
            handshaking: None,
        };
        if m.handshakes_active.fetch_add(1, Ordering::AcqRel) >= u64::from(limits.max_handshakes) {
            m.handshakes_active.fetch_sub(1, Ordering::AcqRel);
            return Err(Cap::MaxHandshakes);
        }
        let mut per_source = self.handshakes_per_source.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_source.entry(ip).or_insert(0);
        if *n >= limits.max_handshakes_per_ip {
            if *n == 0 {
                per_source.remove(&ip);
            }
            drop(per_source);
            m.handshakes_active.fetch_sub(1, Ordering::AcqRel);
            return Err(Cap::MaxHandshakesPerIp);
        }
        *n += 1;
        drop(per_source);
        slot.handshaking = Some(ip);
        Ok(slot)
    }

    /// Counts and (at most once a second) logs a connection `cap` closed at
    /// accept; the caller drops it.
    pub(super) fn refused_at_accept(&self, cap: Cap, peer: SocketAddr) {
        self.metrics.count_cap(cap);
        if let Some(more) = self.cap_log.allow(Instant::now()) {
            warn!(
                %peer,
                "[limits] {} reached: connection closed at accept{}",
                cap.label(),
                if more > 0 {
                    format!(" ({more} more since the last line)")
                } else {
                    String::new()
                }
            );
        }
    }

    /// The summary of the cap refusals [`Server::refused_at_accept`] did not
    /// log, when a second has passed since its last line.
    pub(super) fn log_cap_summary(&self, now: Instant) {
        if let Some(n) = self.cap_log.flush(now) {
            warn!(
                "[limits]: {n} more connection(s) closed at accept in the last second (max_connections {}, max_handshakes {}, max_handshakes_per_ip {} refused so far)",
                self.metrics.capped_for(Cap::MaxConnections),
                self.metrics.capped_for(Cap::MaxHandshakes),
                self.metrics.capped_for(Cap::MaxHandshakesPerIp),
            );
        }
    }
}

/// One connection's share of the `[limits]` counters: a connection slot
/// until dropped, and a handshake slot until [`Slot::handshake_done`].
pub(super) struct Slot {
    server: Arc<Server>,
    handshaking: Option<IpAddr>,
}

impl Slot {
    /// The handshake ended (either way): its handshake slot is free.
    pub(super) fn handshake_done(&mut self) {
        let Some(ip) = self.handshaking.take() else {
            return;
        };
        let s = &self.server;
        s.metrics.handshakes_active.fetch_sub(1, Ordering::AcqRel);
        let mut per_source = s.handshakes_per_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_source.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_source.remove(&ip);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.handshake_done();
        self.server.metrics.active.fetch_sub(1, Ordering::AcqRel);
    }
}
