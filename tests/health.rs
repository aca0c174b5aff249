//! Health checks and circuit breaking, through real sockets: upstreams are
//! test-owned echo servers that are killed and restarted on the same port;
//! states are read from `/status` over plain HTTP and from the library.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use tlb::core::config::writer::{AppSection, HealthSection};
use tlb::core::pool::policy::{COOLDOWN_BASE, PASSIVE_FALL, Transition, cooldown};
use tlb::core::rt::clock::{self, Clock, StoppedClock};
use tlb::core::tools::client::ClientError;
use tlb::core::tools::lab::{Lab, LabPaths};

/// `[app.health]`: active checks, with `send`/`expect` when `probe` is set.
fn health(interval: &str, timeout: &str, rise: u32, fall: u32, probe: Option<(&str, &str)>) -> Option<HealthSection> {
    let ms = |s: &str| humantime::parse_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    Some(HealthSection {
        interval: Some(ms(interval)),
        timeout: Some(ms(timeout)),
        rise: Some(rise),
        fall: Some(fall),
        send: probe.map(|(send, _)| send.to_string()),
        expect: probe.map(|(_, expect)| expect.to_string()),
    })
}

/// A lab (no lab upstreams, admin on) whose app `echo` balances over `upstreams`.
fn lab_over(upstreams: &[SocketAddr], timeouts: &str, health: Option<HealthSection>) -> Lab {
    lab_on(clock::system(), upstreams, timeouts, health)
}

/// [`lab_over`] on `clock`.
fn lab_on(clock: Arc<dyn Clock>, upstreams: &[SocketAddr], timeouts: &str, health: Option<HealthSection>) -> Lab {
    lab(
        tlb::core::tools::lab::LabOptions {
            admin: true,
            clock,
            ..opts(0, true)
        },
        |p| config_over(p, upstreams, timeouts, health),
    )
}

/// The config of [`lab_on`]: app `echo` over `upstreams`, client1..3 with
/// limits out of the way.
fn config_over(p: &LabPaths, upstreams: &[SocketAddr], timeouts: &str, health: Option<HealthSection>) -> String {
    let ups: Vec<String> = upstreams.iter().map(|a| a.to_string()).collect();
    let mut w = base(p, timeouts).app(AppSection {
        health,
        ..app_section("echo", p.listen, &[], &ups)
    });
    for c in ["client1", "client2", "client3"] {
        w = w.client(client_section(
            c,
            &["echo"],
            "max_connections = 100\nconnection_rate = 1000\nburst = 1000",
        ));
    }
    w.render()
}

fn admin(lab: &Lab) -> SocketAddr {
    lab.paths.admin.expect("the lab has an admin listener")
}

fn state(lab: &Lab, up: SocketAddr) -> String {
    upstream_status(admin(lab), "echo", &up.to_string())["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Which upstreams (by greeting name) answer `n` fresh connections.
fn greeters(lab: &Lab, n: usize) -> Vec<String> {
    let opts = lab.client(Some("client1")).expect("client options");
    (0..n)
        .map(|i| {
            let (who, rest) = smol::block_on(greeted_exchange(&opts, &format!("hello {i}\n")))
                .unwrap_or_else(|e| panic!("connection {i} through the balancer: {e}"));
            assert_eq!(rest, format!("hello {i}\n"));
            who
        })
        .collect()
}

fn upstream(
    g: &tlb::core::proxy::generation::Generation,
    addr: SocketAddr,
) -> &std::sync::Arc<tlb::core::pool::balancer::Upstream> {
    g.app("echo")
        .and_then(|a| a.balancer.upstreams().iter().find(|u| u.addr == addr))
        .expect("upstream in the config")
}

#[test]
fn killed_upstream_is_ejected_within_interval_times_fall_and_returns_after_rise() {
    let u1 = Echo::start("127.0.0.1:0".parse().unwrap(), "up1");
    let mut u2 = Echo::start("127.0.0.1:0".parse().unwrap(), "up2");
    let u3 = Echo::start("127.0.0.1:0".parse().unwrap(), "up3");
    let (interval, timeout, rise, fall) = (Duration::from_millis(200), Duration::from_millis(100), 2u32, 3u32);
    let lab = lab_over(
        &[u1.addr, u2.addr, u3.addr],
        "",
        health("200ms", "100ms", rise, fall, None),
    );
    let adm = admin(&lab);
    assert_eq!(http_get(adm, "/healthz"), (200, "ok\n".to_string()));
    wait_until("first checks done", T, || {
        upstream_status(adm, "echo", &u2.addr.to_string())["last_check"]["ok"] == true
    });
    assert_eq!(state(&lab, u2.addr), "up");
    let spread = greeters(&lab, 6);
    assert!(
        spread.iter().any(|g| g == "up2"),
        "up2 served nothing while up: {spread:?}"
    );

    // Kill up2: ejected within interval × fall (+ timeout), measured.
    let addr2 = u2.addr;
    u2.kill();
    let killed = Instant::now();
    wait_until("up2 ejected", T, || state(&lab, addr2) == "down");
    let took = killed.elapsed();
    let bound = interval * fall + timeout;
    eprintln!("up2 ejected {took:?} after the kill (bound {bound:?} + scheduling slack)");
    // Wall time on a loaded machine gets a generous margin; the count below is exact.
    assert!(
        took <= bound + Duration::from_secs(1),
        "ejection took {took:?}, bound {bound:?}"
    );
    let st = upstream_status(adm, "echo", &addr2.to_string());
    // The live count goes on rising while DOWN (each failed check counts),
    // so it may be past `fall` by now; the count at the ejection is the one
    // its transition reported, recorded once and never changed after.
    assert!(st["consecutive_failures"].as_u64() >= Some(u64::from(fall)), "{st}");
    let snap = upstream(&lab.server.current(), addr2).health.snapshot();
    assert!(
        matches!(&snap.last_transition, Some(Transition::Down { failures, .. }) if *failures == fall),
        "ejected after exactly `fall` failed checks: {snap:?}"
    );
    assert_eq!(st["last_check"]["ok"], false, "{st}");
    assert!(
        st["last_error"].as_str().unwrap_or_default().contains("refused"),
        "{st}"
    );
    assert!(st["last_change"].is_string(), "{st}");

    // Ejected: no new connections, and no connection attempt either.
    let g = lab.server.current();
    let (total_before, passive_before) = {
        let u = upstream(&g, addr2);
        (u.total(), u.health.snapshot().passive_failures)
    };
    let spread = greeters(&lab, 12);
    assert!(
        spread.iter().all(|g| g != "up2"),
        "an ejected upstream got a connection: {spread:?}"
    );
    assert!(
        spread.iter().any(|g| g == "up1") && spread.iter().any(|g| g == "up3"),
        "{spread:?}"
    );
    assert_eq!(upstream(&g, addr2).total(), total_before, "ejected upstream was picked");
    assert_eq!(upstream(&g, addr2).health.snapshot().passive_failures, passive_before);

    // Restart it on the same port: back after `rise` good checks.
    let ok_before = upstream(&g, addr2).health.snapshot().checks_ok;
    let _u2 = Echo::start(addr2, "up2");
    let restarted = Instant::now();
    wait_until("up2 back", T, || state(&lab, addr2) == "up");
    let snap = upstream(&g, addr2).health.snapshot();
    eprintln!("up2 back {:?} after the restart", restarted.elapsed());
    assert!(
        snap.checks_ok >= ok_before + u64::from(rise),
        "came back after {} good checks, rise is {rise}",
        snap.checks_ok - ok_before
    );
    wait_until("up2 serves again", T, || greeters(&lab, 3).iter().any(|g| g == "up2"));
    let (_, metrics) = http_get(adm, "/metrics");
    let labels = format!("app=\"echo\",upstream=\"{addr2}\"");
    assert_eq!(metric(&metrics, "tlb_upstream_up", &labels), Some(1.0), "{metrics}");
    assert!(
        metric(
            &metrics,
            "tlb_upstream_health_checks_total",
            &format!("{labels},result=\"failed\"")
        ) >= Some(3.0)
    );
    drop((u1, u3));
}

#[test]
fn failing_send_expect_ejects_although_tcp_connects() {
    let good = Echo::start("127.0.0.1:0".parse().unwrap(), "good");
    // Accepts TCP connections (the kernel completes them) but never answers.
    let mute = TcpListener::bind("127.0.0.1:0").expect("binding a mute upstream");
    let mute_addr = mute.local_addr().expect("addr");
    let lab = lab_over(
        &[good.addr, mute_addr],
        "",
        health("600ms", "500ms", 2, 2, Some(("ping\n", "ping"))),
    );
    wait_until("the mute upstream ejected", T, || state(&lab, mute_addr) == "down");
    let st = upstream_status(admin(&lab), "echo", &mute_addr.to_string());
    assert!(
        st["last_error"].as_str().unwrap_or_default().contains("expected reply"),
        "{st}"
    );
    // The good one answers the expect through its greeting + echo: stays up.
    assert_eq!(state(&lab, good.addr), "up");
    let spread = greeters(&lab, 4);
    assert!(spread.iter().all(|g| g == "good"), "{spread:?}");

    // Contrast: a plain TCP check finds the same mute upstream healthy.
    lab.reload(
        &std::fs::read_to_string(&lab.config_path)
            .expect("config")
            .replace("  send = \"ping\\n\"\n  expect = \"ping\"\n", ""),
    )
    .expect("reload");
    wait_until("the mute upstream back on TCP checks", T, || {
        state(&lab, mute_addr) == "up"
    });
    drop(mute);
}

#[test]
fn passive_only_refusals_open_the_circuit_and_a_half_open_trial_closes_it() {
    let good = Echo::start("127.0.0.1:0".parse().unwrap(), "good");
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // Cooldowns are over when the test advances the clock, never by themselves.
    let clock = StoppedClock::new();
    let lab = lab_on(clock.clone(), &[good.addr, dead], "", None);
    let g = lab.server.current();
    assert_eq!(g.app("echo").expect("app").balancer.policy().mode(), "passive");
    let snap = || upstream(&g, dead).health.snapshot();

    // Every client is served (the balancer retries the next upstream), while
    // the dead one collects passive failures until the circuit opens.
    wait_until("circuit open on the dead upstream", T, || {
        let spread = greeters(&lab, 2);
        assert!(spread.iter().all(|s| s == "good"), "{spread:?}");
        state(&lab, dead) == "down"
    });
    let opened = snap();
    // Exactly `fall` opened it; no trial since (the clock has not moved).
    assert_eq!(opened.passive_failures, u64::from(PASSIVE_FALL), "{opened:?}");
    assert_eq!(opened.retry_in, Some(COOLDOWN_BASE), "a half-open retry is scheduled");
    let st = upstream_status(admin(&lab), "echo", &dead.to_string());
    assert_eq!(st["retry_in_ms"], 1000, "{st}");

    // Open: no attempts on it until the cooldown is over, to the millisecond.
    let spread = greeters(&lab, 3);
    assert!(spread.iter().all(|s| s == "good"));
    clock.advance(COOLDOWN_BASE - Duration::from_millis(1));
    let spread = greeters(&lab, 3);
    assert!(spread.iter().all(|s| s == "good"));
    let before = snap();
    assert_eq!(before.passive_failures, opened.passive_failures, "{before:?}");
    assert_eq!(before.retry_in, Some(Duration::from_millis(1)), "{before:?}");

    // Over, the upstream still dead: the next client is the one trial (then
    // served by the retry), which fails and doubles the cooldown.
    clock.advance(Duration::from_millis(1));
    assert_eq!(greeters(&lab, 1), ["good"]);
    let failed = snap();
    assert_eq!(failed.passive_failures, opened.passive_failures + 1, "{failed:?}");
    assert_eq!(failed.retry_in, Some(cooldown(1)), "{failed:?}");
    assert!(greeters(&lab, 3).iter().all(|s| s == "good"));
    assert_eq!(
        snap().passive_failures,
        failed.passive_failures,
        "one trial per cooldown"
    );

    // The upstream comes back: still DOWN until the cooldown is over; then
    // the very next client is the trial, and it closes the circuit.
    let _revived = Echo::start(dead, "revived");
    assert!(greeters(&lab, 2).iter().all(|s| s == "good"));
    assert_eq!(state(&lab, dead), "down");
    clock.advance(cooldown(1));
    assert_eq!(greeters(&lab, 1), ["revived"], "the due trial goes first");
    assert_eq!(state(&lab, dead), "up", "half-open trial closes the circuit");
    assert!(
        matches!(snap().last_transition, Some(Transition::Up { .. })),
        "{:?}",
        snap()
    );
    wait_until("the revived upstream serves", T, || {
        greeters(&lab, 2).iter().any(|g| g == "revived")
    });
}

#[test]
fn all_upstreams_down_refuses_at_once_not_after_the_connect_timeout() {
    // Mute upstreams: a connect would succeed and then hang, so a quick
    // refusal proves nothing was tried.
    let m1 = TcpListener::bind("127.0.0.1:0").expect("bind");
    let m2 = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addrs = [m1.local_addr().expect("addr"), m2.local_addr().expect("addr")];
    let lab = lab_over(
        &addrs,
        "connect = \"5s\"",
        health("100ms", "50ms", 1, 1, Some(("ping\n", "ping"))),
    );
    for a in addrs {
        wait_until("mute upstream ejected", T, || state(&lab, a) == "down");
    }
    let opts = lab.client(Some("client1")).expect("client options");
    let before = lab
        .server
        .metrics
        .refused_for(tlb::core::proxy::outcome::Refusal::NoHealthyUpstream);
    let started = Instant::now();
    let r = smol::block_on(tlb::core::tools::client::exchange(&opts, b"hello\n", T));
    let took = started.elapsed();
    assert!(matches!(r, Err(ClientError::ClosedBeforeReply { .. })), "{r:?}");
    assert!(
        took < Duration::from_secs(1),
        "refusal took {took:?} (connect timeout 5 s)"
    );
    assert_eq!(
        lab.server
            .metrics
            .refused_for(tlb::core::proxy::outcome::Refusal::NoHealthyUpstream),
        before + 1
    );
    let g = lab.server.current();
    for a in addrs {
        assert_eq!(upstream(&g, a).total(), 0, "a DOWN upstream was tried");
    }
    drop((m1, m2));
}

/// An upstream that accepts and resets at once (like a proxy whose backend
/// is gone); stops when dropped.
struct Resetter {
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Resetter {
    fn start() -> Resetter {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for s in l.incoming() {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                if let Ok(s) = s {
                    // After the balancer's connect completed (so this is not a
                    // connect failure), before any byte.
                    std::thread::sleep(Duration::from_millis(50));
                    let sock = socket2::Socket::from(s);
                    let _ = sock.set_linger(Some(Duration::ZERO)); // close = RST
                }
            }
        });
        Resetter {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Resetter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = std::net::TcpStream::connect_timeout(&self.addr, T); // wakes the accept
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn passive_resets_before_any_byte_open_the_circuit_although_tcp_accepts() {
    let good = Echo::start("127.0.0.1:0".parse().unwrap(), "good");
    let bad = Resetter::start();
    let lab = lab_over(&[good.addr, bad.addr], "", None);
    let opts = lab.client(Some("client1")).expect("client options");
    // Clients sent to the resetter see a broken connection; keep going
    // until the circuit opens (3 resets), bounded.
    wait_until("circuit open on the resetting upstream", T, || {
        let _ = smol::block_on(tlb::core::tools::client::exchange(&opts, b"hello\n", T));
        state(&lab, bad.addr) == "down"
    });
    let st = upstream_status(admin(&lab), "echo", &bad.addr.to_string());
    assert_eq!(st["last_error"], "reset before any byte", "{st}");
    // Accepted TCP connections were counted as established, yet it is DOWN.
    assert!(st["connections"].as_u64() >= Some(3), "{st}");
    let spread = greeters(&lab, 4);
    assert!(spread.iter().all(|g| g == "good"), "{spread:?}");
}

#[test]
fn traffic_does_not_mask_a_failing_send_expect_check() {
    // The echo answers real traffic fine but never says "pong".
    let up = Echo::start("127.0.0.1:0".parse().unwrap(), "up1");
    let lab = lab_over(&[up.addr], "", health("300ms", "250ms", 1, 3, Some(("ping\n", "pong"))));
    let opts = lab.client(Some("client1")).expect("client options");
    // A connection established before the ejection must be left alone.
    let mut held = smol::block_on(async {
        let (_, mut tls) = tlb::core::tools::client::connect(&opts).await.expect("connect");
        let line = read_line(&mut tls).await.expect("greeting");
        assert_eq!(greeter(&line), "up1");
        tls
    });
    let mut served = 0;
    // Connections all along (several per check interval), each answered.
    wait_until("ejected despite successful traffic", T, || {
        if smol::block_on(greeted_exchange(&opts, "hi\n")).is_ok() {
            served += 1;
        }
        state(&lab, up.addr) == "down"
    });
    assert!(served >= 3, "only {served} connections were served before the ejection");
    let st = upstream_status(admin(&lab), "echo", &up.addr.to_string());
    assert!(
        st["last_error"].as_str().unwrap_or_default().contains("expected reply"),
        "{st}"
    );
    // Ejected: new clients are refused at once (its only upstream is DOWN)...
    let r = smol::block_on(tlb::core::tools::client::exchange(&opts, b"new\n", T));
    assert!(matches!(r, Err(ClientError::ClosedBeforeReply { .. })), "{r:?}");
    // ...while the established connection keeps working.
    smol::block_on(async {
        use futures_lite::{AsyncReadExt, AsyncWriteExt};
        held.write_all(b"still here\n")
            .await
            .expect("write on the held connection");
        held.flush().await.expect("flush");
        let mut buf = [0u8; 11];
        within("echo on the held connection", T, held.read_exact(&mut buf))
            .await
            .expect("read on the held connection");
        assert_eq!(&buf, b"still here\n");
    });
}

#[test]
fn reload_without_health_table_stops_the_checks_and_keeps_the_state() {
    let up = Echo::start("127.0.0.1:0".parse().unwrap(), "up1");
    let lab = lab_over(&[up.addr], "", health("100ms", "80ms", 1, 2, None));
    let g = lab.server.current();
    let checks = |g: &tlb::core::proxy::generation::Generation| {
        let s = upstream(g, up.addr).health.snapshot();
        s.checks_ok + s.checks_failed
    };
    wait_until("checks running", T, || checks(&g) >= 3);
    lab.reload(&config_over(&lab.paths, &[up.addr], "", None))
        .expect("reload");
    let g2 = lab.server.current();
    assert_eq!(g2.app("echo").expect("app").balancer.policy().mode(), "passive");
    // The upstream state is the same object across the reload.
    assert!(std::sync::Arc::ptr_eq(upstream(&g, up.addr), upstream(&g2, up.addr)));
    // Absence of checks can only be observed over time: 10 intervals.
    let after_reload = checks(&g2);
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        checks(&g2) <= after_reload + 1, // one check may have been in flight at the reload
        "checks still running after the reload: {after_reload} -> {}",
        checks(&g2)
    );
    assert!(greeters(&lab, 2).iter().all(|g| g == "up1"));
}
