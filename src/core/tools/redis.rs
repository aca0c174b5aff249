//! A real `redis-server` child process for `tlb bench --fleet` and the
//! fleet tests: on a free loopback port, without persistence, optionally
//! with a password (`requirepass`) and TLS only (`--tls-port`, the plain
//! port off).
//!
//! Promises: [`RedisServer::start`] returns once the server logged that it
//! accepts connections (polled, 10 s deadline), retrying another port when
//! the chosen one was taken meanwhile; the server is killed and reaped, and
//! its temporary directory removed, when the [`RedisServer`] is dropped;
//! [`RedisServer::stop`] and [`RedisServer::restart`] (same port, empty)
//! simulate an outage; a [`RedisKiller`] kills it from another thread (a
//! signal handler quitting at once), through the same child handle, so a
//! reaped server's pid is never signalled. Nothing here speaks RESP:
//! readiness is read from the server's own log line.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How the server is started.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `requirepass`: clients must `AUTH` with it.
    pub password: Option<String>,
    /// Serve TLS only, with these files.
    pub tls: Option<RedisTls>,
}

/// The server's TLS files (PEM).
#[derive(Debug, Clone)]
pub struct RedisTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA client certificates must chain to.
    pub ca: PathBuf,
    /// `tls-auth-clients`: require a client certificate (Redis's default).
    pub auth_clients: bool,
}

/// A running (or stopped) `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    opts: RedisOptions,
    child: Arc<Mutex<Option<Child>>>,
    dir: tempfile::TempDir,
}

/// Kills a [`RedisServer`] from anywhere (it stays stopped).
#[derive(Debug, Clone)]
pub struct RedisKiller(Arc<Mutex<Option<Child>>>);

impl RedisKiller {
    /// Kills the server (SIGKILL) and waits for it, if it is running.
    pub fn kill(&self) {
        kill(&self.0);
    }
}

/// Kills and reaps the child in `slot`, if any, under the lock: a second
/// caller (a signal handler quitting at once, the owner's drop) waits until
/// the server is gone rather than finding the slot empty and exiting the
/// process before the first one's kill was sent.
fn kill(slot: &Mutex<Option<Child>>) {
    let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(mut c) = guard.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl RedisServer {
    /// Whether `redis-server` can be run.
    pub fn installed() -> bool {
        Command::new("redis-server")
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A server on a free loopback port.
    pub fn start(opts: RedisOptions) -> Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix("tlb-redis-")
            .tempdir()
            .context("creating a directory for redis-server")?;
        let mut s = RedisServer {
            port: 0,
            opts,
            child: Arc::default(),
            dir,
        };
        for _ in 0..20 {
            s.port = free_port()?;
            if s.spawn()? {
                return Ok(s);
            }
        }
        bail!(
            "redis-server did not start on any of 20 free ports; see {}",
            s.log().display()
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.opts.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The server's temporary directory (its log); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A handle that kills the server from another thread.
    pub fn killer(&self) -> RedisKiller {
        RedisKiller(self.child.clone())
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Starts the server on `self.port`: Ok(false) if it exited at once
    /// (the port was taken).
    fn spawn(&mut self) -> Result<bool> {
        let log = self.log();
        // A fresh log each time: readiness is read from it.
        std::fs::write(&log, b"").with_context(|| format!("creating {}", log.display()))?;
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "yes", "--logfile"])
            .arg(&log)
            .arg("--dir")
            .arg(self.dir.path());
        match &self.opts.tls {
            None => {
                cmd.args(["--port", &port]);
            }
            Some(t) => {
                cmd.args(["--port", "0", "--tls-port", &port]);
                cmd.arg("--tls-cert-file").arg(&t.cert);
                cmd.arg("--tls-key-file").arg(&t.key);
                cmd.arg("--tls-ca-cert-file").arg(&t.ca);
                cmd.args(["--tls-auth-clients", if t.auth_clients { "yes" } else { "no" }]);
            }
        }
        if let Some(p) = &self.opts.password {
            cmd.args(["--requirepass", p]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return Ok(false);
            }
            if ready(&log) {
                *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        bail!("redis-server on port {port} was not ready within 10 s; its log:\n{text}")
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        kill(&self.child);
    }

    /// Starts it again on the same port (empty: no persistence), waiting
    /// at most 10 s for the port to be free.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            bail!("redis-server is running: stop it before restarting it");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn()? {
            if Instant::now() >= deadline {
                bail!("port {} stayed taken for 10 s", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Whether something accepts TCP connections on the port now.
    pub fn listening(&self) -> bool {
        TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Redis logs "Ready to accept connections" once it serves.
fn ready(log: &Path) -> bool {
    std::fs::read_to_string(log).is_ok_and(|t| t.contains("Ready to accept connections"))
}

/// A port on 127.0.0.1 that nothing listens on (bound, read, released).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr().context("reading the bound address")?.port())
}
