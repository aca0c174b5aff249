//! The parser against the headers tlb builds, broken ones, and (proptest)
//! random and mutated input: never a panic, never more than the header.

use super::*;
use crate::core::config::ProxyProtocol;
use crate::core::proxy::proxy_header::{self, HeaderInfo, LOCAL_V2};
use proptest::prelude::*;

const DER: &[u8] = b"\x30\x03\x02\x01\x01 not really a certificate";

fn info(send_cert: bool) -> HeaderInfo<'static> {
    HeaderInfo {
        peer: "127.0.0.1:53211".parse().expect("addr"),
        local: "127.0.0.1:8443".parse().expect("addr"),
        sni: Some("localhost"),
        alpn: Some(b"h2"),
        tls_version: Some("TLSv1.3"),
        cipher: Some("TLS_AES_128_GCM_SHA256"),
        client_cert: Some(DER),
        resumed: false,
        identity: "client1",
        spiffe_id: Some("spiffe://example.org/c1"),
        send_cert,
    }
}

fn v2(send_cert: bool) -> Vec<u8> {
    proxy_header::build(ProxyProtocol::V2, &info(send_cert)).expect("header")
}

fn done(buf: &[u8]) -> (usize, Received) {
    match parse(buf) {
        Parse::Done { len, header } => (len, *header),
        other => panic!("not a header: {other:?}"),
    }
}

fn malformed(buf: &[u8]) -> String {
    match parse(buf) {
        Parse::Malformed(why) => why,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn what_tlb_sends_reads_back() {
    let mut bytes = v2(true);
    let header_len = bytes.len();
    bytes.extend_from_slice(b"hello");
    let (len, h) = done(&bytes);
    assert_eq!(len, header_len, "the client's bytes are not consumed");
    assert_eq!((h.version, h.local), (2, false));
    assert_eq!(h.source, Some("127.0.0.1:53211".parse().expect("addr")));
    assert_eq!(h.destination, Some("127.0.0.1:8443".parse().expect("addr")));
    assert_eq!(h.sni.as_deref(), Some("localhost"));
    assert_eq!(h.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(h.identity.as_deref(), Some("client1"));
    assert_eq!(h.spiffe_id.as_deref(), Some("spiffe://example.org/c1"));
    assert_eq!(h.client_cert.as_deref(), Some(DER));
    let ssl = h.ssl.expect("SSL TLV");
    assert_eq!((ssl.client, ssl.verify), (0x07, 0));
    assert_eq!(ssl.version.as_deref(), Some("TLSv1.3"));
    assert_eq!(ssl.cipher.as_deref(), Some("TLS_AES_128_GCM_SHA256"));
    assert_eq!(ssl.cn, None, "DER is not a certificate: no CN");
    assert_eq!(done(&v2(false)).1.client_cert, None);
}

#[test]
fn v1_and_health_check_headers_read_back() {
    let mut v1 = proxy_header::build(ProxyProtocol::V1, &info(false)).expect("header");
    let n = v1.len();
    v1.extend_from_slice(b"GET /");
    let (len, h) = done(&v1);
    assert_eq!(len, n);
    assert_eq!((h.version, h.local), (1, false));
    assert_eq!(h.source, Some("127.0.0.1:53211".parse().expect("addr")));
    assert_eq!(h.sni, None);
    let (len, h) = done(&LOCAL_V2);
    assert_eq!((len, h.version, h.local, h.source), (16, 2, true, None));
    let (len, h) = done(b"PROXY UNKNOWN\r\n");
    assert_eq!((len, h.version, h.local), (15, 1, true));
}

#[test]
fn every_strict_prefix_is_incomplete() {
    for bytes in [
        v2(true),
        proxy_header::build(ProxyProtocol::V1, &info(false)).expect("v1"),
    ] {
        for cut in 0..bytes.len() {
            assert_eq!(
                parse(&bytes[..cut]),
                Parse::Incomplete,
                "cut at {cut} of {}",
                bytes.len()
            );
        }
        assert!(matches!(parse(&bytes), Parse::Done { .. }));
    }
}

#[test]
fn broken_headers_are_refused_with_a_reason() {
    assert!(malformed(b"GET / HTTP/1.1\r\n").contains("no PROXY header"));
    assert!(malformed(b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n").contains("v1"));
    let mut long = b"PROXY ".to_vec();
    long.resize(MAX_V1, b'1');
    assert_eq!(parse(&long[..MAX_V1 - 1]), Parse::Incomplete);
    assert!(malformed(&long).contains("without CRLF"));
    assert!(malformed(b"PROXX").contains("no PROXY header"));
    assert!(
        malformed(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n").contains("v1"),
        "LF without CR"
    );
    let mut bad = v2(false);
    bad[12] = 0x31; // version 3
    assert!(malformed(&bad).contains("v2"));
    // A TLV running past the header's end.
    let mut bad = v2(false);
    let last = bad.len() - 1;
    bad.truncate(last);
    let len = u16::from_be_bytes([bad[14], bad[15]]) - 1;
    bad[14..16].copy_from_slice(&len.to_be_bytes());
    assert!(malformed(&bad).contains("TLV"), "{}", malformed(&bad));
    // An SSL TLV shorter than its head, and an identity that is not UTF-8.
    let with_tlvs = |tlvs: &[u8]| {
        let mut h = LOCAL_V2.to_vec();
        h[12] = 0x21;
        h[13] = 0x11;
        let len = u16::try_from(12 + tlvs.len()).expect("short");
        h[14..16].copy_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1, 0, 1, 0, 2]);
        h.extend_from_slice(tlvs);
        h
    };
    assert!(malformed(&with_tlvs(&[0x20, 0, 2, 1, 0])).contains("SSL TLV"));
    assert!(malformed(&with_tlvs(&[0xE0, 0, 1, 0xFF])).contains("UTF-8"));
    let (_, h) = done(&with_tlvs(&[0xEF, 0, 1, 0xFF, 0xE0, 0, 1, b'a']));
    assert_eq!(h.identity.as_deref(), Some("a"), "unknown TLVs are skipped");
}

/// A reader that hands over `data` `step` bytes at a time, then never again.
struct Trickle {
    data: Vec<u8>,
    at: usize,
    step: usize,
    eof: bool,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = self.step.min(buf.len()).min(self.data.len() - self.at);
        if n == 0 && !self.eof {
            return std::task::Poll::Pending;
        }
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        std::task::Poll::Ready(Ok(n))
    }
}

/// Reads a header from `data` served `step` bytes per read; also what is
/// left unread after it.
fn trickle(data: &[u8], step: usize, eof: bool) -> Result<(Received, Vec<u8>), String> {
    let mut r = Trickle {
        data: data.to_vec(),
        at: 0,
        step,
        eof,
    };
    let h = smol::block_on(read_header(&mut r, Duration::from_millis(200)))?;
    Ok((h, r.data[r.at..].to_vec()))
}

#[test]
fn read_header_reads_not_one_byte_past_it_and_bounds_every_wait() {
    let mut v1 = b"PROXY TCP4 127.0.0.1 127.0.0.2 5000 443\r\n".to_vec();
    v1.extend_from_slice(b"client bytes");
    let mut bytes = v2(true);
    bytes.extend_from_slice(b"client bytes");
    for step in [1, 7, 4096] {
        let (h, rest) = trickle(&bytes, step, true).expect("header");
        assert_eq!(h.identity.as_deref(), Some("client1"));
        assert_eq!(
            rest, b"client bytes",
            "v2, step {step}: the client's bytes are left unread"
        );
        let (_, rest) = trickle(&v1, step, true).expect("v1 header");
        assert_eq!(rest, b"client bytes", "v1, step {step}");
    }
    assert_eq!(trickle(b"", 1, true).unwrap_err(), "closed before any PROXY header");
    assert!(trickle(&bytes[..20], 5, true).unwrap_err().contains("incomplete"));
    assert!(trickle(&bytes[..20], 5, false).unwrap_err().contains("within"));
}

fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    for &(at, b) in edits {
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] = b;
        }
    }
    bytes.truncate(cut.min(bytes.len()));
    bytes
}

/// What every input must satisfy: no panic (the test would fail), a
/// header no longer than the input.
fn sound(buf: &[u8]) -> Result<(), TestCaseError> {
    if let Parse::Done { len, .. } = parse(buf) {
        prop_assert!(len <= buf.len(), "consumed {len} of {} bytes", buf.len());
        prop_assert!(len >= 15, "a {len}-byte header");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_are_sound(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
        sound(&buf)?;
    }

    #[test]
    fn random_bytes_after_a_signature_are_sound(
        v2sig in any::<bool>(),
        rest in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut buf = if v2sig { ppp::v2::PROTOCOL_PREFIX.to_vec() } else { b"PROXY ".to_vec() };
        buf.extend_from_slice(&rest);
        sound(&buf)?;
    }

    #[test]
    fn mutated_headers_are_sound(
        which in 0..3usize,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in any::<usize>(),
    ) {
        let base = match which {
            0 => v2(true),
            1 => LOCAL_V2.to_vec(),
            _ => proxy_header::build(ProxyProtocol::V1, &info(false)).expect("v1"),
        };
        sound(&mutate(base, &edits, cut))?;
    }

    #[test]
    fn valid_headers_round_trip_whatever_follows(
        port in any::<u16>(),
        identity in "[a-zA-Z0-9._-]{1,64}",
        sni in proptest::option::of("[a-z0-9.-]{1,253}"),
        send_cert in any::<bool>(),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut i = info(send_cert);
        i.peer.set_port(port);
        i.identity = &identity;
        i.sni = sni.as_deref();
        let mut bytes = proxy_header::build(ProxyProtocol::V2, &i).expect("header");
        let n = bytes.len();
        bytes.extend_from_slice(&tail);
        let Parse::Done { len, header } = parse(&bytes) else {
            return Err(TestCaseError::fail("a valid header was not read"));
        };
        prop_assert_eq!(len, n);
        prop_assert_eq!(header.source, Some(i.peer));
        prop_assert_eq!(header.identity.as_deref(), Some(identity.as_str()));
        prop_assert_eq!(header.sni, sni);
        prop_assert_eq!(header.client_cert.is_some(), send_cert);
    }
}
