//! The per-connection loops of `tlb bench`, one per [`Mode`], and the
//! connection they drive (mTLS, or plain TCP with `--plain`).
//!
//! Promises: the loader's own code allocates nothing per request; every
//! network wait has a timeout; a loop stops by itself at the deadline (plus
//! at most one operation's timeout), and at once when the run is stopped
//! (early stop, Ctrl-C), keeping what it measured; the open-loop schedule
//! runs across reconnects, so latency counts from the intended send time; a
//! connection counts only once an echo came back on it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::Timer;
use smol::channel::Receiver;

use crate::core::rt::net::TcpConn;
use crate::core::rt::timeout;
use crate::core::tools::client::{ClientStream, connect_tcp, tls_handshake};

use super::diagnose;
use super::stats::{TaskResult, us};
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

/// One connection's task: the loop of `opts.mode` until `deadline`, or
/// until `stop` is closed (what was measured so far is kept).
/// `interval` is the open-loop period of one connection (`--rate`), and
/// `offset` its staggered start.
pub(super) async fn connection(
    opts: BenchOptions,
    addr: SocketAddr,
    live: Arc<Live>,
    deadline: Instant,
    pace: (Option<Duration>, Option<Duration>),
    stop: Receiver<()>,
) -> TaskResult {
    let mut res = TaskResult::new();
    let work = drive(&opts, addr, &live, deadline, pace, &mut res);
    futures_lite::future::or(work, async {
        let _ = stop.recv().await;
    })
    .await;
    res
}

async fn drive(
    o: &BenchOptions,
    addr: SocketAddr,
    l: &Live,
    deadline: Instant,
    (interval, offset): (Option<Duration>, Option<Duration>),
    res: &mut TaskResult,
) {
    match o.mode {
        Mode::Handshake => handshake_loop(o, addr, l, deadline, res).await,
        Mode::Rr => rr_loop(o, addr, l, deadline, (interval, offset), res).await,
        Mode::Stream => stream_loop(o, addr, l, deadline, res).await,
        Mode::Idle => {
            // With --rate, connections open at that many per second
            // (a turn after the deadline waits only until the deadline).
            if let Some(wait) = offset {
                Timer::at(Instant::now().checked_add(wait).map_or(deadline, |t| t.min(deadline))).await;
            }
            if Instant::now() < deadline {
                idle_hold(o, addr, l, deadline, res).await; // else its turn came after the run
            }
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

/// Connects: TCP, then (unless `--plain`) the TLS handshake, each within
/// the connect timeout. Returns the connection and its handshake time in
/// microseconds, which counts only once an echo comes back on it
/// ([`TaskResult::connected`]): a refusal arrives after the client's side
/// of a TLS 1.3 handshake is done.
async fn open(opts: &BenchOptions, addr: SocketAddr, live: &Live, res: &mut TaskResult) -> Option<(Conn, u64)> {
    let t0 = Instant::now();
    let limit = opts.client.connect_timeout;
    let tcp = match connect_tcp(addr, limit).await {
        Ok(tcp) => tcp,
        Err(e) => {
            res.error(live, diagnose::of_connect(&e));
            return None;
        }
    };
    if opts.plain {
        return Some((Conn::Plain(tcp), us(t0.elapsed())));
    }
    match tls_handshake(tcp, &opts.client).await {
        Some(Ok(s)) => Some((Conn::Tls(Box::new(s)), us(t0.elapsed()))),
        Some(Err(e)) => {
            res.error(live, diagnose::of_handshake(&e));
            None
        }
        None => {
            res.error(live, diagnose::timeout("TLS handshake"));
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

async fn handshake_loop(opts: &BenchOptions, addr: SocketAddr, live: &Live, deadline: Instant, res: &mut TaskResult) {
    let msg = payload(opts.size);
    let mut buf = vec![0u8; msg.len()];
    let mut greet = Vec::with_capacity(128);
    while Instant::now() < deadline {
        let Some((mut s, hs)) = open(opts, addr, live, res).await else {
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
            Ok(Ok(name)) => {
                res.connected(live, hs);
                res.echoed(live, Some(t0), msg.len(), name);
            }
            Ok(Err(e)) => res.error(live, diagnose::of_exchange(&e, true)),
            Err(_) => res.error(live, diagnose::timeout("echo")),
        }
    }
}

async fn rr_loop(
    opts: &BenchOptions,
    addr: SocketAddr,
    live: &Live,
    deadline: Instant,
    (interval, offset): (Option<Duration>, Option<Duration>),
    res: &mut TaskResult,
) {
    let msg = payload(opts.size);
    let mut buf = vec![0u8; msg.len()];
    let mut greet = Vec::with_capacity(128);
    // The open-loop schedule runs across reconnects: requests that could not
    // be sent during a stall count their latency from when they were due.
    let mut next_send = Instant::now()
        .checked_add(offset.unwrap_or_default())
        .unwrap_or(deadline);
    'conn: while Instant::now() < deadline {
        let Some((mut s, hs)) = open(opts, addr, live, res).await else {
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
                    if next_send > Instant::now() {
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
                    if first {
                        res.connected(live, hs);
                    }
                    first = false;
                    res.echoed(live, Some(t0), msg.len(), name);
                }
                Ok(Err(e)) => {
                    res.error(live, diagnose::of_exchange(&e, first));
                    continue 'conn;
                }
                Err(_) => {
                    res.error(live, diagnose::timeout("echo"));
                    continue 'conn;
                }
            }
        }
        let _ = timeout(Duration::from_secs(1), s.close()).await;
    }
}

async fn stream_loop(opts: &BenchOptions, addr: SocketAddr, live: &Live, deadline: Instant, res: &mut TaskResult) {
    let Some((mut s, hs)) = open(opts, addr, live, res).await else {
        return;
    };
    let chunk = payload(opts.size.max(16 * 1024));
    let mut pump = Pump {
        out: &chunk,
        out_pos: 0,
        inbuf: vec![0u8; 64 * 1024],
        received: 0,
        sent: 0,
        handshake_us: Some(hs),
        live,
        res,
    };
    let run = std::future::poll_fn(|cx| pump.poll(cx, &mut s));
    let until = Timer::at(deadline);
    let r = futures_lite::future::or(async { Some(run.await) }, async {
        until.await;
        None
    })
    .await;
    let Pump { received, res, .. } = pump;
    if let Some(Err(e)) = r {
        res.error(live, diagnose::of_exchange(&e, received == 0));
    }
    let _ = timeout(Duration::from_secs(1), s.close()).await;
}

async fn idle_hold(opts: &BenchOptions, addr: SocketAddr, live: &Live, deadline: Instant, res: &mut TaskResult) {
    let msg = payload(opts.size);
    let mut buf = vec![0u8; msg.len()];
    let mut greet = Vec::with_capacity(128);
    let Some((mut s, hs)) = open(opts, addr, live, res).await else {
        return;
    };
    let r = timeout(opts.op_timeout, echo_once(&mut s, &msg, &mut buf, &mut greet, true)).await;
    match r {
        Ok(Ok(name)) => {
            res.connected(live, hs);
            res.echoed(live, None, msg.len(), name);
            drop(buf);
            drop(greet);
            // Hold the connection, idle, until the end of the run.
            Timer::at(deadline).await;
            let _ = timeout(Duration::from_secs(1), s.close()).await;
        }
        Ok(Err(e)) => res.error(live, diagnose::of_exchange(&e, true)),
        Err(_) => res.error(live, diagnose::timeout("echo")),
    }
}

/// Writes `out` over and over while reading whatever comes back, in one
/// future (a TLS stream is one state machine: no split, no lock). Writes are
/// held back when more than 1 MiB is in flight, so the echo path is not
/// flooded beyond what it can return. Received bytes go straight into the
/// task's result (kept if the run is stopped), and the first ones confirm
/// the connection.
struct Pump<'a> {
    out: &'a [u8],
    out_pos: usize,
    inbuf: Vec<u8>,
    received: u64,
    sent: u64,
    /// The handshake time, until the first echoed bytes confirm it.
    handshake_us: Option<u64>,
    live: &'a Live,
    res: &'a mut TaskResult,
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
                    if let Some(hs) = self.handshake_us.take() {
                        self.res.connected(self.live, hs);
                    }
                    self.received += n as u64;
                    self.res.bytes += n as u64;
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
