//! The mTLS client behind `tlb client` (and the building block of `bench`):
//! connect, handshake, and tell apart the ways a balancer can say no.
//!
//! With TLS 1.3 a refused client certificate surfaces only on the first
//! read (the server's alert arrives after the client's handshake is done),
//! so [`exchange`] writes, half-closes and reads before it judges.

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

/// What went wrong, in the terms a user needs.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
    #[error("connecting to {addr} failed: {source} (is `tlb serve` running there? check --connect)")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("the TLS handshake was refused by {addr}: {detail}{hint}")]
    TlsRefused {
        addr: SocketAddr,
        detail: String,
        hint: &'static str,
    },
    #[error(
        "connection closed by the balancer at {addr} before any reply (per-client limit, or no upstream available)"
    )]
    ClosedBeforeReply { addr: SocketAddr },
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("connection to {addr} failed: {detail}")]
    Io { addr: SocketAddr, detail: String },
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
        use anyhow::Context;
        let tls =
            client_config(files).with_context(|| format!("loading client TLS files (CA {})", files.ca.display()))?;
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
    target
        .to_socket_addrs()
        .map_err(|e| ClientError::Resolve(target.to_string(), e.to_string()))?
        .next()
        .ok_or_else(|| ClientError::Resolve(target.to_string(), "no address".into()))
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
    let connector = futures_rustls::TlsConnector::from(opts.tls.clone());
    timeout(opts.connect_timeout, connector.connect(opts.server_name.clone(), tcp))
        .await
        .map_err(|_| ClientError::Timeout {
            what: "TLS handshake",
            after: opts.connect_timeout,
        })?
        .map_err(|e| refused_or_io(addr, e))
}

/// Maps an error seen during or right after the handshake.
pub fn refused_or_io(addr: SocketAddr, e: io::Error) -> ClientError {
    use rustls::{AlertDescription as AD, Error as TE};
    match e.get_ref().and_then(|i| i.downcast_ref::<TE>()) {
        Some(TE::AlertReceived(a)) => ClientError::TlsRefused {
            addr,
            detail: format!("server sent alert {}", crate::core::tls::alert_name(*a)),
            hint: match a {
                AD::AccessDenied => {
                    " (this certificate's identity is not authorized for the app; check [[client]] in the server config)"
                }
                AD::UnknownCA | AD::BadCertificate | AD::CertificateUnknown => {
                    " (the server does not trust this client certificate; was it issued by the server's CA?)"
                }
                AD::CertificateRevoked => " (this client certificate is revoked)",
                AD::CertificateExpired => " (this client certificate has expired; issue a new one)",
                AD::CertificateRequired => {
                    " (the server requires a client certificate: pass --cert NAME or --cert-file/--key-file)"
                }
                AD::ProtocolVersion => " (TLS version mismatch)",
                _ => "",
            },
        },
        Some(TE::InvalidCertificate(c)) => ClientError::TlsRefused {
            addr,
            detail: format!("this client rejected the server's certificate: {c:?}"),
            hint: " (check --ca and --server-name)",
        },
        Some(other) => ClientError::TlsRefused {
            addr,
            detail: other.to_string(),
            hint: "",
        },
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
