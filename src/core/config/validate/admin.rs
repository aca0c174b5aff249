//! `[admin]` validation: the admin endpoint's address and its bearer token.
//!
//! Promises: `listen` is an IP:PORT that no app listens on; `token_file` is
//! read once here (by [`secret_file`], which `[cluster]` shares: bounded to
//! 4 KiB, one printable-ASCII secret, trailing whitespace trimmed) and kept
//! only as its digest; a file every user may read is accepted with a warning.

use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;

use crate::core::config::error::ConfigError;
use crate::core::config::model::{AdminSettings, AdminToken, App};
use crate::core::config::raw::RawAdmin;
use crate::core::config::validate::ctx::Ctx;

/// `[admin]` checked (token read), and the span of its `listen` value.
pub(crate) fn settings(
    admin: Option<RawAdmin>,
    ctx: &Ctx<'_>,
) -> Result<(Option<AdminSettings>, Option<Range<usize>>), ConfigError> {
    let Some(a) = admin else {
        return Ok((None, None));
    };
    let listen = a.listen.get_ref().parse().map_err(|_| {
        ctx.err(
            a.listen.span(),
            "admin.listen",
            format!("{:?} is not an IP:PORT address", a.listen.get_ref()),
        )
    })?;
    let token = a.token_file.as_ref().map(|f| token(ctx, f)).transpose()?;
    Ok((Some(AdminSettings { listen, token }), Some(a.listen.span())))
}

/// Refuses an admin endpoint on an app's listen address.
pub(crate) fn check_own_port(
    admin: Option<&AdminSettings>,
    span: Option<Range<usize>>,
    apps: &[App],
    ctx: &Ctx<'_>,
) -> Result<(), ConfigError> {
    if let (Some(a), Some(span)) = (admin, span)
        && let Some(app) = apps.iter().find(|app| app.listen == a.listen)
    {
        return Err(ctx.err(
            span,
            "admin.listen",
            format!(
                "{} is also the listen address of app {:?}; give the admin endpoint its own port",
                a.listen, app.name
            ),
        ));
    }
    Ok(())
}

/// Reads `[admin] token_file` (resolved like every path): one token of
/// printable ASCII, trailing whitespace trimmed, at most 4 KiB. A file every
/// user may read is accepted with a warning.
fn token(ctx: &Ctx<'_>, file: &Spanned<PathBuf>) -> Result<AdminToken, ConfigError> {
    let fix = "write one random token (printable ASCII: it travels in an Authorization header) into it, e.g. `openssl rand -hex 32 > FILE; chmod 600 FILE`";
    secret_file(ctx, file, "admin.token_file", fix).map(|t| AdminToken::new(&t))
}

/// Reads a file holding one secret (`key` names it in errors, `fix` says
/// how to write one): printable ASCII, trailing whitespace trimmed, at most
/// 4 KiB. A file every user may read is accepted with a warning.
pub(crate) fn secret_file(
    ctx: &Ctx<'_>,
    file: &Spanned<PathBuf>,
    key: &str,
    fix: &str,
) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    const MAX: u64 = 4096;
    let path = ctx.resolve(file.get_ref().clone());
    let shown = path.display();
    let err = |m: String| ctx.err(file.span(), key, m);
    let cannot = |e: std::io::Error| err(format!("cannot read {shown}: {e}; fix the path or {fix}"));
    let f = std::fs::File::open(&path).map_err(cannot)?;
    let mode = f.metadata().map_err(cannot)?.permissions();
    let mut bytes = Vec::new();
    // Bounded: a wrong path (a device, a log) must not fill memory.
    f.take(MAX + 1).read_to_end(&mut bytes).map_err(cannot)?;
    let secret = bytes.trim_ascii_end();
    if secret.is_empty() {
        return Err(err(format!("{shown} is empty; {fix}")));
    }
    if bytes.len() as u64 > MAX {
        return Err(err(format!("{shown} is longer than {MAX} bytes; {fix}")));
    }
    if !secret.iter().all(u8::is_ascii_graphic) {
        return Err(err(format!(
            "{shown} holds spaces, line breaks, control or non-ASCII characters; {fix}"
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if mode.mode() & 0o004 != 0 {
            tracing::warn!(
                "{}: {key} {shown} is readable by every user (mode {:o}); run `chmod 600 {shown}`",
                ctx.path.display(),
                mode.mode() & 0o777
            );
        }
    }
    #[cfg(not(unix))]
    let _ = mode;
    Ok(secret.to_vec())
}
