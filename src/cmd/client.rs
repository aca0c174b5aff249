//! `tlb client`: an mTLS client like `ncat --ssl`.

use std::io::Write;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result};
use futures_lite::{AsyncRead, AsyncWrite};

use tlb::core::proxy::relay::{RelayEnd, Side, Transferred, relay};
use tlb::core::tls::ClientTlsFiles;
use tlb::core::tools::client::{ClientOptions, connect, exchange, refused_or_io};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Balancer address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:8443", value_parser = super::host_port)]
    pub connect: String,
    /// Client certificate (without --cert or --cert-file none is sent) and CA.
    #[command(flatten)]
    pub certs: super::ClientCertArgs,
    /// Server name for SNI and certificate check.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Also offer TLS 1.2.
    #[arg(long)]
    pub tls12: bool,
    /// Seconds to wait for connect, handshake and (message mode) the reply, 1-86400.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
    /// Message to send (words joined by spaces, plus a newline). Without it,
    /// stdin is relayed to the connection and the connection to stdout.
    pub message: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let files = args.certs.resolve()?;
    let ca = files.ca;
    let (cert, key) = files.cert_key.map(|(c, k)| (Some(c), Some(k))).unwrap_or((None, None));
    let tls_files = ClientTlsFiles {
        ca: &ca,
        cert: cert.as_deref(),
        key: key.as_deref(),
        allow_tls12: args.tls12,
        resumption: true,
    };
    let opts = ClientOptions::new(
        &args.connect,
        &args.server_name,
        &tls_files,
        Duration::from_secs(args.timeout),
    )?;
    if args.message.is_empty() {
        return smol::block_on(interactive(&opts));
    }
    let mut message = args.message.join(" ");
    message.push('\n');
    let reply = smol::block_on(exchange(&opts, message.as_bytes(), Duration::from_secs(args.timeout)))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&reply).context("writing to stdout")?;
    out.flush().context("writing to stdout")?;
    Ok(())
}

/// stdin -> connection, connection -> stdout, until both ends close.
async fn interactive(opts: &ClientOptions) -> Result<()> {
    let (addr, mut tls) = connect(opts).await?;
    let mut local = StdPair {
        stdin: smol::Unblock::new(std::io::stdin()),
        stdout: smol::Unblock::new(std::io::stdout()),
    };
    let mut moved = Transferred::default();
    // No idle limit for an interactive session (a day is "none" here).
    match relay(&mut local, &mut tls, Duration::from_secs(86_400), None, &mut moved).await {
        RelayEnd::Done | RelayEnd::Idle | RelayEnd::Deadline => Ok(()),
        RelayEnd::Error(Side::B, e) => {
            if moved.b_to_a == 0 && e.kind() == std::io::ErrorKind::UnexpectedEof {
                return Err(tlb::core::tools::client::ClientError::ClosedBeforeReply { addr }.into());
            }
            Err(refused_or_io(addr, e).into())
        }
        RelayEnd::Error(Side::A, e) => Err(e).context("stdin/stdout"),
    }
}

/// stdin and stdout as one duplex stream.
struct StdPair {
    stdin: smol::Unblock<std::io::Stdin>,
    stdout: smol::Unblock<std::io::Stdout>,
}

impl AsyncRead for StdPair {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stdin).poll_read(cx, buf)
    }
}

impl AsyncWrite for StdPair {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stdout).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdout).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdout).poll_flush(cx)
    }
}
