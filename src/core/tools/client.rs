//! The mTLS client behind `tlb client` (and the building block of `bench`):
//! connect, handshake, and tell apart the ways a balancer can say no.
//!
//! With TLS 1.3 a refused client certificate surfaces only on the first
//! read (the server's alert arrives after the client's handshake is done),
//! so [`exchange`] writes, half-closes and reads before it judges.
//!
//! Promises: every [`ClientError`] is one message that states its cause
//! once and says which side refused a handshake ([`RefusedBy`]): an alert
//! from the server, or this client refusing the server's certificate.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use crate::core::rt::net::{TcpConn, is_disconnect};
use crate::core::rt::timeout;
use crate::core::tls::{ClientTlsFiles, client_config, describe_tls_error};

/// The TLS client stream type.
pub type ClientStream = futures_rustls::client::TlsStream<TcpConn>;

/// What went wrong, in the terms a user needs. Each message states its
/// cause once and is the whole story: no error here has a `source()`, so
/// printing a chain never repeats the cause.
#[derive(Debug)]
pub enum ClientError {
    /// HOST:PORT that does not resolve: (what was given, why).
    Resolve(String, String),
    Connect {
        addr: SocketAddr,
        source: io::Error,
    },
    /// The handshake failed on a TLS error: an alert from the server, or
    /// this client refusing the server's certificate (`by`).
    TlsRefused {
        addr: SocketAddr,
        detail: String,
        hint: &'static str,
        by: RefusedBy,
    },
    ClosedBeforeReply {
        addr: SocketAddr,
    },
    Timeout {
        what: &'static str,
        after: Duration,
    },
    Io {
        addr: SocketAddr,
        detail: String,
    },
}

/// Which side stopped a TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedBy {
    /// The server sent an alert (about this client, usually its certificate).
    Server,
    /// This client refused the server (its certificate, most often).
    Client,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Resolve(target, why) => write!(f, "cannot resolve {target}: {why}"),
            ClientError::Connect { addr, source } => {
                write!(f, "connecting to {addr} failed: {source}; {}", connect_hint(source))
            }
            ClientError::TlsRefused { addr, detail, hint, by } => {
                match by {
                    RefusedBy::Server => write!(f, "the TLS handshake was refused by {addr}: {detail}")?,
                    RefusedBy::Client => write!(f, "this client refused the server at {addr}: {detail}")?,
                }
                match (hint.is_empty(), by) {
                    (true, _) => Ok(()),
                    (false, RefusedBy::Server) => write!(f, " ({hint})"),
                    (false, RefusedBy::Client) => write!(f, "; {hint}"),
                }
            }
            ClientError::ClosedBeforeReply { addr } => write!(
                f,
                "connection closed by the balancer at {addr} before any reply (per-client limit, or no upstream available)"
            ),
            ClientError::Timeout { what, after } => write!(f, "{what} timed out after {after:?}"),
            ClientError::Io { addr, detail } => write!(f, "connection to {addr} failed: {detail}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// What to do about a failed TCP connect.
fn connect_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "nothing listens there: is `tlb serve` running? check --connect",
        io::ErrorKind::AddrNotAvailable => "no local port or address available to connect from",
        _ => "check --connect and that `tlb serve` is reachable",
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct ClientOptions {
    /// HOST:PORT.
    pub connect: String,
    /// SNI and the name the server certificate must match.
    pub server_name: ServerName<'static>,
    pub tls: Arc<ClientConfig>,
    /// For TCP connect and the TLS handshake each.
    pub connect_timeout: Duration,
}

impl ClientOptions {
    /// Options from TLS files: the one place that turns a CA, an optional
    /// certificate + key and a server name into client options.
    pub fn new(
        connect: &str,
        server_name: &str,
        files: &ClientTlsFiles<'_>,
        connect_timeout: Duration,
    ) -> anyhow::Result<ClientOptions> {
        // Each file's own error names it (and what is wrong with it).
        let tls = client_config(files)?;
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|_| anyhow::anyhow!("--server-name {server_name:?} is not a valid DNS name or IP address"))?;
        Ok(ClientOptions {
            connect: connect.to_string(),
            server_name,
            tls,
            connect_timeout,
        })
    }
}

/// The first address `target` (HOST:PORT) resolves to.
pub fn resolve(target: &str) -> Result<SocketAddr, ClientError> {
    let fail = |why: String| ClientError::Resolve(format!("{target:?}"), why);
    if !has_port(target) {
        return Err(fail("wants HOST:PORT, e.g. 127.0.0.1:8443".into()));
    }
    target
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .next()
        .ok_or_else(|| fail("no address".into()))
}

/// Whether `target` has the shape HOST:PORT (`[v6]:PORT` for IPv6), with
/// a non-empty host and a port number: not whether the host resolves.
pub fn has_port(target: &str) -> bool {
    match target.rsplit_once(':') {
        Some((host, port)) => {
            let (host, bracketed) = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                Some(v6) => (v6, true),
                None => (host, false),
            };
            !host.is_empty() && (bracketed || !host.contains(':')) && port.parse::<u16>().is_ok()
        }
        None => false,
    }
}

/// Connects and completes the client side of the handshake.
pub async fn connect(opts: &ClientOptions) -> Result<(SocketAddr, ClientStream), ClientError> {
    let addr = resolve(&opts.connect)?;
    Ok((addr, connect_to(addr, opts).await?))
}

/// A TCP connection to `addr` within `limit`.
pub async fn connect_tcp(addr: SocketAddr, limit: Duration) -> Result<TcpConn, ClientError> {
    timeout(limit, TcpConn::connect(addr))
        .await
        .map_err(|_| ClientError::Timeout {
            what: "TCP connect",
            after: limit,
        })?
        .map_err(|source| ClientError::Connect { addr, source })
}

/// Like [`connect`] to an already resolved address (`opts.connect` unused).
pub async fn connect_to(addr: SocketAddr, opts: &ClientOptions) -> Result<ClientStream, ClientError> {
    let tcp = connect_tcp(addr, opts.connect_timeout).await?;
    tls_handshake(tcp, opts)
        .await
        .ok_or(ClientError::Timeout {
            what: "TLS handshake",
            after: opts.connect_timeout,
        })?
        .map_err(|e| refused_or_io(addr, e))
}

/// The client's TLS handshake over `tcp`, within the connect timeout
/// (`None` when it ran out). The error is rustls's own, for callers that
/// classify it ([`refused_or_io`], the load generator).
pub async fn tls_handshake(tcp: TcpConn, opts: &ClientOptions) -> Option<io::Result<ClientStream>> {
    let connector = futures_rustls::TlsConnector::from(opts.tls.clone());
    timeout(opts.connect_timeout, connector.connect(opts.server_name.clone(), tcp))
        .await
        .ok()
}

/// Maps an error seen during or right after the handshake.
pub fn refused_or_io(addr: SocketAddr, e: io::Error) -> ClientError {
    use rustls::Error as TE;
    let refused =
        |detail: String, hint: &'static str, by: RefusedBy| ClientError::TlsRefused { addr, detail, hint, by };
    match e.get_ref().and_then(|i| i.downcast_ref::<TE>()) {
        Some(TE::AlertReceived(a)) => refused(
            format!("server sent alert {}", crate::core::tls::alert_name(*a)),
            crate::core::tls::alerts::alert_advice(*a).unwrap_or(""),
            RefusedBy::Server,
        ),
        Some(TE::InvalidCertificate(c)) => refused(
            format!(
                "the server's certificate is {}",
                crate::core::tls::alerts::describe_certificate_error(c)
            ),
            crate::core::tls::alerts::server_certificate_advice(c),
            RefusedBy::Client,
        ),
        Some(other) => refused(crate::core::tls::describe_rustls_error(other), "", RefusedBy::Client),
        None => ClientError::Io {
            addr,
            detail: describe_tls_error(&e),
        },
    }
}

/// Sends `message`, half-closes, and returns everything received until EOF.
/// An empty reply to a non-empty message, or EOF without close_notify
/// before any byte, is [`ClientError::ClosedBeforeReply`].
pub async fn exchange(opts: &ClientOptions, message: &[u8], read_timeout: Duration) -> Result<Vec<u8>, ClientError> {
    let (addr, mut tls) = connect(opts).await?;
    let io_err = |e: io::Error| refused_or_io(addr, e);
    let mut out = Vec::new();
    let work = async {
        let sent = async {
            tls.write_all(message).await?;
            tls.close().await
        }
        .await;
        if let Err(e) = sent {
            // The server may have refused us and closed: its alert is
            // waiting to be read, and says more than a broken pipe.
            let mut probe = [0u8; 1];
            return Err(match tls.read(&mut probe).await {
                Err(read_err) => match io_err(read_err) {
                    refused @ ClientError::TlsRefused { .. } => refused,
                    _ if is_disconnect(&e) => ClientError::ClosedBeforeReply { addr },
                    _ => io_err(e),
                },
                Ok(0) => ClientError::ClosedBeforeReply { addr },
                Ok(_) => io_err(e),
            });
        }
        match tls.read_to_end(&mut out).await {
            Ok(_) => Ok(()),
            // Other balancers reset or close without close_notify when they refuse.
            Err(e) if is_disconnect(&e) && out.is_empty() => Err(ClientError::ClosedBeforeReply { addr }),
            Err(e) => Err(io_err(e)),
        }
    };
    timeout(read_timeout, work).await.map_err(|_| ClientError::Timeout {
        what: "waiting for the reply",
        after: read_timeout,
    })??;
    if out.is_empty() && !message.is_empty() {
        return Err(ClientError::ClosedBeforeReply { addr });
    }
    Ok(out)
}
