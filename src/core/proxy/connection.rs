//! One client connection, start to end: the handshake (see
//! [`handshake`](super::handshake)), then admission by the client's limits
//! (this instance's, then the fleet's with `[cluster]`),
//! connect to the least-loaded healthy upstream with retries, the app's
//! PROXY header (see [`proxy_header`](super::proxy_header)), relay, close,
//! and one access-log line.
//!
//! Promises: every network wait has a timeout (handshake, connect, idle);
//! a failed handshake lingers briefly so its alert arrives (never a bare
//! reset); a limited client is closed before any upstream is contacted;
//! when every upstream of the app is DOWN the client is refused at once;
//! an admitted connection is registered for reload re-checks and closed at
//! its certificate's expiry (unless `keep_deauthorized`) or after
//! `max_lifetime`; per-client (local and fleet) and per-upstream slots are
//! released on every exit path (drop guards); the fleet's check waits for
//! Redis at most `[cluster] timeout`. Every log line of the connection is
//! in its `conn` span (`peer`, then `identity` and `app` once known), except the
//! access log, which carries those fields itself, and the line of a
//! handshake the gate refused, which carries the certificate's `identity`
//! and `serial` (read on that path only); the span is entered
//! around the handshake, the upstream connect and each log line, never
//! while relaying (entering a span costs the subscriber a lookup).

use std::borrow::Cow;
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_lite::{AsyncWriteExt, FutureExt, future};
use smol::Async;
use tracing::{Instrument, Span, debug, info, warn};

use crate::core::cluster::{ClusterSlot, Denied};
use crate::core::pool::balancer::{Balancer, ConnectError, Upstream, UpstreamGuard};

use crate::core::proxy::admission::Slot;
use crate::core::proxy::generation::{AppRuntime, Generation};
use crate::core::proxy::handshake::{ClientTls, DECODE_ERROR_ALERT, HandshakeFailure, Handshaken, handshake};
use crate::core::proxy::limiter::ClientState;
use crate::core::proxy::linger::close_and_drain;
use crate::core::proxy::outcome::{HandshakeFailureKind, Refusal};
use crate::core::proxy::proxy_header;
use crate::core::proxy::registry::{KillSignal, Open, Tracked};
use crate::core::proxy::relay::{RelayEnd, Side, Transferred, relay};
use crate::core::proxy::server::Server;
use crate::core::rt::log::escaped;
use crate::core::rt::net::{TcpConn, is_disconnect};
use crate::core::rt::timeout;
use crate::core::tls;
use crate::core::tls::gate::{self, CloseReason};
use crate::core::tls::policy::Admitted;
use crate::core::tls::upstream::{UpstreamStream, late_refusal};

/// Serves one accepted connection; `slot` holds its `[limits]` share.
/// `generation` is the one current at accept.
pub(super) async fn handle(
    server: Arc<Server>,
    generation: Arc<Generation>,
    mut slot: Slot,
    stream: Async<TcpStream>,
    local: SocketAddr,
    peer: SocketAddr,
) {
    let timeouts = generation.config.timeouts;
    let started = Instant::now();
    let Some(apps) = generation.listeners.get(&local) else {
        return;
    };
    let span = tracing::info_span!(
        "conn",
        %peer,
        identity = tracing::field::Empty,
        app = tracing::field::Empty
    );
    let mut conn = TcpConn::new(stream);
    let result = timeout(timeouts.handshake, handshake(&mut conn, apps, &generation.reject))
        .instrument(span.clone())
        .await;
    slot.handshake_done();
    let hs = match result {
        Ok(Ok(hs)) => hs,
        Ok(Err(f)) => return handshake_failed(&server, f, &mut conn, local, peer, &span).await,
        Err(_) => {
            server.metrics.count_handshake_failure(HandshakeFailureKind::Timeout);
            span.in_scope(|| info!(%peer, %local, reason = HandshakeFailureKind::Timeout.label(), "handshake failed: not completed within {:?}", timeouts.handshake));
            return;
        }
    };
    let Handshaken {
        mut tls,
        app,
        admitted: who,
        not_after,
        sni,
    } = hs;
    let identity = who.identity.as_str();
    span.record("identity", tracing::field::display(escaped(identity)));
    span.record("app", tracing::field::display(&app.name));
    let _app_active = span.in_scope(|| admitted(&server, &app, &tls, &who, started, peer));
    // Registered for reload re-checks until this function returns.
    let (_tracked, open) = span.in_scope(|| register(&server, &generation, &app, &tls, identity));
    let keep = generation.config.tls.keep_deauthorized;
    let deadline = gate::deadline(
        not_after.filter(|_| !keep),
        timeouts.max_lifetime,
        started,
        server.clock().as_ref(),
    );

    let mut log = AccessLog {
        peer,
        identity,
        listed: who.listed,
        spiffe_id: who.uri.as_deref(),
        app: &app.name,
        upstream: None,
        sni: sni.as_deref(),
        started,
        moved: Transferred::default(),
    };
    let proxied = proxy(&server, &generation, &app, &mut tls, &mut log, deadline, &span);
    let killed = future::poll_fn(|cx| open.kill.poll_fired(cx).map(Outcome::Closed));
    let outcome = proxied.or(killed).await;
    finish(&server, outcome, &mut tls, &log, &span).await;
    server.metrics.connection_seconds.observe(started.elapsed());
}

/// Counts a failed handshake, logs it, and closes: with `decode_error`
/// first when rustls sent no alert, lingering unless the client is gone.
async fn handshake_failed(
    server: &Server,
    f: HandshakeFailure,
    conn: &mut TcpConn,
    local: SocketAddr,
    peer: SocketAddr,
    span: &Span,
) {
    server.metrics.count_handshake_failure(f.kind);
    span.in_scope(|| match &f.refused {
        None => info!(%peer, %local, reason = f.kind.label(), "handshake failed: {}", f.detail),
        // A refused certificate: who it names and presents, on which app,
        // so the line says whom and where.
        Some(r) => info!(
            %peer,
            %local,
            reason = f.kind.label(),
            identity = %escaped(r.identity.as_deref().unwrap_or("-")),
            serial = %r.serial.as_deref().unwrap_or("-"),
            presented = %escaped(&r.presented.join(",")),
            app = %r.app,
            "handshake failed: {}",
            f.detail
        ),
    });
    if f.unanswered {
        let _ = timeout(Duration::from_secs(1), conn.write_all(&DECODE_ERROR_ALERT)).await;
    }
    if f.kind != HandshakeFailureKind::Eof {
        close_and_drain(conn).await;
    }
}

/// Counts a completed handshake; the returned guard holds the app's
/// "open now" share.
fn admitted<'a>(
    server: &Server,
    app: &'a AppRuntime,
    tls: &ClientTls<'_>,
    who: &Admitted,
    started: Instant,
    peer: SocketAddr,
) -> ActiveGuard<'a> {
    let identity = who.identity.as_str();
    if let Some(denial) = &who.audit
        && app.stats.audit(denial)
    {
        warn!(%peer, identity = %escaped(identity), app = %app.name, reason = denial.reason.label(), "audit: admitted a client enforce mode would refuse (logged once per identity and reason): {denial}");
    }
    let handshake_done = started.elapsed();
    server.metrics.handshake_seconds.observe(handshake_done);
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    if resumed {
        server.metrics.resumed.fetch_add(1, Ordering::Relaxed);
    }
    app.stats.handshakes.fetch_add(1, Ordering::Relaxed);
    let active = ActiveGuard::new(&app.stats.active);
    debug!(%peer, identity = %escaped(identity), app = %app.name, resumed, "handshake done in {handshake_done:?}");
    active
}

/// Registers the connection for reload re-checks; the entry's
/// [`KillSignal`](crate::core::proxy::registry::KillSignal) says when (and
/// why) it must close.
fn register(
    server: &Server,
    generation: &Arc<Generation>,
    app: &AppRuntime,
    tls: &ClientTls<'_>,
    identity: &str,
) -> (Tracked, Arc<Open>) {
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    let open = Arc::new(Open {
        app: app.name.clone(),
        identity: identity.to_owned(),
        chain,
        kill: KillSignal::default(),
    });
    (server.track(open.clone(), generation), open)
}

/// How the part after the handshake ended.
enum Outcome {
    /// Refused before any upstream byte (limits, no upstream).
    Refused(Refusal),
    /// Relayed; the access log's close reason.
    Relayed(Cow<'static, str>),
    /// Closed by tlb: reload re-check, certificate expiry, max lifetime.
    Closed(CloseReason),
}

/// Counts how the connection ended, writes the access log, and closes.
async fn finish(server: &Server, outcome: Outcome, tls: &mut ClientTls<'_>, log: &AccessLog<'_>, span: &Span) {
    match outcome {
        Outcome::Refused(r) => {
            server.metrics.count_refusal(r);
            log.close(r.access_reason());
            close_and_drain(tls).await;
        }
        Outcome::Relayed(reason) => log.close(&reason),
        Outcome::Closed(reason) => {
            server.metrics.count_closed(reason);
            if !matches!(reason, CloseReason::MaxLifetime | CloseReason::AppRemoved) {
                span.in_scope(|| info!(peer = %log.peer, identity = %escaped(log.identity), app = %log.app, reason = reason.label(), "connection closed by the gate"));
            }
            log.close(reason.label());
            let _ = timeout(Duration::from_millis(100), tls.close()).await;
        }
    }
}

/// Limits, upstream connect with retries, relay, passive health verdicts.
async fn proxy(
    server: &Server,
    generation: &Generation,
    app: &AppRuntime,
    tls: &mut ClientTls<'_>,
    log: &mut AccessLog<'_>,
    deadline: Option<(Instant, CloseReason)>,
    span: &Span,
) -> Outcome {
    let timeouts = generation.config.timeouts;
    // Limits: before any upstream is contacted. (An identity the gate
    // admitted always has limiter state: both come from the same
    // generation's [[client]] list; refuse if it ever had not.)
    let Some(client) = generation.limiter.get(log.identity, log.listed) else {
        return Outcome::Refused(Refusal::Unauthorized);
    };
    let slot = match client.try_acquire() {
        Ok(slot) => slot,
        Err(r) => return Outcome::Refused(r),
    };
    let shared = match fleet_limits(server, client).await {
        Ok(shared) => shared,
        Err(r) => return Outcome::Refused(r),
    };
    // The PROXY header, if the app sends one: written first on each
    // connect attempt, in plain, before any upstream TLS.
    let who = (log.peer, log.identity, log.spiffe_id, log.sni);
    let Ok(header) = span.in_scope(|| proxy_header::header_for(app, tls, who)) else {
        return Outcome::Refused(Refusal::UpstreamConnectFailed);
    };
    let connected = app
        .balancer
        .connect(timeouts.connect, header.as_deref().unwrap_or_default())
        .instrument(span.clone())
        .await
        .map_err(refusal);
    let (mut guard, upstream_stream) = match connected {
        Ok(x) => x,
        Err(r) => return Outcome::Refused(r), // `slot` drops: not held while the refusal lingers
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
        RelayEnd::Error(Side::B, e) => {
            Outcome::Relayed(format!("upstream_error: {}", tls::describe_tls_error(e)).into())
        }
    };
    if log.moved.b_to_a == 0 {
        span.in_scope(|| judge_silent_upstream(app, &mut guard, &end, log.moved));
    }
    upstream
        .bytes_to_upstream
        .fetch_add(log.moved.a_to_b, Ordering::Relaxed);
    upstream.bytes_to_client.fetch_add(log.moved.b_to_a, Ordering::Relaxed);
    drop(guard);
    drop(shared);
    drop(slot);
    outcome
}

/// The fleet's limits after the local ones, with `[cluster]`: at most one
/// Redis call, bounded by `[cluster] timeout` (the local share decides
/// when Redis is down or late). The slot gives the connection back on drop.
async fn fleet_limits(server: &Server, client: &ClientState) -> Result<Option<ClusterSlot>, Refusal> {
    let Some(cluster) = server.cluster() else {
        return Ok(None);
    };
    match cluster.admit(&client.name, client.limits()).await {
        Ok(slot) => Ok(Some(slot)),
        Err(denied) => {
            client.count_refused();
            Err(match denied {
                Denied::MaxConnections => Refusal::MaxConnections,
                Denied::RateLimited => Refusal::RateLimited,
            })
        }
    }
}

/// The upstream never answered (`moved.b_to_a == 0`). A reset is a passive
/// failure (an upstream that accepts and dies), like a refused connect; so
/// is a TLS alert instead of a first byte (a TLS 1.3 upstream refusing
/// tlb's client certificate after the handshake), and a half-open trial
/// the upstream closed although the client had spoken (a proxy in front of
/// a dead backend). Otherwise the guard's drop leaves a trial without a
/// verdict.
fn judge_silent_upstream(app: &AppRuntime, guard: &mut UpstreamGuard, end: &RelayEnd, moved: Transferred) {
    if let RelayEnd::Error(Side::B, e) = end
        && let Some(reason) = late_refusal(e, &guard.upstream().name)
    {
        let n = app.balancer.failed(guard, &reason);
        let upstream = guard.upstream();
        upstream.count_tls_failure();
        warn!(app = %app.name, upstream = %upstream.name, consecutive_failures = n, "upstream refused the connection: {reason}");
        return;
    }
    let reset = matches!(end, RelayEnd::Error(Side::B, e) if is_disconnect(e));
    let silent_trial = guard.is_trial() && moved.a_to_b > 0 && matches!(end, RelayEnd::Done);
    if reset || silent_trial {
        let what = if reset {
            "reset before any byte"
        } else {
            "closed before any byte"
        };
        let n = app.balancer.failed(guard, what);
        let upstream = guard.upstream();
        warn!(app = %app.name, upstream = %upstream.name, consecutive_failures = n, "upstream {what}");
    }
}

/// The upstream side of a relay: the first byte the upstream sends is
/// reported once as a passive success ([`Balancer::answered`]); an accept
/// alone proves little (a proxy in front of a dead backend accepts too).
struct Answered<'a> {
    conn: UpstreamStream,
    pending: Option<(&'a Balancer, &'a mut UpstreamGuard)>,
}

impl futures_lite::AsyncRead for Answered<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
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
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.conn).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.conn).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
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

/// One access-log line at close. It carries the connection's fields itself
/// (it is written outside the connection's span): one self-contained
/// record per connection.
struct AccessLog<'a> {
    peer: SocketAddr,
    identity: &'a str,
    /// `identity` is a `[[client]]` (false: an unlisted client admitted
    /// in audit mode, under the shared `[defaults]` limits).
    listed: bool,
    /// The URI SAN (SPIFFE ID) the identity was matched by, if it was.
    spiffe_id: Option<&'a str>,
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

/// The refusal a failed upstream connect is counted and logged as.
fn refusal(e: ConnectError) -> Refusal {
    match e {
        ConnectError::NoHealthyUpstream => Refusal::NoHealthyUpstream,
        ConnectError::Failed => Refusal::UpstreamConnectFailed,
        ConnectError::LocalResource => Refusal::LocalResource,
    }
}
