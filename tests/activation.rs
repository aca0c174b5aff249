//! systemd socket activation with the real launcher
//! (`systemd-socket-activate`, Debian package `systemd`): tlb serves on the
//! sockets it is handed (an app's and the admin endpoint's), matched by
//! address; a handed socket the config does not name stops tlb with the
//! fix; `LISTEN_FDS` meant for another process (`LISTEN_PID`) is ignored.
//! SKIP (loudly) without the launcher.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tlb::core::tools::client::{ClientOptions, exchange};
use tlb::core::tools::lab::{Lab, LabPaths};

use crate::common::*;

const LAUNCHER: &str = "systemd-socket-activate";

fn launcher_or_skip(test: &str) -> bool {
    if have(LAUNCHER, "--version") {
        return true;
    }
    eprintln!("SKIP {test}: {LAUNCHER} is not installed (apt-get install systemd; .ci/run does it)");
    false
}

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// The lab's PKI and upstream behind an app on `listen`, admin on `admin`.
fn config(lab: &Lab, listen: SocketAddr, admin: SocketAddr) -> PathBuf {
    let p = LabPaths {
        listen,
        admin: Some(admin),
        ..lab.paths.clone()
    };
    let text = base(&p, "")
        .app(app_section("echo", listen, &[], &ups(&p)))
        .client(client_section("client1", &["echo"], ""))
        .render();
    let path = lab.dir().join(format!("activated-{}.toml", listen.port()));
    std::fs::write(&path, text).expect("config");
    path
}

fn plain_lab() -> Lab {
    lab(opts(1, true), |p| {
        base(p, "")
            .app(app_section("echo", p.listen, &[], &ups(p)))
            .client(client_section("client1", &["echo"], ""))
            .render()
    })
}

/// `systemd-socket-activate -l A... tlb serve --config CONFIG`, logged.
fn activate(sockets: &[SocketAddr], config: &Path, log: &Path) -> ChildGuard {
    let file = std::fs::File::create(log).expect("log");
    let mut cmd = Command::new(LAUNCHER);
    for s in sockets {
        cmd.arg("-l").arg(s.to_string());
    }
    cmd.arg(tlb_bin())
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone().expect("log")))
        .stderr(Stdio::from(file));
    ChildGuard::spawn(LAUNCHER, &mut cmd)
}

fn client_to(lab: &Lab, addr: SocketAddr) -> ClientOptions {
    ClientOptions {
        connect: addr.to_string(),
        ..lab.client(Some("client1")).expect("client1")
    }
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[test]
fn tlb_serves_on_the_sockets_systemd_hands_it() {
    if !launcher_or_skip("tlb_serves_on_the_sockets_systemd_hands_it") {
        return;
    }
    let lab = plain_lab();
    let (listen, admin) = (addr(), addr());
    let cfg = config(&lab, listen, admin);
    let log = lab.dir().join("activated.log");
    let mut child = activate(&[listen, admin], &cfg, &log);
    // The launcher listens first and starts tlb on the first connection.
    wait_listening(listen, &mut child, &log);
    let opts = client_to(&lab, listen);
    let reply = smol::block_on(exchange(&opts, b"hello\n", T));
    assert!(
        reply.as_ref().is_ok_and(|r| r.ends_with(b"hello\n")),
        "{reply:?}; log:\n{}",
        read(&log)
    );
    // tlb did not bind the addresses itself: it would have failed, as the
    // launcher holds them. Both came from systemd.
    wait_until("tlb logs both handed sockets", T, || {
        let text = read(&log);
        [listen, admin]
            .iter()
            .all(|a| text.contains(&format!("listening on {a} (socket from systemd)")))
    });
    let (code, body) = http_get(admin, "/healthz");
    assert_eq!(code, 200, "{body}");
    child.signal("TERM");
    let status = child.wait_for(T).expect("tlb exits on SIGTERM");
    assert!(status.success(), "{status:?}; log:\n{}", read(&log));
}

#[test]
fn a_handed_socket_the_config_does_not_name_stops_tlb_with_the_fix() {
    if !launcher_or_skip("a_handed_socket_the_config_does_not_name_stops_tlb_with_the_fix") {
        return;
    }
    let lab = plain_lab();
    let (listen, admin, stray) = (addr(), addr(), addr());
    let cfg = config(&lab, listen, admin);
    let log = lab.dir().join("stray.log");
    let mut child = activate(&[stray], &cfg, &log);
    wait_listening(stray, &mut child, &log);
    // A connection makes the launcher start tlb, which must refuse to run.
    let _probe = std::net::TcpStream::connect(stray);
    let status = child.wait_for(T).expect("tlb exits");
    assert!(!status.success(), "{status:?}");
    let text = read(&log);
    assert!(
        text.contains(&format!("passed a socket on {stray}")) && text.contains("ListenStream="),
        "{text}"
    );
    assert!(
        std::net::TcpStream::connect(listen).is_err(),
        "nothing may listen on the configured address"
    );
}

#[test]
fn listen_fds_for_another_process_is_ignored() {
    let lab = plain_lab();
    let (listen, admin) = (addr(), addr());
    let cfg = config(&lab, listen, admin);
    let log = lab.dir().join("foreign.log");
    let file = std::fs::File::create(&log).expect("log");
    let mut cmd = Command::new(tlb_bin());
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("RUST_LOG")
        // Meant for pid 1: tlb must neither touch descriptor 3 nor fail.
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone().expect("log")))
        .stderr(Stdio::from(file));
    let mut child = ChildGuard::spawn("tlb serve", &mut cmd);
    wait_listening(listen, &mut child, &log);
    let reply = smol::block_on(exchange(&client_to(&lab, listen), b"hi\n", T));
    assert!(reply.is_ok(), "{reply:?}");
    assert!(!read(&log).contains("socket from systemd"), "{}", read(&log));
}
