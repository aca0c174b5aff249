//! Headers built by [`build`], read back byte by byte and with `ppp`.

use super::*;
use ppp::v2::{AddressFamily, Addresses, Header};

fn cert(cn: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.self_signed(&key).expect("cert").der().to_vec()
}

fn info<'a>(der: Option<&'a [u8]>) -> HeaderInfo<'a> {
    HeaderInfo {
        peer: "127.0.0.1:53211".parse().expect("addr"),
        local: "127.0.0.2:8443".parse().expect("addr"),
        sni: Some("localhost"),
        alpn: Some(b"h2"),
        tls_version: Some("TLSv1.3"),
        cipher: Some("TLS_AES_128_GCM_SHA256"),
        client_cert: der,
        resumed: false,
        identity: "client1",
        spiffe_id: None,
        send_cert: false,
    }
}

/// The TLVs of a v2 header, in order (type, value).
fn tlvs(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let h = Header::try_from(bytes).expect("a v2 header");
    assert_eq!(h.len(), bytes.len(), "the length field covers the whole header");
    h.tlvs()
        .map(|t| t.expect("a well-formed TLV"))
        .map(|t| (t.kind, t.value.to_vec()))
        .collect()
}

fn sub_tlvs(ssl: &[u8]) -> Vec<(u8, Vec<u8>)> {
    ppp::v2::TypeLengthValues::from(&ssl[5..])
        .map(|t| t.expect("a well-formed sub-TLV"))
        .map(|t| (t.kind, t.value.to_vec()))
        .collect()
}

#[test]
fn v2_carries_addresses_sni_alpn_ssl_and_identity() {
    let der = cert("client1");
    let bytes = build(ProxyProtocol::V2, &info(Some(&der))).expect("header");
    assert_eq!(&bytes[..12], ppp::v2::PROTOCOL_PREFIX);
    assert_eq!(bytes[12], 0x21, "version 2, PROXY");
    assert_eq!(bytes[13], 0x11, "TCP over IPv4");
    assert_eq!(
        usize::from(u16::from_be_bytes([bytes[14], bytes[15]])),
        bytes.len() - 16
    );
    assert_eq!(&bytes[16..28], &[127, 0, 0, 1, 127, 0, 0, 2, 0xCF, 0xDB, 0x20, 0xFB]);
    let h = Header::try_from(&bytes[..]).expect("parses");
    assert_eq!(h.address_family(), AddressFamily::IPv4);
    assert!(matches!(h.addresses, Addresses::IPv4(a) if a.source_port == 53211 && a.destination_port == 8443));
    let t = tlvs(&bytes);
    let kinds: Vec<u8> = t.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, [0x01, 0x02, 0x20, TLV_IDENTITY], "no 0xE2 without send_cert");
    assert_eq!(t[0].1, b"h2");
    assert_eq!(t[1].1, b"localhost");
    assert_eq!(t[3].1, b"client1");
    let ssl = &t[2].1;
    assert_eq!(ssl[0], PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS);
    assert_eq!(&ssl[1..5], &[0, 0, 0, 0], "verify = 0");
    let subs = sub_tlvs(ssl);
    let text = |k: u8| {
        subs.iter()
            .find(|(t, _)| *t == k)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(text(0x21).as_deref(), Some("TLSv1.3"));
    assert_eq!(text(0x22).as_deref(), Some("client1"));
    assert_eq!(text(0x23).as_deref(), Some("TLS_AES_128_GCM_SHA256"));
    assert_eq!(
        text(0x24).as_deref(),
        Some("ecdsa-with-SHA256"),
        "rcgen's default key is P-256"
    );
    assert_eq!(text(0x25).as_deref(), Some("EC256"));
    let order: Vec<u8> = subs.iter().map(|(k, _)| *k).collect();
    assert_eq!(order, [0x21, 0x22, 0x23, 0x24, 0x25]);
}

#[test]
fn the_certificate_goes_in_only_when_asked_and_spiffe_id_when_known() {
    let der = cert("client1");
    let mut i = info(Some(&der));
    i.send_cert = true;
    i.spiffe_id = Some("spiffe://example.org/client1");
    let t = tlvs(&build(ProxyProtocol::V2, &i).expect("header"));
    let kinds: Vec<u8> = t.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, [0x01, 0x02, 0x20, TLV_IDENTITY, TLV_SPIFFE_ID, TLV_CLIENT_CERT]);
    assert_eq!(t[4].1, b"spiffe://example.org/client1");
    assert_eq!(t[5].1, der);
}

#[test]
fn a_resumed_session_says_cert_sess_not_cert_conn() {
    let der = cert("client1");
    let mut i = info(Some(&der));
    i.resumed = true;
    let t = tlvs(&build(ProxyProtocol::V2, &i).expect("header"));
    assert_eq!(t[2].1[0], PP2_CLIENT_SSL | PP2_CLIENT_CERT_SESS);
}

#[test]
fn without_sni_alpn_or_certificate_those_tlvs_are_left_out() {
    let mut i = info(None);
    i.sni = None;
    i.alpn = None;
    let t = tlvs(&build(ProxyProtocol::V2, &i).expect("header"));
    let kinds: Vec<u8> = t.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, [0x20, TLV_IDENTITY]);
    assert_eq!(t[0].1[0], PP2_CLIENT_SSL);
    let subs: Vec<u8> = sub_tlvs(&t[0].1).iter().map(|(k, _)| *k).collect();
    assert_eq!(subs, [0x21, 0x23], "no CN, SIG_ALG or KEY_ALG without a certificate");
}

#[test]
fn v1_is_the_text_line_with_addresses_only() {
    let bytes = build(ProxyProtocol::V1, &info(None)).expect("header");
    assert_eq!(bytes, b"PROXY TCP4 127.0.0.1 127.0.0.2 53211 8443\r\n");
    let mut i = info(None);
    i.peer = "[2001:db8::1]:1234".parse().expect("addr");
    i.local = "[::1]:8443".parse().expect("addr");
    let bytes = build(ProxyProtocol::V1, &i).expect("header");
    assert_eq!(bytes, b"PROXY TCP6 2001:db8::1 ::1 1234 8443\r\n");
}

#[test]
fn mixed_families_are_written_as_ipv6() {
    let mut i = info(None);
    i.local = "[::1]:8443".parse().expect("addr");
    let bytes = build(ProxyProtocol::V2, &i).expect("header");
    assert_eq!(bytes[13], 0x21, "TCP over IPv6");
    let h = Header::try_from(&bytes[..]).expect("parses");
    let Addresses::IPv6(a) = h.addresses else {
        panic!("not IPv6: {:?}", h.addresses)
    };
    assert_eq!(
        a.source_address,
        "::ffff:127.0.0.1".parse::<std::net::Ipv6Addr>().expect("ip")
    );
}

#[test]
fn a_header_over_the_length_field_is_an_error_not_a_truncation() {
    let huge = vec![0x30; 70_000];
    let mut i = info(Some(&huge));
    i.send_cert = true;
    assert_eq!(build(ProxyProtocol::V2, &i), Err(HeaderTooLarge));
    i.send_cert = false;
    assert!(
        build(ProxyProtocol::V2, &i).is_ok(),
        "an unparsable certificate is left out of the SSL TLV"
    );
}

#[test]
fn health_check_headers_are_local_v2_and_unknown_v1() {
    let h = Header::try_from(&LOCAL_V2[..]).expect("parses");
    assert_eq!(h.command, ppp::v2::Command::Local);
    assert_eq!(h.len(), 16);
    assert_eq!(health_check_header(ProxyProtocol::V2), &LOCAL_V2);
    assert_eq!(health_check_header(ProxyProtocol::V1), b"PROXY UNKNOWN\r\n");
}

#[test]
fn names_follow_openssl() {
    use rustls::CipherSuite as CS;
    assert_eq!(cipher_name(CS::TLS13_AES_256_GCM_SHA384), "TLS_AES_256_GCM_SHA384");
    assert_eq!(
        cipher_name(CS::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
        "ECDHE-RSA-AES128-GCM-SHA256"
    );
    assert_eq!(tls_version_name(rustls::ProtocolVersion::TLSv1_2), Some("TLSv1.2"));
    assert_eq!(sig_alg_name("1.2.840.113549.1.1.11"), "RSA-SHA256");
    assert_eq!(sig_alg_name("1.2.3.4"), "1.2.3.4");
}
