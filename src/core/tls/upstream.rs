//! TLS towards an app's upstreams (`[app.upstream_tls]`): one rustls client
//! config per app per configuration generation, the name each upstream is
//! verified against, the handshake after a TCP connect, and the upstream
//! side's stream, plain or TLS ([`UpstreamStream`]).
//!
//! Promises:
//! - The files are read when the generation is built (start, reload); an
//!   unreadable or mismatched one refuses the generation, naming the app,
//!   the key and the path.
//! - Each upstream is verified against `server_name`, or else its host as
//!   written in `upstreams` (a DNS name, or an IP address matched against IP
//!   SANs); that name is also the SNI (rustls sends none for an IP).
//! - A failed handshake is one reason line starting `upstream_tls: `, in
//!   words (`upstream_tls: certificate not valid for name "x" (it is for:
//!   y)`), with what to change in the config.
//! - Sessions are resumed toward upstreams through rustls's in-memory client
//!   cache (bounded: 256 servers); a new generation starts a new cache.
//! - The plain path costs nothing extra: [`UpstreamStream::Plain`] forwards
//!   every call to the [`TcpConn`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Result, anyhow};
use futures_lite::{AsyncRead, AsyncWrite};
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError, ClientConfig, Error as TlsError};

use crate::core::config::{App, UpstreamTls};
use crate::core::rt::net::{TcpConn, describe_io, is_local_error};
use crate::core::tls::alerts::describe_rustls_error;
use crate::core::tls::load::{certs_in, key_in, roots_in};
use crate::core::tls::material::Material;
use crate::core::tls::suites::{provider, versions};

/// The TLS stream to an upstream.
pub type UpstreamTlsStream = futures_rustls::client::TlsStream<TcpConn>;

/// An app's TLS towards its upstreams, for one configuration generation.
#[derive(Debug)]
pub struct UpstreamTlsClient {
    config: Arc<ClientConfig>,
    /// `server_name` from the config; `None`: each upstream's host.
    server_name: Option<ServerName<'static>>,
}

/// Why a TLS handshake with an upstream failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsError {
    /// `upstream_tls: ...`, one line.
    pub reason: String,
    /// The balancer's own resources ran out (not the upstream's fault).
    pub local: bool,
}

impl UpstreamTlsClient {
    /// Loads `[app.upstream_tls]` of `app` (its files from `files`) and
    /// checks that every upstream has a name to verify.
    pub fn load(app: &App, t: &UpstreamTls, files: &Material) -> Result<UpstreamTlsClient> {
        let role = |key: &str| format!("app {:?}: [app.upstream_tls] {key}", app.name);
        let roots = roots_in(files, &t.ca, &role("ca"))?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions(t.min_version))
            .map_err(|e| anyhow!("{}: {}", role("min_version"), describe_rustls_error(&e)))?
            .with_root_certificates(roots);
        let config = match (&t.cert, &t.key) {
            (Some(cert), Some(key)) => {
                let chain = certs_in(files, cert, &role("cert"))?;
                let key_der = key_in(files, key, &role("key"))?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    anyhow!(
                        "{} {} and key {} do not form a usable pair ({}); pass the .key written with that .crt",
                        role("cert"),
                        cert.display(),
                        key.display(),
                        describe_rustls_error(&e)
                    )
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        let server_name = match &t.server_name {
            Some(n) => Some(
                ServerName::try_from(n.clone())
                    .map_err(|_| anyhow!("{}: {n:?} is not a DNS name or an IP address", role("server_name")))?,
            ),
            None => None,
        };
        let client = UpstreamTlsClient {
            config: Arc::new(config),
            server_name,
        };
        for u in &app.upstreams {
            client.name_for(&u.name).map_err(|e| {
                anyhow!(
                    "app {:?}: upstream {}: {e}; set [app.upstream_tls] server_name",
                    app.name,
                    u.name
                )
            })?;
        }
        Ok(client)
    }

    /// The name upstream `upstream` (`HOST:PORT` as written) is verified
    /// against and sent as SNI.
    pub fn name_for(&self, upstream: &str) -> Result<ServerName<'static>, String> {
        if let Some(n) = &self.server_name {
            return Ok(n.clone());
        }
        let host = host_of(upstream);
        ServerName::try_from(host.to_string())
            .map_err(|_| format!("its host {host:?} is not a DNS name or an IP address to verify"))
    }

    /// The TLS handshake on a connected `tcp` to `upstream` (no timeout:
    /// wrap the call in one).
    pub async fn handshake(&self, tcp: TcpConn, upstream: &str) -> Result<UpstreamTlsStream, UpstreamTlsError> {
        let name = self.name_for(upstream).map_err(|e| UpstreamTlsError {
            reason: format!("upstream_tls: {e}"),
            local: false,
        })?;
        let shown = name.to_str().into_owned();
        futures_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| UpstreamTlsError {
                reason: handshake_reason(&e, &shown),
                local: e.get_ref().is_none() && is_local_error(&e),
            })
    }
}

/// The host of `HOST:PORT` (`[::1]:9000` -> `::1`).
pub fn host_of(upstream: &str) -> &str {
    let host = upstream.rsplit_once(':').map_or(upstream, |(h, _)| h);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// A failed upstream handshake in words, with the fix.
fn handshake_reason(e: &io::Error, name: &str) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<TlsError>()) {
        Some(tls) => tls_reason(tls, name),
        None => format!(
            "upstream_tls: handshake with {name:?} failed: {} (is the upstream speaking TLS?)",
            describe_io(e)
        ),
    }
}

/// `upstream_tls: <what>; <fix>` for a rustls error toward an upstream.
fn tls_reason(e: &TlsError, name: &str) -> String {
    let what = describe_rustls_error(e);
    let fix = match e {
        TlsError::InvalidCertificate(c) => certificate_advice(c),
        TlsError::AlertReceived(a) => alert_advice(*a),
        TlsError::InvalidMessage(_)
        | TlsError::InappropriateMessage { .. }
        | TlsError::InappropriateHandshakeMessage { .. } => {
            "is the upstream speaking TLS? (remove [app.upstream_tls] for a plain-TCP upstream)"
        }
        _ => "",
    };
    let mut out = format!("upstream_tls: {what}");
    if matches!(e, TlsError::InvalidCertificate(CertificateError::NotValidForName)) {
        out.push_str(&format!(" (verified as {name:?})"));
    }
    if !fix.is_empty() {
        out.push_str("; ");
        out.push_str(fix);
    }
    out
}

/// What to change when tlb refused an upstream's certificate.
fn certificate_advice(c: &CertificateError) -> &'static str {
    use CertificateError as CE;
    match c {
        CE::NotValidForName | CE::NotValidForNameContext { .. } => {
            "set [app.upstream_tls] server_name to one of its names, or give the upstream a certificate for the \
             host tlb dials"
        }
        CE::UnknownIssuer | CE::BadSignature => {
            "[app.upstream_tls] ca must hold the CA that signed the upstream's certificate"
        }
        CE::Expired | CE::ExpiredContext { .. } => "the upstream needs a new certificate, or this clock is wrong",
        CE::NotValidYet | CE::NotValidYetContext { .. } => "check this machine's clock and the upstream's",
        CE::InvalidPurpose | CE::InvalidPurposeContext { .. } => {
            "the upstream's certificate is not a server certificate (issue it with `tlb pki issue NAME --server`)"
        }
        _ => "check [app.upstream_tls] ca and server_name",
    }
}

/// What an alert from an upstream about tlb's side means.
fn alert_advice(a: AlertDescription) -> &'static str {
    use AlertDescription as AD;
    match a {
        AD::CertificateRequired => "the upstream requires a client certificate: set [app.upstream_tls] cert and key",
        AD::UnknownCA | AD::BadCertificate | AD::CertificateUnknown | AD::DecryptError => {
            "the upstream does not trust tlb's client certificate ([app.upstream_tls] cert): was it issued by \
             a CA the upstream trusts?"
        }
        AD::CertificateExpired => "tlb's client certificate ([app.upstream_tls] cert) has expired",
        AD::CertificateRevoked => "tlb's client certificate ([app.upstream_tls] cert) is revoked",
        AD::AccessDenied => "the upstream refuses tlb's client identity",
        AD::ProtocolVersion => "no TLS version in common (see [app.upstream_tls] min_version)",
        _ => "",
    }
}

/// A TLS 1.3 upstream refuses a client certificate after the client's
/// handshake is done: its alert arrives on the first read. The reason, if
/// `e` (an upstream read error) is such a TLS error.
pub fn late_refusal(e: &io::Error, upstream: &str) -> Option<String> {
    let tls = e.get_ref()?.downcast_ref::<TlsError>()?;
    Some(tls_reason(tls, host_of(upstream)))
}

/// The upstream side of a connection: plain TCP, or TLS over it.
#[derive(Debug)]
pub enum UpstreamStream {
    Plain(TcpConn),
    Tls(Box<UpstreamTlsStream>),
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_close(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_upstreams_as_written() {
        assert_eq!(host_of("localhost:9001"), "localhost");
        assert_eq!(host_of("127.0.0.1:9001"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9002"), "::1");
        assert_eq!(host_of("db.internal:5432"), "db.internal");
    }

    #[test]
    fn refusals_are_words_with_the_config_fix() {
        let wrong = TlsError::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("localhost").expect("a name"),
            presented: vec!["DnsName(\"other.test\")".into()],
        });
        let r = tls_reason(&wrong, "localhost");
        assert!(
            r.starts_with("upstream_tls: certificate not valid for name \"localhost\" (it is for: other.test)"),
            "{r}"
        );
        assert!(r.contains("server_name"), "{r}");
        let required = tls_reason(&TlsError::AlertReceived(AlertDescription::CertificateRequired), "x");
        assert!(required.contains("alert certificate_required"), "{required}");
        assert!(required.contains("cert and key"), "{required}");
    }
}
