//! The PROXY protocol header tlb writes first on an upstream connection
//! (`proxy_protocol = "v2"` or `"v1"`), and the one its health checks
//! send. Encoding is the `ppp` crate's; this module decides what goes in.
//!
//! Promises: [`build`] is a pure function of a [`HeaderInfo`] (no I/O, no
//! clock), so it is unit-tested and benchmarked alone; v2 carries the
//! client's address and the address it reached, then TLVs in this order:
//! ALPN (0x01, if negotiated), AUTHORITY (0x02, the SNI, if sent), SSL
//! (0x20: client flags, verify = 0, sub-TLVs VERSION 0x21, CN 0x22,
//! CIPHER 0x23, SIG_ALG 0x24, KEY_ALG 0x25, each only when known), then the
//! application TLVs [`TLV_IDENTITY`] (0xE0), [`TLV_SPIFFE_ID`] (0xE1, when
//! the identity was matched by a URI SAN) and [`TLV_CLIENT_CERT`] (0xE2,
//! only with `send_cert`). v1 carries the addresses only. A header that
//! would not fit the v2 length field (65535 bytes of addresses and TLVs)
//! is an error, never a truncated header.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use ppp::v2::{Builder, Command, Protocol, Type, Version, WriteToHeader, Writer};
use x509_parser::prelude::X509Certificate;
use x509_parser::public_key::PublicKey;

use tracing::warn;

use crate::core::config::ProxyProtocol;
use crate::core::proxy::generation::AppRuntime;
use crate::core::proxy::handshake::ClientTls;
use crate::core::tls::identity;

/// Application TLV: the matched identity (the `[[client]]` name), UTF-8.
pub const TLV_IDENTITY: u8 = 0xE0;
/// Application TLV: the SPIFFE ID / URI SAN the identity was matched by.
pub const TLV_SPIFFE_ID: u8 = 0xE1;
/// Application TLV: the client certificate, DER (`proxy_protocol_cert`).
pub const TLV_CLIENT_CERT: u8 = 0xE2;

/// `PP2_CLIENT_SSL`: the client connected over TLS.
pub const PP2_CLIENT_SSL: u8 = 0x01;
/// `PP2_CLIENT_CERT_CONN`: the client sent a certificate on this connection.
pub const PP2_CLIENT_CERT_CONN: u8 = 0x02;
/// `PP2_CLIENT_CERT_SESS`: the client's session has a certificate (also
/// when resumed without sending it again).
pub const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// The v2 `LOCAL` header (no addresses, no TLVs) a health check sends.
pub const LOCAL_V2: [u8; 16] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x20, 0x00, 0x00, 0x00,
];

/// The v1 header a health check sends (v1 has no `LOCAL`).
pub const UNKNOWN_V1: &[u8] = b"PROXY UNKNOWN\r\n";

/// What the header of one proxied connection says.
#[derive(Debug, Clone, Copy)]
pub struct HeaderInfo<'a> {
    /// The client's address (the source).
    pub peer: SocketAddr,
    /// The address the client connected to (the destination).
    pub local: SocketAddr,
    pub sni: Option<&'a str>,
    pub alpn: Option<&'a [u8]>,
    /// `"TLSv1.3"`, `"TLSv1.2"` ([`tls_version_name`]).
    pub tls_version: Option<&'a str>,
    /// OpenSSL's name ([`cipher_name`]).
    pub cipher: Option<&'a str>,
    /// The client's end-entity certificate, DER.
    pub client_cert: Option<&'a [u8]>,
    /// The TLS session was resumed (the certificate is the session's, not
    /// sent on this connection).
    pub resumed: bool,
    /// The matched `[[client]]` name.
    pub identity: &'a str,
    /// The URI SAN the identity was matched by, if it was.
    pub spiffe_id: Option<&'a str>,
    /// Put `client_cert` in the header (TLV 0xE2).
    pub send_cert: bool,
}

/// A v2 header over the 65535 bytes its length field can say.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the PROXY v2 header would exceed 65535 bytes of addresses and TLVs (a very large client certificate?); set proxy_protocol_cert = false"
)]
pub struct HeaderTooLarge;

/// The header for `info` in `version`.
pub fn build(version: ProxyProtocol, info: &HeaderInfo<'_>) -> Result<Vec<u8>, HeaderTooLarge> {
    let (peer, local) = same_family(info.peer, info.local);
    match version {
        ProxyProtocol::V1 => Ok(ppp::v1::Addresses::from((peer, local)).to_string().into_bytes()),
        ProxyProtocol::V2 => build_v2(peer, local, info).map_err(|_| HeaderTooLarge),
    }
}

fn build_v2(peer: SocketAddr, local: SocketAddr, info: &HeaderInfo<'_>) -> std::io::Result<Vec<u8>> {
    let cert = if info.send_cert { info.client_cert } else { None };
    let mut b = Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (peer, local))
        .reserve_capacity(256 + cert.map_or(0, <[u8]>::len));
    if let Some(alpn) = info.alpn {
        b = b.write_tlv(Type::ALPN, alpn)?;
    }
    if let Some(sni) = info.sni {
        b = b.write_tlv(Type::Authority, sni.as_bytes())?;
    }
    b = b.write_tlv(Type::SSL, &ssl_tlv(info)?)?;
    b = b.write_tlv(TLV_IDENTITY, info.identity.as_bytes())?;
    if let Some(id) = info.spiffe_id {
        b = b.write_tlv(TLV_SPIFFE_ID, id.as_bytes())?;
    }
    if let Some(der) = cert {
        b = b.write_tlv(TLV_CLIENT_CERT, der)?;
    }
    b.build()
}

/// The value of the SSL TLV: client flags, verify (0: the certificate was
/// verified, or the connection would not exist), then the sub-TLVs.
fn ssl_tlv(info: &HeaderInfo<'_>) -> std::io::Result<Vec<u8>> {
    let mut client = PP2_CLIENT_SSL;
    if info.client_cert.is_some() {
        client |= PP2_CLIENT_CERT_SESS;
        if !info.resumed {
            client |= PP2_CLIENT_CERT_CONN;
        }
    }
    let mut w = Writer::from(vec![client, 0, 0, 0, 0]);
    let cert = info.client_cert.and_then(|der| identity::parsed(der, CertFacts::of));
    let cn = cert.as_ref().and_then(|c| c.cn.as_deref());
    let sig = cert.as_ref().map(|c| c.sig_alg.as_ref());
    let key = cert.as_ref().and_then(|c| c.key_alg.as_deref());
    let subs = [
        (Type::SSLVersion, info.tls_version),
        (Type::SSLCommonName, cn),
        (Type::SSLCipher, info.cipher),
        (Type::SSLSignatureAlgorithm, sig),
        (Type::SSLKeyAlgorithm, key),
    ];
    for (kind, value) in subs {
        if let Some(v) = value {
            (kind, v.as_bytes()).write_to(&mut w)?;
        }
    }
    Ok(w.finish())
}

/// What the SSL sub-TLVs say about the client certificate.
struct CertFacts {
    cn: Option<String>,
    sig_alg: Cow<'static, str>,
    key_alg: Option<String>,
}

impl CertFacts {
    fn of(cert: &X509Certificate<'_>) -> CertFacts {
        CertFacts {
            cn: identity::cn_of(cert),
            sig_alg: sig_alg_name(&cert.signature_algorithm.algorithm.to_id_string()),
            key_alg: key_alg_name(cert),
        }
    }
}

/// OpenSSL's short name of a certificate signature algorithm (what
/// `openssl x509 -text` prints), else the dotted OID.
fn sig_alg_name(oid: &str) -> Cow<'static, str> {
    Cow::Borrowed(match oid {
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256",
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384",
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512",
        "1.2.840.113549.1.1.11" => "RSA-SHA256",
        "1.2.840.113549.1.1.12" => "RSA-SHA384",
        "1.2.840.113549.1.1.13" => "RSA-SHA512",
        "1.2.840.113549.1.1.10" => "RSASSA-PSS",
        "1.3.101.112" => "ED25519",
        other => return Cow::Owned(other.to_owned()),
    })
}

/// The client key as HAProxy words a key algorithm: `EC256`, `RSA2048`,
/// `ED25519`.
fn key_alg_name(cert: &X509Certificate<'_>) -> Option<String> {
    let spki = cert.public_key();
    if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" {
        return Some("ED25519".into());
    }
    match spki.parsed().ok()? {
        PublicKey::EC(p) => Some(format!("EC{}", p.key_size())),
        PublicKey::RSA(k) => Some(format!("RSA{}", k.key_size())),
        _ => None,
    }
}

/// A TLS version as OpenSSL (and so HAProxy's `ssl_fc_protocol`) names it.
pub fn tls_version_name(v: rustls::ProtocolVersion) -> Option<&'static str> {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => Some("TLSv1.3"),
        rustls::ProtocolVersion::TLSv1_2 => Some("TLSv1.2"),
        _ => None,
    }
}

/// A cipher suite as OpenSSL (and so HAProxy's `ssl_fc_cipher`) names it:
/// the IANA name for TLS 1.3 suites, OpenSSL's own for TLS 1.2 ones; a
/// suite without one keeps rustls's name.
pub fn cipher_name(s: rustls::CipherSuite) -> Cow<'static, str> {
    use rustls::CipherSuite as CS;
    Cow::Borrowed(match s {
        CS::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        CS::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        CS::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        CS::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        CS::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        CS::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        CS::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        CS::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        CS::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        other => return Cow::Owned(format!("{other:?}")),
    })
}

/// The header a health check sends first.
pub fn health_check_header(version: ProxyProtocol) -> &'static [u8] {
    match version {
        ProxyProtocol::V1 => UNKNOWN_V1,
        ProxyProtocol::V2 => &LOCAL_V2,
    }
}

/// Both addresses in one family (a header has one): an IPv4 one is
/// written IPv4-mapped when the other is IPv6.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), s.port()),
        IpAddr::V6(_) => s,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

/// The header of one proxied connection for `app` (`None`: the app sends
/// none): `who` = (client address, identity, URI SAN it was matched by,
/// SNI). A header too large for v2 is logged and refuses the connection.
pub(super) fn header_for(
    app: &AppRuntime,
    tls: &ClientTls<'_>,
    who: (SocketAddr, &str, Option<&str>, Option<&str>),
) -> Result<Option<Vec<u8>>, ()> {
    let Some(version) = app.proxy_protocol else {
        return Ok(None);
    };
    let (peer, identity, spiffe_id, sni) = who;
    let (tcp, session) = tls.get_ref();
    let cipher = session.negotiated_cipher_suite().map(|s| cipher_name(s.suite()));
    let info = HeaderInfo {
        peer,
        local: tcp.local_addr().unwrap_or(peer),
        sni,
        alpn: session.alpn_protocol(),
        tls_version: session.protocol_version().and_then(tls_version_name),
        cipher: cipher.as_deref(),
        client_cert: session.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref()),
        resumed: session.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        identity,
        spiffe_id,
        send_cert: app.proxy_protocol_cert,
    };
    build(version, &info).map(Some).map_err(|e| {
        warn!(app = %app.name, "PROXY header not sent, connection refused: {e}");
    })
}

#[cfg(test)]
mod tests;
