//! [`TcpConn`]: an async TCP stream whose `poll_close` is a real half-close.
//!
//! async-io's `Async<TcpStream>` only flushes on `poll_close`; a relay needs
//! close to mean "send FIN" so EOF propagates (directly, or after a TLS
//! close_notify when the stream is wrapped in TLS).

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
