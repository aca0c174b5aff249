//! How a connection ended short of being relayed, as fixed enums: why a
//! handshake failed, why an admitted connection was refused, which
//! `[limits]` cap closed it at accept.
//!
//! Promises: each enum is `Copy`, its `ALL` lists every variant in
//! declaration order (so `v as usize` indexes per-reason counter arrays),
//! and its labels are the stable `reason` values of the metrics and the
//! access log. Nothing here depends on the rest of the crate.

/// Why a handshake did not complete (the `reason` label of
/// `tlb_handshake_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailureKind {
    /// Not completed within `timeouts.handshake`.
    Timeout,
    /// Certificate invalid: unknown CA, expired, revoked, wrong usage.
    BadCertificate,
    /// The client sent no certificate.
    NoCertificate,
    /// Valid certificate, identity not allowed on the app (or SPKI pin mismatch).
    Unauthorized,
    /// SNI matches no app on the listener and there is no default app.
    UnknownSni,
    /// TLS version or parameters the server does not accept.
    Protocol,
    /// Not TLS at all, or a malformed handshake.
    NotTls,
    /// The client aborted with an alert.
    ClientAlert,
    /// The client closed before finishing.
    Eof,
    /// Other TLS or socket errors.
    Other,
}

impl HandshakeFailureKind {
    pub const ALL: [HandshakeFailureKind; 10] = [
        Self::Timeout,
        Self::BadCertificate,
        Self::NoCertificate,
        Self::Unauthorized,
        Self::UnknownSni,
        Self::Protocol,
        Self::NotTls,
        Self::ClientAlert,
        Self::Eof,
        Self::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Timeout => "handshake_timeout",
            Self::BadCertificate => "bad_certificate",
            Self::NoCertificate => "no_certificate",
            Self::Unauthorized => "unauthorized",
            Self::UnknownSni => "unknown_sni",
            Self::Protocol => "protocol",
            Self::NotTls => "not_tls",
            Self::ClientAlert => "client_alert",
            Self::Eof => "eof",
            Self::Other => "other",
        }
    }
}

/// Why a connection that completed its handshake was not relayed (the
/// `reason` label of `tlb_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The identity has no `[[client]]` state. Cannot happen with a
    /// consistent generation (the verifier admits only configured clients;
    /// a resumed session failing its re-check is a handshake failure,
    /// `unauthorized`); kept so the data path refuses rather than panics.
    Unauthorized,
    MaxConnections,
    RateLimited,
    /// Every upstream of the app is DOWN (refused at once).
    NoHealthyUpstream,
    /// Connecting failed on every upstream tried (up to 3, within `timeouts.connect`).
    UpstreamConnectFailed,
    /// The balancer's own resources ran out while connecting (EMFILE,
    /// ENOBUFS, no local port...): not the upstream's fault.
    LocalResource,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Self::Unauthorized,
        Self::MaxConnections,
        Self::RateLimited,
        Self::NoHealthyUpstream,
        Self::UpstreamConnectFailed,
        Self::LocalResource,
    ];

    /// The access log's `reason` for this refusal.
    pub fn access_reason(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "refused: unauthorized",
            Refusal::MaxConnections => "refused: max_connections",
            Refusal::RateLimited => "refused: rate_limited",
            Refusal::NoHealthyUpstream => "refused: no_healthy_upstream",
            Refusal::UpstreamConnectFailed => "refused: upstream_connect_failed",
            Refusal::LocalResource => "refused: local_resource",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::MaxConnections => "max_connections",
            Refusal::RateLimited => "rate_limited",
            Refusal::NoHealthyUpstream => "no_healthy_upstream",
            Refusal::UpstreamConnectFailed => "upstream_connect_failed",
            Refusal::LocalResource => "local_resource",
        }
    }
}

/// A `[limits]` cap that closed a connection at accept, before any TLS
/// work (the `reason` label of `tlb_preauth_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// `[limits] max_connections`: client connections open at once.
    MaxConnections,
    /// `[limits] max_handshakes`: handshakes in progress.
    MaxHandshakes,
    /// `[limits] max_handshakes_per_ip`: handshakes in progress from one address.
    MaxHandshakesPerIp,
}

impl Cap {
    pub const ALL: [Cap; 3] = [Cap::MaxConnections, Cap::MaxHandshakes, Cap::MaxHandshakesPerIp];

    pub fn label(self) -> &'static str {
        match self {
            Cap::MaxConnections => "max_connections",
            Cap::MaxHandshakes => "max_handshakes",
            Cap::MaxHandshakesPerIp => "max_handshakes_per_ip",
        }
    }
}
