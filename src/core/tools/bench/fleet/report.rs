//! The report of a `tlb bench --fleet` run: its figures (also the `--json`
//! output), the table printed for people, the verdict, and the line that
//! says the limit held.
//!
//! Promises: the fleet-wide peak is the one measured on the loader's
//! fleet-wide counter (never a sum of per-instance peaks, which happen at
//! different moments, nor anything read from the config); each instance's
//! cluster state is read from the instance itself (`Server::cluster`, what
//! `/status` shows) after the load; the run fails (one line, saying why)
//! when the peak exceeded the limit, when any instance was not sharing
//! limits through Redis or decided any connection locally, when nothing
//! was admitted or nothing refused (the limit not exercised), or when
//! other errors exceed `--max-error-rate`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::core::proxy::outcome::Refusal;
use crate::core::tools::bench::report::percent;
use crate::core::tools::bench::{Stopped, Verdict};

use super::FleetOptions;
use super::hold::FleetLive;
use super::system::{CLIENT, CLUSTER_TIMEOUT, LIVENESS_TTL, Member};

/// One instance's figures.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceReport {
    pub name: String,
    pub addr: String,
    /// Connections whose echo came back (loader's count).
    pub admitted: u64,
    /// Connections closed after the handshake before any echo (loader's count).
    pub refused: u64,
    pub errors: u64,
    /// Most connections held on this instance at once (loader's count).
    pub peak_held: u64,
    /// Refusals the instance itself counted as `max_connections`.
    pub server_refused_max_connections: u64,
    /// Its other refusals (rate, upstream...).
    pub server_refused_other: u64,
    /// `shared` or `local`, from the instance after the load; `none`
    /// without `[cluster]`.
    pub cluster_mode: String,
    pub cluster_errors: u64,
    /// Connections it decided without Redis.
    pub local_decisions: u64,
}

impl InstanceReport {
    fn new(m: &Member, live: &FleetLive, i: usize) -> InstanceReport {
        let l = live.instances.get(i);
        let get = |f: fn(&super::hold::InstanceLive) -> u64| l.map_or(0, f);
        let cluster = m.cluster();
        let metrics = &m.server.metrics;
        let max = metrics.refused_for(Refusal::MaxConnections);
        InstanceReport {
            name: m.name.clone(),
            addr: m.addr.to_string(),
            admitted: get(|l| l.admitted.load(Ordering::Relaxed)),
            refused: get(|l| l.refused.load(Ordering::Relaxed)),
            errors: get(|l| l.errors.load(Ordering::Relaxed)),
            peak_held: get(|l| l.held.peak()),
            server_refused_max_connections: max,
            server_refused_other: metrics.refused().saturating_sub(max),
            cluster_mode: cluster.as_ref().map_or("none", |c| c.mode).to_string(),
            cluster_errors: cluster.as_ref().map_or(0, |c| c.errors),
            local_decisions: cluster.as_ref().map_or(0, |c| c.local_decisions),
        }
    }
}

/// How the load ended.
pub(super) struct Ended {
    /// The time run (monotonic clock), at most `duration` + one operation's timeout.
    pub(super) elapsed_s: f64,
    /// How much further the wall clock moved than the monotonic one.
    pub(super) wall_minus_monotonic_s: f64,
    pub(super) stopped: Option<Stopped>,
}

/// A wall clock this far ahead of the monotonic one means the machine was
/// paused (or its clock stepped) during the run.
const PAUSED_S: f64 = 1.0;

/// The figures of a fleet run (also written by `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub redis: String,
    pub client: String,
    /// client1's fleet-wide `max_connections`.
    pub limit: u32,
    pub connections: usize,
    pub hold_ms: u64,
    pub cluster_timeout_ms: u64,
    pub liveness_ttl_ms: u64,
    pub duration_s: f64,
    /// How much further the wall clock moved than the monotonic one during
    /// the run (about 0; seconds when the machine was paused).
    pub wall_minus_monotonic_s: f64,
    pub instances: Vec<InstanceReport>,
    /// Most connections held at once across the fleet (the loader's one counter).
    pub peak_held: u64,
    pub admitted: u64,
    pub refused: u64,
    pub errors_total: u64,
    /// Non-refusal errors in percent of attempts (admitted + refused + errors).
    pub error_rate_pct: f64,
    pub errors: BTreeMap<String, u64>,
    pub stopped: Option<Stopped>,
}

impl FleetReport {
    pub(super) fn new(
        members: &[Member],
        redis: &str,
        opts: &FleetOptions,
        live: &FleetLive,
        errors: BTreeMap<String, u64>,
        ended: Ended,
    ) -> FleetReport {
        let instances: Vec<InstanceReport> = members
            .iter()
            .enumerate()
            .map(|(i, m)| InstanceReport::new(m, live, i))
            .collect();
        let (admitted, refused, errors_total) = live.totals();
        let attempts = admitted + refused + errors_total;
        FleetReport {
            redis: redis.to_string(),
            client: CLIENT.into(),
            limit: opts.limit,
            connections: opts.connections,
            hold_ms: ms(super::hold::HOLD),
            cluster_timeout_ms: ms(CLUSTER_TIMEOUT),
            liveness_ttl_ms: ms(LIVENESS_TTL),
            duration_s: ended.elapsed_s,
            wall_minus_monotonic_s: ended.wall_minus_monotonic_s,
            instances,
            peak_held: live.held.peak(),
            admitted,
            refused,
            errors_total,
            error_rate_pct: percent(errors_total, attempts),
            errors,
            stopped: ended.stopped,
        }
    }
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The results table, for people.
pub fn render(r: &FleetReport) -> String {
    let mut s = String::new();
    let mut row = |k: &str, v: String| s.push_str(&format!("  {k:<15} {v}\n"));
    row("redis", format!("{} (redis-server on loopback)", r.redis));
    row(
        "fleet",
        format!(
            "{} instances sharing {}'s max_connections = {}",
            r.instances.len(),
            r.client,
            r.limit
        ),
    );
    row(
        "load",
        format!(
            "{} connection(s) round-robin, each held {} ms then reopened, {:.1} s",
            r.connections, r.hold_ms, r.duration_s
        ),
    );
    if let Some(p) = paused(r) {
        row("clock", p);
    }
    if r.stopped == Some(Stopped::Interrupted) {
        row("stopped", "interrupted: partial figures, over the time run".into());
    } else if r.stopped == Some(Stopped::Early) {
        row("stopped", "early: no connection was admitted (see below)".into());
    }
    let line = |a: &str, b: &str, c: [String; 4], d: &str| {
        format!(
            "  {a:<8} {b:<21} {:>9} {:>9} {:>6} {:>9}  {d}\n",
            c[0], c[1], c[2], c[3]
        )
    };
    let heads = ["admitted", "refused", "errors", "peak held"].map(String::from);
    s.push('\n');
    s.push_str(&line("instance", "address", heads, "cluster"));
    for i in &r.instances {
        let c = [i.admitted, i.refused, i.errors, i.peak_held].map(|n| n.to_string());
        s.push_str(&line(&i.name, &i.addr, c, &i.cluster_mode));
    }
    let c = [r.admitted, r.refused, r.errors_total, r.peak_held].map(|n| n.to_string());
    let fleet = format!("{} instances", r.instances.len());
    s.push_str(&line("fleet", &fleet, c, &format!("at once (limit {})", r.limit)));
    s.push('\n');
    let local: u64 = r.instances.iter().map(|i| i.local_decisions).sum();
    let redis_errors: u64 = r.instances.iter().map(|i| i.cluster_errors).sum();
    let max: u64 = r.instances.iter().map(|i| i.server_refused_max_connections).sum();
    let other: u64 = r.instances.iter().map(|i| i.server_refused_other).sum();
    s.push_str(&format!(
        "  counted by the instances: {max} max_connections refusal(s), {other} other refusal(s),\n  \
         {local} decision(s) without Redis, {redis_errors} Redis error(s) ([cluster] timeout {} ms)\n",
        r.cluster_timeout_ms
    ));
    s.push_str(
        "  peak held: connections whose echo came back and not yet closing, counted by the loader on one\n  \
         fleet-wide counter (a lower bound of what the instances hold at that instant)\n",
    );
    for (k, v) in &r.errors {
        s.push_str(&format!("  error: {k}: {v}\n"));
    }
    s
}

/// What a wall clock ahead of the monotonic one means, when it is.
fn paused(r: &FleetReport) -> Option<String> {
    let gap = r.wall_minus_monotonic_s;
    (gap >= PAUSED_S).then(|| {
        format!(
            "the wall clock moved {gap:.1} s more than the monotonic one: the machine was paused (or its clock \
             stepped) during the run; Redis times the instances' liveness ({} ms) by its wall clock, the \
             instances their refreshes and the loader its holds by the monotonic one",
            r.liveness_ttl_ms
        )
    })
}

/// The line a run that held prints last.
pub fn held_line(r: &FleetReport) -> String {
    format!(
        "limit held: peak {} <= {} across {} instances",
        r.peak_held,
        r.limit,
        r.instances.len()
    )
}

/// The verdict on `r` when up to `max_error_pct` percent of attempts may
/// fail with something other than a refusal.
pub fn verdict(r: &FleetReport, max_error_pct: f64) -> Verdict {
    let n = r.instances.len();
    let local: Vec<String> = r
        .instances
        .iter()
        .filter(|i| i.cluster_mode != "shared" || i.local_decisions > 0)
        .map(|i| {
            format!(
                "{} ({}, {} local decision(s))",
                i.name, i.cluster_mode, i.local_decisions
            )
        })
        .collect();
    let errors = || {
        r.errors.iter().max_by_key(|(_, v)| **v).map_or_else(
            || "no error was recorded".to_string(),
            |(k, v)| format!("most: {k} ({v})"),
        )
    };
    match r.stopped {
        Some(Stopped::Interrupted) => Verdict::Interrupted,
        _ if r.peak_held > u64::from(r.limit) => Verdict::Failed(format!(
            "limit broken: peak {} > {} across {n} instances{}",
            r.peak_held,
            r.limit,
            paused(r).map_or_else(String::new, |p| format!(
                "; {p}: a pause longer than liveness_ttl makes the fleet forget connections the instances \
                 still hold"
            ))
        )),
        _ if !local.is_empty() => Verdict::Failed(format!(
            "the fleet did not share the limit through Redis for the whole run: {} (Redis down, or slower than \
             the {} ms [cluster] timeout on this machine)",
            local.join(", "),
            r.cluster_timeout_ms
        )),
        _ if r.admitted == 0 => Verdict::Failed(format!(
            "no connection was admitted in {:.1} s ({} refused, {} other errors; {})",
            r.duration_s,
            r.refused,
            r.errors_total,
            errors()
        )),
        _ if r.refused == 0 => Verdict::Failed(format!(
            "the limit was not exercised: no connection was refused in {:.1} s (peak {} of {}); try a longer \
             --duration or more --connections",
            r.duration_s, r.peak_held, r.limit
        )),
        _ if r.error_rate_pct > max_error_pct => Verdict::Failed(format!(
            "{} of {} attempts failed other than by refusal ({:.1} %, over --max-error-rate {max_error_pct} %); {}",
            r.errors_total,
            r.admitted + r.refused + r.errors_total,
            r.error_rate_pct,
            errors()
        )),
        _ => Verdict::Ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(name: &str, mode: &str, local: u64) -> InstanceReport {
        InstanceReport {
            name: name.into(),
            addr: "127.0.0.1:1".into(),
            admitted: 10,
            refused: 20,
            errors: 0,
            peak_held: 2,
            server_refused_max_connections: 20,
            server_refused_other: 0,
            cluster_mode: mode.into(),
            cluster_errors: 0,
            local_decisions: local,
        }
    }

    fn report(peak: u64) -> FleetReport {
        FleetReport {
            redis: "redis://127.0.0.1:1".into(),
            client: CLIENT.into(),
            limit: 4,
            connections: 8,
            hold_ms: 200,
            cluster_timeout_ms: 250,
            liveness_ttl_ms: 5000,
            duration_s: 2.0,
            wall_minus_monotonic_s: 0.001,
            instances: vec![instance("tlb-1", "shared", 0), instance("tlb-2", "shared", 0)],
            peak_held: peak,
            admitted: 20,
            refused: 40,
            errors_total: 0,
            error_rate_pct: 0.0,
            errors: BTreeMap::new(),
            stopped: None,
        }
    }

    fn failed(r: &FleetReport) -> String {
        match verdict(r, 1.0) {
            Verdict::Failed(line) => line,
            v => panic!("expected a failure, got {v:?}"),
        }
    }

    #[test]
    fn a_peak_at_the_limit_holds_and_one_over_it_fails() {
        let r = report(4);
        assert_eq!(verdict(&r, 1.0), Verdict::Ok);
        assert_eq!(held_line(&r), "limit held: peak 4 <= 4 across 2 instances");
        assert_eq!(failed(&report(5)), "limit broken: peak 5 > 4 across 2 instances");
    }

    #[test]
    fn a_paused_machine_is_named_when_the_limit_broke() {
        let mut r = report(8);
        r.wall_minus_monotonic_s = 45.2;
        let line = failed(&r);
        assert!(
            line.starts_with("limit broken: peak 8 > 4 across 2 instances; the wall clock moved 45.2 s more"),
            "{line}"
        );
        assert!(
            line.contains("liveness (5000 ms)") && line.contains("longer than liveness_ttl"),
            "{line}"
        );
        assert!(
            render(&r).contains("  clock           the wall clock moved 45.2 s"),
            "{}",
            render(&r)
        );
        r.peak_held = 4;
        assert_eq!(verdict(&r, 1.0), Verdict::Ok, "a pause alone is no failure");
        assert!(!render(&report(4)).contains("clock"));
    }

    #[test]
    fn a_local_instance_or_a_local_decision_fails_the_run() {
        let mut r = report(4);
        r.instances[1] = instance("tlb-2", "local", 0);
        assert!(
            failed(&r).contains("tlb-2 (local, 0 local decision(s))"),
            "{}",
            failed(&r)
        );
        r.instances[1] = instance("tlb-2", "shared", 3);
        assert!(
            failed(&r).contains("tlb-2 (shared, 3 local decision(s))"),
            "{}",
            failed(&r)
        );
        r.instances[1] = instance("tlb-2", "none", 0);
        assert!(failed(&r).contains("did not share the limit through Redis"));
    }

    #[test]
    fn an_unexercised_limit_or_other_errors_fail_the_run() {
        let mut r = report(3);
        r.refused = 0;
        assert!(failed(&r).starts_with("the limit was not exercised"), "{}", failed(&r));
        let mut r = report(4);
        r.admitted = 0;
        assert!(failed(&r).starts_with("no connection was admitted"), "{}", failed(&r));
        let mut r = report(4);
        r.errors_total = 10;
        r.error_rate_pct = 10.0 * 100.0 / 70.0;
        r.errors.insert("timeout: echo".into(), 10);
        let line = failed(&r);
        assert!(
            line.contains("over --max-error-rate 1 %") && line.contains("timeout: echo (10)"),
            "{line}"
        );
        assert_eq!(verdict(&r, 20.0), Verdict::Ok);
        r.stopped = Some(Stopped::Interrupted);
        assert_eq!(
            verdict(&report(9), 1.0),
            Verdict::Failed("limit broken: peak 9 > 4 across 2 instances".into())
        );
        assert_eq!(verdict(&r, 1.0), Verdict::Interrupted);
    }
}
