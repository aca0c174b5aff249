//! Active health checks: the probe (a TCP connect, or send/expect, after
//! the app's PROXY `LOCAL` header when it sends PROXY headers) and the
//! per-upstream loop that runs it every `interval` and hands each result to
//! the upstream's health state machine.
//!
//! Promises: a probe is bounded by its `timeout` and never touches the data
//! path; the balancer's own resource errors are reported as local (the
//! state machine does not count them); the first check runs at once, the
//! next one `interval` after the start of the previous one (a real timer);
//! how long a check took is read from the injected [`Clock`].

use std::net::SocketAddr;
use std::sync::Arc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use smol::Timer;

use crate::core::config::HealthSettings;
use crate::core::pool::policy::{CheckFailure, HealthPolicy};
use crate::core::pool::upstream::Upstream;
use crate::core::rt::clock::Clock;
use crate::core::rt::net::{TcpConn, describe_io, is_local_error};
use crate::core::rt::timeout;

/// A send/expect check reads at most this much looking for `expect`.
const MAX_CHECK_READ: usize = 16 * 1024;

/// One active check: connect; write `preamble` (the app's PROXY `LOCAL`
/// header, or nothing); with `send`, write it; with `expect`, read until
/// those bytes appear. Bounded by `settings.timeout`.
pub async fn probe(addr: SocketAddr, settings: &HealthSettings, preamble: &[u8]) -> Result<(), CheckFailure> {
    let run = async {
        let mut conn = TcpConn::connect(addr).await.map_err(|e| io_failure("", &e))?;
        if !preamble.is_empty() {
            conn.write_all(preamble)
                .await
                .map_err(|e| io_failure("sending the PROXY header: ", &e))?;
        }
        if !settings.send.is_empty() {
            conn.write_all(&settings.send)
                .await
                .map_err(|e| io_failure("sending the check payload: ", &e))?;
        }
        if !settings.expect.is_empty() {
            let mut seen = Vec::with_capacity(256);
            let mut buf = [0u8; 2048];
            loop {
                if contains(&seen, &settings.expect) {
                    break;
                }
                if seen.len() >= MAX_CHECK_READ {
                    return Err(CheckFailure::upstream(format!(
                        "expected {:?}, got {} bytes without it",
                        String::from_utf8_lossy(&settings.expect),
                        seen.len()
                    )));
                }
                let n = conn
                    .read(&mut buf)
                    .await
                    .map_err(|e| io_failure("reading the check reply: ", &e))?;
                if n == 0 {
                    return Err(CheckFailure::upstream(format!(
                        "expected {:?}, got {:?} before the upstream closed",
                        String::from_utf8_lossy(&settings.expect),
                        String::from_utf8_lossy(&seen[..seen.len().min(64)])
                    )));
                }
                seen.extend_from_slice(&buf[..n]);
            }
        }
        let _ = conn.close().await;
        Ok(())
    };
    match timeout(settings.timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(CheckFailure::upstream(format!(
            "no {} within {}",
            if settings.expect.is_empty() {
                "connection"
            } else {
                "expected reply"
            },
            humantime::format_duration(settings.timeout)
        ))),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// A check failed on an I/O error: the upstream's, unless it is the
/// balancer's own ([`is_local_error`]).
fn io_failure(what: &str, e: &std::io::Error) -> CheckFailure {
    CheckFailure {
        detail: format!("{what}{}", describe_io(e)),
        local: is_local_error(e),
    }
}

/// Checks `upstream` every `interval` forever (the caller cancels the task),
/// each check starting with `preamble`. The first check runs at once.
pub async fn check_loop(
    app: Arc<str>,
    upstream: Arc<Upstream>,
    policy: HealthPolicy,
    clock: Arc<dyn Clock>,
    preamble: &'static [u8],
) {
    let Some(settings) = policy.active.clone() else {
        return;
    };
    loop {
        let began = clock.instant();
        let result = probe(upstream.addr, &settings, preamble).await;
        let took = clock.instant().saturating_duration_since(began);
        if let Some(t) = upstream.health.check_result(&policy, result, took) {
            t.log(&app, &upstream.name);
        }
        // An interval beyond the timer's range never fires: one check only.
        Timer::after(settings.interval.saturating_sub(took)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_io_errors_make_local_failures() {
        let emfile = std::io::Error::from_raw_os_error(24);
        let f = io_failure("", &emfile);
        assert!(f.local, "{f:?}");
        let refused = io_failure("", &std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(
            refused,
            CheckFailure {
                detail: "connection refused".into(),
                local: false
            }
        );
    }
}
