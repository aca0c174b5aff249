//! One client connection, start to end: mTLS handshake with the app chosen
//! by listener + SNI (decided by the app's gate), per-client limits,
//! least-connections upstream with retries, relay, one access-log line.
//!
//! Promises: every network wait has a timeout (handshake, connect, idle);
//! an unauthorized client gets a TLS alert and never reaches an upstream;
//! a failed handshake lingers briefly so its alert arrives (never a bare
//! reset); a limited client is closed before any upstream is contacted;
//! when every upstream of the app is DOWN the client is refused at once;
//! an admitted connection is registered for reload re-checks and closed at
//! its certificate's expiry (unless `keep_deauthorized`) or after
//! `max_lifetime`; per-client and per-upstream slots are released on every
//! exit path (drop guards).

use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_lite::{AsyncWriteExt, FutureExt};
use futures_rustls::LazyConfigAcceptor;
use rustls::ServerConfig;
use smol::channel;
use tracing::{debug, info, warn};

use crate::core::ops::logging::escaped;
use crate::core::ops::metrics::{HandshakeFailureKind, Refusal};
use crate::core::pool::balancer::{Balancer, ConnectError, Upstream, UpstreamGuard};
use crate::core::proxy::relay::{RelayEnd, Side, Transferred, relay};
use crate::core::proxy::server::{Accepted, AppRuntime, Generation, ListenerApps, Open, Server, Slot};
use crate::core::rt::net::TcpConn;
use crate::core::rt::timeout;
use crate::core::tls;
use crate::core::tls::gate::{self, CloseReason};
use crate::core::tls::identity;

/// The handshake did not complete.
#[derive(Debug)]
pub struct HandshakeFailure {
    pub kind: HandshakeFailureKind,
    pub detail: String,
    /// No alert was sent (rustls gives none for a ClientHello over its
    /// buffer, and a few others: see `unanswered_by_rustls`): the caller
    /// sends `decode_error` before closing.
    pub unanswered: bool,
}

type ClientTls<'c> = futures_rustls::server::TlsStream<&'c mut TcpConn>;

struct Handshaken<'c> {
    /// Boxed so moves of it stay pointer-sized in the connection task.
    tls: Box<ClientTls<'c>>,
    app: Arc<AppRuntime>,
    identity: String,
    not_after: Option<SystemTime>,
    sni: Option<String>,
}

/// Serves one accepted connection; `slot` holds its `[limits]` share.
/// `generation` is the one current at accept.
pub(super) async fn handle(
    server: Arc<Server>,
    generation: Arc<Generation>,
    mut slot: Slot,
    stream: Accepted,
    local: SocketAddr,
    peer: SocketAddr,
) {
    let timeouts = generation.config.timeouts;
    let started = Instant::now();
    let Some(apps) = generation.listeners.get(&local) else {
        return;
    };
    let mut conn = TcpConn::new(stream);
    let result = timeout(timeouts.handshake, handshake(&mut conn, apps, &generation.reject)).await;
    slot.handshake_done();
    let hs = match result {
        Ok(Ok(hs)) => hs,
        Ok(Err(f)) => {
            server.metrics.count_handshake_failure(f.kind);
            info!(%peer, %local, reason = f.kind.label(), "handshake failed: {}", f.detail);
            if f.unanswered {
                let _ = timeout(Duration::from_secs(1), conn.write_all(&DECODE_ERROR_ALERT)).await;
            }
            if f.kind != HandshakeFailureKind::Eof {
                close_and_drain_boxed(&mut conn).await;
            }
            return;
        }
        Err(_) => {
            server.metrics.count_handshake_failure(HandshakeFailureKind::Timeout);
            info!(%peer, %local, reason = HandshakeFailureKind::Timeout.label(), "handshake failed: not completed within {:?}", timeouts.handshake);
            return;
        }
    };
    let Handshaken {
        mut tls,
        app,
        identity,
        not_after,
        sni,
    } = hs;
    let handshake_done = started.elapsed();
    server.metrics.handshake_seconds.observe(handshake_done);
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    if resumed {
        server.metrics.resumed.fetch_add(1, Ordering::Relaxed);
    }
    app.stats.handshakes.fetch_add(1, Ordering::Relaxed);
    let _app_active = ActiveGuard::new(&app.stats.active);
    debug!(%peer, identity = %escaped(&identity), app = %app.name, resumed, "handshake done in {handshake_done:?}");

    // Registered for reload re-checks until this function returns.
    let (kill_tx, kill_rx) = channel::bounded::<CloseReason>(1);
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    let _tracked = server.track(
        Open {
            app: app.name.clone(),
            identity: identity.clone(),
            chain,
            kill: kill_tx,
        },
        &generation,
    );
    let keep = generation.config.tls.keep_deauthorized;
    let deadline = gate::deadline(
        not_after.filter(|_| !keep),
        timeouts.max_lifetime,
        started,
        server.clock().as_ref(),
    );

    let mut log = AccessLog {
        peer,
        identity: &identity,
        app: &app.name,
        upstream: None,
        sni: sni.as_deref(),
        started,
        moved: Transferred::default(),
    };
    let proxied = proxy(&server, &generation, &app, &mut tls, &mut log, deadline);
    let killed = async { kill_rx.recv().await.map_or(Outcome::Gone, Outcome::Closed) };
    match proxied.or(killed).await {
        Outcome::Refused(r) => {
            server.metrics.count_refusal(r);
            log.close(r.access_reason());
            close_and_drain_boxed(&mut *tls).await;
        }
        Outcome::Relayed(reason) => log.close(&reason),
        Outcome::Closed(reason) => {
            server.metrics.count_closed(reason);
            if reason != CloseReason::MaxLifetime {
                info!(%peer, identity = %escaped(&identity), app = %app.name, reason = reason.label(), "connection closed by the gate");
            }
            log.close(reason.label());
            let _ = timeout(Duration::from_millis(100), tls.close()).await;
        }
        Outcome::Gone => log.close("done"),
    }
    server.metrics.connection_seconds.observe(started.elapsed());
}

/// How the part after the handshake ended.
enum Outcome {
    /// Refused before any upstream byte (limits, no upstream).
    Refused(Refusal),
    /// Relayed; the access log's close reason.
    Relayed(Cow<'static, str>),
    /// Closed by tlb: reload re-check, certificate expiry, max lifetime.
    Closed(CloseReason),
    /// The registry dropped the connection's kill channel (cannot happen
    /// while the connection is registered; ends it cleanly if it ever did).
    Gone,
}

/// Limits, upstream connect with retries, relay, passive health verdicts.
async fn proxy(
    server: &Server,
    generation: &Generation,
    app: &AppRuntime,
    tls: &mut ClientTls<'_>,
    log: &mut AccessLog<'_>,
    deadline: Option<(Instant, CloseReason)>,
) -> Outcome {
    let timeouts = generation.config.timeouts;
    // Limits: before any upstream is contacted. (An identity the gate
    // admitted always has limiter state: both come from the same
    // generation's [[client]] list; refuse if it ever had not.)
    let admitted = match generation.limiter.get(log.identity) {
        Some(c) => c.try_acquire(),
        None => Err(Refusal::Unauthorized),
    };
    let slot = match admitted {
        Ok(slot) => slot,
        Err(r) => return Outcome::Refused(r),
    };
    let (mut guard, upstream_stream) = match app.balancer.connect(timeouts.connect).await {
        Ok(x) => x,
        Err(e) => return Outcome::Refused(refusal(e)), // `slot` drops: not held while the refusal lingers
    };
    let upstream = guard.upstream().clone();
    log.upstream = Some(upstream.clone());
    server.metrics.proxied.fetch_add(1, Ordering::Relaxed);
    let mut up = Answered {
        conn: upstream_stream,
        pending: Some((&app.balancer, &mut guard)),
    };
    let end = relay(tls, &mut up, timeouts.idle, deadline.map(|d| d.0), &mut log.moved).await;
    // Closes the upstream connection and ends its borrow of the guard.
    drop(up);
    let outcome = match &end {
        RelayEnd::Done => Outcome::Relayed("done".into()),
        RelayEnd::Idle => Outcome::Relayed("idle_timeout".into()),
        RelayEnd::Deadline => Outcome::Closed(deadline.map_or(CloseReason::MaxLifetime, |d| d.1)),
        RelayEnd::Error(Side::A, e) => Outcome::Relayed(format!("client_error: {}", tls::describe_tls_error(e)).into()),
        RelayEnd::Error(Side::B, e) => Outcome::Relayed(format!("upstream_error: {e}").into()),
    };
    if log.moved.b_to_a == 0 {
        // The upstream never answered. A reset is a passive failure (an
        // upstream that accepts and dies), like a refused connect; so is
        // a half-open trial the upstream closed although the client had
        // spoken (a proxy in front of a dead backend). Otherwise the
        // guard's drop leaves a trial without a verdict.
        let reset = matches!(&end, RelayEnd::Error(Side::B, e) if matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
        ));
        let silent_trial = guard.is_trial() && log.moved.a_to_b > 0 && matches!(end, RelayEnd::Done);
        if reset || silent_trial {
            let what = if reset {
                "reset before any byte"
            } else {
                "closed before any byte"
            };
            let n = app.balancer.failed(&mut guard, what);
            warn!(app = %app.name, upstream = %upstream.name, consecutive_failures = n, "upstream {what}");
        }
    }
    upstream
        .bytes_to_upstream
        .fetch_add(log.moved.a_to_b, Ordering::Relaxed);
    upstream.bytes_to_client.fetch_add(log.moved.b_to_a, Ordering::Relaxed);
    drop(guard);
    drop(slot);
    outcome
}

/// The upstream side of a relay: the first byte the upstream sends is
/// reported once as a passive success ([`Balancer::answered`]); an accept
/// alone proves little (a proxy in front of a dead backend accepts too).
struct Answered<'a> {
    conn: TcpConn,
    pending: Option<(&'a Balancer, &'a mut UpstreamGuard)>,
}

impl futures_lite::AsyncRead for Answered<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.conn).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r
            && *n > 0
            && let Some((balancer, guard)) = self.pending.take()
        {
            balancer.answered(guard);
        }
        r
    }
}

impl futures_lite::AsyncWrite for Answered<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        Pin::new(&mut self.conn).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_close(cx)
    }
}

/// Holds one unit of an "open now" gauge; gives it back on drop.
struct ActiveGuard<'a>(&'a AtomicU64);

impl<'a> ActiveGuard<'a> {
    fn new(c: &'a AtomicU64) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(c)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One access-log line at close.
struct AccessLog<'a> {
    peer: SocketAddr,
    identity: &'a str,
    app: &'a str,
    upstream: Option<Arc<Upstream>>,
    sni: Option<&'a str>,
    started: Instant,
    moved: Transferred,
}

impl AccessLog<'_> {
    fn close(&self, reason: impl AsRef<str>) {
        let reason = reason.as_ref();
        info!(
            target: "tlb::access",
            peer = %self.peer,
            identity = %escaped(self.identity),
            app = self.app,
            upstream = self.upstream.as_ref().map_or("-", |u| u.name.as_str()),
            sni = %escaped(self.sni.unwrap_or("-")),
            bytes_in = self.moved.a_to_b,
            bytes_out = self.moved.b_to_a,
            duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            reason,
            "access"
        );
    }
}

/// The handshake, on the heap: its state (acceptor, buffers, verifier
/// calls) is only needed until it completes, and inline it would size every
/// connection task, idle ones included.
fn handshake<'c>(
    conn: &'c mut TcpConn,
    apps: &'c ListenerApps,
    reject: &'c Arc<ServerConfig>,
) -> Pin<Box<dyn Future<Output = Result<Handshaken<'c>, HandshakeFailure>> + Send + 'c>> {
    Box::pin(handshake_inline(conn, apps, reject))
}

/// A plaintext fatal `decode_error` alert record (before any key exists).
const DECODE_ERROR_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 50];

async fn handshake_inline<'c>(
    conn: &'c mut TcpConn,
    apps: &'c ListenerApps,
    reject: &'c Arc<ServerConfig>,
) -> Result<Handshaken<'c>, HandshakeFailure> {
    let start = match LazyConfigAcceptor::new(rustls::server::Acceptor::default(), conn).await {
        Ok(start) => start,
        Err(e) => {
            // Where rustls refuses the first flight without an alert, send
            // decode_error ourselves, so no client sees a bare close or reset.
            if unanswered_by_rustls(&e) {
                return Err(HandshakeFailure {
                    kind: HandshakeFailureKind::NotTls,
                    detail: format!("ClientHello too large or malformed ({e}); sent decode_error"),
                    unanswered: true,
                });
            }
            return Err(classify_io(e));
        }
    };
    let sni = start.client_hello().server_name().map(str::to_owned);
    let Some(app) = apps.select(sni.as_deref()).cloned() else {
        // Complete the refusal with an alert (access_denied) rather than a bare close.
        let _ = start.into_stream(reject.clone()).into_fallible().await;
        return Err(HandshakeFailure {
            kind: HandshakeFailureKind::UnknownSni,
            detail: format!(
                "no app for server name {:?} on this listener",
                sni.as_deref().unwrap_or("")
            ),
            unanswered: false,
        });
    };
    let mut accept = start.into_stream(app.server_config.clone()).into_fallible();
    // Poll the handshake ourselves so a denial recorded by the verifier is
    // read in the same poll that returns the error (see gate::take_denial).
    let result = std::future::poll_fn(|cx| {
        gate::clear_denial();
        match Pin::new(&mut accept).poll(cx) {
            std::task::Poll::Ready(Err((e, _io))) => std::task::Poll::Ready(Err((e, gate::take_denial()))),
            std::task::Poll::Ready(Ok(s)) => std::task::Poll::Ready(Ok(s)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    })
    .await;
    let tls = match result {
        Ok(s) => s,
        Err((_, Some(denial))) => {
            return Err(HandshakeFailure {
                kind: HandshakeFailureKind::Unauthorized,
                detail: denial.to_string(),
                unanswered: false,
            });
        }
        Err((e, None)) => return Err(classify_io(e)),
    };
    // Admitted by the gate: in the verifier (full handshake) or in the
    // ticket check (resumption). Read the identity and expiry once.
    let session = tls.get_ref().1;
    let Some(cert) = session.peer_certificates().and_then(|c| c.first()) else {
        return Err(HandshakeFailure {
            kind: HandshakeFailureKind::NoCertificate,
            detail: "no client certificate on the session".into(),
            unanswered: false,
        });
    };
    let Some((Some(identity), not_after)) = identity::parsed(cert, |c| (identity::cn_of(c), identity::not_after_of(c)))
    else {
        let denial = app.gate.policy.no_identity();
        return Err(HandshakeFailure {
            kind: HandshakeFailureKind::Unauthorized,
            detail: denial.to_string(),
            unanswered: false,
        });
    };
    Ok(Handshaken {
        tls: Box::new(tls),
        app,
        identity,
        not_after,
        sni,
    })
}

/// Whether rustls's acceptor refused the client's first flight without
/// queuing an alert. It answers most malformed ClientHellos with one, but
/// (rustls 0.23) not: a ClientHello over its 64 KiB buffer ("message buffer
/// full", an I/O error with no rustls error inside), a handshake header
/// claiming more than 64 KiB, a first record that is not a handshake
/// (application data, alert, change_cipher_spec), a first handshake
/// message that is not a ClientHello, or another record interleaved with a
/// fragmented ClientHello.
fn unanswered_by_rustls(e: &io::Error) -> bool {
    use rustls::{Error as TE, InvalidMessage as IM, PeerMisbehaved as PM};
    if e.kind() != io::ErrorKind::InvalidData {
        return false;
    }
    match e.get_ref().and_then(|i| i.downcast_ref::<TE>()) {
        None => true,
        Some(
            TE::InvalidMessage(IM::HandshakePayloadTooLarge)
            | TE::InappropriateMessage { .. }
            | TE::InappropriateHandshakeMessage { .. }
            | TE::PeerMisbehaved(PM::MessageInterleavedWithHandshakeMessage),
        ) => true,
        Some(_) => false,
    }
}

/// Closes a connection that will not be relayed: after a failed handshake
/// (the alert is already written) or a refusal after it (close_notify +
/// FIN), then discards what the client still sends for a moment, so it sees
/// the alert or a clean "closed before any reply" instead of a reset (the
/// kernel resets a connection closed with unread data). Boxed: a rare path
/// whose state would otherwise size every connection task, idle ones too.
fn close_and_drain_boxed<'s, S>(io: &'s mut S) -> Pin<Box<dyn Future<Output = ()> + Send + 's>>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + Send + ?Sized,
{
    Box::pin(close_and_drain(io))
}

/// Closes the write side (at most 1 s), then reads and discards up to
/// 64 KiB for at most 1 s.
async fn close_and_drain<S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + ?Sized>(io: &mut S) {
    use futures_lite::AsyncReadExt;
    const LINGER: Duration = Duration::from_secs(1);
    const MAX_DISCARD: usize = 64 * 1024;
    let _ = timeout(LINGER, io.close()).await;
    let _ = timeout(LINGER, async {
        let mut scratch = [0u8; 2048];
        let mut total = 0;
        while total < MAX_DISCARD {
            match io.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

fn classify_io(e: io::Error) -> HandshakeFailure {
    use HandshakeFailureKind as K;
    use rustls::{CertificateError as CE, Error as TE};
    let detail = tls::describe_tls_error(&e);
    let kind = match e.get_ref().and_then(|i| i.downcast_ref::<TE>()) {
        Some(TE::NoCertificatesPresented) => K::NoCertificate,
        Some(TE::InvalidCertificate(CE::ApplicationVerificationFailure)) => K::Unauthorized,
        Some(TE::InvalidCertificate(_)) | Some(TE::InvalidCertRevocationList(_)) => K::BadCertificate,
        Some(TE::PeerIncompatible(_)) => K::Protocol,
        Some(TE::InvalidMessage(_))
        | Some(TE::InappropriateHandshakeMessage { .. })
        | Some(TE::InappropriateMessage { .. }) => K::NotTls,
        Some(TE::AlertReceived(_)) => K::ClientAlert,
        Some(_) => K::Other,
        None if e.kind() == io::ErrorKind::UnexpectedEof => K::Eof,
        None => K::Other,
    };
    HandshakeFailure {
        kind,
        detail,
        unanswered: false,
    }
}

/// The refusal a failed upstream connect is counted and logged as.
fn refusal(e: ConnectError) -> Refusal {
    match e {
        ConnectError::NoHealthyUpstream => Refusal::NoHealthyUpstream,
        ConnectError::Failed => Refusal::UpstreamConnectFailed,
        ConnectError::LocalResource => Refusal::LocalResource,
    }
}
