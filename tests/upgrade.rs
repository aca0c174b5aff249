//! `tlb serve --upgrade`: 20 clients in loops while a new process takes
//! the listening sockets over from the running one through `[control]
//! socket`: no connection refused or failed, a connection open on the old
//! process finishes there, the old process exits 0 after its drain, the
//! new one serves the app and the admin endpoint; `--upgrade` with nothing
//! running says so; a SIGHUP the moment the port accepts reloads (the
//! handler is in place before anything listens) and does not kill.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use tlb::core::tools::client::{ClientOptions, connect_to, exchange};
use tlb::core::tools::lab::{Lab, LabPaths};

use crate::common::*;

const CLIENTS: usize = 20;

struct Setup {
    lab: Lab,
    config: PathBuf,
    socket: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
}

fn setup() -> Setup {
    let lab = lab(opts(1, true), |p| {
        base(p, "")
            .app(app_section("echo", p.listen, &[], &ups(p)))
            .client(client_section("client1", &["echo"], ""))
            .render()
    });
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let socket = lab.dir().join("tlb.sock");
    let p = LabPaths {
        listen,
        admin: Some(admin),
        ..lab.paths.clone()
    };
    let text = base(&p, "drain = \"20s\"")
        .control(socket.to_str().expect("utf-8 path"))
        .app(app_section("echo", listen, &[], &ups(&p)))
        // Limits out of the way: 20 clients in tight loops.
        .client(client_section(
            "client1",
            &["echo"],
            "max_connections = 1000\nconnection_rate = 1000000\nburst = 1000000",
        ))
        .render();
    let config = lab.dir().join("upgrade.toml");
    std::fs::write(&config, text).expect("config");
    Setup {
        lab,
        config,
        socket,
        listen,
        admin,
    }
}

fn serve(s: &Setup, name: &str, extra: &[&str]) -> (ChildGuard, PathBuf) {
    let log = s.lab.dir().join(format!("{name}.log"));
    let mut args = vec!["serve", "--config", s.config.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    (start_logged(name, &args, s.lab.dir(), &log), log)
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Clients in loops, each exchange on a new connection, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(opts: &ClientOptions) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let threads = (0..CLIENTS)
            .map(|_| {
                let (stop, ok, opts) = (stop.clone(), ok.clone(), opts.clone());
                std::thread::spawn(move || {
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match smol::block_on(exchange(&opts, b"ping\n", T)) {
                            Ok(r) if r.ends_with(b"ping\n") => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => failures.push(format!("{other:?}")),
                        }
                    }
                    failures
                })
            })
            .collect();
        Load { stop, ok, threads }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits for `more` successful exchanges from now.
    fn progress(&self, more: u64, what: &str) {
        let target = self.ok() + more;
        wait_until(what, Duration::from_secs(30), || self.ok() >= target);
    }

    fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().expect("client thread"))
            .collect()
    }
}

#[test]
fn an_upgrade_under_load_refuses_and_fails_no_connection() {
    let s = setup();
    let (mut old, old_log) = serve(&s, "old", &[]);
    wait_listening(s.listen, &mut old, &old_log);
    let mode = std::fs::metadata(&s.socket)
        .expect("control socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "control socket mode {mode:o}");
    let opts = ClientOptions {
        connect: s.listen.to_string(),
        ..s.lab.client(Some("client1")).expect("client1")
    };
    // A connection open on the old process across the upgrade.
    let mut held = smol::block_on(async {
        let mut c = connect_to(s.listen, &opts).await.expect("connect");
        within("write", T, c.write_all(b"before\n")).await.expect("write");
        let mut greeting_and_echo = vec![0u8; 1];
        within("read", T, c.read_exact(&mut greeting_and_echo))
            .await
            .expect("relayed");
        c
    });
    let load = Load::start(&opts);
    load.progress(100, "load through the old process");

    let (mut new, new_log) = serve(&s, "new", &["--upgrade"]);
    wait_until("the new process takes over", Duration::from_secs(30), || {
        read(&new_log).contains("upgrade: serving on the sockets of pid")
    });
    load.progress(100, "load right after the take-over");
    // The held connection still works on the draining old process.
    smol::block_on(async {
        within("write", T, held.write_all(b"after\n"))
            .await
            .expect("write on the old process");
        within("flush", T, held.flush()).await.expect("flush");
        let mut rest = Vec::new();
        within("close", T, held.close()).await.expect("close");
        within("read", T, held.read_to_end(&mut rest)).await.expect("read");
        let text = String::from_utf8_lossy(&rest);
        assert!(text.contains("after"), "the held connection lost its echo: {text:?}");
    });
    drop(held);
    let status = old
        .wait_for(Duration::from_secs(30))
        .expect("the old process exits after its drain");
    assert!(status.success(), "old exited {status:?}; log:\n{}", read(&old_log));
    load.progress(100, "load through the new process alone");
    let failures = load.stop();
    assert!(
        failures.is_empty(),
        "{} failed exchanges, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let (code, body) = http_get(s.admin, "/healthz");
    assert_eq!(
        code, 200,
        "the new process serves the admin endpoint it took over: {body}"
    );
    assert!(s.socket.exists(), "the new process's control socket is in place");
    new.signal("TERM");
    let status = new.wait_for(Duration::from_secs(30)).expect("new exits");
    assert!(status.success(), "new exited {status:?}; log:\n{}", read(&new_log));
    assert!(!s.socket.exists(), "the control socket is removed at exit");
}

#[test]
fn upgrade_with_nothing_running_says_so() {
    let s = setup();
    let out = tlb(
        &["serve", "--config", s.config.to_str().expect("utf-8 path"), "--upgrade"],
        s.lab.dir(),
        T,
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
    let err = out.all();
    assert!(
        err.contains("no running tlb answers on") && err.contains("start it without --upgrade"),
        "{err}"
    );
    assert!(
        std::net::TcpStream::connect(s.listen).is_err(),
        "a failed upgrade must not bind anything"
    );
}

#[test]
fn an_upgrade_that_fails_to_start_leaves_the_old_process_serving() {
    let s = setup();
    let (mut old, old_log) = serve(&s, "old", &[]);
    wait_listening(s.listen, &mut old, &old_log);
    // The new config adds an app on an address something else holds: the
    // new process takes the sockets, then cannot bind that one.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let text = std::fs::read_to_string(&s.config).expect("config")
        + &format!(
            "\n{}",
            app_section("extra", taken_addr, &["extra.internal"], &ups(&s.lab.paths))
        );
    let broken = s.lab.dir().join("broken.toml");
    std::fs::write(&broken, text).expect("broken config");
    let out = tlb(
        &["serve", "--config", broken.to_str().expect("utf-8 path"), "--upgrade"],
        s.lab.dir(),
        T,
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.all().contains(&format!("cannot listen on {taken_addr}")), "{out:?}");
    wait_until("the old process logs the abandoned upgrade", T, || {
        read(&old_log).contains("upgrade abandoned")
    });
    let opts = ClientOptions {
        connect: s.listen.to_string(),
        ..s.lab.client(Some("client1")).expect("client1")
    };
    let reply = smol::block_on(exchange(&opts, b"still\n", T));
    assert!(reply.is_ok(), "the old process stopped serving: {reply:?}");
    assert!(
        old.child.try_wait().expect("try_wait").is_none(),
        "the old process exited"
    );
    // And a later upgrade still works.
    let (_new, new_log) = serve(&s, "new", &["--upgrade"]);
    wait_until("a second upgrade takes over", Duration::from_secs(30), || {
        read(&new_log).contains("upgrade: serving on the sockets of pid")
    });
    let status = old.wait_for(Duration::from_secs(30)).expect("the old process exits");
    assert!(status.success(), "{status:?}");
    drop(taken);
}

#[test]
fn an_upgrade_is_handed_the_listener_a_reload_added_and_not_one_it_removed() {
    let s = setup();
    let (mut old, old_log) = serve(&s, "old", &[]);
    wait_listening(s.listen, &mut old, &old_log);
    let base_text = std::fs::read_to_string(&s.config).expect("config");
    // A reload adds app extra on a new address (client1 may use it).
    let added = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let with_extra = base_text.replace("apps = [\"echo\"]", "apps = [\"echo\", \"extra\"]")
        + &format!("\n{}", app_section("extra", added, &[], &ups(&s.lab.paths)));
    std::fs::write(&s.config, &with_extra).expect("config with extra");
    old.signal("HUP");
    wait_until("the reload binds and serves the added listener", T, || {
        read(&old_log).contains(&format!("listening on {added} (apps: extra), added by a reload"))
    });
    // The new process, with the same config, must be handed `added` (else
    // it would fail to bind an address the old one holds, and refuse).
    let (mut new, new_log) = serve(&s, "new", &["--upgrade"]);
    wait_until("the upgrade takes over", Duration::from_secs(30), || {
        read(&new_log).contains("upgrade: serving on the sockets of pid")
    });
    assert!(
        read(&new_log).contains(&format!("listening on {added} (socket from the running tlb")),
        "{}",
        read(&new_log)
    );
    let status = old.wait_for(Duration::from_secs(30)).expect("the old process exits");
    assert!(status.success(), "{status:?}");
    let opts = ClientOptions {
        connect: added.to_string(),
        ..s.lab.client(Some("client1")).expect("client1")
    };
    let reply = smol::block_on(exchange(&opts, b"moved\n", T)).expect("the added app, served by the new process");
    assert!(reply.ends_with(b"moved\n"), "{reply:?}");

    // Now the new process removes it on reload: a third process is not handed it.
    std::fs::write(&s.config, &base_text).expect("config without extra");
    new.signal("HUP");
    wait_until("the reload stops listening on the removed address", T, || {
        read(&new_log).contains(&format!("stopped listening on {added}"))
    });
    let (_third, third_log) = serve(&s, "third", &["--upgrade"]);
    wait_until("a second upgrade takes over", Duration::from_secs(30), || {
        read(&third_log).contains("upgrade: serving on the sockets of pid")
    });
    assert!(!read(&third_log).contains(&added.to_string()), "{}", read(&third_log));
    let status = new.wait_for(Duration::from_secs(30)).expect("the second process exits");
    assert!(status.success(), "{status:?}");
    assert!(std::net::TcpStream::connect(added).is_err(), "{added} is still served");
}

/// Whether process `pid` catches SIGHUP now (bit 0 of `SigCgt` in
/// /proc/PID/status, a hex mask of the signals with a handler).
fn catches_sighup(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .map(str::trim)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .expect("a SigCgt line");
    mask & 1 == 1
}

/// A reload sent the moment the port accepts (what a service manager's
/// reload right after start does) reloads: the handler is installed before
/// anything listens, so SIGHUP never meets its default action (exit). The
/// handler state is read at the first accepted probe (the ports are polled
/// every millisecond), on three starts.
#[test]
fn a_sighup_the_moment_the_port_accepts_reloads_and_does_not_kill() {
    let s = setup();
    for k in 1..=3 {
        let (mut p, log) = serve(&s, &format!("hup-{k}"), &[]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(s.listen).is_err() {
            assert!(p.child.try_wait().ok().flatten().is_none(), "exited: {}", read(&log));
            assert!(Instant::now() < deadline, "not listening: {}", read(&log));
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            catches_sighup(p.id()),
            "start {k}: the port accepts before SIGHUP is handled"
        );
        p.signal("HUP");
        wait_until("the reload", T, || read(&log).contains("reloaded"));
        assert!(p.child.try_wait().ok().flatten().is_none(), "{}", read(&log));
        p.signal("TERM");
        let status = p.wait_for(Duration::from_secs(30)).expect("exits on SIGTERM");
        assert!(status.success(), "{status:?}: {}", read(&log));
    }
}
