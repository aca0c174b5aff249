//! Reading PEM material: certificates, keys, CRLs, trust stores.
//!
//! Promises: every failure names the file and what was expected in it.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// All certificates in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    load_certs_as(path, "certificate file")
}

/// [`load_certs`], the file named by its role in messages ("client
/// certificate nope.crt: not found").
pub fn load_certs_as(path: &Path, role: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_failure(path, role, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_failure(path, role, e))?;
    if certs.is_empty() {
        bail!(
            "{role} {} holds no certificate (expected PEM \"BEGIN CERTIFICATE\")",
            path.display()
        );
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    load_key_as(path, "private key")
}

/// [`load_key`], the file named by its role in messages.
pub fn load_key_as(path: &Path, role: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => anyhow!(
            "{role} {} holds no private key (expected PEM \"BEGIN PRIVATE KEY\")",
            path.display()
        ),
        e => pem_failure(path, role, e),
    })
}

/// Why a PEM file could not be read, naming it: not found, unreadable, or
/// not PEM.
fn pem_failure(path: &Path, role: &str, e: pem::Error) -> anyhow::Error {
    let path = path.display();
    match e {
        pem::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => anyhow!("{role} {path}: not found"),
        pem::Error::Io(io) => anyhow!("{role} {path}: cannot be read ({io})"),
        pem::Error::NoItemsFound => anyhow!("{role} {path} holds nothing usable in PEM"),
        e => anyhow!("{role} {path} is not valid PEM ({e})"),
    }
}

/// CRLs in a PEM file.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let crls: Vec<_> = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| pem_failure(path, "CRL", e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_failure(path, "CRL", e))?;
    if crls.is_empty() {
        bail!("{} holds no CRL (expected PEM \"BEGIN X509 CRL\")", path.display());
    }
    Ok(crls)
}

/// A trust store from a PEM file of CA certificates.
pub fn load_roots(path: &Path) -> Result<RootCertStore> {
    load_roots_as(path, "CA file")
}

/// [`load_roots`], the file named by its role in messages.
pub fn load_roots_as(path: &Path, role: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs_as(path, role)? {
        roots
            .add(cert)
            .map_err(|e| anyhow!("{role} {} is not a usable CA certificate: {e}", path.display()))?;
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
