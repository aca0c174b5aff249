//! [`ConfigWriter`]: the one typed generator of `tlb.toml` text. pki init's
//! sample, the lab's config, the tests' configs and (checked by a test) the
//! bench scripts' config are all built with it.
//!
//! Promises: a key is written only when it is set (so the file says what
//! was asked and nothing else); sections come in one fixed order (`[tls]`,
//! `[limits]`, `[defaults]`, `[timeouts]`, `[admin]`, `[cluster]`, `[[app]]`,
//! `[[trust_domain]]`, `[[client]]`); a whole document is the concatenation of its sections'
//! `Display` texts; and with valid addresses and existing paths, what it
//! renders loads with `Config::parse`. The text itself is made in `render`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::core::config::model::{AppMode, Limits, ProxyProtocol, Timeouts, TlsVersion};

/// A `tlb.toml` under construction; [`ConfigWriter::render`] makes its text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigWriter {
    pub(crate) annotated: bool,
    pub(crate) header: Vec<String>,
    pub(crate) tls: Option<TlsSection>,
    pub(crate) limits: Option<GlobalLimitsSection>,
    pub(crate) defaults: Option<LimitsSection>,
    pub(crate) timeouts: Option<TimeoutsSection>,
    pub(crate) admin: Option<AdminSection>,
    pub(crate) control: Option<String>,
    pub(crate) cluster: Option<ClusterSection>,
    pub(crate) apps: Vec<AppSection>,
    pub(crate) trust_domains: Vec<TrustDomainSection>,
    pub(crate) clients: Vec<ClientSection>,
    pub(crate) footer: Vec<String>,
}

impl ConfigWriter {
    /// A config with `[tls]` and nothing else yet.
    pub fn new(tls: TlsSection) -> ConfigWriter {
        ConfigWriter {
            tls: Some(tls),
            ..ConfigWriter::default()
        }
    }

    /// No section at all: for completing an excerpt (it alone does not load).
    pub fn empty() -> ConfigWriter {
        ConfigWriter::default()
    }

    /// Explain every key with a comment, and show what is left out (optional
    /// keys, whole sections) as commented-out examples: for a file a person
    /// reads and edits, like the one `tlb pki init` writes.
    pub fn annotated(mut self) -> ConfigWriter {
        self.annotated = true;
        self
    }

    /// A `# line` at the top of the file.
    pub fn comment(mut self, line: impl Into<String>) -> ConfigWriter {
        self.header.push(line.into());
        self
    }

    /// A `# line` at the end of the file.
    pub fn footer(mut self, line: impl Into<String>) -> ConfigWriter {
        self.footer.push(line.into());
        self
    }

    /// Replaces `[tls]`.
    pub fn tls(mut self, tls: TlsSection) -> ConfigWriter {
        self.tls = Some(tls);
        self
    }

    pub fn limits(mut self, limits: GlobalLimitsSection) -> ConfigWriter {
        self.limits = Some(limits);
        self
    }

    pub fn defaults(mut self, defaults: LimitsSection) -> ConfigWriter {
        self.defaults = Some(defaults);
        self
    }

    pub fn timeouts(mut self, timeouts: TimeoutsSection) -> ConfigWriter {
        self.timeouts = Some(timeouts);
        self
    }

    /// `[control] socket = PATH`.
    pub fn control(mut self, socket: &str) -> ConfigWriter {
        self.control = Some(socket.to_string());
        self
    }

    pub fn admin(mut self, admin: AdminSection) -> ConfigWriter {
        self.admin = Some(admin);
        self
    }

    pub fn cluster(mut self, cluster: ClusterSection) -> ConfigWriter {
        self.cluster = Some(cluster);
        self
    }

    /// One more `[[app]]`.
    pub fn app(mut self, app: AppSection) -> ConfigWriter {
        self.apps.push(app);
        self
    }

    /// One more `[[client]]`.
    pub fn client(mut self, client: ClientSection) -> ConfigWriter {
        self.clients.push(client);
        self
    }

    /// One more `[[trust_domain]]`.
    pub fn trust_domain(mut self, td: TrustDomainSection) -> ConfigWriter {
        self.trust_domains.push(td);
        self
    }
}

/// One `[[trust_domain]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustDomainSection {
    pub name: String,
    pub ca: String,
    pub crl: Option<String>,
}

/// `[tls]`. Paths as the file should spell them (relative ones are read
/// from the config file's directory).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSection {
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub crl: Option<String>,
    pub min_version: Option<TlsVersion>,
    pub session_lifetime: Option<Duration>,
    pub keep_deauthorized: Option<bool>,
    pub watch: Option<Duration>,
    pub expiry_warning: Option<Duration>,
}

impl TlsSection {
    /// The files of a `tlb pki init` directory `dir`: its CA, server
    /// certificate and key, and CRL.
    pub fn pki(dir: &str) -> TlsSection {
        let p = dir.trim_end_matches('/');
        TlsSection {
            ca: format!("{p}/ca.crt"),
            cert: format!("{p}/server.crt"),
            key: format!("{p}/server.key"),
            crl: Some(format!("{p}/crl.pem")),
            min_version: None,
            session_lifetime: None,
            keep_deauthorized: None,
            watch: None,
            expiry_warning: None,
        }
    }
}

/// `[limits]`: caps at accept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlobalLimitsSection {
    pub max_connections: Option<u32>,
    pub max_handshakes: Option<u32>,
    pub max_handshakes_per_ip: Option<u32>,
}

/// Per-client limits: `[defaults]`, or the overrides of one `[[client]]`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LimitsSection {
    pub max_connections: Option<u32>,
    pub connection_rate: Option<f64>,
    pub burst: Option<u32>,
}

impl From<Limits> for LimitsSection {
    /// Every limit written out.
    fn from(l: Limits) -> LimitsSection {
        LimitsSection {
            max_connections: Some(l.max_connections),
            connection_rate: Some(l.connection_rate),
            burst: Some(l.burst),
        }
    }
}

/// `[timeouts]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeoutsSection {
    pub handshake: Option<Duration>,
    pub connect: Option<Duration>,
    pub idle: Option<Duration>,
    pub drain: Option<Duration>,
    pub max_lifetime: Option<Duration>,
}

impl From<Timeouts> for TimeoutsSection {
    /// Every timeout written out (`max_lifetime` only when set).
    fn from(t: Timeouts) -> TimeoutsSection {
        TimeoutsSection {
            handshake: Some(t.handshake),
            connect: Some(t.connect),
            idle: Some(t.idle),
            drain: Some(t.drain),
            max_lifetime: t.max_lifetime,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSection {
    pub listen: SocketAddr,
    pub token_file: Option<String>,
}

impl AdminSection {
    /// The admin endpoint on `listen`, without a token.
    pub fn new(listen: SocketAddr) -> AdminSection {
        AdminSection {
            listen,
            token_file: None,
        }
    }
}

/// `[cluster]`: limits shared through Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSection {
    /// `redis://HOST:PORT` or `rediss://HOST:PORT`.
    pub redis: String,
    pub redis_password_file: Option<String>,
    pub redis_ca: Option<String>,
    pub redis_cert: Option<String>,
    pub redis_key: Option<String>,
    pub prefix: Option<String>,
    pub instance: Option<String>,
    pub instances: Option<u32>,
    pub timeout: Option<Duration>,
    pub liveness_ttl: Option<Duration>,
}

impl ClusterSection {
    /// Limits shared through the Redis at `redis`, nothing else set.
    pub fn new(redis: &str) -> ClusterSection {
        ClusterSection {
            redis: redis.to_string(),
            redis_password_file: None,
            redis_ca: None,
            redis_cert: None,
            redis_key: None,
            prefix: None,
            instance: None,
            instances: None,
            timeout: None,
            liveness_ttl: None,
        }
    }
}

/// One `[[app]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSection {
    pub name: String,
    pub listen: SocketAddr,
    /// `None`: the key is left out; `Some(vec![])` writes `server_names = []`.
    pub server_names: Option<Vec<String>>,
    /// `HOST:PORT`s.
    pub upstreams: Vec<String>,
    pub proxy_protocol: Option<ProxyProtocol>,
    pub proxy_protocol_cert: Option<bool>,
    pub reuse_port: Option<bool>,
    pub mode: Option<AppMode>,
    pub health: Option<HealthSection>,
    pub upstream_tls: Option<UpstreamTlsSection>,
}

impl AppSection {
    /// App `name` on `listen` over `upstreams`, nothing else set.
    pub fn new<S: ToString>(name: &str, listen: SocketAddr, upstreams: impl IntoIterator<Item = S>) -> AppSection {
        AppSection {
            name: name.to_string(),
            listen,
            server_names: None,
            upstreams: upstreams.into_iter().map(|u| u.to_string()).collect(),
            proxy_protocol: None,
            proxy_protocol_cert: None,
            reuse_port: None,
            mode: None,
            health: None,
            upstream_tls: None,
        }
    }
}

/// `[app.health]`: active checks (an empty one turns them on with defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthSection {
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub send: Option<String>,
    pub expect: Option<String>,
}

/// `[app.upstream_tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsSection {
    pub ca: String,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub server_name: Option<String>,
    pub min_version: Option<TlsVersion>,
}

impl UpstreamTlsSection {
    /// Verify the upstreams against `ca`; nothing else set.
    pub fn new(ca: &str) -> UpstreamTlsSection {
        UpstreamTlsSection {
            ca: ca.to_string(),
            cert: None,
            key: None,
            server_name: None,
            min_version: None,
        }
    }
}

/// One `[[client]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSection {
    /// The identity's label (and the CN it matches without `uri`/`dns`).
    pub name: String,
    /// Match this URI SAN instead of the CN.
    pub uri: Option<String>,
    /// Match this DNS SAN instead of the CN.
    pub dns: Option<String>,
    pub apps: Vec<String>,
    /// Overrides of `[defaults]`.
    pub limits: LimitsSection,
    pub spki_sha256: Option<[u8; 32]>,
}

impl ClientSection {
    /// Client `name` allowed on `apps`, with the default limits.
    pub fn new<S: ToString>(name: &str, apps: impl IntoIterator<Item = S>) -> ClientSection {
        ClientSection {
            name: name.to_string(),
            uri: None,
            dns: None,
            apps: apps.into_iter().map(|a| a.to_string()).collect(),
            limits: LimitsSection::default(),
            spki_sha256: None,
        }
    }
}
