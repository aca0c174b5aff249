//! Subject alternative names: the SANs `tlb pki issue` writes (a server's
//! names; a client's `--uri` and `--dns`) and reads back for `pki show`.
//!
//! Promises: every SAN is checked before anything is signed (a DNS name by
//! label rules, a URI by its scheme, a SPIFFE ID by the SPIFFE ID rules:
//! lower-case trust domain, non-empty path segments, no query, fragment or
//! port), with a one-line error that names the flag and the fix.

use std::net::IpAddr;

use anyhow::{Result, anyhow, bail};
use rcgen::SanType;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use super::files::{check_server_name, invalid_server_name};

/// Longest URI SAN accepted (the SPIFFE ID limit).
pub const MAX_URI_LEN: usize = 2048;

/// A SAN a certificate carries besides its CN (`--dns`, `--uri`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    Dns(String),
    Uri(String),
}

impl San {
    /// The SAN for rcgen, after the checks of this module.
    pub(super) fn to_san_type(&self) -> Result<SanType> {
        match self {
            San::Dns(d) => {
                check_dns_identity(d, "--dns")?;
                dns(d)
            }
            San::Uri(u) => {
                check_uri(u)?;
                let ia5 = u
                    .clone()
                    .try_into()
                    .map_err(|_| anyhow!("--uri {u:?} is not ASCII; percent-encode it"))?;
                Ok(SanType::URI(ia5))
            }
        }
    }
}

/// A DNS name that identifies a client (`what` names the flag or key in
/// errors): a valid host name, not a wildcard.
pub fn check_dns_identity(d: &str, what: &str) -> Result<()> {
    if d.starts_with("*.") {
        bail!("{what} {d:?}: a wildcard cannot be an identity; name one host, e.g. api.pay.internal");
    }
    check_server_name(d).map_err(|_| {
        anyhow!("{what} {d:?} is not a valid DNS name; use letters, digits, '-' and '.', e.g. api.pay.internal")
    })
}

/// A server name: an IP address, or a DNS name (wildcards allowed).
pub(super) fn server_san(s: &str) -> Result<SanType> {
    match s.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => {
            check_server_name(s)?;
            dns(s)
        }
    }
}

fn dns(s: &str) -> Result<SanType> {
    Ok(SanType::DnsName(
        s.to_string().try_into().map_err(|_| invalid_server_name(s))?,
    ))
}

/// A URI SAN: `scheme:rest`, printable ASCII without spaces; a `spiffe://`
/// URI must also be a valid SPIFFE ID.
pub fn check_uri(u: &str) -> Result<()> {
    check_uri_as(u, "--uri")
}

/// [`check_uri`], with `what` (a flag or config key) naming it in errors.
pub fn check_uri_as(u: &str, what: &str) -> Result<()> {
    const EXAMPLE: &str = "e.g. spiffe://prod.example/ns/pay/sa/api";
    if u.is_empty() || u.len() > MAX_URI_LEN {
        bail!("{what} must be 1 to {MAX_URI_LEN} characters, {EXAMPLE}");
    }
    if !u.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("{what} {u:?} holds a space, a control or a non-ASCII character; percent-encode it, {EXAMPLE}");
    }
    let Some((scheme, rest)) = u.split_once(':') else {
        bail!("{what} {u:?} has no scheme; write it as SCHEME:..., {EXAMPLE}");
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok || rest.is_empty() {
        bail!("{what} {u:?} is not a URI (SCHEME:...), {EXAMPLE}");
    }
    if scheme.eq_ignore_ascii_case("spiffe") {
        check_spiffe_id(u, what)?;
    }
    Ok(())
}

/// The SPIFFE ID rules: `spiffe://` (lower case), a trust domain of
/// `[a-z0-9._-]`, a path of non-empty segments of `[A-Za-z0-9._-]` that are
/// not `.` or `..`, nothing after the path.
fn check_spiffe_id(u: &str, what: &str) -> Result<()> {
    let bad = |why: &str| anyhow!("{what} {u:?} is not a SPIFFE ID: {why}; e.g. spiffe://prod.example/ns/pay/sa/api");
    let rest = u
        .strip_prefix("spiffe://")
        .ok_or_else(|| bad("it must start with spiffe:// in lower case"))?;
    let (domain, path) = rest.split_once('/').map_or((rest, ""), |(d, p)| (d, p));
    if domain.is_empty() {
        return Err(bad("the trust domain is empty"));
    }
    if !domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err(bad(
            "the trust domain may hold only a-z, 0-9, '.', '-' and '_' (no port, no user)",
        ));
    }
    if rest.contains('/') {
        for seg in path.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(bad("a path segment is empty, '.' or '..' (no trailing '/')"));
            }
            if !seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                return Err(bad(
                    "the path may hold only letters, digits, '.', '-' and '_' (no query or fragment)",
                ));
            }
        }
    }
    Ok(())
}

/// A SPIFFE trust domain name (`what` names the key in errors): `a-z`,
/// `0-9`, `.`, `-`, `_`, as in a SPIFFE ID.
pub fn check_trust_domain(d: &str, what: &str) -> Result<()> {
    if d.is_empty()
        || !d
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        bail!("{what} {d:?} is not a trust domain; use a-z, 0-9, '.', '-' and '_', e.g. prod.example");
    }
    Ok(())
}

/// The certificate's SANs as `(kind, value)`: `dns`, `ip`, `uri`, or the
/// name of another kind.
pub fn listed(cert: &X509Certificate<'_>) -> Vec<(&'static str, String)> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .map(|g| match g {
            GeneralName::DNSName(d) => ("dns", d.to_string()),
            GeneralName::URI(u) => ("uri", u.to_string()),
            GeneralName::IPAddress(b) => ("ip", ip_text(b)),
            other => ("other", other.to_string()),
        })
        .collect()
}

fn ip_text(b: &[u8]) -> String {
    if let Ok(a) = <[u8; 4]>::try_from(b) {
        IpAddr::from(a).to_string()
    } else if let Ok(a) = <[u8; 16]>::try_from(b) {
        IpAddr::from(a).to_string()
    } else {
        "?".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_and_spiffe_ids() {
        for ok in [
            "spiffe://prod.example/ns/pay/sa/api",
            "spiffe://prod.example",
            "spiffe://a-b_c.9/x.y_z-1",
            "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
            "https://id.example/alice",
        ] {
            assert!(check_uri(ok).is_ok(), "{ok}: {:?}", check_uri(ok));
        }
        for (bad, why) in [
            ("", "1 to"),
            ("no-scheme", "no scheme"),
            ("1x:y", "not a URI"),
            ("x:", "not a URI"),
            ("spiffe://Prod.example/a", "trust domain"),
            ("spiffe://prod.example:8443/a", "trust domain"),
            ("spiffe://user@prod/a", "trust domain"),
            ("spiffe:///a", "empty"),
            ("spiffe://prod/a/", "segment"),
            ("spiffe://prod//a", "segment"),
            ("spiffe://prod/a/../b", "segment"),
            ("spiffe://prod/a?x=1", "query"),
            ("spiffe://prod/a#f", "query"),
            ("SPIFFE://prod/a", "lower case"),
            ("spiffe://prod/a b", "space"),
            ("spiffe://prod/é", "non-ASCII"),
        ] {
            let e = check_uri(bad).map(|_| ()).expect_err(bad).to_string();
            assert!(e.contains(why) && e.contains("--uri"), "{bad}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        let long = format!("spiffe://prod/{}", "a".repeat(MAX_URI_LEN));
        assert!(check_uri(&long).is_err());
    }

    #[test]
    fn dns_identities_are_names_not_wildcards() {
        assert!(San::Dns("api.pay.internal".into()).to_san_type().is_ok());
        let e = San::Dns("*.pay.internal".into())
            .to_san_type()
            .expect_err("wildcard")
            .to_string();
        assert!(e.contains("wildcard"), "{e}");
        let e = San::Dns("bad name".into())
            .to_san_type()
            .expect_err("space")
            .to_string();
        assert!(e.contains("--dns") && e.contains("not a valid DNS name"), "{e}");
    }
}
