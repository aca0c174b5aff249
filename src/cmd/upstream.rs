//! `tlb upstream`: echo servers for demos and tests, over TCP or (with
//! `--tls`) TLS, optionally requiring client certificates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use async_signal::{Signal, Signals};
use futures_lite::StreamExt;
use tracing::info;

use tlb::core::proxy::listener::bind_listener_or;
use tlb::core::rt::{Runtime, raise_fd_limit};
use tlb::core::tools::echo::{ClientCa, EchoOptions, echo_tls_config, serve_echo};

use super::UsageError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// First address to listen on; --count N uses N consecutive ports from here.
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,
    /// How many echo servers (consecutive ports), 1-65535.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub count: u16,
    /// Name; with --count N > 1 the servers are <name>1..<name>N.
    #[arg(long, default_value = "up")]
    pub name: String,
    /// Send a first line `<name> client=<addr> sni=<sni> identity=<id>` on each
    /// connection (from the PROXY header with --proxy-protocol, else `-`).
    #[arg(long)]
    pub greet: bool,
    /// Serve over TLS with --cert and --key (a server certificate, e.g. from
    /// `tlb pki issue NAME --server`).
    #[arg(long)]
    pub tls: bool,
    /// With --tls: the server certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// With --tls: the key of --cert (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// With --tls: CA that client certificates must chain to (a client
    /// certificate is then checked when offered).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// With --tls and --ca: refuse clients without a valid certificate (mTLS).
    #[arg(long)]
    pub require_client_cert: bool,
    /// Require a PROXY protocol header (v1 or v2, within 5 s) on each
    /// connection; one without a valid one is logged and closed.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// Worker threads, 0-1024 (0: one per core).
    #[arg(long, default_value_t = 0, value_parser = super::threads_arg())]
    pub threads: usize,
}

pub fn run(args: Args) -> Result<()> {
    if u32::from(args.listen.port()) + u32::from(args.count) > 1 + u32::from(u16::MAX) {
        return Err(UsageError(format!(
            "--listen port {} + --count {} runs past port 65535; lower --count or the port",
            args.listen.port(),
            args.count
        ))
        .into());
    }
    let tls = tls_config(&args)?;
    raise_fd_limit();
    let mut servers = Vec::new();
    for i in 0..args.count {
        let mut addr = args.listen;
        addr.set_port(args.listen.port().saturating_add(i));
        let name = if args.count == 1 {
            args.name.clone()
        } else {
            format!("{}{}", args.name, i + 1)
        };
        let fix = if args.count == 1 {
            "pick another --listen ADDR:PORT"
        } else {
            "pick another --listen ADDR:PORT (--count N uses N consecutive ports from it)"
        };
        let l = bind_listener_or(addr, fix).with_context(|| format!("starting echo server {name}"))?;
        servers.push((l, name, addr));
    }
    let rt = Runtime::new(args.threads).context("starting worker threads")?;
    let signals = Signals::new([Signal::Term, Signal::Int]).context("installing signal handlers")?;
    let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
    let ex = rt.executor().clone();
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for (l, name, addr) in servers {
            println!("{name} echoing on {addr}{}", if tls.is_some() { " (TLS)" } else { "" });
            let opts = EchoOptions {
                name,
                greet: args.greet,
                tls: tls.clone(),
                proxy_protocol: args.proxy_protocol,
            };
            let rx = stop_rx.clone();
            let ex2 = ex.clone();
            tasks.push(ex.spawn(async move {
                serve_echo(&ex2, l, opts, async move {
                    let _ = rx.recv().await;
                })
                .await
            }));
        }
        let mut signals = signals;
        let _ = signals.next().await;
        info!("stopping");
        drop(stop_tx);
        for t in tasks {
            t.await?;
        }
        Ok(())
    })
}

/// The TLS config the flags ask for (`None` without --tls); flags that
/// need another one are a usage error.
fn tls_config(args: &Args) -> Result<Option<Arc<rustls::ServerConfig>>> {
    let usage = |m: &str| -> anyhow::Error { UsageError(m.to_string()).into() };
    if !args.tls {
        if args.cert.is_some() || args.key.is_some() || args.ca.is_some() || args.require_client_cert {
            return Err(usage("--cert, --key, --ca and --require-client-cert need --tls"));
        }
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&args.cert, &args.key) else {
        return Err(usage(
            "--tls needs --cert FILE and --key FILE (a server certificate: tlb pki issue NAME --server)",
        ));
    };
    if args.require_client_cert && args.ca.is_none() {
        return Err(usage(
            "--require-client-cert needs --ca FILE, the CA that client certificates must chain to",
        ));
    }
    let client_ca = args.ca.as_deref().map(|ca| ClientCa {
        ca,
        required: args.require_client_cert,
    });
    echo_tls_config(cert, key, client_ca)
        .context("setting up TLS for the echo server")
        .map(Some)
}
