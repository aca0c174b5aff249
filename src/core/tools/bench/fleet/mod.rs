//! `tlb bench --fleet N`: a real `redis-server` and N in-process tlb
//! instances sharing one client's `max_connections` through it
//! ([`system`]), loaded by more of that client's connections than the limit,
//! spread round-robin over the instances and held ([`hold`]), and the
//! report that shows, per instance and fleet-wide, what was admitted,
//! refused and held at once ([`report`]).
//!
//! Promises: the load runs on its own runtime and stops by itself after
//! `duration` (plus at most one operation's timeout for the attempts in
//! flight), at once when the caller's interrupt fires (the figures so far
//! are kept), and early when nothing at all was admitted after
//! [`EARLY_AFTER`] or [`EARLY_ATTEMPTS`] attempts; the peak is measured by
//! the loader, never taken from the config.

pub mod hold;
pub mod report;
pub mod system;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, anyhow};

use crate::core::rt::Runtime;
use crate::core::tools::bench::{EARLY_AFTER, EARLY_ATTEMPTS, watch};
use crate::core::tools::client::ClientOptions;

pub use hold::FleetLive;
pub use report::{FleetReport, held_line, render, verdict};
pub use system::{FleetSystem, Member};

/// Fewest and most instances `--fleet` stands up.
pub const MIN_INSTANCES: usize = 2;
/// See [`MIN_INSTANCES`].
pub const MAX_INSTANCES: usize = 16;

/// `--limit` unless given: two connections per instance.
pub fn default_limit(instances: usize) -> u32 {
    u32::try_from(instances.saturating_mul(2)).unwrap_or(u32::MAX)
}

/// `--connections` unless given with `--fleet`: twice the limit, so about
/// half the attempts find the fleet full.
pub fn default_connections(limit: u32) -> usize {
    usize::try_from(limit).unwrap_or(usize::MAX).saturating_mul(2)
}

/// A fleet run's parameters.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Number of instances ([`MIN_INSTANCES`] ..= [`MAX_INSTANCES`]).
    pub instances: usize,
    /// client1's fleet-wide `max_connections`.
    pub limit: u32,
    /// Concurrent connections the client tries (more than `limit`).
    pub connections: usize,
    pub duration: Duration,
    /// Message size echoed to confirm each connection.
    pub size: usize,
    /// TLS session resumption.
    pub resume: bool,
    /// Loader threads.
    pub threads: usize,
    /// Runtime threads of each instance.
    pub instance_threads: usize,
    /// Limit of the echo that confirms a connection.
    pub op_timeout: Duration,
}

/// One line saying what the run does.
pub fn headline(o: &FleetOptions, system: &FleetSystem) -> String {
    format!(
        "fleet: {} connection(s) of {} round-robin over {} instances sharing max_connections = {} through {}, \
         each held {} ms then reopened, {}",
        o.connections,
        system::CLIENT,
        o.instances,
        o.limit,
        system.redis_url(),
        hold::HOLD.as_millis(),
        humantime::format_duration(o.duration)
    )
}

/// Runs the load through `system`; `on_tick` is called about 10 times a
/// second with the live counters and the elapsed time.
pub fn run(
    system: &FleetSystem,
    opts: &FleetOptions,
    interrupt: impl Future<Output = ()>,
    on_tick: impl FnMut(&FleetLive, Duration),
) -> Result<FleetReport> {
    let client = system.client(opts.resume)?;
    run_on(&system.members, &client, &system.redis_url(), opts, interrupt, on_tick)
}

/// [`run`] through any `members` (tests run it through a fleet without
/// `[cluster]`, to see a broken limit measured as such), connecting with
/// `client`; `redis` is only reported.
pub fn run_on(
    members: &[Member],
    client: &ClientOptions,
    redis: &str,
    opts: &FleetOptions,
    interrupt: impl Future<Output = ()>,
    mut on_tick: impl FnMut(&FleetLive, Duration),
) -> Result<FleetReport> {
    let live = Arc::new(FleetLive::new(members.len()));
    let rt = Runtime::new(opts.threads)?;
    let started = Instant::now();
    let wall_started = SystemTime::now();
    let deadline = started
        .checked_add(opts.duration)
        .ok_or_else(|| anyhow!("--duration {:?} is too long; use e.g. 10s or 1m", opts.duration))?;
    // Closed (never sent on) to stop every task at once.
    let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
    let n = members.len().max(1);
    let mut tasks = Vec::with_capacity(opts.connections);
    for j in 0..opts.connections {
        let index = j % n;
        let Some(m) = members.get(index) else {
            break;
        };
        let target = hold::Target {
            client: client.clone(),
            addr: m.addr,
            index,
            size: opts.size,
            op_timeout: opts.op_timeout,
        };
        let task = hold::task(target, live.clone(), deadline, stop_rx.clone());
        tasks.push(rt.executor().spawn(task));
    }
    drop(stop_rx);
    let mut stopped = None;
    let errors = rt.block_on(async {
        let all = async {
            let mut merged = BTreeMap::new();
            for t in tasks {
                for (k, v) in t.await {
                    *merged.entry(k).or_insert(0u64) += v;
                }
            }
            merged
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
    let monotonic = started.elapsed();
    // Redis times the instances' liveness by its wall clock, the instances
    // and the loader by the monotonic one: a machine paused (a VM stopped)
    // moves the first and not the second.
    let wall = SystemTime::now().duration_since(wall_started).unwrap_or_default();
    let ended = report::Ended {
        elapsed_s: monotonic
            .min(opts.duration.saturating_add(opts.op_timeout))
            .as_secs_f64(),
        wall_minus_monotonic_s: wall.as_secs_f64() - monotonic.as_secs_f64(),
        stopped,
    };
    let report = FleetReport::new(members, redis, opts, &live, errors, ended);
    Ok(report)
}

/// Nothing admitted after [`EARLY_AFTER`] (with an attempt made) or
/// [`EARLY_ATTEMPTS`] attempts. (Refusals are the point of the run, so
/// unlike the other modes a low success share is no reason to stop.)
fn hopeless(live: &FleetLive, elapsed: Duration) -> bool {
    let (admitted, refused, errors) = live.totals();
    let attempts = admitted + refused + errors;
    admitted == 0 && (attempts >= EARLY_ATTEMPTS || (elapsed >= EARLY_AFTER && attempts > 0))
}
