//! `[tls] crl` checks at load time.
//!
//! Promises: a CRL naming a CA of `tls.ca` carries that CA's valid
//! signature, and at least one such CRL exists.

use std::path::Path;
use std::time::SystemTime;

use anyhow::{Result, anyhow, bail};
use rustls::pki_types::CertificateRevocationListDer;

use crate::core::tls::identity::system_time;
use crate::core::tls::load::certs_in;
use crate::core::tls::material::Material;

/// Checks `[tls] crl` at load: at least one CRL is issued by a CA of
/// `tls.ca`, and every CRL that names a CA of `tls.ca` as its issuer carries
/// a valid signature of that CA (a CRL naming another issuer is for an
/// intermediate CA: webpki verifies it against that CA when it is used).
/// Returns the earliest nextUpdate of the CA's CRLs. The CA file is read
/// from `m` (the bytes the verifier was built from).
pub fn check_crls(
    m: &Material,
    crls: &[CertificateRevocationListDer<'_>],
    ca: &Path,
    crl_path: &Path,
) -> Result<Option<SystemTime>> {
    use x509_parser::prelude::FromDer;
    let cas = certs_in(m, ca, "CA file")?;
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
            let t = system_time(t).unwrap_or(SystemTime::UNIX_EPOCH);
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
