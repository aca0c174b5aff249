//! `tlb serve`: run the load balancer from a config file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use async_signal::{Signal, Signals};
use futures_lite::StreamExt;
use tracing::{error, info};

use tlb::core::config::Config;
use tlb::core::ops::admin;
use tlb::core::proxy::activation::Inherited;
use tlb::core::proxy::server::Server;
use tlb::core::rt::{Runtime, raise_fd_limit};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file.
    #[arg(long, default_value = "tlb.toml")]
    pub config: PathBuf,
    /// Validate the config, certificates and keys, then exit.
    #[arg(long)]
    pub check: bool,
    /// Worker threads, 0-1024 (0: one per core).
    #[arg(long, default_value_t = 0, value_parser = super::threads_arg())]
    pub threads: usize,
}

pub fn run(args: Args) -> Result<()> {
    let config = Config::load(&args.config)?;
    let summary = format!(
        "{} app(s) on {} listener(s), {} client(s), TLS {} minimum",
        config.apps.len(),
        config.listeners().len(),
        config.clients.len(),
        match config.tls.min_version {
            tlb::core::config::TlsVersion::V1_2 => "1.2",
            tlb::core::config::TlsVersion::V1_3 => "1.3",
        }
    );
    // Raised first: the default [limits] max_connections derives from it.
    let fds = raise_fd_limit();
    let server = Server::new(config.clone())
        .with_context(|| format!("loading TLS material named in {}", args.config.display()))?;
    if args.check {
        println!("{}: OK ({summary})", args.config.display());
        return Ok(());
    }
    // Sockets systemd passed serve their addresses; the rest are bound here.
    let mut inherited = Inherited::from_systemd()?;
    let listeners = inherited.app_listeners(&config)?;
    let admin_listener = match inherited.admin_listener(&config) {
        Some(l) => Some(l),
        None => admin::bind(&config)?,
    };
    inherited.finish()?;
    let rt = Runtime::new(args.threads).context("starting worker threads")?;
    info!(
        "tlb serve: {summary}; {} worker thread(s), open-file limit {fds}",
        rt.threads()
    );
    // Register signal handlers before serving so none is missed.
    let signals = Signals::new([Signal::Hup, Signal::Term, Signal::Int]).context("installing signal handlers")?;
    let config_path = args.config.clone();
    let srv = server.clone();
    let shutdown = async move {
        let mut signals = signals;
        while let Some(sig) = signals.next().await {
            match sig {
                Ok(Signal::Hup) => match Config::load(&config_path) {
                    Ok(new) => match srv.reload(new) {
                        Ok(()) => info!("reloaded {}", config_path.display()),
                        Err(e) => error!("reload rejected, keeping the old config: {}", super::error_line(&e)),
                    },
                    Err(e) => error!("reload rejected, keeping the old config: {e}"),
                },
                Ok(sig) => {
                    info!("{sig:?}: stopping");
                    return;
                }
                Err(e) => {
                    error!("signal handling failed: {e}; stopping");
                    return;
                }
            }
        }
    };
    let ex = rt.executor();
    rt.block_on(async {
        // Dropped once `run` returns: /healthz answers 503 during the drain.
        let _admin = admin_listener.map(|l| admin::spawn(&server, ex, l)).transpose()?;
        server.run(ex, listeners, shutdown).await
    })
}
