//! The admin endpoint over plain HTTP: `/metrics` counters move for every
//! refusal reason, `/status` shows apps, upstreams and clients, `/healthz`
//! is 200 while serving and 503 while draining.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use tlb::core::client::{ClientError, connect, exchange};
use tlb::core::lab::{Lab, LabOptions};

fn admin_lab(timeouts: &str, clients: &str) -> Lab {
    lab(
        LabOptions {
            admin: true,
            ..opts(2, true)
        },
        |p| {
            let mut s = base_config(p, timeouts);
            s.push_str(&app("echo", p.listen, &[], &ups(p)));
            s.push_str(clients);
            s
        },
    )
}

fn scrape(lab: &Lab) -> String {
    let (code, body) = http_get(lab.paths.admin.expect("admin"), "/metrics");
    assert_eq!(code, 200, "{body}");
    assert!(body.ends_with("# EOF\n"), "not an OpenMetrics exposition: {body}");
    body
}

fn val(text: &str, name: &str, labels: &str) -> f64 {
    metric(text, name, labels).unwrap_or(0.0)
}

/// Asserts that `name{labels}` grew by exactly `by` between two scrapes.
fn moved(before: &str, after: &str, name: &str, labels: &str, by: f64) {
    let (b, a) = (val(before, name, labels), val(after, name, labels));
    assert_eq!(a - b, by, "{name}{{{labels}}}: {b} -> {a}\n{after}");
}

fn hs(reason: &str) -> String {
    format!("reason=\"{reason}\"")
}

#[test]
fn metrics_count_every_refusal_reason() {
    let clients = [
        client("client1", &["echo"], ""),
        client("client2", &["echo"], "max_connections = 1"),
        client("client3", &["echo"], "connection_rate = 0.001\nburst = 1"),
    ]
    .concat();
    let lab = admin_lab("handshake = \"1s\"", &clients);
    let m0 = scrape(&lab);
    assert!(m0.contains("# TYPE tlb_handshake_duration_seconds histogram"), "{m0}");

    // A relayed connection moves the totals, bytes and histograms.
    let c1 = lab.client(Some("client1")).expect("client1");
    smol::block_on(greeted_exchange(&c1, "hello\n")).expect("client1 through");
    wait_until("connection closed", T, || {
        lab.server.metrics.connection_seconds.count() >= 1
    });
    let m1 = scrape(&lab);
    moved(&m0, &m1, "tlb_connections_proxied_total", "", 1.0);
    moved(&m0, &m1, "tlb_handshake_duration_seconds_count", "", 1.0);
    moved(&m0, &m1, "tlb_connection_duration_seconds_count", "", 1.0);
    moved(&m0, &m1, "tlb_app_connections_total", "app=\"echo\"", 1.0);
    moved(&m0, &m1, "tlb_client_connections_total", "client=\"client1\"", 1.0);
    let sent: f64 = lab
        .paths
        .upstreams
        .iter()
        .map(|u| {
            val(
                &m1,
                "tlb_bytes_total",
                &format!("app=\"echo\",upstream=\"{u}\",direction=\"to_upstream\""),
            )
        })
        .sum();
    assert_eq!(sent, 6.0, "bytes to upstreams (\"hello\\n\")\n{m1}");

    // bad certificate: signed by another CA.
    let (bad, _foreign) = foreign_client(&lab);
    assert!(matches!(
        smol::block_on(exchange(&bad, b"x\n", T)),
        Err(ClientError::TlsRefused { .. })
    ));
    // no certificate; unauthorized identity (client4 is in the PKI, not the config).
    let none = lab.client(None).expect("options");
    assert!(smol::block_on(exchange(&none, b"x\n", T)).is_err());
    let c4 = lab.client(Some("client4")).expect("client4");
    assert!(matches!(
        smol::block_on(exchange(&c4, b"x\n", T)),
        Err(ClientError::TlsRefused { .. })
    ));
    // handshake timeout: TCP and nothing else.
    let mut idle = TcpStream::connect(lab.addr()).expect("tcp connect");
    idle.set_read_timeout(Some(T)).expect("timeout");
    let started = Instant::now();
    let _ = idle.read(&mut [0u8; 16]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not cut at the handshake timeout"
    );
    // max connections: client2 holds one, the second is refused.
    let c2 = lab.client(Some("client2")).expect("client2");
    let held = smol::block_on(async {
        let (_, mut tls) = connect(&c2).await.expect("first client2 connection");
        tls.write_all(b"hold\n").await.expect("write");
        tls.flush().await.expect("flush");
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.expect("greeting: relayed");
        tls
    });
    assert!(matches!(
        smol::block_on(exchange(&c2, b"x\n", T)),
        Err(ClientError::ClosedBeforeReply { .. })
    ));
    drop(held);
    // rate limited: burst 1, then the bucket is empty.
    let c3 = lab.client(Some("client3")).expect("client3");
    smol::block_on(exchange(&c3, b"x\n", T)).expect("client3's first connection");
    assert!(matches!(
        smol::block_on(exchange(&c3, b"x\n", T)),
        Err(ClientError::ClosedBeforeReply { .. })
    ));
    wait_until("all refusals counted", T, || {
        lab.server.metrics.handshake_failures() >= 4 && lab.server.metrics.refused() >= 2
    });
    let m2 = scrape(&lab);
    moved(&m1, &m2, "tlb_handshake_failures_total", &hs("bad_certificate"), 1.0);
    moved(&m1, &m2, "tlb_handshake_failures_total", &hs("no_certificate"), 1.0);
    moved(&m1, &m2, "tlb_handshake_failures_total", &hs("unauthorized"), 1.0);
    moved(&m1, &m2, "tlb_handshake_failures_total", &hs("handshake_timeout"), 1.0);
    moved(&m1, &m2, "tlb_refused_total", &hs("max_connections"), 1.0);
    moved(&m1, &m2, "tlb_refused_total", &hs("rate_limited"), 1.0);
    moved(&m1, &m2, "tlb_client_refused_total", "client=\"client2\"", 1.0);
    moved(&m1, &m2, "tlb_client_refused_total", "client=\"client3\"", 1.0);

    // Upstreams gone: connect failures open the circuit, then refusals are
    // no_healthy_upstream.
    let dead = format!("127.0.0.1:{}", free_port());
    let text = std::fs::read_to_string(&lab.config_path).expect("config");
    let list = lab
        .paths
        .upstreams
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    lab.reload(&text.replace(&list, &format!("\"{dead}\"")))
        .expect("reload");
    let no_healthy = || {
        lab.server
            .metrics
            .refused_for(tlb::core::metrics::Refusal::NoHealthyUpstream)
    };
    let before = no_healthy();
    // 3 connect failures open the circuit; then refusals are immediate (a
    // half-open trial may add a failure if the 1 s cooldown passes meanwhile).
    wait_until("a no_healthy_upstream refusal", T, || {
        let r = smol::block_on(exchange(&c1, b"x\n", T));
        assert!(matches!(r, Err(ClientError::ClosedBeforeReply { .. })), "{r:?}");
        no_healthy() > before
    });
    let m3 = scrape(&lab);
    assert!(
        val(&m3, "tlb_refused_total", &hs("upstream_connect_failed"))
            - val(&m2, "tlb_refused_total", &hs("upstream_connect_failed"))
            >= 3.0,
        "{m3}"
    );
    moved(&m2, &m3, "tlb_refused_total", &hs("no_healthy_upstream"), 1.0);
    let labels = format!("app=\"echo\",upstream=\"{dead}\"");
    assert_eq!(metric(&m3, "tlb_upstream_up", &labels), Some(0.0), "{m3}");
    assert!(metric(&m3, "tlb_upstream_passive_failures_total", &labels) >= Some(3.0));
}

#[test]
fn status_shows_apps_upstreams_and_clients_and_healthz_tracks_draining() {
    let clients = [
        client(
            "client1",
            &["echo"],
            "max_connections = 7\nconnection_rate = 3\nburst = 9",
        ),
        client("client2", &["echo"], ""),
    ]
    .concat();
    // A long drain: the held connection keeps it going while we look; dropping it ends it.
    let lab = admin_lab("drain = \"30s\"", &clients);
    let adm: SocketAddr = lab.paths.admin.expect("admin");
    assert_eq!(http_get(adm, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(http_get(adm, "/nope").0, 404);

    // An established connection shows up per client, app and upstream.
    let c1 = lab.client(Some("client1")).expect("client1");
    let held = smol::block_on(async {
        let (_, mut tls) = connect(&c1).await.expect("connect");
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.expect("greeting");
        tls
    });
    let s = status(adm);
    assert_eq!(s["state"], "serving");
    assert_eq!(s["connections"]["active"], 1, "{s}");
    let app = &s["apps"][0];
    assert_eq!(app["name"], "echo");
    assert_eq!(app["health_mode"], "passive");
    assert_eq!(app["active_connections"], 1);
    let ups = app["upstreams"].as_array().expect("upstreams");
    assert_eq!(ups.len(), 2);
    assert!(ups.iter().all(|u| u["state"] == "up"), "{s}");
    assert_eq!(
        ups.iter()
            .map(|u| u["active_connections"].as_u64().unwrap_or(0))
            .sum::<u64>(),
        1
    );
    let c = s["clients"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "client1"))
        .expect("client1 in /status");
    assert_eq!(c["active_connections"], 1);
    assert_eq!(c["max_connections"], 7);
    assert_eq!(c["connection_rate"], 3.0);
    assert_eq!(c["burst"], 9);

    // Draining: /healthz says so while the held connection keeps the drain going.
    let stopper = std::thread::spawn(move || {
        let _ = lab.shutdown();
    });
    wait_until("healthz 503 while draining", T, || http_get(adm, "/healthz").0 == 503);
    assert_eq!(status(adm)["state"], "draining");
    drop(held);
    stopper.join().expect("shutdown");
}

#[test]
fn histograms_end_with_a_plus_inf_bucket() {
    let lab = admin_lab("", &client("client1", &["echo"], ""));
    let m = scrape(&lab);
    assert!(
        m.contains("tlb_handshake_duration_seconds_bucket{le=\"+Inf\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("tlb_connection_duration_seconds_bucket{le=\"+Inf\"} 0"),
        "{m}"
    );
}
