//! Listening sockets, for every server tlb runs (the proxy's listeners, the
//! admin endpoint, the echo upstreams): binding, and the one accept step
//! that survives accept errors.
//!
//! Promises: [`bind_listener`] sets SO_REUSEADDR (and SO_REUSEPORT when
//! asked: [`bind_shared_listener`]) and a backlog of 1024;
//! a failed bind is one message with its cause once, a hint for that
//! errno and the caller's fix ([`bind_listener_or`]);
//! [`Listener::accept`] only ever returns a connection: an accept error
//! (EMFILE, ENFILE, ENOBUFS...) never spins, it backs off [`BACKOFF`] and
//! is logged at most once per the caller's [`Throttle`] interval, the line
//! saying how many errors it stands for. A successful accept costs what
//! the socket's own accept costs: no lock, no allocation.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use smol::{Async, Timer};
use tracing::warn;

use crate::core::rt::log::Throttle;
use crate::core::rt::net::{bind_hint, is_local_error};

/// The pause after a failed accept: the error (out of descriptors, most
/// often) lasts a while, and retrying at once would spin a core.
pub const BACKOFF: Duration = Duration::from_millis(50);

/// Binds one listener with SO_REUSEADDR and a deep backlog; a failed bind
/// says to change `listen` in the config.
pub fn bind_listener(addr: SocketAddr) -> Result<TcpListener> {
    bind_listener_or(addr, "change `listen` in the config")
}

/// [`bind_listener`], ending a failed bind's message with `fix` (what the
/// caller's user can change: a flag, a config key).
pub fn bind_listener_or(addr: SocketAddr, fix: &str) -> Result<TcpListener> {
    bind(addr, false, fix)
}

/// An app's listener: [`bind_listener`], with SO_REUSEPORT when
/// `reuse_port` (other processes that set it may bind `addr` too).
pub fn bind_shared_listener(addr: SocketAddr, reuse_port: bool) -> Result<TcpListener> {
    let fix = if reuse_port {
        "change `listen` in the config (with reuse_port, every process on the address must set it and run as the same user)"
    } else {
        "change `listen` in the config (or set reuse_port = true in every instance that shares it)"
    };
    bind(addr, reuse_port, fix)
}

fn bind(addr: SocketAddr, reuse_port: bool, fix: &str) -> Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .with_context(|| format!("creating a socket for {addr}"))?;
    socket.set_reuse_address(true).context("setting SO_REUSEADDR")?;
    if reuse_port {
        socket.set_reuse_port(true).context("setting SO_REUSEPORT")?;
    }
    socket
        .bind(&addr.into())
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}: {}; {fix}", bind_hint(&e, addr)))?;
    socket.listen(1024).with_context(|| format!("listening on {addr}"))?;
    Ok(socket.into())
}

/// A bound listener, registered with the reactor.
#[derive(Debug)]
pub struct Listener {
    io: Async<TcpListener>,
    addr: SocketAddr,
    /// What to do when accept runs out of descriptors or buffers.
    exhausted_hint: &'static str,
}

impl Listener {
    /// Makes `listener` non-blocking and registers it.
    pub fn new(listener: TcpListener) -> Result<Listener> {
        let addr = listener.local_addr().context("reading a listener's address")?;
        listener
            .set_nonblocking(true)
            .context("setting a listener non-blocking")?;
        let io = Async::new(listener).with_context(|| format!("registering listener {addr}"))?;
        Ok(Listener {
            io,
            addr,
            exhausted_hint: "raise the open-file limit",
        })
    }

    /// Replaces the advice logged when accept runs out of descriptors or
    /// buffers ("raise the open-file limit" by default).
    pub fn with_exhausted_hint(mut self, hint: &'static str) -> Listener {
        self.exhausted_hint = hint;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A duplicate of the socket (the same listening socket, another
    /// descriptor: open until both are closed).
    pub fn dup(&self) -> std::io::Result<TcpListener> {
        self.io.get_ref().try_clone()
    }

    /// The next connection. Errors are logged through `errors` (shared by
    /// the listeners of one server, so a flood of them is one line a
    /// second) and retried after [`BACKOFF`].
    pub async fn accept(&self, errors: &Throttle) -> (Async<TcpStream>, SocketAddr) {
        loop {
            match self.io.accept().await {
                Ok(accepted) => return accepted,
                Err(e) => {
                    self.report(&e, errors);
                    Timer::after(BACKOFF).await;
                }
            }
        }
    }

    fn report(&self, e: &std::io::Error, errors: &Throttle) {
        let Some(more) = errors.allow(Instant::now()) else {
            return;
        };
        let hint = if is_local_error(e) {
            format!(" (out of file descriptors or buffers: {})", self.exhausted_hint)
        } else {
            String::new()
        };
        let more = if more > 0 {
            format!("; {more} more since the last line")
        } else {
            String::new()
        };
        warn!("accept on {} failed: {e}{hint}{more}", self.addr);
    }
}
