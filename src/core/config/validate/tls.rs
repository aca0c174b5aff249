//! `[tls]` validation: the listener's certificate, the client trust root,
//! the lowest TLS version, the resumption window, the certificate watch
//! interval and the expiry warning.
//!
//! Promises: paths are resolved (not read: the TLS layer loads them), the
//! version is "1.3" (default) or "1.2", an unset session lifetime is
//! [`DEFAULT_SESSION_LIFETIME`], `watch` is unset (off) or at least
//! [`MIN_WATCH`], and an unset expiry warning is [`DEFAULT_EXPIRY_WARNING`].

use std::time::Duration;

use toml::Spanned;

use crate::core::config::error::ConfigError;
use crate::core::config::model::{
    DEFAULT_EXPIRY_WARNING, DEFAULT_SESSION_LIFETIME, MIN_WATCH, TlsSettings, TlsVersion,
};
use crate::core::config::raw::{HumanDurationOrZero, RawTls};
use crate::core::config::validate::ctx::Ctx;

/// A `min_version` value: "1.3" or "1.2"; the message names `default`.
pub(crate) fn version(
    v: &toml::Spanned<String>,
    key: String,
    default: TlsVersion,
    ctx: &Ctx<'_>,
) -> Result<TlsVersion, ConfigError> {
    match v.get_ref().as_str() {
        "1.3" => Ok(TlsVersion::V1_3),
        "1.2" => Ok(TlsVersion::V1_2),
        other => {
            let (d, o) = match default {
                TlsVersion::V1_3 => ("1.3", "1.2"),
                TlsVersion::V1_2 => ("1.2", "1.3"),
            };
            Err(ctx.err(
                v.span(),
                key,
                format!("unsupported TLS version {other:?}; use \"{d}\" (default) or \"{o}\""),
            ))
        }
    }
}

/// `[tls]` checked and resolved.
pub(crate) fn settings(tls: RawTls, ctx: &Ctx<'_>) -> Result<TlsSettings, ConfigError> {
    let min_version = match &tls.min_version {
        None => TlsVersion::V1_3,
        Some(v) => version(v, "tls.min_version".into(), TlsVersion::V1_3, ctx)?,
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
        watch: tls.watch.as_ref().map(|w| watch(w, ctx)).transpose()?,
        expiry_warning: tls
            .expiry_warning
            .as_ref()
            .map_or(DEFAULT_EXPIRY_WARNING, |d| d.get_ref().0),
    })
}

/// `watch`: at least [`MIN_WATCH`]; "0s" is refused with how to turn
/// watching off (leave the key out).
fn watch(w: &Spanned<HumanDurationOrZero>, ctx: &Ctx<'_>) -> Result<Duration, ConfigError> {
    let d = w.get_ref().0;
    if d.is_zero() {
        return Err(ctx.err(
            w.span(),
            "tls.watch",
            "\"0s\" is not a poll interval; leave `watch` out to turn watching off, or write e.g. \"10s\"",
        ));
    }
    if d < MIN_WATCH {
        return Err(ctx.err(
            w.span(),
            "tls.watch",
            format!(
                "{} is too short a poll interval; write at least \"1s\" (e.g. \"10s\")",
                humantime::format_duration(d)
            ),
        ));
    }
    Ok(d)
}
