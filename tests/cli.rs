//! The `tlb` binary end to end: `serve --check` on good and bad configs, and
//! `pki init` + `upstream` + `serve` + `client` as child processes.
//!
//! No fixed ports: the generated `tlb.toml` is rewritten with ports reserved
//! (bound on 127.0.0.1:0 and released) just before the children start, and
//! readiness is a TCP connect polled with a deadline. Children are killed
//! when a test ends, however it ends.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::common::*;
use tlb::core::config::writer::{
    AdminSection, AppSection, ClientSection, ConfigWriter, HealthSection, TimeoutsSection, TlsSection,
};

/// Limit for one short `tlb` command.
const CMD: Duration = Duration::from_secs(30);

/// A temporary directory with `pki/` and `tlb.toml` from `tlb pki init`.
fn init_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("tlb-cli-").tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let config = dir.path().join("tlb.toml");
    let out = tlb(
        &[
            "pki",
            "init",
            "--dir",
            pki.to_str().expect("utf-8 path"),
            "--config",
            config.to_str().expect("utf-8 path"),
        ],
        dir.path(),
        CMD,
    );
    assert_eq!(out.code(), Some(0), "pki init failed: {out:?}");
    assert!(config.exists() && pki.join("ca.crt").exists(), "{out:?}");
    dir
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Asserts a failure reported as one line on stderr, without a panic.
fn assert_one_line_error(out: &Bounded) -> String {
    assert!(out.status.is_some(), "did not finish: {out:?}");
    assert_ne!(out.code(), Some(0), "expected a failure: {out:?}");
    assert!(!out.all().contains("panicked"), "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one stderr line: {out:?}");
    lines[0].to_string()
}

#[test]
fn serve_check_accepts_the_generated_config() {
    let dir = init_dir();
    let config = dir.path().join("tlb.toml");
    let out = tlb(&["serve", "--check", "--config", path_str(&config)], dir.path(), CMD);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("OK"), "{out:?}");
    assert!(!out.all().contains("panicked"), "{out:?}");
}

#[test]
fn serve_check_names_file_line_and_key_of_an_unknown_key() {
    let dir = init_dir();
    let config = dir.path().join("tlb.toml");
    let text = fs::read_to_string(&config).expect("config");
    let mut lines: Vec<&str> = text.lines().collect();
    let tls = lines.iter().position(|l| l.trim() == "[tls]").expect("a [tls] table");
    lines.insert(tls + 1, "bogus_key = 1");
    fs::write(&config, lines.join("\n") + "\n").expect("writing the bad config");
    let bad_line = tls + 2; // 1-based

    let out = tlb(&["serve", "--check", "--config", path_str(&config)], dir.path(), CMD);
    let line = assert_one_line_error(&out);
    assert!(
        line.contains(&format!("tlb.toml:{bad_line}")),
        "file:line missing: {line}"
    );
    assert!(line.contains("bogus_key"), "key missing: {line}");
}

#[test]
fn serve_check_reports_a_missing_certificate_file() {
    let dir = init_dir();
    let config = dir.path().join("tlb.toml");
    fs::remove_file(dir.path().join("pki/server.crt")).expect("removing server.crt");
    let out = tlb(&["serve", "--check", "--config", path_str(&config)], dir.path(), CMD);
    let line = assert_one_line_error(&out);
    assert!(line.contains("server.crt"), "which file is missing: {line}");
}

#[test]
fn serve_reports_a_missing_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.toml");
    for args in [
        vec!["serve", "--check", "--config", path_str(&missing)],
        vec!["serve", "--config", path_str(&missing)],
    ] {
        let out = tlb(&args, dir.path(), CMD);
        let line = assert_one_line_error(&out);
        assert!(line.contains("nope.toml"), "{line}");
        assert!(line.contains("tlb pki init"), "no hint to run `tlb pki init`: {line}");
    }
    // With --log-format json the one line is a JSON object.
    let out = tlb(
        &["serve", "--log-format", "json", "--config", path_str(&missing)],
        dir.path(),
        CMD,
    );
    let line = assert_one_line_error(&out);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["level"], "ERROR", "{line}");
    assert!(
        v["message"].as_str().unwrap_or_default().contains("tlb pki init"),
        "{line}"
    );
    // Default path ./tlb.toml in an empty directory.
    let out = tlb(&["serve"], dir.path(), CMD);
    let line = assert_one_line_error(&out);
    assert!(line.contains("tlb pki init"), "{line}");
}

/// `tlb upstream --count 3 --greet` and `tlb serve` on the config `tlb pki
/// init` wrote in `d`, moved to free ports; their output goes to files.
struct System {
    listen: String,
    upstream: ChildGuard,
    serve: ChildGuard,
    serve_log: std::path::PathBuf,
}

fn start_system(d: &Path) -> System {
    let config = d.join("tlb.toml");
    // Ports reserved right before the children start.
    let base = free_consecutive_ports(3);
    let listen = format!("127.0.0.1:{}", free_port());
    let ups: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect();
    let mut text = fs::read_to_string(&config).expect("config");
    for (old, new) in [
        ("\"127.0.0.1:8443\"", format!("\"{listen}\"")),
        ("\"127.0.0.1:9001\"", format!("\"{}\"", ups[0])),
        ("\"127.0.0.1:9002\"", format!("\"{}\"", ups[1])),
        ("\"127.0.0.1:9003\"", format!("\"{}\"", ups[2])),
        ("\"30s\"", "\"2s\"".to_string()),
    ] {
        assert!(text.contains(old), "the generated config has no {old}:\n{text}");
        text = text.replace(old, &new);
    }
    fs::write(&config, &text).expect("rewriting the config");

    let up_log = d.join("upstream.log");
    let serve_log = d.join("serve.log");
    let mut upstream = start_logged(
        "tlb upstream",
        &["upstream", "--count", "3", "--listen", &ups[0], "--greet"],
        d,
        &up_log,
    );
    let mut serve = start_logged("tlb serve", &["serve", "--config", path_str(&config)], d, &serve_log);
    for u in &ups {
        wait_listening(u, &mut upstream, &up_log);
    }
    wait_listening(&listen, &mut serve, &serve_log);
    System {
        listen,
        upstream,
        serve,
        serve_log,
    }
}

impl System {
    /// `tlb client --connect <the balancer> --pki pki EXTRA...`.
    fn client(&self, d: &Path, extra: &[&str]) -> Bounded {
        let pki = d.join("pki");
        let mut args = vec![
            "client",
            "--connect",
            &self.listen,
            "--pki",
            path_str(&pki),
            "--timeout",
            "10",
        ];
        args.extend_from_slice(extra);
        tlb(&args, d, CMD)
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.serve_log).unwrap_or_default()
    }
}

#[test]
fn end_to_end_with_pki_upstream_serve_and_client_processes() {
    let dir = init_dir();
    let d = dir.path();
    let mut sys = start_system(d);
    let client = |extra: &[&str]| sys.client(d, extra);

    // An authorized client: the greeting, then the echo.
    let out = client(&["--cert", "client2", "hello"]);
    assert_eq!(out.code(), Some(0), "{out:?}\nserve log:\n{}", sys.log());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    let up = greeter(lines[0]);
    assert!(["up1", "up2", "up3"].contains(&up.as_str()), "{out:?}");
    assert_eq!(lines[1], "hello");

    // Not authorized: exit 3, one line naming the alert.
    let out = client(&["--cert", "client4", "hello"]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    let line = assert_one_line_error(&out);
    assert!(line.contains("access_denied"), "{line}");
    assert!(out.stdout.is_empty(), "{out:?}");

    // No client certificate: exit 3, certificate_required.
    let out = client(&["hello"]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    let line = assert_one_line_error(&out);
    assert!(line.contains("certificate_required"), "{line}");

    // SIGTERM: drain and exit 0.
    sys.serve.signal("TERM");
    let status = sys.serve.wait_for(Duration::from_secs(10));
    let log = sys.log();
    assert!(
        status.is_some_and(|s| s.success()),
        "tlb serve after SIGTERM: {status:?}; log:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    // The access log recorded the proxied connection.
    assert!(log.contains("client2"), "no access-log line for client2:\n{log}");

    sys.upstream.signal("TERM");
    let status = sys.upstream.wait_for(Duration::from_secs(10));
    assert!(status.is_some(), "tlb upstream did not stop on SIGTERM");
}

#[test]
fn serve_json_logs_each_health_change_once_and_serves_admin() {
    let dir = init_dir();
    let d = dir.path();
    let pki = d.join("pki");
    let config = d.join("health.toml");
    let listen = format!("127.0.0.1:{}", free_port());
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let base = free_consecutive_ports(2);
    let ups: Vec<String> = (0..2).map(|i| format!("127.0.0.1:{}", base + i)).collect();
    let text = ConfigWriter::new(TlsSection {
        crl: None,
        ..TlsSection::pki("pki")
    })
    .timeouts(TimeoutsSection {
        drain: Some(Duration::from_secs(1)),
        ..TimeoutsSection::default()
    })
    .admin(AdminSection::new(admin))
    .app(AppSection {
        health: Some(HealthSection {
            interval: Some(Duration::from_millis(250)),
            timeout: Some(Duration::from_millis(200)),
            rise: Some(1),
            fall: Some(2),
            send: Some("ping\n".into()),
            expect: Some("ping".into()),
        }),
        ..AppSection::new("echo", listen.parse().expect("addr"), &ups)
    })
    .client(ClientSection::new("client1", ["echo"]))
    .render();
    fs::write(&config, text).expect("writing the config");

    let up_log = d.join("upstream.log");
    let serve_log = d.join("serve.log");
    let mut upstream = start_logged(
        "tlb upstream",
        &["upstream", "--count", "2", "--listen", &ups[0], "--greet"],
        d,
        &up_log,
    );
    // Upstreams first, so the first checks find them.
    for u in &ups {
        wait_listening(u, &mut upstream, &up_log);
    }
    let mut serve = start_logged(
        "tlb serve",
        &["--log-format", "json", "serve", "--config", path_str(&config)],
        d,
        &serve_log,
    );
    wait_listening(&listen, &mut serve, &serve_log);
    wait_listening(admin, &mut serve, &serve_log);
    assert_eq!(http_get(admin, "/healthz").0, 200);

    let out = tlb(
        &[
            "client",
            "--connect",
            &listen,
            "--pki",
            path_str(&pki),
            "--cert",
            "client1",
            "--timeout",
            "10",
            "hello",
        ],
        d,
        CMD,
    );
    assert_eq!(out.code(), Some(0), "{out:?}");

    // Both upstreams die: each goes DOWN once, however many checks fail after.
    upstream.signal("KILL");
    let _ = upstream.wait_for(Duration::from_secs(10));
    let failed = |text: &str, u: &str| {
        metric(
            text,
            "tlb_upstream_health_checks_total",
            &format!("app=\"echo\",upstream=\"{u}\",result=\"failed\""),
        )
        .unwrap_or(0.0)
    };
    wait_until("many failed checks after the kill", Duration::from_secs(20), || {
        let (_, m) = http_get(admin, "/metrics");
        ups.iter().all(|u| failed(&m, u) >= 6.0)
    });
    serve.signal("TERM");
    let status = serve.wait_for(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "tlb serve after SIGTERM: {status:?}"
    );

    let log = fs::read_to_string(&serve_log).unwrap_or_default();
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    // The access log is JSON too, with its fields.
    let access: Vec<_> = events.iter().filter(|e| e["target"] == "tlb::access").collect();
    assert_eq!(access.len(), 1, "{log}");
    assert_eq!(access[0]["identity"], "client1", "{log}");
    assert_eq!(access[0]["reason"], "done", "{log}");
    assert!(access[0]["bytes_in"].as_u64() == Some(6), "{log}");
    // Each change logged once: DOWN and UP alternate (never two DOWNs in a
    // row, however many checks failed), and the last one is the DOWN of the kill.
    for u in &ups {
        let changes: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["upstream"] == u.as_str() && (e["state"] == "down" || e["state"] == "up"))
            .collect();
        let states: Vec<&str> = changes.iter().map(|e| e["state"].as_str().unwrap_or("")).collect();
        assert_eq!(states.last(), Some(&"down"), "{u}: {states:?}\n{log}");
        assert!(
            states.windows(2).all(|w| w[0] != w[1]),
            "{u}: a change logged twice: {states:?}\n{log}"
        );
        let msg = changes.last().and_then(|e| e["message"].as_str()).unwrap_or_default();
        assert!(
            msg.starts_with(&format!("upstream {u} DOWN: 2 consecutive failures: ")),
            "{msg}"
        );
    }
}

/// Every numeric or duration flag out of its range: one line naming the
/// flag and the range, exit status 2, no panic, nothing started.
#[test]
fn out_of_range_flags_are_one_line_usage_errors() {
    let dir = tempfile::Builder::new().prefix("tlb-cli-").tempdir().expect("tempdir");
    let cases: &[(&[&str], &[&str])] = &[
        (&["pki", "init", "--days", "3000000"], &["--days", "1..=36500"]),
        (&["pki", "issue", "x", "--days", "3000000"], &["--days", "1..=36500"]),
        (&["pki", "crl", "--days", "1000"], &["--days", "1..=366"]),
        (
            &["bench", "--duration", "500000000000years"],
            &["--duration", "365days"],
        ),
        (&["bench", "--duration", "0s"], &["--duration", "365days"]),
        (&["bench", "--connections", "0"], &["--connections", "1..=1000000"]),
        (
            &["bench", "--connections", "18446744073709551615"],
            &["--connections", "1..=1000000"],
        ),
        (&["bench", "--size", "0"], &["--size", "1..=16777216"]),
        (
            &["bench", "--size", "18446744073709551615"],
            &["--size", "1..=16777216"],
        ),
        (&["bench", "--rate", "0"], &["--rate", "0.001"]),
        (&["bench", "--rate", "1e-9"], &["--rate", "0.001"]),
        (&["bench", "--rate", "NaN"], &["--rate", "0.001"]),
        (&["bench", "--rate", "1e300"], &["--rate", "1000000000"]),
        (
            &["bench", "--threads", "18446744073709551615"],
            &["--threads", "0..=1024"],
        ),
        (&["client", "--timeout", "0", "hi"], &["--timeout", "1..=86400"]),
        (
            &["client", "--timeout", "18446744073709551615", "hi"],
            &["--timeout", "1..=86400"],
        ),
        (&["upstream", "--count", "0"], &["--count", "1..="]),
        (
            &["upstream", "--listen", "127.0.0.1:65535", "--count", "2"],
            &["--count", "65535"],
        ),
        (&["upstream", "--threads", "100000"], &["--threads", "0..=1024"]),
        (&["serve", "--threads", "100000"], &["--threads", "0..=1024"]),
    ];
    for (args, wanted) in cases {
        let out = tlb(args, dir.path(), CMD);
        let line = assert_one_line_error(&out);
        assert_eq!(out.code(), Some(2), "tlb {args:?}: {out:?}");
        assert!(line.starts_with("tlb: error:"), "tlb {args:?}: {line}");
        for w in *wanted {
            assert!(line.contains(w), "tlb {args:?}: {w:?} not in {line:?}");
        }
    }
    assert!(
        fs::read_dir(dir.path()).expect("listing").next().is_none(),
        "nothing written"
    );
}

/// A `--rate` so low that the next send (rr) or the next connection (idle)
/// falls after the run: the run still ends at `--duration`, instead of
/// sleeping until that turn (here 1000 s).
#[test]
fn bench_ends_on_time_with_a_very_low_rate() {
    let dir = tempfile::Builder::new().prefix("tlb-cli-").tempdir().expect("tempdir");
    for (mode, connections, requests) in [("rr", "1", 1), ("idle", "2", 1)] {
        let json = dir.path().join(format!("{mode}.json"));
        let args = [
            "bench",
            "--mode",
            mode,
            "--rate",
            "0.001",
            "--connections",
            connections,
            "--duration",
            "1s",
            "--json",
            path_str(&json),
        ];
        let out = tlb(&args, dir.path(), CMD);
        assert_eq!(out.code(), Some(0), "tlb {args:?}: {out:?}");
        let text = fs::read_to_string(&json).expect("the JSON report");
        let report: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let took = report["duration_s"].as_f64().expect("duration_s");
        assert!(took < 5.0, "{mode}: ran {took} s for --duration 1s");
        assert_eq!(report["requests"], requests, "{mode}: {text}");
    }
}

// ---------------------------------------------------------------------------
// Issue 11: colour only on a terminal, and error messages that are one line,
// state their cause once and hint at what fits the command.

/// How often `needle` occurs in `line`.
fn count(line: &str, needle: &str) -> usize {
    line.matches(needle).count()
}

/// A certificate file's serial, hex in capitals as `tlb pki show` prints it.
fn serial_of(cert: &Path) -> String {
    use rustls::pki_types::pem::PemObject;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let pem = fs::read(cert).expect("certificate file");
    let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).expect("PEM certificate");
    let (_, c) = X509Certificate::from_der(&der).expect("DER certificate");
    hex::encode_upper(c.raw_serial())
}

/// Valid from two days ago until yesterday.
fn expired() -> tlb::core::pki::Validity {
    let now = time::OffsetDateTime::now_utc();
    tlb::core::pki::Validity {
        not_before: now - time::Duration::days(2),
        not_after: now - time::Duration::days(1),
    }
}

#[test]
fn refusal_lines_show_what_was_presented_and_audit_mode_logs_once() {
    use tlb::core::pki::{KeyType, Pki, Role, San};
    let dir = init_dir();
    let d = dir.path();
    let pki = d.join("pki");
    let sans = [
        San::Uri("spiffe://prod.example/ns/web/sa/six".into()),
        San::Dns("six.internal".into()),
    ];
    let serial = Pki::new(&pki)
        .issue_with_sans("client6", Role::Client, KeyType::EcdsaP256, expired(), false, &sans)
        .expect("an expired client certificate with SANs")
        .serial;
    let config = d.join("tlb.toml");
    let text = fs::read_to_string(&config).expect("config");
    assert!(text.contains("\nname = \"echo\"\n"), "{text}");
    let audited = text.replacen("\nname = \"echo\"\n", "\nname = \"echo\"\nmode = \"audit\"\n", 1);
    fs::write(&config, audited).expect("config");
    let sys = start_system(d);

    // A certificate error is refused in audit mode too, and its line names
    // what the certificate presents and which app refused it.
    assert_eq!(sys.client(d, &["--cert", "client6", "hi"]).code(), Some(3));
    let wanted = format!("identity=client6 serial={serial}");
    wait_until("client6's refusal line", Duration::from_secs(10), || {
        sys.log().lines().any(|l| l.contains(&wanted))
    });
    let log = sys.log();
    let line = log.lines().find(|l| l.contains(&wanted)).unwrap_or_default();
    assert!(
        line.contains("presented=cn:client6,uri:spiffe://prod.example/ns/web/sa/six,dns:six.internal"),
        "{line}"
    );
    assert!(
        line.contains("app=echo") && line.contains("certificate expired"),
        "{line}"
    );

    // client4 has no [[client]] entry: admitted twice in audit mode, logged once.
    for _ in 0..2 {
        let out = sys.client(d, &["--cert", "client4", "hi"]);
        assert_eq!(out.code(), Some(0), "{out:?}");
    }
    wait_until("client4's second access line", Duration::from_secs(10), || {
        sys.log()
            .lines()
            .filter(|l| l.contains("access") && l.contains("identity=client4"))
            .count()
            == 2
    });
    let log = sys.log();
    let audits: Vec<&str> = log.lines().filter(|l| l.contains("audit: admitted")).collect();
    assert_eq!(audits.len(), 1, "{log}");
    assert!(
        audits[0].contains("identity=client4") && audits[0].contains("reason=\"not_listed\""),
        "{}",
        audits[0]
    );
    assert!(audits[0].contains("not a configured [[client]]"), "{}", audits[0]);
}

#[test]
fn logs_redirected_to_a_file_carry_no_colour() {
    let dir = init_dir();
    let d = dir.path();
    let mut sys = start_system(d);
    // An access line and a refusal: the lines with the most fields.
    assert_eq!(sys.client(d, &["--cert", "client2", "hello"]).code(), Some(0));
    assert_eq!(sys.client(d, &["--cert", "client4", "hello"]).code(), Some(3));
    sys.serve.signal("TERM");
    assert!(sys.serve.wait_for(Duration::from_secs(10)).is_some());
    let log = fs::read(&sys.serve_log).expect("serve log");
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("INFO") && text.contains("access"), "{text}");
    assert!(text.contains("handshake failed"), "{text}");
    assert!(
        !log.windows(2).any(|w| w == b"\x1b["),
        "ANSI escapes in a log written to a file:\n{}",
        text.escape_debug()
    );
}

#[test]
fn cert_file_without_key_file_is_one_line_naming_the_missing_flag() {
    let dir = tempfile::Builder::new().prefix("tlb-cli-").tempdir().expect("tempdir");
    let cases: &[(&[&str], &str, &str)] = &[
        (&["client", "--cert-file", "c1.crt", "hi"], "--key-file", "c1.key"),
        (&["client", "--key-file", "c1.key", "hi"], "--cert-file", "c1.crt"),
        (
            &["bench", "--target", "127.0.0.1:1", "--cert-file", "c1.crt"],
            "--key-file",
            "c1.key",
        ),
    ];
    for (args, missing, example) in cases {
        let out = tlb(args, dir.path(), CMD);
        let line = assert_one_line_error(&out);
        assert_eq!(out.code(), Some(2), "tlb {args:?}: {out:?}");
        assert!(line.contains(missing) && line.contains(example), "tlb {args:?}: {line}");
        assert!(!line.contains("required arguments"), "tlb {args:?}: {line}");
        assert_eq!(count(&line, &format!("needs {missing}")), 1, "tlb {args:?}: {line}");
    }
}

#[test]
fn connection_refused_states_its_cause_once() {
    let dir = init_dir();
    // Reserved and released: nothing listens there.
    let addr = format!("127.0.0.1:{}", free_port());
    let pki = dir.path().join("pki");
    let args = [
        "client",
        "--connect",
        &addr,
        "--pki",
        path_str(&pki),
        "--cert",
        "client1",
        "hi",
    ];
    let out = tlb(&args, dir.path(), CMD);
    let line = assert_one_line_error(&out);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(line.contains(&addr), "{line}");
    assert_eq!(count(&line.to_lowercase(), "connection refused"), 1, "{line}");
    assert_eq!(count(&line, "os error"), 1, "{line}");
    assert!(line.contains("tlb serve") && line.contains("--connect"), "{line}");
}

#[test]
fn connect_without_a_port_asks_for_host_port() {
    let dir = tempfile::Builder::new().prefix("tlb-cli-").tempdir().expect("tempdir");
    for target in ["8443", "localhost", "127.0.0.1:", ":8443"] {
        let out = tlb(&["client", "--connect", target, "hi"], dir.path(), CMD);
        let line = assert_one_line_error(&out);
        assert_eq!(out.code(), Some(2), "--connect {target}: {out:?}");
        assert!(line.contains("--connect"), "{line}");
        assert!(line.contains("HOST:PORT") && line.contains("127.0.0.1:8443"), "{line}");
        assert!(line.contains("tlb client --help"), "{line}");
    }
    // bench --target takes the same HOST:PORT, checked before any load.
    let out = tlb(&["bench", "--target", "8443", "--cert", "client1"], dir.path(), CMD);
    let line = assert_one_line_error(&out);
    assert_eq!(out.code(), Some(2), "--target 8443: {out:?}");
    assert!(line.contains("--target") && line.contains("HOST:PORT"), "{line}");
    assert!(line.contains("tlb bench --help"), "{line}");
}

#[test]
fn client_refusing_the_servers_certificate_says_so() {
    let dir = init_dir();
    let d = dir.path();
    let sys = start_system(d);

    let out = sys.client(d, &["--cert", "client2", "--server-name", "wrong", "hi"]);
    let line = assert_one_line_error(&out);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(line.contains("this client refused the server"), "{line}");
    assert!(line.contains("not valid for name \"wrong\""), "{line}");
    assert!(line.contains("localhost, 127.0.0.1, ::1"), "{line}");
    assert!(line.contains("--server-name"), "{line}");
    assert!(!line.contains("refused by"), "not the server's refusal: {line}");
    assert!(
        !line.contains("Context") && !line.contains("DnsName"),
        "a debug dump: {line}"
    );
    assert_eq!(count(&line, "wrong"), 1, "{line}");

    // A CA that did not sign the server's certificate.
    let other = d.join("other");
    let out = tlb(
        &[
            "pki",
            "init",
            "--dir",
            path_str(&other),
            "--config",
            path_str(&d.join("other.toml")),
        ],
        d,
        CMD,
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    let ca = other.join("ca.crt");
    let out = sys.client(d, &["--cert", "client2", "--ca", path_str(&ca), "hi"]);
    let line = assert_one_line_error(&out);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(line.contains("this client refused the server"), "{line}");
    assert!(line.contains("unknown issuer") && line.contains("--ca"), "{line}");
    assert!(!line.contains("UnknownIssuer"), "a debug dump: {line}");
}

#[test]
fn client_refusing_an_expired_server_certificate_says_so() {
    use tlb::core::pki::{KeyType, Pki, Role};
    let dir = init_dir();
    let d = dir.path();
    let issued = Pki::new(d.join("pki"))
        .issue("old", Role::Server, KeyType::EcdsaP256, expired(), false)
        .expect("an expired server certificate");
    let config = d.join("tlb.toml");
    let mut text = fs::read_to_string(&config).expect("config");
    for (old, new) in [("server.crt", &issued.cert), ("server.key", &issued.key)] {
        let old = format!("{:?}", path_str(&d.join("pki").join(old)));
        assert!(text.contains(&old), "no {old} in the config:\n{text}");
        text = text.replace(&old, &format!("{:?}", path_str(new)));
    }
    fs::write(&config, text).expect("rewriting the config");
    let sys = start_system(d);

    let out = sys.client(d, &["--cert", "client2", "hi"]);
    let line = assert_one_line_error(&out);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(line.contains("this client refused the server"), "{line}");
    assert!(line.contains("certificate is expired (notAfter "), "{line}");
    assert!(!line.contains("ExpiredContext"), "a debug dump: {line}");
}

#[test]
fn a_bad_client_certificate_file_is_named_with_its_fault() {
    let dir = init_dir();
    let d = dir.path();
    fs::write(
        d.join("garbage.pem"),
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .expect("writing garbage");
    let c1 = "pki/clients/client1.crt";
    let k1 = "pki/clients/client1.key";
    let cases: &[(&str, &str, &[&str])] = &[
        ("nope.crt", k1, &["client certificate nope.crt", "not found"]),
        (c1, "nope.key", &["client key nope.key", "not found"]),
        ("tlb.toml", k1, &["client certificate tlb.toml", "holds no certificate"]),
        ("garbage.pem", k1, &["client certificate garbage.pem", "not valid PEM"]),
        (c1, "tlb.toml", &["client key tlb.toml", "holds no private key"]),
        (
            c1,
            "pki/clients/client2.key",
            &["client2.key does not match", "client1.crt"],
        ),
    ];
    for (cert, key, wanted) in cases {
        let args = [
            "client",
            "--connect",
            "127.0.0.1:1",
            "--cert-file",
            cert,
            "--key-file",
            key,
            "hi",
        ];
        let out = tlb(&args, d, CMD);
        let line = assert_one_line_error(&out);
        assert_eq!(out.code(), Some(1), "{args:?}: {out:?}");
        for w in *wanted {
            assert!(line.contains(w), "{args:?}: {w:?} not in {line}");
        }
        assert!(!line.contains("ca.crt"), "the CA is not at fault: {line}");
        assert!(!line.contains("os error 2"), "{line}");
    }
    // The CA file, when it is the one at fault, is named as such.
    let out = tlb(
        &["client", "--connect", "127.0.0.1:1", "--ca", "nope.crt", "hi"],
        d,
        CMD,
    );
    let line = assert_one_line_error(&out);
    assert!(line.contains("CA file (--ca) nope.crt: not found"), "{line}");
}

#[test]
fn upstream_bind_errors_hint_per_errno_at_its_own_flags() {
    let dir = tempfile::Builder::new().prefix("tlb-cli-").tempdir().expect("tempdir");
    // EADDRINUSE: the port is held by this test.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let busy = held.local_addr().expect("its address").to_string();
    let out = tlb(&["upstream", "--listen", &busy], dir.path(), CMD);
    let line = assert_one_line_error(&out);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert_eq!(count(&line, "in use"), 1, "{line}");
    assert!(line.contains("another process") && line.contains("--listen"), "{line}");
    assert!(!line.contains("config"), "tlb upstream has no config: {line}");
    // EADDRNOTAVAIL: 192.0.2.1 (TEST-NET-1) is no address of this machine.
    let out = tlb(&["upstream", "--listen", "192.0.2.1:9001"], dir.path(), CMD);
    let line = assert_one_line_error(&out);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(line.contains("not an address of this machine"), "{line}");
    assert!(line.contains("--listen"), "{line}");
    assert!(!line.contains("another process"), "that hint is for EADDRINUSE: {line}");
    // EACCES (a port below 1024 without privileges) can only be seen when
    // not root; its hint is checked by net::tests either way.
    if let Err(e) = std::net::TcpListener::bind("127.0.0.1:1")
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        let out = tlb(&["upstream", "--listen", "127.0.0.1:1"], dir.path(), CMD);
        let line = assert_one_line_error(&out);
        assert!(line.contains("below 1024"), "{line}");
    }
    drop(held);
}

#[test]
fn refused_certificates_are_logged_with_identity_and_serial() {
    use tlb::core::pki::{KeyType, Pki, Role};
    let dir = init_dir();
    let d = dir.path();
    let pki = d.join("pki");
    let expired_serial = Pki::new(&pki)
        .issue("client5", Role::Client, KeyType::EcdsaP256, expired(), false)
        .expect("an expired client certificate")
        .serial;
    let sys = start_system(d);

    // Revoked, then reloaded.
    let out = tlb(&["pki", "revoke", "client1", "--dir", path_str(&pki)], d, CMD);
    assert_eq!(out.code(), Some(0), "{out:?}");
    sys.serve.signal("HUP");
    wait_until("the reload", Duration::from_secs(20), || sys.log().contains("reloaded"));

    let cases = [
        (
            "client1",
            serial_of(&pki.join("clients/client1.crt")),
            "certificate revoked",
        ),
        (
            "client4",
            serial_of(&pki.join("clients/client4.crt")),
            "not a configured [[client]]",
        ),
        ("client5", expired_serial, "certificate expired"),
    ];
    for (name, serial, why) in &cases {
        let out = sys.client(d, &["--cert", name, "hi"]);
        assert_eq!(out.code(), Some(3), "{name}: {out:?}");
        let wanted = format!("identity={name} serial={serial}");
        wait_until(&format!("the refusal line of {name}"), Duration::from_secs(10), || {
            sys.log()
                .lines()
                .any(|l| l.contains("handshake failed") && l.contains(&wanted))
        });
        let log = sys.log();
        let line = log.lines().find(|l| l.contains(&wanted)).unwrap_or_default();
        assert!(line.contains(why), "{name}: {line}");
        assert!(!line.contains("Revoked") && !line.contains("Context"), "{line}");
    }
    // An admitted client's lines carry no serial: nothing extra on that path.
    assert_eq!(sys.client(d, &["--cert", "client2", "hi"]).code(), Some(0));
    wait_until("client2's access line", Duration::from_secs(10), || {
        sys.log().contains("identity=client2")
    });
    let log = sys.log();
    assert!(
        log.lines()
            .filter(|l| l.contains("client2"))
            .all(|l| !l.contains("serial=")),
        "{log}"
    );
}
