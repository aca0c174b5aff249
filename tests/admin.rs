//! The admin endpoint over plain HTTP: `/metrics` counters move for every
//! refusal reason, `/status` shows apps, upstreams and clients, `/healthz`
//! is 200 while serving and 503 while draining; connections are capped per
//! source (other 127.x.y.z addresses act as other sources), `[admin]
//! token_file` guards `/metrics` and `/status`, and a non-loopback listen
//! without a token is warned about.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use tlb::core::config::writer::{AdminSection, AppSection, ClientSection, ConfigWriter, TimeoutsSection, TlsSection};
use tlb::core::pool::policy::PASSIVE_FALL;
use tlb::core::rt::clock::{self, Clock, StoppedClock};
use tlb::core::tools::client::{ClientError, connect, exchange};
use tlb::core::tools::lab::{Lab, LabOptions};

fn admin_lab(timeouts: &str, clients: &str) -> Lab {
    admin_lab_on(clock::system(), timeouts, clients)
}

/// [`admin_lab`] on `clock`.
fn admin_lab_on(clock: Arc<dyn Clock>, timeouts: &str, clients: &str) -> Lab {
    lab(
        LabOptions {
            admin: true,
            clock,
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
    // Stopped: the circuit opened below stays open (no half-open trial).
    let lab = admin_lab_on(StoppedClock::new(), "handshake = \"1s\"", &clients);
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
            .refused_for(tlb::core::proxy::outcome::Refusal::NoHealthyUpstream)
    };
    let before = no_healthy();
    // PASSIVE_FALL connect failures open the circuit; then refusals are
    // immediate (the clock is stopped: no half-open trial adds a failure).
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
    assert_eq!(
        metric(&m3, "tlb_upstream_passive_failures_total", &labels),
        Some(f64::from(PASSIVE_FALL)),
        "{m3}"
    );
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

// ---------------------------------------------------------------------------
// Connection caps per source, bearer token, exposure warning.

/// The bound for an answer that must come at once (well under the 2 s
/// header timeout that frees slots held by silent connections).
const SHORT: Duration = Duration::from_secs(2);

/// A TCP connection to `to` from the IPv4 source address `from` (port 0).
fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let src = SocketAddr::from((from, 0));
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&src.into()).unwrap_or_else(|e| panic!("binding {src}: {e}"));
    s.connect_timeout(&to.into(), T)
        .unwrap_or_else(|e| panic!("connecting {src} -> {to}: {e}"));
    s.into()
}

/// A GET with `Connection: close` and `headers` (`Name: value\r\n` lines)
/// from `from`, the answer awaited at most `limit`: (status, head, body).
fn get_from(from: [u8; 4], to: SocketAddr, path: &str, headers: &str, limit: Duration) -> (u16, String, String) {
    let mut s = connect_from(from, to);
    s.set_read_timeout(Some(limit)).expect("read timeout");
    s.set_write_timeout(Some(limit)).expect("write timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {to}\r\n{headers}Connection: close\r\n\r\n"
    )
    .expect("sending the request");
    let mut raw = String::new();
    // A refusal may close before reading the request, so the answer can end
    // in a reset: what arrived before it still counts.
    let read = s.read_to_string(&mut raw);
    if raw.is_empty()
        && let Err(e) = read
    {
        panic!("GET {path} from {from:?}: no answer within {limit:?}: {e}");
    }
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("GET {path} from {from:?}: not an HTTP response: {raw:?}"));
    (code, head.to_string(), body.to_string())
}

/// What a new connection from `from` that sends nothing receives within
/// `SHORT` (a refusal is a 503 at once; a served connection stays silent
/// until the header timeout).
fn silent_answer(from: [u8; 4], to: SocketAddr) -> String {
    let mut s = connect_from(from, to);
    s.set_read_timeout(Some(SHORT)).expect("read timeout");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw
}

/// Asserts that a new connection from `from` is refused with a 503 at once.
#[track_caller]
fn assert_busy(from: [u8; 4], to: SocketAddr) {
    let raw = silent_answer(from, to);
    assert!(
        raw.starts_with("HTTP/1.1 503"),
        "a connection over the cap from {from:?}: expected a 503 at once, got {raw:?}"
    );
}

#[test]
fn a_flood_of_idle_connections_from_one_source_does_not_lock_out_a_scraper() {
    let lab = admin_lab("", &client("client1", &["echo"], ""));
    let adm = lab.paths.admin.expect("admin");
    // More silent connections than the endpoint has slots in all.
    let flood: Vec<TcpStream> = (0..80).map(|_| connect_from([127, 0, 0, 1], adm)).collect();
    // Accepts are in order: once one more from the flood is answered, every
    // flood connection before it has been accepted (and the slots it could
    // take are taken).
    assert_busy([127, 0, 0, 1], adm);
    let started = Instant::now();
    let (code, _, body) = get_from([127, 0, 0, 2], adm, "/metrics", "", SHORT);
    assert_eq!(code, 200, "a scrape from another source during the flood: {body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(started.elapsed() < SHORT, "scrape took {:?}", started.elapsed());
    drop(flood);
}

#[test]
fn one_source_holds_at_most_eight_admin_connections_and_gets_them_back() {
    let lab = admin_lab("", &client("client1", &["echo"], ""));
    let adm = lab.paths.admin.expect("admin");
    let held: Vec<TcpStream> = (0..8).map(|_| connect_from([127, 0, 0, 3], adm)).collect();
    // The ninth from that source is refused at once, another source is served.
    assert_busy([127, 0, 0, 3], adm);
    assert_eq!(get_from([127, 0, 0, 4], adm, "/healthz", "", SHORT).0, 200);
    // Each ending connection gives its slot back (no leak): the source is
    // served again once its idle connections are gone.
    drop(held);
    wait_until("127.0.0.3 served again", T, || {
        get_from([127, 0, 0, 3], adm, "/healthz", "", T).0 == 200
    });
    // All eight came back: eight more are held and the ninth is refused
    // (retried, as the last probe's slot may be given back a moment after
    // its close is seen).
    wait_until("all 8 slots of 127.0.0.3 back", T, || {
        let again: Vec<TcpStream> = (0..8).map(|_| connect_from([127, 0, 0, 3], adm)).collect();
        let refused = silent_answer([127, 0, 0, 3], adm).starts_with("HTTP/1.1 503");
        drop(again);
        refused
    });
}

const TOKEN: &str = "tlb-admin-Zm9v.bar~42";

/// Writes `text` to `path` with permission bits `mode`.
fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A lab whose admin endpoint needs `TOKEN`, read from `admin.token` next to
/// the config (a relative path), written with a trailing newline, mode 0600.
fn token_lab() -> Lab {
    lab(
        LabOptions {
            admin: true,
            ..opts(1, true)
        },
        |p| {
            let dir = p.pki_dir.parent().expect("the lab directory");
            write_mode(&dir.join("admin.token"), &format!("{TOKEN}\n"), 0o600);
            let table = p.admin_table();
            let mut s = base_config(p, "").replace(&table, &format!("{table}token_file = \"admin.token\"\n"));
            s.push_str(&app("echo", p.listen, &[], &ups(p)));
            s.push_str(&client("client1", &["echo"], ""));
            s
        },
    )
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

/// Asserts a 401 that asks for a bearer token and says nothing else.
#[track_caller]
fn assert_401(adm: SocketAddr, path: &str, headers: &str) {
    let (code, head, body) = get_from([127, 0, 0, 1], adm, path, headers, T);
    assert_eq!(code, 401, "{path} with {headers:?}: {head}\n{body}");
    assert!(
        head.to_ascii_lowercase().contains("\r\nwww-authenticate: bearer"),
        "{path}: no WWW-Authenticate: Bearer in {head}"
    );
    assert_eq!(body, "unauthorized\n", "{path} with {headers:?}");
}

#[test]
fn token_guards_metrics_and_status_but_not_healthz() {
    let lab = token_lab();
    let adm = lab.paths.admin.expect("admin");
    for path in ["/status", "/metrics"] {
        assert_401(adm, path, "");
        assert_401(adm, path, &bearer("wrong"));
        assert_401(adm, path, &bearer(&TOKEN[..TOKEN.len() - 1]));
        assert_401(adm, path, &bearer(&format!("{TOKEN}x")));
        assert_401(adm, path, &format!("Authorization: Basic {TOKEN}\r\n"));
        assert_401(adm, path, &format!("Authorization: Bearer{TOKEN}\r\n"));
    }
    let (code, _, body) = get_from([127, 0, 0, 1], adm, "/status", &bearer(TOKEN), T);
    assert_eq!(code, 200, "{body}");
    let s: serde_json::Value = serde_json::from_str(&body).expect("/status JSON");
    assert_eq!(s["clients"][0]["name"], "client1", "{s}");
    // The scheme is case-insensitive (RFC 9110).
    let (code, _, body) = get_from(
        [127, 0, 0, 1],
        adm,
        "/metrics",
        &format!("authorization: bearer {TOKEN}\r\n"),
        T,
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    // Load-balancer probes need no token.
    let (code, _, body) = get_from([127, 0, 0, 1], adm, "/healthz", "", T);
    assert_eq!((code, body.as_str()), (200, "ok\n"));
}

#[test]
fn token_follows_a_reload_but_the_admin_address_does_not_move() {
    let lab = token_lab();
    let adm = lab.paths.admin.expect("admin");
    let text = fs::read_to_string(&lab.config_path).expect("config");
    let token_file = lab.config_path.with_file_name("admin.token");
    let ok = |token: &str| get_from([127, 0, 0, 1], adm, "/status", &bearer(token), T).0 == 200;

    write_mode(&token_file, "rotated-token\n", 0o600);
    lab.reload(&text).expect("reload with a rotated token");
    assert!(ok("rotated-token"), "the new token is refused");
    assert_401(adm, "/status", &bearer(TOKEN));

    // A reload that cannot read a token is refused; the token in force stays.
    write_mode(&token_file, "\n", 0o600);
    let e = lab.reload(&text).expect_err("a reload with an empty token file");
    assert!(format!("{e:#}").contains("admin.token_file"), "{e:#}");
    assert!(
        ok("rotated-token"),
        "the token in force was dropped by a refused reload"
    );

    write_mode(&token_file, "rotated-token\n", 0o600);
    let moved = text.replace(&adm.to_string(), &format!("127.0.0.1:{}", free_port()));
    let e = lab.reload(&moved).expect_err("moving the admin endpoint on reload");
    assert!(format!("{e:#}").contains("needs a restart"), "{e:#}");
    assert!(ok("rotated-token"));
}

#[test]
fn token_file_problems_name_file_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tlb.toml");
    let load = |token_line: &str| {
        let text = format!(
            "[tls]\nca = \"pki/ca.crt\"\ncert = \"pki/server.crt\"\nkey = \"pki/server.key\"\n\n\
             [admin]\nlisten = \"127.0.0.1:9090\"\n{token_line}\n\n\
             [[app]]\nname = \"echo\"\nlisten = \"127.0.0.1:8443\"\nupstreams = [\"127.0.0.1:9001\"]\n"
        );
        fs::write(&config, text).expect("config");
        tlb::core::config::Config::load(&config)
    };
    let check = |token_line: &str, fragment: &str| {
        let e = load(token_line).expect_err(token_line);
        assert_eq!(e.file, config, "{e}");
        assert_eq!(e.line, 8, "{e}"); // the token_file line
        assert_eq!(e.key, "admin.token_file", "{e}");
        assert!(e.message.contains(fragment), "{e} should say {fragment:?}");
        assert!(e.message.contains("openssl rand"), "{e} should say how to fix it");
        assert!(!e.to_string().contains('\n'), "one line: {e}");
    };
    check("token_file = \"missing.token\"", "cannot read");
    check("token_file = \".\"", "cannot read");
    write_mode(&dir.path().join("empty.token"), " \n", 0o600);
    check("token_file = \"empty.token\"", "is empty");
    write_mode(&dir.path().join("two.token"), "two words\n", 0o600);
    check("token_file = \"two.token\"", "Authorization header");
    write_mode(&dir.path().join("lines.token"), "one\ntwo\n", 0o600);
    check("token_file = \"lines.token\"", "Authorization header");
    write_mode(&dir.path().join("huge.token"), &"x".repeat(5000), 0o600);
    check("token_file = \"huge.token\"", "longer than");

    // Resolved against the config's directory, the trailing newline trimmed.
    write_mode(&dir.path().join("ok.token"), "s3cret\r\n", 0o600);
    let c = load("token_file = \"ok.token\"").unwrap_or_else(|e| panic!("{e}"));
    let token = c.admin.and_then(|a| a.token).expect("a token");
    assert!(token.matches(b"s3cret"));
    assert!(!token.matches(b"s3cret\r\n") && !token.matches(b"s3cre") && !token.matches(b""));
    assert!(!format!("{token:?}").contains("s3cret"), "Debug shows the token");
}

/// A config for `tlb serve` over a fresh PKI in `dir`: admin on `admin`,
/// with `token_file` in `[admin]`; the app's upstream is never used.
fn serve_config(dir: &Path, admin: SocketAddr, token_file: Option<&str>) -> std::path::PathBuf {
    let pki = tlb::core::pki::Pki::new(dir.join("pki"));
    if !pki.ca_cert().exists() {
        pki.init(&tlb::core::pki::InitOptions {
            clients: vec!["client1".into()],
            server_names: vec![],
            key_type: tlb::core::pki::KeyType::EcdsaP256,
            days: 30,
            force: false,
        })
        .expect("PKI");
    }
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let text = ConfigWriter::new(TlsSection {
        crl: None,
        ..TlsSection::pki("pki")
    })
    .admin(AdminSection {
        token_file: token_file.map(str::to_string),
        ..AdminSection::new(admin)
    })
    .timeouts(TimeoutsSection {
        drain: Some(Duration::from_secs(1)),
        ..TimeoutsSection::default()
    })
    .app(AppSection::new("echo", listen, [format!("127.0.0.1:{}", free_port())]))
    .client(ClientSection::new("client1", ["echo"]))
    .render();
    let config = dir.join("tlb.toml");
    fs::write(&config, text).expect("config");
    config
}

#[test]
fn a_token_file_every_user_can_read_is_warned_about() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("admin.token");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = serve_config(dir.path(), admin, Some("admin.token"));
    let check = || {
        tlb(
            &["serve", "--check", "--config", config.to_str().expect("utf-8")],
            dir.path(),
            T,
        )
    };

    write_mode(&token, "abc\n", 0o644);
    let out = check();
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stderr.contains("is readable by every user"), "{out:?}");
    assert!(out.stderr.contains("chmod 600"), "{out:?}");

    write_mode(&token, "abc\n", 0o600);
    let out = check();
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(!out.stderr.contains("readable"), "{out:?}");
}

/// Starts `tlb serve --config CONFIG` (log to `log`) and waits until its
/// admin endpoint, on `port` of every address, answers /healthz.
fn serve_until_healthy(dir: &Path, config: &Path, port: u16, log: &Path) -> ChildGuard {
    let file = fs::File::create(log).expect("log file");
    let mut child = ChildGuard::spawn(
        "tlb serve",
        Command::new(tlb_bin())
            .args(["serve", "--config", config.to_str().expect("utf-8")])
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().expect("log file")))
            .stderr(Stdio::from(file)),
    );
    let probe = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until("tlb serve answering /healthz", T, || {
        if let Some(s) = child.wait_for(Duration::ZERO) {
            panic!(
                "tlb serve exited ({s}): {}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        TcpStream::connect_timeout(&probe, SHORT).is_ok() && http_get(probe, "/healthz").0 == 200
    });
    child
}

#[test]
fn a_non_loopback_admin_without_a_token_is_warned_about_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("serve.log");
    let port = free_port();
    let config = serve_config(dir.path(), SocketAddr::from(([0, 0, 0, 0], port)), None);
    let serve = serve_until_healthy(dir.path(), &config, port, &log);
    drop(serve);
    let text = fs::read_to_string(&log).expect("log");
    let want = format!(
        "admin endpoint on 0.0.0.0:{port} is reachable from the network; /status lists client identities; set [admin] token_file or bind 127.0.0.1"
    );
    assert!(text.contains(&want), "no warning {want:?} in:\n{text}");

    // With a token, the exposure is deliberate: no warning.
    write_mode(&dir.path().join("admin.token"), "abc\n", 0o600);
    let port = free_port();
    let config = serve_config(dir.path(), SocketAddr::from(([0, 0, 0, 0], port)), Some("admin.token"));
    let serve = serve_until_healthy(dir.path(), &config, port, &log);
    drop(serve);
    let text = fs::read_to_string(&log).expect("log");
    assert!(!text.contains("reachable from the network"), "{text}");
    assert!(text.contains("need the bearer token"), "{text}");
}
