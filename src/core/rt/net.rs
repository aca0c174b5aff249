//! Network plumbing: [`TcpConn`], an async TCP stream whose `poll_close` is
//! a real half-close; what an I/O error means ([`is_local_error`],
//! [`describe_io`], [`bind_hint`]); the source a connection counts against
//! ([`source_of`]).
//!
//! async-io's `Async<TcpStream>` only flushes on `poll_close`; a relay needs
//! close to mean "send FIN" so EOF propagates (directly, or after a TLS
//! close_notify when the stream is wrapped in TLS).
//!
//! Promises: [`is_local_error`] is true only for the balancer's own
//! resource exhaustion, never for what a peer did; [`describe_io`] words an
//! error the same way everywhere (logs, `/status`).

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use smol::Async;

/// A non-blocking TCP connection; closing it shuts down the write side.
#[derive(Debug)]
pub struct TcpConn {
    inner: Async<TcpStream>,
    write_shut: bool,
}

impl TcpConn {
    /// Wraps an accepted or connected stream and sets TCP_NODELAY.
    pub fn new(inner: Async<TcpStream>) -> TcpConn {
        let _ = inner.get_ref().set_nodelay(true);
        TcpConn {
            inner,
            write_shut: false,
        }
    }

    /// The local end's address (for an accepted connection: the address
    /// the peer reached).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().local_addr()
    }

    /// Connects to `addr` (no timeout: wrap the call in one).
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpConn> {
        Ok(TcpConn::new(Async::<TcpStream>::connect(addr).await?))
    }
}

impl AsyncRead for TcpConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write_shut {
            self.write_shut = true;
            match self.inner.get_ref().shutdown(Shutdown::Write) {
                Ok(()) => {}
                // Already gone: nothing left to close.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The source a connection counts against in per-source caps: its IPv4
/// address (also when written as IPv4-mapped IPv6), or the /64 of an IPv6
/// one (one host usually holds a whole /64).
pub fn source_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv6Addr};
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// The peer went away: reset, aborted, broken pipe, not connected, or EOF
/// in the middle of a stream (a TLS peer gone without close_notify). The
/// one "peer disconnected" test: relay shutdowns, upstreams that die before
/// answering, clients refused without a reply.
pub fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
    )
}

/// errno values that std has no stable [`io::ErrorKind`] for (it maps
/// ENOMEM to `OutOfMemory` and EADDRNOTAVAIL to `AddrNotAvailable`, but
/// these three stay "uncategorized"), so they are matched by number.
mod errno {
    /// Too many open files in the system: 23 on every Unix.
    pub const ENFILE: i32 = 23;
    /// Too many open files in this process: 24 on every Unix.
    pub const EMFILE: i32 = 24;
    /// No buffer space available: 105 on Linux (elsewhere it has another
    /// number and is not treated as local).
    pub const ENOBUFS: Option<i32> = if cfg!(target_os = "linux") { Some(105) } else { None };
}

/// Errors that are the balancer's own, not the peer's: out of file
/// descriptors (EMFILE, ENFILE), buffers (ENOBUFS), memory, or local ports
/// (EADDRNOTAVAIL). They never count as an upstream failure.
pub fn is_local_error(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    if matches!(e.kind(), K::AddrNotAvailable | K::OutOfMemory) {
        return true;
    }
    let raw = e.raw_os_error();
    matches!(raw, Some(errno::ENFILE | errno::EMFILE)) || errno::ENOBUFS.is_some_and(|n| raw == Some(n))
}

/// What to do about a failed bind of `addr`, one hint per errno: EADDRINUSE
/// (98 on Linux) another process holds the port; EADDRNOTAVAIL (99) the
/// address is not one of this machine's; EACCES (13) a port below 1024
/// needs privileges. std names all three ([`io::ErrorKind::AddrInUse`],
/// `AddrNotAvailable`, `PermissionDenied`), so they are matched by kind.
pub fn bind_hint(e: &io::Error, addr: SocketAddr) -> String {
    use io::ErrorKind as K;
    match e.kind() {
        K::AddrInUse => "another process holds that port (`ss -ltnp` shows which)".into(),
        K::AddrNotAvailable => format!(
            "{} is not an address of this machine, so it cannot be assigned (try 127.0.0.1 or 0.0.0.0)",
            addr.ip()
        ),
        K::PermissionDenied if addr.port() < 1024 => {
            "ports below 1024 need privileges (root or CAP_NET_BIND_SERVICE; or use a port from 1024 up)".into()
        }
        K::PermissionDenied => "this user may not bind there".into(),
        _ => "the address cannot be bound".into(),
    }
}

/// Short, stable wording for a connect or I/O error (logs, `/status`).
pub fn describe_io(e: &io::Error) -> String {
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset".into(),
        K::TimedOut => "timed out".into(),
        K::UnexpectedEof => "closed by the upstream".into(),
        K::AddrNotAvailable => "no local address or port available (balancer side)".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_errors_are_the_balancers_own_resources_only() {
        let emfile = io::Error::from_raw_os_error(24);
        assert!(is_local_error(&emfile));
        assert!(is_local_error(&io::Error::from_raw_os_error(errno::ENFILE)));
        assert!(is_local_error(&io::ErrorKind::AddrNotAvailable.into()));
        assert!(!is_local_error(&io::ErrorKind::ConnectionRefused.into()));
        assert!(!is_local_error(&io::Error::other("no errno")));
        if let Some(enobufs) = errno::ENOBUFS {
            assert!(is_local_error(&io::Error::from_raw_os_error(enobufs)));
        }
    }

    #[test]
    fn each_bind_errno_has_its_own_hint() {
        let at = |s: &str| s.parse::<SocketAddr>().expect("an address");
        let hint = |errno: i32, addr: &str| bind_hint(&io::Error::from_raw_os_error(errno), at(addr));
        // Linux numbers (std maps them to kinds on every Unix).
        let in_use = hint(98, "127.0.0.1:9001");
        let not_here = hint(99, "192.0.2.1:9001");
        let low_port = hint(13, "127.0.0.1:80");
        assert!(in_use.contains("another process"), "{in_use}");
        assert!(
            not_here.contains("192.0.2.1 is not an address of this machine"),
            "{not_here}"
        );
        assert!(!not_here.contains("another process"), "{not_here}");
        assert!(low_port.contains("below 1024"), "{low_port}");
        assert!(!hint(13, "127.0.0.1:8080").contains("below 1024"));
    }

    #[test]
    fn describe_io_words_are_stable() {
        assert_eq!(
            describe_io(&io::ErrorKind::ConnectionRefused.into()),
            "connection refused"
        );
        assert_eq!(describe_io(&io::ErrorKind::TimedOut.into()), "timed out");
    }
}
