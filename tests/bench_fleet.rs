//! `tlb bench --fleet N`: the real binary stands up a real `redis-server`
//! and N instances on loopback (real TLS, `127.0.0.1:0` ports), and its
//! report shows the client's limit holding and exercised (refusals
//! happened, every one counted by the instances as `max_connections`);
//! the loader's peak sees a fleet that does not share its limit as over
//! it; Ctrl-C (once, or twice) leaves no temporary directory and no
//! redis-server; out-of-range flags are usage errors. SKIP (loudly)
//! without `redis-server`, except the flag checks, which need none.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tlb::core::config::writer::{ClientSection, LimitsSection};
use tlb::core::tools::bench::Verdict;
use tlb::core::tools::bench::fleet::{FleetOptions, Member, run_on, verdict};
use tlb::core::tools::lab::{Lab, LabPaths};
use tlb::core::tools::redis::RedisServer;

use crate::bench::{exits_interrupted, spawn_bench, wait_for_line};
use crate::common::{Bounded, app_section, base, lab, opts, run_bounded, tlb, tlb_bin, ups};

/// Bound for a whole run in these tests (they use 1-2 s durations).
const RUN: Duration = Duration::from_secs(60);

/// Whether redis-server is installed; says SKIP loudly when not.
fn redis_or_skip(test: &str) -> bool {
    let there = RedisServer::installed();
    if !there {
        eprintln!("SKIP {test}: redis-server is not installed (apt-get install redis-server; .ci/run does it)");
    }
    there
}

/// `tlb bench ARGS...` with `TMPDIR=tmp`, bounded by [`RUN`].
fn fleet_bench(args: &[&str], tmp: &Path) -> Bounded {
    let cwd = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(tlb_bin());
    cmd.arg("bench")
        .args(args)
        .current_dir(cwd.path())
        .env("TMPDIR", tmp)
        .env_remove("RUST_LOG");
    run_bounded(&mut cmd, b"", RUN)
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("listing TMPDIR")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// The redis port in the `self-hosted fleet: redis-server at redis://127.0.0.1:PORT,` line.
fn redis_port(stderr_line: &str) -> u16 {
    stderr_line
        .split("redis://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no redis port in {stderr_line:?}"))
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn a_fleet_of_two_holds_the_limit_and_exercises_it() {
    if !redis_or_skip("a_fleet_of_two_holds_the_limit_and_exercises_it") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let json = out_dir.path().join("fleet.json");
    let json_arg = json.to_str().expect("utf-8 path");
    let out = fleet_bench(&["--fleet", "2", "--duration", "2s", "--json", json_arg], tmp.path());
    if out.code() != Some(0) {
        eprintln!("{out:?}");
    }
    // The verdict line in the message itself: a CI log cut short keeps it.
    assert_eq!(out.code(), Some(0), "{}", out.stderr.lines().last().unwrap_or(""));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("JSON");
    let (peak, limit) = (u(&r["peak_held"]), u(&r["limit"]));
    assert_eq!(limit, 4, "default limit 2 x N: {r}");
    assert_eq!(u(&r["connections"]), 8, "default connections 2 x limit: {r}");
    assert!(peak >= 1 && peak <= limit, "peak {peak}, limit {limit}: {r}");
    let verdict_line = format!("limit held: peak {peak} <= {limit} across 2 instances");
    assert_eq!(out.stdout.lines().last(), Some(verdict_line.as_str()), "{}", out.stdout);
    // The limit was exercised: refusals, each one counted by an instance
    // as max_connections, and none for another reason.
    let refused = u(&r["refused"]);
    assert!(refused > 0, "no refusal: the limit was not exercised: {r}");
    assert_eq!(u(&r["errors_total"]), 0, "{r}");
    let instances = r["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), 2, "{r}");
    let mut server_refused = 0;
    for (k, i) in instances.iter().enumerate() {
        let name = format!("tlb-{}", k + 1);
        assert_eq!(i["name"], name.as_str(), "{r}");
        assert_eq!(i["cluster_mode"], "shared", "{r}");
        assert_eq!(u(&i["local_decisions"]), 0, "{r}");
        assert!(u(&i["admitted"]) > 0, "{name} admitted nothing: {r}");
        assert!(u(&i["peak_held"]) <= peak, "{r}");
        assert_eq!(u(&i["server_refused_other"]), 0, "{r}");
        server_refused += u(&i["server_refused_max_connections"]);
        let row = out
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}: {}", out.stdout));
        let figures: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            figures.get(2).copied(),
            Some(u(&i["admitted"]).to_string().as_str()),
            "{row}"
        );
        assert_eq!(figures.last().copied(), Some("shared"), "{row}");
    }
    assert_eq!(
        server_refused, refused,
        "the instances counted every refusal the client saw: {r}"
    );
    assert!(
        out.stdout.contains(&format!("at once (limit {limit})")),
        "{}",
        out.stdout
    );
    assert!(!out.all().contains('\r') && !out.all().contains('\u{1b}'), "{out:?}");
    assert!(
        entries(tmp.path()).is_empty(),
        "TMPDIR left with {:?}",
        entries(tmp.path())
    );
}

/// An instance of a fleet without `[cluster]`, serving with the PKI at
/// `pki` (else its own): client1 may hold `max_connections` here alone.
fn unshared(name: &str, pki: Option<&Path>, max_connections: u32) -> (Lab, Member) {
    let l = lab(opts(1, false), |p| {
        let p = LabPaths {
            pki_dir: pki.map_or_else(|| p.pki_dir.clone(), Path::to_path_buf),
            ..p.clone()
        };
        let client = ClientSection {
            limits: LimitsSection {
                max_connections: Some(max_connections),
                connection_rate: Some(1e6),
                burst: Some(1_000_000),
            },
            ..ClientSection::new("client1", ["echo"])
        };
        base(&p, "")
            .app(app_section("echo", p.listen, &[], &ups(&p)))
            .client(client)
            .render()
    });
    let m = Member {
        name: name.into(),
        addr: l.addr(),
        server: l.server.clone(),
    };
    (l, m)
}

#[test]
fn a_fleet_that_does_not_share_its_limit_is_measured_over_it() {
    // Two instances each letting client1 hold 2 (one PKI, no [cluster]),
    // loaded as a fleet limited to 2: the loader's one counter must see
    // more than 2 held at once, and the verdict say broken.
    let (a, ma) = unshared("tlb-1", None, 2);
    let (_b, mb) = unshared("tlb-2", Some(a.pki.dir()), 2);
    let client = a.client_with(Some("client1"), "localhost", false).expect("client1");
    let o = FleetOptions {
        instances: 2,
        limit: 2,
        connections: 8,
        duration: Duration::from_secs(1),
        size: 64,
        resume: false,
        threads: 1,
        instance_threads: 1,
        op_timeout: Duration::from_secs(10),
    };
    let r = run_on(&[ma, mb], &client, "none", &o, std::future::pending(), |_, _| {}).expect("run");
    assert!(
        r.peak_held > 2,
        "two unshared limits of 2 held at most {} at once: {r:?}",
        r.peak_held
    );
    assert!(r.peak_held <= 4, "{r:?}");
    assert_eq!(
        verdict(&r, 1.0),
        Verdict::Failed(format!("limit broken: peak {} > 2 across 2 instances", r.peak_held))
    );
    assert!(
        r.instances.iter().all(|i| i.cluster_mode == "none" && i.peak_held <= 2),
        "{r:?}"
    );
}

#[test]
fn fleet_flags_out_of_range_are_usage_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    for args in [
        &["bench", "--fleet", "2", "--target", "x:1"][..],
        &["bench", "--fleet", "1"],
        &["bench", "--fleet", "17"],
        &["bench", "--fleet", "2", "--mode", "handshake"],
        &["bench", "--fleet", "2", "--connections", "4"],
        &["bench", "--fleet", "3", "--limit", "10", "--connections", "10"],
        &["bench", "--limit", "3"],
    ] {
        let out = tlb(args, dir.path(), RUN);
        assert_eq!(out.code(), Some(2), "{args:?}: {out:?}");
        let lines: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("tlb: error:")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one error line: {out:?}");
        assert!(
            lines[0].contains("--fleet") || lines[0].contains("--limit"),
            "{args:?}: {}",
            lines[0]
        );
    }
}

/// Starts `tlb bench --fleet 2 --duration 60s` with `TMPDIR=tmp`, waits
/// until the load runs, sends SIGINT `signals` times, and checks the exit
/// (130), the partial report, an empty TMPDIR and redis-server gone.
fn interrupted(signals: usize) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cwd = tempfile::tempdir().expect("tempdir");
    let (mut child, stderr, reader) = spawn_bench(&["--fleet", "2", "--duration", "60s"], tmp.path(), cwd.path());
    let mut seen = Vec::new();
    wait_for_line(&stderr, "self-hosted fleet:", Duration::from_secs(30), &mut seen);
    let port = redis_port(seen.last().expect("the line"));
    wait_for_line(&stderr, "fleet: 8 connection(s)", Duration::from_secs(30), &mut seen);
    assert_eq!(
        entries(tmp.path()).len(),
        2,
        "the lab's and redis's directories while it runs"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "redis-server serves"
    );
    assert_eq!(redis_pids(port).len(), 1, "its process is found by its port");
    child.signal("INT");
    if signals > 1 {
        wait_for_line(&stderr, "tlb bench: stopping", Duration::from_secs(30), &mut seen);
        child.signal("INT");
    }
    let report = exits_interrupted(&mut child, &stderr, reader, &mut seen);
    if signals == 1 {
        assert!(report.contains("interrupted: partial figures"), "{report}");
        assert!(
            !report.contains("limit held"),
            "no verdict line on a partial run: {report}"
        );
    }
    assert!(
        entries(tmp.path()).is_empty(),
        "TMPDIR left with {:?}",
        entries(tmp.path())
    );
    // The process, not the port: once freed, the port may be bound by
    // another test's server at once.
    assert!(
        redis_pids(port).is_empty(),
        "redis-server of port {port} still runs (pids {:?}) after tlb bench exited: {seen:?}",
        redis_pids(port)
    );
}

#[test]
fn sigint_stops_a_fleet_run_and_removes_redis_and_the_lab() {
    if redis_or_skip("sigint_stops_a_fleet_run_and_removes_redis_and_the_lab") {
        interrupted(1);
    }
}

#[test]
fn a_second_sigint_quits_at_once_and_still_removes_redis_and_the_lab() {
    if redis_or_skip("a_second_sigint_quits_at_once_and_still_removes_redis_and_the_lab") {
        interrupted(2);
    }
}

/// The pids of the `redis-server` processes serving `PORT`, from
/// /proc/PID/cmdline: redis-server retitles itself `redis-server
/// 127.0.0.1:PORT`; its arguments (`--port PORT`) are matched too.
fn redis_pids(port: u16) -> Vec<u32> {
    let addr = format!("127.0.0.1:{port}");
    let port = port.to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                let words: Vec<&str> = c.split(['\0', ' ']).filter(|w| !w.is_empty()).collect();
                words.first().is_some_and(|w| w.ends_with("redis-server"))
                    && (words.contains(&addr.as_str()) || words.windows(2).any(|w| w == ["--port", port.as_str()]))
            })
        })
        .collect()
}
