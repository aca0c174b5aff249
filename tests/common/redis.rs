//! A real `redis-server` for the fleet tests: started on a free loopback
//! port (retried on a collision), no persistence, killed when dropped;
//! stoppable and restartable on the same port.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{ChildGuard, free_port, have};

/// A running (or stopped) `redis-server`.
pub struct RedisServer {
    pub port: u16,
    child: Option<ChildGuard>,
    dir: tempfile::TempDir,
}

/// `None`, after a loud SKIP line, when `redis-server` is not installed
/// (`.ci/run` installs it).
pub fn redis_or_skip(test: &str) -> Option<RedisServer> {
    if !have("redis-server", "--version") {
        eprintln!("SKIP {test}: redis-server is not installed (apt-get install redis-server; .ci/run does it)");
        return None;
    }
    Some(RedisServer::start())
}

impl RedisServer {
    /// A server on a free port.
    pub fn start() -> RedisServer {
        for _ in 0..20 {
            let mut s = RedisServer {
                port: free_port(),
                child: None,
                dir: tempfile::tempdir().expect("tempdir"),
            };
            if s.spawn() {
                return s;
            }
        }
        panic!("redis-server did not start on any of 20 free ports");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Starts the server on `self.port`; false if it exited (port taken).
    fn spawn(&mut self) -> bool {
        let log = std::fs::File::create(self.log()).expect("redis log");
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--enable-debug-command", "yes", "--dir"])
        .arg(self.dir.path())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(Stdio::null());
        let mut child = ChildGuard::spawn("redis-server", &mut cmd);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if self.ping() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        panic!(
            "redis-server on port {} did not answer PING within 10 s; log:\n{log}",
            self.port
        );
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut c).is_ok_and(|p| p == "PONG")
    }

    /// A plain connection, for checks and faults (`DEBUG SLEEP`).
    pub fn conn(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).expect("redis url");
        let c = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connecting to redis");
        c.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
        c
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.signal("KILL");
            assert!(
                c.wait_for(Duration::from_secs(10)).is_some(),
                "redis-server did not exit"
            );
        }
    }

    /// Starts it again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(Instant::now() < deadline, "port {} stayed taken", self.port);
        }
    }

    /// Whether something accepts connections on the port now.
    pub fn listening(&self) -> bool {
        TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }
}
