//! `tlb bench --fleet N`: the wiring of the fleet run (flags, the signal
//! watcher, progress bar, printing); what it stands up and measures is
//! `tlb::core::tools::bench::fleet`.
//!
//! Promises: a `--connections` that does not exceed the limit is a usage
//! error (the limit would not be exercised); redis-server and the
//! instances are registered with the signal watcher as soon as they exist,
//! and are stopped and removed before this returns, whatever the verdict.

use std::time::Duration;

use anyhow::Result;

use tlb::core::rt::default_threads;
use tlb::core::tools::bench::Verdict;
use tlb::core::tools::bench::fleet::{
    FleetOptions, FleetReport, FleetSystem, default_connections, default_limit, headline, held_line, render,
    run as run_fleet, verdict,
};

use super::interrupts::{Interrupts, Leftovers};
use super::{Args, millis, progress_bar, write_json};
use crate::cmd::UsageError;

/// Runs the fleet bench of `n` instances, prints the report (and the
/// "limit held" line when it held), writes --json, and returns the
/// verdict; redis-server and the instances are gone when this returns.
pub fn bench(args: &Args, n: usize, interrupts: &Interrupts) -> Result<Verdict> {
    let opts = options(args, n)?;
    let system = interrupts.hosting(
        || FleetSystem::start(opts.instances, opts.limit, opts.instance_threads),
        |s| Leftovers {
            dirs: s.dirs(),
            redis: Some(s.redis_killer()),
        },
    )?;
    let addrs: Vec<String> = system.members.iter().map(|m| m.addr.to_string()).collect();
    eprintln!(
        "self-hosted fleet: redis-server at {}, temporary PKI, an echo upstream on {}, {} instances on {} \
         ({} thread(s) each, {} loader thread(s))",
        system.redis_url(),
        system
            .upstreams()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        n,
        addrs.join(", "),
        opts.instance_threads,
        opts.threads
    );
    if interrupts.fired() {
        eprintln!("tlb bench: interrupted before the load started: nothing measured");
        return Ok(Verdict::Interrupted);
    }
    eprintln!("{}", headline(&opts, &system));
    let report = load(&system, &opts, interrupts)?;
    println!("{}", render(&report));
    let outcome = verdict(&report, args.max_error_rate);
    if outcome == Verdict::Ok {
        println!("{}", held_line(&report));
    }
    write_json(args.json.as_deref(), &report)?;
    drop(system);
    interrupts.lab_gone();
    Ok(outcome)
}

/// The run's options from the flags: limit 2 x N and twice as many
/// connections unless given; loader threads half the cores.
fn options(args: &Args, n: usize) -> Result<FleetOptions> {
    let limit = args.limit.unwrap_or_else(|| default_limit(n));
    let connections = args.connections.unwrap_or_else(|| default_connections(limit));
    if u64::try_from(connections).unwrap_or(u64::MAX) <= u64::from(limit) {
        return Err(UsageError(format!(
            "--connections {connections} must be more than --limit {limit} with --fleet: the limit shows only \
             when the client tries to exceed it (see `tlb bench --help`)"
        ))
        .into());
    }
    let threads = match args.threads {
        0 => (default_threads() / 2).max(1),
        t => t,
    };
    Ok(FleetOptions {
        instances: n,
        limit,
        connections,
        duration: args.duration,
        size: args.size,
        resume: args.resume,
        threads,
        instance_threads: 1,
        op_timeout: Duration::from_secs(10),
    })
}

/// The load, with a progress bar on a terminal.
fn load(system: &FleetSystem, opts: &FleetOptions, interrupts: &Interrupts) -> Result<FleetReport> {
    let bar = progress_bar(opts.duration);
    let limit = opts.limit;
    let report = run_fleet(system, opts, interrupts.wait(), |l, elapsed| {
        let (admitted, refused, errors) = l.totals();
        bar.set_position(millis(elapsed));
        bar.set_message(format!(
            "{}/{} held {}/{limit} peak {} ok {admitted} refused {refused} err {errors}",
            humantime::format_duration(Duration::from_secs(elapsed.as_secs())),
            humantime::format_duration(opts.duration),
            l.held.now(),
            l.held.peak(),
        ));
    });
    bar.finish_and_clear();
    report
}
