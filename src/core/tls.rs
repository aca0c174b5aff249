//! TLS set-up: loading PEM material, the per-app server configs that decide
//! authorization inside the handshake, and client configs for `tlb client`
//! and `tlb bench`. (TLS towards upstreams is not built yet; a config asking
//! for it is refused when the server is built.)
//!
//! Promises:
//! - One crypto provider (aws-lc-rs), TLS 1.3 only unless `min_version = "1.2"`
//!   (then TLS 1.2 with AEAD + ECDHE suites only, which is all rustls offers).
//! - A client certificate is required and verified (chain to `tls.ca`,
//!   validity, clientAuth usage, CRL when configured). Then the identity (CN)
//!   must be a `[[client]]` allowed on the app chosen by listener + SNI, and
//!   match its `spki_sha256` pin if any; otherwise the handshake fails with an
//!   `access_denied` alert, before any upstream is touched.
//! - Refusal reasons are recorded for the connection's log line via
//!   [`take_denial`], without being revealed to the client.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, RootCertStore, ServerConfig,
    SignatureScheme,
};

use super::config::{Client, Config, TlsSettings, TlsVersion};
use super::identity;

/// The process's one crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server's provider: the same suites, in the server's order of
/// preference (applied with `ignore_client_order`): AES-128-GCM-SHA256
/// first. P-256 and X25519 give 128-bit security, so AES-256 adds cost
/// (14 AES rounds instead of 10 per block, SHA-384 instead of SHA-256 in
/// the key schedule, no SHA-NI) without raising the connection's strength.
fn server_provider() -> Arc<CryptoProvider> {
    use rustls::CipherSuite as CS;
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        CS::TLS13_AES_128_GCM_SHA256 => 0,
        CS::TLS13_AES_256_GCM_SHA384 => 1,
        CS::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        _ => 3,
    };
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites.sort_by_key(rank);
    Arc::new(p)
}

fn versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static V13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        TlsVersion::V1_3 => &V13,
        TlsVersion::V1_2 => rustls::ALL_VERSIONS, // TLS 1.3, then 1.2
    }
}

/// All certificates in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow!("reading certificates from {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("{} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{} holds no certificate (expected PEM \"BEGIN CERTIFICATE\")",
            path.display()
        );
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| anyhow!("reading private key {}: {e}", path.display()))
}

/// CRLs in a PEM file.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let crls: Vec<_> = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| anyhow!("reading CRL {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("{} is not a valid PEM CRL: {e}", path.display()))?;
    if crls.is_empty() {
        bail!("{} holds no CRL (expected PEM \"BEGIN X509 CRL\")", path.display());
    }
    Ok(crls)
}

/// A trust store from a PEM file of CA certificates.
pub fn load_roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| anyhow!("{} is not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Certificate chain + key as rustls signs with, checked to match.
pub fn load_certified_key(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    let ck = CertifiedKey::from_der(chain, key_der, provider).map_err(|e| {
        anyhow!(
            "certificate {} and key {} do not form a usable pair ({e}); check [tls] cert/key",
            cert.display(),
            key.display()
        )
    })?;
    Ok(Arc::new(ck))
}

/// Why a client was refused in the handshake (for logs and metrics; never
/// sent to the client, which only sees an alert).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Certificate CN, if it had one.
    pub identity: Option<String>,
    pub app: String,
    pub reason: DenialReason,
}

/// The authorization verdicts that are not a certificate error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialReason {
    /// Valid certificate without a CN.
    NoIdentity,
    /// The identity has no `[[client]]` entry.
    UnknownClient,
    /// The client exists but the app is not in its `apps`.
    AppNotAllowed,
    /// The public key does not match the client's `spki_sha256` pin.
    PinMismatch,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = self.identity.as_deref().unwrap_or("-");
        match self.reason {
            DenialReason::NoIdentity => write!(f, "certificate has no subject CN (app {})", self.app),
            DenialReason::UnknownClient => {
                write!(f, "identity {who} is not a configured [[client]] (app {})", self.app)
            }
            DenialReason::AppNotAllowed => write!(f, "identity {who} is not allowed on app {}", self.app),
            DenialReason::PinMismatch => write!(f, "identity {who}: public key does not match spki_sha256 pin"),
        }
    }
}

thread_local! {
    static LAST_DENIAL: RefCell<Option<Denial>> = const { RefCell::new(None) };
}

/// Takes the denial recorded by an authorizing verifier on this thread.
///
/// The verifier runs inside the `poll` of the handshake future that then
/// returns the error, on the same thread, with no other task in between; so
/// a caller that polls the handshake and, on error, calls this in the same
/// `poll` gets that connection's denial. Call `clear_denial` before polling.
pub fn take_denial() -> Option<Denial> {
    LAST_DENIAL.with(|d| d.borrow_mut().take())
}

/// Forgets any recorded denial on this thread.
pub fn clear_denial() {
    LAST_DENIAL.with(|d| *d.borrow_mut() = None);
}

fn record_denial(d: Denial) {
    LAST_DENIAL.with(|slot| *slot.borrow_mut() = Some(d));
}

/// Who may use one app: identity -> optional SPKI pin.
#[derive(Debug, Default, Clone)]
pub struct AppPolicy {
    pub app: String,
    allowed: HashMap<String, Option<[u8; 32]>>,
    known: std::collections::HashSet<String>,
}

impl AppPolicy {
    /// The policy of app `app` under `clients`.
    pub fn new(app: &str, clients: &[Client]) -> AppPolicy {
        let mut allowed = HashMap::new();
        let mut known = std::collections::HashSet::new();
        for c in clients {
            known.insert(c.name.clone());
            if c.apps.iter().any(|a| a == app) {
                allowed.insert(c.name.clone(), c.spki_sha256);
            }
        }
        AppPolicy {
            app: app.to_string(),
            allowed,
            known,
        }
    }

    /// Checks an already chain-verified end-entity certificate.
    pub fn authorize(&self, end_entity: &[u8]) -> Result<String, Denial> {
        let deny = |identity: Option<String>, reason| Denial {
            identity,
            app: self.app.clone(),
            reason,
        };
        // One parse for the CN and, when pinned, the SPKI digest.
        let verdict = identity::parsed(end_entity, |cert| {
            let cn = identity::cn_of(cert)?;
            Some(match self.allowed.get(&cn) {
                Some(None) => Ok(cn),
                Some(Some(pin)) if identity::spki_of(cert).as_ref() == Some(pin) => Ok(cn),
                Some(Some(_)) => Err(deny(Some(cn), DenialReason::PinMismatch)),
                None if self.known.contains(&cn) => Err(deny(Some(cn), DenialReason::AppNotAllowed)),
                None => Err(deny(Some(cn), DenialReason::UnknownClient)),
            })
        });
        verdict.flatten().unwrap_or_else(|| Err(self.no_identity()))
    }

    /// The denial for a certificate without a usable subject CN.
    pub fn no_identity(&self) -> Denial {
        Denial {
            identity: None,
            app: self.app.clone(),
            reason: DenialReason::NoIdentity,
        }
    }
}

/// WebPKI verification (chain, validity, EKU, CRL), then the app's policy.
#[derive(Debug)]
struct AuthorizingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    policy: Arc<AppPolicy>,
}

impl ClientCertVerifier for AuthorizingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        match self.policy.authorize(end_entity) {
            Ok(_) => Ok(verified),
            Err(denial) => {
                record_denial(denial);
                Err(TlsError::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A resolver that never has a certificate: used to refuse a ClientHello
/// whose SNI matches no app on the listener (rustls sends `access_denied`).
#[derive(Debug)]
struct NoCert;

impl ResolvesServerCert for NoCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

/// Server-side TLS for one configuration generation.
pub struct ServerTls {
    /// Per app name: its server config (with its authorizing verifier) and policy.
    pub apps: HashMap<String, (Arc<ServerConfig>, Arc<AppPolicy>)>,
    /// Refuses every handshake (unknown SNI on a listener without default app).
    pub reject: Arc<ServerConfig>,
}

/// Session cache entries per app (stateful resumption: TLS 1.2 session IDs;
/// TLS 1.3 uses stateless tickets).
const SESSION_CACHE: usize = 4096;

impl ServerTls {
    /// Loads `[tls]` files and builds one server config per app.
    pub fn load(config: &Config) -> Result<ServerTls> {
        let provider = server_provider();
        let tls = &config.tls;
        let key = load_certified_key(&tls.cert, &tls.key, &provider)?;
        let cert: Arc<dyn ResolvesServerCert> = Arc::new(rustls::sign::SingleCertAndKey::from(key));
        let base_verifier = client_verifier(tls, &provider)?;
        let mut apps = HashMap::new();
        for app in &config.apps {
            let policy = Arc::new(AppPolicy::new(&app.name, &config.clients));
            let verifier = Arc::new(AuthorizingVerifier {
                inner: base_verifier.clone(),
                policy: policy.clone(),
            });
            let mut sc = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions(tls.min_version))
                .context("configuring TLS versions")?
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(cert.clone());
            sc.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
            sc.ignore_client_order = true;
            // TLS 1.3 resumption with stateless tickets (encrypted under a
            // key of this config generation, rotated every 6 h): no server
            // memory per issued ticket (-1.5 KiB per connection measured),
            // and a reload still invalidates every earlier ticket. One
            // ticket per connection: a resumed connection gets a fresh one.
            sc.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().context("creating the session-ticket key")?;
            sc.send_tls13_tickets = 1;
            apps.insert(app.name.clone(), (Arc::new(sc), policy));
        }
        let mut reject = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions(tls.min_version))
            .context("configuring TLS versions")?
            .with_client_cert_verifier(base_verifier)
            .with_cert_resolver(Arc::new(NoCert));
        reject.send_tls13_tickets = 0;
        Ok(ServerTls {
            apps,
            reject: Arc::new(reject),
        })
    }
}

fn client_verifier(tls: &TlsSettings, provider: &Arc<CryptoProvider>) -> Result<Arc<dyn ClientCertVerifier>> {
    let roots = Arc::new(load_roots(&tls.ca).context("loading [tls] ca")?);
    let mut memo = CryptoProvider::clone(provider);
    memo.signature_verification_algorithms = sigmemo::algorithms(provider.signature_verification_algorithms);
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, Arc::new(memo));
    if let Some(crl) = &tls.crl {
        let crls = load_crls(crl).context("loading [tls] crl")?;
        check_crl_issuer(&crls, &tls.ca, crl)?;
        // Our CRLs cover end-entity certificates; intermediates are not
        // revocation-checked (webpki would refuse every chain whose CA has
        // no CRL of its own).
        builder = builder.with_crls(crls).only_check_end_entity_revocation();
    }
    builder.build().map_err(|e| {
        anyhow!(
            "building the client-certificate verifier from {}: {e}",
            tls.ca.display()
        )
    })
}

/// Memoized signature checks on DER-signed data (certificates, CRLs).
///
/// webpki verifies the CRL's signature again on every handshake (an ECDSA
/// P-256 verification, ~20 % of a full mTLS handshake's instructions; see
/// rustls/webpki#81), and a returning client's certificate signature is
/// the same bytes every time. A verification that succeeded for exactly the
/// same (algorithm, public key, signed bytes, signature) always succeeds
/// again, so its result is kept, keyed by a SHA-256 of those four.
///
/// Only successes are kept; only DER-encoded signed data (a first byte of
/// 0x30: certificates and CRLs) is memoized, never a handshake's
/// CertificateVerify (unique per handshake, and proof of key possession);
/// chain building, validity dates, usages and revocation lookups still run
/// on every handshake. The set is bounded: when full it is emptied.
mod sigmemo {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};

    use rustls::crypto::WebPkiSupportedAlgorithms;
    use rustls::pki_types::{AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm};

    /// Verified signatures kept (32 bytes each).
    const CAPACITY: usize = 4096;

    static VERIFIED: Mutex<Option<HashSet<[u8; 32]>>> = Mutex::new(None);
    static TABLE: OnceLock<WebPkiSupportedAlgorithms> = OnceLock::new();

    #[derive(Debug)]
    struct Memo(&'static dyn SignatureVerificationAlgorithm);

    fn key(alg: &Memo, public_key: &[u8], message: &[u8], signature: &[u8]) -> [u8; 32] {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for part in [
            alg.0.public_key_alg_id().as_ref(),
            alg.0.signature_alg_id().as_ref(),
            public_key,
            message,
            signature,
        ] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    impl SignatureVerificationAlgorithm for Memo {
        fn verify_signature(
            &self,
            public_key: &[u8],
            message: &[u8],
            signature: &[u8],
        ) -> Result<(), InvalidSignature> {
            if message.first() != Some(&0x30) {
                return self.0.verify_signature(public_key, message, signature);
            }
            let k = key(self, public_key, message, signature);
            let known = |set: &Option<HashSet<[u8; 32]>>| set.as_ref().is_some_and(|s| s.contains(&k));
            if known(&VERIFIED.lock().unwrap_or_else(|p| p.into_inner())) {
                return Ok(());
            }
            self.0.verify_signature(public_key, message, signature)?;
            let mut guard = VERIFIED.lock().unwrap_or_else(|p| p.into_inner());
            let set = guard.get_or_insert_with(HashSet::new);
            if set.len() >= CAPACITY {
                set.clear();
            }
            set.insert(k);
            Ok(())
        }
        fn public_key_alg_id(&self) -> AlgorithmIdentifier {
            self.0.public_key_alg_id()
        }
        fn signature_alg_id(&self) -> AlgorithmIdentifier {
            self.0.signature_alg_id()
        }
        fn fips(&self) -> bool {
            self.0.fips()
        }
    }

    /// `base` with every algorithm memoized (built once per process).
    pub(super) fn algorithms(base: WebPkiSupportedAlgorithms) -> WebPkiSupportedAlgorithms {
        *TABLE.get_or_init(|| {
            let wrap = |a: &'static dyn SignatureVerificationAlgorithm| -> &'static dyn SignatureVerificationAlgorithm {
                Box::leak(Box::new(Memo(a)))
            };
            let all: Vec<_> = base.all.iter().map(|a| wrap(*a)).collect();
            let mapping: Vec<_> = base
                .mapping
                .iter()
                .map(|(scheme, algs)| {
                    let algs: Vec<_> = algs.iter().map(|a| wrap(*a)).collect();
                    (*scheme, &*Box::leak(algs.into_boxed_slice()))
                })
                .collect();
            WebPkiSupportedAlgorithms {
                all: Box::leak(all.into_boxed_slice()),
                mapping: Box::leak(mapping.into_boxed_slice()),
            }
        })
    }
}

/// A CRL signed by another CA would make webpki refuse every client (unknown
/// revocation status): catch that at load time instead.
fn check_crl_issuer(crls: &[CertificateRevocationListDer<'_>], ca: &Path, crl_path: &Path) -> Result<()> {
    use x509_parser::prelude::FromDer;
    let cas = load_certs(ca)?;
    let ca_subjects: Vec<Vec<u8>> = cas
        .iter()
        .filter_map(|c| x509_parser::certificate::X509Certificate::from_der(c).ok())
        .map(|(_, c)| c.subject().as_raw().to_vec())
        .collect();
    for crl in crls {
        let (_, parsed) = x509_parser::revocation_list::CertificateRevocationList::from_der(crl)
            .map_err(|e| anyhow!("{} is not a valid CRL: {e}", crl_path.display()))?;
        if !ca_subjects.iter().any(|s| s.as_slice() == parsed.issuer().as_raw()) {
            bail!(
                "CRL {} was issued by {}, not by the CA in {}; use the CRL of that CA (pki/crl.pem) or remove [tls] crl",
                crl_path.display(),
                parsed.issuer(),
                ca.display()
            );
        }
    }
    Ok(())
}

/// Options for an outgoing mTLS connection (`tlb client`, `tlb bench`).
#[derive(Debug, Clone)]
pub struct ClientTlsFiles<'a> {
    pub ca: &'a Path,
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
    /// Offer TLS 1.2 as well as 1.3.
    pub allow_tls12: bool,
    /// Resume sessions (off for benchmarks of full handshakes).
    pub resumption: bool,
}

/// A rustls client config from CA, optional client cert/key.
pub fn client_config(files: &ClientTlsFiles<'_>) -> Result<Arc<rustls::ClientConfig>> {
    let provider = provider();
    let roots = load_roots(files.ca)?;
    let vers: &[&rustls::SupportedProtocolVersion] = if files.allow_tls12 {
        versions(TlsVersion::V1_2)
    } else {
        versions(TlsVersion::V1_3)
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(vers)
        .context("configuring TLS versions")?
        .with_root_certificates(roots);
    let mut cfg = match (files.cert, files.key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs(cert)?;
            let key_der = load_key(key)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                anyhow!(
                    "client certificate {} and key {} do not form a usable pair: {e}",
                    cert.display(),
                    key.display()
                )
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("pass both a client certificate and its key, or neither"),
    };
    if !files.resumption {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(cfg))
}

/// The short name of a TLS alert or error for messages, e.g. `access_denied`.
pub fn describe_tls_error(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<TlsError>()) {
        Some(TlsError::AlertReceived(a)) => format!("alert {}", alert_name(*a)),
        Some(other) => other.to_string(),
        None => e.to_string(),
    }
}

/// snake_case name of an alert as in RFC 8446 (`access_denied`, `unknown_ca`,
/// `unknown_psk_identity`...): a word boundary is a capital after a lower-case
/// letter, or the last capital of an acronym followed by a lower-case letter.
pub fn alert_name(a: rustls::AlertDescription) -> String {
    let s: Vec<char> = format!("{a:?}").chars().collect();
    let mut out = String::with_capacity(s.len() + 4);
    for (i, &ch) in s.iter().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            let prev_lower = s[i - 1].is_ascii_lowercase();
            let acronym_end = s[i - 1].is_ascii_uppercase() && s.get(i + 1).is_some_and(|c| c.is_ascii_lowercase());
            if prev_lower || acronym_end {
                out.push('_');
            }
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::alert_name;
    use rustls::AlertDescription as AD;

    #[test]
    fn memoized_signatures_admit_only_what_verified() {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
        let base = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
        let memo = super::sigmemo::algorithms(base);
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        let pk = key.public_key().as_ref().to_vec();
        let p256 = rustls::SignatureScheme::ECDSA_NISTP256_SHA256;
        let (_, algs) = memo.mapping.iter().find(|(s, _)| *s == p256).unwrap();
        let alg = algs[0];
        for msg in [&b"\x30 DER-like signed data"[..], &b"not DER: never memoized"[..]] {
            let sig = key.sign(&rng, msg).unwrap().as_ref().to_vec();
            assert!(alg.verify_signature(&pk, msg, &sig).is_ok());
            assert!(
                alg.verify_signature(&pk, msg, &sig).is_ok(),
                "second time, from the memo"
            );
            let mut bad = sig.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(alg.verify_signature(&pk, msg, &bad).is_err());
            let mut other = msg.to_vec();
            other.push(0);
            assert!(alg.verify_signature(&pk, &other, &sig).is_err());
        }
    }

    #[test]
    fn alert_names_follow_the_rfc() {
        assert_eq!(alert_name(AD::UnknownCA), "unknown_ca");
        assert_eq!(alert_name(AD::AccessDenied), "access_denied");
        assert_eq!(alert_name(AD::UnknownPSKIdentity), "unknown_psk_identity");
        assert_eq!(alert_name(AD::CertificateRequired), "certificate_required");
        assert_eq!(alert_name(AD::ProtocolVersion), "protocol_version");
    }
}
