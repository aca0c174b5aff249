//! `tlb bench` fails loudly: the real binary against real sockets (labs on
//! `127.0.0.1:0`, a free port, plain echoes). Each failure stops early or
//! at the end of a short run with one diagnosis line and exit status 1;
//! the error-rate threshold decides the exit status; refused handshakes
//! are errors, never connections; Ctrl-C prints the partial report, exits
//! 130 and leaves no temporary directory; the limits `tlb pki init`
//! writes admit a default `bench --target` in rr mode.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{
    Bounded, ChildGuard, Echo, app_section, base, client_section, foreign_client, free_port, lab, opts, standard_lab,
    tlb, tlb_bin,
};
use tlb::core::config::{Config, example_toml};
use tlb::core::tools::bench::DEFAULT_CONNECTIONS;
use tlb::core::tools::lab::Lab;

/// A bench that should stop early: far less than its --duration.
const QUICK: Duration = Duration::from_secs(10);
/// Bound for a whole bench run in these tests (they use 1-3 s durations).
const RUN: Duration = Duration::from_secs(60);

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `tlb bench ARGS...` in a fresh directory, bounded by `limit`; also
/// returns how long it took.
fn bench<S: AsRef<str>>(args: &[S], limit: Duration) -> (Bounded, Duration) {
    let dir = tempfile::Builder::new()
        .prefix("tlb-bench-")
        .tempdir()
        .expect("tempdir");
    let all: Vec<&str> = std::iter::once("bench").chain(args.iter().map(AsRef::as_ref)).collect();
    let t0 = Instant::now();
    let out = tlb(&all, dir.path(), limit);
    (out, t0.elapsed())
}

/// `--target TARGET --pki DIR --cert NAME` for a client of `lab`'s PKI,
/// then `extra`.
fn against(target: &str, lab: &Lab, name: &str, extra: &[&str]) -> Vec<String> {
    let pki = path(lab.pki.dir()).to_string();
    let mut v: Vec<String> = ["--target", target, "--pki", &pki, "--cert", name]
        .map(String::from)
        .into();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// The one `tlb: error: ...` line of a run (asserting there is exactly one).
fn error_line(out: &Bounded) -> String {
    let lines: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("tlb: error:")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {out:?}");
    lines[0].to_string()
}

/// Asserts a diagnosed failure: exit 1, within `QUICK`, one error line
/// holding every one of `wanted`; returns that line.
fn assert_diagnosed(what: &str, out: &Bounded, took: Duration, wanted: &[&str]) -> String {
    assert_eq!(out.code(), Some(1), "{what}: {out:?}");
    assert!(
        took < QUICK,
        "{what}: took {took:?}, the early stop should end it sooner"
    );
    let line = error_line(out);
    for w in wanted {
        assert!(line.contains(w), "{what}: {w:?} not in {line:?}");
    }
    line
}

#[test]
fn nothing_listening_stops_early_naming_it() {
    let lab = standard_lab(1); // for its PKI only
    let target = format!("127.0.0.1:{}", free_port());
    let (out, took) = bench(&against(&target, &lab, "client1", &[]), RUN);
    let line = assert_diagnosed(
        "nothing listening",
        &out,
        took,
        &[
            "stopped after",
            &format!("connection refused at {target}"),
            "nothing is listening",
            "--target",
        ],
    );
    assert!(line.contains("0 of "), "{line}");
    // The partial table is printed too, and shows no fake latency.
    assert!(out.stdout.contains("connect: connection refused"), "{}", out.stdout);
    assert!(!out.stdout.contains("0.000 ms"), "{}", out.stdout);
}

#[test]
fn a_plain_port_is_not_tls_and_the_line_suggests_plain() {
    let greeting = Echo::start("127.0.0.1:0".parse().expect("addr"), "plain");
    let silent = lab(opts(1, false), |p| crate::common::standard_config(p, "", ""));
    for (what, addr) in [
        ("greeting echo", greeting.addr),
        ("silent echo", silent.paths.upstreams[0]),
    ] {
        let target = addr.to_string();
        let (out, took) = bench(&against(&target, &silent, "client1", &[]), RUN);
        assert_diagnosed(what, &out, took, &[&format!("{target} does not speak TLS"), "--plain"]);
        // And with --plain, the same echo is a clean run.
        let (out, _) = bench(
            &["--target", &target, "--plain", "--duration", "1s", "--connections", "2"],
            RUN,
        );
        assert_eq!(out.code(), Some(0), "{what} with --plain: {out:?}");
    }
}

#[test]
fn a_refused_identity_names_the_alert() {
    let lab = standard_lab(1);
    let target = lab.addr().to_string();
    let (out, took) = bench(&against(&target, &lab, "client4", &[]), RUN);
    assert_diagnosed(
        "client4",
        &out,
        took,
        &["alert access_denied", "identity is not authorized"],
    );
    // A certificate from another CA: unknown_ca.
    let (_, foreign) = foreign_client(&lab);
    let (c, k) = tlb::core::pki::Pki::new(foreign.path().join("pki")).client("client1");
    let ca = lab.pki.ca_cert();
    let args = [
        "--target",
        &target,
        "--cert-file",
        path(&c),
        "--key-file",
        path(&k),
        "--ca",
        path(&ca),
    ];
    let (out, took) = bench(&args, RUN);
    assert_diagnosed("foreign CA", &out, took, &["alert unknown_ca", "does not trust"]);
}

/// A lab whose client1 has `limits` (`key = value` lines) on app `echo`.
fn limited_lab(limits: &str) -> Lab {
    lab(opts(1, true), |p| {
        base(p, "")
            .app(app_section("echo", p.listen, &[], &crate::common::ups(p)))
            .client(client_section("client1", &["echo"], limits))
            .render()
    })
}

#[test]
fn a_per_client_limit_is_closed_after_the_handshake_and_said_so() {
    // max_connections = 1, four persistent connections: one gets through
    // (open loop at 100/s in all, so about 3 of 4 attempts fail).
    let lab = limited_lab("max_connections = 1");
    let target = lab.addr().to_string();
    let extra = ["--connections", "4", "--rate", "100", "--duration", "1s"];
    let args = against(&target, &lab, "client1", &extra);
    let (out, took) = bench(&args, RUN);
    assert_diagnosed(
        "max_connections = 1",
        &out,
        took,
        &[
            "let 1 of 4 connection(s) through",
            "max_connections",
            "no healthy upstream",
            "server log",
        ],
    );
    // A tiny rate, in handshake mode: one connection gets through, then
    // every one is closed after the handshake; the early stop ends it.
    let lab = limited_lab("connection_rate = 0.001\nburst = 1");
    let target = lab.addr().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let extra = ["--mode", "handshake", "--connections", "4", "--json", path(&json)];
    let args = against(&target, &lab, "client1", &extra);
    let (out, took) = bench(&args, RUN);
    assert_diagnosed(
        "connection_rate = 0.001",
        &out,
        took,
        &[
            "stopped after",
            "let 1 connection(s) through",
            "connection_rate",
            "no healthy upstream",
        ],
    );
    let report = read_json(&json);
    assert_eq!(
        report["handshakes"], 1,
        "only the admitted one is a connection: {report}"
    );
    assert_eq!(report["stopped"], "early", "{report}");
    assert!(
        report["errors"]["closed before reply"].as_u64() >= Some(199),
        "{report}"
    );
}

fn read_json(p: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", p.display()))
}

#[test]
fn handshake_mode_counts_refused_handshakes_as_errors_not_connections() {
    let lab = standard_lab(1);
    let target = lab.addr().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let args = against(
        &target,
        &lab,
        "client4",
        // Fewer than the server's max_handshakes_per_ip (64): a refused
        // attempt's slot is freed a moment after the client sees the
        // alert, so 64 clients retrying at once can meet the cap, whose
        // silent close would be another error than the refusal measured.
        &["--mode", "handshake", "--connections", "8", "--json", path(&json)],
    );
    let (out, took) = bench(&args, RUN);
    assert_diagnosed("client4, handshake mode", &out, took, &["alert access_denied"]);
    let r = read_json(&json);
    assert_eq!(r["handshakes"], 0, "{r}");
    assert_eq!(r["connections_per_s"], 0.0, "{r}");
    assert_eq!(r["handshake_latency"]["count"], 0, "{r}");
    let refused = r["errors"]["tls refused: server sent alert access_denied"]
        .as_u64()
        .unwrap_or(0);
    assert!(refused > 0 && Some(refused) == r["errors_total"].as_u64(), "{r}");
    assert_eq!(r["attempts"], r["errors_total"], "{r}");
    assert!(out.stdout.contains("connections/s"), "{}", out.stdout);
}

#[test]
fn the_error_rate_threshold_decides_the_exit_status() {
    // A clean self-hosted run exits 0; its output is plain text off a
    // terminal, and says what the mode does.
    let (out, _) = bench(&["--duration", "1s", "--connections", "4"], RUN);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stderr.contains("rr: 4 persistent connection(s), each sends 64 B and waits for its echo (closed loop), 1s against 127.0.0.1:"),
        "{}",
        out.stderr
    );
    assert!(!out.all().contains('\r') && !out.all().contains('\u{1b}'), "{out:?}");
    assert!(!out.all().contains("Rr load"), "{out:?}");
    assert!(
        out.stdout.contains("connections opened") && !out.stdout.contains("connections/s"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("errors                          0  (0.00 % of "),
        "{}",
        out.stdout
    );
    // About half the attempts fail: one of two connections is over
    // max_connections = 1 (open loop at 100/s, so the share is steady).
    let lab = limited_lab("max_connections = 1");
    let target = lab.addr().to_string();
    let run = |extra: &[&str]| {
        let mut args = against(
            &target,
            &lab,
            "client1",
            &["--connections", "2", "--rate", "100", "--duration", "1s"],
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        bench(&args, RUN).0
    };
    let out = run(&[]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    let line = error_line(&out);
    assert!(
        line.contains("over --max-error-rate 1 %") && line.contains("max_connections"),
        "{line}"
    );
    let out = run(&["--max-error-rate", "100"]);
    assert_eq!(out.code(), Some(0), "--max-error-rate 100: {out:?}");
    assert!(out.stdout.contains("closed before reply"), "{}", out.stdout);
    // Out of range: a usage error.
    let (out, _) = bench(&["--max-error-rate", "101"], RUN);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(error_line(&out).contains("--max-error-rate"), "{out:?}");
}

#[test]
fn the_generated_limits_admit_a_default_bench() {
    let clients: Vec<String> = (1..=4).map(|i| format!("client{i}")).collect();
    let sample = Config::parse(&example_toml("pki", &clients), Path::new("/etc/tlb/tlb.toml")).expect("sample loads");
    let d = sample.defaults;
    let n = u32::try_from(DEFAULT_CONNECTIONS).expect("fits");
    assert!(
        d.max_connections >= n && d.burst >= n,
        "{d:?} vs {DEFAULT_CONNECTIONS} connections"
    );
    let lab = lab(opts(3, true), |p| {
        p.sample()
            .defaults(d.into())
            .timeouts(crate::common::timeouts_from("drain = \"1s\""))
            .render()
    });
    let target = lab.addr().to_string();
    let (out, _) = bench(&against(&target, &lab, "client1", &["--duration", "1s"]), RUN);
    assert_eq!(
        out.code(),
        Some(0),
        "default flags (rr, {DEFAULT_CONNECTIONS} connections): {out:?}"
    );
    // Handshake mode runs into connection_rate, and the line names it.
    let args = against(&target, &lab, "client1", &["--mode", "handshake", "--duration", "3s"]);
    let (out, _) = bench(&args, RUN);
    assert_eq!(out.code(), Some(1), "{out:?}");
    let line = error_line(&out);
    assert!(
        line.contains("connection_rate") && line.contains("over --max-error-rate"),
        "{line}"
    );
}

/// Waits (at most 30 s) for a signalled `tlb bench` to exit; asserts exit
/// 130 and returns its stdout (the rest of its stderr lands in `seen`).
pub(crate) fn exits_interrupted(
    child: &mut ChildGuard,
    stderr: &mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<String>,
    seen: &mut Vec<String>,
) -> String {
    let status = child
        .wait_for(Duration::from_secs(30))
        .expect("bench exits after SIGINT");
    let report = reader.join().expect("stdout reader");
    seen.extend(stderr.try_iter());
    assert_eq!(status.code(), Some(130), "{status:?}\n{report}\n{seen:?}");
    report
}

/// `tlb bench ARGS` in `cwd` with `TMPDIR=tmp`: the child, its stderr
/// lines as they come, and a thread collecting its stdout.
pub(crate) fn spawn_bench(
    args: &[&str],
    tmp: &std::path::Path,
    cwd: &std::path::Path,
) -> (ChildGuard, mpsc::Receiver<String>, std::thread::JoinHandle<String>) {
    let mut cmd = Command::new(tlb_bin());
    cmd.arg("bench")
        .args(args)
        .current_dir(cwd)
        .env("TMPDIR", tmp)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::spawn("tlb bench", &mut cmd);
    let stderr = lines_of(child.child.stderr.take().expect("stderr"));
    let mut stdout = child.child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    (child, stderr, reader)
}

/// Lines of a child's pipe, sent as they come.
pub(crate) fn lines_of(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Lines from `rx` until one starts with `prefix` (panics after `limit`).
pub(crate) fn wait_for_line(rx: &mpsc::Receiver<String>, prefix: &str, limit: Duration, seen: &mut Vec<String>) {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let done = l.starts_with(prefix);
                seen.push(l);
                if done {
                    return;
                }
            }
            Err(e) => panic!("no line starting with {prefix:?} within {limit:?} ({e}): {seen:?}"),
        }
    }
}

#[test]
fn sigint_prints_the_partial_report_and_removes_the_lab() {
    let tmp = tempfile::Builder::new()
        .prefix("tlb-bench-tmpdir-")
        .tempdir()
        .expect("tempdir");
    let cwd = tempfile::tempdir().expect("tempdir");
    let (mut child, stderr, reader) = spawn_bench(&["--duration", "60s", "--connections", "4"], tmp.path(), cwd.path());
    let mut seen = Vec::new();
    wait_for_line(&stderr, "self-hosted:", Duration::from_secs(30), &mut seen);
    wait_for_line(&stderr, "rr: 4 persistent", Duration::from_secs(30), &mut seen);
    let entries = || std::fs::read_dir(tmp.path()).expect("listing TMPDIR").count();
    assert_eq!(entries(), 1, "the lab's temporary directory is in TMPDIR while it runs");
    child.signal("INT");
    let report = exits_interrupted(&mut child, &stderr, reader, &mut seen);
    assert!(report.contains("interrupted: partial figures"), "{report}");
    assert!(
        report.contains("requests/s") && report.contains("connections opened"),
        "{report}"
    );
    let secs: f64 = report
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("mode")?
                .split(", ")
                .nth(3)?
                .strip_suffix(" s")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no duration in the mode row: {report}"));
    assert!(secs < 30.0, "the report covers the time run ({secs} s), not --duration");
    assert_eq!(
        entries(),
        0,
        "TMPDIR left with {:?}",
        std::fs::read_dir(tmp.path()).map(|d| d.count())
    );
}
