//! `[[client]]` validation: identities (a certificate's CN, URI SAN or DNS
//! SAN), the apps each may reach, their limits and optional key pins.
//!
//! Promises: names are non-empty, free of control characters and unique;
//! an entry matches by at most one of `uri` and `dns` (else its CN =
//! `name`), and no two entries match the same CN, URI or DNS name; a URI
//! is a valid URI (a `spiffe://` one a valid SPIFFE ID whose trust domain
//! has a `[[trust_domain]]` when any is configured); every app named
//! exists (listed once each, in the order written); limits start from
//! `[defaults]`; a pin is 32 bytes of hex (colons allowed).

use std::collections::{HashMap, HashSet};

use toml::Spanned;

use crate::core::config::error::ConfigError;
use crate::core::config::model::{App, Client, ClientMatch, Limits, TrustDomain};
use crate::core::config::raw::RawClient;
use crate::core::config::validate::ctx::Ctx;
use crate::core::pki::sans;

/// What the entries so far match, for the one-entry-per-identity rule.
#[derive(Default)]
struct Seen {
    names: HashSet<String>,
    /// "cn:x", "uri:x", "dns:x" -> the entry's name.
    matches: HashMap<String, String>,
}

/// Every `[[client]]` checked against `apps`, limits over `defaults`.
pub(crate) fn clients(
    raw: Vec<Spanned<RawClient>>,
    apps: &[App],
    defaults: Limits,
    domains: &[TrustDomain],
    ctx: &Ctx<'_>,
) -> Result<Vec<Client>, ConfigError> {
    let mut clients: Vec<Client> = Vec::with_capacity(raw.len());
    let mut seen = Seen::default();
    for (i, sc) in raw.into_iter().enumerate() {
        let raw = sc.into_inner();
        let matches = matcher(i, &raw, domains, ctx)?;
        let mut c = client(i, raw, apps, defaults, &mut seen, ctx)?;
        c.matches = matches;
        clients.push(c);
    }
    Ok(clients)
}

/// What entry `i` matches: its `uri`, its `dns`, or (neither) its CN.
fn matcher(i: usize, raw: &RawClient, domains: &[TrustDomain], ctx: &Ctx<'_>) -> Result<ClientMatch, ConfigError> {
    let k = |field: &str| format!("client[{i}].{field}");
    match (&raw.uri, &raw.dns) {
        (Some(_), Some(d)) => Err(ctx.err(
            d.span(),
            k("dns"),
            "an entry matches one identity: set uri or dns, not both (or neither, to match the CN = name)",
        )),
        (Some(u), None) => {
            let uri = u.get_ref().trim();
            sans::check_uri_as(uri, &k("uri")).map_err(|e| ctx.err(u.span(), k("uri"), e.to_string()))?;
            let m = ClientMatch::Uri(uri.to_string());
            if let Some(td) = m.trust_domain()
                && !domains.is_empty()
                && !domains.iter().any(|d| d.name == td)
            {
                let known: Vec<&str> = domains.iter().map(|d| d.name.as_str()).collect();
                return Err(ctx.err(
                    u.span(),
                    k("uri"),
                    format!(
                        "SPIFFE ID {uri:?} is in trust domain {td:?}, which has no [[trust_domain]] (known: {}); add one with its CA",
                        known.join(", ")
                    ),
                ));
            }
            Ok(m)
        }
        (None, Some(d)) => {
            let dns = d.get_ref().trim().to_ascii_lowercase();
            sans::check_dns_identity(&dns, &k("dns")).map_err(|e| ctx.err(d.span(), k("dns"), e.to_string()))?;
            Ok(ClientMatch::Dns(dns))
        }
        (None, None) => Ok(ClientMatch::Cn),
    }
}

/// Client `i` checked; `seen` holds the names so far.
fn client(
    i: usize,
    raw: RawClient,
    apps: &[App],
    defaults: Limits,
    seen: &mut Seen,
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
    if !seen.names.insert(name.clone()) {
        return Err(ctx.err(
            raw.name.span(),
            k("name"),
            format!("duplicate client {name:?}; each identity may appear once"),
        ));
    }
    let (key, span, what) = match (&raw.uri, &raw.dns) {
        (Some(u), _) => (format!("uri:{}", u.get_ref().trim()), u.span(), "uri"),
        (None, Some(d)) => (
            format!("dns:{}", d.get_ref().trim().to_ascii_lowercase()),
            d.span(),
            "dns",
        ),
        (None, None) => (format!("cn:{name}"), raw.name.span(), "name"),
    };
    if let Some(other) = seen.matches.insert(key.clone(), name.clone()) {
        let (kind, value) = key.split_once(':').unwrap_or(("", &key));
        return Err(ctx.err(
            span,
            k(what),
            format!(
                "client {name:?} matches {kind} {value:?}, which client {other:?} already matches; one entry per identity (else a certificate would match two)"
            ),
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
        matches: ClientMatch::Cn,
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
