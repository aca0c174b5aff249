//! `[[app]]` validation: names, listen addresses, upstreams, SNI names, and
//! how apps share a listener.
//!
//! Promises: at least one app; app names unique; upstream host names
//! resolved now (not per connection) and none listed twice; server names
//! lower-cased without a trailing dot; on a shared listener at most one
//! default app (no server_names) and no server name claimed twice, and
//! all of them with the same `reuse_port`.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;

use toml::Spanned;

use crate::core::config::error::ConfigError;
use crate::core::config::model::{App, AppMode, ProxyProtocol, UpstreamAddr};
use crate::core::config::raw::RawApp;
use crate::core::config::validate::app_tables;
use crate::core::config::validate::ctx::Ctx;

/// Per app: the span of `server_names` (or of `name` when absent), the
/// span of each server name kept, and the span of `reuse_port` (or of
/// `listen`), for the shared-listener checks.
type SniSpans = (Range<usize>, Vec<Range<usize>>, Range<usize>);

/// The span of `server_names` (or of `name`) and of each name kept.
type NameSpans = (Range<usize>, Vec<Range<usize>>);

/// Every `[[app]]` checked, then the listeners they share.
pub(crate) fn apps(raw: Vec<Spanned<RawApp>>, ctx: &Ctx<'_>) -> Result<Vec<App>, ConfigError> {
    if raw.is_empty() {
        return Err(ctx.err_noline(
            "app",
            "no [[app]] defined; add at least one with a name, listen and upstreams",
        ));
    }
    let mut apps: Vec<App> = Vec::with_capacity(raw.len());
    let mut names: HashMap<String, Range<usize>> = HashMap::new();
    let mut sni_spans: Vec<SniSpans> = Vec::with_capacity(raw.len());
    for (i, sapp) in raw.into_iter().enumerate() {
        let (app, spans) = app(i, sapp, &mut names, ctx)?;
        apps.push(app);
        sni_spans.push(spans);
    }
    shared_listeners(&apps, &sni_spans, ctx)?;
    Ok(apps)
}

/// App `i` checked; `names` holds the apps seen so far (name -> span).
fn app(
    i: usize,
    sapp: Spanned<RawApp>,
    names: &mut HashMap<String, Range<usize>>,
    ctx: &Ctx<'_>,
) -> Result<(App, SniSpans), ConfigError> {
    let app_span = sapp.span();
    let raw = sapp.into_inner();
    let k = |field: &str| format!("app[{i}].{field}");
    let name = raw.name.get_ref().trim().to_string();
    if name.is_empty() {
        return Err(ctx.err(raw.name.span(), k("name"), "app name must not be empty"));
    }
    if let Some(prev) = names.get(&name) {
        return Err(ctx.err(
            raw.name.span(),
            k("name"),
            format!(
                "duplicate app name {name:?} (first defined at line {}); app names must be unique",
                ctx.line(prev.start)
            ),
        ));
    }
    names.insert(name.clone(), raw.name.span());
    let listen: SocketAddr = raw.listen.get_ref().parse().map_err(|_| {
        ctx.err(
            raw.listen.span(),
            k("listen"),
            format!(
                "{:?} is not an IP:PORT address, e.g. \"127.0.0.1:8443\"",
                raw.listen.get_ref()
            ),
        )
    })?;
    let upstreams = upstreams(&name, &raw.upstreams, app_span, &k, ctx)?;
    let (server_names, (sni_span, name_spans)) = server_names(&raw, &k, ctx)?;
    let reuse_span = raw.reuse_port.as_ref().map_or(raw.listen.span(), Spanned::span);
    let spans = (sni_span, name_spans, reuse_span);
    let (proxy_protocol, proxy_protocol_cert) = proxy_protocol(&raw, &k, ctx)?;
    let health = raw.health.map(|h| app_tables::health(h, &k, ctx)).transpose()?;
    let upstream_tls = raw
        .upstream_tls
        .map(|t| app_tables::upstream_tls(t, &k, ctx))
        .transpose()?;
    let mode = mode(raw.mode.as_ref(), &k, ctx)?;
    let app = App {
        name,
        listen,
        server_names,
        upstreams,
        proxy_protocol,
        proxy_protocol_cert,
        reuse_port: raw.reuse_port.is_some_and(|r| *r.get_ref()),
        mode,
        health,
        upstream_tls,
    };
    Ok((app, spans))
}

/// `mode`: `"enforce"` (the default) or `"audit"`.
fn mode(m: Option<&Spanned<String>>, k: &dyn Fn(&str) -> String, ctx: &Ctx<'_>) -> Result<AppMode, ConfigError> {
    match m.map(|m| (m, m.get_ref().trim())) {
        None | Some((_, "enforce")) => Ok(AppMode::Enforce),
        Some((_, "audit")) => Ok(AppMode::Audit),
        Some((m, other)) => Err(ctx.err(
            m.span(),
            k("mode"),
            format!("mode {other:?} is not known; write \"enforce\" (refuse, the default) or \"audit\" (admit and log would-be refusals)"),
        )),
    }
}

/// `proxy_protocol` (`"v1"`, `"v2"` or left out) and `proxy_protocol_cert`
/// (only with `"v2"`: v1 has no room for a certificate).
fn proxy_protocol(
    raw: &RawApp,
    k: &dyn Fn(&str) -> String,
    ctx: &Ctx<'_>,
) -> Result<(Option<ProxyProtocol>, bool), ConfigError> {
    let version = match &raw.proxy_protocol {
        None => None,
        Some(v) => match v.get_ref().as_str() {
            Some("v2") => Some(ProxyProtocol::V2),
            Some("v1") => Some(ProxyProtocol::V1),
            _ => {
                let written = v.get_ref().to_string();
                return Err(ctx.err(
                    v.span(),
                    k("proxy_protocol"),
                    format!("proxy_protocol = {written} is not a PROXY protocol version; write proxy_protocol = \"v2\" (or \"v1\" for receivers that only read the text header), or leave it out for none"),
                ));
            }
        },
    };
    let cert = match &raw.proxy_protocol_cert {
        Some(c) if *c.get_ref() && version != Some(ProxyProtocol::V2) => {
            let have = version.map_or("no proxy_protocol".to_string(), |v| {
                format!("proxy_protocol = \"{}\"", v.as_str())
            });
            return Err(ctx.err(
                c.span(),
                k("proxy_protocol_cert"),
                format!("proxy_protocol_cert = true needs proxy_protocol = \"v2\" (the certificate travels in a v2 TLV), but the app has {have}; set proxy_protocol = \"v2\" or remove proxy_protocol_cert"),
            ));
        }
        Some(c) => *c.get_ref(),
        None => false,
    };
    Ok((version, cert))
}

/// `upstreams` of app `name`: present, not empty, each resolved, none twice.
fn upstreams(
    name: &str,
    raw: &Option<Spanned<Vec<Spanned<String>>>>,
    app_span: Range<usize>,
    k: &dyn Fn(&str) -> String,
    ctx: &Ctx<'_>,
) -> Result<Vec<UpstreamAddr>, ConfigError> {
    let ups = match raw {
        None => {
            return Err(ctx.err(
                app_span,
                k("upstreams"),
                format!("app {name:?} has no upstreams; add upstreams = [\"HOST:PORT\", ...]"),
            ));
        }
        Some(u) if u.get_ref().is_empty() => {
            return Err(ctx.err(
                u.span(),
                k("upstreams"),
                format!("app {name:?} has no upstreams; list at least one \"HOST:PORT\""),
            ));
        }
        Some(u) => u.get_ref(),
    };
    let mut upstreams = Vec::with_capacity(ups.len());
    for u in ups {
        let text = u.get_ref().trim().to_string();
        let addr = parse_socket_addr(&text).map_err(|m| ctx.err(u.span(), k("upstreams"), m))?;
        if upstreams.iter().any(|x: &UpstreamAddr| x.name == text) {
            return Err(ctx.err(u.span(), k("upstreams"), format!("upstream {text:?} is listed twice")));
        }
        upstreams.push(UpstreamAddr { name: text, addr });
    }
    Ok(upstreams)
}

/// `server_names` normalized (lower case, no trailing dot, duplicates
/// dropped), with the spans the listener checks point at.
fn server_names(
    raw: &RawApp,
    k: &dyn Fn(&str) -> String,
    ctx: &Ctx<'_>,
) -> Result<(Vec<String>, NameSpans), ConfigError> {
    let mut server_names = Vec::new();
    let mut name_spans = Vec::new();
    let list_span = raw.server_names.as_ref().map_or(raw.name.span(), Spanned::span);
    for sn in raw.server_names.as_ref().map(Spanned::get_ref).into_iter().flatten() {
        let n = sn.get_ref().trim().trim_end_matches('.').to_ascii_lowercase();
        if n.is_empty() {
            return Err(ctx.err(sn.span(), k("server_names"), "empty server name"));
        }
        if !server_names.contains(&n) {
            server_names.push(n);
            name_spans.push(sn.span());
        }
    }
    Ok((server_names, (list_span, name_spans)))
}

/// Apps sharing a listener must be told apart by SNI: at most one default
/// (no server_names) app, and no name claimed twice.
fn shared_listeners(apps: &[App], sni_spans: &[SniSpans], ctx: &Ctx<'_>) -> Result<(), ConfigError> {
    let mut by_listener: HashMap<SocketAddr, Vec<usize>> = HashMap::new();
    for (i, a) in apps.iter().enumerate() {
        by_listener.entry(a.listen).or_default().push(i);
    }
    for idxs in by_listener.values().filter(|v| v.len() > 1) {
        let first = &apps[idxs[0]];
        if let Some(&i) = idxs.iter().find(|&&i| apps[i].reuse_port != first.reuse_port) {
            let a = &apps[i];
            return Err(ctx.err(
                sni_spans[i].2.clone(),
                format!("app[{i}].reuse_port"),
                format!(
                    "apps {:?} and {:?} share listener {} but not reuse_port ({} and {}); set the same reuse_port in both",
                    first.name, a.name, a.listen, first.reuse_port, a.reuse_port
                ),
            ));
        }
        let mut default_app: Option<&str> = None;
        let mut claimed: HashMap<&str, &str> = HashMap::new();
        for &i in idxs {
            let a = &apps[i];
            let (span, name_spans, _) = &sni_spans[i];
            if a.server_names.is_empty() {
                if let Some(other) = default_app {
                    return Err(ctx.err(
                        span.clone(),
                        format!("app[{i}].server_names"),
                        format!("apps {other:?} and {:?} share listener {} without distinct server_names; give each app its own server_names", a.name, a.listen),
                    ));
                }
                default_app = Some(&a.name);
            }
            for (n, n_span) in a.server_names.iter().zip(name_spans) {
                if let Some(other) = claimed.insert(n, &a.name) {
                    return Err(ctx.err(
                        n_span.clone(),
                        format!("app[{i}].server_names"),
                        format!("server name {n:?} is claimed by apps {other:?} and {:?} on listener {}; server_names must be distinct", a.name, a.listen),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `HOST:PORT`, resolved (the first address) when not an IP literal.
fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !s.contains(':') {
        return Err(format!("{s:?} has no port; write HOST:PORT, e.g. \"127.0.0.1:9001\""));
    }
    match s.to_socket_addrs() {
        Ok(mut it) => it.next().ok_or_else(|| format!("{s:?} resolved to no address")),
        Err(e) => Err(format!("cannot resolve {s:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addr_without_port_is_explained() {
        let e = parse_socket_addr("localhost").unwrap_err();
        assert!(e.contains("no port"), "{e}");
    }
}
