//! Server-side TLS of one configuration generation: one rustls config per
//! app, whose client-certificate verifier and session tickets are the
//! app's [`Gate`], and the config that refuses an unknown SNI.
//!
//! Promises: resumption only through the gate's tickets (no stateful
//! session cache), at most `session_lifetime` after the full handshake,
//! never across apps; ticket keys per app, kept across reloads.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DistinguishedName, ServerConfig};

use crate::core::config::Config;
use crate::core::rt::clock::{Clock, RustlsTime};
use crate::core::tls::crl::check_crls;
use crate::core::tls::gate::{AuthorizingVerifier, Gate, GatedTickets, Verifiers};
use crate::core::tls::load::{certified_key_in, crls_in, roots_in};
use crate::core::tls::material::Material;
use crate::core::tls::policy::AppPolicy;
use crate::core::tls::sigmemo;
use crate::core::tls::suites::{server_provider, versions};

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
    /// Loads `[tls]` files (from `files`) and builds one server config per
    /// app, all reading time from `clock`. `tickets_refused` counts tickets
    /// the gate refused (they fall back to a full handshake).
    pub fn load(
        config: &Config,
        files: &Material,
        clock: &Arc<dyn Clock>,
        ticket_keys: &TicketKeys,
        tickets_refused: &Arc<AtomicU64>,
    ) -> Result<ServerTls> {
        let provider = server_provider();
        let time: Arc<dyn rustls::time_provider::TimeProvider> = Arc::new(RustlsTime(clock.clone()));
        let tls = &config.tls;
        let key = certified_key_in(files, &tls.cert, &tls.key, &provider, "[tls]")?;
        let cert: Arc<dyn ResolvesServerCert> = Arc::new(rustls::sign::SingleCertAndKey::from(key));
        let (verifiers, crl_next_update) = verifiers(config, files, &provider)?;
        let base_verifier = verifiers.base.clone();
        let domains: Vec<String> = config.trust_domains.iter().map(|d| d.name.clone()).collect();
        let mut apps = HashMap::new();
        for app in &config.apps {
            let policy = AppPolicy::new(&app.name, app.mode, &config.clients, &domains);
            let gate = Arc::new(Gate::new(verifiers.clone(), policy, clock.clone()));
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

/// The WebPKI client verifiers of `[tls]` and of each `[[trust_domain]]`,
/// and the earliest CRL nextUpdate among them.
fn verifiers(
    config: &Config,
    files: &Material,
    provider: &Arc<CryptoProvider>,
) -> Result<(Arc<Verifiers>, Option<SystemTime>)> {
    let tls = &config.tls;
    let mut hints = Vec::new();
    let base = (tls.ca.as_path(), tls.crl.as_deref());
    let (base, mut next_update) = client_verifier(files, base, "[tls]", provider, &mut hints)?;
    let mut domains = Vec::with_capacity(config.trust_domains.len());
    for td in &config.trust_domains {
        let what = format!("[[trust_domain]] {}", td.name);
        let (v, next) = client_verifier(files, (td.ca.as_path(), td.crl.as_deref()), &what, provider, &mut hints)?;
        next_update = match (next_update, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        domains.push(v);
    }
    Ok((Arc::new(Verifiers { base, domains, hints }), next_update))
}

/// The WebPKI client verifier of CA file `ca` (+ CRL file `crl`) and the
/// CRL's nextUpdate; the CAs' subjects are added to `hints`.
///
/// With a CRL, revocation is checked for the whole chain (end entity
/// and intermediates), and a certificate whose status no CRL covers is
/// refused (`unknown_ca`): a chain through an intermediate CA needs that
/// CA's CRL in the same file. An expired CRL (past nextUpdate) is still
/// used, with a warning (see `Server`): refusing every client because a CRL
/// was not re-signed in time would turn hygiene into an outage.
fn client_verifier(
    files: &Material,
    (ca, crl): (&Path, Option<&Path>),
    what: &str,
    provider: &Arc<CryptoProvider>,
    hints: &mut Vec<DistinguishedName>,
) -> Result<(Arc<dyn ClientCertVerifier>, Option<SystemTime>)> {
    let roots = roots_in(files, ca, "CA file").with_context(|| format!("loading {what} ca"))?;
    hints.extend(roots.subjects());
    let roots = Arc::new(roots);
    let mut memo = CryptoProvider::clone(provider);
    memo.signature_verification_algorithms = sigmemo::algorithms(provider.signature_verification_algorithms);
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, Arc::new(memo));
    let mut next_update = None;
    if let Some(crl) = crl {
        let crls = crls_in(files, crl).with_context(|| format!("loading {what} crl"))?;
        next_update = check_crls(files, &crls, ca, crl)?;
        builder = builder.with_crls(crls);
    }
    let verifier = builder
        .build()
        .map_err(|e| anyhow!("building the client-certificate verifier from {}: {e}", ca.display()))?;
    Ok((verifier, next_update))
}
