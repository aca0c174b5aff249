//! The report of a `tlb bench` run: its figures (also the `--json`
//! output) and the table printed for people.
//!
//! Promises: every rate is over the measured window that `duration_s`
//! reports; the table shows what was not measured as such, never as zero.

use std::collections::BTreeMap;

use serde::Serialize;

use super::stats::{Percentiles, TaskResult};
use super::{BenchOptions, Mode};

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

impl BenchReport {
    /// The figures of `total`, measured over `elapsed` seconds.
    pub(super) fn new(opts: &BenchOptions, elapsed: f64, total: TaskResult) -> BenchReport {
        // Rates over the measured window, the same one `duration_s` reports.
        let d = elapsed.max(1e-9);
        BenchReport {
            target: opts.client.connect.clone(),
            mode: opts.mode,
            connections: opts.connections,
            size: opts.size,
            duration_s: elapsed,
            handshakes: total.handshakes,
            connections_per_s: total.handshakes as f64 / d,
            handshake_latency: Percentiles::of(&total.handshake),
            requests: total.requests,
            requests_per_s: total.requests as f64 / d,
            request_latency: Percentiles::of(&total.request),
            bytes_echoed: total.bytes,
            throughput_mb_s: total.bytes as f64 / d / 1e6,
            errors: total.errors,
            upstream_share: total.upstreams,
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
