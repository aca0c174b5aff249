//! Opening a connection to Redis on tlb's own executor: TCP (and TLS, with
//! rustls on tlb's crypto provider), the Redis client's handshake (`HELLO`,
//! `AUTH`, `SELECT`), and the connection's driver spawned as a task of
//! tlb's executor.
//!
//! Promises: a call and its reply stay on tlb's executor (the client's own
//! `get_multiplexed_async_connection` would run the driver on smol's global
//! executor thread, a cross-thread hand-off each way per call); `rediss://`
//! verifies the server against `redis_ca`, else the system's trust store,
//! by the URL's host name (an IP address against IP SANs), and presents
//! `redis_cert` when set; every file is read, and every TLS setting
//! checked, when the link is made (at start), with a message naming the
//! file and the key to fix.

use std::path::Path;
use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, RedisResult};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use smol::Executor;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use crate::core::config::ClusterSettings;
use crate::core::tls::provider;

/// Where and how to connect.
pub(crate) struct Dialer {
    host: String,
    port: u16,
    redis: RedisConnectionInfo,
    tls: Option<(futures_rustls::TlsConnector, ServerName<'static>)>,
}

impl Dialer {
    pub(crate) fn new(s: &ClusterSettings) -> Result<Dialer, String> {
        let fix = "check [cluster] redis";
        let info = s
            .redis
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("cluster: redis {:?}: {e}; {fix}", s.redis))?;
        let mut redis = info.redis_settings().clone();
        if let Some(p) = &s.password {
            redis = redis.set_password(p.reveal());
        }
        let (host, port, tls) = match info.addr() {
            ConnectionAddr::Tcp(host, port) => (host.clone(), *port, false),
            ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port, true),
            other => return Err(format!("cluster: redis {:?}: {other} is not TCP; {fix}", s.redis)),
        };
        let tls = if tls {
            let name = ServerName::try_from(host.clone())
                .map_err(|e| format!("cluster: redis {:?}: host {host:?}: {e}; {fix}", s.redis))?;
            Some((futures_rustls::TlsConnector::from(Arc::new(client_config(s)?)), name))
        } else {
            None
        };
        Ok(Dialer { host, port, redis, tls })
    }

    /// A connection, its driver spawned on `ex` (it ends with the connection).
    pub(crate) async fn dial(
        &self,
        ex: &Executor<'static>,
        config: AsyncConnectionConfig,
    ) -> RedisResult<MultiplexedConnection> {
        let tcp = smol::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => handshake(&self.redis, tcp.compat(), ex, config).await,
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await?;
                handshake(&self.redis, tls.compat(), ex, config).await
            }
        }
    }
}

async fn handshake<C>(
    redis: &RedisConnectionInfo,
    stream: C,
    ex: &Executor<'static>,
    config: AsyncConnectionConfig,
) -> RedisResult<MultiplexedConnection>
where
    C: Unpin + tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (conn, driver) = MultiplexedConnection::new_with_config(redis, stream, config).await?;
    ex.spawn(driver).detach();
    Ok(conn)
}

/// The TLS client: `redis_ca` (else the system's roots), `redis_cert` +
/// `redis_key` (else no client certificate), TLS 1.2 and 1.3.
fn client_config(s: &ClusterSettings) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &s.ca {
        Some(ca) => {
            for cert in certs(ca, "redis_ca")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("cluster: redis_ca {}: {e}; fix [cluster] redis_ca", ca.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "cluster: rediss:// without redis_ca, and no CA in the system's trust store; set [cluster] redis_ca"
                        .into(),
                );
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cluster: TLS to Redis: {e}"))?
        .with_root_certificates(roots);
    match &s.cert_key {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = certs(cert, "redis_cert")?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                format!(
                    "cluster: redis_key {}: no private key read ({e}); fix [cluster] redis_key",
                    key.display()
                )
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                format!(
                    "cluster: redis_cert {} with redis_key {}: {e}; the key must be the certificate's",
                    cert.display(),
                    key.display()
                )
            })
        }
    }
}

/// Every certificate of the PEM file `path` (at least one).
fn certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let bad = |e: &dyn std::fmt::Display| format!("cluster: {key} {shown}: {e}; fix [cluster] {key}");
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no certificate (-----BEGIN CERTIFICATE-----) in it"));
    }
    Ok(certs)
}
