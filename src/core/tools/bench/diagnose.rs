//! What went wrong in a `tlb bench` run, in one line: every error is put
//! in a [`Class`] when it happens, and the class that failed most is
//! explained with its likely cause and fix.
//!
//! Promises: one classifier for every mode (connect, handshake, first
//! read, later reads); a refused handshake is never mistaken for a
//! connection; every explanation is a single line that names the target
//! and says what to try; what cannot be told apart from the outside (a
//! per-client limit and no healthy upstream both close right after the
//! handshake) is said to be either.

use std::io;

use rustls::AlertDescription as AD;

use crate::core::rt::net::is_disconnect;
use crate::core::tls::alerts::{alert_advice, describe_certificate_error, server_certificate_advice};
use crate::core::tls::{alert_name, describe_tls_error};
use crate::core::tools::client::ClientError;

use super::Mode;

/// Why an attempt failed, as far as the client can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// TCP connect refused: nothing listens there.
    NothingListening,
    /// Another TCP connect failure (unreachable, no route...).
    Connect,
    /// The peer answered the ClientHello with bytes that are not TLS.
    NotTls,
    /// The server refused the handshake with this alert.
    Alert(AD),
    /// This client rejected the server's certificate.
    ServerCert,
    /// Another TLS failure.
    Tls,
    /// EOF or reset during the handshake (an accept cap, or not TLS).
    ClosedInHandshake,
    /// Handshake done, then closed before any reply (a per-client limit,
    /// or no healthy upstream).
    ClosedBeforeReply,
    /// Closed after echoes had come back on the connection.
    ClosedMidExchange,
    /// A connect, handshake or echo timed out.
    Timeout,
    /// Anything else (the label says what).
    Other,
}

/// One failed attempt: its label (the key of the "errors by kind" table)
/// and its class.
pub(super) struct Failure {
    pub(super) label: String,
    pub(super) class: Class,
}

impl Failure {
    fn new(label: impl Into<String>, class: Class) -> Failure {
        Failure {
            label: label.into(),
            class,
        }
    }
}

/// A TCP connect failure (from `connect_tcp`).
pub(super) fn of_connect(e: &ClientError) -> Failure {
    match e {
        ClientError::Connect { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused => {
            Failure::new(format!("connect: {}", source.kind()), Class::NothingListening)
        }
        ClientError::Connect { source, .. } => Failure::new(format!("connect: {}", source.kind()), Class::Connect),
        ClientError::Timeout { what, .. } => Failure::new(format!("timeout: {what}"), Class::Timeout),
        other => Failure::new(format!("connect: {other}"), Class::Connect),
    }
}

/// The rustls error inside an I/O error, if there is one.
fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
}

/// A TLS-level failure (an alert, a certificate, bytes that are not TLS).
fn of_tls(e: &rustls::Error) -> Failure {
    use rustls::Error as TE;
    match e {
        TE::AlertReceived(a) => Failure::new(
            format!("tls refused: server sent alert {}", alert_name(*a)),
            Class::Alert(*a),
        ),
        TE::InvalidCertificate(c) => Failure::new(
            format!(
                "tls refused: the server's certificate is {}; {}",
                describe_certificate_error(c),
                server_certificate_advice(c)
            ),
            Class::ServerCert,
        ),
        TE::InvalidMessage(_)
        | TE::InappropriateMessage { .. }
        | TE::InappropriateHandshakeMessage { .. }
        | TE::PeerSentOversizedRecord => Failure::new(format!("not tls: {e}"), Class::NotTls),
        other => Failure::new(format!("tls refused: {other}"), Class::Tls),
    }
}

/// A failure during the TLS handshake.
pub(super) fn of_handshake(e: &io::Error) -> Failure {
    if let Some(tls) = rustls_error(e) {
        return of_tls(tls);
    }
    if is_disconnect(e) {
        return Failure::new("closed during the handshake", Class::ClosedInHandshake);
    }
    Failure::new(format!("io: {}", describe_tls_error(e)), Class::Other)
}

/// A failure on an established connection: before any echo came back on
/// it (`before_reply`), an EOF or reset is "closed before reply"; after,
/// "closed mid-exchange". A TLS alert (with TLS 1.3 a refusal arrives on
/// the first read) is "tls refused: ...".
pub(super) fn of_exchange(e: &io::Error, before_reply: bool) -> Failure {
    if let Some(tls) = rustls_error(e) {
        return of_tls(tls);
    }
    match (is_disconnect(e), before_reply) {
        (true, true) => Failure::new("closed before reply", Class::ClosedBeforeReply),
        (true, false) => Failure::new("closed mid-exchange", Class::ClosedMidExchange),
        _ => Failure::new(format!("io: {}", describe_tls_error(e)), Class::Other),
    }
}

/// `what` (an echo, the TLS handshake) did not finish in time.
pub(super) fn timeout(what: &str) -> Failure {
    Failure::new(format!("timeout: {what}"), Class::Timeout)
}

/// What the explanation may refer to.
pub(super) struct Context<'a> {
    pub(super) target: &'a str,
    pub(super) mode: Mode,
    pub(super) plain: bool,
    /// --connections.
    pub(super) connections: usize,
    /// Connections that got an echo back.
    pub(super) opened: u64,
    pub(super) secs: f64,
}

/// The one-line explanation of `class` (whose most frequent label is
/// `label`).
pub(super) fn explain(class: Class, label: &str, c: &Context<'_>) -> String {
    let t = c.target;
    match class {
        Class::NothingListening => format!(
            "connection refused at {t}: nothing is listening there (is `tlb serve` running? is --target right?)"
        ),
        Class::Connect => format!("cannot connect to {t} ({label}): is --target right, and is it reachable?"),
        Class::NotTls => {
            format!("{t} does not speak TLS ({label}): if it is a plain TCP echo (e.g. `tlb upstream`), add --plain")
        }
        Class::Alert(a) => format!(
            "{t} refused the TLS handshake with alert {}: {}",
            alert_name(a),
            alert_advice(a).unwrap_or("check the server log")
        ),
        Class::ServerCert => format!("{label} ({t})"),
        Class::Tls => format!("the TLS handshake with {t} failed ({label}); check the server log"),
        Class::ClosedInHandshake => format!(
            "{t} closed the connection during the TLS handshake: a [limits] accept cap (max_handshakes_per_ip, \
             max_handshakes, max_connections), or not a TLS server (then add --plain); check the server log"
        ),
        Class::ClosedBeforeReply => closed_before_reply(c),
        Class::ClosedMidExchange => format!(
            "{t} closed established connections mid-exchange (idle or max_lifetime timeout, a reload, an \
             upstream going away); check the server log"
        ),
        Class::Timeout => {
            format!("{label} against {t}: is it reachable (no firewall dropping packets?) and not overloaded?")
        }
        Class::Other => format!("{label} ({t})"),
    }
}

/// Handshake done, then closed before any reply: seen from outside, a
/// per-client limit and no healthy upstream look the same, so the line
/// says which is likelier from what got through, and names both.
fn closed_before_reply(c: &Context<'_>) -> String {
    let t = c.target;
    if c.plain {
        return format!(
            "{t} closed the connection before any echo: with --plain the target must be a plain TCP echo \
             (a TLS port closes on plain bytes: drop --plain)"
        );
    }
    let tail = "or no healthy upstream behind it; check the server log";
    match (c.mode, c.opened) {
        (_, 0) => format!(
            "{t} closed every connection right after the handshake, before any reply: a per-client limit \
             (max_connections / connection_rate) {tail}"
        ),
        (Mode::Handshake, n) => format!(
            "{t} let {n} connection(s) through ({:.1}/s) and closed the rest right after the handshake: the \
             per-client connection_rate limit (raise connection_rate and burst in [defaults] or the client's \
             [[client]], or lower --connections), {tail}",
            n as f64 / c.secs.max(1e-9)
        ),
        (_, n) => format!(
            "{t} let {n} of {} connection(s) through and closed the rest right after the handshake: the \
             per-client max_connections (or burst) limit (raise it in [defaults] or the client's [[client]], \
             or use --connections <= the limit), {tail}",
            c.connections
        ),
    }
}
