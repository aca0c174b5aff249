//! PROXY protocol to upstreams (`proxy_protocol = "v2"` / `"v1"`): the
//! header tlb sends, read byte by byte from a raw TCP listener; the same
//! header read back by `tlb upstream --proxy-protocol --greet` (which also
//! refuses connections without one and keeps serving); the `LOCAL` header
//! of health checks; the config rules; and HAProxy (`accept-proxy`) as the
//! receiver. The HAProxy test is skipped, loudly, when `haproxy` is missing.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tlb::core::config::ProxyProtocol;
use tlb::core::config::writer::{AppSection, HealthSection};
use tlb::core::tools::client::ClientOptions;
use tlb::core::tools::lab::{Lab, LabPaths};

use crate::common::*;

// ---------------------------------------------------------------------------
// Helpers

/// A raw TCP upstream: each connection's bytes, read until EOF (or 2 s of
/// silence), are sent on the channel; then it answers `captured\n`.
struct Capture {
    addr: SocketAddr,
    rx: mpsc::Receiver<Vec<u8>>,
}

impl Capture {
    fn start() -> Capture {
        let l = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let addr = l.local_addr().expect("local addr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut got = Vec::new();
                    let _ = s.read_to_end(&mut got);
                    let _ = s.write_all(b"captured\n");
                    let _ = tx.send(got);
                });
            }
        });
        Capture { addr, rx }
    }

    fn next(&self) -> Vec<u8> {
        self.rx.recv_timeout(T).expect("a connection to the capturing upstream")
    }
}

/// App `echo` over `upstream` sending `version` (certificate too with
/// `cert`), clients 1-3 allowed; `health` as given.
fn config(
    p: &LabPaths,
    upstream: SocketAddr,
    version: ProxyProtocol,
    cert: bool,
    health: Option<HealthSection>,
) -> String {
    let w = base(p, "").app(AppSection {
        proxy_protocol: Some(version),
        proxy_protocol_cert: Some(cert),
        health,
        ..app_section("echo", p.listen, &[], &[upstream.to_string()])
    });
    let clients: Vec<String> = (1..=4).map(|i| format!("client{i}")).collect();
    tlb::core::config::demo_clients(w, "echo", &clients).render()
}

fn lab_over(upstream: SocketAddr, version: ProxyProtocol, cert: bool) -> Lab {
    lab(opts(0, false), |p| config(p, upstream, version, cert, None))
}

/// One client connection: sends `msg`, half-closes, reads to EOF. Returns
/// (the client's own address, what came back, was the session resumed).
fn exchange_via(opts: &ClientOptions, msg: &[u8]) -> (SocketAddr, Vec<u8>, bool) {
    smol::block_on(async {
        let mut s = tls_from("127.0.0.1".parse().expect("ip"), opts)
            .await
            .expect("mTLS connect");
        let me = s.get_ref().0.local_addr().expect("local addr");
        let mut out = Vec::new();
        within("an exchange", T, async {
            s.write_all(msg).await?;
            s.close().await?;
            s.read_to_end(&mut out).await
        })
        .await
        .expect("exchange");
        let resumed = s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        (me, out, resumed)
    })
}

/// A v2 header read by hand (no PROXY library), field by field.
struct Wire {
    command: u8,
    family: u8,
    src: SocketAddr,
    dst: SocketAddr,
    tlvs: Vec<(u8, Vec<u8>)>,
    /// The bytes after the header.
    rest: Vec<u8>,
}

const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn wire(bytes: &[u8]) -> Wire {
    assert!(bytes.len() >= 28, "too short for a v2 IPv4 header: {bytes:02x?}");
    assert_eq!(&bytes[..12], SIG, "the v2 signature");
    let len = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    let end = 16 + len;
    assert!(
        bytes.len() >= end,
        "the length field ({len}) runs past the bytes received"
    );
    let a = &bytes[16..28];
    let addr = |ip: &[u8], port: &[u8]| {
        SocketAddr::from(([ip[0], ip[1], ip[2], ip[3]], u16::from_be_bytes([port[0], port[1]])))
    };
    Wire {
        command: bytes[12],
        family: bytes[13],
        src: addr(&a[0..4], &a[8..10]),
        dst: addr(&a[4..8], &a[10..12]),
        tlvs: tlvs(&bytes[28..end]),
        rest: bytes[end..].to_vec(),
    }
}

/// Type-length-value entries, each checked to fit.
fn tlvs(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= 3, "a TLV head cut short: {b:02x?}");
        let len = usize::from(u16::from_be_bytes([b[1], b[2]]));
        assert!(
            b.len() >= 3 + len,
            "TLV 0x{:02x} of {len} bytes runs past its parent",
            b[0]
        );
        out.push((b[0], b[3..3 + len].to_vec()));
        b = &b[3 + len..];
    }
    out
}

fn tlv(list: &[(u8, Vec<u8>)], kind: u8) -> Option<&[u8]> {
    list.iter().find(|(k, _)| *k == kind).map(|(_, v)| v.as_slice())
}

fn text(list: &[(u8, Vec<u8>)], kind: u8) -> Option<String> {
    tlv(list, kind).map(|v| String::from_utf8(v.to_vec()).expect("UTF-8 TLV"))
}

fn client_der(lab: &Lab, name: &str) -> Vec<u8> {
    let (cert, _) = lab.pki.client(name);
    CertificateDer::from_pem_file(&cert)
        .expect("client certificate")
        .to_vec()
}

// ---------------------------------------------------------------------------
// The header tlb sends

#[test]
fn v2_header_checked_field_by_field_then_the_client_bytes() {
    let cap = Capture::start();
    let lab = lab_over(cap.addr, ProxyProtocol::V2, false);
    let opts = lab.client(Some("client1")).expect("client1");
    let (me, reply, resumed) = exchange_via(&opts, b"hello");
    assert!(!resumed, "a first connection is a full handshake");
    assert_eq!(reply, b"captured\n", "the upstream's reply is relayed");
    let w = wire(&cap.next());
    assert_eq!(w.command, 0x21, "version 2, command PROXY");
    assert_eq!(w.family, 0x11, "TCP over IPv4");
    assert_eq!(w.src, me, "source: the client's address");
    assert_eq!(w.dst, lab.addr(), "destination: tlb's listen address");
    assert_eq!(w.rest, b"hello", "the client's bytes follow the header, unchanged");
    let kinds: Vec<u8> = w.tlvs.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        [0x02, 0x20, 0xE0],
        "AUTHORITY, SSL, identity (no ALPN offered, no certificate asked)"
    );
    assert_eq!(text(&w.tlvs, 0x02).as_deref(), Some("localhost"), "AUTHORITY: the SNI");
    assert_eq!(text(&w.tlvs, 0xE0).as_deref(), Some("client1"), "0xE0: the identity");
    let ssl = tlv(&w.tlvs, 0x20).expect("SSL TLV");
    assert_eq!(ssl[0], 0x01 | 0x02 | 0x04, "PP2_CLIENT_SSL | CERT_CONN | CERT_SESS");
    assert_eq!(&ssl[1..5], &[0, 0, 0, 0], "verify: 0 (verified)");
    let subs = tlvs(&ssl[5..]);
    assert_eq!(text(&subs, 0x21).as_deref(), Some("TLSv1.3"));
    assert_eq!(text(&subs, 0x22).as_deref(), Some("client1"), "CN");
    assert_eq!(text(&subs, 0x23).as_deref(), Some("TLS_AES_128_GCM_SHA256"));
    assert_eq!(text(&subs, 0x24).as_deref(), Some("ecdsa-with-SHA256"));
    assert_eq!(text(&subs, 0x25).as_deref(), Some("EC256"));

    // Resumed: the session's certificate, not sent again on this connection.
    let (_, _, resumed) = exchange_via(&opts, b"again");
    assert!(resumed, "the second connection resumes");
    let w = wire(&cap.next());
    let ssl = tlv(&w.tlvs, 0x20).expect("SSL TLV");
    assert_eq!(ssl[0], 0x01 | 0x04, "PP2_CLIENT_SSL | CERT_SESS, not CERT_CONN");
    assert_eq!(text(&tlvs(&ssl[5..]), 0x22).as_deref(), Some("client1"));
    assert_eq!(w.rest, b"again");
}

#[test]
fn a_uri_identity_sends_its_name_in_0xe0_and_its_spiffe_id_in_0xe1() {
    use tlb::core::config::writer::ClientSection;
    use tlb::core::pki::{KeyType, Role, San, Validity};
    const ID: &str = "spiffe://prod.example/ns/web/sa/api";
    let cap = Capture::start();
    let lab = lab(opts(0, false), |p| {
        base(p, "")
            .app(AppSection {
                proxy_protocol: Some(ProxyProtocol::V2),
                ..app_section("echo", p.listen, &[], &[cap.addr.to_string()])
            })
            .client(ClientSection {
                uri: Some(ID.into()),
                ..ClientSection::new("api", ["echo"])
            })
            .client(ClientSection::new("client1", ["echo"]))
            .render()
    });
    let now = time::OffsetDateTime::now_utc();
    let validity = Validity {
        not_before: now - time::Duration::minutes(5),
        not_after: now + time::Duration::days(1),
    };
    lab.pki
        .issue_with_sans(
            "svc-a",
            Role::Client,
            KeyType::EcdsaP256,
            validity,
            false,
            &[San::Uri(ID.into())],
        )
        .expect("a client certificate with a SPIFFE ID");
    exchange_via(&lab.client(Some("svc-a")).expect("svc-a"), b"x");
    let w = wire(&cap.next());
    assert_eq!(text(&w.tlvs, 0xE0).as_deref(), Some("api"), "0xE0: the [[client]] name");
    assert_eq!(
        text(&w.tlvs, 0xE1).as_deref(),
        Some(ID),
        "0xE1: the SPIFFE ID it matched"
    );
    let ssl = tlv(&w.tlvs, 0x20).expect("SSL TLV");
    assert_eq!(
        text(&tlvs(&ssl[5..]), 0x22).as_deref(),
        Some("svc-a"),
        "CN: the certificate's"
    );
    // A CN identity sends no 0xE1.
    exchange_via(&lab.client(Some("client1")).expect("client1"), b"y");
    let w = wire(&cap.next());
    assert_eq!(text(&w.tlvs, 0xE0).as_deref(), Some("client1"));
    assert_eq!(tlv(&w.tlvs, 0xE1), None);
}

#[test]
fn the_client_certificate_goes_in_only_with_proxy_protocol_cert() {
    let cap = Capture::start();
    let lab = lab_over(cap.addr, ProxyProtocol::V2, true);
    let opts = lab.client(Some("client2")).expect("client2");
    exchange_via(&opts, b"x");
    let w = wire(&cap.next());
    assert_eq!(
        tlv(&w.tlvs, 0xE2),
        Some(&client_der(&lab, "client2")[..]),
        "0xE2: the DER"
    );
    assert_eq!(text(&w.tlvs, 0xE0).as_deref(), Some("client2"));
    assert_eq!(w.rest, b"x");
}

#[test]
fn v1_is_the_text_line_then_the_client_bytes() {
    let cap = Capture::start();
    let lab = lab_over(cap.addr, ProxyProtocol::V1, false);
    let opts = lab.client(Some("client1")).expect("client1");
    let (me, _, _) = exchange_via(&opts, b"hello");
    let want = format!(
        "PROXY TCP4 {} {} {} {}\r\nhello",
        me.ip(),
        lab.addr().ip(),
        me.port(),
        lab.addr().port()
    );
    assert_eq!(String::from_utf8_lossy(&cap.next()), want);
}

#[test]
fn health_checks_send_local_v2_or_unknown_v1_first() {
    for (version, want) in [
        (ProxyProtocol::V2, &b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00"[..]),
        (ProxyProtocol::V1, &b"PROXY UNKNOWN\r\n"[..]),
    ] {
        let cap = Capture::start();
        let health = HealthSection {
            interval: Some(Duration::from_secs(1)),
            timeout: Some(Duration::from_millis(500)),
            send: Some("PING\n".into()),
            ..HealthSection::default()
        };
        let _lab = lab(opts(0, false), |p| config(p, cap.addr, version, false, Some(health)));
        let got = cap.next();
        assert_eq!(got, [want, b"PING\n"].concat(), "{version:?}: the check's bytes");
    }
}

// ---------------------------------------------------------------------------
// tlb upstream --proxy-protocol

/// `tlb upstream --proxy-protocol --greet` on a free port; its log file.
fn start_upstream(dir: &std::path::Path) -> (ChildGuard, SocketAddr, std::path::PathBuf) {
    let log = dir.join("upstream.log");
    let out = fs::File::create(&log).expect("log file");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut child = ChildGuard::spawn(
        "tlb upstream",
        Command::new(tlb_bin())
            .args(["upstream", "--listen", &addr.to_string(), "--name", "up"])
            .args(["--proxy-protocol", "--greet", "--threads", "1"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
        if let Ok(Some(status)) = child.child.try_wait() {
            panic!(
                "tlb upstream exited ({status}): {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "tlb upstream not listening on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, addr, log)
}

/// Sends `bytes` on a raw connection to `addr`; what comes back until EOF.
fn raw(addr: SocketAddr, bytes: &[u8]) -> (Vec<u8>, PeerClose) {
    let mut s = TcpStream::connect_timeout(&addr, T).expect("connect");
    s.write_all(bytes).expect("write");
    let _ = s.shutdown(std::net::Shutdown::Write);
    read_until_closed(&mut s, T)
}

#[test]
fn tlb_upstream_reads_the_header_back_and_refuses_connections_without_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_up, up_addr, log) = start_upstream(dir.path());
    let lab = lab_over(up_addr, ProxyProtocol::V2, true);
    let opts = lab.client(Some("client1")).expect("client1");
    let (me, reply, _) = exchange_via(&opts, b"hello\n");
    let want = format!("up client={me} sni=localhost identity=client1\nhello\n");
    assert_eq!(String::from_utf8_lossy(&reply), want);

    // No header: closed without a byte, one log line.
    let (got, _) = raw(up_addr, b"GET / HTTP/1.0\r\n\r\n");
    assert!(got.is_empty(), "answered without a header: {got:?}");
    // A broken v2 header (version 3).
    let (got, _) = raw(up_addr, b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c0123456789ab");
    assert!(got.is_empty(), "answered a broken header: {got:?}");
    wait_until("the refusals logged", T, || {
        let text = fs::read_to_string(&log).unwrap_or_default();
        text.contains("connection refused: no PROXY header") && text.contains("malformed PROXY v2 header")
    });
    // Still serving: a v1 header from elsewhere, and tlb again.
    let (got, _) = raw(up_addr, b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 2000\r\nhi\n");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "up client=192.0.2.1:1000 sni=- identity=-\nhi\n"
    );
    let (me, reply, _) = exchange_via(&lab.client(Some("client2")).expect("client2"), b"again\n");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        format!("up client={me} sni=localhost identity=client2\nagain\n")
    );
    // A health check's LOCAL header is accepted: the greeting names the TCP peer.
    let mut s = TcpStream::connect_timeout(&up_addr, T).expect("connect");
    let local = s.local_addr().expect("local addr");
    s.write_all(b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00").expect("write");
    let _ = s.shutdown(std::net::Shutdown::Write);
    let (got, _) = read_until_closed(&mut s, T);
    assert_eq!(
        String::from_utf8_lossy(&got),
        format!("up client={local} sni=- identity=-\n")
    );
}

// ---------------------------------------------------------------------------
// Config

#[test]
fn proxy_protocol_values_and_the_cert_flag_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let parse = |app_lines: &str| {
        let text = format!(
            "[tls]\ncert = \"s.crt\"\nkey = \"s.key\"\nca = \"ca.crt\"\n\n[[app]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nupstreams = [\"127.0.0.1:2\"]\n{app_lines}\n"
        );
        tlb::core::config::Config::parse(&text, &dir.path().join("tlb.toml"))
    };
    for bad in ["proxy_protocol = true", "proxy_protocol = \"v3\"", "proxy_protocol = 2"] {
        let e = parse(bad).expect_err(bad);
        assert_eq!(e.key, "app[0].proxy_protocol", "{bad}: {e}");
        assert!(e.message.contains("write proxy_protocol = \"v2\""), "{bad}: {e}");
        assert_eq!(e.to_string().lines().count(), 1, "{e}");
    }
    for bad in [
        "proxy_protocol_cert = true",
        "proxy_protocol = \"v1\"\nproxy_protocol_cert = true",
    ] {
        let e = parse(bad).expect_err(bad);
        assert_eq!(e.key, "app[0].proxy_protocol_cert", "{bad}: {e}");
        assert!(e.message.contains("needs proxy_protocol = \"v2\""), "{bad}: {e}");
    }
    let c = parse("proxy_protocol = \"v1\"").expect("v1");
    assert_eq!(c.apps[0].proxy_protocol, Some(ProxyProtocol::V1));
    let c = parse("proxy_protocol = \"v2\"\nproxy_protocol_cert = true").expect("v2 + cert");
    assert_eq!(
        (c.apps[0].proxy_protocol, c.apps[0].proxy_protocol_cert),
        (Some(ProxyProtocol::V2), true)
    );
}

// ---------------------------------------------------------------------------
// HAProxy as the receiver

/// HAProxy with `accept-proxy` in front of `echo`, logging each connection's
/// client address and AUTHORITY to stderr; on a free port, retried if
/// another process takes the port first.
fn start_haproxy(dir: &std::path::Path, echo: SocketAddr) -> (ChildGuard, SocketAddr, std::path::PathBuf) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let cfg = dir.join("haproxy.cfg");
        fs::write(
            &cfg,
            format!(
                "global\n  log stderr format raw local0 info\n\
                 defaults\n  mode tcp\n  log global\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n\
                 frontend fe\n  bind {addr} accept-proxy\n\
                 \x20 log-format \"PPLOG ci=%ci cp=%cp authority=%[fc_pp_authority]\"\n  default_backend be\n\
                 backend be\n  server echo {echo}\n"
            ),
        )
        .expect("haproxy.cfg");
        let log = dir.join("haproxy.log");
        let out = fs::File::create(&log).expect("log file");
        let mut child = ChildGuard::spawn(
            "haproxy",
            Command::new("haproxy")
                .args(["-db", "-f"])
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("log file"))
                .stderr(out),
        );
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return (child, addr, log);
            }
            if let Ok(Some(status)) = child.child.try_wait() {
                let text = fs::read_to_string(&log).unwrap_or_default();
                assert!(
                    text.contains("cannot bind") || text.contains("Address already in use"),
                    "haproxy exited ({status}): {text}"
                );
                break; // the port was taken: another one
            }
            assert!(Instant::now() < deadline, "haproxy not listening on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn haproxy_accepts_the_v2_header_and_logs_client_and_authority() {
    if !have("haproxy", "-v") {
        eprintln!(
            "SKIPPED (LOUD): haproxy is not on PATH; the PROXY v2 interop test did not run (apt-get install haproxy)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let echo = Echo::start("127.0.0.1:0".parse().expect("addr"), "behind-haproxy");
    let (_haproxy, addr, log) = start_haproxy(dir.path(), echo.addr);
    let lab = lab_over(addr, ProxyProtocol::V2, false);
    let opts = lab.client(Some("client1")).expect("client1");
    let (me, reply, _) = exchange_via(&opts, b"through haproxy\n");
    let reply = String::from_utf8_lossy(&reply).into_owned();
    assert!(reply.ends_with("through haproxy\n"), "{reply:?}");
    let want = format!("PPLOG ci={} cp={} authority=localhost", me.ip(), me.port());
    wait_until("haproxy's log line", T, || {
        fs::read_to_string(&log).unwrap_or_default().contains(&want)
    });
}
