//! Faults on either side of the balancer, end to end through a real
//! balancer (`core::lab`): an upstream that drops SYNs (the connect budget
//! is shared among the attempts, so the retry still has time), and clients
//! whose ClientHello is too large or whose records are malformed (answered
//! with a TLS alert and a clean close, never a bare reset).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::common::*;

// ---------------------------------------------------------------------------
// 5. A blackholed upstream costs a share of timeouts.connect, not all of it

/// A listener that never accepts, with a zero backlog whose accept queue
/// is already full: the kernel drops every further SYN, so connects to it
/// neither succeed nor fail, they time out (like a firewalled host).
struct Blackhole {
    addr: SocketAddr,
    _listener: Socket,
    _fillers: Vec<Socket>,
}

impl Blackhole {
    fn new() -> Blackhole {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        listener
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("binding the blackhole");
        listener.listen(0).expect("listen(0)");
        let addr = listener
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("an IP address");
        // Fill the accept queue (a backlog of 0 holds one connection) with
        // non-blocking connects that are never accepted.
        let fillers: Vec<Socket> = (0..3)
            .map(|_| {
                let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
                s.set_nonblocking(true).expect("non-blocking");
                let _ = s.connect(&addr.into()); // EINPROGRESS, or queued at once
                s
            })
            .collect();
        // Proof that SYNs are dropped now: a connect neither completes nor is refused.
        let probe = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        match probe.connect_timeout(&addr.into(), Duration::from_millis(300)) {
            Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {}
            other => panic!("the blackhole's accept queue is not full: a probe connect gave {other:?}"),
        }
        Blackhole {
            addr,
            _listener: listener,
            _fillers: fillers,
        }
    }
}

/// Upstreams = [blackholed, healthy echo], `timeouts.connect = 2s`, passive
/// health only. Every exchange succeeds well within the 2 s budget: the
/// first attempt (on the blackhole, which the tie-break picks first) gets
/// a share of it (1 s with one healthy candidate left) and the retry on the
/// echo upstream gets the rest.
///
/// Old code (9d5235e): the first attempt on an UP upstream got the whole
/// budget; it timed out after 2 s, nothing was left for a retry, and the
/// client was refused (`upstream_connect_failed`, closed before reply).
#[test]
fn blackholed_upstream_leaves_time_for_the_retry() {
    let hole = Blackhole::new();
    let lab = lab(opts(1, true), |p| {
        let mut s = base_config(p, "connect = \"2s\"\n");
        s.push_str(&app(
            "echo",
            p.listen,
            &[],
            &[hole.addr.to_string(), p.upstreams[0].to_string()],
        ));
        s.push_str(&client("client1", &["echo"], ""));
        s
    });
    let opts = lab.client(Some("client1")).expect("client options");
    let mut took = Vec::new();
    for i in 0..4 {
        let msg = format!("exchange {i}\n");
        let start = Instant::now();
        let result = smol::block_on(greeted_exchange(&opts, &msg));
        let elapsed = start.elapsed();
        let (up, echo) = result.unwrap_or_else(|e| panic!("exchange {i} failed after {elapsed:?}: {e}"));
        assert_eq!(up, "up1", "exchange {i} was served by {up}");
        assert_eq!(echo, msg);
        assert!(
            elapsed < Duration::from_millis(1800),
            "exchange {i} took {elapsed:?}: the blackhole ate (nearly) the whole connect budget"
        );
        took.push(elapsed);
    }
    let g = lab.server.current();
    let ups = g.app("echo").expect("app echo").balancer.upstreams();
    let hole_failures = ups[0].health.passive_failures();
    eprintln!("exchanges took {took:?}; blackhole passive failures: {hole_failures}");
    assert_eq!(ups[0].addr, hole.addr);
    assert!(
        hole_failures >= 1,
        "no connect attempt on the blackhole failed: the retry path was not exercised"
    );
    assert_eq!(ups[0].total(), 0, "a connection to the blackhole was established");
    assert_eq!(ups[1].health.passive_failures(), 0);
    assert_eq!(ups[1].total(), 4);
}

// ---------------------------------------------------------------------------
// 6. Oversized or malformed ClientHellos get an alert, then a clean close

/// A plaintext TLS record header: type, legacy version 3.1, `len`.
fn record_header(content_type: u8, len: u16) -> [u8; 5] {
    let [hi, lo] = len.to_be_bytes();
    [content_type, 0x03, 0x01, hi, lo]
}

/// A ClientHello handshake message of `body_len` (as claimed by its
/// header; the body is zeros) cut into handshake records of at most
/// 16384 bytes, sending at most `send` bytes of the message.
fn fragmented_client_hello(body_len: u32, send: usize) -> Vec<u8> {
    let [_, a, b, c] = body_len.to_be_bytes();
    let mut msg = vec![0x01, a, b, c];
    msg.resize(send, 0);
    let mut wire = Vec::with_capacity(msg.len() + msg.len() / 16384 * 5 + 5);
    for chunk in msg.chunks(16384) {
        wire.extend_from_slice(&record_header(0x16, u16::try_from(chunk.len()).expect("<= 16384")));
        wire.extend_from_slice(chunk);
    }
    wire
}

/// Sends `bytes` to the balancer (write errors ignored: the balancer may
/// stop reading), then reads until it closes: (received, how it closed).
fn send_raw(lab: &tlb::core::tools::lab::Lab, bytes: &[u8]) -> (Vec<u8>, PeerClose) {
    let mut s = TcpStream::connect_timeout(&lab.addr(), T).expect("TCP connect");
    s.set_write_timeout(Some(T)).expect("write timeout");
    let _ = s.write_all(bytes);
    read_until_closed(&mut s, T)
}

/// Fatal alert descriptions a too-large or malformed ClientHello may get.
const DECODE_ERROR: u8 = 50;
const RECORD_OVERFLOW: u8 = 22;

/// Asserts `got` is exactly one plaintext fatal alert record, with one of
/// `descriptions`, and that the connection then ended with a clean EOF.
fn assert_alert_then_eof(what: &str, (got, close): (Vec<u8>, PeerClose), descriptions: &[u8]) {
    eprintln!("{what}: received {got:02x?}, then {close:?}");
    assert!(
        !got.is_empty(),
        "{what}: nothing received before the close ({close:?}): no alert"
    );
    assert_eq!(got.len(), 7, "{what}: not a single alert record: {got:02x?}");
    assert_eq!(got[0], 0x15, "{what}: not an alert record: {got:02x?}");
    assert_eq!(got[1], 0x03, "{what}: record version {got:02x?}");
    assert_eq!(&got[3..5], &[0x00, 0x02], "{what}: alert length {got:02x?}");
    assert_eq!(got[5], 2, "{what}: not a fatal alert: {got:02x?}");
    assert!(
        descriptions.contains(&got[6]),
        "{what}: alert {} is not one of {descriptions:?}",
        got[6]
    );
    assert_eq!(
        close,
        PeerClose::Eof,
        "{what}: the alert was followed by a reset, not a clean close"
    );
}

/// Old code (9d5235e): the failed acceptor's socket was dropped at once
/// with the client's unread records still queued, so the kernel answered
/// with a reset right behind rustls's alert (the client reads the alert,
/// then ECONNRESET instead of EOF).
#[test]
fn client_hello_claiming_a_128k_body_gets_an_alert_and_a_clean_close() {
    let lab = standard_lab(1);
    // The header claims 0x20000 bytes (rustls accepts at most 0xffff);
    // three full records of it are sent.
    let hello = fragmented_client_hello(0x20000, 3 * 16384);
    assert_alert_then_eof(
        "ClientHello claiming 0x20000 bytes",
        send_raw(&lab, &hello),
        &[DECODE_ERROR, RECORD_OVERFLOW],
    );
    assert_eq!(totals(&lab, "echo"), vec![0]);
}

/// Old code (9d5235e): rustls gives no alert when its 64 KiB handshake
/// buffer is full ("message buffer full"); the connection was dropped with
/// nothing sent and unread data queued: a bare reset.
#[test]
fn client_hello_over_64k_of_records_gets_decode_error_and_a_clean_close() {
    let lab = standard_lab(1);
    // A ClientHello of 0xffff bytes (the most rustls accepts) does not fit
    // in rustls's 64 KiB buffer with its record headers: 5 records, 65564 bytes.
    let hello = fragmented_client_hello(0xffff, 4 + 0xffff);
    assert!(hello.len() > 64 * 1024, "{} bytes", hello.len());
    assert_alert_then_eof(
        "ClientHello over 64 KiB of records",
        send_raw(&lab, &hello),
        &[DECODE_ERROR],
    );
    assert_eq!(totals(&lab, "echo"), vec![0]);
}

/// A record over 2^14 + 256 bytes (the most even a TLSCiphertext may
/// have) gets a fatal alert. rustls 0.23 answers one over 2^14 + 2048 with
/// decode_error (RFC 8446 would say record_overflow, hence both allowed);
/// one in between it takes in (it should not: a TLSPlaintext may not
/// exceed 2^14), and refuses its body instead (zeros: a HelloRequest).
///
/// Old code (9d5235e): for 0x4801 and 0xffff rustls's alert was written,
/// then the socket was dropped with the rest of the record unread: alert,
/// then reset. For 0x4101 rustls queues no alert (see the next test):
/// nothing, then reset.
#[test]
fn record_longer_than_the_tls_maximum_gets_an_alert_and_a_clean_close() {
    let lab = standard_lab(1);
    for len in [0x4101u16, 0x4801, 0xffff] {
        let mut bytes = record_header(0x16, len).to_vec();
        bytes.resize(5 + 20_000, 0);
        assert_alert_then_eof(
            &format!("a handshake record of length {len:#x}"),
            send_raw(&lab, &bytes),
            &[RECORD_OVERFLOW, DECODE_ERROR],
        );
    }
    assert_eq!(totals(&lab, "echo"), vec![0]);
}

/// First flights rustls 0.23 refuses without queuing any alert: tlb sends
/// decode_error itself, then closes cleanly.
///
/// Old code (9d5235e): nothing was sent; the client saw a bare close (or a
/// reset when its bytes were still unread).
#[test]
fn first_flights_rustls_leaves_unanswered_get_decode_error() {
    let lab = standard_lab(1);
    let mut interleaved = record_header(0x16, 8).to_vec();
    // The first 4 bytes of a 100-byte ClientHello body, then a change_cipher_spec record.
    interleaved.extend_from_slice(&[0x01, 0x00, 0x00, 100, 0x03, 0x03, 0x00, 0x00]);
    interleaved.extend_from_slice(&record_header(0x14, 1));
    interleaved.push(0x01);
    let mut app_data = record_header(0x17, 5).to_vec();
    app_data.extend_from_slice(b"hello");
    let mut finished = record_header(0x16, 8).to_vec();
    finished.extend_from_slice(&[20, 0x00, 0x00, 4, 1, 2, 3, 4]);
    let mut hello_request = record_header(0x16, 4).to_vec();
    hello_request.extend_from_slice(&[0, 0x00, 0x00, 0x00]);
    let cases = [
        ("a record interleaved with a fragmented ClientHello", interleaved),
        ("an application-data record first", app_data),
        ("a Finished message first", finished),
        ("a HelloRequest message first", hello_request),
    ];
    for (what, bytes) in cases {
        assert_alert_then_eof(what, send_raw(&lab, &bytes), &[DECODE_ERROR]);
    }
    assert_eq!(totals(&lab, "echo"), vec![0]);
}
