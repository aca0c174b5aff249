//! Echo upstream servers (`tlb upstream`): everything received is sent
//! back; a half-close from the peer is answered by a half-close after the
//! echo. With `greet`, one line comes first:
//! `<name> client=<addr> sni=<sni> identity=<identity>`.
//! With `proxy_protocol`, each connection must start with a PROXY v1 or v2
//! header (read within [`PROXY_HEADER_TIMEOUT`], see
//! [`proxy_read`](crate::core::tools::proxy_read), which never reads past
//! the header); the greeting's client, SNI and identity are the header's
//! (`-` where it has none), and a connection without a valid header is
//! closed with one log line. With `tls`, the echo runs over TLS (after the
//! PROXY header, if any; optionally mutual: see [`echo_tls_config`]), so
//! tlb's `[app.upstream_tls]` can be tried on one machine, and the greeting
//! ends with what this server saw of its TLS peer (tlb):
//! ` tls_sni=<SNI or -> tls_client=<client certificate CN or ->`.
//!
//! Each connection is one task; memory per connection is one 16 KiB buffer
//! (plus the TLS session's, and while a PROXY header is read, at most that
//! header); a connection idle for 10 minutes, or whose TLS handshake is not
//! done within 10 s, is closed.

use std::borrow::Cow;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use smol::{Async, Executor};
use tracing::{debug, info, warn};

use crate::core::config::TlsVersion;
use crate::core::proxy::listener::Listener;
use crate::core::rt::log::{Throttle, escaped};
use crate::core::rt::net::TcpConn;
use crate::core::rt::timeout;
use crate::core::tls::Material;
use crate::core::tls::identity::common_name;
use crate::core::tls::load::{certified_key_in, load_roots_as};
use crate::core::tls::suites::{provider, versions};
use crate::core::tls::{describe_tls_error, load_certs, load_key};
use crate::core::tools::proxy_read::{Received, read_header};

/// How one echo server behaves.
#[derive(Debug, Clone)]
pub struct EchoOptions {
    /// Name used in the greeting and logs (`up1`...).
    pub name: String,
    /// Send `<name> client=<addr> sni=<sni> identity=<identity>\n` first.
    pub greet: bool,
    /// Serve over TLS with this config ([`echo_tls_config`]); `None`: plain TCP.
    pub tls: Option<Arc<ServerConfig>>,
    /// Require a PROXY protocol header (v1 or v2) on every connection.
    pub proxy_protocol: bool,
}

/// A connection must deliver its whole PROXY header within this.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the client certificates of a TLS echo server are checked.
#[derive(Debug, Clone, Copy)]
pub struct ClientCa<'a> {
    pub ca: &'a Path,
    /// Refuse a client without a certificate (else one is optional, but
    /// checked when offered).
    pub required: bool,
}

/// A TLS server config for an echo server: `cert`/`key` (a server
/// certificate), TLS 1.3 and 1.2, client certificates checked against
/// `client_ca` when given.
pub fn echo_tls_config(cert: &Path, key: &Path, client_ca: Option<ClientCa<'_>>) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    // Checked as a pair first, for a message naming both files.
    certified_key_in(&Material::disk(), cert, key, &provider, "tlb upstream --tls")?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(TlsVersion::V1_2))
        .map_err(|e| anyhow!("configuring TLS versions: {e}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let roots = load_roots_as(c.ca, "client CA (--ca)")?;
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if c.required { v } else { v.allow_unauthenticated() };
            builder.with_client_cert_verifier(v.build().map_err(|e| anyhow!("client CA {}: {e}", c.ca.display()))?)
        }
    };
    let cfg = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| anyhow!("certificate {} and key {}: {e}", cert.display(), key.display()))?;
    Ok(Arc::new(cfg))
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

/// How long a TLS echo connection may take to complete its handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

async fn echo(stream: Async<TcpStream>, peer: SocketAddr, opts: &EchoOptions) -> std::io::Result<()> {
    let mut conn = TcpConn::new(stream);
    let header = if opts.proxy_protocol {
        match read_header(&mut conn, PROXY_HEADER_TIMEOUT).await {
            Ok(h) => Some(h),
            Err(why) => {
                warn!(name = %opts.name, %peer, "connection refused: {why}");
                return Ok(());
            }
        }
    } else {
        None
    };
    let line = greeting(&opts.name, peer, header.as_ref());
    let Some(tls) = &opts.tls else {
        return echo_on(&mut conn, opts.greet.then_some(line)).await;
    };
    let accept = futures_rustls::TlsAcceptor::from(tls.clone())
        .accept(conn)
        .into_fallible();
    let mut s = match timeout(TLS_HANDSHAKE, accept).await {
        Ok(Ok(s)) => s,
        Ok(Err((e, mut conn))) => {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                // Closed without a handshake (a port probe): not worth a line.
                debug!(name = %opts.name, %peer, "closed before the TLS handshake");
            } else {
                info!(name = %opts.name, %peer, "TLS handshake failed: {}", describe_tls_error(&e));
            }
            linger(&mut conn).await;
            return Ok(());
        }
        Err(_) => {
            info!(name = %opts.name, %peer, "TLS handshake not done within {TLS_HANDSHAKE:?}");
            return Ok(());
        }
    };
    let session = s.get_ref().1;
    let sni = session.server_name().unwrap_or("-").to_string();
    let identity = session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| common_name(c))
        .unwrap_or_else(|| "-".into());
    let line = format!("{} tls_sni={sni} tls_client={identity}\n", line.trim_end_matches('\n'));
    echo_on(&mut s, opts.greet.then_some(line)).await
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

/// After a refused handshake (the alert is sent): closes the write side and
/// discards what the peer still sends for up to a second, so the peer reads
/// the alert rather than a reset.
async fn linger(conn: &mut TcpConn) {
    let _ = conn.close().await;
    let _ = timeout(Duration::from_secs(1), async {
        let mut scratch = [0u8; 2048];
        while matches!(conn.read(&mut scratch).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Greets (when given a line), then echoes until EOF, then closes the
/// write side (a FIN, or close_notify and FIN over TLS).
async fn echo_on<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, greeting: Option<String>) -> std::io::Result<()> {
    if let Some(line) = greeting {
        bounded(s.write_all(line.as_bytes())).await?;
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = bounded(s.read(&mut buf)).await?;
        if n == 0 {
            break;
        }
        bounded(s.write_all(&buf[..n])).await?;
    }
    bounded(s.flush()).await?;
    bounded(s.close()).await
}
