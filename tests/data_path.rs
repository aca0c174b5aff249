//! The data path, end to end through a real balancer (`core::lab`): real
//! sockets on 127.0.0.1:0, real mTLS, certificates generated in temporary
//! directories. Each test bounds every network wait and stops by itself.
//!
//! Upstream greetings (`upN client=... sni=- identity=-`) tell which
//! upstream served a connection.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use time::{Duration as TimeDuration, OffsetDateTime};
use tlb::core::pki::{KeyType, Role, Validity};
use tlb::core::tls::{load_certs, load_key, load_roots, provider};
use tlb::core::tools::client::{ClientError, ClientOptions, connect, exchange};
use tlb::core::tools::lab::Lab;

use crate::common::*;

// ---------------------------------------------------------------------------
// Helpers

/// Asserts a refused handshake whose alert text contains `alert`.
fn assert_refused(result: Result<impl std::fmt::Debug, ClientError>, alert: &str) {
    match result {
        Err(ClientError::TlsRefused { detail, .. }) => {
            assert!(detail.contains(alert), "expected alert {alert}, got detail {detail:?}")
        }
        other => panic!("expected a TLS refusal with {alert}, got {other:?}"),
    }
}

/// Asserts that no upstream connection was ever made through the lab.
fn assert_no_upstream_contact(lab: &Lab) {
    assert_eq!(totals(lab, "echo").iter().sum::<u64>(), 0, "an upstream was picked");
    assert_eq!(
        lab.server.metrics.proxied.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a connection was proxied"
    );
}

/// Waits until every upstream of app `echo` has no active connection.
fn wait_idle(lab: &Lab) {
    wait_until("upstream active counts back to 0", T, || {
        actives(lab, "echo").iter().all(|&a| a == 0)
    });
}

/// A test-owned upstream that accepts one connection, closes its listener
/// (later connects are refused, as if the process were gone) and hands the
/// connection to `serve` on its own thread.
fn one_shot_upstream<F>(serve: F) -> (SocketAddr, JoinHandle<()>)
where
    F: FnOnce(TcpStream) + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a test upstream");
    let addr = l.local_addr().expect("local addr");
    l.set_nonblocking(true).expect("non-blocking listener");
    let h = std::thread::spawn(move || {
        let deadline = Instant::now() + T;
        let accepted = loop {
            match l.accept() {
                Ok((s, _)) => break Some(s),
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(_) => break None,
            }
        };
        drop(l);
        if let Some(s) = accepted {
            s.set_nonblocking(false).expect("blocking stream");
            s.set_read_timeout(Some(T)).expect("read timeout");
            serve(s);
        }
    });
    (addr, h)
}

// ---------------------------------------------------------------------------
// 1. Happy path

#[test]
fn happy_path_echo_through_three_upstreams() {
    let lab = standard_lab(3);
    smol::block_on(async {
        for c in ["client1", "client2", "client3"] {
            let opts = lab.client(Some(c)).expect("client options");
            let reply = exchange(&opts, b"hello tlb\n", T).await.expect("exchange");
            let text = String::from_utf8(reply).expect("utf-8");
            let (greeting, echo) = text.split_once('\n').expect("a greeting line");
            let up = greeter(greeting);
            assert!(["up1", "up2", "up3"].contains(&up.as_str()), "{greeting}");
            assert!(greeting.starts_with(&format!("{up} client=127.0.0.1:")), "{greeting}");
            assert!(greeting.ends_with(" sni=- identity=-"), "{greeting}");
            assert_eq!(echo, "hello tlb\n");
        }
    });
    assert_eq!(totals(&lab, "echo").iter().sum::<u64>(), 3);
    wait_idle(&lab);
}

// ---------------------------------------------------------------------------
// 2. Balancing

#[test]
fn sequential_ties_spread_evenly() {
    let lab = standard_lab(3);
    let opts = lab.client(Some("client1")).expect("client options");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..6 {
        // The previous connection's slot must be free, so every pick is a tie.
        wait_idle(&lab);
        let msg = format!("n{i}\n");
        let (up, echo) = smol::block_on(greeted_exchange(&opts, &msg)).expect("exchange");
        assert_eq!(echo, msg);
        *seen.entry(up).or_default() += 1;
    }
    let want: BTreeMap<String, usize> = [("up1".into(), 2), ("up2".into(), 2), ("up3".into(), 2)].into();
    assert_eq!(seen, want, "6 sequential connections over 3 idle upstreams");
    assert_eq!(totals(&lab, "echo"), vec![2, 2, 2]);
}

#[test]
fn concurrent_held_connections_spread_evenly_and_release() {
    let lab = standard_lab(3);
    let opts = lab.client(Some("client1")).expect("client options");
    smol::block_on(async {
        let mut conns = Vec::new();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..6 {
            let (_, mut tls) = within("connect", T, connect(&opts)).await.expect("connect");
            let line = within("greeting", T, read_line(&mut tls)).await.expect("greeting");
            *seen.entry(greeter(&line)).or_default() += 1;
            conns.push(tls);
        }
        let want: BTreeMap<String, usize> = [("up1".into(), 2), ("up2".into(), 2), ("up3".into(), 2)].into();
        assert_eq!(seen, want, "6 held connections over 3 upstreams");
        assert_eq!(actives(&lab, "echo"), vec![2, 2, 2], "active counts while held");
        // Each connection still echoes.
        for (i, c) in conns.iter_mut().enumerate() {
            let msg = format!("conn {i}\n");
            within("write", T, c.write_all(msg.as_bytes())).await.expect("write");
            within("flush", T, c.flush()).await.expect("flush");
            let echo = within("echo", T, read_line(c)).await.expect("echo");
            assert_eq!(echo, msg);
        }
        for mut c in conns {
            within("close", T, c.close()).await.expect("close");
            let mut rest = Vec::new();
            within("EOF after close", T, c.read_to_end(&mut rest))
                .await
                .expect("clean EOF");
            assert!(rest.is_empty(), "unexpected bytes {rest:?}");
        }
    });
    wait_idle(&lab);
}

// ---------------------------------------------------------------------------
// 3. Refusals: the right alert, and no upstream ever touched

#[test]
fn refused_client_certificate_from_a_foreign_ca() {
    let lab = standard_lab(3);
    let (opts, _foreign) = foreign_client(&lab);
    let result = smol::block_on(exchange(&opts, b"hello\n", T));
    match &result {
        Err(ClientError::TlsRefused { detail, hint, .. }) => {
            // rustls sends unknown_ca for an unknown issuer.
            assert!(
                detail.contains("unknown_c") || detail.contains("bad_certificate"),
                "{detail}"
            );
            assert!(hint.contains("does not trust"), "{hint}");
        }
        other => panic!("expected a TLS refusal, got {other:?}"),
    }
    assert_no_upstream_contact(&lab);
}

/// The alert names in messages are RFC 8446's (`unknown_ca`).
#[test]
fn foreign_ca_alert_is_named_unknown_ca() {
    assert_eq!(
        tlb::core::tls::alert_name(rustls::AlertDescription::UnknownCA),
        "unknown_ca"
    );
    assert_eq!(
        tlb::core::tls::alert_name(rustls::AlertDescription::AccessDenied),
        "access_denied"
    );
}

#[test]
fn refused_without_client_certificate() {
    let lab = standard_lab(3);
    let opts = lab.client(None).expect("client options");
    assert_refused(smol::block_on(exchange(&opts, b"hello\n", T)), "certificate_required");
    assert_no_upstream_contact(&lab);
}

#[test]
fn refused_revoked_certificate_after_reload() {
    let lab = standard_lab(3);
    // One set of options for before and after: a session cached by the
    // client before the revocation must not let it back in.
    let opts = lab.client(Some("client2")).expect("client options");
    let (_, echo) = smol::block_on(greeted_exchange(&opts, "before\n")).expect("client2 before revocation");
    assert_eq!(echo, "before\n");
    let before = totals(&lab, "echo");

    lab.pki.revoke("client2").expect("revoke client2");
    let text = std::fs::read_to_string(&lab.config_path).expect("config text");
    lab.reload(&text).expect("reload with the new CRL");

    assert_refused(smol::block_on(exchange(&opts, b"after\n", T)), "certificate_revoked");
    let fresh = lab.client(Some("client2")).expect("client options");
    assert_refused(smol::block_on(exchange(&fresh, b"after\n", T)), "certificate_revoked");
    assert_eq!(totals(&lab, "echo"), before, "a revoked client reached an upstream");
    // Others are unaffected.
    let other = lab.client(Some("client1")).expect("client options");
    smol::block_on(greeted_exchange(&other, "still ok\n")).expect("client1 after the reload");
    wait_idle(&lab);
}

#[test]
fn refused_expired_certificate() {
    let lab = lab(opts(3, true), |p| {
        standard_config(p, "", &client("expired1", &["echo"], ""))
    });
    let now = OffsetDateTime::now_utc();
    lab.pki
        .issue(
            "expired1",
            Role::Client,
            KeyType::EcdsaP256,
            Validity {
                not_before: now - TimeDuration::days(10),
                not_after: now - TimeDuration::days(1),
            },
            false,
        )
        .expect("issuing an expired certificate");
    let opts = lab.client(Some("expired1")).expect("client options");
    assert_refused(smol::block_on(exchange(&opts, b"hello\n", T)), "certificate_expired");
    assert_no_upstream_contact(&lab);
}

#[test]
fn refused_identity_not_authorized() {
    let lab = standard_lab(3);
    let opts = lab.client(Some("client4")).expect("client options");
    let result = smol::block_on(exchange(&opts, b"hello\n", T));
    if let Err(ClientError::TlsRefused { detail, .. }) = &result {
        // Nothing about upstreams or other clients in what the client sees.
        assert!(!detail.contains("127.0.0.1:"), "{detail}");
        assert!(!detail.contains("client1"), "{detail}");
    }
    assert_refused(result, "access_denied");
    assert_no_upstream_contact(&lab);
}

#[test]
fn refused_tls12_client_when_tls13_is_required() {
    let lab = standard_lab(3);
    let opts = tls12_only(&lab, "client1");
    let result = smol::block_on(within("TLS 1.2 handshake", T, connect(&opts))).map(|_| ());
    assert_refused(result, "protocol_version");
    assert_no_upstream_contact(&lab);
}

#[test]
fn refused_garbage_instead_of_client_hello() {
    let lab = standard_lab(3);
    let mut s = TcpStream::connect(lab.addr()).expect("TCP connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    let start = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the balancer neither answered nor closed within 5 s (got {got:?})")
            }
            Err(_) => break, // reset: closed
        }
    }
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    eprintln!("the balancer answered the garbage with {got:02x?}");
    // Either nothing (a close) or a TLS alert record.
    assert!(got.is_empty() || got[0] == 0x15, "not a TLS alert: {got:?}");
    assert!(!String::from_utf8_lossy(&got).contains("HTTP"), "{got:?}");
    wait_until("handshake failure counted", T, || {
        lab.server.metrics.handshake_failures() >= 1
    });
    assert_no_upstream_contact(&lab);
}

/// Reads until the server closes; returns how long that took. Panics if the
/// server sends bytes or keeps the connection past `limit`.
fn time_until_closed(s: &mut TcpStream, start: Instant, limit: Duration) -> Duration {
    s.set_read_timeout(Some(limit)).expect("read timeout");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("the server sent {:?} to a silent client", &buf[..n]),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("the server did not close the connection within {limit:?}")
        }
        Err(_) => {} // reset: closed
    }
    start.elapsed()
}

#[test]
fn handshake_timeout_cuts_a_silent_connection() {
    let lab = lab(opts(3, true), |p| standard_config(p, "handshake = \"300ms\"\n", ""));
    let start = Instant::now();
    let mut s = TcpStream::connect(lab.addr()).expect("TCP connect");
    let took = time_until_closed(&mut s, start, Duration::from_secs(5));
    assert!(took >= Duration::from_millis(250), "closed too early: {took:?}");
    assert!(took <= Duration::from_secs(3), "closed too late: {took:?}");
    assert_no_upstream_contact(&lab);
}

#[test]
fn handshake_timeout_cuts_a_partial_client_hello() {
    let lab = lab(opts(3, true), |p| standard_config(p, "handshake = \"300ms\"\n", ""));
    let start = Instant::now();
    let mut s = TcpStream::connect(lab.addr()).expect("TCP connect");
    // A handshake record header announcing 512 bytes, then nothing.
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).expect("write");
    let took = time_until_closed(&mut s, start, Duration::from_secs(5));
    assert!(took >= Duration::from_millis(250), "closed too early: {took:?}");
    assert!(took <= Duration::from_secs(3), "closed too late: {took:?}");
    assert_no_upstream_contact(&lab);
}

// ---------------------------------------------------------------------------
// 4. Per-client limits

/// client1 with `client1_limits`, client2 with the defaults.
fn limits_lab(client1_limits: &str) -> Lab {
    lab(opts(3, true), |p| {
        let mut s = base_config(p, "");
        s.push_str(&app("echo", p.listen, &[], &ups(p)));
        s.push_str(&client("client1", &["echo"], client1_limits));
        s.push_str(&client("client2", &["echo"], ""));
        s
    })
}

fn client_active(lab: &Lab, name: &str) -> u32 {
    lab.server
        .current()
        .limiter
        .get(name, true)
        .expect("client state")
        .active()
}

fn client_refused(lab: &Lab, name: &str) -> u64 {
    lab.server
        .current()
        .limiter
        .get(name, true)
        .expect("client state")
        .refused()
}

/// A connection refused by a per-client limit, as the client sees it:
/// `ClosedBeforeReply` only (the balancer sends close_notify and lingers).
fn is_limit_refusal<T>(r: &Result<T, ClientError>) -> bool {
    matches!(r, Err(ClientError::ClosedBeforeReply { .. }))
}

#[test]
fn max_connections_enforced_and_released() {
    let lab = limits_lab("max_connections = 2");
    let opts = lab.client(Some("client1")).expect("client options");
    let other = lab.client(Some("client2")).expect("client options");
    smol::block_on(async {
        let mut held = Vec::new();
        for _ in 0..2 {
            let (_, mut tls) = within("connect", T, connect(&opts)).await.expect("connect");
            let line = within("greeting", T, read_line(&mut tls)).await.expect("greeting");
            greeter(&line);
            held.push(tls);
        }
        assert_eq!(client_active(&lab, "client1"), 2);
        assert_eq!(totals(&lab, "echo").iter().sum::<u64>(), 2);

        let third = exchange(&opts, b"third\n", T).await;
        assert!(is_limit_refusal(&third), "the third connection: {third:?}");
        assert_eq!(
            totals(&lab, "echo").iter().sum::<u64>(),
            2,
            "the refused one reached an upstream"
        );
        assert!(client_refused(&lab, "client1") >= 1);

        // Another identity is not limited by client1's connections.
        greeted_exchange(&other, "other\n").await.expect("client2");

        // Free one slot: a new connection gets through.
        let mut one = held.pop().expect("a held connection");
        within("close", T, one.close()).await.expect("close");
        let mut rest = Vec::new();
        within("EOF", T, one.read_to_end(&mut rest)).await.expect("clean EOF");
        drop(one);
        wait_until("client1 slot released", T, || client_active(&lab, "client1") < 2);
        let (_, echo) = greeted_exchange(&opts, "again\n").await.expect("after release");
        assert_eq!(echo, "again\n");

        for mut c in held {
            within("close", T, c.close()).await.expect("close");
        }
    });
    wait_until("client1 slots all released", T, || client_active(&lab, "client1") == 0);
}

#[test]
fn connection_rate_enforced_and_released() {
    // The token bucket is timed by the lab's clock: moved, not waited for.
    let clock = tlb::core::rt::clock::ManualClock::new();
    let lab = lab(
        tlb::core::tools::lab::LabOptions {
            clock: clock.clone(),
            ..opts(3, true)
        },
        |p| {
            let mut s = base_config(p, "");
            s.push_str(&app("echo", p.listen, &[], &ups(p)));
            s.push_str(&client("client1", &["echo"], "connection_rate = 0.5\nburst = 2"));
            s
        },
    );
    let opts = lab.client(Some("client1")).expect("client options");
    smol::block_on(async {
        for i in 0..2 {
            greeted_exchange(&opts, &format!("quick {i}\n"))
                .await
                .expect("within the burst");
        }
        let third = exchange(&opts, b"third\n", T).await;
        assert!(is_limit_refusal(&third), "the third quick connection: {third:?}");
        assert_eq!(
            totals(&lab, "echo").iter().sum::<u64>(),
            2,
            "the refused one reached an upstream"
        );
        assert_eq!(client_refused(&lab, "client1"), 1);
        // At 0.5/s, one token is back after 2 s, and only one.
        clock.advance(Duration::from_millis(2100));
        let (_, echo) = greeted_exchange(&opts, "later\n").await.expect("a token came back");
        assert_eq!(echo, "later\n");
        let again = exchange(&opts, b"again\n", T).await;
        assert!(is_limit_refusal(&again), "a second token appeared: {again:?}");
        assert_eq!(client_refused(&lab, "client1"), 2);
    });
    wait_idle(&lab);
}

/// A limited client must be told "closed before any reply" (exit 4 in
/// `tlb client`), not see a reset: the balancer should close the TLS
/// session cleanly (close_notify) and drain what the client already sent.
#[test]
fn limited_connection_is_reported_as_closed_before_reply() {
    let lab = limits_lab("max_connections = 1");
    let opts = lab.client(Some("client1")).expect("client options");
    smol::block_on(async {
        let (_, mut held) = within("connect", T, connect(&opts)).await.expect("connect");
        greeter(&within("greeting", T, read_line(&mut held)).await.expect("greeting"));
        for i in 0..20 {
            let r = exchange(&opts, b"over the limit\n", T).await;
            assert!(
                matches!(r, Err(ClientError::ClosedBeforeReply { .. })),
                "attempt {i}: {r:?}"
            );
        }
        within("close", T, held.close()).await.expect("close");
    });
    assert_eq!(totals(&lab, "echo").iter().sum::<u64>(), 1);
}

// ---------------------------------------------------------------------------
// 5. Upstream failures

#[test]
fn upstream_down_is_skipped_by_connect_retry() {
    let dead = format!("127.0.0.1:{}", free_port());
    let dead2 = dead.clone();
    let lab = lab(opts(3, true), move |p| {
        let mut u = vec![dead2];
        u.extend(ups(p));
        let mut s = base_config(p, "");
        s.push_str(&app("echo", p.listen, &[], &u));
        s.push_str(&client("client1", &["echo"], ""));
        s
    });
    let opts = lab.client(Some("client1")).expect("client options");
    for i in 0..8 {
        let msg = format!("try {i}\n");
        let (up, echo) = smol::block_on(greeted_exchange(&opts, &msg)).expect("every connection succeeds");
        assert!(["up1", "up2", "up3"].contains(&up.as_str()), "{up}");
        assert_eq!(echo, msg);
    }
    let g = lab.server.current();
    let dead_up = &g.app("echo").expect("app").balancer.upstreams()[0];
    assert_eq!(dead_up.name, dead);
    assert!(
        dead_up.health.snapshot().last_error.is_some(),
        "the dead upstream was never tried"
    );
    assert_eq!(dead_up.active(), 0);
    wait_idle(&lab);
}

#[test]
fn upstream_dying_mid_stream_affects_only_its_connection() {
    // Echoes the first chunk, then dies: RST (linger 0), listener gone.
    let (dying, dying_thread) = one_shot_upstream(|mut s| {
        let mut buf = [0u8; 1024];
        if let Ok(n) = s.read(&mut buf) {
            let _ = s.write_all(&buf[..n]);
        }
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    });
    let lab = lab(opts(1, true), move |p| {
        let mut s = base_config(p, "");
        s.push_str(&app(
            "echo",
            p.listen,
            &[],
            &[dying.to_string(), p.upstreams[0].to_string()],
        ));
        s.push_str(&client("client1", &["echo"], ""));
        s
    });
    let opts = lab.client(Some("client1")).expect("client options");
    smol::block_on(async {
        // Two held connections: least-connections puts one on each upstream.
        let (_, mut c1) = within("connect", T, connect(&opts)).await.expect("connect 1");
        wait_until("first connection placed", T, || {
            actives(&lab, "echo").iter().sum::<u32>() == 1
        });
        let (_, mut c2) = within("connect", T, connect(&opts)).await.expect("connect 2");
        wait_until("second connection placed", T, || actives(&lab, "echo") == vec![1, 1]);

        let mut on_dying = None;
        let mut on_healthy = None;
        for c in [&mut c1, &mut c2] {
            within("write", T, c.write_all(b"first\n")).await.expect("write");
            within("flush", T, c.flush()).await.expect("flush");
            let line = within("first line", T, read_line(c)).await.expect("first line");
            if line == "first\n" {
                on_dying = Some(c);
            } else {
                assert_eq!(greeter(&line), "up1");
                assert_eq!(within("echo", T, read_line(c)).await.expect("echo"), "first\n");
                on_healthy = Some(c);
            }
        }
        let dying_conn = on_dying.expect("a connection on the dying upstream");
        let healthy = on_healthy.expect("a connection on the healthy upstream");

        // The dying upstream's client sees the failure: no clean close_notify.
        let mut rest = Vec::new();
        let r = within("failure seen", T, dying_conn.read_to_end(&mut rest)).await;
        assert!(
            r.is_err(),
            "expected an error (EOF without close_notify), got {r:?} {rest:?}"
        );

        // The other connection keeps working.
        within("write", T, healthy.write_all(b"still here\n"))
            .await
            .expect("write");
        within("flush", T, healthy.flush()).await.expect("flush");
        assert_eq!(
            within("echo", T, read_line(healthy)).await.expect("echo"),
            "still here\n"
        );

        // New connections go to the healthy upstream.
        for i in 0..3 {
            let msg = format!("new {i}\n");
            let (up, echo) = greeted_exchange(&opts, &msg).await.expect("new connection");
            assert_eq!(up, "up1");
            assert_eq!(echo, msg);
        }
        within("close", T, healthy.close()).await.expect("close");
    });
    dying_thread.join().expect("dying upstream thread");
    wait_idle(&lab);
}

// ---------------------------------------------------------------------------
// 6. Half-close, both directions

#[test]
fn client_half_close_still_gets_the_full_echo() {
    let lab = standard_lab(3);
    let opts = lab.client(Some("client1")).expect("client options");
    smol::block_on(async {
        let (_, mut tls) = within("connect", T, connect(&opts)).await.expect("connect");
        within("write", T, tls.write_all(b"one\ntwo\nthree\n"))
            .await
            .expect("write");
        // close_notify + FIN: our write side is done, the read side is not.
        within("half-close", T, tls.close()).await.expect("half-close");
        let mut out = Vec::new();
        within("read to EOF", T, tls.read_to_end(&mut out))
            .await
            .expect("clean EOF");
        let text = String::from_utf8(out).expect("utf-8");
        let (greeting, echo) = text.split_once('\n').expect("greeting");
        greeter(greeting);
        assert_eq!(echo, "one\ntwo\nthree\n");
    });
    wait_idle(&lab);
}

#[test]
fn upstream_half_close_reaches_the_client_which_can_still_write() {
    let (tx, rx) = mpsc::channel::<std::io::Result<Vec<u8>>>();
    let (addr, thread) = one_shot_upstream(move |mut s| {
        let res = (|| {
            s.write_all(b"bye\n")?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut got = Vec::new();
            s.read_to_end(&mut got)?;
            Ok(got)
        })();
        let _ = tx.send(res);
    });
    let lab = lab(opts(1, true), move |p| {
        let mut s = base_config(p, "");
        s.push_str(&app("echo", p.listen, &[], &[addr.to_string()]));
        s.push_str(&client("client1", &["echo"], ""));
        s
    });
    let opts = lab.client(Some("client1")).expect("client options");
    smol::block_on(async {
        let (_, mut tls) = within("connect", T, connect(&opts)).await.expect("connect");
        assert_eq!(within("bye", T, read_line(&mut tls)).await.expect("bye"), "bye\n");
        let mut buf = [0u8; 16];
        let n = within("EOF", T, tls.read(&mut buf))
            .await
            .expect("clean EOF (close_notify)");
        assert_eq!(n, 0, "expected EOF, got {:?}", &buf[..n]);
        // Our direction is still open.
        within("write after EOF", T, tls.write_all(b"after\n"))
            .await
            .expect("write after EOF");
        within("flush", T, tls.flush()).await.expect("flush");
        within("close", T, tls.close()).await.expect("close");
    });
    let got = rx
        .recv_timeout(T)
        .expect("the upstream reported")
        .expect("upstream read");
    assert_eq!(got, b"after\n", "what the upstream received after its half-close");
    thread.join().expect("upstream thread");
    wait_idle(&lab);
}

// ---------------------------------------------------------------------------
// 7. Bulk data

#[test]
fn eight_mib_random_payload_is_intact() {
    const SIZE: usize = 8 * 1024 * 1024;
    let lab = lab(opts(3, false), |p| standard_config(p, "", ""));
    let mut data = vec![0u8; SIZE];
    aws_lc_rs::rand::fill(&mut data).expect("random bytes");
    let opts = lab.client(Some("client1")).expect("client options");
    let out = smol::block_on(async {
        let (_, tls) = within("connect", T, connect(&opts)).await.expect("connect");
        let (mut r, mut w) = futures_lite::io::split(tls);
        let write = async {
            for chunk in data.chunks(64 * 1024) {
                w.write_all(chunk).await?;
            }
            w.close().await
        };
        let read = async {
            let mut out = Vec::with_capacity(SIZE);
            r.read_to_end(&mut out).await.map(|_| out)
        };
        let (wrote, read) = within("8 MiB through the balancer", Duration::from_secs(120), async {
            futures_lite::future::zip(write, read).await
        })
        .await;
        wrote.expect("writing");
        read.expect("reading")
    });
    assert_eq!(out.len(), SIZE, "byte count");
    assert_eq!(sha256(&out), sha256(&data), "payload changed in transit");
    wait_idle(&lab);
}

// ---------------------------------------------------------------------------
// 8. SNI selects the app on a shared listener

/// Verifies the server certificate as rustls would for `localhost`,
/// whatever SNI the client sends.
///
/// The lab's server certificate only names localhost/127.0.0.1/::1, and
/// rustls always verifies against the name it sends as SNI; to send SNI
/// `a.test` to that server this test client checks the chain and the name
/// `localhost` instead (still a full WebPKI verification against the lab CA).
#[derive(Debug)]
struct VerifyAsLocalhost(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for VerifyAsLocalhost {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let localhost = ServerName::try_from("localhost").expect("a DNS name");
        self.0
            .verify_server_cert(end_entity, intermediates, &localhost, ocsp_response, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Client options sending SNI `sni`, verifying the lab server as localhost.
fn sni_client(lab: &Lab, client: &str, sni: &str) -> ClientOptions {
    let provider = provider();
    let roots = Arc::new(load_roots(&lab.pki.ca_cert()).expect("lab CA"));
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .expect("server verifier");
    let (c, k) = lab.pki.client(client);
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(VerifyAsLocalhost(inner)))
        .with_client_auth_cert(load_certs(&c).expect("cert"), load_key(&k).expect("key"))
        .expect("client auth");
    let mut o = lab.client_with(Some(client), sni, false).expect("client options");
    o.tls = Arc::new(cfg);
    o
}

/// Apps `a` (SNI a.test -> up1) and `b` (SNI b.test -> up2, up3) on one
/// listener with no default app; client1 on both, client2 on `a` only.
fn sni_lab() -> Lab {
    lab(opts(3, true), |p| {
        let u = ups(p);
        let mut s = base_config(p, "");
        s.push_str(&app("a", p.listen, &["a.test"], &u[..1]));
        s.push_str(&app("b", p.listen, &["b.test"], &u[1..]));
        s.push_str(&client("client1", &["a", "b"], ""));
        s.push_str(&client("client2", &["a"], ""));
        s
    })
}

#[test]
fn sni_selects_between_two_apps_on_one_listener() {
    let lab = sni_lab();
    let a = sni_client(&lab, "client1", "a.test");
    let b = sni_client(&lab, "client1", "B.Test");
    smol::block_on(async {
        for i in 0..3 {
            let msg = format!("to a {i}\n");
            let (up, echo) = greeted_exchange(&a, &msg).await.expect("app a");
            assert_eq!(up, "up1", "SNI a.test must reach app a (up1 only)");
            assert_eq!(echo, msg);
        }
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..4 {
            let msg = format!("to b {i}\n");
            let (up, echo) = greeted_exchange(&b, &msg).await.expect("app b");
            assert!(
                up == "up2" || up == "up3",
                "SNI b.test must reach app b (up2/up3), got {up}"
            );
            assert_eq!(echo, msg);
            seen.insert(up);
        }
        assert_eq!(seen.len(), 2, "app b's connections spread over both its upstreams");
    });
    assert_eq!(totals(&lab, "a"), vec![3]);
    assert_eq!(totals(&lab, "b").iter().sum::<u64>(), 4);
}

#[test]
fn sni_authorization_is_per_app() {
    let lab = sni_lab();
    let result = smol::block_on(exchange(&sni_client(&lab, "client2", "b.test"), b"hello\n", T));
    assert_refused(result, "access_denied");
    // client2 is fine on its own app.
    smol::block_on(greeted_exchange(&sni_client(&lab, "client2", "a.test"), "hello\n")).expect("client2 on a");
    assert_eq!(totals(&lab, "b").iter().sum::<u64>(), 0);
}

#[test]
fn unknown_sni_without_default_app_is_refused() {
    let lab = sni_lab();
    for sni in ["c.test", "localhost"] {
        let opts = sni_client(&lab, "client1", sni);
        let result = smol::block_on(within("handshake", T, connect(&opts))).map(|_| ());
        assert_refused(result, "access_denied");
    }
    assert_eq!(
        totals(&lab, "a").iter().sum::<u64>() + totals(&lab, "b").iter().sum::<u64>(),
        0
    );
}

// ---------------------------------------------------------------------------
// TLS 1.2 when allowed, and SPKI pins

#[test]
fn tls12_client_accepted_when_min_version_is_1_2() {
    let lab = lab(opts(3, true), |p| {
        standard_config(p, "", "").replacen("[tls]\n", "[tls]\nmin_version = \"1.2\"\n", 1)
    });
    let opts = tls12_only(&lab, "client1");
    let (greeting, echo) = smol::block_on(within("TLS 1.2 exchange", T, greeted_exchange(&opts, "over 1.2\n")))
        .expect("a TLS 1.2 client is served when min_version = 1.2");
    assert!(greeting.starts_with("up"), "{greeting}");
    assert_eq!(echo, "over 1.2\n");
    // Authorization still applies on TLS 1.2.
    let denied = tls12_only(&lab, "client4");
    let result = smol::block_on(within("TLS 1.2 exchange", T, exchange(&denied, b"x\n", T))).map(|_| ());
    assert_refused(result, "access_denied");
}

#[test]
fn spki_pin_admits_the_pinned_key_and_refuses_another() {
    let lab = lab(opts(3, true), |p| {
        let pin_of = |name: &str| {
            let der = tlb::core::pki::read_cert_der(&p.pki_dir.join("clients").join(format!("{name}.crt")))
                .expect("client cert");
            hex::encode(tlb::core::tls::identity::spki_sha256(&der).expect("spki"))
        };
        let mut s = base_config(p, "");
        s.push_str(&app("echo", p.listen, &[], &ups(p)));
        // client1 is pinned to its own key, client2 to client3's key.
        s.push_str(&client(
            "client1",
            &["echo"],
            &format!("spki_sha256 = \"{}\"", pin_of("client1")),
        ));
        s.push_str(&client(
            "client2",
            &["echo"],
            &format!("spki_sha256 = \"{}\"", pin_of("client3")),
        ));
        s
    });
    let ok = lab.client(Some("client1")).expect("client options");
    let (_, echo) =
        smol::block_on(within("pinned exchange", T, greeted_exchange(&ok, "pinned\n"))).expect("pin matches");
    assert_eq!(echo, "pinned\n");
    let before = totals(&lab, "echo").iter().sum::<u64>();
    let bad = lab.client(Some("client2")).expect("client options");
    let result = smol::block_on(within("mismatched pin", T, exchange(&bad, b"x\n", T))).map(|_| ());
    assert_refused(result, "access_denied");
    assert_eq!(
        totals(&lab, "echo").iter().sum::<u64>(),
        before,
        "a refused client reached an upstream"
    );
}
