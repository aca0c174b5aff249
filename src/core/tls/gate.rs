//! The gate: the one admission decision for a client certificate chain on
//! an app, and every path that admits a connection goes through it.
//!
//! [`Gate::decide`] = the app's `[[client]]` policy on the parsed
//! certificate (which entry its CN, URI or DNS SAN matches, app allowed,
//! SPKI pin; which CA must have issued it), then WebPKI verification at the
//! gate clock's "now" against that CA (`tls.ca`, or the identity's
//! `[[trust_domain]]` CA: chain, validity period, clientAuth usage, the
//! current CRL). The policy's verdict stands only if the chain verifies.
//! It is called:
//! - in the full handshake, by the client-certificate verifier
//!   ([`AuthorizingVerifier`]); a refusal is a TLS alert
//!   (`certificate_expired`, `certificate_revoked`, `access_denied`, ...);
//! - before a session is resumed, by the ticket wrapper ([`GatedTickets`]):
//!   a ticket whose chain the gate refuses now, or older than
//!   `session_lifetime`, is not accepted, so the client falls back to a full
//!   handshake, where the verifier refuses it with the same alert;
//! - on reload, for every open connection, by the new generation's gate
//!   (see `server`): a refused one is closed.
//!
//! Promises: no path admits what `decide` refuses; a ticket that cannot be
//! read is refused (fail closed); refusal reasons go to logs and metrics,
//! never to the client beyond the alert.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ProducesTickets;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, SignatureScheme};

use crate::core::rt::clock::{Clock, unix_secs};
use crate::core::tls::identity;
use crate::core::tls::policy::{Admitted, AppPolicy, Denial, Domain, Judged, RefusedCert, record_refusal};
// The handshake reads a refusal's reason through these (see policy).
pub use crate::core::tls::policy::{clear_refusal, take_refusal};

/// Why the gate refused a chain.
#[derive(Debug, Clone)]
pub enum Refused {
    /// The certificate itself: unknown CA, expired, revoked, wrong usage...
    /// (the error rustls turns into the alert).
    Certificate(TlsError),
    /// A valid certificate the policy does not admit on this app.
    Policy(Denial),
}

impl Refused {
    /// The error a handshake fails with (rustls maps it to the alert:
    /// `certificate_expired`, `certificate_revoked`, `access_denied`...).
    pub fn tls_error(&self) -> TlsError {
        match self {
            Refused::Certificate(e) => e.clone(),
            Refused::Policy(_) => TlsError::InvalidCertificate(CertificateError::ApplicationVerificationFailure),
        }
    }

    /// What an open connection refused by a reload is closed as.
    pub fn close_reason(&self) -> CloseReason {
        use CertificateError as CE;
        match self {
            Refused::Certificate(TlsError::InvalidCertificate(CE::Revoked)) => CloseReason::Revoked,
            Refused::Certificate(TlsError::InvalidCertificate(CE::Expired | CE::ExpiredContext { .. })) => {
                CloseReason::Expired
            }
            _ => CloseReason::Deauthorized,
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Certificate(e) => write!(
                f,
                "certificate refused: {}",
                crate::core::tls::alerts::describe_rustls_error(e)
            ),
            Refused::Policy(d) => d.fmt(f),
        }
    }
}

/// Why tlb itself closed an established connection (the `reason` label of
/// `tlb_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A reload's CRL revokes the certificate.
    Revoked,
    /// A reload no longer admits the identity on the app (removed from
    /// `[[client]]` or from the app, pin changed, CA no longer trusted).
    Deauthorized,
    /// The client certificate's validity period ended.
    Expired,
    /// `[timeouts] max_lifetime` passed.
    MaxLifetime,
    /// A reload removed its app, and `[timeouts] drain` passed.
    AppRemoved,
}

impl CloseReason {
    pub const ALL: [CloseReason; 5] = [
        CloseReason::Revoked,
        CloseReason::Deauthorized,
        CloseReason::Expired,
        CloseReason::MaxLifetime,
        CloseReason::AppRemoved,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Revoked => "revoked",
            CloseReason::Deauthorized => "deauthorized",
            CloseReason::Expired => "expired",
            CloseReason::MaxLifetime => "max_lifetime",
            CloseReason::AppRemoved => "app_removed",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The WebPKI verifiers (chain, validity, EKU, CRL) of a generation,
/// shared by its apps: `[tls] ca`'s and one per `[[trust_domain]]`.
#[derive(Debug)]
pub struct Verifiers {
    pub base: Arc<dyn ClientCertVerifier>,
    /// In `[[trust_domain]]` order (the policy's [`Domain`] indexes it).
    pub domains: Vec<Arc<dyn ClientCertVerifier>>,
    /// Every trusted CA's subject, for the CertificateRequest.
    pub hints: Vec<DistinguishedName>,
}

impl Verifiers {
    fn get(&self, domain: Domain) -> &Arc<dyn ClientCertVerifier> {
        domain.and_then(|d| self.domains.get(d)).unwrap_or(&self.base)
    }
}

/// One app's admission decision in one configuration generation.
#[derive(Debug)]
pub struct Gate {
    verifiers: Arc<Verifiers>,
    pub policy: AppPolicy,
    clock: Arc<dyn Clock>,
}

impl Gate {
    pub fn new(verifiers: Arc<Verifiers>, policy: AppPolicy, clock: Arc<dyn Clock>) -> Gate {
        Gate {
            verifiers,
            policy,
            clock,
        }
    }

    /// The gate clock's current time, as rustls wants it.
    pub fn now(&self) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(unix_secs(self.clock.now())))
    }

    /// Would a full handshake with this chain be admitted at `now`? What
    /// it is admitted as when it would.
    pub fn decide(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Admitted, Refused> {
        // One parse for the policy; a certificate that does not parse is
        // left to the verifier, which names its error.
        let judged = identity::parsed(end_entity, |c| self.policy.judge(c)).unwrap_or_else(|| Judged {
            verdict: Err(self.policy.no_identity()),
            domain: None,
        });
        if let Err(e) = self
            .verifiers
            .get(judged.domain)
            .verify_client_cert(end_entity, intermediates, now)
        {
            return Err(self.certificate_refused(e, &judged, end_entity, intermediates, now));
        }
        judged.verdict.map_err(Refused::Policy)
    }

    /// A chain the required verifier refused: a certificate error, or
    /// (when another trusted CA issued it) a wrong trust domain.
    fn certificate_refused(
        &self,
        e: TlsError,
        judged: &Judged,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Refused {
        let unknown_issuer = matches!(e, TlsError::InvalidCertificate(CertificateError::UnknownIssuer));
        if !unknown_issuer || self.verifiers.domains.is_empty() {
            return Refused::Certificate(e);
        }
        let v = &self.verifiers;
        let others = std::iter::once(&v.base)
            .chain(v.domains.iter())
            .filter(|o| !Arc::ptr_eq(o, v.get(judged.domain)));
        let elsewhere = others
            .into_iter()
            .any(|o| o.verify_client_cert(end_entity, intermediates, now).is_ok());
        if !elsewhere {
            return Refused::Certificate(e);
        }
        let who = match &judged.verdict {
            Ok(a) => Some(a.identity.clone()),
            Err(d) => d.identity.clone(),
        };
        Refused::Policy(self.policy.wrong_trust_domain(who, judged.domain))
    }

    /// Does any CA of this generation (`[tls] ca`, a trust domain's) accept
    /// `chain` now (chain, validity, CRL; no app's policy)? For connections
    /// of an app a reload removed.
    pub fn trusts_chain(&self, chain: &[CertificateDer<'_>]) -> Result<(), Refused> {
        let (ee, rest) = chain
            .split_first()
            .ok_or(Refused::Certificate(TlsError::NoCertificatesPresented))?;
        let (v, now) = (&self.verifiers, self.now());
        let mut why = TlsError::InvalidCertificate(CertificateError::UnknownIssuer);
        for verifier in std::iter::once(&v.base).chain(v.domains.iter()) {
            match verifier.verify_client_cert(ee, rest, now) {
                Ok(_) => return Ok(()),
                // The CA that issued it says why; the others, "unknown issuer".
                Err(TlsError::InvalidCertificate(CertificateError::UnknownIssuer)) => {}
                Err(e) => why = e,
            }
        }
        Err(Refused::Certificate(why))
    }

    /// [`Gate::decide`] on a whole chain (end entity first) at the gate's now.
    pub fn decide_chain(&self, chain: &[CertificateDer<'_>]) -> Result<Admitted, Refused> {
        match chain.split_first() {
            Some((ee, rest)) => self.decide(ee, rest, self.now()),
            None => Err(Refused::Certificate(TlsError::NoCertificatesPresented)),
        }
    }
}

/// The client-certificate verifier of an app's server config: the gate.
#[derive(Debug)]
pub struct AuthorizingVerifier(pub Arc<Gate>);

impl ClientCertVerifier for AuthorizingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.0.verifiers.hints
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        match self.0.decide(end_entity, intermediates, now) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(refused) => {
                let err = refused.tls_error();
                record_refusal(refused_cert(end_entity, refused, &self.0.policy.app));
                Err(err)
            }
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verifiers.base.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verifiers.base.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.verifiers.base.supported_verify_schemes()
    }
}

/// For the log line of a refused handshake: the denial, and who the
/// certificate names (one more parse, on the refusal path only).
fn refused_cert(end_entity: &CertificateDer<'_>, refused: Refused, app: &str) -> RefusedCert {
    let (cn, presented, serial) = identity::parsed(end_entity, |c| {
        (
            identity::cn_of(c),
            identity::presented_of(c),
            Some(identity::serial_of(c)),
        )
    })
    .unwrap_or_default();
    let denial = match refused {
        Refused::Policy(d) => Some(d),
        Refused::Certificate(_) => None,
    };
    RefusedCert {
        identity: denial.as_ref().and_then(|d| d.identity.clone()).or(cn),
        denial,
        presented,
        serial,
        app: app.to_string(),
    }
}

/// Session tickets that are only accepted while the gate admits their chain.
///
/// A ticket is `inner.encrypt(issued_at (8 bytes, gate clock) || session)`.
/// Decrypting one that is older than `lifetime`, that cannot be read, or
/// whose client chain [`Gate::decide`] refuses now, yields nothing: rustls
/// then runs a full handshake, in which the verifier gives the alert.
#[derive(Debug)]
pub struct GatedTickets {
    inner: Arc<dyn ProducesTickets>,
    gate: Arc<Gate>,
    lifetime: Duration,
    /// Tickets presented but refused (counted in `tlb_resumptions_refused_total`).
    refused: Arc<AtomicU64>,
}

impl GatedTickets {
    pub fn new(
        inner: Arc<dyn ProducesTickets>,
        gate: Arc<Gate>,
        lifetime: Duration,
        refused: Arc<AtomicU64>,
    ) -> GatedTickets {
        GatedTickets {
            inner,
            gate,
            lifetime,
            refused,
        }
    }

    fn admit(&self, plain: &[u8]) -> bool {
        let Some((issued, session)) = plain.split_first_chunk::<8>() else {
            return false;
        };
        let issued = u64::from_be_bytes(*issued);
        let now = unix_secs(self.gate.clock.now());
        if now.saturating_sub(issued) > self.lifetime.as_secs() {
            return false;
        }
        match session_chain(session) {
            Some(chain) => self.gate.decide_chain(&chain).is_ok(),
            None => false,
        }
    }
}

impl ProducesTickets for GatedTickets {
    fn enabled(&self) -> bool {
        true
    }
    fn lifetime(&self) -> u32 {
        u32::try_from(self.lifetime.as_secs()).unwrap_or(u32::MAX)
    }
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut framed = Vec::with_capacity(8 + plain.len());
        framed.extend_from_slice(&unix_secs(self.gate.clock.now()).to_be_bytes());
        framed.extend_from_slice(plain);
        self.inner.encrypt(&framed)
    }
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let mut plain = self.inner.decrypt(cipher)?;
        if !self.admit(&plain) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        plain.drain(..8);
        Some(plain)
    }
}

/// The client certificate chain in a serialized rustls server session
/// (rustls 0.23 `ServerSessionValue`: SNI, version, suite, master secret,
/// EMS flag, then the optional chain). `None` when it cannot be read or
/// holds no chain: such a session is never resumed.
fn session_chain(session: &[u8]) -> Option<Vec<CertificateDer<'static>>> {
    struct R<'a>(&'a [u8]);
    impl<'a> R<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if self.0.len() < n {
                return None;
            }
            let (head, tail) = self.0.split_at(n);
            self.0 = tail;
            Some(head)
        }
        fn u8(&mut self) -> Option<u8> {
            self.take(1).map(|b| b[0])
        }
        fn u24(&mut self) -> Option<usize> {
            self.take(3)
                .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
        }
    }
    let mut r = R(session);
    if r.u8()? == 1 {
        let n = usize::from(r.u8()?);
        r.take(n)?; // SNI
    }
    r.take(4)?; // version, cipher suite
    let n = usize::from(r.u8()?);
    r.take(n)?; // master secret
    r.take(1)?; // extended master secret flag
    if r.u8()? != 1 {
        return None; // no client certificate: never admitted
    }
    let len = r.u24()?;
    let mut list = R(r.take(len)?);
    let mut chain = Vec::new();
    while !list.0.is_empty() {
        let n = list.u24()?;
        chain.push(CertificateDer::from(list.take(n)?.to_vec()));
    }
    if chain.is_empty() { None } else { Some(chain) }
}

/// When an admitted connection must be closed at the latest: the client
/// certificate's notAfter (as the gate clock counts it), or `started +
/// max_lifetime`, whichever comes first. `None`: no deadline.
pub fn deadline(
    not_after: Option<SystemTime>,
    max_lifetime: Option<Duration>,
    started: Instant,
    clock: &dyn Clock,
) -> Option<(Instant, CloseReason)> {
    let now = Instant::now();
    let expiry = not_after.and_then(|t| {
        let left = t.duration_since(clock.now()).unwrap_or(Duration::ZERO);
        now.checked_add(left).map(|at| (at, CloseReason::Expired))
    });
    let lifetime = max_lifetime
        .and_then(|l| started.checked_add(l))
        .map(|at| (at, CloseReason::MaxLifetime));
    match (expiry, lifetime) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::session_chain;
    use crate::core::tls::policy::{Denial, DenialReason};

    #[test]
    fn a_denial_cannot_forge_log_lines() {
        let d = Denial {
            identity: Some("x\nINFO access identity=admin reason=done".into()),
            app: "echo".into(),
            reason: DenialReason::UnknownClient,
            detail: String::new(),
        };
        let line = d.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("x\\nINFO"), "{line}");
    }

    #[test]
    fn session_chain_reads_the_layout_and_refuses_garbage() {
        let mut s = vec![1, 3, b'a', b'.', b'b', 3, 4, 19, 1, 2, 0xaa, 0xbb, 1, 1];
        let cert = [0x30u8, 0x03, 1, 2, 3];
        s.extend_from_slice(&[0, 0, 8, 0, 0, 5]);
        s.extend_from_slice(&cert);
        s.extend_from_slice(&[0, 0, 0]); // trailing fields are ignored
        let chain = session_chain(&s).expect("a chain");
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0].as_ref(), &cert);
        // No client certificate, truncated, or empty input: never a chain.
        assert!(session_chain(&[0, 3, 4, 19, 1, 0, 0, 0]).is_none());
        assert!(session_chain(&s[..s.len() - 6]).is_none());
        assert!(session_chain(&[]).is_none());
    }
}
