//! `[app.health]` and `[app.upstream_tls]` validation: an app's active
//! checks and its TLS towards the upstreams.
//!
//! Promises: what `[app.health]` leaves out is `HealthSettings::default()`,
//! and a timeout never exceeds the interval; upstream TLS has both a client
//! certificate and key, or neither, a `server_name` that is a DNS name or
//! an IP address, and offers TLS 1.2 and 1.3 unless `min_version = "1.3"`;
//! paths are resolved like every path.

use toml::Spanned;

use crate::core::config::error::ConfigError;
use crate::core::config::model::{HealthSettings, TlsVersion, UpstreamTls};
use crate::core::config::raw::{RawHealth, RawUpstreamTls};
use crate::core::config::validate::ctx::Ctx;
use crate::core::config::validate::tls;

/// `[app.health]` checked, with defaults; `k` makes the app's keys.
pub(crate) fn health(
    h: Spanned<RawHealth>,
    k: &dyn Fn(&str) -> String,
    ctx: &Ctx<'_>,
) -> Result<HealthSettings, ConfigError> {
    let span = h.span();
    let h = h.into_inner();
    let count = |v: &Option<Spanned<i64>>, key: &str, default: u32| {
        v.as_ref()
            .map(|v| ctx.positive(v, k(key)))
            .transpose()
            .map(|n| n.unwrap_or(default))
    };
    let d = HealthSettings::default();
    let rise = count(&h.rise, "health.rise", d.rise)?;
    let fall = count(&h.fall, "health.fall", d.fall)?;
    let interval = h.interval.as_ref().map_or(d.interval, |d| d.get_ref().0);
    let timeout = h.timeout.as_ref().map_or(d.timeout, |d| d.get_ref().0);
    if timeout > interval {
        let (span, key) = match (&h.timeout, &h.interval) {
            (Some(t), _) => (t.span(), "health.timeout"),
            (None, Some(i)) => (i.span(), "health.interval"),
            (None, None) => (span, "health.timeout"),
        };
        return Err(ctx.err(
            span,
            k(key),
            format!(
                "health timeout ({}) must not exceed the interval ({})",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        ));
    }
    Ok(HealthSettings {
        interval,
        timeout,
        rise,
        fall,
        send: h.send.into_bytes(),
        expect: h.expect.into_bytes(),
    })
}

/// `[app.upstream_tls]` checked and resolved; `k` makes the app's keys.
pub(crate) fn upstream_tls(
    t: Spanned<RawUpstreamTls>,
    k: &dyn Fn(&str) -> String,
    ctx: &Ctx<'_>,
) -> Result<UpstreamTls, ConfigError> {
    let span = t.span();
    let t = t.into_inner();
    if t.cert.is_some() != t.key.is_some() {
        return Err(ctx.err(
            span,
            k("upstream_tls"),
            "set both cert and key (for mTLS to upstreams) or neither",
        ));
    }
    let min_version = match &t.min_version {
        None => TlsVersion::V1_2,
        Some(v) => tls::version(v, k("upstream_tls.min_version"), TlsVersion::V1_2, ctx)?,
    };
    let server_name = match t.server_name {
        None => None,
        Some(n) => {
            if rustls::pki_types::ServerName::try_from(n.get_ref().as_str()).is_err() {
                return Err(ctx.err(
                    n.span(),
                    k("upstream_tls.server_name"),
                    format!(
                        "{:?} is not a DNS name or an IP address; write the name the upstreams' certificates carry",
                        n.get_ref()
                    ),
                ));
            }
            Some(n.into_inner())
        }
    };
    Ok(UpstreamTls {
        ca: ctx.resolve(t.ca),
        cert: t.cert.map(|p| ctx.resolve(p)),
        key: t.key.map(|p| ctx.resolve(p)),
        server_name,
        min_version,
    })
}
