//! The `tlb.toml` model (SPEC §2): typed, defaulted, validated.
//!
//! [`Config::load`] reads a file, [`Config::parse`] a string. Every problem is a
//! [`ConfigError`] that names the file, the 1-based line and the key, so a user
//! can go straight to it. Relative paths in the file are resolved against the
//! directory that holds the config file. Upstream host names are resolved when
//! the config is loaded (and again on each reload), not per connection.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// A problem in a config file, located by file, line and key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The config file as the user named it.
    pub file: PathBuf,
    /// 1-based line of the offending key or value (0 when unknown).
    pub line: usize,
    /// Dotted key path, e.g. `app[1].upstreams`.
    pub key: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Lowest TLS version the listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 (AEAD + ECDHE suites only) and 1.3.
    V1_2,
    /// TLS 1.3 only (the default).
    V1_3,
}

/// `[tls]`: the listener's certificate and the trust root for clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub crl: Option<PathBuf>,
    pub min_version: TlsVersion,
    /// How long a TLS session may be resumed after the full handshake that
    /// created it (zero: no resumption). Never beyond what the gate admits:
    /// every resumption is decided again (validity now, CRL, policy).
    pub session_lifetime: Duration,
    /// A reload leaves open connections of identities it no longer admits
    /// alone (and an open connection is not closed at certificate expiry).
    pub keep_deauthorized: bool,
}

/// Default `[tls] session_lifetime`.
pub const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(3600);

/// `[limits]`: caps applied at accept, before any TLS work (flood resistance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalLimits {
    /// Concurrent client connections, all listeners together; `None`: derived
    /// from the open-file limit when the server starts.
    pub max_connections: Option<u32>,
    /// TLS handshakes in progress, all listeners together.
    pub max_handshakes: u32,
    /// TLS handshakes in progress from one source IP address.
    pub max_handshakes_per_ip: u32,
}

impl Default for GlobalLimits {
    fn default() -> Self {
        GlobalLimits {
            max_connections: None,
            max_handshakes: 1024,
            max_handshakes_per_ip: 64,
        }
    }
}

/// `[admin]`: the plain-HTTP admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// From `token_file`: the bearer token `/metrics` and `/status` require.
    pub token: Option<AdminToken>,
}

/// The admin bearer token, kept only as its SHA-256 (never shown, not even
/// by `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken([u8; 32]);

impl AdminToken {
    pub fn new(token: &[u8]) -> AdminToken {
        let mut out = [0u8; 32];
        out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token).as_ref());
        AdminToken(out)
    }

    /// Whether `presented` is the token, in constant time (digests of equal
    /// length are compared, so not even the token's length leaks).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, presented);
        aws_lc_rs::constant_time::verify_slices_are_equal(d.as_ref(), &self.0).is_ok()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Per-client limits (`[defaults]`, overridable per `[[client]]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Concurrent connections per client identity, across all apps.
    pub max_connections: u32,
    /// New connections per second (token-bucket refill rate).
    pub connection_rate: f64,
    /// Token-bucket capacity.
    pub burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10,
            connection_rate: 20.0,
            burst: 40,
        }
    }
}

/// `[timeouts]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP accept to TLS handshake done.
    pub handshake: Duration,
    /// Connecting to an upstream (all retries together).
    pub connect: Duration,
    /// No bytes either way.
    pub idle: Duration,
    /// On SIGTERM/SIGINT: how long established connections may finish.
    pub drain: Duration,
    /// Optional: any connection older than this is closed.
    pub max_lifetime: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: Duration::from_secs(5),
            connect: Duration::from_secs(2),
            idle: Duration::from_secs(600),
            drain: Duration::from_secs(30),
            max_lifetime: None,
        }
    }
}

/// `[app.health]`: active checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub send: Vec<u8>,
    pub expect: Vec<u8>,
}

/// `[app.upstream_tls]`: TLS (optionally mutual) towards the upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

/// One upstream address, as written and as resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAddr {
    /// As written in the config (used as its name in logs and metrics).
    pub name: String,
    pub addr: SocketAddr,
}

/// `[[app]]`: a group of upstreams reached through one listener (+ SNI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub name: String,
    pub listen: SocketAddr,
    /// Lower-cased SNI names; empty = the listener's default app.
    pub server_names: Vec<String>,
    pub upstreams: Vec<UpstreamAddr>,
    pub proxy_protocol: bool,
    pub health: Option<HealthSettings>,
    pub upstream_tls: Option<UpstreamTls>,
}

/// `[[client]]`: an identity (certificate CN) and what it may reach.
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    pub name: String,
    pub apps: Vec<String>,
    pub limits: Limits,
    /// SHA-256 of the client's SubjectPublicKeyInfo, if pinned.
    pub spki_sha256: Option<[u8; 32]>,
}

/// A whole, validated `tlb.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from (for messages and reloads).
    pub path: PathBuf,
    pub tls: TlsSettings,
    pub admin: Option<AdminSettings>,
    pub limits: GlobalLimits,
    pub defaults: Limits,
    pub timeouts: Timeouts,
    pub apps: Vec<App>,
    pub clients: Vec<Client>,
}

impl Config {
    /// Reads and validates `path`. A missing file is reported with the fix.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let message = if e.kind() == std::io::ErrorKind::NotFound {
                "file not found; run `tlb pki init` to create one, or pass --config FILE".to_string()
            } else {
                format!("cannot read: {e}")
            };
            ConfigError {
                file: path.to_path_buf(),
                line: 0,
                key: String::new(),
                message,
            }
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is used for messages and to
    /// resolve relative paths (against its parent directory).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span();
            let line = span.as_ref().map(|s| line_of(text, s.start)).unwrap_or(0);
            let key = span
                .map(|s| key_path_at(text, s.clone(), e.message()).unwrap_or_else(|| key_at(text, s)))
                .unwrap_or_default();
            ConfigError {
                file: path.to_path_buf(),
                line,
                key,
                message: e.message().trim().replace('\n', " "),
            }
        })?;
        let ctx = Ctx { text, path };
        raw.validate(&ctx)
    }

    /// The app called `name`.
    pub fn app(&self, name: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.name == name)
    }

    /// The client whose identity is `name`.
    pub fn client(&self, name: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.name == name)
    }

    /// Distinct listen addresses, in the order apps name them.
    pub fn listeners(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for app in &self.apps {
            if !out.contains(&app.listen) {
                out.push(app.listen);
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Raw (as-written) structures, with spans for error messages.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    tls: RawTls,
    admin: Option<RawAdmin>,
    #[serde(default)]
    limits: RawGlobalLimits,
    #[serde(default)]
    defaults: Option<Spanned<RawLimits>>,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default, rename = "app")]
    apps: Vec<Spanned<RawApp>>,
    #[serde(default, rename = "client")]
    clients: Vec<Spanned<RawClient>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    crl: Option<PathBuf>,
    min_version: Option<Spanned<String>>,
    session_lifetime: Option<Spanned<HumanDurationOrZero>>,
    #[serde(default)]
    keep_deauthorized: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGlobalLimits {
    max_connections: Option<Spanned<i64>>,
    max_handshakes: Option<Spanned<i64>>,
    max_handshakes_per_ip: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Spanned<String>,
    token_file: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<Spanned<i64>>,
    connection_rate: Option<Spanned<f64>>,
    burst: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    handshake: Option<HumanDuration>,
    connect: Option<HumanDuration>,
    idle: Option<HumanDuration>,
    drain: Option<HumanDuration>,
    max_lifetime: Option<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: Spanned<String>,
    listen: Spanned<String>,
    #[serde(default)]
    server_names: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    upstreams: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    proxy_protocol: bool,
    health: Option<Spanned<RawHealth>>,
    upstream_tls: Option<Spanned<RawUpstreamTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    interval: Option<Spanned<HumanDuration>>,
    timeout: Option<Spanned<HumanDuration>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    #[serde(default)]
    send: String,
    #[serde(default)]
    expect: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    ca: PathBuf,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: Spanned<String>,
    #[serde(default)]
    apps: Vec<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    connection_rate: Option<Spanned<f64>>,
    burst: Option<Spanned<i64>>,
    spki_sha256: Option<Spanned<String>>,
}

/// A human duration (`500ms`, `5s`, `10m`), greater than zero.
struct HumanDuration(Duration);

/// A human duration that may be zero (`"0s"` turns a feature off).
struct HumanDurationOrZero(Duration);

/// Longest duration accepted anywhere in the config: 100 years, so that
/// adding it to "now" can never overflow.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

fn parse_human<E: serde::de::Error>(s: &str) -> Result<Duration, E> {
    let dur = humantime::parse_duration(s.trim()).map_err(|e| {
        E::custom(format!(
            "invalid duration {s:?} ({e}); write e.g. \"500ms\", \"5s\", \"10m\""
        ))
    })?;
    if dur > MAX_DURATION {
        return Err(E::custom(format!(
            "duration {s:?} is too long; the maximum is 100 years"
        )));
    }
    Ok(dur)
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let dur = parse_human(&s)?;
        if dur.is_zero() {
            return Err(serde::de::Error::custom("duration must be greater than zero"));
        }
        Ok(HumanDuration(dur))
    }
}

impl<'de> Deserialize<'de> for HumanDurationOrZero {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_human(&s).map(HumanDurationOrZero)
    }
}

// ---------------------------------------------------------------------------
// Validation.

struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            line: line_of(self.text, span.start),
            key: key.into(),
            message: message.into(),
        }
    }

    fn err_noline(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            line: 0,
            key: key.into(),
            message: message.into(),
        }
    }

    fn resolve(&self, p: PathBuf) -> PathBuf {
        if p.is_absolute() {
            return p;
        }
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
            _ => p,
        }
    }

    fn positive(&self, v: &Spanned<i64>, key: String) -> Result<u32, ConfigError> {
        let n = *v.get_ref();
        if n < 1 || n > i64::from(u32::MAX) {
            return Err(self.err(
                v.span(),
                key,
                format!("must be a whole number from 1 to {}, got {n}", u32::MAX),
            ));
        }
        Ok(n as u32)
    }

    fn rate(&self, v: &Spanned<f64>, key: String) -> Result<f64, ConfigError> {
        let r = *v.get_ref();
        if !(r.is_finite() && r > 0.0) {
            return Err(self.err(
                v.span(),
                key,
                format!("must be a positive number of connections per second, got {r}"),
            ));
        }
        Ok(r)
    }

    fn limits(
        &self,
        base: Limits,
        prefix: &str,
        mc: &Option<Spanned<i64>>,
        rate: &Option<Spanned<f64>>,
        burst: &Option<Spanned<i64>>,
    ) -> Result<Limits, ConfigError> {
        let mut out = base;
        if let Some(v) = mc {
            out.max_connections = self.positive(v, format!("{prefix}max_connections"))?;
        }
        if let Some(v) = rate {
            out.connection_rate = self.rate(v, format!("{prefix}connection_rate"))?;
        }
        if let Some(v) = burst {
            out.burst = self.positive(v, format!("{prefix}burst"))?;
        }
        Ok(out)
    }
}

/// Reads `[admin] token_file` (resolved like every path): one token of
/// printable ASCII, trailing whitespace trimmed, at most 4 KiB. A file every
/// user may read is accepted with a warning.
fn admin_token(ctx: &Ctx<'_>, file: &Spanned<PathBuf>) -> Result<AdminToken, ConfigError> {
    use std::io::Read;
    const MAX: u64 = 4096;
    let path = ctx.resolve(file.get_ref().clone());
    let shown = path.display();
    let fix = "write one random token into it, e.g. `openssl rand -hex 32 > FILE; chmod 600 FILE`";
    let err = |m: String| ctx.err(file.span(), "admin.token_file", m);
    let cannot = |e: std::io::Error| err(format!("cannot read {shown}: {e}; fix the path or {fix}"));
    let f = std::fs::File::open(&path).map_err(cannot)?;
    let mode = f.metadata().map_err(cannot)?.permissions();
    let mut bytes = Vec::new();
    // Bounded: a wrong path (a device, a log) must not fill memory.
    f.take(MAX + 1).read_to_end(&mut bytes).map_err(cannot)?;
    let token = bytes.trim_ascii_end();
    if token.is_empty() {
        return Err(err(format!("{shown} is empty; {fix}")));
    }
    if bytes.len() as u64 > MAX {
        return Err(err(format!("{shown} is longer than {MAX} bytes; {fix}")));
    }
    if !token.iter().all(u8::is_ascii_graphic) {
        return Err(err(format!(
            "{shown} holds spaces, line breaks, control or non-ASCII characters, which cannot travel in an Authorization header; {fix}"
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if mode.mode() & 0o004 != 0 {
            tracing::warn!(
                "{}: [admin] token_file {shown} is readable by every user (mode {:o}); run `chmod 600 {shown}`",
                ctx.path.display(),
                mode.mode() & 0o777
            );
        }
    }
    #[cfg(not(unix))]
    let _ = mode;
    Ok(AdminToken::new(token))
}

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

impl RawConfig {
    fn validate(self, ctx: &Ctx<'_>) -> Result<Config, ConfigError> {
        let min_version = match &self.tls.min_version {
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
        let tls = TlsSettings {
            ca: ctx.resolve(self.tls.ca),
            cert: ctx.resolve(self.tls.cert),
            key: ctx.resolve(self.tls.key),
            crl: self.tls.crl.map(|p| ctx.resolve(p)),
            min_version,
            session_lifetime: self
                .tls
                .session_lifetime
                .as_ref()
                .map_or(DEFAULT_SESSION_LIFETIME, |d| d.get_ref().0),
            keep_deauthorized: self.tls.keep_deauthorized,
        };
        let gl = GlobalLimits::default();
        let l = &self.limits;
        let limits = GlobalLimits {
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
        };

        let admin_span = self.admin.as_ref().map(|a| a.listen.span());
        let admin = match self.admin {
            None => None,
            Some(a) => Some(AdminSettings {
                listen: a.listen.get_ref().parse().map_err(|_| {
                    ctx.err(
                        a.listen.span(),
                        "admin.listen",
                        format!("{:?} is not an IP:PORT address", a.listen.get_ref()),
                    )
                })?,
                token: a.token_file.as_ref().map(|f| admin_token(ctx, f)).transpose()?,
            }),
        };

        let defaults = match &self.defaults {
            None => Limits::default(),
            Some(d) => {
                let d = d.get_ref();
                ctx.limits(
                    Limits::default(),
                    "defaults.",
                    &d.max_connections,
                    &d.connection_rate,
                    &d.burst,
                )?
            }
        };

        let td = Timeouts::default();
        let timeouts = Timeouts {
            handshake: self.timeouts.handshake.map_or(td.handshake, |d| d.0),
            connect: self.timeouts.connect.map_or(td.connect, |d| d.0),
            idle: self.timeouts.idle.map_or(td.idle, |d| d.0),
            drain: self.timeouts.drain.map_or(td.drain, |d| d.0),
            max_lifetime: self.timeouts.max_lifetime.map(|d| d.0),
        };

        if self.apps.is_empty() {
            return Err(ctx.err_noline(
                "app",
                "no [[app]] defined; add at least one with a name, listen and upstreams",
            ));
        }

        let mut apps: Vec<App> = Vec::with_capacity(self.apps.len());
        let mut app_spans: HashMap<String, Range<usize>> = HashMap::new();
        // Per app (by index): the span of `server_names` (or of `name` when
        // absent) and the span of each server name, for the listener checks.
        let mut sni_spans: Vec<(Range<usize>, Vec<Range<usize>>)> = Vec::with_capacity(self.apps.len());
        for (i, sapp) in self.apps.into_iter().enumerate() {
            let app_span = sapp.span();
            let raw = sapp.into_inner();
            let k = |field: &str| format!("app[{i}].{field}");
            let name = raw.name.get_ref().trim().to_string();
            if name.is_empty() {
                return Err(ctx.err(raw.name.span(), k("name"), "app name must not be empty"));
            }
            if let Some(prev) = app_spans.get(&name) {
                return Err(ctx.err(
                    raw.name.span(),
                    k("name"),
                    format!(
                        "duplicate app name {name:?} (first defined at line {}); app names must be unique",
                        line_of(ctx.text, prev.start)
                    ),
                ));
            }
            app_spans.insert(name.clone(), raw.name.span());
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
            let ups = match &raw.upstreams {
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
            sni_spans.push((list_span, name_spans));
            let health = match raw.health {
                None => None,
                Some(h) => {
                    let span = h.span();
                    let h = h.into_inner();
                    let rise = h
                        .rise
                        .as_ref()
                        .map(|v| ctx.positive(v, k("health.rise")))
                        .transpose()?
                        .unwrap_or(2);
                    let fall = h
                        .fall
                        .as_ref()
                        .map(|v| ctx.positive(v, k("health.fall")))
                        .transpose()?
                        .unwrap_or(3);
                    let interval = h.interval.as_ref().map_or(Duration::from_secs(5), |d| d.get_ref().0);
                    let timeout = h.timeout.as_ref().map_or(Duration::from_secs(1), |d| d.get_ref().0);
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
                    Some(HealthSettings {
                        interval,
                        timeout,
                        rise,
                        fall,
                        send: h.send.into_bytes(),
                        expect: h.expect.into_bytes(),
                    })
                }
            };
            let upstream_tls = match raw.upstream_tls {
                None => None,
                Some(t) => {
                    let span = t.span();
                    let t = t.into_inner();
                    if t.cert.is_some() != t.key.is_some() {
                        return Err(ctx.err(
                            span,
                            k("upstream_tls"),
                            "set both cert and key (for mTLS to upstreams) or neither",
                        ));
                    }
                    Some(UpstreamTls {
                        ca: ctx.resolve(t.ca),
                        cert: t.cert.map(|p| ctx.resolve(p)),
                        key: t.key.map(|p| ctx.resolve(p)),
                        server_name: t.server_name,
                    })
                }
            };
            apps.push(App {
                name,
                listen,
                server_names,
                upstreams,
                proxy_protocol: raw.proxy_protocol,
                health,
                upstream_tls,
            });
        }

        // Apps sharing a listener must be told apart by SNI: at most one
        // default (no server_names) app, and no name claimed twice.
        let mut by_listener: HashMap<SocketAddr, Vec<usize>> = HashMap::new();
        for (i, a) in apps.iter().enumerate() {
            by_listener.entry(a.listen).or_default().push(i);
        }
        for idxs in by_listener.values().filter(|v| v.len() > 1) {
            let mut default_app: Option<&str> = None;
            let mut claimed: HashMap<&str, &str> = HashMap::new();
            for &i in idxs {
                let a = &apps[i];
                let (span, name_spans) = &sni_spans[i];
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

        let mut clients: Vec<Client> = Vec::with_capacity(self.clients.len());
        let mut seen: HashSet<String> = HashSet::new();
        for (i, sc) in self.clients.into_iter().enumerate() {
            let raw = sc.into_inner();
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
            let mut allowed = Vec::with_capacity(raw.apps.len());
            for a in &raw.apps {
                let an = a.get_ref().trim();
                if !app_spans.contains_key(an) {
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
            let limits = ctx.limits(
                defaults,
                &format!("client[{i}]."),
                &raw.max_connections,
                &raw.connection_rate,
                &raw.burst,
            )?;
            let spki_sha256 = match &raw.spki_sha256 {
                None => None,
                Some(s) => {
                    let hexs: String = s.get_ref().chars().filter(|c| *c != ':').collect();
                    let mut out = [0u8; 32];
                    hex::decode_to_slice(hexs.trim(), &mut out).map_err(|_| {
                        ctx.err(
                            s.span(),
                            k("spki_sha256"),
                            "must be 64 hex digits (SHA-256 of the client's public key; `tlb pki show` prints it)",
                        )
                    })?;
                    Some(out)
                }
            };
            clients.push(Client {
                name,
                apps: allowed,
                limits,
                spki_sha256,
            });
        }

        if let (Some(a), Some(span)) = (&admin, admin_span)
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

        Ok(Config {
            path: ctx.path.to_path_buf(),
            tls,
            admin,
            limits,
            defaults,
            timeouts,
            apps,
            clients,
        })
    }
}

/// 1-based line number of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The dotted key path (e.g. `app[1].upstreams`) of the entry under `span`
/// in the document: the key whose name or value the span starts in. For a
/// "missing field" error on a table, that field is appended to the table's
/// path. `None` when the text does not parse or nothing matches.
fn key_path_at(text: &str, span: Range<usize>, message: &str) -> Option<String> {
    use toml::de::{DeTable, DeValue};

    fn walk(table: &DeTable<'_>, at: usize, prefix: &str) -> Option<(String, bool)> {
        let mut table_hit: Option<(String, bool)> = None;
        for (k, v) in table.iter() {
            let path = format!("{prefix}{}", k.get_ref());
            if k.span().contains(&at) {
                return Some((path, false));
            }
            match v.get_ref() {
                DeValue::Table(t) => {
                    if let Some(hit) = walk(t, at, &format!("{path}.")) {
                        return Some(hit);
                    }
                    if v.span().contains(&at) {
                        table_hit = Some((path, true));
                    }
                }
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let DeValue::Table(t) = item.get_ref() {
                            let item_path = format!("{path}[{i}]");
                            if let Some(hit) = walk(t, at, &format!("{item_path}.")) {
                                return Some(hit);
                            }
                            if item.span().contains(&at) {
                                table_hit = Some((item_path, true));
                            }
                        }
                    }
                    if v.span().contains(&at) {
                        return Some((path, false));
                    }
                }
                _ if v.span().contains(&at) => return Some((path, false)),
                _ => {}
            }
        }
        table_hit
    }

    let doc = DeTable::parse(text).ok()?;
    let (mut path, is_table) = walk(doc.get_ref(), span.start, "")?;
    if is_table
        && let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
    {
        path = format!("{path}.{field}");
    }
    Some(path)
}

/// The key text under a span, when it looks like a bare key.
fn key_at(text: &str, span: Range<usize>) -> String {
    let s = text.get(span).unwrap_or("").trim();
    if !s.is_empty()
        && s.len() < 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        s.to_string()
    } else {
        String::new()
    }
}

/// A working `tlb.toml` for a PKI at `pki_dir` (as the config should spell
/// it) and the given clients: app `echo` on 127.0.0.1:8443 over
/// 127.0.0.1:9001-9003 (`tlb upstream --count 3`). Every client but the last
/// is authorized; the last (client4 by default) is left out on purpose, so the
/// default-deny path can be seen. With a single client, it is authorized.
pub fn example_toml(pki_dir: &str, clients: &[String]) -> String {
    let p = pki_dir.trim_end_matches('/');
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut s = format!(
        r#"# tlb configuration (see the README's "Configuration" and "The gate").
# Paths are relative to this file's directory.

[tls]
ca   = {ca}           # trust root for client certificates
cert = {cert}
key  = {key}
crl  = {crl}           # revoked client certificates are refused
# min_version = "1.3"        # default: TLS 1.3 only; "1.2" also allows TLS 1.2 (AEAD + ECDHE)
# session_lifetime = "1h"    # resumption window; each resumption is re-checked (validity, CRL, policy); "0s" = off
# keep_deauthorized = false  # true: a reload leaves open connections of revoked/removed identities alone

# [limits]                   # caps at accept, before any TLS work (flood resistance)
# max_connections = 9000     # default: derived from the open-file limit
# max_handshakes = 1024
# max_handshakes_per_ip = 64

# [admin]
# listen = "127.0.0.1:9090"  # plain-HTTP admin: /metrics /healthz /status

[defaults]                   # per-client limits unless a [[client]] overrides them
max_connections = 10         # concurrent connections per client identity
connection_rate = 20         # new connections per second (token bucket)
burst = 40

[timeouts]
handshake = "5s"             # TCP accept -> TLS handshake done
connect   = "2s"             # to an upstream, retries included
idle      = "10m"            # no bytes either way
drain     = "30s"            # SIGTERM/SIGINT: grace period for open connections
# max_lifetime = "24h"       # optional: close any connection older than this

[[app]]
name = "echo"
listen = "127.0.0.1:8443"
server_names = []            # SNI names that select this app on a shared listener
upstreams = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
# Without [app.health]: passive circuit breaker only (3 failed connects eject
# an upstream; half-open retry after 1 s, doubling up to 60 s).
#  [app.health]              # active checks
#  interval = "5s"
#  timeout  = "1s"
#  rise = 2                  # consecutive good checks to return
#  fall = 3                  # consecutive failures (checks or traffic) to eject
#  send = "ping\n"           # optional: send/expect instead of a TCP connect
#  expect = "ping"
"#,
        ca = q(&format!("{p}/ca.crt")),
        cert = q(&format!("{p}/server.crt")),
        key = q(&format!("{p}/server.key")),
        crl = q(&format!("{p}/crl.pem")),
    );
    let allowed = if clients.len() > 1 {
        &clients[..clients.len() - 1]
    } else {
        clients
    };
    for c in allowed {
        s.push_str(&format!("\n[[client]]\nname = {}\napps = [\"echo\"]\n", q(c)));
    }
    if let (true, Some(last)) = (clients.len() > 1, clients.last()) {
        s.push_str(&format!(
            "\n# {last} has a valid certificate but no [[client]] entry: it is refused during the handshake.\n"
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_of_counts_from_one() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 4), 3);
    }

    #[test]
    fn socket_addr_without_port_is_explained() {
        let e = parse_socket_addr("localhost").unwrap_err();
        assert!(e.contains("no port"), "{e}");
    }
}
