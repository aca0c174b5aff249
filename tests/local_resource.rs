//! The balancer running out of its own file descriptors while connecting
//! to an upstream: the client is refused as `local_resource`, and no
//! upstream is blamed (no passive failure, no `upstream_connect_failed`).
//!
//! The test runs alone in a child process of the test binary (it re-runs
//! itself with `--exact`): it lowers the process's soft RLIMIT_NOFILE,
//! which every thread of the process shares, so tests on other threads
//! would break it and be broken by it. The limit is
//! set so that exactly two more descriptors fit (the client's socket and
//! the balancer's accepted socket) and the upstream socket gets EMFILE:
//! first every hole below the highest open descriptor is filled (the
//! kernel always hands out the lowest free one), so "descriptors still
//! allowed = limit - (highest open + 1)" holds.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rlimit::Resource;
use tlb::core::tools::client::{ClientError, exchange};
use tlb::core::tools::lab::LabOptions;

use crate::common::*;

/// Restores the soft open-file limit when dropped (also on a panic).
struct NofileGuard {
    soft: u64,
    hard: u64,
}

impl NofileGuard {
    fn lower_to(soft: u64) -> NofileGuard {
        let (old_soft, hard) = rlimit::getrlimit(Resource::NOFILE).expect("getrlimit(RLIMIT_NOFILE)");
        assert!(soft <= hard, "cannot lower the soft limit to {soft}: hard limit {hard}");
        rlimit::setrlimit(Resource::NOFILE, soft, hard).expect("lowering RLIMIT_NOFILE");
        NofileGuard { soft: old_soft, hard }
    }
}

impl Drop for NofileGuard {
    fn drop(&mut self) {
        if let Err(e) = rlimit::setrlimit(Resource::NOFILE, self.soft, self.hard) {
            eprintln!("restoring RLIMIT_NOFILE to {}: {e}", self.soft);
        }
    }
}

/// The process's open descriptors and what each refers to (the directory
/// handle used for listing is not among them).
fn open_fds() -> Vec<(i32, String)> {
    let listed: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .expect("listing /proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // The listing's own handle is closed by now: keep the fds still open.
    listed
        .into_iter()
        .filter_map(|fd| {
            let target = std::fs::read_link(Path::new("/proc/self/fd").join(fd.to_string())).ok()?;
            Some((fd, target.display().to_string()))
        })
        .collect()
}

fn sockets() -> usize {
    open_fds().iter().filter(|(_, t)| t.starts_with("socket:")).count()
}

/// Opens /dev/null until every descriptor from 0 to the highest open one
/// is taken; returns the files (keep them open) and the highest fd.
fn fill_holes() -> (Vec<File>, i32) {
    let fds = open_fds();
    let max = fds.iter().map(|(fd, _)| *fd).max().expect("some open descriptor");
    let holes = usize::try_from(max + 1).expect("fd") - fds.len();
    let files: Vec<File> = (0..holes)
        .map(|_| File::open("/dev/null").expect("opening /dev/null"))
        .collect();
    for f in &files {
        assert!(f.as_raw_fd() < max, "a filler got fd {} above {max}", f.as_raw_fd());
    }
    let after = open_fds();
    assert_eq!(
        after.len(),
        usize::try_from(max + 1).expect("fd"),
        "descriptors 0..={max} are not all open after filling: {after:?}"
    );
    (files, max)
}

/// Old code (9d5235e): EMFILE on the upstream socket was refused as
/// `upstream_connect_failed` (there was no `local_resource` reason), so
/// the balancer's own shortage read as an upstream problem.
#[test]
fn upstream_connect_emfile_is_refused_as_local_resource_and_blames_no_upstream() {
    if std::env::var_os(ALONE).is_some() {
        return emfile_on_upstream_connect();
    }
    let name = format!(
        "{}::upstream_connect_emfile_is_refused_as_local_resource_and_blames_no_upstream",
        module_path!().split_once("::").map_or(module_path!(), |(_, m)| m)
    );
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = run_bounded(
        std::process::Command::new(exe)
            .args(["--exact", &name, "--test-threads=1", "--nocapture"])
            .env(ALONE, "1"),
        b"",
        Duration::from_secs(60),
    );
    assert_eq!(
        out.code(),
        Some(0),
        "the test in its own process failed:\n{}",
        out.all()
    );
    assert!(out.stdout.contains("1 passed"), "the child ran no test:\n{}", out.all());
}

/// Set in the child process that runs the test alone.
const ALONE: &str = "TLB_TEST_EMFILE_ALONE";

fn emfile_on_upstream_connect() {
    let lab = lab(
        LabOptions {
            admin: true,
            ..opts(2, true)
        },
        |p| standard_config(p, "connect = \"2s\"\n", ""),
    );
    let opts = lab.client(Some("client1")).expect("client options");
    // Warm up: the lab's runtime, reactor and listeners are all set up
    // (nothing is created lazily during the exchange under the limit).
    smol::block_on(greeted_exchange(&opts, "warm-up\n")).expect("the warm-up exchange");
    // Every socket of the warm-up closed: only the listeners are left
    // (the balancer's and the copy it keeps for an upgrade, the admin
    // endpoint's and two upstreams').
    let listeners = 5;
    wait_until("the warm-up's sockets closed", T, || sockets() == listeners);
    wait_until("no connection open in the balancer", T, || {
        lab.server.metrics.active.load(Ordering::Relaxed) == 0
    });
    let upstreams = || {
        let g = lab.server.current();
        let a = g.app("echo").expect("app echo");
        a.balancer
            .upstreams()
            .iter()
            .map(|u| (u.health.passive_failures(), u.total()))
            .collect::<Vec<_>>()
    };
    let before = upstreams();
    assert_eq!(before.iter().map(|u| u.1).sum::<u64>(), 1, "the warm-up: {before:?}");

    let result = {
        let (fillers, max) = fill_holes();
        // fds max+1 (the client's socket) and max+2 (the accepted one) fit;
        // the upstream socket would be max+3: EMFILE.
        let limit = u64::try_from(max).expect("fd") + 3;
        eprintln!("descriptors 0..={max} open; soft RLIMIT_NOFILE lowered to {limit}");
        let guard = NofileGuard::lower_to(limit);
        let result = smol::block_on(exchange(&opts, b"under the limit\n", T));
        drop(guard);
        drop(fillers);
        result
    };
    assert!(
        matches!(result, Err(ClientError::ClosedBeforeReply { .. })),
        "the exchange under the open-file limit: {result:?}"
    );

    let text = scrape(&lab);
    let refused = |reason: &str| metric(&text, "tlb_refused_total", &format!("reason=\"{reason}\""));
    assert_eq!(refused("local_resource"), Some(1.0), "{text}");
    assert_eq!(refused("upstream_connect_failed"), Some(0.0), "{text}");
    assert_eq!(metric_sum(&text, "tlb_refused_total"), 1.0, "{text}");
    assert_eq!(metric_sum(&text, "tlb_upstream_passive_failures_total"), 0.0, "{text}");
    let after = upstreams();
    assert_eq!(
        after, before,
        "an upstream was blamed or reached: (passive failures, total) per upstream"
    );

    // With descriptors again, the same client gets through.
    let (_, echo) = smol::block_on(greeted_exchange(&opts, "after\n")).expect("after restoring the limit");
    assert_eq!(echo, "after\n");
}
