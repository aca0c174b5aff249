//! The mTLS handshake of one client connection: the ClientHello is read
//! first, so the app is chosen by listener + SNI; that app's TLS config,
//! whose verifier is the app's gate, completes the handshake.
//!
//! Promises: a client whose SNI names no app, or whom the gate refuses,
//! gets a TLS alert (access_denied and the like), never an upstream; where
//! rustls refuses the first flight without an alert, the failure says so
//! (`unanswered`) and the caller sends `DECODE_ERROR_ALERT`; every
//! failure is classified ([`HandshakeFailureKind`]) with a detail for the
//! log; the handshake's state lives on the heap, and only until it ends.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::SystemTime;

use futures_rustls::{FallibleAccept, LazyConfigAcceptor, StartHandshake};
use rustls::ServerConfig;

use crate::core::proxy::generation::{AppRuntime, ListenerApps};
use crate::core::proxy::outcome::HandshakeFailureKind;
use crate::core::rt::net::TcpConn;
use crate::core::tls;
use crate::core::tls::gate;
use crate::core::tls::identity;
use crate::core::tls::policy::{Admitted, RefusedCert};

/// The handshake did not complete.
#[derive(Debug)]
pub struct HandshakeFailure {
    pub kind: HandshakeFailureKind,
    pub detail: String,
    /// No alert was sent (rustls gives none for a ClientHello over its
    /// buffer, and a few others: see `unanswered_by_rustls`): the caller
    /// sends `decode_error` before closing.
    pub unanswered: bool,
    /// When the gate refused a certificate: its identity, what it presents
    /// (CN and SANs), its serial (hex) and the app whose gate refused it
    /// (boxed: only refusals pay for it).
    pub refused: Option<Box<RefusedCert>>,
}

impl HandshakeFailure {
    fn answered(kind: HandshakeFailureKind, detail: String) -> HandshakeFailure {
        HandshakeFailure {
            kind,
            detail,
            unanswered: false,
            refused: None,
        }
    }
}

/// The client's TLS stream over its TCP connection.
pub(super) type ClientTls<'c> = futures_rustls::server::TlsStream<&'c mut TcpConn>;

/// A completed handshake the gate admitted.
pub(super) struct Handshaken<'c> {
    /// Boxed so moves of it stay pointer-sized in the connection task.
    pub tls: Box<ClientTls<'c>>,
    pub app: Arc<AppRuntime>,
    /// What the gate admitted the client as (its `[[client]]` name, and in
    /// audit mode the denial enforcing would have given).
    pub admitted: Admitted,
    /// The client certificate's notAfter.
    pub not_after: Option<SystemTime>,
    pub sni: Option<String>,
}

/// A plaintext fatal `decode_error` alert record (before any key exists).
pub(super) const DECODE_ERROR_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 50];

/// The handshake, on the heap: its state (acceptor, buffers, verifier
/// calls) is only needed until it completes, and inline it would size every
/// connection task, idle ones included.
pub(super) fn handshake<'c>(
    conn: &'c mut TcpConn,
    apps: &'c ListenerApps,
    reject: &'c Arc<ServerConfig>,
) -> Pin<Box<dyn Future<Output = Result<Handshaken<'c>, HandshakeFailure>> + Send + 'c>> {
    Box::pin(handshake_inline(conn, apps, reject))
}

async fn handshake_inline<'c>(
    conn: &'c mut TcpConn,
    apps: &'c ListenerApps,
    reject: &'c Arc<ServerConfig>,
) -> Result<Handshaken<'c>, HandshakeFailure> {
    let start = read_client_hello(conn).await?;
    let sni = start.client_hello().server_name().map(str::to_owned);
    let Some(app) = apps.select(sni.as_deref()).cloned() else {
        // Complete the refusal with an alert (access_denied) rather than a bare close.
        let _ = start.into_stream(reject.clone()).into_fallible().await;
        return Err(HandshakeFailure::answered(
            HandshakeFailureKind::UnknownSni,
            format!(
                "no app for server name {:?} on this listener",
                sni.as_deref().unwrap_or("")
            ),
        ));
    };
    let tls = complete(start.into_stream(app.server_config.clone()).into_fallible()).await?;
    let (admitted, not_after) = identity_of(&tls, &app)?;
    Ok(Handshaken {
        tls: Box::new(tls),
        app,
        admitted,
        not_after,
        sni,
    })
}

/// Reads the ClientHello (nothing is sent yet).
async fn read_client_hello(conn: &mut TcpConn) -> Result<StartHandshake<&mut TcpConn>, HandshakeFailure> {
    LazyConfigAcceptor::new(rustls::server::Acceptor::default(), conn)
        .await
        .map_err(|e| {
            // Where rustls refuses the first flight without an alert, send
            // decode_error ourselves, so no client sees a bare close or reset.
            if unanswered_by_rustls(&e) {
                HandshakeFailure {
                    unanswered: true,
                    ..HandshakeFailure::answered(
                        HandshakeFailureKind::NotTls,
                        format!("ClientHello too large or malformed ({e}); sent decode_error"),
                    )
                }
            } else {
                classify_io(e)
            }
        })
}

/// Drives the handshake with the app's config to its end.
async fn complete<'c>(mut accept: FallibleAccept<&'c mut TcpConn>) -> Result<ClientTls<'c>, HandshakeFailure> {
    // Poll the handshake ourselves so a refusal recorded by the verifier is
    // read in the same poll that returns the error (see gate::take_refusal).
    let result = std::future::poll_fn(|cx| {
        gate::clear_refusal();
        match Pin::new(&mut accept).poll(cx) {
            Poll::Ready(Err((e, _io))) => Poll::Ready(Err((e, gate::take_refusal()))),
            Poll::Ready(Ok(s)) => Poll::Ready(Ok(s)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    let (e, refusal) = match result {
        Ok(s) => return Ok(s),
        Err(failed) => failed,
    };
    let Some(refusal) = refusal else {
        return Err(classify_io(e));
    };
    let failure = match &refusal.denial {
        Some(denial) => HandshakeFailure::answered(HandshakeFailureKind::Unauthorized, denial.to_string()),
        None => classify_io(e),
    };
    Err(HandshakeFailure {
        refused: Some(Box::new(refusal)),
        ..failure
    })
}

/// What the client of a session the gate admitted (in the verifier on a
/// full handshake, in the ticket check on a resumption) is admitted as,
/// and its certificate's expiry: the policy's verdict again, on one parse
/// (the chain was verified by the gate). A verdict that no longer admits
/// it fails closed.
fn identity_of(tls: &ClientTls<'_>, app: &AppRuntime) -> Result<(Admitted, Option<SystemTime>), HandshakeFailure> {
    let session = tls.get_ref().1;
    let Some(cert) = session.peer_certificates().and_then(|c| c.first()) else {
        return Err(HandshakeFailure::answered(
            HandshakeFailureKind::NoCertificate,
            "no client certificate on the session".into(),
        ));
    };
    let policy = &app.gate.policy;
    match identity::parsed(cert, |c| (policy.judge(c).verdict, identity::not_after_of(c))) {
        Some((Ok(admitted), not_after)) => Ok((admitted, not_after)),
        Some((Err(denial), _)) => Err(HandshakeFailure::answered(
            HandshakeFailureKind::Unauthorized,
            denial.to_string(),
        )),
        None => Err(HandshakeFailure::answered(
            HandshakeFailureKind::Unauthorized,
            policy.no_identity().to_string(),
        )),
    }
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
    HandshakeFailure::answered(kind, detail)
}
