//! `[cluster]` validation: the Redis URL, its password file, this
//! instance's name and the fleet's timing.
//!
//! Promises: `redis` is a `redis://` or `rediss://` URL with a host, an
//! optional port and database number, and nothing else (no password in the
//! URL, no query, no fragment: `#insecure` would turn TLS verification off);
//! the password file is read once here, like the admin token; `redis_ca`,
//! `redis_cert` and `redis_key` (paths, read when connecting) only with
//! `rediss://`, the last two both or neither; `prefix` holds no hash-tag
//! braces, spaces or control characters; `instance`
//! defaults to the host name and the first listen address; `liveness_ttl` is
//! at least 1 s and at least 4 × `timeout`. Nothing connects to Redis here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use crate::core::config::error::ConfigError;
use crate::core::config::model::{
    ClusterSettings, DEFAULT_CLUSTER_INSTANCES, DEFAULT_CLUSTER_PREFIX, DEFAULT_CLUSTER_TIMEOUT, DEFAULT_LIVENESS_TTL,
    RedisPassword,
};
use crate::core::config::raw::RawCluster;
use crate::core::config::validate::admin::secret_file;
use crate::core::config::validate::ctx::Ctx;

/// Longest `instance` name, in bytes.
const MAX_INSTANCE: usize = 200;
/// Longest `prefix`, in bytes.
const MAX_PREFIX: usize = 64;

/// `[cluster]` checked, with defaults; `listeners` are the apps' listen
/// addresses and `reuse_port`, in order (the first names the instance by
/// default).
pub(crate) fn settings(
    raw: Option<Spanned<RawCluster>>,
    listeners: &[(SocketAddr, bool)],
    ctx: &Ctx<'_>,
) -> Result<Option<ClusterSettings>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let c = raw.into_inner();
    redis_url(&c.redis, ctx)?;
    let password = c
        .redis_password_file
        .as_ref()
        .map(|f| {
            let fix =
                "write the Redis password (printable ASCII) into it, e.g. `printf %s PASSWORD > FILE; chmod 600 FILE`";
            let bytes = secret_file(ctx, f, "cluster.redis_password_file", fix)?;
            // secret_file returns printable ASCII only.
            Ok(RedisPassword::new(String::from_utf8_lossy(&bytes).into_owned()))
        })
        .transpose()?;
    let (ca, cert_key) = tls_files(&c, ctx)?;
    let prefix = match &c.prefix {
        Some(p) => prefix(p, ctx)?,
        None => DEFAULT_CLUSTER_PREFIX.to_string(),
    };
    let instance = match &c.instance {
        Some(name) => instance_name(name, ctx)?,
        None => default_instance(listeners),
    };
    let instances = match &c.instances {
        Some(v) => ctx.positive(v, "cluster.instances".into())?,
        None => DEFAULT_CLUSTER_INSTANCES,
    };
    let timeout = c.timeout.as_ref().map_or(DEFAULT_CLUSTER_TIMEOUT, |t| t.get_ref().0);
    let liveness_ttl = c.liveness_ttl.as_ref().map_or(DEFAULT_LIVENESS_TTL, |t| t.get_ref().0);
    if liveness_ttl < Duration::from_secs(1) || liveness_ttl < timeout.saturating_mul(4) {
        let shown = humantime::format_duration(liveness_ttl);
        let msg = format!(
            "liveness_ttl {shown} is too short: it must be at least 1s and at least 4 x timeout ({}), as each instance refreshes its counts every third of it",
            humantime::format_duration(timeout)
        );
        // Point at the ttl if written, else at the timeout that outgrew its default.
        return Err(match (&c.liveness_ttl, &c.timeout) {
            (Some(v), _) => ctx.err(v.span(), "cluster.liveness_ttl", msg),
            (None, Some(t)) => ctx.err(t.span(), "cluster.timeout", format!("{msg}; set liveness_ttl too")),
            (None, None) => ctx.err_noline("cluster.liveness_ttl", msg),
        });
    }
    Ok(Some(ClusterSettings {
        redis: c.redis.into_inner(),
        password,
        ca,
        cert_key,
        prefix,
        instance,
        instances,
        timeout,
        liveness_ttl,
    }))
}

/// Checks `redis`: scheme, host, port, database, and nothing else.
fn redis_url(v: &Spanned<String>, ctx: &Ctx<'_>) -> Result<(), ConfigError> {
    let text = v.get_ref();
    let err = |m: String| ctx.err(v.span(), "cluster.redis", m);
    let form = "write redis://HOST:PORT (or rediss://HOST:PORT for TLS), optionally with /DB";
    let url = url::Url::parse(text).map_err(|e| err(format!("{text:?} is not a URL ({e}); {form}")))?;
    if !matches!(url.scheme(), "redis" | "rediss") {
        return Err(err(format!(
            "{text:?}: scheme {:?} is not redis or rediss; {form}",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(err(format!("{text:?} has no host; {form}")));
    }
    if url.password().is_some() {
        return Err(err(format!(
            "{text:?} holds a password; put it in redis_password_file instead (config files are often widely readable)"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(err(format!(
            "{text:?}: no query (?...) or fragment (#...) is accepted; {form}"
        )));
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() && db.parse::<u16>().is_err() {
        return Err(err(format!(
            "{text:?}: the path {db:?} is not a database number; {form}"
        )));
    }
    Ok(())
}

/// `redis_ca`, `redis_cert`, `redis_key`: resolved paths, for `rediss://` only.
type TlsFiles = (Option<PathBuf>, Option<(PathBuf, PathBuf)>);

fn tls_files(c: &RawCluster, ctx: &Ctx<'_>) -> Result<TlsFiles, ConfigError> {
    let tls = c.redis.get_ref().starts_with("rediss://");
    for (name, v) in [
        ("redis_ca", &c.redis_ca),
        ("redis_cert", &c.redis_cert),
        ("redis_key", &c.redis_key),
    ] {
        if let Some(v) = v
            && !tls
        {
            return Err(ctx.err(
                v.span(),
                format!("cluster.{name}"),
                format!("{name} is for TLS: write the redis URL as rediss://HOST:PORT, or remove {name}"),
            ));
        }
    }
    let path = |v: &Spanned<PathBuf>| ctx.resolve(v.get_ref().clone());
    let cert_key = match (&c.redis_cert, &c.redis_key) {
        (Some(cert), Some(key)) => Some((path(cert), path(key))),
        (None, None) => None,
        (Some(v), None) | (None, Some(v)) => {
            return Err(ctx.err(
                v.span(),
                "cluster.redis_cert",
                "redis_cert and redis_key go together (the client certificate and its key): set both or neither",
            ));
        }
    };
    Ok((c.redis_ca.as_ref().map(path), cert_key))
}

/// `prefix`: Redis key text without the hash tag's braces.
fn prefix(v: &Spanned<String>, ctx: &Ctx<'_>) -> Result<String, ConfigError> {
    let p = v.get_ref();
    let bad = |c: char| c.is_control() || c.is_whitespace() || c == '{' || c == '}';
    if p.is_empty() || p.len() > MAX_PREFIX || p.chars().any(bad) {
        return Err(ctx.err(
            v.span(),
            "cluster.prefix",
            format!(
                "{p:?}: write 1 to {MAX_PREFIX} bytes without spaces, braces or control characters, e.g. \"tlb-prod\" (one prefix per fleet sharing a Redis)"
            ),
        ));
    }
    Ok(p.clone())
}

fn instance_name(v: &Spanned<String>, ctx: &Ctx<'_>) -> Result<String, ConfigError> {
    let name = v.get_ref();
    if name.is_empty() || name.len() > MAX_INSTANCE || name.chars().any(char::is_control) {
        return Err(ctx.err(
            v.span(),
            "cluster.instance",
            format!(
                "{name:?}: write 1 to {MAX_INSTANCE} bytes without control characters, unique in the fleet (or leave it out: host name and listen address)"
            ),
        ));
    }
    Ok(name.clone())
}

/// The host name and the first listen address: `lb-a/0.0.0.0:8443`
/// (unique among live processes of one host, which cannot both bind it;
/// stable across restarts, so a restarted instance's refreshes overwrite
/// what its previous process left). With `reuse_port` several processes
/// bind it, so the process id follows: `lb-a/0.0.0.0:8443/pid=4242`
/// (what a restarted process's predecessor held is then forgotten within
/// `liveness_ttl`, as after a crash).
fn default_instance(listeners: &[(SocketAddr, bool)]) -> String {
    let host = host_name();
    match listeners.first() {
        Some((a, false)) => format!("{host}/{a}"),
        Some((a, true)) => format!("{host}/{a}/pid={}", std::process::id()),
        None => host,
    }
}

/// This machine's host name (Linux: the kernel's; else `HOSTNAME`), or
/// `localhost`.
fn host_name() -> String {
    let from_kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let name = from_kernel
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = name.trim().chars().filter(|c| !c.is_control()).take(100).collect();
    if name.is_empty() { "localhost".into() } else { name }
}
