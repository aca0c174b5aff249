//! Echo upstream servers (`tlb upstream`): everything received is sent
//! back; a half-close from the peer is answered by a half-close after the
//! echo. With `greet`, one line comes first:
//! `<name> client=<addr> sni=<sni> identity=<identity>`.
//! With `proxy_protocol`, each connection must start with a PROXY v1 or v2
//! header (read within [`PROXY_HEADER_TIMEOUT`], see
//! [`proxy_read`](crate::core::tools::proxy_read)); the greeting's client,
//! SNI and identity are the header's (`-` where it has none), and a
//! connection without a valid header is closed with one log line.
//!
//! Each connection is one task; memory per connection is one 16 KiB buffer
//! (and, while a PROXY header is read, at most that header); a connection
//! idle for 10 minutes is closed.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use smol::{Async, Executor};
use std::borrow::Cow;

use tracing::{debug, warn};

use crate::core::proxy::listener::Listener;
use crate::core::rt::log::{Throttle, escaped};
use crate::core::rt::timeout;
use crate::core::tools::proxy_read::{Received, read_header};

/// How one echo server behaves.
#[derive(Debug, Clone)]
pub struct EchoOptions {
    /// Name used in the greeting and logs (`up1`...).
    pub name: String,
    /// Send `<name> client=<addr> sni=<sni> identity=<identity>\n` first.
    pub greet: bool,
    /// Require a PROXY protocol header (v1 or v2) on every connection.
    pub proxy_protocol: bool,
}

/// A connection must deliver its whole PROXY header within this.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

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
    let mut r = &stream;
    let (header, early) = if opts.proxy_protocol {
        match read_header(&mut r, PROXY_HEADER_TIMEOUT).await {
            Ok((h, early)) => (Some(h), early),
            Err(why) => {
                warn!(name = %opts.name, %peer, "connection refused: {why}");
                return Ok(());
            }
        }
    } else {
        (None, Vec::new())
    };
    if opts.greet {
        bounded(w.write_all(greeting(&opts.name, peer, header.as_ref()).as_bytes())).await?;
    }
    if !early.is_empty() {
        bounded(w.write_all(&early)).await?;
    }
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

/// The greeting line: the client, SNI and identity a PROXY header names
/// (the TCP peer as client when it names none, `-` for the others).
fn greeting(name: &str, peer: SocketAddr, header: Option<&Received>) -> String {
    let client = header.and_then(|h| h.source).unwrap_or(peer);
    let sni = text(header.and_then(|h| h.sni.as_deref()));
    let identity = text(header.and_then(|h| h.identity.as_deref()));
    format!("{name} client={client} sni={sni} identity={identity}\n")
}

/// Header text for the greeting: escaped (and `-` when absent), so the
/// line stays one line whatever the header says.
fn text(v: Option<&str>) -> Cow<'_, str> {
    v.map_or(Cow::Borrowed("-"), escaped)
}
