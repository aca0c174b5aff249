//! Helpers shared by the integration tests: lab configs, bounded waits,
//! line reading, child processes that are always killed.
//!
//! Rules kept here for every test: real sockets on 127.0.0.1 with port 0,
//! generated certificates in temporary directories, readiness by polling
//! with a deadline, and a timeout on every network wait.
#![allow(dead_code)]

pub mod redis;

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt};
use tlb::core::config::writer::{AdminSection, AppSection, ClientSection, ConfigWriter, TimeoutsSection, TlsSection};
use tlb::core::rt::timeout;
use tlb::core::tools::client::{ClientError, ClientOptions, exchange};
use tlb::core::tools::lab::{Lab, LabOptions, LabPaths};

/// Limit for one network wait in a test (connect, handshake, a reply).
pub const T: Duration = Duration::from_secs(10);

/// Lab options for tests: two runtime threads, greeting upstreams.
pub fn opts(upstreams: usize, greet: bool) -> LabOptions {
    LabOptions {
        upstreams,
        greet,
        threads: 2,
        ..LabOptions::default()
    }
}

/// Starts a lab; panics with the error chain when it cannot.
pub fn lab(opts: LabOptions, config: impl FnOnce(&LabPaths) -> String) -> Lab {
    Lab::start_with(opts, config).unwrap_or_else(|e| panic!("starting the lab: {e:#}"))
}

/// The typed start of most test configs: `[tls]` for the lab PKI,
/// `[timeouts]` with a short drain (so a lab stops quickly, unless
/// `timeouts` sets its own) plus `timeouts` (`key = value` lines), and
/// `[admin]` when the lab has one.
pub fn base(p: &LabPaths, timeouts: &str) -> ConfigWriter {
    let mut t = timeouts_from(timeouts);
    t.drain = t.drain.or(Some(Duration::from_secs(1)));
    let mut w = ConfigWriter::new(TlsSection::pki(&p.pki_dir.display().to_string())).timeouts(t);
    if let Some(a) = p.admin {
        w = w.admin(AdminSection::new(a));
    }
    w
}

/// [`base`] rendered: `[tls]`, then `[timeouts]`, then `[admin]` (so text
/// inserted before `[timeouts]` lands in `[tls]`).
pub fn base_config(p: &LabPaths, timeouts: &str) -> String {
    base(p, timeouts).render()
}

/// One `[[app]]` table (`server_names` always written, even empty).
pub fn app(name: &str, listen: SocketAddr, server_names: &[&str], upstreams: &[String]) -> String {
    app_section(name, listen, server_names, upstreams).to_string()
}

/// The section [`app`] renders.
pub fn app_section(name: &str, listen: SocketAddr, server_names: &[&str], upstreams: &[String]) -> AppSection {
    AppSection {
        server_names: Some(server_names.iter().map(|s| s.to_string()).collect()),
        ..AppSection::new(name, listen, upstreams)
    }
}

/// One `[[client]]` table; `extra` holds more `key = value` lines (limits,
/// `spki_sha256`).
pub fn client(name: &str, apps: &[&str], extra: &str) -> String {
    client_section(name, apps, extra).to_string()
}

/// The section [`client`] renders.
pub fn client_section(name: &str, apps: &[&str], extra: &str) -> ClientSection {
    let mut c = ClientSection::new(name, apps);
    for (key, v) in key_values("[[client]]", extra) {
        let n = || u32::try_from(v.as_integer().unwrap_or(-1)).unwrap_or_else(|_| panic!("{key}: {v}"));
        match key.as_str() {
            "max_connections" => c.limits.max_connections = Some(n()),
            "burst" => c.limits.burst = Some(n()),
            "connection_rate" => {
                let r = v.as_float().or(v.as_integer().map(|i| i as f64));
                c.limits.connection_rate = Some(r.unwrap_or_else(|| panic!("{key}: {v}")));
            }
            "spki_sha256" => {
                let pin: String = v.as_str().unwrap_or_default().chars().filter(|c| *c != ':').collect();
                let mut out = [0u8; 32];
                hex::decode_to_slice(pin, &mut out).unwrap_or_else(|e| panic!("{key}: {e}"));
                c.spki_sha256 = Some(out);
            }
            other => panic!("client(): no [[client]] key {other:?} in the writer"),
        }
    }
    c
}

/// `[timeouts]` from `key = value` lines (durations as `"10s"`).
pub fn timeouts_from(lines: &str) -> TimeoutsSection {
    let mut t = TimeoutsSection::default();
    for (key, v) in key_values("[timeouts]", lines) {
        let d = v.as_str().and_then(|s| humantime::parse_duration(s).ok());
        let d = Some(d.unwrap_or_else(|| panic!("[timeouts] {key}: {v} is not a duration")));
        match key.as_str() {
            "handshake" => t.handshake = d,
            "connect" => t.connect = d,
            "idle" => t.idle = d,
            "drain" => t.drain = d,
            "max_lifetime" => t.max_lifetime = d,
            other => panic!("no [timeouts] key {other:?} in the writer"),
        }
    }
    t
}

/// `key = value` lines parsed as TOML (a test's mistake panics, naming `table`).
fn key_values(table: &str, lines: &str) -> toml::Table {
    toml::from_str(lines).unwrap_or_else(|e| panic!("{table} lines {lines:?}: {e}"))
}

/// The lab's upstream addresses as strings.
pub fn ups(p: &LabPaths) -> Vec<String> {
    p.upstreams.iter().map(|a| a.to_string()).collect()
}

/// Like `pki init` writes: app `echo` over every lab upstream, clients 1-3
/// allowed (client4 not), short drain, `timeouts` and `extra` appended.
pub fn standard_config(p: &LabPaths, timeouts: &str, extra: &str) -> String {
    let mut s = standard_writer(p, timeouts).render();
    s.push_str(extra);
    s
}

/// The writer [`standard_config`] renders (before `extra`).
pub fn standard_writer(p: &LabPaths, timeouts: &str) -> ConfigWriter {
    let w = base(p, timeouts).app(app_section("echo", p.listen, &[], &ups(p)));
    let clients: Vec<String> = (1..=4).map(|i| format!("client{i}")).collect();
    tlb::core::config::demo_clients(w, "echo", &clients)
}

/// `[tls]` for the lab PKI, changed by `edit`.
pub fn lab_tls(p: &LabPaths, edit: impl FnOnce(&mut TlsSection)) -> TlsSection {
    let mut t = TlsSection::pki(&p.pki_dir.display().to_string());
    edit(&mut t);
    t
}

/// A lab with the standard config.
pub fn standard_lab(upstreams: usize) -> Lab {
    lab(opts(upstreams, true), |p| standard_config(p, "", ""))
}

/// `fut`, or a panic naming `what` after `limit`.
pub async fn within<F: Future>(what: &str, limit: Duration, fut: F) -> F::Output {
    match timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: timed out after {limit:?}"),
    }
}

/// Reads one line (up to and including `\n`, or to EOF).
pub async fn read_line<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if r.read(&mut b).await? == 0 {
            break;
        }
        out.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(out).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// First word of an upstream greeting: `up2 client=... sni=- identity=-` -> `up2`.
pub fn greeter(line: &str) -> String {
    assert!(
        line.contains(" client=") && line.contains(" sni=") && line.contains(" identity="),
        "not an upstream greeting: {line:?}"
    );
    line.split_whitespace().next().unwrap_or_default().to_string()
}

/// Sends `msg` through the balancer; returns (greeter, rest of the reply).
pub async fn greeted_exchange(opts: &ClientOptions, msg: &str) -> Result<(String, String), ClientError> {
    let reply = exchange(opts, msg.as_bytes(), T).await?;
    let text = String::from_utf8(reply).expect("utf-8 reply");
    let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
    Ok((greeter(first), rest.to_string()))
}

/// Upstream connections ever made by app `app`, per upstream.
pub fn totals(lab: &Lab, app: &str) -> Vec<u64> {
    let g = lab.server.current();
    let a = g.app(app).unwrap_or_else(|| panic!("no app {app}"));
    a.balancer.upstreams().iter().map(|u| u.total()).collect()
}

/// Upstream connections currently open by app `app`, per upstream.
pub fn actives(lab: &Lab, app: &str) -> Vec<u32> {
    let g = lab.server.current();
    let a = g.app(app).unwrap_or_else(|| panic!("no app {app}"));
    a.balancer.upstreams().iter().map(|u| u.active()).collect()
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not reached within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// `n` consecutive free ports (for `tlb upstream --count n`), released.
pub fn free_consecutive_ports(n: u16) -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let base = first.local_addr().expect("local addr").port();
        if u32::from(base) + u32::from(n) > 65535 {
            continue;
        }
        let rest: Vec<_> = (1..n)
            .map(|i| TcpListener::bind(("127.0.0.1", base + i)))
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        if rest.len() == usize::from(n - 1) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports found");
}

/// Is `program` runnable (`program --version` or `program version`)?
pub fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A child process killed (and reaped) when dropped.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
}

impl ChildGuard {
    pub fn spawn(name: &str, cmd: &mut Command) -> ChildGuard {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        ChildGuard {
            child,
            name: name.to_string(),
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Exit status, waiting at most `limit`; `None` if still running.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => return None,
            }
        }
    }

    /// Sends a signal by pid with `kill -SIG PID`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.id().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} {} ({}) failed", self.id(), self.name);
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// What a bounded run produced.
#[derive(Debug)]
pub struct Bounded {
    /// `None` when the process was killed at the time limit.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Bounded {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
    /// stdout and stderr together, for searching.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` with `stdin` fed (then closed), killing it after `limit`.
pub fn run_bounded(cmd: &mut Command, stdin: &[u8], limit: Duration) -> Bounded {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut guard = ChildGuard::spawn(&format!("{cmd:?}"), cmd);
    let input = stdin.to_vec();
    let mut w = guard.child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&input);
    });
    let mut out = guard.child.stdout.take().expect("stdout");
    let mut err = guard.child.stderr.take().expect("stderr");
    let r1 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let r2 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = guard.wait_for(limit);
    if status.is_none() {
        let _ = guard.child.kill();
        let _ = guard.child.wait();
    }
    let _ = writer.join();
    Bounded {
        status,
        stdout: r1.join().unwrap_or_default(),
        stderr: r2.join().unwrap_or_default(),
    }
}

/// The `tlb` binary under test.
pub fn tlb_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tlb")
}

/// `tlb ARGS...` bounded to `limit`, without RUST_LOG from the environment.
pub fn tlb(args: &[&str], dir: &Path, limit: Duration) -> Bounded {
    run_bounded(
        Command::new(tlb_bin())
            .args(args)
            .current_dir(dir)
            .env_remove("RUST_LOG"),
        b"",
        limit,
    )
}

/// SHA-256 of `data`, hex.
pub fn sha256(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// A test-owned echo upstream (greeting with `name`) on its own thread,
/// that can be killed and restarted on the same address, like a process.
pub struct Echo {
    pub addr: SocketAddr,
    pub name: String,
    stop: Option<smol::channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    /// Serves on `addr` (port 0 for any), retrying the bind for up to `T`
    /// (a just-closed port may take a moment to be free again).
    pub fn start(addr: SocketAddr, name: &str) -> Echo {
        let deadline = Instant::now() + T;
        let listener = loop {
            match tlb::core::proxy::listener::bind_listener(addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("binding echo upstream {addr}: {e:#}"),
            }
        };
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = smol::channel::bounded::<()>(1);
        let opts = tlb::core::tools::echo::EchoOptions {
            name: name.to_string(),
            greet: true,
            tls: None,
            proxy_protocol: false,
        };
        let thread = std::thread::spawn(move || {
            let ex = std::sync::Arc::new(smol::Executor::new());
            let _ = smol::block_on(
                ex.run(tlb::core::tools::echo::serve_echo(&ex, listener, opts, async move {
                    let _ = rx.recv().await;
                })),
            );
            // Dropping `ex` here drops every connection task: all its
            // connections close, as when a process dies.
        });
        Echo {
            addr,
            name: name.to_string(),
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Stops accepting and closes every connection; returns when done.
    pub fn kill(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain HTTP/1.1 GET with `Connection: close`: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect_timeout(&addr, T).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(T)).expect("read timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("sending the request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("reading the response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"));
    (code, body.to_string())
}

/// The value of the sample `name{labels}` (labels exactly as rendered,
/// e.g. `reason="rate_limited"`; "" for none) in an exposition.
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `/status` parsed.
pub fn status(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = http_get(admin, "/status");
    assert_eq!(code, 200, "/status: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
}

/// The `/status` object of upstream `name` of app `app`.
pub fn upstream_status(admin: SocketAddr, app: &str, name: &str) -> serde_json::Value {
    let s = status(admin);
    s["apps"]
        .as_array()
        .and_then(|apps| apps.iter().find(|a| a["name"] == app))
        .and_then(|a| a["upstreams"].as_array())
        .and_then(|u| u.iter().find(|u| u["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no upstream {name} of app {app} in /status: {s}"))
}

/// Client options for `lab` whose certificate has an authorized CN
/// (`client1`) but is signed by another CA; the directory holding that
/// foreign PKI lives as long as the returned guard.
pub fn foreign_client(lab: &Lab) -> (ClientOptions, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let foreign = tlb::core::pki::Pki::new(dir.path().join("pki"));
    foreign
        .init(&tlb::core::pki::InitOptions {
            clients: vec!["client1".into()],
            server_names: vec![],
            key_type: tlb::core::pki::KeyType::EcdsaP256,
            days: 30,
            force: false,
        })
        .expect("foreign PKI");
    (client_with_cert_of(lab, &foreign, "client1", false), dir)
}

// ---------------------------------------------------------------------------
// Connections from a chosen source address, and how a peer closed

/// A TCP connection to `dst` from `src` (any port), connected within `T`.
/// Any 127.x.y.z works as a source on Linux loopback, so tests can play
/// several clients with distinct addresses.
pub fn tcp_from(src: std::net::IpAddr, dst: SocketAddr) -> std::net::TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP)).expect("creating a socket");
    s.bind(&SocketAddr::new(src, 0).into())
        .unwrap_or_else(|e| panic!("binding {src}:0: {e}"));
    s.connect_timeout(&dst.into(), T)
        .unwrap_or_else(|e| panic!("connecting {src} -> {dst}: {e}"));
    s.into()
}

/// An mTLS connection to the balancer of `opts` from source address
/// `src`: TCP connect, then the client handshake, each within `T`.
pub async fn tls_from(
    src: std::net::IpAddr,
    opts: &ClientOptions,
) -> Result<tlb::core::tools::client::ClientStream, ClientError> {
    let addr = tlb::core::tools::client::resolve(&opts.connect)?;
    let tcp = tcp_from(src, addr);
    tcp.set_nonblocking(true).expect("non-blocking socket");
    let tcp = tlb::core::rt::net::TcpConn::new(smol::Async::new(tcp).expect("registering a socket"));
    let connector = futures_rustls::TlsConnector::from(opts.tls.clone());
    within("TLS handshake", T, connector.connect(opts.server_name.clone(), tcp))
        .await
        .map_err(|e| tlb::core::tools::client::refused_or_io(addr, e))
}

/// Like [`exchange`] from source address `src`: sends `msg`, half-closes,
/// returns everything received until EOF (all within `T`).
pub async fn exchange_from(src: std::net::IpAddr, opts: &ClientOptions, msg: &[u8]) -> Result<Vec<u8>, ClientError> {
    use futures_lite::AsyncWriteExt;
    let mut tls = tls_from(src, opts).await?;
    let addr = tlb::core::tools::client::resolve(&opts.connect)?;
    let mut out = Vec::new();
    within("exchange", T, async {
        tls.write_all(msg).await?;
        tls.close().await?;
        tls.read_to_end(&mut out).await
    })
    .await
    .map_err(|e| tlb::core::tools::client::refused_or_io(addr, e))?;
    Ok(out)
}

/// How a peer ended a connection, as the reading side saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerClose {
    /// A clean EOF (FIN).
    Eof,
    /// A reset (or another read error).
    Reset,
}

/// Reads `s` until the peer closes, for at most `limit`: (every byte
/// received, how it closed). Panics if the connection is still open then.
pub fn read_until_closed(s: &mut std::net::TcpStream, limit: Duration) -> (Vec<u8>, PeerClose) {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the peer neither closed nor reset within {limit:?} (received {got:02x?})"
        );
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return (got, PeerClose::Eof),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return (got, PeerClose::Reset),
        }
    }
}

/// Asserts that the peer closes `s` (EOF or reset) within `limit` without
/// sending a single byte; returns how long it took from `start`.
pub fn assert_closed_silently(what: &str, s: &mut std::net::TcpStream, start: Instant, limit: Duration) -> Duration {
    let (got, _) = read_until_closed(s, limit);
    assert!(got.is_empty(), "{what}: the balancer sent {got:02x?} before closing");
    start.elapsed()
}

/// The admin endpoint's `/metrics` text (the lab must have `admin: true`).
pub fn scrape(lab: &Lab) -> String {
    let admin = lab
        .paths
        .admin
        .expect("the lab has no admin endpoint (LabOptions { admin: true, .. })");
    let (code, body) = http_get(admin, "/metrics");
    assert_eq!(code, 200, "/metrics: {body}");
    body
}

/// The sum of every sample of metric `name` (any labels) in an exposition.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                rest.split_once("} ")?.1
            } else {
                rest.strip_prefix(' ')?
            };
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

/// Client options whose TLS config only speaks TLS 1.2.
pub fn tls12_only(lab: &tlb::core::tools::lab::Lab, client: &str) -> tlb::core::tools::client::ClientOptions {
    let roots = tlb::core::tls::load_roots(&lab.pki.ca_cert()).expect("lab CA");
    let (c, k) = lab.pki.client(client);
    let cfg = rustls::ClientConfig::builder_with_provider(tlb::core::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2")
        .with_root_certificates(roots)
        .with_client_auth_cert(
            tlb::core::tls::load_certs(&c).expect("cert"),
            tlb::core::tls::load_key(&k).expect("key"),
        )
        .expect("client auth");
    let mut o = lab.client(Some(client)).expect("client options");
    o.tls = std::sync::Arc::new(cfg);
    o
}

// ---------------------------------------------------------------------------
// Child processes whose output goes to a log file

/// Starts `tlb ARGS` in `dir` with stdout and stderr going to `log`.
pub fn start_logged<S: AsRef<std::ffi::OsStr>>(name: &str, args: &[S], dir: &Path, log: &Path) -> ChildGuard {
    let file = std::fs::File::create(log).expect("log file");
    let file2 = file.try_clone().expect("log file");
    ChildGuard::spawn(
        name,
        Command::new(tlb_bin())
            .args(args)
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(file))
            .stderr(std::process::Stdio::from(file2)),
    )
}

/// Waits (30 s at most) until `addr` accepts TCP connections, failing
/// early, with `log`, if `child` exits.
pub fn wait_listening(addr: impl std::fmt::Display, child: &mut ChildGuard, log: &Path) {
    let addr: SocketAddr = addr.to_string().parse().expect("an IP:PORT address");
    let limit = Duration::from_secs(30);
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.child.try_wait() {
            panic!(
                "{} exited ({status}) before listening on {addr}; log:\n{}",
                child.name,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} not listening within {limit:?}; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Client options for `lab`'s server (trusting its CA, SNI `localhost`)
/// with client certificate `cn` of `pki`, which may be another CA's.
pub fn client_with_cert_of(lab: &Lab, pki: &tlb::core::pki::Pki, cn: &str, resumption: bool) -> ClientOptions {
    let (cert, key) = pki.client(cn);
    let mut opts = lab.client(None).expect("client options");
    opts.tls = tlb::core::tls::client_config(&tlb::core::tls::ClientTlsFiles {
        ca: &lab.pki.ca_cert(),
        cert: Some(&cert),
        key: Some(&key),
        allow_tls12: false,
        resumption,
    })
    .expect("client config");
    opts
}
