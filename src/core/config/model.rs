//! The typed `tlb.toml` model: what a loaded, validated config is.
//!
//! Promises: every value here is already defaulted and checked (ranges,
//! addresses resolved, paths made relative to the config's directory), so
//! the rest of tlb never re-validates; the admin token is kept only as its
//! SHA-256 and is never shown, nor is the Redis password.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// How often the certificate watcher reads the TLS files again (and
    /// loads a changed, coherent set); `None`: no watching.
    pub watch: Option<Duration>,
    /// Warn this long before a loaded certificate expires (zero: never).
    pub expiry_warning: Duration,
}

/// Default `[tls] session_lifetime`.
pub const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(3600);

/// Shortest `[tls] watch` interval.
pub const MIN_WATCH: Duration = Duration::from_secs(1);

/// Default `[tls] expiry_warning`: 14 days.
pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

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

/// `[control]`: the Unix socket through which `tlb serve --upgrade` takes
/// the listening sockets over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlSettings {
    /// Resolved against the config file's directory.
    pub socket: PathBuf,
}

/// `[cluster]`: per-client limits shared by several instances through Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `redis://HOST[:PORT][/DB]` or `rediss://...` (TLS), as written.
    pub redis: String,
    /// From `redis_password_file`: the password sent with `AUTH`.
    pub password: Option<RedisPassword>,
    /// `redis_ca`: the CA that verifies a `rediss://` server (else the
    /// system's trust store).
    pub ca: Option<PathBuf>,
    /// `redis_cert` + `redis_key`: this instance's client certificate
    /// towards a `rediss://` server that requires one.
    pub cert_key: Option<(PathBuf, PathBuf)>,
    /// `prefix`: the first part of every key (two fleets on one Redis use
    /// two prefixes).
    pub prefix: String,
    /// This instance's name in the shared counts (unique in the fleet).
    pub instance: String,
    /// Expected fleet size: while Redis is unreachable each instance
    /// enforces `limit / instances` (at least 1).
    pub instances: u32,
    /// Longest wait for any one Redis call on the data path.
    pub timeout: Duration,
    /// How long after its last refresh an instance's counts are forgotten.
    pub liveness_ttl: Duration,
}

impl ClusterSettings {
    /// Instance `instance` on `redis` with every other key at its default
    /// (no password, no TLS files, fleet of 1), as `[cluster] redis =
    /// REDIS` and `instance = INSTANCE` alone would give.
    pub fn new(redis: impl Into<String>, instance: impl Into<String>) -> ClusterSettings {
        ClusterSettings {
            redis: redis.into(),
            password: None,
            ca: None,
            cert_key: None,
            prefix: DEFAULT_CLUSTER_PREFIX.to_string(),
            instance: instance.into(),
            instances: DEFAULT_CLUSTER_INSTANCES,
            timeout: DEFAULT_CLUSTER_TIMEOUT,
            liveness_ttl: DEFAULT_LIVENESS_TTL,
        }
    }
}

/// Default `[cluster] prefix`.
pub const DEFAULT_CLUSTER_PREFIX: &str = "tlb";
/// Default `[cluster] instances`.
pub const DEFAULT_CLUSTER_INSTANCES: u32 = 1;
/// Default `[cluster] timeout`.
pub const DEFAULT_CLUSTER_TIMEOUT: Duration = Duration::from_millis(20);
/// Default `[cluster] liveness_ttl`.
pub const DEFAULT_LIVENESS_TTL: Duration = Duration::from_secs(5);

/// The Redis password, never shown (not even by `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisPassword(String);

impl RedisPassword {
    pub fn new(password: String) -> RedisPassword {
        RedisPassword(password)
    }

    /// The password itself, to send to Redis.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RedisPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RedisPassword(..)")
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

impl Default for HealthSettings {
    /// What an empty `[app.health]` table means: a TCP connect every 5 s,
    /// 1 s timeout, back after 2 good checks, out after 3 failures.
    fn default() -> Self {
        HealthSettings {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            send: Vec::new(),
            expect: Vec::new(),
        }
    }
}

/// `[app.upstream_tls]`: TLS (optionally mutual) towards the upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// SNI to send and name to verify; `None`: each upstream's host as
    /// written (a DNS name, or an IP address checked against IP SANs).
    pub server_name: Option<String>,
    /// Lowest TLS version offered to the upstreams (default 1.2: TLS 1.3
    /// and 1.2, as arbitrary upstreams may still need).
    pub min_version: TlsVersion,
}

/// `[[app]] mode`: what the gate does with a client the `[[client]]`
/// policy would refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppMode {
    /// Refuse it (the default).
    #[default]
    Enforce,
    /// Admit it, log it once and count it (`tlb_audit_denied_total`): for
    /// rolling a policy out. Certificate errors (unknown CA, expired,
    /// revoked, wrong trust domain) are refused in both modes.
    Audit,
}

/// `[[trust_domain]]`: the CA that alone may issue SPIFFE IDs of one
/// trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustDomain {
    /// The trust domain (`prod.example` in `spiffe://prod.example/...`).
    pub name: String,
    pub ca: PathBuf,
    pub crl: Option<PathBuf>,
}

/// What a `[[client]]` entry matches in a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMatch {
    /// The subject CN equals the entry's `name` (the default).
    Cn,
    /// A URI SAN equals this (a SPIFFE ID, or another URI).
    Uri(String),
    /// A DNS SAN equals this (lower case).
    Dns(String),
}

impl ClientMatch {
    /// The SPIFFE trust domain of a `spiffe://` URI match.
    pub fn trust_domain(&self) -> Option<&str> {
        match self {
            ClientMatch::Uri(u) => spiffe_trust_domain(u),
            _ => None,
        }
    }
}

/// The trust domain of a SPIFFE ID (`spiffe://DOMAIN/...`); `None` for
/// another URI.
pub fn spiffe_trust_domain(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("spiffe://")?;
    Some(rest.split_once('/').map_or(rest, |(d, _)| d))
}

/// One upstream address, as written and as resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAddr {
    /// As written in the config (used as its name in logs and metrics).
    pub name: String,
    pub addr: SocketAddr,
}

/// `proxy_protocol`: which PROXY protocol header upstreams receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// `"v1"`: the text header, addresses only.
    V1,
    /// `"v2"`: the binary header with the TLS and identity TLVs.
    V2,
}

impl ProxyProtocol {
    /// As written in `tlb.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }
    }
}

/// `[[app]]`: a group of upstreams reached through one listener (+ SNI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub name: String,
    pub listen: SocketAddr,
    /// Lower-cased SNI names; empty = the listener's default app.
    pub server_names: Vec<String>,
    pub upstreams: Vec<UpstreamAddr>,
    /// The PROXY protocol header sent first on every upstream connection
    /// (`None`: none).
    pub proxy_protocol: Option<ProxyProtocol>,
    /// With [`ProxyProtocol::V2`]: the client certificate (DER) goes in the
    /// header too (TLV 0xE2).
    pub proxy_protocol_cert: bool,
    /// SO_REUSEPORT on the listener: other processes that set it too
    /// (other tlb instances on this host) may bind the same address, and
    /// the kernel spreads new connections over them.
    pub reuse_port: bool,
    pub mode: AppMode,
    pub health: Option<HealthSettings>,
    pub upstream_tls: Option<UpstreamTls>,
}

/// `[[client]]`: an identity and what it may reach.
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    /// The label in logs, metrics and limits; the CN to match unless
    /// `matches` says otherwise.
    pub name: String,
    pub matches: ClientMatch,
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
    /// `[control]`; `None`: no control socket (no `--upgrade` hand-off).
    pub control: Option<ControlSettings>,
    /// `[cluster]`; `None`: every limit is this instance's alone.
    pub cluster: Option<ClusterSettings>,
    pub limits: GlobalLimits,
    pub defaults: Limits,
    pub timeouts: Timeouts,
    pub apps: Vec<App>,
    pub clients: Vec<Client>,
    /// `[[trust_domain]]`s; empty: `[tls] ca` is the one trust domain.
    pub trust_domains: Vec<TrustDomain>,
}

impl Config {
    /// The app called `name`.
    pub fn app(&self, name: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.name == name)
    }

    /// The client whose identity is `name`.
    pub fn client(&self, name: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.name == name)
    }

    /// Distinct listen addresses with their `reuse_port` (apps sharing an
    /// address agree on it), in the order apps name them.
    pub fn listen_sockets(&self) -> Vec<(SocketAddr, bool)> {
        let mut out: Vec<(SocketAddr, bool)> = Vec::new();
        for app in &self.apps {
            if !out.iter().any(|(a, _)| *a == app.listen) {
                out.push((app.listen, app.reuse_port));
            }
        }
        out
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
