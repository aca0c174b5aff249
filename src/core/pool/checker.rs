//! Active health checks: the probe (a TCP connect, or send/expect; after
//! the app's PROXY `LOCAL` header when it sends PROXY headers; over TLS
//! with the app's `[app.upstream_tls]`, a failed handshake failing the
//! check with its reason) and the
//! per-upstream loop that runs it every `interval` and hands each result to
//! the upstream's health state machine.
//!
//! Promises: a probe is bounded by its `timeout` and never touches the data
//! path; the balancer's own resource errors are reported as local (the
//! state machine does not count them); the first check runs at once, the
//! next one `interval` after the start of the previous one (a real timer);
//! how long a check took is read from the injected [`Clock`].

use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use smol::Timer;

use crate::core::config::HealthSettings;
use crate::core::pool::policy::{CheckFailure, HealthPolicy};
use crate::core::pool::upstream::Upstream;
use crate::core::rt::clock::Clock;
use crate::core::rt::net::{TcpConn, describe_io, is_local_error};
use crate::core::rt::timeout;
use crate::core::tls::upstream::{UpstreamStream, UpstreamTlsClient, late_refusal};

/// A send/expect check reads at most this much looking for `expect`.
const MAX_CHECK_READ: usize = 16 * 1024;

/// After a TLS handshake, a check without `expect` waits for an alert for
/// half its timeout, at most this long: a TLS 1.3 upstream refuses a client
/// certificate after the client's side of the handshake is done, so the
/// alert comes one round trip later, on the first read.
const LATE_ALERT_GRACE: Duration = Duration::from_millis(500);

/// One active check: connect; write `preamble` (the app's PROXY `LOCAL`
/// header, or nothing) in plain; with `[app.upstream_tls]`, complete the
/// TLS handshake with the same settings as the data path; with `send`,
/// write it; with `expect`, read until those bytes appear. Bounded by
/// `settings.timeout`.
pub async fn probe(
    upstream: &Upstream,
    tls: Option<&UpstreamTlsClient>,
    settings: &HealthSettings,
    preamble: &[u8],
) -> Result<(), CheckFailure> {
    let run = async {
        let mut tcp = TcpConn::connect(upstream.addr).await.map_err(|e| io_failure("", &e))?;
        if !preamble.is_empty() {
            tcp.write_all(preamble)
                .await
                .map_err(|e| io_failure("sending the PROXY header: ", &e))?;
        }
        let mut conn = match tls {
            None => UpstreamStream::Plain(tcp),
            Some(t) => UpstreamStream::Tls(Box::new(t.handshake(tcp, &upstream.name).await.map_err(|e| {
                CheckFailure {
                    detail: e.reason,
                    local: e.local,
                }
            })?)),
        };
        if !settings.send.is_empty() {
            conn.write_all(&settings.send)
                .await
                .map_err(|e| read_failure(upstream, "sending the check payload: ", &e))?;
        }
        if !settings.expect.is_empty() {
            expect_reply(upstream, &mut conn, &settings.expect).await?;
        } else if tls.is_some() {
            late_alert(upstream, &mut conn, settings.timeout / 2).await?;
        }
        let _ = conn.close().await;
        Ok(())
    };
    match timeout(settings.timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(CheckFailure::upstream(format!(
            "no {} within {}",
            match (settings.expect.is_empty(), tls.is_some()) {
                (false, _) => "expected reply",
                (true, true) => "TLS connection",
                (true, false) => "connection",
            },
            humantime::format_duration(settings.timeout)
        ))),
    }
}

/// Reads until `expect` appears (at most [`MAX_CHECK_READ`] bytes).
async fn expect_reply(upstream: &Upstream, conn: &mut UpstreamStream, expect: &[u8]) -> Result<(), CheckFailure> {
    let mut seen = Vec::with_capacity(256);
    let mut buf = [0u8; 2048];
    loop {
        if contains(&seen, expect) {
            return Ok(());
        }
        if seen.len() >= MAX_CHECK_READ {
            return Err(CheckFailure::upstream(format!(
                "expected {:?}, got {} bytes without it",
                String::from_utf8_lossy(expect),
                seen.len()
            )));
        }
        let n = conn
            .read(&mut buf)
            .await
            .map_err(|e| read_failure(upstream, "reading the check reply: ", &e))?;
        if n == 0 {
            return Err(CheckFailure::upstream(format!(
                "expected {:?}, got {:?} before the upstream closed",
                String::from_utf8_lossy(expect),
                String::from_utf8_lossy(&seen[..seen.len().min(64)])
            )));
        }
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Waits up to `cap` (at most [`LATE_ALERT_GRACE`]) for an alert after the
/// TLS handshake; bytes, EOF or silence pass.
async fn late_alert(upstream: &Upstream, conn: &mut UpstreamStream, cap: Duration) -> Result<(), CheckFailure> {
    let mut buf = [0u8; 512];
    match timeout(LATE_ALERT_GRACE.min(cap), conn.read(&mut buf)).await {
        Ok(Err(e)) => Err(read_failure(upstream, "", &e)),
        Ok(Ok(_)) | Err(_) => Ok(()),
    }
}

/// A read or write failed: a TLS alert or error in words
/// ([`late_refusal`]), else as [`io_failure`].
fn read_failure(upstream: &Upstream, what: &str, e: &std::io::Error) -> CheckFailure {
    match late_refusal(e, &upstream.name) {
        Some(reason) => CheckFailure::upstream(format!("{what}{reason}")),
        None => io_failure(what, e),
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
    tls: Option<Arc<UpstreamTlsClient>>,
    policy: HealthPolicy,
    clock: Arc<dyn Clock>,
    preamble: &'static [u8],
) {
    let Some(settings) = policy.active.clone() else {
        return;
    };
    loop {
        let began = clock.instant();
        let result = probe(&upstream, tls.as_deref(), &settings, preamble).await;
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
