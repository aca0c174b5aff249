//! The load generator behind `tlb bench`, for any mTLS TCP echo endpoint.
//!
//! Modes: `handshake` (new connection per exchange: connect, full handshake,
//! one echo of `size` bytes, close), `rr` (persistent connections, ping-pong
//! of `size` bytes; closed loop, or open loop at `--rate` with latency taken
//! from the intended send time, which keeps running across reconnects, so
//! coordinated omission is not hidden), `stream` (bulk bytes both ways
//! through the echo) and `idle` (open, one echo, hold until the end).
//!
//! Promises: the target is resolved once; one task per connection, each
//! with its own histograms (merged at the end: no shared lock per request);
//! live counters are atomics; the loader's own code allocates nothing per
//! request (rustls's buffered API still allocates per TLS record); every
//! network wait has a timeout, and the run stops by itself after `duration`
//! (plus at most one operation's timeout for the operations in flight).

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use smol::Timer;

use std::net::SocketAddr;

use crate::core::rt::net::TcpConn;
use crate::core::rt::{Runtime, timeout};
use crate::core::tools::client::{
    ClientError, ClientOptions, ClientStream, connect_tcp, connect_to, refused_or_io, resolve,
};

/// What each connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// New mTLS connection per exchange.
    Handshake,
    /// Persistent connections, ping-pong of --size bytes.
    Rr,
    /// Bulk bytes through the echo, both directions.
    Stream,
    /// Open --connections connections (at --rate per second if given), one
    /// echo each, then hold them idle until the end (memory per idle
    /// connection, connection capacity).
    Idle,
}

/// A benchmark run's parameters.
#[derive(Clone)]
pub struct BenchOptions {
    pub client: ClientOptions,
    pub mode: Mode,
    pub connections: usize,
    pub duration: Duration,
    pub size: usize,
    /// Open loop: total requests per second across all connections (rr);
    /// new connections per second (idle).
    pub rate: Option<f64>,
    pub threads: usize,
    /// Per-operation timeout.
    pub op_timeout: Duration,
    /// Plain TCP instead of TLS (to measure an upstream directly).
    pub plain: bool,
}

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

/// Live counters, for the progress bar.
#[derive(Debug, Default)]
pub struct Live {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// The figures of a run (also written by `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub target: String,
    pub mode: Mode,
    pub connections: usize,
    pub size: usize,
    pub duration_s: f64,
    pub handshakes: u64,
    pub connections_per_s: f64,
    pub handshake_latency: Percentiles,
    pub requests: u64,
    pub requests_per_s: f64,
    pub request_latency: Percentiles,
    /// Echoed bytes received (= bytes sent each way that made the round trip).
    pub bytes_echoed: u64,
    /// Echoed bytes received per second, in MB (10^6).
    pub throughput_mb_s: f64,
    pub errors: BTreeMap<String, u64>,
    /// Connections per upstream, from the upstream's greeting line.
    pub upstream_share: BTreeMap<String, u64>,
}

fn new_hist() -> Histogram<u64> {
    // 1 us .. 60 s, 3 significant digits. Bounds are constants: cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// One task's results.
struct TaskResult {
    handshake: Histogram<u64>,
    request: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    upstreams: BTreeMap<String, u64>,
    handshakes: u64,
    requests: u64,
    bytes: u64,
}

impl TaskResult {
    fn new() -> TaskResult {
        TaskResult {
            handshake: new_hist(),
            request: new_hist(),
            errors: BTreeMap::new(),
            upstreams: BTreeMap::new(),
            handshakes: 0,
            requests: 0,
            bytes: 0,
        }
    }
    fn error(&mut self, live: &Live, kind: String) {
        live.errors.fetch_add(1, Ordering::Relaxed);
        *self.errors.entry(kind).or_insert(0) += 1;
    }

    /// One echo done: `bytes` echoed, latency from `t0` (when timed), and
    /// the upstream that greeted, if one did.
    fn echoed(&mut self, live: &Live, t0: Option<Instant>, bytes: usize, upstream: Option<String>) {
        if let Some(t0) = t0 {
            let _ = self.request.record(us(t0.elapsed()));
        }
        if let Some(n) = upstream {
            *self.upstreams.entry(n).or_insert(0) += 1;
        }
        self.requests += 1;
        self.bytes += bytes as u64;
        live.requests.fetch_add(1, Ordering::Relaxed);
        live.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, 60_000_000)
}

/// Short label for an error, for the "errors by kind" table.
fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Resolve(..) => "resolve".into(),
        ClientError::Connect { source, .. } => format!("connect: {}", source.kind()),
        ClientError::TlsRefused { detail, .. } => format!("tls refused: {detail}"),
        ClientError::ClosedBeforeReply { .. } => "closed before reply".into(),
        ClientError::Timeout { what, .. } => format!("timeout: {what}"),
        ClientError::Io { detail, .. } => format!("io: {detail}"),
    }
}

/// The one classifier for an I/O error on an established connection, in
/// every mode: an EOF is "closed before reply" when nothing was echoed yet
/// on it, else "closed mid-exchange"; a TLS alert (a refusal arrives on the
/// first read with TLS 1.3) is "tls refused: alert ...".
fn io_kind(addr: SocketAddr, e: io::Error, before_reply: bool) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof if before_reply => "closed before reply".into(),
        io::ErrorKind::UnexpectedEof => "closed mid-exchange".into(),
        _ => error_kind(&refused_or_io(addr, e)),
    }
}

/// Runs the benchmark; `on_tick` is called about 10 times a second with the
/// live counters and the elapsed time.
pub fn run(
    opts: &BenchOptions,
    live: Arc<Live>,
    mut on_tick: impl FnMut(&Live, Duration),
) -> anyhow::Result<BenchReport> {
    let addr = resolve(&opts.client.connect)?;
    let rt = Runtime::new(opts.threads)?;
    let started = Instant::now();
    let deadline = started
        .checked_add(opts.duration)
        .ok_or_else(|| anyhow::anyhow!("--duration {:?} is too long; use e.g. 10s or 1m", opts.duration))?;
    let mut tasks = Vec::with_capacity(opts.connections);
    let per_conn_interval = opts
        .rate
        .map(|r| Duration::try_from_secs_f64(opts.connections as f64 / r.max(0.001)).unwrap_or(Duration::MAX));
    for i in 0..opts.connections {
        let o = opts.clone();
        let l = live.clone();
        // Stagger open-loop start times so sends are spread evenly:
        // connection i starts at i / rate, its slot in one interval.
        let offset = opts
            .rate
            .map(|r| Duration::try_from_secs_f64(i as f64 / r.max(0.001)).unwrap_or(Duration::MAX));
        tasks.push(rt.executor().spawn(async move {
            match o.mode {
                Mode::Handshake => handshake_loop(&o, addr, &l, deadline).await,
                Mode::Rr => rr_loop(&o, addr, &l, deadline, per_conn_interval, offset).await,
                Mode::Stream => stream_loop(&o, addr, &l, deadline).await,
                Mode::Idle => {
                    // With --rate, connections open at that many per second
                    // (a turn after the deadline waits only until the deadline).
                    if let Some(wait) = offset {
                        Timer::at(Instant::now().checked_add(wait).map_or(deadline, |t| t.min(deadline))).await;
                    }
                    if Instant::now() >= deadline {
                        return TaskResult::new(); // its turn came after the run
                    }
                    idle_hold(&o, addr, &l, deadline).await
                }
            }
        }));
    }
    let results = rt.block_on(async {
        let all = async {
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                out.push(t.await);
            }
            out
        };
        let ticker = async {
            loop {
                Timer::after(Duration::from_millis(100)).await;
                on_tick(&live, started.elapsed());
            }
        };
        futures_lite::future::or(all, ticker).await
    });
    let elapsed = started
        .elapsed()
        .min(opts.duration.saturating_add(opts.op_timeout))
        .as_secs_f64();
    let mut hs = new_hist();
    let mut rq = new_hist();
    let mut errors = BTreeMap::new();
    let mut upstream_share = BTreeMap::new();
    let (mut handshakes, mut requests, mut bytes) = (0u64, 0u64, 0u64);
    for r in &results {
        let _ = hs.add(&r.handshake);
        let _ = rq.add(&r.request);
        for (k, v) in &r.errors {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &r.upstreams {
            *upstream_share.entry(k.clone()).or_insert(0) += v;
        }
        handshakes += r.handshakes;
        requests += r.requests;
        bytes += r.bytes;
    }
    // Rates over the measured window, the same one `duration_s` reports.
    let d = elapsed.max(1e-9);
    Ok(BenchReport {
        target: opts.client.connect.clone(),
        mode: opts.mode,
        connections: opts.connections,
        size: opts.size,
        duration_s: elapsed,
        handshakes,
        connections_per_s: handshakes as f64 / d,
        handshake_latency: Percentiles::of(&hs),
        requests,
        requests_per_s: requests as f64 / d,
        request_latency: Percentiles::of(&rq),
        bytes_echoed: bytes,
        throughput_mb_s: bytes as f64 / d / 1e6,
        errors,
        upstream_share,
    })
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

/// The results table, for people.
pub fn render(r: &BenchReport) -> String {
    let ms = |v: u64| format!("{:.3} ms", v as f64 / 1000.0);
    let mut s = String::new();
    let mut row = |k: &str, v: String| s.push_str(&format!("  {k:<31} {v}\n"));
    row("target", r.target.clone());
    let mode = format!("{:?}", r.mode).to_lowercase();
    row(
        "mode",
        format!(
            "{mode}, {} connection(s), {} B messages, {:.1} s",
            r.connections, r.size, r.duration_s
        ),
    );
    row(
        "connections/s",
        format!("{:.1}  ({} handshakes)", r.connections_per_s, r.handshakes),
    );
    row(
        "handshake latency p50/p99",
        format!(
            "{} / {}",
            ms(r.handshake_latency.p50_us),
            ms(r.handshake_latency.p99_us)
        ),
    );
    if r.mode != Mode::Stream {
        row(
            "requests/s",
            format!("{:.1}  ({} requests)", r.requests_per_s, r.requests),
        );
        row(
            "request latency p50/p99/p99.9",
            format!(
                "{} / {} / {}",
                ms(r.request_latency.p50_us),
                ms(r.request_latency.p99_us),
                ms(r.request_latency.p999_us)
            ),
        );
    }
    row("throughput (echoed)", format!("{:.2} MB/s", r.throughput_mb_s));
    let total_err: u64 = r.errors.values().sum();
    row("errors", total_err.to_string());
    for (k, v) in &r.errors {
        row(&format!("  {k}"), v.to_string());
    }
    if r.mode == Mode::Stream {
        row("per-upstream share", "not measured in stream mode".into());
    } else if r.upstream_share.is_empty() {
        row("per-upstream share", "not visible (upstreams do not greet)".into());
    } else {
        let total: u64 = r.upstream_share.values().sum::<u64>().max(1);
        for (k, v) in &r.upstream_share {
            row(
                &format!("upstream {k}"),
                format!("{v} connection(s), {:.1} %", *v as f64 * 100.0 / total as f64),
            );
        }
    }
    s
}
