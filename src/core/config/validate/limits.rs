//! `[limits]`, `[defaults]` and `[timeouts]` validation: the global caps
//! at accept, the per-client limits every `[[client]]` starts from, and the
//! connection timeouts.
//!
//! Promises: every count is a whole number from 1 to `u32::MAX`, every
//! rate finite and positive; what a table leaves out keeps its default.

use toml::Spanned;

use crate::core::config::error::ConfigError;
use crate::core::config::model::{GlobalLimits, Limits, Timeouts};
use crate::core::config::raw::{RawGlobalLimits, RawLimits, RawTimeouts};
use crate::core::config::validate::ctx::Ctx;

/// `[limits]` checked, with defaults for what it leaves out.
pub(crate) fn global(l: &RawGlobalLimits, ctx: &Ctx<'_>) -> Result<GlobalLimits, ConfigError> {
    let gl = GlobalLimits::default();
    Ok(GlobalLimits {
        max_connections: l
            .max_connections
            .as_ref()
            .map(|v| ctx.positive(v, "limits.max_connections".into()))
            .transpose()?,
        max_handshakes: l.max_handshakes.as_ref().map_or(Ok(gl.max_handshakes), |v| {
            ctx.positive(v, "limits.max_handshakes".into())
        })?,
        max_handshakes_per_ip: l
            .max_handshakes_per_ip
            .as_ref()
            .map_or(Ok(gl.max_handshakes_per_ip), |v| {
                ctx.positive(v, "limits.max_handshakes_per_ip".into())
            })?,
    })
}

/// `[defaults]` checked, over the built-in per-client limits.
pub(crate) fn defaults(d: &Option<Spanned<RawLimits>>, ctx: &Ctx<'_>) -> Result<Limits, ConfigError> {
    match d {
        None => Ok(Limits::default()),
        Some(d) => {
            let d = d.get_ref();
            ctx.limits(
                Limits::default(),
                "defaults.",
                &d.max_connections,
                &d.connection_rate,
                &d.burst,
            )
        }
    }
}

/// `[timeouts]` (durations were checked when parsed), with defaults.
pub(crate) fn timeouts(t: RawTimeouts) -> Timeouts {
    let td = Timeouts::default();
    Timeouts {
        handshake: t.handshake.map_or(td.handshake, |d| d.0),
        connect: t.connect.map_or(td.connect, |d| d.0),
        idle: t.idle.map_or(td.idle, |d| d.0),
        drain: t.drain.map_or(td.drain, |d| d.0),
        max_lifetime: t.max_lifetime.map(|d| d.0),
    }
}
