//! Client identity from an X.509 certificate: the subject CN and the
//! SHA-256 of the SubjectPublicKeyInfo (for `spki_sha256` pins).
//!
//! These functions only read a DER certificate; they never verify it (that is
//! the TLS layer's job, done before an identity is ever looked at).

use x509_parser::prelude::{FromDer, X509Certificate};

/// The first subject Common Name of `der`, if the certificate parses and has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// SHA-256 of the certificate's SubjectPublicKeyInfo (as in HPKP / Envoy's
/// `verify_certificate_spki`, but hex rather than base64).
pub fn spki_sha256(der: &[u8]) -> Option<[u8; 32]> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.public_key().raw);
    digest.as_ref().try_into().ok()
}
