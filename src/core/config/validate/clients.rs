//! `[[client]]` validation: identities (certificate CNs), the apps each may
//! reach, their limits and optional key pins.
//!
//! Promises: names are non-empty, free of control characters and unique;
//! every app named exists (listed once each, in the order written); limits
//! start from `[defaults]`; a pin is 32 bytes of hex (colons allowed).

use std::collections::HashSet;

use toml::Spanned;

use crate::core::config::error::ConfigError;
use crate::core::config::model::{App, Client, Limits};
use crate::core::config::raw::RawClient;
use crate::core::config::validate::ctx::Ctx;

/// Every `[[client]]` checked against `apps`, limits over `defaults`.
pub(crate) fn clients(
    raw: Vec<Spanned<RawClient>>,
    apps: &[App],
    defaults: Limits,
    ctx: &Ctx<'_>,
) -> Result<Vec<Client>, ConfigError> {
    let mut clients: Vec<Client> = Vec::with_capacity(raw.len());
    let mut seen: HashSet<String> = HashSet::new();
    for (i, sc) in raw.into_iter().enumerate() {
        clients.push(client(i, sc.into_inner(), apps, defaults, &mut seen, ctx)?);
    }
    Ok(clients)
}

/// Client `i` checked; `seen` holds the names so far.
fn client(
    i: usize,
    raw: RawClient,
    apps: &[App],
    defaults: Limits,
    seen: &mut HashSet<String>,
    ctx: &Ctx<'_>,
) -> Result<Client, ConfigError> {
    let k = |field: &str| format!("client[{i}].{field}");
    let name = raw.name.get_ref().trim().to_string();
    if name.is_empty() {
        return Err(ctx.err(
            raw.name.span(),
            k("name"),
            "client name (the certificate CN) must not be empty",
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ctx.err(
            raw.name.span(),
            k("name"),
            "client name must not contain control characters (newlines, escapes)",
        ));
    }
    if !seen.insert(name.clone()) {
        return Err(ctx.err(
            raw.name.span(),
            k("name"),
            format!("duplicate client {name:?}; each identity may appear once"),
        ));
    }
    let allowed = allowed_apps(&name, &raw.apps, apps, &k, ctx)?;
    let limits = ctx.limits(
        defaults,
        &format!("client[{i}]."),
        &raw.max_connections,
        &raw.connection_rate,
        &raw.burst,
    )?;
    let spki_sha256 = raw.spki_sha256.as_ref().map(|s| pin(s, &k, ctx)).transpose()?;
    Ok(Client {
        name,
        apps: allowed,
        limits,
        spki_sha256,
    })
}

/// The apps client `name` lists: each known, duplicates dropped.
fn allowed_apps(
    name: &str,
    listed: &[Spanned<String>],
    apps: &[App],
    k: &dyn Fn(&str) -> String,
    ctx: &Ctx<'_>,
) -> Result<Vec<String>, ConfigError> {
    let mut allowed = Vec::with_capacity(listed.len());
    for a in listed {
        let an = a.get_ref().trim();
        if !apps.iter().any(|app| app.name == an) {
            let known: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
            return Err(ctx.err(
                a.span(),
                k("apps"),
                format!(
                    "client {name:?} names unknown app {an:?}; known apps: {}",
                    known.join(", ")
                ),
            ));
        }
        if !allowed.iter().any(|x: &String| x == an) {
            allowed.push(an.to_string());
        }
    }
    Ok(allowed)
}

/// `spki_sha256`: 64 hex digits, colons allowed between them.
fn pin(s: &Spanned<String>, k: &dyn Fn(&str) -> String, ctx: &Ctx<'_>) -> Result<[u8; 32], ConfigError> {
    let hexs: String = s.get_ref().chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(hexs.trim(), &mut out).map_err(|_| {
        ctx.err(
            s.span(),
            k("spki_sha256"),
            "must be 64 hex digits (SHA-256 of the client's public key; `tlb pki show` prints it)",
        )
    })?;
    Ok(out)
}
