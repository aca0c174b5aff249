//! Reading PEM material: certificates, keys, CRLs, trust stores.
//!
//! Promises: every failure names the file and what was expected in it.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

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
