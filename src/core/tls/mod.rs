//! TLS set-up: loading PEM material, the per-app server configs whose
//! client-certificate verifier and session tickets are the app's
//! [`Gate`](crate::core::tls::gate::Gate), and client configs for `tlb client` and
//! `tlb bench`. (TLS towards upstreams is not built yet; a config asking
//! for it is refused when the server is built.)
//!
//! Promises:
//! - One crypto provider (aws-lc-rs), TLS 1.3 only unless `min_version = "1.2"`
//!   (then TLS 1.2 with AEAD + ECDHE suites only, which is all rustls offers).
//! - A client certificate is required and decided by the gate in the
//!   handshake (chain to `tls.ca`, validity at the gate clock, clientAuth
//!   usage, CRL for the whole chain when configured, then the app's policy);
//!   a refusal is a TLS alert, before any upstream is touched.
//! - Resumption only through the gate's tickets (no stateful session cache),
//!   at most `session_lifetime` after the full handshake, never across apps
//!   or config generations.
//! - `[tls] crl` is checked at load: signed by `tls.ca`, nextUpdate known.

pub mod gate;
pub mod identity;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, bail};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{Error as TlsError, RootCertStore, ServerConfig};

use crate::core::config::{Config, TlsSettings, TlsVersion};
use crate::core::rt::clock::{Clock, RustlsTime};
use crate::core::tls::gate::{AppPolicy, AuthorizingVerifier, Gate, GatedTickets};

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
    /// Per app name: its server config (whose verifier and tickets are the
    /// app's gate) and the gate itself.
    pub apps: HashMap<String, (Arc<ServerConfig>, Arc<Gate>)>,
    /// Refuses every handshake (unknown SNI on a listener without default app).
    pub reject: Arc<ServerConfig>,
    /// The CRL's nextUpdate, when `[tls] crl` is set and has one.
    pub crl_next_update: Option<SystemTime>,
}

/// Session-ticket keys per app, kept for the server's life so that clients
/// resume across reloads (each resumption is decided by the gate of the
/// generation that serves it).
#[derive(Default)]
pub struct TicketKeys(std::sync::Mutex<HashMap<String, Arc<dyn rustls::server::ProducesTickets>>>);

impl TicketKeys {
    /// App `app`'s ticket key, made on first use.
    pub fn for_app(&self, app: &str) -> Result<Arc<dyn rustls::server::ProducesTickets>> {
        let mut keys = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = keys.get(app) {
            return Ok(k.clone());
        }
        let k = rustls::crypto::aws_lc_rs::Ticketer::new().context("creating the session-ticket key")?;
        keys.insert(app.to_string(), k.clone());
        Ok(k)
    }
}

impl ServerTls {
    /// Loads `[tls]` files and builds one server config per app, all
    /// reading time from `clock`. `tickets_refused` counts tickets the gate
    /// refused (they fall back to a full handshake).
    pub fn load(
        config: &Config,
        clock: &Arc<dyn Clock>,
        ticket_keys: &TicketKeys,
        tickets_refused: &Arc<AtomicU64>,
    ) -> Result<ServerTls> {
        let provider = server_provider();
        let time: Arc<dyn rustls::time_provider::TimeProvider> = Arc::new(RustlsTime(clock.clone()));
        let tls = &config.tls;
        let key = load_certified_key(&tls.cert, &tls.key, &provider)?;
        let cert: Arc<dyn ResolvesServerCert> = Arc::new(rustls::sign::SingleCertAndKey::from(key));
        let (base_verifier, crl_next_update) = client_verifier(tls, &provider)?;
        let mut apps = HashMap::new();
        for app in &config.apps {
            let policy = AppPolicy::new(&app.name, &config.clients);
            let gate = Arc::new(Gate::new(base_verifier.clone(), policy, clock.clone()));
            let mut sc = ServerConfig::builder_with_details(provider.clone(), time.clone())
                .with_protocol_versions(versions(tls.min_version))
                .context("configuring TLS versions")?
                .with_client_cert_verifier(Arc::new(AuthorizingVerifier(gate.clone())))
                .with_cert_resolver(cert.clone());
            sc.ignore_client_order = true;
            // No stateful session cache (TLS 1.2 session IDs): every
            // resumption goes through tickets, which the gate checks.
            sc.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            if tls.session_lifetime.is_zero() {
                sc.send_tls13_tickets = 0;
            } else {
                // Stateless tickets (no server memory per ticket) under the
                // app's own key (kept across reloads, rotated every 6 h):
                // another app never resumes its sessions. One ticket per
                // connection; a resumed connection gets a fresh one, which
                // the gate checks again, with the then-current generation,
                // when it is used.
                let inner = ticket_keys.for_app(&app.name)?;
                sc.ticketer = Arc::new(GatedTickets::new(
                    inner,
                    gate.clone(),
                    tls.session_lifetime,
                    tickets_refused.clone(),
                ));
                sc.send_tls13_tickets = 1;
            }
            apps.insert(app.name.clone(), (Arc::new(sc), gate));
        }
        let mut reject = ServerConfig::builder_with_details(provider, time)
            .with_protocol_versions(versions(tls.min_version))
            .context("configuring TLS versions")?
            .with_client_cert_verifier(base_verifier)
            .with_cert_resolver(Arc::new(NoCert));
        reject.send_tls13_tickets = 0;
        Ok(ServerTls {
            apps,
            reject: Arc::new(reject),
            crl_next_update,
        })
    }
}

/// The WebPKI client verifier of `[tls]` and the CRL's nextUpdate.
///
/// With `[tls] crl`, revocation is checked for the whole chain (end entity
/// and intermediates), and a certificate whose status no CRL covers is
/// refused (`unknown_ca`): a chain through an intermediate CA needs that
/// CA's CRL in the same file. An expired CRL (past nextUpdate) is still
/// used, with a warning (see `Server`): refusing every client because a CRL
/// was not re-signed in time would turn hygiene into an outage.
fn client_verifier(
    tls: &TlsSettings,
    provider: &Arc<CryptoProvider>,
) -> Result<(Arc<dyn ClientCertVerifier>, Option<SystemTime>)> {
    let roots = Arc::new(load_roots(&tls.ca).context("loading [tls] ca")?);
    let mut memo = CryptoProvider::clone(provider);
    memo.signature_verification_algorithms = sigmemo::algorithms(provider.signature_verification_algorithms);
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, Arc::new(memo));
    let mut next_update = None;
    if let Some(crl) = &tls.crl {
        let crls = load_crls(crl).context("loading [tls] crl")?;
        next_update = check_crls(&crls, &tls.ca, crl)?;
        builder = builder.with_crls(crls);
    }
    let verifier = builder.build().map_err(|e| {
        anyhow!(
            "building the client-certificate verifier from {}: {e}",
            tls.ca.display()
        )
    })?;
    Ok((verifier, next_update))
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

/// Checks `[tls] crl` at load: at least one CRL is issued by a CA of
/// `tls.ca`, and every CRL that names a CA of `tls.ca` as its issuer carries
/// a valid signature of that CA (a CRL naming another issuer is for an
/// intermediate CA: webpki verifies it against that CA when it is used).
/// Returns the earliest nextUpdate of the CA's CRLs.
fn check_crls(crls: &[CertificateRevocationListDer<'_>], ca: &Path, crl_path: &Path) -> Result<Option<SystemTime>> {
    use x509_parser::prelude::FromDer;
    let cas = load_certs(ca)?;
    let parsed_cas: Vec<_> = cas
        .iter()
        .filter_map(|c| x509_parser::certificate::X509Certificate::from_der(c).ok())
        .map(|(_, c)| c)
        .collect();
    let mut next_update: Option<SystemTime> = None;
    let mut own = 0;
    for crl in crls {
        let (_, parsed) = x509_parser::revocation_list::CertificateRevocationList::from_der(crl)
            .map_err(|e| anyhow!("{} is not a valid CRL: {e}", crl_path.display()))?;
        let Some(issuer) = parsed_cas
            .iter()
            .find(|c| c.subject().as_raw() == parsed.issuer().as_raw())
        else {
            continue;
        };
        parsed.verify_signature(issuer.public_key()).map_err(|e| {
            anyhow!(
                "CRL {} names {} as its issuer but is not validly signed by the CA in {} ({e}); use the CRL that CA signed (pki/crl.pem, `tlb pki crl`)",
                crl_path.display(),
                parsed.issuer(),
                ca.display()
            )
        })?;
        own += 1;
        if let Some(t) = parsed.next_update() {
            let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0));
            next_update = Some(next_update.map_or(t, |n| n.min(t)));
        }
    }
    if own == 0 {
        bail!(
            "CRL {} was not issued by the CA in {}; use the CRL of that CA (pki/crl.pem) or remove [tls] crl",
            crl_path.display(),
            ca.display()
        );
    }
    Ok(next_update)
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
        Some(other) => describe_rustls_error(other),
        None => e.to_string(),
    }
}

/// A rustls error in words (`alert access_denied`, `invalid peer certificate: Expired`).
pub fn describe_rustls_error(e: &TlsError) -> String {
    match e {
        TlsError::AlertReceived(a) => format!("alert {}", alert_name(*a)),
        other => other.to_string(),
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
