//! TLS alerts and errors in words, for messages and logs.
//!
//! Promises: names as RFC 8446 writes them (`access_denied`), never a
//! Rust debug dump.

use rustls::pki_types::UnixTime;
use rustls::{CertificateError, Error as TlsError};

/// What an alert a server sent about this client's certificate means, and
/// the fix, for a client's messages (`tlb client`, `tlb bench`).
pub fn alert_advice(a: rustls::AlertDescription) -> Option<&'static str> {
    use rustls::AlertDescription as AD;
    Some(match a {
        AD::AccessDenied => {
            "the certificate's identity is not authorized for this app (add a [[client]] entry for it with \
             this app, or use an authorized --cert)"
        }
        AD::UnknownCA | AD::BadCertificate | AD::CertificateUnknown => {
            "the server does not trust this client certificate (was it issued by the server's CA? check --pki \
             or --cert-file)"
        }
        AD::CertificateRequired => {
            "the server requires a client certificate (pass --cert NAME, or --cert-file and --key-file)"
        }
        AD::CertificateRevoked => "this client certificate is revoked (issue a new one: tlb pki issue NAME --force)",
        AD::CertificateExpired => {
            "this client certificate has expired or is not valid yet (issue a new one: tlb pki issue NAME --force)"
        }
        AD::ProtocolVersion => "no TLS version in common",
        _ => return None,
    })
}

/// What a client can do about a server certificate it refused.
pub fn server_certificate_advice(c: &CertificateError) -> &'static str {
    use CertificateError as CE;
    match c {
        CE::NotValidForName | CE::NotValidForNameContext { .. } => "use --server-name NAME with one of its names",
        CE::UnknownIssuer | CE::BadSignature => {
            "check --ca: it must be the CA that signed the server's certificate (default <pki>/ca.crt)"
        }
        CE::Expired | CE::ExpiredContext { .. } => {
            "the server needs a new certificate, or this machine's clock is wrong"
        }
        CE::NotValidYet | CE::NotValidYetContext { .. } => "check this machine's clock and the server's",
        _ => "check --ca and --server-name",
    }
}

/// The short name of a TLS alert or error for messages, e.g. `access_denied`.
pub fn describe_tls_error(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<TlsError>()) {
        Some(other) => describe_rustls_error(other),
        None => e.to_string(),
    }
}

/// A rustls error in words (`alert access_denied`, `certificate revoked`,
/// `certificate expired (notAfter 2026-05-01T12:00:00Z)`).
pub fn describe_rustls_error(e: &TlsError) -> String {
    match e {
        TlsError::AlertReceived(a) => format!("alert {}", alert_name(*a)),
        TlsError::InvalidCertificate(c) => format!("certificate {}", describe_certificate_error(c)),
        other => other.to_string(),
    }
}

/// What is wrong with a certificate, as the end of "the certificate is
/// ...": `revoked`, `expired (notAfter 2026-05-01T12:00:00Z)`, `not valid
/// for name "x" (it is for: localhost, 127.0.0.1)`.
pub fn describe_certificate_error(e: &CertificateError) -> String {
    use CertificateError as CE;
    match e {
        CE::BadEncoding => "not valid DER (bad encoding)".into(),
        CE::Expired => "expired".into(),
        CE::ExpiredContext { time, not_after } => {
            format!("expired (notAfter {}, now {})", rfc3339(*not_after), rfc3339(*time))
        }
        CE::NotValidYet => "not valid yet".into(),
        CE::NotValidYetContext { time, not_before } => {
            format!(
                "not valid yet (notBefore {}, now {})",
                rfc3339(*not_before),
                rfc3339(*time)
            )
        }
        CE::Revoked => "revoked".into(),
        CE::UnknownIssuer => "not issued by a trusted CA (unknown issuer)".into(),
        CE::UnknownRevocationStatus => "of unknown revocation status (no CRL for its issuer)".into(),
        CE::ExpiredRevocationList | CE::ExpiredRevocationListContext { .. } => {
            "checked against an expired CRL (past its nextUpdate)".into()
        }
        CE::BadSignature => "badly signed (the signature does not verify)".into(),
        CE::NotValidForName => "not valid for the expected name".into(),
        CE::NotValidForNameContext { expected, presented } => {
            let names: Vec<String> = presented.iter().map(|n| presented_name(n)).collect();
            let valid_for = if names.is_empty() {
                "no name at all".to_string()
            } else {
                names.join(", ")
            };
            format!("not valid for name {:?} (it is for: {valid_for})", expected.to_str())
        }
        CE::InvalidPurpose => "not for this use (extended key usage)".into(),
        CE::InvalidPurposeContext { .. } => format!("not for this use ({e})"),
        CE::UnsupportedSignatureAlgorithmContext { .. }
        | CE::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "signed with an unsupported signature algorithm".into()
        }
        CE::UnhandledCriticalExtension => "carrying an unknown critical extension".into(),
        CE::ApplicationVerificationFailure => "not admitted by the policy".into(),
        other => format!("refused ({other})"),
    }
}

/// A subject name as rustls/webpki presents it (`DnsName("localhost")`,
/// `IpAddress(0::1)`), as people write it (`localhost`, `::1`).
fn presented_name(n: &str) -> String {
    let inner = n
        .strip_prefix("DnsName(")
        .or_else(|| n.strip_prefix("IpAddress("))
        .and_then(|rest| rest.strip_suffix(')'));
    match inner {
        Some(inner) => {
            let inner = inner.trim_matches('"');
            match inner.parse::<std::net::IpAddr>() {
                Ok(ip) => ip.to_string(),
                Err(_) => inner.to_string(),
            }
        }
        None => n.to_string(),
    }
}

/// `2026-05-01T12:00:00Z`.
fn rfc3339(t: UnixTime) -> String {
    let at = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(t.as_secs()));
    at.map_or_else(
        || format!("{} s after 1970", t.as_secs()),
        |at| humantime::format_rfc3339_seconds(at).to_string(),
    )
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
    fn certificate_errors_are_words_not_debug_dumps() {
        use super::describe_certificate_error as d;
        use rustls::CertificateError as CE;
        use rustls::pki_types::{ServerName, UnixTime};
        let name = CE::NotValidForNameContext {
            expected: ServerName::try_from("wrong").expect("a name"),
            presented: vec![
                "DnsName(\"localhost\")".into(),
                "IpAddress(127.0.0.1)".into(),
                "IpAddress(0::1)".into(),
            ],
        };
        assert_eq!(
            d(&name),
            "not valid for name \"wrong\" (it is for: localhost, 127.0.0.1, ::1)"
        );
        let expired = CE::ExpiredContext {
            time: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_800_000_000)),
            not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_700_000_000)),
        };
        assert_eq!(
            d(&expired),
            "expired (notAfter 2023-11-14T22:13:20Z, now 2027-01-15T08:00:00Z)"
        );
        assert_eq!(d(&CE::Revoked), "revoked");
        assert!(d(&CE::UnknownIssuer).contains("unknown issuer"));
        for e in [name, expired, CE::Revoked, CE::UnknownIssuer, CE::BadSignature] {
            let text = super::describe_rustls_error(&rustls::Error::InvalidCertificate(e));
            assert!(text.starts_with("certificate "), "{text}");
            assert!(!text.contains('{') && !text.contains("Context"), "{text}");
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
