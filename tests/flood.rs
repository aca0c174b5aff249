//! Flood resistance: the `[limits]` caps applied at accept, before any TLS
//! work (`max_handshakes_per_ip`, `max_handshakes`, `max_connections`), end
//! to end through a real balancer (`core::lab`) with real sockets on
//! 127.0.0.x and real mTLS.
//!
//! Distinct clients are played by distinct loopback source addresses
//! (127.0.0.2, .3, ...: Linux routes all of 127/8 to `lo`). Silent
//! connections (a TCP connect that never sends a ClientHello) are
//! handshakes in progress for as long as `timeouts.handshake` (10 s here)
//! allows; the caps must close the next connection at once instead.

use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use tlb::core::config::writer::GlobalLimitsSection;
use tlb::core::tools::lab::{Lab, LabOptions};

use crate::common::*;

/// A connection over a cap is closed at accept: well before this.
const AT_ONCE: Duration = Duration::from_secs(1);

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A lab with an admin endpoint, one echo upstream, app `echo` for
/// client1 and client2, `[limits]` = `limits`, a 10 s handshake timeout,
/// and `client1_extra` appended to client1's table.
fn flood_lab(limits: GlobalLimitsSection, client1_extra: &str) -> Lab {
    let opts = LabOptions {
        admin: true,
        ..opts(1, true)
    };
    lab(opts, |p| {
        base(p, "handshake = \"10s\"\n")
            .limits(limits)
            .app(app_section("echo", p.listen, &[], &ups(p)))
            .client(client_section("client1", &["echo"], client1_extra))
            .client(client_section("client2", &["echo"], ""))
            .render()
    })
}

/// `[limits]` with the given caps (unset ones at their defaults).
fn caps(
    max_connections: Option<u32>,
    max_handshakes: Option<u32>,
    max_handshakes_per_ip: Option<u32>,
) -> GlobalLimitsSection {
    GlobalLimitsSection {
        max_connections,
        max_handshakes,
        max_handshakes_per_ip,
    }
}

fn handshakes_active(lab: &Lab) -> u64 {
    lab.server.metrics.handshakes_active.load(Ordering::Relaxed)
}

fn connections_active(lab: &Lab) -> u64 {
    lab.server.metrics.active.load(Ordering::Relaxed)
}

fn preauth_refused(lab: &Lab, reason: &str) -> f64 {
    metric(
        &scrape(lab),
        "tlb_preauth_refused_total",
        &format!("reason=\"{reason}\""),
    )
    .unwrap_or_else(|| panic!("no tlb_preauth_refused_total{{reason=\"{reason}\"}} in /metrics"))
}

/// `n` silent TCP connections from `src`, and a wait until the balancer
/// counts `expect_handshakes` handshakes in progress (so every one of them
/// holds its slot before the test goes on).
fn silent_from(lab: &Lab, src: &[IpAddr], expect_handshakes: u64) -> Vec<TcpStream> {
    let conns: Vec<TcpStream> = src.iter().map(|&s| tcp_from(s, lab.addr())).collect();
    wait_until("the silent connections hold their handshake slots", T, || {
        handshakes_active(lab) == expect_handshakes
    });
    conns
}

/// Sends `msg` from `src` through the balancer; asserts the greeting and echo.
async fn assert_echo_from(src: IpAddr, opts: &tlb::core::tools::client::ClientOptions, msg: &str) {
    let reply = exchange_from(src, opts, msg.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("exchange from {src}: {e}"));
    let text = String::from_utf8(reply).expect("utf-8 reply");
    let (greeting, echo) = text.split_once('\n').unwrap_or((&text, ""));
    assert_eq!(greeter(greeting), "up1", "{text:?}");
    assert_eq!(echo, msg);
}

// ---------------------------------------------------------------------------
// 1. max_handshakes_per_ip

/// Old code (9d5235e): there is no `[limits]` table (the config is
/// refused as an unknown key) and no cap: the 9th silent connection would
/// be held open until the handshake timeout instead of closed at once.
#[test]
fn per_ip_cap_closes_the_next_silent_connection_and_spares_other_sources() {
    let lab = flood_lab(caps(None, Some(100), Some(8)), "");
    let opts = lab.client(Some("client1")).expect("client options");
    let flood = silent_from(&lab, &[ip(1); 8], 8);

    // The 9th from the same address: closed at accept, no TLS byte sent.
    let start = Instant::now();
    let mut ninth = tcp_from(ip(1), lab.addr());
    let took = assert_closed_silently("the 9th connection from 127.0.0.1", &mut ninth, start, T);
    assert!(
        took < AT_ONCE,
        "the 9th connection was closed after {took:?}, not at once"
    );
    assert_eq!(handshakes_active(&lab), 8, "the refused one took a handshake slot");
    assert!(preauth_refused(&lab, "max_handshakes_per_ip") >= 1.0);
    assert_eq!(preauth_refused(&lab, "max_handshakes"), 0.0);
    assert_eq!(preauth_refused(&lab, "max_connections"), 0.0);

    // Another source address is not affected while the flood holds.
    smol::block_on(assert_echo_from(ip(2), &opts, "from 127.0.0.2\n"));
    assert_eq!(handshakes_active(&lab), 8, "the flood no longer holds its slots");

    // The flood goes away: its slots are released, 127.0.0.1 is admitted again.
    drop(flood);
    drop(ninth);
    wait_until("the silent connections' handshake slots released", T, || {
        handshakes_active(&lab) == 0
    });
    smol::block_on(assert_echo_from(ip(1), &opts, "from 127.0.0.1 again\n"));
    // Nothing was held by the refused connection: all back to zero.
    wait_until("every connection slot released", T, || connections_active(&lab) == 0);
}

// ---------------------------------------------------------------------------
// 2. max_handshakes

/// Old code (9d5235e): no `[limits]` table (config refused) and no global
/// cap on handshakes in progress: the 4th silent connection would be held.
#[test]
fn global_handshake_cap_applies_across_source_addresses() {
    let lab = flood_lab(caps(None, Some(3), Some(64)), "");
    let opts = lab.client(Some("client1")).expect("client options");
    let flood = silent_from(&lab, &[ip(3), ip(4), ip(5)], 3);

    let start = Instant::now();
    let mut fourth = tcp_from(ip(6), lab.addr());
    let took = assert_closed_silently("the 4th handshake (from 127.0.0.6)", &mut fourth, start, T);
    assert!(
        took < AT_ONCE,
        "the 4th connection was closed after {took:?}, not at once"
    );
    // A real client from yet another address is refused the same way (no TLS alert: no TLS at all).
    let refused = smol::block_on(exchange_from(ip(7), &opts, b"hello\n"));
    assert!(
        !matches!(
            refused,
            Ok(_) | Err(tlb::core::tools::client::ClientError::TlsRefused { .. })
        ),
        "a client over max_handshakes: {refused:?}"
    );
    assert_eq!(handshakes_active(&lab), 3);
    assert!(preauth_refused(&lab, "max_handshakes") >= 2.0);
    assert_eq!(preauth_refused(&lab, "max_handshakes_per_ip"), 0.0);
    assert_eq!(preauth_refused(&lab, "max_connections"), 0.0);

    drop(flood);
    wait_until("the silent connections' handshake slots released", T, || {
        handshakes_active(&lab) == 0
    });
    smol::block_on(assert_echo_from(ip(6), &opts, "from 127.0.0.6 after the flood\n"));
}

// ---------------------------------------------------------------------------
// 3. max_connections

/// Old code (9d5235e): no `[limits]` table (config refused) and no global
/// connection cap before TLS: the third connection would be served.
#[test]
fn global_connection_cap_closes_before_tls_and_is_released() {
    let lab = flood_lab(caps(Some(2), None, None), "");
    let opts = lab.client(Some("client1")).expect("client options");
    smol::block_on(async {
        let mut held = Vec::new();
        for i in 0..2 {
            let mut tls = tls_from(ip(1), &opts).await.expect("a held connection");
            let line = within("greeting", T, read_line(&mut tls)).await.expect("greeting");
            assert_eq!(greeter(&line), "up1");
            let msg = format!("held {i}\n");
            within("write", T, tls.write_all(msg.as_bytes())).await.expect("write");
            within("flush", T, tls.flush()).await.expect("flush");
            assert_eq!(within("echo", T, read_line(&mut tls)).await.expect("echo"), msg);
            held.push(tls);
        }
        assert_eq!(connections_active(&lab), 2);
        assert_eq!(handshakes_active(&lab), 0);

        // The third (from any address): closed at accept, before TLS.
        for src in [ip(1), ip(8)] {
            let start = Instant::now();
            let mut third = tcp_from(src, lab.addr());
            let took = assert_closed_silently("a third connection", &mut third, start, T);
            assert!(
                took < AT_ONCE,
                "a third connection was closed after {took:?}, not at once"
            );
        }
        assert!(preauth_refused(&lab, "max_connections") >= 2.0);
        assert_eq!(preauth_refused(&lab, "max_handshakes"), 0.0);
        assert_eq!(preauth_refused(&lab, "max_handshakes_per_ip"), 0.0);
        assert_eq!(
            totals(&lab, "echo"),
            vec![2],
            "a refused connection reached the upstream"
        );

        // One held connection closes: its slot is released, a new one is admitted.
        let mut one = held.pop().expect("a held connection");
        within("close", T, one.close()).await.expect("close");
        let mut rest = Vec::new();
        within("EOF", T, one.read_to_end(&mut rest)).await.expect("clean EOF");
        assert!(rest.is_empty(), "{rest:?}");
        drop(one);
        wait_until("the closed connection's slot released", T, || {
            connections_active(&lab) == 1
        });
        assert_echo_from(ip(1), &opts, "after a release\n").await;
        drop(held);
    });
}

// ---------------------------------------------------------------------------
// 4. A completed handshake gives its handshake slot back

/// Ten established connections from one address, opened one after the
/// other and all held open, with `max_handshakes_per_ip = 2`: each frees
/// its handshake slot when its handshake completes, not when it closes.
///
/// Old code (9d5235e): no `[limits]` table (config refused). (Had the
/// slot been released only at close, the 3rd connection would be refused.)
#[test]
fn completed_handshakes_free_their_handshake_slot() {
    let lab = flood_lab(caps(None, Some(4), Some(2)), "max_connections = 20");
    let opts = lab.client(Some("client1")).expect("client options");
    smol::block_on(async {
        let mut held = Vec::new();
        for i in 0..10 {
            let mut tls = tls_from(ip(1), &opts)
                .await
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            // The greeting proves the balancer finished the handshake and relays.
            let line = within("greeting", T, read_line(&mut tls))
                .await
                .unwrap_or_else(|e| panic!("connection {i}: no greeting: {e}"));
            assert_eq!(greeter(&line), "up1", "connection {i}");
            held.push(tls);
        }
        assert_eq!(
            handshakes_active(&lab),
            0,
            "established connections still count as handshakes"
        );
        assert_eq!(connections_active(&lab), 10);
        for (i, tls) in held.iter_mut().enumerate() {
            let msg = format!("conn {i}\n");
            within("write", T, tls.write_all(msg.as_bytes())).await.expect("write");
            within("flush", T, tls.flush()).await.expect("flush");
            assert_eq!(within("echo", T, read_line(tls)).await.expect("echo"), msg);
        }
    });
    assert_eq!(preauth_refused(&lab, "max_handshakes_per_ip"), 0.0);
    assert_eq!(preauth_refused(&lab, "max_handshakes"), 0.0);
    wait_until("every connection slot released", T, || connections_active(&lab) == 0);
}
