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

mod modes;
mod report;
mod stats;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use serde::Serialize;
use smol::Timer;

use crate::core::rt::Runtime;
use crate::core::tools::client::{ClientOptions, resolve};

pub use report::{BenchReport, render};
pub use stats::Percentiles;

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

/// Live counters, for the progress bar.
#[derive(Debug, Default)]
pub struct Live {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
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
        // Stagger open-loop start times so sends are spread evenly:
        // connection i starts at i / rate, its slot in one interval.
        let offset = opts
            .rate
            .map(|r| Duration::try_from_secs_f64(i as f64 / r.max(0.001)).unwrap_or(Duration::MAX));
        let task = modes::connection(opts.clone(), addr, live.clone(), deadline, per_conn_interval, offset);
        tasks.push(rt.executor().spawn(task));
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
    Ok(BenchReport::new(opts, elapsed, TaskResult::merged(&results)))
}
