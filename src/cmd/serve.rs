//! `tlb serve`: run the load balancer from a config file.

use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::{Context, Result};
use async_signal::{Signal, Signals};
use futures_lite::StreamExt;
use tracing::{error, info};

use tlb::core::config::Config;
use tlb::core::ops::{admin, control};
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
    /// Take the listening sockets over from the tlb running on `[control]
    /// socket`, start serving, then tell it to drain and exit: an upgrade
    /// (new binary or config) that refuses no connection.
    #[arg(long, conflicts_with = "check")]
    pub upgrade: bool,
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
    // Handlers first, before any socket listens: a SIGHUP sent as soon as
    // the port accepts (a reload right after start) must reload, not kill
    // the process (the default action); one that arrives before serving
    // starts is handled then.
    let signals = Signals::new([Signal::Hup, Signal::Term, Signal::Int]).context("installing signal handlers")?;
    // Sockets handed over (by the running instance, or systemd) serve their
    // addresses; the rest are bound here.
    let (mut inherited, upgrade) = if args.upgrade {
        let Some(c) = &config.control else {
            anyhow::bail!(
                "--upgrade needs [control] socket in {} (the running instance's control socket)",
                args.config.display()
            );
        };
        let mut up = control::take_over(&c.socket)?;
        let source = format!("the running tlb (pid {})", up.pid);
        (Inherited::handed(std::mem::take(&mut up.sockets), source), Some(up))
    } else {
        (Inherited::from_systemd()?, None)
    };
    let listeners = inherited.app_listeners(&config)?;
    let admin_listener = match inherited.admin_listener(&config) {
        Some(l) => Some(l),
        None => admin::bind(&config)?,
    };
    inherited.finish()?;
    // Our own control socket (replacing the old instance's path), and what
    // it would hand to the next upgrade.
    let control_socket = config.control.as_ref().map(|c| control::bind(&c.socket)).transpose()?;
    // Removes the socket file at exit, unless an upgrade replaced it.
    let _control_file = control_socket.as_ref().map(control::ControlSocket::file);
    // What a later --upgrade is handed: the app listeners being served at
    // that moment (reloads add and remove them), and the admin endpoint's.
    let admin_copy = admin_listener
        .as_ref()
        .map(TcpListener::try_clone)
        .transpose()
        .context("keeping the admin socket for a later --upgrade")?;
    let srv = server.clone();
    let handoff = move || {
        let mut sockets = srv.listening_sockets()?;
        if let Some(a) = &admin_copy {
            sockets.push(a.try_clone()?);
        }
        Ok(sockets)
    };
    if let Some(up) = upgrade {
        let pid = up.pid;
        up.drain()?;
        info!("upgrade: serving on the sockets of pid {pid}, which drains and exits");
    }
    let rt = Runtime::new(args.threads).context("starting worker threads")?;
    info!(
        "tlb serve: {summary}; {} worker thread(s), open-file limit {fds}",
        rt.threads()
    );
    let config_path = args.config.clone();
    let srv = server.clone();
    let (drain_tx, drain_rx) = smol::channel::bounded::<()>(1);
    let upgraded = async move {
        // Closed without a message (no [control] socket): never resolves.
        if drain_rx.recv().await.is_err() {
            std::future::pending::<()>().await;
        }
        info!("upgrade: a new instance took over the sockets: stopping");
    };
    let signalled = async move {
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
    let shutdown = futures_lite::future::or(signalled, upgraded);
    let ex = rt.executor();
    rt.block_on(async {
        // Dropped once `run` returns: /healthz answers 503 during the drain.
        let _admin = admin_listener.map(|l| admin::spawn(&server, ex, l)).transpose()?;
        let _control = control_socket.map(|c| ex.spawn(c.serve(handoff, drain_tx)));
        server.run(ex, listeners, shutdown).await
    })
}
