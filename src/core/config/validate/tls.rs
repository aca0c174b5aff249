//! `[tls]` validation: the listener's certificate, the client trust root,
//! the lowest TLS version and the resumption window.
//!
//! Promises: paths are resolved (not read: the TLS layer loads them), the
//! version is "1.3" (default) or "1.2", and an unset session lifetime is
//! [`DEFAULT_SESSION_LIFETIME`].

use crate::core::config::error::ConfigError;
use crate::core::config::model::{DEFAULT_SESSION_LIFETIME, TlsSettings, TlsVersion};
use crate::core::config::raw::RawTls;
use crate::core::config::validate::ctx::Ctx;

/// `[tls]` checked and resolved.
pub(crate) fn settings(tls: RawTls, ctx: &Ctx<'_>) -> Result<TlsSettings, ConfigError> {
    let min_version = match &tls.min_version {
        None => TlsVersion::V1_3,
        Some(v) => match v.get_ref().as_str() {
            "1.3" => TlsVersion::V1_3,
            "1.2" => TlsVersion::V1_2,
            other => {
                return Err(ctx.err(
                    v.span(),
                    "tls.min_version",
                    format!("unsupported TLS version {other:?}; use \"1.3\" (default) or \"1.2\""),
                ));
            }
        },
    };
    Ok(TlsSettings {
        ca: ctx.resolve(tls.ca),
        cert: ctx.resolve(tls.cert),
        key: ctx.resolve(tls.key),
        crl: tls.crl.map(|p| ctx.resolve(p)),
        min_version,
        session_lifetime: tls
            .session_lifetime
            .as_ref()
            .map_or(DEFAULT_SESSION_LIFETIME, |d| d.get_ref().0),
        keep_deauthorized: tls.keep_deauthorized,
    })
}
