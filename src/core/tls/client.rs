//! Client-side TLS for `tlb client` and `tlb bench`: a rustls client
//! config from a CA and an optional client certificate.
//!
//! Promises: the same provider and versions as the server; resumption only
//! when asked for.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};

use crate::core::config::TlsVersion;
use crate::core::tls::load::{load_certs_as, load_key_as, load_roots_as};
use crate::core::tls::suites::{provider, versions};

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
    let roots = load_roots_as(files.ca, "CA file (--ca)")?;
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
            let chain = load_certs_as(cert, "client certificate")?;
            let key_der = load_key_as(key, "client key")?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| pair_error(cert, key, &e))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("pass both a client certificate and its key, or neither"),
    };
    if !files.resumption {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(cfg))
}

/// A client certificate and key that rustls will not use together.
fn pair_error(cert: &Path, key: &Path, e: &rustls::Error) -> anyhow::Error {
    use rustls::{Error as TE, InconsistentKeys as IK};
    match e {
        TE::InconsistentKeys(IK::KeyMismatch) => anyhow!(
            "client key {} does not match client certificate {} (the key of another certificate?); pass the .key written with that .crt",
            key.display(),
            cert.display()
        ),
        e => anyhow!(
            "client certificate {} and key {} do not form a usable pair: {}",
            cert.display(),
            key.display(),
            crate::core::tls::alerts::describe_rustls_error(e)
        ),
    }
}
