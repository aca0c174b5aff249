//! Reloads that add and remove listeners, apps and upstreams (issue 14):
//! an added listener serves as soon as the reload returns; a removed one
//! stops accepting (its port refuses) while its open connections drain for
//! `[timeouts] drain`, then are closed (`app_removed`); a reload that
//! cannot bind an added address changes nothing; a removed app's open
//! connection is still closed at once if the same reload revokes its
//! certificate; a removed upstream stays in `/status` while it drains.
//!
//! Real sockets and mTLS on 127.0.0.1 (the added ports are picked free by
//! the kernel just before), waits by polling with deadlines.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use tlb::core::ops::admin;
use tlb::core::tls::gate::CloseReason;
use tlb::core::tools::client::{ClientStream, connect_to};
use tlb::core::tools::lab::{Lab, LabPaths};

use crate::common::*;

const DRAIN: Duration = Duration::from_secs(2);

/// App `echo` on the lab's listener; with `extra`, app `extra` on that
/// address too (over `extra_ups` of the lab's upstreams). client1 and
/// client2 may use both.
fn config(p: &LabPaths, extra: Option<SocketAddr>, extra_ups: usize) -> String {
    let mut w = base(p, &format!("drain = \"{}s\"", DRAIN.as_secs())).app(app_section("echo", p.listen, &[], &ups(p)));
    let mut apps = vec!["echo"];
    if let Some(addr) = extra {
        let ups: Vec<String> = ups(p).into_iter().take(extra_ups).collect();
        w = w.app(app_section("extra", addr, &[], &ups));
        apps.push("extra");
    }
    w.client(client_section("client1", &apps, ""))
        .client(client_section("client2", &apps, ""))
        .render()
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// An open connection through `addr` as `client`, past the upstream's greeting.
fn open_at(lab: &Lab, addr: SocketAddr, client: &str) -> (ClientStream, String) {
    let opts = lab.client_with(Some(client), "localhost", false).expect("options");
    smol::block_on(async {
        let mut s = within("connect", T, connect_to(addr, &opts))
            .await
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        let greeting = within("greeting", T, read_line(&mut s)).await.expect("greeting");
        (s, greeting)
    })
}

fn echo_on(s: &mut ClientStream, msg: &str) -> std::io::Result<String> {
    smol::block_on(within("echo", T, async {
        s.write_all(msg.as_bytes()).await?;
        s.flush().await?;
        read_line(s).await
    }))
}

/// Waits (at most `limit`) until the balancer closes `s`.
fn wait_closed(s: &mut ClientStream, limit: Duration) {
    smol::block_on(async {
        let mut buf = [0u8; 64];
        loop {
            match tlb::core::rt::timeout(limit, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => continue,
                Err(_) => panic!("connection still open after {limit:?}"),
            }
        }
    });
}

fn refuses(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
}

fn handed(lab: &Lab) -> Vec<SocketAddr> {
    let sockets = lab.server.listening_sockets().expect("copies of the listeners");
    sockets.iter().map(|l| l.local_addr().expect("address")).collect()
}

fn draining(lab: &Lab) -> Vec<serde_json::Value> {
    let status = serde_json::to_value(admin::status(&lab.server)).expect("status as JSON");
    status["draining_upstreams"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_reload_adds_a_listener_that_serves_at_once_and_removes_one_whose_connections_drain() {
    let lab = lab(opts(2, true), |p| config(p, None, 0));
    let extra = free_addr();
    assert!(refuses(extra), "{extra} is in use before the reload");

    lab.reload(&config(&lab.paths, Some(extra), 1))
        .expect("a reload adding a listener");
    // Reachable as soon as the reload returned (the socket is bound by then).
    let (mut held, greeting) = open_at(&lab, extra, "client1");
    assert!(greeting.starts_with("up1 "), "app extra reaches up1: {greeting}");
    assert_eq!(echo_on(&mut held, "first\n").expect("echo"), "first\n");
    wait_until("an upgrade would be handed the new listener", T, || {
        handed(&lab).contains(&extra)
    });

    let removed_at = Instant::now();
    lab.reload(&config(&lab.paths, None, 0))
        .expect("a reload removing the listener");
    wait_until("the removed listener's port refuses connections", T, || refuses(extra));
    assert!(
        !handed(&lab).contains(&extra),
        "an upgrade would still be handed {extra}"
    );
    assert!(
        handed(&lab).contains(&lab.addr()),
        "the kept listener left the hand-off set"
    );
    // The kept listener and the removed app's open connection both still work.
    let (mut other, _) = open_at(&lab, lab.addr(), "client2");
    assert_eq!(echo_on(&mut other, "kept\n").expect("echo"), "kept\n");
    assert_eq!(
        echo_on(&mut held, "draining\n").expect("the open connection of the removed app"),
        "draining\n"
    );
    let listed = draining(&lab);
    assert_eq!(listed.len(), 1, "the removed app's upstream drains: {listed:?}");
    assert_eq!(listed[0]["app"], "extra");
    assert_eq!(listed[0]["active_connections"], 1);

    // Closed once [timeouts] drain has passed, not before.
    wait_closed(&mut held, DRAIN + T);
    assert!(
        removed_at.elapsed() >= DRAIN,
        "closed {:?} after the reload, before the drain period",
        removed_at.elapsed()
    );
    assert_eq!(lab.server.metrics.closed_for(CloseReason::AppRemoved), 1);
    wait_until("the drained upstream leaves /status", T, || draining(&lab).is_empty());
    assert_eq!(
        echo_on(&mut other, "after\n").expect("the kept app's connection"),
        "after\n"
    );

    // Adding it back binds it anew.
    lab.reload(&config(&lab.paths, Some(extra), 1))
        .expect("adding the listener back");
    let (mut again, _) = open_at(&lab, extra, "client1");
    assert_eq!(echo_on(&mut again, "back\n").expect("echo"), "back\n");
}

#[test]
fn a_reload_that_cannot_bind_an_added_listener_changes_nothing() {
    let lab = lab(opts(1, true), |p| config(p, None, 0));
    let taken = TcpListener::bind("127.0.0.1:0").expect("a port someone else holds");
    let busy = taken.local_addr().expect("address");
    let free = free_addr();
    let text = {
        let p = &lab.paths;
        base(p, "")
            .app(app_section("echo", p.listen, &[], &ups(p)))
            .app(app_section("free", free, &[], &ups(p)))
            .app(app_section("busy", busy, &[], &ups(p)))
            .client(client_section("client1", &["echo", "free", "busy"], ""))
            .render()
    };
    let e = lab.reload(&text).expect_err("a reload with an address in use");
    let msg = format!("{e:#}");
    assert!(msg.contains(&busy.to_string()), "the error names the address: {msg}");
    assert!(msg.contains("cannot be bound"), "{msg}");
    // Nothing applied: the other added listener was closed again, the old config serves.
    assert!(refuses(free), "{free} stayed bound after a rejected reload");
    assert_eq!(lab.server.current().config.apps.len(), 1);
    let (mut s, _) = open_at(&lab, lab.addr(), "client1");
    assert_eq!(echo_on(&mut s, "still\n").expect("echo"), "still\n");
    drop(taken);
}

#[test]
fn a_removed_apps_connection_is_closed_at_once_when_the_same_reload_revokes_it() {
    let lab = lab(opts(1, true), |p| config(p, None, 0));
    let extra = free_addr();
    lab.reload(&config(&lab.paths, Some(extra), 1))
        .expect("adding app extra");
    let (mut revoked, _) = open_at(&lab, extra, "client2");
    let (mut kept, _) = open_at(&lab, extra, "client1");
    assert_eq!(echo_on(&mut revoked, "before\n").expect("echo"), "before\n");

    lab.pki.revoke("client2").expect("revoke");
    let start = Instant::now();
    lab.reload(&config(&lab.paths, None, 0)).expect("removing app extra");
    // Not left to drain: the new generation's CRL refuses its certificate.
    wait_closed(&mut revoked, DRAIN / 2);
    assert!(start.elapsed() < DRAIN, "the revoked connection waited for the drain");
    assert_eq!(lab.server.metrics.closed_for(CloseReason::Revoked), 1);
    // The unrevoked one drains.
    assert_eq!(echo_on(&mut kept, "kept\n").expect("echo"), "kept\n");
}

#[test]
fn a_removed_upstream_is_listed_as_draining_until_its_last_connection_ends() {
    let lab = lab(opts(2, true), |p| config(p, None, 0));
    let (mut held, greeting) = open_at(&lab, lab.addr(), "client1");
    let on = greeting.split_whitespace().next().expect("upstream name").to_string();
    let (remove, keep) = if on == "up1" {
        (lab.paths.upstreams[0], lab.paths.upstreams[1])
    } else {
        (lab.paths.upstreams[1], lab.paths.upstreams[0])
    };
    let text = {
        let p = &lab.paths;
        base(p, "")
            .app(app_section("echo", p.listen, &[], &[keep.to_string()]))
            .client(client_section("client1", &["echo"], ""))
            .client(client_section("client2", &["echo"], ""))
            .render()
    };
    lab.reload(&text).expect("a reload removing an upstream");
    let listed = draining(&lab);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["address"], remove.to_string());
    assert_eq!(listed[0]["active_connections"], 1);
    // New connections go to the kept upstream; the open one keeps relaying.
    for _ in 0..3 {
        let (_, g) = open_at(&lab, lab.addr(), "client2");
        assert!(
            !g.starts_with(&format!("{on} ")),
            "a new connection reached the removed upstream: {g}"
        );
    }
    assert_eq!(echo_on(&mut held, "still\n").expect("echo"), "still\n");
    assert_eq!(draining(&lab).len(), 1, "listed while its connection is open");
    drop(held);
    wait_until("the removed upstream leaves /status", T, || draining(&lab).is_empty());
}
