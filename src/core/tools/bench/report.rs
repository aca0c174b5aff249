//! The report of a `tlb bench` run: its figures (also the `--json`
//! output), the one-line headline that says what the mode does, the table
//! printed for people, and the verdict (did the run fail, and why).
//!
//! Promises: every rate is over the measured window that `duration_s`
//! reports (the time actually run, when stopped early or interrupted); the
//! table shows what was not measured as such, never as zero, and only
//! figures that mean something in the mode (connections/s in handshake
//! mode only); a failed verdict is one line ending with the diagnosis.

use std::collections::BTreeMap;

use serde::Serialize;

use super::diagnose::{self, Class};
use super::stats::{Percentiles, TaskResult};
use super::{BenchOptions, Mode, Stopped};

/// The figures of a run (also written by `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub target: String,
    pub mode: Mode,
    pub connections: usize,
    pub size: usize,
    pub duration_s: f64,
    /// Connections that completed a handshake and got an echo back (a
    /// refused handshake is an error, never one of these).
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
    /// Exchanges that succeeded (stream mode: connections) plus errors.
    pub attempts: u64,
    pub errors_total: u64,
    /// `errors_total` in percent of `attempts` (0 when nothing was attempted).
    pub error_rate_pct: f64,
    pub errors: BTreeMap<String, u64>,
    /// Connections per upstream, from the upstream's greeting line.
    pub upstream_share: BTreeMap<String, u64>,
    /// Why the run ended before `--duration`, if it did.
    pub stopped: Option<Stopped>,
    /// The most frequent kind of error, explained (none without errors).
    pub diagnosis: Option<String>,
}

impl BenchReport {
    /// The figures of `total`, measured over `elapsed` seconds.
    pub(super) fn new(opts: &BenchOptions, elapsed: f64, total: TaskResult, stopped: Option<Stopped>) -> BenchReport {
        // Rates over the measured window, the same one `duration_s` reports.
        let d = elapsed.max(1e-9);
        let errors_total: u64 = total.errors.values().map(|(_, n)| n).sum();
        let ok = match opts.mode {
            Mode::Stream => total.handshakes,
            _ => total.requests,
        };
        let attempts = ok.saturating_add(errors_total);
        let context = diagnose::Context {
            target: &opts.client.connect,
            mode: opts.mode,
            plain: opts.plain,
            connections: opts.connections,
            opened: total.handshakes,
            secs: elapsed,
        };
        let diagnosis = dominant(&total.errors).map(|(class, label)| diagnose::explain(class, label, &context));
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
            attempts,
            errors_total,
            error_rate_pct: percent(errors_total, attempts),
            errors: total.errors.into_iter().map(|(k, (_, n))| (k, n)).collect(),
            upstream_share: total.upstreams,
            stopped,
            diagnosis,
        }
    }
}

/// The class with the most errors, and its most frequent label.
/// `part` as a percentage of `whole` (0 when `whole` is 0).
pub(crate) fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn dominant(errors: &BTreeMap<String, (Class, u64)>) -> Option<(Class, &str)> {
    let mut classes: Vec<(Class, u64, &str, u64)> = Vec::new();
    for (label, (class, n)) in errors {
        match classes.iter_mut().find(|c| c.0 == *class) {
            Some(c) => {
                c.1 = c.1.saturating_add(*n);
                if *n > c.3 {
                    (c.2, c.3) = (label, *n);
                }
            }
            None => classes.push((*class, *n, label, *n)),
        }
    }
    classes.iter().max_by_key(|c| c.1).map(|c| (c.0, c.2))
}

/// How a run ended, for the exit status.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Ran, and errors stayed within the allowed rate.
    Ok,
    /// Stopped early, nothing attempted, or over the allowed error rate:
    /// one line saying so, with the diagnosis.
    Failed(String),
    /// Interrupted (Ctrl-C): the figures are partial.
    Interrupted,
}

/// The verdict on `r` when up to `max_error_pct` percent of attempts may fail.
pub fn verdict(r: &BenchReport, max_error_pct: f64) -> Verdict {
    let why = r.diagnosis.as_deref().unwrap_or("no error was recorded");
    match r.stopped {
        Some(Stopped::Interrupted) => Verdict::Interrupted,
        Some(Stopped::Early) => Verdict::Failed(format!(
            "stopped after {:.1} s: {} of {} attempts succeeded; {why}",
            r.duration_s,
            r.attempts.saturating_sub(r.errors_total),
            r.attempts
        )),
        None if r.attempts == 0 => Verdict::Failed(format!(
            "no exchange completed in {:.1} s against {}; {why}",
            r.duration_s, r.target
        )),
        None if r.error_rate_pct > max_error_pct => Verdict::Failed(format!(
            "{} of {} attempts failed ({:.1} %, over --max-error-rate {max_error_pct} %); {why}",
            r.errors_total, r.attempts, r.error_rate_pct
        )),
        None => Verdict::Ok,
    }
}

/// One line saying what the run does, e.g. `rr: 64 persistent connections,
/// each sends 64 B and waits for its echo (closed loop), 10s against
/// 127.0.0.1:8443`.
pub fn headline(o: &BenchOptions) -> String {
    let (n, size) = (o.connections, o.size);
    let what = match (o.mode, o.rate) {
        (Mode::Handshake, _) => format!(
            "handshake: {n} loop(s), each opening a new connection ({}), one {size} B echo, close",
            if o.plain { "plain TCP" } else { "TLS handshake" }
        ),
        (Mode::Rr, None) => {
            format!("rr: {n} persistent connection(s), each sends {size} B and waits for its echo (closed loop)")
        }
        (Mode::Rr, Some(r)) => format!(
            "rr: {n} persistent connection(s) sending {r} x {size} B per second in all (open loop: latency \
             from each scheduled send)"
        ),
        (Mode::Stream, _) => format!(
            "stream: {n} connection(s) pumping {} B chunks both ways through the echo",
            size.max(16 * 1024)
        ),
        (Mode::Idle, None) => format!("idle: {n} connection(s) opened, one {size} B echo each, then held idle"),
        (Mode::Idle, Some(r)) => {
            format!("idle: {n} connection(s) opened at {r}/s, one {size} B echo each, then held idle")
        }
    };
    let plain = if o.plain && o.mode != Mode::Handshake {
        " (plain TCP)"
    } else {
        ""
    };
    format!(
        "{what}{plain}, {} against {}",
        humantime::format_duration(o.duration),
        o.client.connect
    )
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
    match r.stopped {
        Some(Stopped::Early) => row("stopped", "early: almost every attempt failed (see below)".into()),
        Some(Stopped::Interrupted) => row("stopped", "interrupted: partial figures, over the time run".into()),
        None => {}
    }
    match r.mode {
        Mode::Handshake => row(
            "connections/s",
            format!("{:.1}  ({} connections)", r.connections_per_s, r.handshakes),
        ),
        Mode::Idle => row("connections held", format!("{} of {}", r.handshakes, r.connections)),
        Mode::Rr | Mode::Stream => row("connections opened", r.handshakes.to_string()),
    }
    let none = || "none (no connection completed)".to_string();
    row(
        "handshake latency p50/p99",
        match r.handshake_latency.count {
            0 => none(),
            _ => format!(
                "{} / {}",
                ms(r.handshake_latency.p50_us),
                ms(r.handshake_latency.p99_us)
            ),
        },
    );
    if r.mode != Mode::Stream {
        row(
            "requests/s",
            format!("{:.1}  ({} requests)", r.requests_per_s, r.requests),
        );
        if r.mode != Mode::Idle {
            row(
                "request latency p50/p99/p99.9",
                match r.request_latency.count {
                    0 => "none (no request completed)".into(),
                    _ => format!(
                        "{} / {} / {}",
                        ms(r.request_latency.p50_us),
                        ms(r.request_latency.p99_us),
                        ms(r.request_latency.p999_us)
                    ),
                },
            );
        }
    }
    row("throughput (echoed)", format!("{:.2} MB/s", r.throughput_mb_s));
    row(
        "errors",
        format!(
            "{}  ({:.2} % of {} attempts)",
            r.errors_total, r.error_rate_pct, r.attempts
        ),
    );
    for (k, v) in &r.errors {
        row(&format!("  {k}"), v.to_string());
    }
    share_rows(r, &mut row);
    s
}

/// The per-upstream share rows.
fn share_rows(r: &BenchReport, row: &mut impl FnMut(&str, String)) {
    if r.mode == Mode::Stream {
        row("per-upstream share", "not measured in stream mode".into());
    } else if r.handshakes == 0 {
        row("per-upstream share", "none (no connection completed)".into());
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
}
