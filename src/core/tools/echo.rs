//! Echo upstream servers (`tlb upstream`): everything received is sent
//! back; a half-close from the peer is answered by a half-close after the
//! echo. With `greet`, one line comes first:
//! `<name> client=<addr> sni=- identity=-`.
//!
//! Each connection is one task; memory per connection is one 16 KiB buffer;
//! a connection idle for 10 minutes is closed.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use smol::{Async, Executor};
use tracing::debug;

use crate::core::proxy::listener::Listener;
use crate::core::rt::log::Throttle;
use crate::core::rt::timeout;

/// How one echo server behaves.
#[derive(Debug, Clone)]
pub struct EchoOptions {
    /// Name used in the greeting and logs (`up1`...).
    pub name: String,
    /// Send `<name> client=<addr> sni=- identity=-\n` first.
    pub greet: bool,
}

/// Serves echo on `listener` until `shutdown` resolves.
pub async fn serve_echo<S>(
    ex: &Arc<Executor<'static>>,
    listener: TcpListener,
    opts: EchoOptions,
    shutdown: S,
) -> Result<()>
where
    S: std::future::Future<Output = ()>,
{
    let listener = Listener::new(listener)?;
    let opts = Arc::new(opts);
    let accept_errors = Throttle::new(Duration::from_secs(1));
    let accept = async {
        loop {
            let (stream, peer) = listener.accept(&accept_errors).await;
            let opts = opts.clone();
            ex.spawn(async move {
                if let Err(e) = echo(stream, peer, &opts).await {
                    debug!(name = %opts.name, %peer, "echo connection ended: {e}");
                }
            })
            .detach();
        }
    };
    accept.or(shutdown).await;
    Ok(())
}

/// An echo connection with no bytes for this long is closed.
const IDLE: Duration = Duration::from_secs(600);

/// `io` within [`IDLE`]: every wait is bounded, a peer that neither sends
/// nor reads is dropped.
async fn bounded<T>(io: impl std::future::Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    timeout(IDLE, io)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "stalled for 10 minutes"))?
}

async fn echo(stream: Async<TcpStream>, peer: SocketAddr, opts: &EchoOptions) -> std::io::Result<()> {
    let _ = stream.get_ref().set_nodelay(true);
    let mut w = &stream;
    if opts.greet {
        let line = format!("{} client={peer} sni=- identity=-\n", opts.name);
        bounded(w.write_all(line.as_bytes())).await?;
    }
    let mut r = &stream;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = bounded(r.read(&mut buf)).await?;
        if n == 0 {
            break;
        }
        bounded(w.write_all(&buf[..n])).await?;
    }
    bounded(w.flush()).await?;
    stream.get_ref().shutdown(std::net::Shutdown::Write)?;
    Ok(())
}
