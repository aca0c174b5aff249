//! The per-connection loops of `tlb bench`, one per [`Mode`], and the
//! connection they drive (mTLS, or plain TCP with `--plain`).
//!
//! Promises: the loader's own code allocates nothing per request; every
//! network wait has a timeout; a loop stops by itself at the deadline (plus
//! at most one operation's timeout); the open-loop schedule runs across
//! reconnects, so latency counts from the intended send time.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::Timer;

use crate::core::rt::net::TcpConn;
use crate::core::rt::timeout;
use crate::core::tools::client::{ClientStream, connect_tcp, connect_to};

use super::stats::{TaskResult, error_kind, io_kind, us};
use super::{BenchOptions, Live, Mode};

/// A loader connection: mTLS, or plain TCP with `--plain`.
enum Conn {
    Tls(Box<ClientStream>),
    Plain(TcpConn),
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
            Conn::Plain(s) => Pin::new(s).poll_close(cx),
        }
    }
}

/// One connection's task: the loop of `opts.mode` until `deadline`.
/// `interval` is the open-loop period of one connection (`--rate`), and
/// `offset` its staggered start.
pub(super) async fn connection(
    opts: BenchOptions,
    addr: SocketAddr,
    live: Arc<Live>,
    deadline: Instant,
    interval: Option<Duration>,
    offset: Option<Duration>,
) -> TaskResult {
    let (o, l) = (&opts, &*live);
    match o.mode {
        Mode::Handshake => handshake_loop(o, addr, l, deadline).await,
        Mode::Rr => rr_loop(o, addr, l, deadline, interval, offset).await,
        Mode::Stream => stream_loop(o, addr, l, deadline).await,
        Mode::Idle => {
            // With --rate, connections open at that many per second
            // (a turn after the deadline waits only until the deadline).
            if let Some(wait) = offset {
                Timer::at(Instant::now().checked_add(wait).map_or(deadline, |t| t.min(deadline))).await;
            }
            if Instant::now() >= deadline {
                return TaskResult::new(); // its turn came after the run
            }
            idle_hold(o, addr, l, deadline).await
        }
    }
}

/// The payload: `size - 1` dots and a newline (never mistaken for a greeting).
fn payload(size: usize) -> Vec<u8> {
    let mut p = vec![b'.'; size.max(1)];
    if let Some(last) = p.last_mut() {
        *last = b'\n';
    }
    p
}

/// Connects, timing the handshake.
async fn open(opts: &BenchOptions, addr: SocketAddr, live: &Live, res: &mut TaskResult) -> Option<Conn> {
    let t0 = Instant::now();
    let conn = if opts.plain {
        connect_tcp(addr, opts.client.connect_timeout).await.map(Conn::Plain)
    } else {
        connect_to(addr, &opts.client).await.map(|s| Conn::Tls(Box::new(s)))
    };
    match conn {
        Ok(s) => {
            let _ = res.handshake.record(us(t0.elapsed()));
            res.handshakes += 1;
            live.connections.fetch_add(1, Ordering::Relaxed);
            Some(s)
        }
        Err(e) => {
            res.error(live, error_kind(&e));
            None
        }
    }
}

/// Sends `msg` and reads its echo (see [`read_echo`]).
async fn echo_once(
    s: &mut Conn,
    msg: &[u8],
    buf: &mut [u8],
    greet: &mut Vec<u8>,
    first: bool,
) -> io::Result<Option<String>> {
    s.write_all(msg).await?;
    s.flush().await?;
    read_echo(s, buf, greet, first).await
}

/// Reads exactly `buf.len()` echoed bytes, first (when `first`) consuming a
/// greeting line (`<name> client=...`) if the upstream sends one; returns
/// the upstream name.
async fn read_echo(s: &mut Conn, buf: &mut [u8], greet: &mut Vec<u8>, first: bool) -> io::Result<Option<String>> {
    let mut got = 0;
    let mut name = None;
    if first {
        // Peek one byte: payload starts with '.', a greeting does not.
        s.read_exact(&mut buf[..1]).await?;
        if buf[0] != b'.' {
            greet.clear();
            greet.push(buf[0]);
            let mut b = [0u8; 1];
            while greet.len() < 512 {
                s.read_exact(&mut b).await?;
                if b[0] == b'\n' {
                    break;
                }
                greet.push(b[0]);
            }
            let line = String::from_utf8_lossy(greet);
            name = line.split_whitespace().next().map(str::to_owned);
        } else {
            got = 1;
        }
    }
    let n = buf.len();
    s.read_exact(&mut buf[got..n]).await?;
    Ok(name)
}

async fn handshake_loop(opts: &BenchOptions, addr: SocketAddr, live: &Live, deadline: Instant) -> TaskResult {
    let mut res = TaskResult::new();
    let msg = payload(opts.size);
    let mut buf = vec![0u8; msg.len()];
    let mut greet = Vec::with_capacity(128);
    while Instant::now() < deadline {
        let Some(mut s) = open(opts, addr, live, &mut res).await else {
            // Do not spin on a dead target.
            Timer::after(Duration::from_millis(10)).await;
            continue;
        };
        let t0 = Instant::now();
        let r = timeout(opts.op_timeout, async {
            let name = echo_once(&mut s, &msg, &mut buf, &mut greet, true).await?;
            s.close().await?;
            Ok::<_, io::Error>(name)
        })
        .await;
        match r {
            Ok(Ok(name)) => res.echoed(live, Some(t0), msg.len(), name),
            Ok(Err(e)) => res.error(live, io_kind(addr, e, true)),
            Err(_) => res.error(live, "timeout: echo".into()),
        }
    }
    res
}

async fn rr_loop(
    opts: &BenchOptions,
    addr: SocketAddr,
    live: &Live,
    deadline: Instant,
    interval: Option<Duration>,
    offset: Option<Duration>,
) -> TaskResult {
    let mut res = TaskResult::new();
    let msg = payload(opts.size);
    let mut buf = vec![0u8; msg.len()];
    let mut greet = Vec::with_capacity(128);
    // The open-loop schedule runs across reconnects: requests that could not
    // be sent during a stall count their latency from when they were due.
    let mut next_send = Instant::now()
        .checked_add(offset.unwrap_or_default())
        .unwrap_or(deadline);
    'conn: while Instant::now() < deadline {
        let Some(mut s) = open(opts, addr, live, &mut res).await else {
            Timer::after(Duration::from_millis(10)).await;
            continue;
        };
        let mut first = true;
        while Instant::now() < deadline {
            // Open loop: wait for the scheduled time; latency counts from it.
            let t0 = match interval {
                Some(iv) => {
                    // A send due after the deadline is not made: the run
                    // ends on time however low --rate is.
                    if next_send >= deadline {
                        Timer::at(deadline).await;
                        break;
                    }
                    let now = Instant::now();
                    if next_send > now {
                        Timer::at(next_send).await;
                    }
                    let t = next_send;
                    next_send = next_send.checked_add(iv).unwrap_or(deadline);
                    t
                }
                None => Instant::now(),
            };
            let r = timeout(opts.op_timeout, echo_once(&mut s, &msg, &mut buf, &mut greet, first)).await;
            match r {
                Ok(Ok(name)) => {
                    first = false;
                    res.echoed(live, Some(t0), msg.len(), name);
                }
                Ok(Err(e)) => {
                    res.error(live, io_kind(addr, e, first));
                    continue 'conn;
                }
                Err(_) => {
                    res.error(live, "timeout: echo".into());
                    continue 'conn;
                }
            }
        }
        let _ = timeout(Duration::from_secs(1), s.close()).await;
    }
    res
}

async fn stream_loop(opts: &BenchOptions, addr: SocketAddr, live: &Live, deadline: Instant) -> TaskResult {
    let mut res = TaskResult::new();
    let Some(mut s) = open(opts, addr, live, &mut res).await else {
        return res;
    };
    let chunk = payload(opts.size.max(16 * 1024));
    let mut pump = Pump {
        out: &chunk,
        out_pos: 0,
        inbuf: vec![0u8; 64 * 1024],
        received: 0,
        sent: 0,
        live,
    };
    let run = std::future::poll_fn(|cx| pump.poll(cx, &mut s));
    let until = Timer::at(deadline);
    let r = futures_lite::future::or(async { Some(run.await) }, async {
        until.await;
        None
    })
    .await;
    if let Some(Err(e)) = r {
        res.error(live, io_kind(addr, e, pump.received == 0));
    }
    res.bytes = pump.received;
    let _ = timeout(Duration::from_secs(1), s.close()).await;
    res
}

async fn idle_hold(opts: &BenchOptions, addr: SocketAddr, live: &Live, deadline: Instant) -> TaskResult {
    let mut res = TaskResult::new();
    let msg = payload(opts.size);
    let mut buf = vec![0u8; msg.len()];
    let mut greet = Vec::with_capacity(128);
    let Some(mut s) = open(opts, addr, live, &mut res).await else {
        return res;
    };
    let r = timeout(opts.op_timeout, echo_once(&mut s, &msg, &mut buf, &mut greet, true)).await;
    match r {
        Ok(Ok(name)) => {
            res.echoed(live, None, msg.len(), name);
            drop(buf);
            drop(greet);
            // Hold the connection, idle, until the end of the run.
            Timer::at(deadline).await;
            let _ = timeout(Duration::from_secs(1), s.close()).await;
        }
        Ok(Err(e)) => res.error(live, io_kind(addr, e, true)),
        Err(_) => res.error(live, "timeout: echo".into()),
    }
    res
}

/// Writes `out` over and over while reading whatever comes back, in one
/// future (a TLS stream is one state machine: no split, no lock). Writes are
/// held back when more than 1 MiB is in flight, so the echo path is not
/// flooded beyond what it can return.
struct Pump<'a> {
    out: &'a [u8],
    out_pos: usize,
    inbuf: Vec<u8>,
    received: u64,
    sent: u64,
    live: &'a Live,
}

impl Pump<'_> {
    fn poll<S: AsyncRead + AsyncWrite + Unpin>(&mut self, cx: &mut Context<'_>, s: &mut S) -> Poll<io::Result<()>> {
        const IN_FLIGHT: u64 = 1 << 20;
        loop {
            let mut progressed = false;
            // `received` includes a greeting line, so it may exceed `sent`.
            if self.sent.saturating_sub(self.received) < IN_FLIGHT {
                match Pin::new(&mut *s).poll_write(cx, &self.out[self.out_pos..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        self.out_pos = (self.out_pos + n) % self.out.len();
                        self.sent += n as u64;
                        progressed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            } else if let Poll::Ready(Err(e)) = Pin::new(&mut *s).poll_flush(cx) {
                return Poll::Ready(Err(e));
            }
            match Pin::new(&mut *s).poll_read(cx, &mut self.inbuf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Poll::Ready(Ok(n)) => {
                    self.received += n as u64;
                    self.live.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    progressed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }
}
