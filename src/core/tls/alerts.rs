//! TLS alerts and errors in words, for messages and logs.
//!
//! Promises: names as RFC 8446 writes them (`access_denied`), never a
//! Rust debug dump.

use rustls::Error as TlsError;

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
    fn alert_names_follow_the_rfc() {
        assert_eq!(alert_name(AD::UnknownCA), "unknown_ca");
        assert_eq!(alert_name(AD::AccessDenied), "access_denied");
        assert_eq!(alert_name(AD::UnknownPSKIdentity), "unknown_psk_identity");
        assert_eq!(alert_name(AD::CertificateRequired), "certificate_required");
        assert_eq!(alert_name(AD::ProtocolVersion), "protocol_version");
    }
}
