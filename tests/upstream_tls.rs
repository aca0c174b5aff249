//! TLS and mTLS from tlb to its upstreams (`[app.upstream_tls]`), with real
//! processes: `tlb pki` for the certificates, `tlb upstream --tls` (and
//! `openssl s_server -Verify 1`) as upstreams, `tlb serve` in between, and
//! an mTLS client in the test.
//!
//! Ports: the upstreams and tlb's listeners are reserved (bound on
//! 127.0.0.1:0 and released) just before the processes start; s_server
//! binds port 0 itself and prints it. Readiness is a TCP connect polled
//! with a deadline; every process is killed when its test ends.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use tlb::core::config::ProxyProtocol;
use tlb::core::config::writer::{
    AdminSection, AppSection, ClientSection, ConfigWriter, HealthSection, TimeoutsSection, TlsSection,
    UpstreamTlsSection,
};
use tlb::core::tls::ClientTlsFiles;
use tlb::core::tools::client::ClientOptions;

use crate::common::*;

/// Limit for one `tlb` command, and for a process to listen.
const CMD: Duration = Duration::from_secs(30);

/// A directory with a PKI (`tlb pki init`), server certificates for
/// `good.internal` and `bad.internal` (each also valid for localhost,
/// 127.0.0.1 and ::1) and `tlb-lb`, tlb's client identity toward upstreams.
struct Pki {
    dir: tempfile::TempDir,
    /// Children of this test, killed at its end.
    children: Vec<ChildGuard>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::Builder::new().prefix("tlb-utls-").tempdir().expect("tempdir");
        let d = dir.path();
        for args in [
            &["pki", "init", "--dir", "pki", "--config", "init.toml"][..],
            &["pki", "issue", "good.internal", "--server", "--dir", "pki"],
            &["pki", "issue", "bad.internal", "--server", "--dir", "pki"],
            &["pki", "issue", "tlb-lb", "--dir", "pki"],
        ] {
            let out = tlb(args, d, CMD);
            assert_eq!(out.code(), Some(0), "tlb {args:?}: {out:?}");
        }
        for f in [
            "pki/ca.crt",
            "pki/servers/good.internal.crt",
            "pki/servers/bad.internal.key",
            "pki/clients/tlb-lb.crt",
        ] {
            assert!(d.join(f).exists(), "tlb pki wrote no {f}");
        }
        Pki {
            dir,
            children: Vec::new(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, rel: &str) -> String {
        self.path().join(rel).display().to_string()
    }

    /// `tlb upstream --tls` named `name` with server certificate `cert`
    /// (`good.internal` or `bad.internal`, or a path without `.crt`),
    /// greeting; `extra` flags added.
    fn upstream(&mut self, name: &str, cert: &str, extra: &[&str]) -> SocketAddr {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let base = if cert.contains('/') {
            cert.to_string()
        } else {
            format!("pki/servers/{cert}")
        };
        let crt = self.file(&format!("{base}.crt"));
        let key = self.file(&format!("{base}.key"));
        let mut args = vec![
            "upstream",
            "--listen",
            &addr.to_string(),
            "--name",
            name,
            "--greet",
            "--threads",
            "1",
            "--tls",
            "--cert",
            &crt,
            "--key",
            &key,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = self.path().join(format!("{name}.log"));
        let mut child = start_logged(&format!("tlb upstream {name}"), &args, self.path(), &log);
        wait_listening(addr, &mut child, &log);
        self.children.push(child);
        addr
    }

    /// A plain-TCP `tlb upstream` (no TLS) named `name`, greeting.
    fn plain_upstream(&mut self, name: &str) -> SocketAddr {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let args = ["upstream", "--listen", &addr.to_string(), "--name", name, "--greet"].map(String::from);
        let log = self.path().join(format!("{name}.log"));
        let mut child = start_logged(&format!("tlb upstream {name}"), &args, self.path(), &log);
        wait_listening(addr, &mut child, &log);
        self.children.push(child);
        addr
    }

    /// `tlb serve` on `config` (written to `serve.toml`), logging to
    /// `serve.log`, once every address in `listens` accepts.
    fn serve(&mut self, config: &str, listens: &[SocketAddr]) -> PathBuf {
        let path = self.path().join("serve.toml");
        fs::write(&path, config).expect("writing the config");
        let log = self.path().join("serve.log");
        let args = ["serve", "--config", &path.display().to_string()].map(String::from);
        let mut child = start_logged("tlb serve", &args, self.path(), &log);
        for l in listens {
            wait_listening(*l, &mut child, &log);
        }
        self.children.push(child);
        log
    }

    /// Client options for client `client1` of the PKI toward `listen`.
    fn client(&self, listen: SocketAddr) -> ClientOptions {
        let (cert, key) = (
            self.path().join("pki/clients/client1.crt"),
            self.path().join("pki/clients/client1.key"),
        );
        ClientOptions::new(
            &listen.to_string(),
            "localhost",
            &ClientTlsFiles {
                ca: &self.path().join("pki/ca.crt"),
                cert: Some(&cert),
                key: Some(&key),
                allow_tls12: false,
                resumption: false,
            },
            T,
        )
        .expect("client options")
    }
}

fn read(log: &Path) -> String {
    fs::read_to_string(log).unwrap_or_default()
}

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().expect("addr")
}

/// `[tls]` from the PKI, short drain, an admin endpoint, apps `apps`, and
/// client1 allowed on all of them.
fn config(admin: SocketAddr, apps: Vec<AppSection>) -> String {
    let names: Vec<String> = apps.iter().map(|a| a.name.clone()).collect();
    let mut w = ConfigWriter::new(TlsSection::pki("pki"))
        .timeouts(TimeoutsSection {
            drain: Some(Duration::from_secs(1)),
            ..TimeoutsSection::default()
        })
        .admin(AdminSection::new(admin));
    for a in apps {
        w = w.app(a);
    }
    w.client(ClientSection::new("client1", names.iter().map(String::as_str)))
        .render()
}

/// App `name` on `listen` over `ups` with `tls` toward them.
fn tls_app(name: &str, listen: SocketAddr, ups: &[SocketAddr], tls: UpstreamTlsSection) -> AppSection {
    AppSection {
        upstream_tls: Some(tls),
        ..AppSection::new(name, listen, ups)
    }
}

/// `[app.upstream_tls]` trusting the PKI's CA.
fn verify() -> UpstreamTlsSection {
    UpstreamTlsSection::new("pki/ca.crt")
}

/// `[app.upstream_tls]` trusting the PKI's CA, with tlb's client identity.
fn mutual() -> UpstreamTlsSection {
    UpstreamTlsSection {
        cert: Some("pki/clients/tlb-lb.crt".into()),
        key: Some("pki/clients/tlb-lb.key".into()),
        ..verify()
    }
}

/// One exchange through tlb: (the greeting line, the echo after it).
fn greeted(opts: &ClientOptions, msg: &str) -> Result<(String, String), String> {
    let reply =
        smol::block_on(tlb::core::tools::client::exchange(opts, msg.as_bytes(), T)).map_err(|e| e.to_string())?;
    let text = String::from_utf8(reply).map_err(|e| e.to_string())?;
    let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
    Ok((first.to_string(), rest.to_string()))
}

fn state(admin: SocketAddr, app: &str, up: SocketAddr) -> serde_json::Value {
    upstream_status(admin, app, &up.to_string())
}

#[test]
fn upstream_certificate_verified_by_ip_san_and_bytes_echo() {
    let mut pki = Pki::new();
    let up = pki.upstream("good", "good.internal", &[]);
    // A server certificate for the same names from another CA.
    for args in [
        &["pki", "init", "--dir", "other", "--config", "other.toml"][..],
        &["pki", "issue", "good.internal", "--server", "--dir", "other"],
    ] {
        let out = tlb(args, pki.path(), CMD);
        assert_eq!(out.code(), Some(0), "tlb {args:?}: {out:?}");
    }
    let foreign = pki.upstream("foreign", "other/servers/good.internal", &[]);
    let plain = pki.plain_upstream("plain");
    let (listen, other, to_plain, admin) = (addr(), addr(), addr(), addr());
    let text = config(
        admin,
        vec![
            tls_app("web", listen, &[up], verify()),
            tls_app("other", other, &[foreign], verify()),
            tls_app("plain", to_plain, &[plain], verify()),
        ],
    );
    let log = pki.serve(&text, &[listen, other, to_plain, admin]);
    let opts = pki.client(listen);
    for i in 0..3 {
        let msg = format!("hello over TLS {i}\n");
        let (greeting, echo) = greeted(&opts, &msg).unwrap_or_else(|e| panic!("exchange {i}: {e}\n{}", read(&log)));
        // Verified as 127.0.0.1 (an IP SAN): no SNI for an IP, no client cert.
        assert!(greeting.starts_with("good client=127.0.0.1:"), "{greeting}");
        assert!(greeting.ends_with(" tls_sni=- tls_client=-"), "{greeting}");
        assert_eq!(echo, msg);
    }
    let s = state(admin, "web", up);
    assert_eq!(s["state"], "up", "{s}");
    assert_eq!(s["consecutive_failures"], 0, "{s}");
    assert!(!read(&log).contains("upstream_tls:"), "{}", read(&log));

    // The same names from a CA that [app.upstream_tls] ca does not hold:
    // refused, the client gets no byte.
    let got = greeted(&pki.client(other), "to the foreign upstream\n");
    assert!(got.is_err(), "served by an upstream of another CA: {got:?}");
    let s = state(admin, "other", foreign);
    let last = s["last_error"].as_str().unwrap_or_default();
    assert!(
        last.starts_with("upstream_tls: certificate not issued by a trusted CA (unknown issuer)"),
        "{s}"
    );
    assert!(last.contains("[app.upstream_tls] ca must hold"), "{s}");
    assert_eq!(s["connections"], 0, "{s}");

    // An upstream that does not speak TLS (this one greets, then echoes
    // tlb's ClientHello back): refused, no plaintext leaks to the client.
    let got = greeted(&pki.client(to_plain), "to the plain upstream\n");
    assert!(got.is_err(), "served by a plain upstream: {got:?}");
    let s = state(admin, "plain", plain);
    let last = s["last_error"].as_str().unwrap_or_default();
    assert!(
        last.starts_with("upstream_tls: ") && last.contains("is the upstream speaking TLS?"),
        "{s}"
    );
}

#[test]
fn upstream_mtls_with_tlbs_client_certificate_and_refused_without_it() {
    let mut pki = Pki::new();
    let ca = pki.file("pki/ca.crt");
    let up = pki.upstream("strict", "good.internal", &["--ca", &ca, "--require-client-cert"]);
    let (with, without, admin) = (addr(), addr(), addr());
    let text = config(
        admin,
        vec![
            tls_app("mtls", with, &[up], mutual()),
            tls_app(
                "nocert",
                without,
                &[up],
                UpstreamTlsSection {
                    server_name: Some("good.internal".into()),
                    ..verify()
                },
            ),
        ],
    );
    let log = pki.serve(&text, &[with, without, admin]);

    // With tlb's client certificate: the upstream sees identity tlb-lb.
    let (greeting, echo) =
        greeted(&pki.client(with), "mutual\n").unwrap_or_else(|e| panic!("mTLS exchange: {e}\n{}", read(&log)));
    assert!(greeting.starts_with("strict client=127.0.0.1:"), "{greeting}");
    assert!(greeting.ends_with(" tls_sni=- tls_client=tlb-lb"), "{greeting}");
    assert_eq!(echo, "mutual\n");

    // Without: the upstream refuses tlb (TLS 1.3: its alert comes after
    // tlb's handshake, on the first read); the client gets no byte.
    let got = greeted(&pki.client(without), "no cert\n");
    assert!(
        !matches!(&got, Ok((g, _)) if !g.is_empty()),
        "served without a client certificate: {got:?}"
    );
    let s = state(admin, "nocert", up);
    let last = s["last_error"].as_str().unwrap_or_default().to_string();
    assert!(last.contains("upstream_tls: alert certificate_required"), "{s}");
    assert!(last.contains("set [app.upstream_tls] cert and key"), "{s}");
    let text = read(&log);
    assert!(
        text.contains("upstream_tls: alert certificate_required"),
        "no passive failure logged:\n{text}"
    );
    let (_, metrics) = http_get(admin, "/metrics");
    let labels = format!("app=\"nocert\",upstream=\"{up}\"");
    assert_eq!(
        metric(&metrics, "tlb_upstream_tls_failures_total", &labels),
        Some(1.0),
        "{metrics}"
    );
    // The same upstream still serves the app that shows a certificate.
    assert_eq!(state(admin, "mtls", up)["consecutive_failures"], 0);
    let up_log = read(&pki.path().join("strict.log"));
    assert!(
        up_log.contains("TLS handshake failed: peer sent no certificates"),
        "{up_log}"
    );
}

#[test]
fn upstream_with_a_certificate_for_another_name_is_refused_retried_elsewhere_and_ejected() {
    let mut pki = Pki::new();
    let good = pki.upstream("good", "good.internal", &[]);
    let bad = pki.upstream("bad", "bad.internal", &[]);
    let (listen, admin) = (addr(), addr());
    let tls = UpstreamTlsSection {
        server_name: Some("good.internal".into()),
        ..verify()
    };
    let log = pki.serve(
        &config(admin, vec![tls_app("web", listen, &[good, bad], tls)]),
        &[listen, admin],
    );
    let opts = pki.client(listen);
    // Every client is served by the good upstream, the bad one's failed
    // handshakes retried there, until the bad one is DOWN (fall = 3).
    let mut n = 0;
    while state(admin, "web", bad)["state"] != "down" {
        assert!(n < 30, "bad upstream not DOWN after {n} connections:\n{}", read(&log));
        let msg = format!("hello {n}\n");
        let (greeting, echo) = greeted(&opts, &msg).unwrap_or_else(|e| panic!("exchange {n}: {e}\n{}", read(&log)));
        assert!(greeting.starts_with("good "), "{greeting}");
        assert!(greeting.ends_with(" tls_sni=good.internal tls_client=-"), "{greeting}");
        assert_eq!(echo, msg);
        n += 1;
    }
    assert!(n >= 3, "DOWN after {n} connections, fall is 3");
    let s = state(admin, "web", bad);
    let last = s["last_error"].as_str().unwrap_or_default();
    assert!(
        last.starts_with("upstream_tls: certificate not valid for name \"good.internal\" (it is for: bad.internal"),
        "{s}"
    );
    let text = read(&log);
    assert!(
        text.contains("upstream_tls: certificate not valid for name \\\"good.internal\\\"")
            || text.contains("upstream_tls: certificate not valid for name \"good.internal\""),
        "no passive failure logged:\n{text}"
    );
    assert_eq!(state(admin, "web", good)["state"], "up");
    let (_, metrics) = http_get(admin, "/metrics");
    let labels = |u: SocketAddr| format!("app=\"web\",upstream=\"{u}\"");
    let failures = metric(&metrics, "tlb_upstream_tls_failures_total", &labels(bad));
    assert!(failures.is_some_and(|n| n >= 3.0), "{failures:?}\n{metrics}");
    assert_eq!(
        metric(&metrics, "tlb_upstream_tls_failures_total", &labels(good)),
        Some(0.0)
    );
    // DOWN: still served by the good one.
    let (greeting, _) = greeted(&opts, "after\n").unwrap_or_else(|e| panic!("{e}"));
    assert!(greeting.starts_with("good "), "{greeting}");
}

#[test]
fn active_checks_over_tls_eject_a_wrong_certificate_and_an_upstream_refusing_tlb() {
    let mut pki = Pki::new();
    let ca = pki.file("pki/ca.crt");
    let good = pki.upstream("good", "good.internal", &[]);
    let bad = pki.upstream("bad", "bad.internal", &[]);
    let strict = pki.upstream("strict", "good.internal", &["--ca", &ca, "--require-client-cert"]);
    let (listen, admin) = (addr(), addr());
    let app = AppSection {
        health: Some(HealthSection {
            interval: Some(Duration::from_millis(500)),
            timeout: Some(Duration::from_millis(500)),
            rise: Some(1),
            fall: Some(2),
            ..HealthSection::default()
        }),
        ..tls_app(
            "web",
            listen,
            &[good, bad, strict],
            UpstreamTlsSection {
                server_name: Some("good.internal".into()),
                ..verify()
            },
        )
    };
    let log = pki.serve(&config(admin, vec![app]), &[listen, admin]);
    wait_until("bad and strict DOWN by the checks", CMD, || {
        state(admin, "web", bad)["state"] == "down" && state(admin, "web", strict)["state"] == "down"
    });
    let detail = |up| {
        state(admin, "web", up)["last_check"]["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let b = detail(bad);
    assert!(
        b.starts_with("upstream_tls: certificate not valid for name \"good.internal\""),
        "{b}"
    );
    let s = detail(strict);
    assert!(s.contains("upstream_tls: alert certificate_required"), "{s}");
    let g = state(admin, "web", good);
    assert_eq!(g["state"], "up", "{g}\n{}", read(&log));
    // (Polled: under load one check may time out; fall is 2.)
    wait_until("a good check of the good upstream", CMD, || {
        state(admin, "web", good)["last_check"]["ok"] == true
    });
    // No client connection was made: the checks alone decided.
    let (greeting, _) = greeted(&pki.client(listen), "hi\n").unwrap_or_else(|e| panic!("{e}"));
    assert!(greeting.starts_with("good "), "{greeting}");
}

/// `openssl s_server` in the PKI's directory, on a port it picks; its
/// stdout lines are read by a thread.
struct SServer {
    child: ChildGuard,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    addr: SocketAddr,
}

impl SServer {
    /// `None` (after a loud SKIP) when openssl is not on PATH.
    fn start(test: &str, dir: &Path, args: &[&str]) -> Option<SServer> {
        if !have("openssl", "version") {
            eprintln!("\n******** SKIPPED {test}: openssl is not on PATH ********\n");
            return None;
        }
        let mut cmd = Command::new("openssl");
        cmd.current_dir(dir)
            .args(["s_server", "-accept", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = ChildGuard::spawn("openssl s_server", &mut cmd);
        let stdout = child.child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel::<String>();
        // Ends at s_server's exit (EOF), when the guard kills it.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(l) = line else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut s = SServer {
            child,
            lines,
            seen: Vec::new(),
            addr: "127.0.0.1:0".parse().expect("addr"),
        };
        let accept = s.line_where("ACCEPT line", |l| l.starts_with("ACCEPT "));
        s.addr = accept["ACCEPT ".len()..].trim().parse().expect("s_server's address");
        Some(s)
    }

    /// The next stdout line that satisfies `pred`, within [`CMD`].
    fn line_where(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + CMD;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) if pred(&l) => return l,
                Ok(l) => self.seen.push(l),
                Err(_) => panic!("s_server printed no {what} within {CMD:?}; got {:?}", self.seen),
            }
        }
    }
}

/// Opens an mTLS connection through tlb and sends `line`.
async fn send_through(opts: &ClientOptions, line: &str, log: &Path) -> tlb::core::tools::client::ClientStream {
    let mut s = tls_from("127.0.0.1".parse().expect("ip"), opts)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", read(log)));
    s.write_all(line.as_bytes()).await.expect("write");
    s.flush().await.expect("flush");
    s
}

#[test]
fn openssl_s_server_verify_1_as_an_mtls_upstream() {
    let mut pki = Pki::new();
    let Some(mut server) = SServer::start(
        "openssl_s_server_verify_1_as_an_mtls_upstream",
        pki.path(),
        &[
            "-naccept",
            "1",
            "-Verify",
            "1",
            "-verify_return_error",
            "-cert",
            "pki/servers/good.internal.crt",
            "-key",
            "pki/servers/good.internal.key",
            "-CAfile",
            "pki/ca.crt",
        ],
    ) else {
        return;
    };
    let (listen, admin) = (addr(), addr());
    let tls = UpstreamTlsSection {
        server_name: Some("good.internal".into()),
        ..mutual()
    };
    let log = pki.serve(
        &config(admin, vec![tls_app("web", listen, &[server.addr], tls)]),
        &[listen, admin],
    );
    let opts = pki.client(listen);
    let mut stdin = server.child.child.stdin.take().expect("stdin");
    let reply = smol::block_on(within("the exchange through tlb", CMD, async {
        let mut s = send_through(&opts, "hello from the client\n", &log).await;
        // s_server prints what it received, and sends what it reads on stdin.
        let got = server.line_where("client line", |l| l.contains("hello from the client"));
        assert_eq!(got, "hello from the client");
        stdin.write_all(b"hello from s_server\n").expect("s_server stdin");
        stdin.flush().expect("s_server stdin");
        let mut buf = vec![0u8; 64];
        let mut got = Vec::new();
        while !got.ends_with(b"\n") {
            let n = s.read(&mut buf).await.expect("reading the reply");
            assert!(n > 0, "closed before s_server's reply: {got:?}\n{}", read(&log));
            got.extend_from_slice(&buf[..n]);
        }
        got
    }));
    assert_eq!(String::from_utf8_lossy(&reply), "hello from s_server\n");
    assert!(!read(&log).contains("upstream_tls:"), "{}", read(&log));
}

#[test]
fn min_version_against_an_openssl_s_server_that_speaks_only_tls_1_2() {
    let mut pki = Pki::new();
    let Some(mut server) = SServer::start(
        "min_version_against_an_openssl_s_server_that_speaks_only_tls_1_2",
        pki.path(),
        &[
            "-tls1_2",
            "-cert",
            "pki/servers/good.internal.crt",
            "-key",
            "pki/servers/good.internal.key",
        ],
    ) else {
        return;
    };
    let (v13, any, admin) = (addr(), addr(), addr());
    let only13 = UpstreamTlsSection {
        min_version: Some(tlb::core::config::TlsVersion::V1_3),
        ..verify()
    };
    let text = config(
        admin,
        vec![
            tls_app("v13", v13, &[server.addr], only13),
            tls_app("any", any, &[server.addr], verify()),
        ],
    );
    let log = pki.serve(&text, &[v13, any, admin]);
    // TLS 1.3 only: refused by the upstream, in words.
    let got = greeted(&pki.client(v13), "over 1.3\n");
    assert!(got.is_err(), "{got:?}");
    let s = state(admin, "v13", server.addr);
    let last = s["last_error"].as_str().unwrap_or_default();
    assert!(last.starts_with("upstream_tls: alert protocol_version"), "{s}");
    assert!(last.contains("min_version"), "{s}");
    // The default ("1.2"): the bytes reach the TLS 1.2 server.
    smol::block_on(within("the exchange through tlb", CMD, async {
        let _s = send_through(&pki.client(any), "over tls 1.2\n", &log).await;
        let got = server.line_where("client line", |l| l.contains("over tls 1.2"));
        assert_eq!(got, "over tls 1.2");
    }));
    assert_eq!(state(admin, "any", server.addr)["consecutive_failures"], 0);
}

#[test]
fn serve_check_names_the_unreadable_upstream_tls_file() {
    let pki = Pki::new();
    let mut tls = mutual();
    tls.key = Some("pki/clients/nope.key".into());
    let text = config(addr(), vec![tls_app("web", addr(), &[addr()], tls)]);
    let path = pki.path().join("bad.toml");
    fs::write(&path, text).expect("config");
    let out = tlb(
        &["serve", "--check", "--config", &path.display().to_string()],
        pki.path(),
        CMD,
    );
    assert_ne!(out.code(), Some(0), "{out:?}");
    let err = out.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{out:?}");
    assert!(
        err.contains("[app.upstream_tls] key") && err.contains("nope.key"),
        "{err}"
    );
}

/// `sh -c line` in `dir`, with the `tlb` under test first on PATH.
fn sh(dir: &Path, line: &str) -> Command {
    let bin_dir = Path::new(tlb_bin()).parent().expect("the binary's directory");
    let mut dirs = vec![PathBuf::from(bin_dir)];
    dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(line)
        .current_dir(dir)
        .env("PATH", std::env::join_paths(dirs).expect("PATH"))
        .env_remove("RUST_LOG");
    cmd
}

#[test]
fn the_readme_upstream_tls_recipe_works_as_written() {
    use crate::recipe::{Block, blocks_of};
    let blocks = blocks_of(include_str!("../README.md"), "## Upstream TLS and mTLS");
    assert!(blocks.len() >= 3, "the recipe lost its blocks: {blocks:?}");
    let dir = tempfile::Builder::new()
        .prefix("tlb-utls-recipe-")
        .tempdir()
        .expect("tempdir");
    let d = dir.path();
    // The walk-through's directory, its app moved off 8443; the recipe's
    // ports swapped for free ones.
    assert_eq!(run_bounded(&mut sh(d, "tlb pki init"), b"", CMD).code(), Some(0));
    let config = d.join("tlb.toml");
    let text = fs::read_to_string(&config).expect("tlb.toml");
    fs::write(&config, text.replace("127.0.0.1:8443", &addr().to_string())).expect("tlb.toml");
    let (up, listen) = (addr(), addr());
    let ports = |s: &str| {
        s.replace("127.0.0.1:9443", &up.to_string())
            .replace("127.0.0.1:8445", &listen.to_string())
    };
    let mut children = Vec::new();
    let mut replies = Vec::new();
    let serve_log = d.join("serve.log");
    for block in &blocks {
        let lines = match block {
            Block::Toml(t) => {
                let mut text = fs::read_to_string(&config).expect("tlb.toml");
                text.push('\n');
                text.push_str(&ports(t));
                fs::write(&config, text).expect("tlb.toml");
                continue;
            }
            Block::Sh(lines) => lines,
        };
        for line in lines {
            let line = ports(line.split(" #").next().unwrap_or("").trim());
            if let Some(bg) = line.strip_suffix('&') {
                assert!(bg.trim_start().starts_with("tlb upstream"), "background line {bg:?}");
                let log = d.join("upstream.log");
                let mut cmd = sh(d, &format!("exec {bg}"));
                let file = fs::File::create(&log).expect("log");
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::from(file.try_clone().expect("log")))
                    .stderr(Stdio::from(file));
                let mut child = ChildGuard::spawn(bg, &mut cmd);
                wait_listening(up, &mut child, &log);
                children.push(child);
                continue;
            }
            if line.contains("tlb client") && children.len() < 2 {
                // The recipe's "after a restart of tlb serve".
                let file = fs::File::create(&serve_log).expect("log");
                let mut cmd = sh(d, "exec tlb serve");
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::from(file.try_clone().expect("log")))
                    .stderr(Stdio::from(file));
                let mut child = ChildGuard::spawn("tlb serve", &mut cmd);
                wait_listening(listen, &mut child, &serve_log);
                children.push(child);
            }
            let out = run_bounded(&mut sh(d, &line), b"", CMD);
            assert_eq!(out.code(), Some(0), "`{line}`: {out:?}\n{}", read(&serve_log));
            if line.contains("tlb client") {
                replies.push(out.stdout);
            }
        }
    }
    assert_eq!(replies.len(), 1, "the recipe should reach the app once with tlb client");
    let lines: Vec<&str> = replies[0].lines().collect();
    assert_eq!(lines.len(), 2, "{replies:?}");
    assert!(lines[0].starts_with("up client=127.0.0.1:"), "{replies:?}");
    assert!(lines[0].ends_with(" tls_sni=- tls_client=tlb-lb"), "{replies:?}");
    assert_eq!(lines[1], "hello");
}

#[test]
fn tlb_upstream_tls_flags_missing_their_partners_are_one_line_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (args, needle) in [
        (&["upstream", "--tls"][..], "--tls needs --cert FILE and --key FILE"),
        (&["upstream", "--cert", "x.crt"], "need --tls"),
        (
            &[
                "upstream",
                "--tls",
                "--cert",
                "x.crt",
                "--key",
                "x.key",
                "--require-client-cert",
            ],
            "--require-client-cert needs --ca FILE",
        ),
        (&["upstream", "--tls", "--cert", "x.crt", "--key", "x.key"], "x.crt"),
    ] {
        let out = tlb(args, dir.path(), CMD);
        assert!(out.status.is_some() && out.code() != Some(0), "{args:?}: {out:?}");
        let err: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(err.len(), 1, "{args:?}: {out:?}");
        assert!(err[0].contains(needle), "{args:?}: {}", err[0]);
        assert!(!out.all().contains("panicked"), "{out:?}");
    }
}

#[test]
fn a_reload_reads_the_upstream_tls_files_again_and_a_bad_one_is_rejected() {
    let mut pki = Pki::new();
    let ca = pki.file("pki/ca.crt");
    let up = pki.upstream("strict", "good.internal", &["--ca", &ca, "--require-client-cert"]);
    let (listen, admin) = (addr(), addr());
    let good = config(admin, vec![tls_app("web", listen, &[up], mutual())]);
    let log = pki.serve(&good, &[listen, admin]);
    let opts = pki.client(listen);
    let served = |what: &str| {
        let (greeting, echo) = greeted(&opts, "hi\n").unwrap_or_else(|e| panic!("{what}: {e}\n{}", read(&log)));
        // Until the reload, the TLS config in use is the one loaded.
        assert!(greeting.ends_with(" tls_client=tlb-lb"), "{what}: {greeting}");
        assert_eq!(echo, "hi\n");
    };
    served("before the reloads");
    let config_path = pki.path().join("serve.toml");
    let hup = |pki: &Pki, text: &str, expect: &str| {
        fs::write(&config_path, text).expect("config");
        let before = read(&log).matches(expect).count();
        pki.children.last().expect("tlb serve").signal("HUP");
        wait_until(&format!("log line {expect:?}"), CMD, || {
            read(&log).matches(expect).count() > before
        });
    };

    // A key that is not there: rejected, naming it; the old TLS keeps serving.
    let mut tls = mutual();
    tls.key = Some("pki/clients/nope.key".into());
    hup(
        &pki,
        &config(admin, vec![tls_app("web", listen, &[up], tls)]),
        "reload rejected",
    );
    let text = read(&log);
    let line = text
        .lines()
        .rfind(|l| l.contains("reload rejected"))
        .unwrap_or_default();
    assert!(
        line.contains("[app.upstream_tls] key") && line.contains("nope.key"),
        "{line}"
    );
    served("after the rejected reload");

    // The same config, other contents at the same paths (client1's
    // certificate and key): read again on reload.
    for ext in ["crt", "key"] {
        fs::copy(
            pki.path().join(format!("pki/clients/client1.{ext}")),
            pki.path().join(format!("pki/clients/tlb-lb.{ext}")),
        )
        .expect("replacing tlb-lb's files");
    }
    served("after the files changed, before the reload");
    hup(&pki, &good, "reloaded");
    let (greeting, _) = greeted(&opts, "hi\n").unwrap_or_else(|e| panic!("{e}\n{}", read(&log)));
    assert!(greeting.ends_with(" tls_client=client1"), "{greeting}");
    // And without cert/key: the upstream refuses tlb from now on.
    hup(
        &pki,
        &config(admin, vec![tls_app("web", listen, &[up], verify())]),
        "reloaded",
    );
    let got = greeted(&opts, "hi\n");
    assert!(!matches!(&got, Ok((g, _)) if !g.is_empty()), "served: {got:?}");
}

#[test]
fn proxy_v2_header_goes_in_plain_before_upstream_mtls_on_traffic_and_checks() {
    let mut pki = Pki::new();
    let ca = pki.file("pki/ca.crt");
    let up = pki.upstream(
        "ppmtls",
        "good.internal",
        &["--ca", &ca, "--require-client-cert", "--proxy-protocol"],
    );
    let (listen, admin) = (addr(), addr());
    let app = AppSection {
        proxy_protocol: Some(ProxyProtocol::V2),
        health: Some(HealthSection {
            interval: Some(Duration::from_millis(200)),
            timeout: Some(Duration::from_millis(150)),
            rise: Some(1),
            ..HealthSection::default()
        }),
        ..tls_app("pp", listen, &[up], mutual())
    };
    let log = pki.serve(&config(admin, vec![app]), &[listen, admin]);

    // Traffic: the upstream read the header (client, SNI, identity), then
    // completed mTLS with tlb's certificate.
    let opts = pki.client(listen);
    let (greeting, echo) =
        greeted(&opts, "both\n").unwrap_or_else(|e| panic!("PROXY + mTLS exchange: {e}\n{}", read(&log)));
    assert!(greeting.starts_with("ppmtls client=127.0.0.1:"), "{greeting}");
    assert!(
        greeting.ends_with(" sni=localhost identity=client1 tls_sni=- tls_client=tlb-lb"),
        "{greeting}"
    );
    assert_eq!(echo, "both\n");

    // Health checks: a LOCAL header, then the TLS handshake, accepted.
    wait_until("a passing TLS check after a LOCAL header", CMD, || {
        state(admin, "pp", up)["last_check"]["ok"] == true
    });
    let up_log = read(&pki.path().join("ppmtls.log"));
    assert!(
        !up_log.contains("connection refused: no PROXY") && !up_log.contains("malformed"),
        "{up_log}"
    );
    assert!(!up_log.contains("TLS handshake failed"), "{up_log}");
}
