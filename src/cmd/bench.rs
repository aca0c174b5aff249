//! `tlb bench`: load generator; without --target it stands up a whole
//! system in-process on loopback first (with --fleet N: redis-server and N
//! instances sharing one client's limit, see `fleet`).
//!
//! Promises: the exit status says whether the run worked (0), failed (1:
//! stopped early with a diagnosis, or over `--max-error-rate`), was a
//! usage mistake (2) or was interrupted after printing the partial report
//! (130 for SIGINT, 143 for SIGTERM); the self-hosted system's temporary
//! directory (CA key included), and --fleet's redis-server and its
//! directory, are removed on every way out: success, error, panic, Ctrl-C,
//! and a second Ctrl-C that quits at once.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::builder::RangedU64ValueParser;
use indicatif::{ProgressBar, ProgressStyle};
use rustls::pki_types::ServerName;

use crate::cmd::ModeArg;
use tlb::core::config::writer::{GlobalLimitsSection, LimitsSection, TimeoutsSection};
use tlb::core::rt::default_threads;
use tlb::core::tls::ClientTlsFiles;
use tlb::core::tools::bench::fleet::{MAX_INSTANCES, MIN_INSTANCES};
use tlb::core::tools::bench::{
    BenchOptions, BenchReport, DEFAULT_CONNECTIONS, DEFAULT_MAX_ERROR_RATE, Live, Mode, Verdict, headline, render,
    run as run_bench, verdict,
};
use tlb::core::tools::client::ClientOptions;
use tlb::core::tools::lab::{Lab, LabOptions};

mod fleet;
mod interrupts;

use interrupts::Interrupts;

const EXIT_STATUSES: &str = "\
Exit status: 0 the run worked (errors within --max-error-rate); 1 it failed: stopped early \
because almost nothing succeeded (under 1 % of the first 200 attempts or 2 s), more errors than \
--max-error-rate, or an error (bad files, unresolvable --target); with --fleet also a peak over \
--limit, an instance not sharing limits through Redis, or redis-server missing; the last line says \
why and what to try; 2 a usage mistake; 130 interrupted by Ctrl-C (143: SIGTERM) after printing the partial report. \
A second Ctrl-C quits at once. The self-hosted system's temporary files are removed in every case.";

#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_STATUSES)]
pub struct Args {
    /// mTLS echo endpoint to load (tlb, HAProxy, nginx...). Without it, a
    /// complete system is started in-process on loopback.
    #[arg(long, value_parser = super::host_port)]
    pub target: Option<String>,
    /// Client certificate and CA for --target.
    #[command(flatten)]
    pub certs: super::ClientCertArgs,
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    #[arg(long, value_enum, default_value_t = ModeArg::Rr)]
    pub mode: ModeArg,
    /// Concurrent connections, 1-1000000 [default: 64; with --fleet: twice --limit].
    #[arg(long, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub connections: Option<usize>,
    /// How long to run, e.g. 10s, 1m (at most 365days).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Message size in bytes, 1-16777216 (rr, handshake); chunk size floor 16 KiB in stream.
    #[arg(long, default_value_t = 64, value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_SIZE))]
    pub size: usize,
    /// Open loop (rr): total requests per second across connections, 0.001-1000000000;
    /// latency counts from the scheduled send time. In idle mode: new
    /// connections per second while ramping up.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Resume TLS sessions (default: full handshakes only).
    #[arg(long)]
    pub resume: bool,
    /// Plain TCP, no TLS: measure an echo upstream directly (a baseline).
    #[arg(long, requires = "target")]
    pub plain: bool,
    /// Loader threads, 0-1024 (0: all cores; half of them when self-hosted).
    #[arg(long, default_value_t = 0, value_parser = super::threads_arg())]
    pub threads: usize,
    /// Write the figures as JSON to this file (also when the run fails).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Stand up redis-server and N tlb instances (2-16) with [cluster] on
    /// loopback, and show one client's max_connections holding across them
    /// (its connections held and reopened, round-robin); not with --target.
    #[arg(long, value_name = "N", conflicts_with_all = ["target", "mode", "rate"],
          value_parser = RangedU64ValueParser::<usize>::new().range(MIN_INSTANCES as u64..=MAX_INSTANCES as u64))]
    pub fleet: Option<usize>,
    /// With --fleet: the client's max_connections across the fleet,
    /// 1-100000 [default: 2 x N]; --connections must exceed it.
    #[arg(long, requires = "fleet", value_parser = RangedU64ValueParser::<u32>::new().range(1..=100_000))]
    pub limit: Option<u32>,
    /// Exit 1 when more than this percentage of attempts (exchanges; in
    /// stream mode, connections; with --fleet, attempts failing other than
    /// by refusal) failed, 0-100.
    #[arg(long, default_value_t = DEFAULT_MAX_ERROR_RATE, value_parser = parse_percent)]
    pub max_error_rate: f64,
}

/// Longest `--duration` (a year: the clock arithmetic cannot overflow).
const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// Largest `--size`: 16 MiB (each connection holds two buffers of it).
const MAX_SIZE: u64 = 16 << 20;

/// `--duration`: a human duration, more than 0 and at most [`MAX_DURATION`].
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e}; use e.g. 10s or 1m"))?;
    if d.is_zero() || d > MAX_DURATION {
        return Err("must be more than 0s and at most 365days, e.g. 10s or 1m".into());
    }
    Ok(d)
}

/// `--max-error-rate`: a percentage, 0 to 100.
fn parse_percent(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .trim()
        .trim_end_matches('%')
        .trim()
        .parse()
        .map_err(|_| "not a number; use e.g. 1 or 0.5".to_string())?;
    if !(0.0..=100.0).contains(&p) {
        return Err("must be a percentage from 0 to 100, e.g. 1 or 0.5".into());
    }
    Ok(p)
}

/// `--rate`: 0.001 to 1e9 per second.
fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s.trim().parse().map_err(|_| "not a number".to_string())?;
    if !(0.001..=1e9).contains(&r) {
        return Err("must be from 0.001 to 1000000000 per second".into());
    }
    Ok(r)
}

pub fn run(args: Args) -> Result<()> {
    tlb::core::rt::raise_fd_limit();
    // Before anything is created, so no Ctrl-C finds files to leave behind.
    let interrupts = Interrupts::install()?;
    // Everything the run created (the self-hosted system above all) is
    // dropped when `bench` returns, before any exit below.
    let outcome = bench(&args, &interrupts)?;
    match outcome {
        Verdict::Ok => Ok(()),
        Verdict::Failed(line) => Err(anyhow!(line)),
        Verdict::Interrupted => {
            let _ = std::io::stdout().flush();
            eprintln!("tlb bench: interrupted");
            std::process::exit(interrupts.exit_code());
        }
    }
}

/// Runs the bench (self-hosted or against --target), prints the report,
/// writes --json, and returns the verdict; the lab, if any, is gone when
/// this returns.
fn bench(args: &Args, interrupts: &Interrupts) -> Result<Verdict> {
    if let Some(n) = args.fleet {
        return fleet::bench(args, n, interrupts);
    }
    let (lab, client, threads) = match &args.target {
        Some(target) if args.plain => (None, plain_client(target)?, args.threads),
        Some(target) => (None, target_client(args, target)?, args.threads),
        None => {
            let (lab, client, threads) = interrupts.lab_starting(|| self_hosted(args))?;
            (Some(lab), client, threads)
        }
    };
    let opts = BenchOptions {
        client,
        mode: args.mode.into(),
        connections: args.connections.unwrap_or(DEFAULT_CONNECTIONS),
        duration: args.duration,
        size: args.size,
        rate: args.rate,
        threads,
        op_timeout: Duration::from_secs(10),
        plain: args.plain,
    };
    if interrupts.fired() {
        eprintln!("tlb bench: interrupted before the load started: nothing measured");
        return Ok(Verdict::Interrupted);
    }
    eprintln!("{}", headline(&opts));
    let report = load(&opts, interrupts)?;
    println!("{}", render(&report));
    write_json(args.json.as_deref(), &report)?;
    drop(lab);
    interrupts.lab_gone();
    Ok(verdict(&report, args.max_error_rate))
}

/// Writes `report` to `--json`, if given.
fn write_json(path: Option<&std::path::Path>, report: &impl serde::Serialize) -> Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(report).context("encoding the report")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Starts the self-hosted system: (the lab, client options for it, loader threads).
fn self_hosted(args: &Args) -> Result<(Lab, ClientOptions, usize)> {
    let cores = default_threads();
    let lab_threads = (cores / 2).max(1);
    let lab = Lab::start_with(
        LabOptions {
            threads: lab_threads,
            ..LabOptions::default()
        },
        |p| {
            p.sample()
                .defaults(LimitsSection {
                    max_connections: Some(1_000_000),
                    connection_rate: Some(1e6),
                    burst: Some(1_000_000),
                })
                .limits(GlobalLimitsSection {
                    max_connections: None,
                    max_handshakes: Some(100_000),
                    max_handshakes_per_ip: Some(100_000),
                })
                .timeouts(TimeoutsSection {
                    drain: Some(Duration::from_secs(2)),
                    ..TimeoutsSection::default()
                })
                .render()
        },
    )
    .context("starting the self-hosted system")?;
    let loader_threads = if args.threads == 0 {
        cores.saturating_sub(lab_threads).max(1)
    } else {
        args.threads
    };
    eprintln!(
        "self-hosted: temporary PKI, 3 echo upstreams and the balancer on {} ({} balancer thread(s), {} loader thread(s))",
        lab.addr(),
        lab_threads,
        loader_threads
    );
    let client = lab.client_with(Some("client1"), "localhost", args.resume)?;
    Ok((lab, client, loader_threads))
}

/// The load itself, with a progress bar on a terminal.
fn load(opts: &BenchOptions, interrupts: &Interrupts) -> Result<BenchReport> {
    let bar = progress_bar(opts.duration);
    let live = Arc::new(Live::default());
    let mut last = (0u64, 0u64, 0u64, Duration::ZERO);
    let report = run_bench(opts, live, interrupts.wait(), |l, elapsed| {
        use std::sync::atomic::Ordering::Relaxed;
        let now = (
            l.requests.load(Relaxed),
            l.connections.load(Relaxed),
            l.bytes.load(Relaxed),
        );
        let dt = elapsed.saturating_sub(last.3).as_secs_f64().max(1e-3);
        let per_s = |n: u64, before: u64| n.saturating_sub(before) as f64 / dt;
        let figure = match opts.mode {
            Mode::Rr => format!("{:>9.0} req/s", per_s(now.0, last.0)),
            Mode::Handshake => format!("{:>7.0} conn/s", per_s(now.1, last.1)),
            Mode::Stream => format!("{:>8.1} MB/s", per_s(now.2, last.2) / 1e6),
            Mode::Idle => format!("{:>7} held", now.1),
        };
        last = (now.0, now.1, now.2, elapsed);
        bar.set_position(millis(elapsed));
        bar.set_message(format!(
            "{}/{} {figure}  errors {}",
            humantime::format_duration(Duration::from_secs(elapsed.as_secs())),
            humantime::format_duration(opts.duration),
            l.errors.load(Relaxed)
        ));
    });
    bar.finish_and_clear();
    report
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A progress bar for a run of `duration` that fits 80 columns, or a
/// hidden one when stderr is not a terminal (no colour either way).
fn progress_bar(duration: Duration) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(millis(duration));
    bar.set_style(
        ProgressStyle::with_template("[{bar:24}] {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn target_client(args: &Args, target: &str) -> Result<ClientOptions> {
    let files = args.certs.resolve()?;
    let ca = files.ca;
    let Some((cert, key)) = files.cert_key else {
        bail!("--target needs a client certificate: --cert NAME (with --pki DIR) or --cert-file F --key-file F");
    };
    let tls_files = ClientTlsFiles {
        ca: &ca,
        cert: Some(&cert),
        key: Some(&key),
        allow_tls12: false,
        resumption: args.resume,
    };
    ClientOptions::new(target, &args.server_name, &tls_files, Duration::from_secs(10))
}

/// Options for `--plain`: only the address is used.
fn plain_client(target: &str) -> Result<ClientOptions> {
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(tlb::core::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("configuring TLS")?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    );
    Ok(ClientOptions {
        connect: target.to_string(),
        server_name: ServerName::try_from("localhost").map_err(|_| anyhow!("bad server name"))?,
        tls,
        connect_timeout: Duration::from_secs(10),
    })
}
