//! The load generator behind `tlb bench`, for any mTLS TCP echo endpoint.
//!
//! Modes: `handshake` (new connection per exchange: connect, full handshake,
//! one echo of `size` bytes, close), `rr` (persistent connections, ping-pong
//! of `size` bytes; closed loop, or open loop at `--rate` with latency taken
//! from the intended send time, which keeps running across reconnects, so
//! coordinated omission is not hidden), `stream` (bulk bytes both ways
//! through the echo) and `idle` (open, one echo, hold until the end).
//! [`fleet`] is `--fleet N`: redis-server and N instances sharing one
//! client's limit, loaded past it.
//!
//! Promises: the target is resolved once; one task per connection, each
//! with its own histograms (merged at the end: no shared lock per request);
//! live counters are atomics; the loader's own code allocates nothing per
//! request (rustls's buffered API still allocates per TLS record); every
//! network wait has a timeout, and the run stops by itself after `duration`
//! (plus at most one operation's timeout for the operations in flight).
//! It stops early, with what was measured so far, when almost nothing
//! succeeds ([`hopeless`]) or when the caller's interrupt fires (Ctrl-C);
//! [`verdict`] then says in one line whether the run failed, and why.

mod diagnose;
pub mod fleet;
mod modes;
mod report;
mod stats;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use smol::Timer;

use crate::core::rt::Runtime;
use crate::core::tools::client::{ClientOptions, resolve};

pub use report::{BenchReport, Verdict, headline, render, verdict};
pub use stats::Percentiles;

/// `--connections` unless given (`tlb pki init`'s sample limits admit it).
pub const DEFAULT_CONNECTIONS: usize = 64;

/// `--max-error-rate` unless given: percent of attempts that may fail.
pub const DEFAULT_MAX_ERROR_RATE: f64 = 1.0;

/// The early stop: once this long has passed (with at least one attempt
/// done) or [`EARLY_ATTEMPTS`] attempts were made, a run where fewer than
/// [`EARLY_MIN_SUCCESS_PCT`] % of attempts succeed stops.
pub const EARLY_AFTER: Duration = Duration::from_secs(2);
/// See [`EARLY_AFTER`].
pub const EARLY_ATTEMPTS: u64 = 200;
/// See [`EARLY_AFTER`].
pub const EARLY_MIN_SUCCESS_PCT: f64 = 1.0;

/// Why a run ended before its `duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stopped {
    /// Almost nothing succeeded ([`hopeless`]).
    Early,
    /// The caller's interrupt fired (Ctrl-C).
    Interrupted,
}

use stats::TaskResult;

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

/// Live counters, for the progress bar and the early stop.
#[derive(Debug, Default)]
pub struct Live {
    /// Connections confirmed (an echo came back on them).
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
}

impl Live {
    /// (successes, attempts) so far: an attempt is an exchange (an echo,
    /// or in stream mode a connection) that succeeded or an error.
    pub fn attempts(&self, mode: Mode) -> (u64, u64) {
        let ok = match mode {
            Mode::Stream => self.connections.load(Ordering::Relaxed),
            _ => self.requests.load(Ordering::Relaxed),
        };
        (ok, ok.saturating_add(self.errors.load(Ordering::Relaxed)))
    }
}

/// Is the run hopeless after `elapsed`: past [`EARLY_AFTER`] (with an
/// attempt done) or [`EARLY_ATTEMPTS`] attempts, and under
/// [`EARLY_MIN_SUCCESS_PCT`] % of them succeeded?
pub fn hopeless(ok: u64, attempts: u64, elapsed: Duration) -> bool {
    let judged = attempts >= EARLY_ATTEMPTS || (elapsed >= EARLY_AFTER && attempts > 0);
    judged && (ok as f64) * 100.0 < EARLY_MIN_SUCCESS_PCT * attempts as f64
}

/// Runs the benchmark; `on_tick` is called about 10 times a second with the
/// live counters and the elapsed time. The run stops early, keeping what
/// was measured, when it is [`hopeless`] or when `interrupt` completes.
pub fn run(
    opts: &BenchOptions,
    live: Arc<Live>,
    interrupt: impl Future<Output = ()>,
    mut on_tick: impl FnMut(&Live, Duration),
) -> anyhow::Result<BenchReport> {
    let addr = resolve(&opts.client.connect)?;
    let rt = Runtime::new(opts.threads)?;
    let started = Instant::now();
    let deadline = started
        .checked_add(opts.duration)
        .ok_or_else(|| anyhow::anyhow!("--duration {:?} is too long; use e.g. 10s or 1m", opts.duration))?;
    // Closed (never sent on) to stop every connection task at once.
    let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
    let mut tasks = Vec::with_capacity(opts.connections);
    let per_conn_interval = opts
        .rate
        .map(|r| Duration::try_from_secs_f64(opts.connections as f64 / r.max(0.001)).unwrap_or(Duration::MAX));
    for i in 0..opts.connections {
        // Stagger open-loop start times so sends are spread evenly:
        // connection i starts at i / rate, its slot in one interval.
        let offset = opts
            .rate
            .map(|r| Duration::try_from_secs_f64(i as f64 / r.max(0.001)).unwrap_or(Duration::MAX));
        let pace = (per_conn_interval, offset);
        let task = modes::connection(opts.clone(), addr, live.clone(), deadline, pace, stop_rx.clone());
        tasks.push(rt.executor().spawn(task));
    }
    drop(stop_rx);
    let mut stopped = None;
    let results = rt.block_on(async {
        let all = async {
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                out.push(t.await);
            }
            out
        };
        let mode = opts.mode;
        let hopeless = |l: &Live, elapsed: Duration| {
            let (ok, attempts) = l.attempts(mode);
            hopeless(ok, attempts, elapsed)
        };
        let watch = watch(
            &*live,
            started,
            interrupt,
            hopeless,
            &mut on_tick,
            &mut stopped,
            &stop_tx,
        );
        futures_lite::future::or(all, watch).await
    });
    let elapsed = started
        .elapsed()
        .min(opts.duration.saturating_add(opts.op_timeout))
        .as_secs_f64();
    Ok(BenchReport::new(opts, elapsed, TaskResult::merged(&results), stopped))
}

/// Ticks `on_tick` every 100 ms until the run ends (never returns by
/// itself); on the first of `interrupt` or `hopeless`, records why in
/// `stopped` and closes `stop` (the tasks then return what they measured).
pub(crate) async fn watch<L, T>(
    live: &L,
    started: Instant,
    interrupt: impl Future<Output = ()>,
    hopeless: impl Fn(&L, Duration) -> bool,
    on_tick: &mut impl FnMut(&L, Duration),
    stopped: &mut Option<Stopped>,
    stop: &smol::channel::Sender<()>,
) -> T {
    let mut interrupt = Some(Box::pin(interrupt));
    loop {
        let tick = async {
            Timer::after(Duration::from_millis(100)).await;
            false
        };
        let fired = match interrupt.as_mut() {
            Some(i) => {
                futures_lite::future::or(tick, async {
                    i.await;
                    true
                })
                .await
            }
            None => tick.await,
        };
        if fired {
            interrupt = None; // completed: never polled again
        }
        let why = match (fired, hopeless(live, started.elapsed())) {
            (true, _) => Some(Stopped::Interrupted),
            (false, true) => Some(Stopped::Early),
            _ => None,
        };
        if let (Some(why), None) = (why, *stopped) {
            *stopped = Some(why);
            stop.close();
        }
        on_tick(live, started.elapsed());
    }
}
