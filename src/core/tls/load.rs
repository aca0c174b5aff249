//! Reading PEM material: certificates, keys, CRLs, trust stores, from disk
//! or from the bytes of one build ([`Material`]).
//!
//! Promises: every failure names the file and what was expected in it; a
//! certificate and key are paired only when the key is the certificate's
//! (compared, never assumed).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::core::tls::material::Material;

/// All certificates in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    load_certs_as(path, "certificate file")
}

/// [`load_certs`], the file named by its role in messages ("client
/// certificate nope.crt: not found").
pub fn load_certs_as(path: &Path, role: &str) -> Result<Vec<CertificateDer<'static>>> {
    certs_in(&Material::disk(), path, role)
}

/// [`load_certs_as`] from the bytes of `m`.
pub fn certs_in(m: &Material, path: &Path, role: &str) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = read(m, path, role)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
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
    key_in(&Material::disk(), path, role)
}

/// [`load_key_as`] from the bytes of `m`.
pub fn key_in(m: &Material, path: &Path, role: &str) -> Result<PrivateKeyDer<'static>> {
    let bytes = read(m, path, role)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => anyhow!(
            "{role} {} holds no private key (expected PEM \"BEGIN PRIVATE KEY\")",
            path.display()
        ),
        e => pem_failure(path, role, e),
    })
}

/// The bytes of `path` in `m`, or why they cannot be read, naming the file.
fn read(m: &Material, path: &Path, role: &str) -> Result<Arc<[u8]>> {
    m.read(path).map_err(|e| pem_failure(path, role, pem::Error::Io(e)))
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
    crls_in(&Material::disk(), path)
}

/// [`load_crls`] from the bytes of `m`.
pub fn crls_in(m: &Material, path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let bytes = read(m, path, "CRL")?;
    let crls: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&bytes)
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
    roots_in(&Material::disk(), path, role)
}

/// [`load_roots_as`] from the bytes of `m`.
pub fn roots_in(m: &Material, path: &Path, role: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs_in(m, path, role)? {
        roots
            .add(cert)
            .map_err(|e| anyhow!("{role} {} is not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Certificate chain + key as rustls signs with, checked to match.
pub fn load_certified_key(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>> {
    certified_key_in(&Material::disk(), cert, key, provider, "[tls]")
}

/// [`load_certified_key`] from the bytes of `m`, for the `cert` and `key`
/// of table `what` (`[tls]`): the key must be the one of the first
/// certificate (their public keys are compared; a key whose public half
/// cannot be derived is refused too).
pub fn certified_key_in(
    m: &Material,
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
    what: &str,
) -> Result<Arc<CertifiedKey>> {
    let chain = certs_in(m, cert, &format!("{what} cert"))?;
    let key_der = key_in(m, key, &format!("{what} key"))?;
    let (cert, key) = (cert.display(), key.display());
    let signing = provider.key_provider.load_private_key(key_der).map_err(|e| {
        anyhow!("{what} key {key} cannot be used ({e}); write an unencrypted PKCS#8, PKCS#1 or SEC1 key")
    })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            anyhow!("{what} key {key} is not the private key of cert {cert}; use the .key written with that .crt")
        }
        e => anyhow!(
            "{what} cert {cert} and key {key} do not form a usable pair ({e}); use the .key written with that .crt"
        ),
    })?;
    Ok(Arc::new(ck))
}
