//! `tlb bench`: load generator; without --target it stands up a whole
//! system in-process on loopback first.

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
use tlb::core::tools::bench::{BenchOptions, Live, render, run as run_bench};
use tlb::core::tools::client::ClientOptions;
use tlb::core::tools::lab::{Lab, LabOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// mTLS echo endpoint to load (tlb, HAProxy, nginx...). Without it, a
    /// complete system is started in-process on loopback.
    #[arg(long)]
    pub target: Option<String>,
    /// Client certificate and CA for --target.
    #[command(flatten)]
    pub certs: super::ClientCertArgs,
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    #[arg(long, value_enum, default_value_t = ModeArg::Rr)]
    pub mode: ModeArg,
    /// Concurrent connections, 1-1000000.
    #[arg(long, default_value_t = 64, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub connections: usize,
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
    /// Write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
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
    let cores = default_threads();
    let (_lab, client, threads) = match &args.target {
        Some(target) if args.plain => (None, plain_client(target)?, args.threads),
        Some(target) => (None, target_client(&args, target)?, args.threads),
        None => {
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
                (cores - lab_threads).max(1)
            } else {
                args.threads
            };
            eprintln!(
                "self-hosted: temporary PKI, 3 echo upstreams and the balancer, in-process on {} ({} balancer thread(s), {} loader thread(s))",
                lab.addr(),
                lab_threads,
                loader_threads
            );
            let client = lab.client_with(Some("client1"), "localhost", args.resume)?;
            (Some(lab), client, loader_threads)
        }
    };
    let opts = BenchOptions {
        client,
        mode: args.mode.into(),
        connections: args.connections,
        duration: args.duration,
        size: args.size,
        rate: args.rate,
        threads,
        op_timeout: Duration::from_secs(10),
        plain: args.plain,
    };
    eprintln!(
        "{:?} load: {} connection(s) for {:?} against {}",
        args.mode, args.connections, args.duration, opts.client.connect
    );
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let bar = ProgressBar::new(millis(args.duration));
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {elapsed:>3}/{len_s} {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let live = Arc::new(Live::default());
    let mut last = (0u64, 0u64, Duration::ZERO);
    let report = run_bench(&opts, live, |l, elapsed| {
        use std::sync::atomic::Ordering::Relaxed;
        let (req, conns) = (l.requests.load(Relaxed), l.connections.load(Relaxed));
        let dt = elapsed.saturating_sub(last.2).as_secs_f64().max(1e-3);
        let msg = format!(
            "{:>9.0} req/s {:>7.0} conn/s {:>8.1} MB/s  errors {}",
            req.saturating_sub(last.0) as f64 / dt,
            conns.saturating_sub(last.1) as f64 / dt,
            l.bytes.load(Relaxed) as f64 / elapsed.as_secs_f64().max(1e-3) / 1e6,
            l.errors.load(Relaxed)
        );
        last = (req, conns, elapsed);
        bar.set_position(millis(elapsed));
        bar.set_message(msg);
    })?;
    bar.finish_and_clear();
    println!("{}", render(&report));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).context("encoding the report")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
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
