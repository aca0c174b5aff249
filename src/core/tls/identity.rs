//! Client identity from an X.509 certificate: the subject CN, the URI and
//! DNS SANs, and the SHA-256 of the SubjectPublicKeyInfo (for
//! `spki_sha256` pins).
//!
//! These functions only read a DER certificate; they never verify it (that is
//! the TLS layer's job, done before an identity is ever looked at).

use x509_parser::prelude::{FromDer, X509Certificate};

/// The first subject Common Name of `der`, if the certificate parses and has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    parsed(der, cn_of)?
}

/// SHA-256 of the certificate's SubjectPublicKeyInfo (as in HPKP / Envoy's
/// `verify_certificate_spki`, but hex rather than base64).
pub fn spki_sha256(der: &[u8]) -> Option<[u8; 32]> {
    parsed(der, spki_of)?
}

/// Runs `f` on `der` parsed once (`None` if it does not parse), so callers
/// needing both the CN and the SPKI digest parse the certificate once.
pub fn parsed<T>(der: &[u8], f: impl FnOnce(&X509Certificate<'_>) -> T) -> Option<T> {
    X509Certificate::from_der(der).ok().map(|(_, cert)| f(&cert))
}

/// The first subject CN of a parsed certificate.
pub fn cn_of(cert: &X509Certificate<'_>) -> Option<String> {
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// A parsed certificate's URI SANs and DNS SANs (lower-cased), in order.
pub fn sans_of(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<String>) {
    use x509_parser::extensions::GeneralName;
    let (mut uris, mut dnss) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for g in &san.value.general_names {
            match g {
                GeneralName::URI(u) => uris.push((*u).to_string()),
                GeneralName::DNSName(d) => dnss.push(d.to_ascii_lowercase()),
                _ => {}
            }
        }
    }
    (uris, dnss)
}

/// What a certificate presents as identity, for refusal log lines:
/// `cn:X`, then each SAN as `pki show` lists them (`uri:X`, `dns:X`, ...).
pub fn presented_of(cert: &X509Certificate<'_>) -> Vec<String> {
    let cn = cn_of(cert).map(|c| format!("cn:{c}"));
    let sans = crate::core::pki::sans::listed(cert).into_iter();
    cn.into_iter()
        .chain(sans.map(|(kind, v)| format!("{kind}:{v}")))
        .collect()
}

/// SHA-256 of a parsed certificate's SubjectPublicKeyInfo.
pub fn spki_of(cert: &X509Certificate<'_>) -> Option<[u8; 32]> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.public_key().raw);
    digest.as_ref().try_into().ok()
}

/// A parsed certificate's serial number, hex in capitals, as `tlb pki show`
/// prints it and `tlb pki revoke --serial` takes it.
pub fn serial_of(cert: &X509Certificate<'_>) -> String {
    hex::encode_upper(cert.raw_serial())
}

/// The end of a parsed certificate's validity period.
pub fn not_after_of(cert: &X509Certificate<'_>) -> Option<std::time::SystemTime> {
    system_time(cert.validity().not_after)
}

/// An X.509 time as a `SystemTime`; `None` before 1970 (or beyond what
/// `SystemTime` holds).
pub fn system_time(t: x509_parser::time::ASN1Time) -> Option<std::time::SystemTime> {
    let secs = u64::try_from(t.timestamp()).ok()?;
    std::time::SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
}
