//! The certificate watcher (`[tls] watch`) and the certificate expiry
//! warnings, one task per server ([`run`], spawned by `Server::run`).
//!
//! Promises:
//! - With `[tls] watch`, every TLS file the current generation was built
//!   from (`[tls]` cert, key, ca, crl; each `[[trust_domain]]`'s ca and crl;
//!   each `[app.upstream_tls]`'s ca, cert and key) is read every interval,
//!   off the executor threads, at most 16 MiB each, and hashed (SHA-256).
//! - A set is stable when two polls in a row, one interval apart, read the
//!   same bytes from every file: a file being written, or a set caught
//!   halfway through a symlink swap, differs between the two reads and is
//!   read again on the next poll; nothing is loaded meanwhile. A file that
//!   cannot be read is retried the same way.
//! - A stable set that differs from what the current generation loaded is
//!   checked from those exact bytes (`tls::rotation`: each key is its
//!   leaf's, each chain verifies link by link, each leaf is valid now by
//!   the server's clock), then the generation is rebuilt from the same bytes
//!   and the current configuration (`tlb.toml` is not re-read: that is
//!   SIGHUP's job). What is loaded is what was checked, byte for byte: the
//!   checked bytes are handed to the build (`Server::reload_from`) rather
//!   than read again, because a check made after the swap could no longer
//!   keep an unchecked set from serving. The build's own checks apply too
//!   (everything parses, a CRL is signed by its CA), all or nothing; it
//!   replaces the generation only if no other reload happened meanwhile.
//! - A bad set is logged once (warn: the files, the reason, the fix) and
//!   counted (`tlb_certificate_rotations_total{result="refused"}`), not
//!   again until the files change; the old generation keeps serving. A
//!   loaded set is logged once (info) and counted (`result="loaded"`).
//! - Expiry: at start, on every new generation (reload or rotation) and
//!   otherwise at most once a day per file, a warning for each loaded
//!   certificate that expires within `[tls] expiry_warning`, by the server's
//!   injected clock.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, anyhow};
use smol::Timer;
use tracing::{debug, info, warn};

use crate::core::proxy::generation::Generation;
use crate::core::proxy::server::Server;
use crate::core::tls::expiry::{self, ExpiryWarnings};
use crate::core::tls::material::{Digest, Material, read_bounded, sha256};
use crate::core::tls::rotation;

/// How often the task wakes when nothing else is due: new generations are
/// noticed (for the expiry warnings) within this.
const TICK: Duration = Duration::from_secs(1);

/// Watches the TLS files of `server`'s current generation and warns about
/// expiring certificates, until dropped.
pub async fn run(server: Arc<Server>) {
    let mut watcher = Watcher::default();
    let mut warnings = ExpiryWarnings::default();
    let mut seen: Weak<Generation> = Weak::new();
    let mut next_poll = Instant::now();
    loop {
        let g = server.current();
        let fresh = !std::ptr::eq(seen.as_ptr(), Arc::as_ptr(&g));
        if fresh {
            seen = Arc::downgrade(&g);
        }
        warn_expiring(&mut warnings, &g, server.clock().now(), fresh);
        let wait = match g.config.tls.watch {
            Some(every) => {
                if Instant::now() >= next_poll {
                    watcher.poll(&server, g).await;
                    next_poll = Instant::now() + every;
                }
                next_poll.saturating_duration_since(Instant::now()).min(TICK)
            }
            None => {
                watcher = Watcher::default();
                next_poll = Instant::now();
                TICK
            }
        };
        Timer::after(wait).await;
    }
}

/// Logs the expiry warnings due at `now` for generation `g` (`fresh`: new).
fn warn_expiring(w: &mut ExpiryWarnings, g: &Generation, now: SystemTime, fresh: bool) {
    let tls = &g.config.tls;
    for c in w.due(&g.cert_expiry, tls.expiry_warning, now, fresh) {
        warn!("{}", expiry::warning(c, now, tls.watch.is_some()));
    }
}

/// What one poll found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Bytes(Digest),
    /// Why it could not be read.
    Unreadable(String),
}

/// One poll: each file (in the generation's order) and what it held.
type Poll = Vec<(PathBuf, Seen)>;

/// Each file's bytes as one poll read them, or why they could not be read.
type Read = Vec<(PathBuf, Result<Arc<[u8]>, String>)>;

/// The watcher's memory between polls.
#[derive(Debug, Default)]
struct Watcher {
    /// What the previous poll found.
    previous: Option<Poll>,
    /// The last bad set, already logged.
    refused: Option<Poll>,
}

/// What to do after a poll.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The first poll, or a file changed since the last one: read again.
    Unstable,
    /// The files are what the generation loaded.
    Loaded,
    /// The bad set already logged.
    Refused,
    /// A stable set that differs from the generation: check and load it.
    Load,
}

impl Watcher {
    /// What poll `now` calls for, given what the generation `loaded`.
    fn step(&mut self, now: &Poll, loaded: &Poll) -> Step {
        let stable = self.previous.as_ref() == Some(now);
        self.previous = Some(now.clone());
        if !stable {
            Step::Unstable
        } else if now == loaded {
            self.refused = None;
            Step::Loaded
        } else if self.refused.as_ref() == Some(now) {
            Step::Refused
        } else {
            Step::Load
        }
    }

    /// Reads the files of `g` once; loads a stable, changed, coherent set.
    async fn poll(&mut self, server: &Arc<Server>, g: Arc<Generation>) {
        let paths: Vec<PathBuf> = g.files.iter().map(|(p, _)| p.clone()).collect();
        let read = smol::unblock(move || read_all(paths)).await;
        let now: Poll = read
            .iter()
            .map(|(p, r)| {
                let seen = match r {
                    Ok(b) => Seen::Bytes(sha256(b)),
                    Err(e) => Seen::Unreadable(e.clone()),
                };
                (p.clone(), seen)
            })
            .collect();
        let loaded: Poll = g.files.iter().map(|(p, d)| (p.clone(), Seen::Bytes(*d))).collect();
        if self.step(&now, &loaded) != Step::Load {
            return;
        }
        let changed: Vec<String> = now
            .iter()
            .zip(&loaded)
            .filter(|(a, b)| a != b)
            .map(|((p, _), _)| p.display().to_string())
            .collect();
        let changed = changed.join(", ");
        match load(server, &g, read).await {
            Ok(()) => {
                self.refused = None;
                server.metrics.rotations_loaded.fetch_add(1, Ordering::Relaxed);
                info!("[tls] watch: loaded the changed TLS files ({changed}); new handshakes use them");
            }
            Err(e) if !Arc::ptr_eq(&server.current(), &g) => {
                debug!("[tls] watch: a reload happened meanwhile ({e:#}); comparing with it next time");
            }
            Err(e) => {
                self.refused = Some(now);
                server.metrics.rotations_refused.fetch_add(1, Ordering::Relaxed);
                warn!(
                    "[tls] watch: not loading the changed TLS files ({changed}): {e:#}; the files loaded before keep serving (fix the new ones: they are checked again when they change)"
                );
            }
        }
    }
}

/// Every file of `paths`: its bytes, or why it cannot be read.
fn read_all(paths: Vec<PathBuf>) -> Read {
    paths
        .into_iter()
        .map(|p| {
            let r = read_bounded(&p).map(Arc::from).map_err(|e| e.to_string());
            (p, r)
        })
        .collect()
}

/// Checks the set `read` and rebuilds `g` from exactly those bytes.
async fn load(server: &Arc<Server>, g: &Arc<Generation>, read: Read) -> Result<()> {
    let mut pinned = BTreeMap::new();
    for (p, r) in read {
        let bytes = r.map_err(|e| anyhow!("{} cannot be read ({e}); restore it", p.display()))?;
        pinned.insert(p, bytes);
    }
    let files = Material::pinned(pinned);
    let config = g.config.clone();
    rotation::check(&config, &files, server.clock().now())?;
    let (server, base) = (server.clone(), g.clone());
    smol::unblock(move || server.reload_from(config, &files, Some(&base))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(files: &[(&str, Seen)]) -> Poll {
        files.iter().map(|(p, s)| (PathBuf::from(p), s.clone())).collect()
    }

    #[test]
    fn a_set_is_loaded_only_once_two_polls_in_a_row_read_it_the_same() {
        let (a, b, c) = (Seen::Bytes([1; 32]), Seen::Bytes([2; 32]), Seen::Bytes([3; 32]));
        let loaded = poll(&[("cert", a.clone()), ("key", a.clone())]);
        let mut w = Watcher::default();
        assert_eq!(
            w.step(&loaded, &loaded),
            Step::Unstable,
            "the first poll has nothing to compare"
        );
        assert_eq!(w.step(&loaded, &loaded), Step::Loaded);
        let half = poll(&[("cert", b.clone()), ("key", a.clone())]);
        assert_eq!(
            w.step(&half, &loaded),
            Step::Unstable,
            "the cert changed since the last poll"
        );
        let new = poll(&[("cert", c.clone()), ("key", c.clone())]);
        assert_eq!(w.step(&new, &loaded), Step::Unstable, "still being written");
        assert_eq!(w.step(&new, &loaded), Step::Load, "the same twice: load it");
        let gone = poll(&[("cert", c.clone()), ("key", Seen::Unreadable("not found".into()))]);
        assert_eq!(
            w.step(&gone, &loaded),
            Step::Unstable,
            "an unreadable file is read again"
        );
        assert_eq!(
            w.step(&gone, &loaded),
            Step::Load,
            "still unreadable: the load says why"
        );
    }

    #[test]
    fn a_refused_set_is_not_tried_again_until_the_files_change() {
        let (a, b) = (Seen::Bytes([1; 32]), Seen::Bytes([2; 32]));
        let loaded = poll(&[("cert", a.clone())]);
        let bad = poll(&[("cert", b.clone())]);
        let mut w = Watcher::default();
        w.step(&bad, &loaded);
        assert_eq!(w.step(&bad, &loaded), Step::Load);
        w.refused = Some(bad.clone());
        assert_eq!(w.step(&bad, &loaded), Step::Refused, "logged once");
        assert_eq!(w.step(&bad, &loaded), Step::Refused);
        assert_eq!(w.step(&loaded, &loaded), Step::Unstable, "put back");
        assert_eq!(w.step(&loaded, &loaded), Step::Loaded);
        w.step(&bad, &loaded);
        assert_eq!(
            w.step(&bad, &loaded),
            Step::Load,
            "the same bad set after a good one is logged again"
        );
    }
}
