//! The data of the `tlb.toml` reference: one [`TableDoc`] per table, in
//! the order `tlb pki init` writes them, one [`KeyDoc`] per key, in the
//! order of the model's fields.
//!
//! Promises: declarative only; `tests/reference.rs` checks every entry
//! against the model (see the parent module).

use super::Absent::{From, Is, Means, Required};
use super::Kind::*;
use super::app_tables::{HEALTH, UPSTREAM_TLS};
use super::cluster::{CLUSTER, CLUSTER_DOC, CONTROL, CONTROL_DOC};
use super::{KeyDoc, Presence, TableDoc};

/// Every table of `tlb.toml`.
pub const TABLES: &[TableDoc] = &[
    TableDoc {
        path: "tls",
        presence: Presence::Required,
        doc: "The listener's certificate and key, and the trust root for client certificates (one set for every \
              app and listener). The files are read when `tlb serve` starts, again on every reload (SIGHUP) and, with \
              `watch`, when they change; not when the config is parsed; `tlb serve --check` reads them. See [Bring your own CA](#bring-your-own-ca) \
              and, for revocation and resumption, [The gate](#the-gate-what-admission-guarantees).",
        keys: TLS,
    },
    TableDoc {
        path: "limits",
        presence: Presence::Optional,
        doc: "Caps applied at accept, before any TLS work (flood resistance). A connection over a cap is closed \
              at once, its ClientHello unread. See [The gate](#the-gate-what-admission-guarantees).",
        keys: LIMITS,
    },
    TableDoc {
        path: "defaults",
        presence: Presence::Optional,
        doc: "The per-client limits every `[[client]]` starts from (each may override them). Over a limit, a \
              connection is closed right after its handshake, before any upstream is contacted.",
        keys: DEFAULTS,
    },
    TableDoc {
        path: "timeouts",
        presence: Presence::Optional,
        doc: "Connection timeouts. A reload applies them to new connections.",
        keys: TIMEOUTS,
    },
    TableDoc {
        path: "admin",
        presence: Presence::Optional,
        doc: "The plain-HTTP admin endpoint: `/metrics`, `/healthz`, `/status` (see \
              [Admin endpoint](#admin-endpoint-metrics-healthz-status)). Left out: no admin endpoint.",
        keys: ADMIN,
    },
    TableDoc {
        path: "control",
        presence: Presence::Optional,
        doc: CONTROL_DOC,
        keys: CONTROL,
    },
    TableDoc {
        path: "cluster",
        presence: Presence::Optional,
        doc: CLUSTER_DOC,
        keys: CLUSTER,
    },
    TableDoc {
        path: "app",
        presence: Presence::OneOrMore,
        doc: "A group of upstreams reached through one listener and, when apps share a listener, chosen by the \
              client's SNI. Connections go to the healthy upstream with the fewest active connections.",
        keys: APP,
    },
    TableDoc {
        path: "app.health",
        presence: Presence::Optional,
        doc: "Active health checks of the app's upstreams (write it after its `[[app]]`). An empty table means \
              every default. Left out, the app is passive only: 3 consecutive failed connections eject an \
              upstream, retried half-open after 1 s, doubling up to 60 s.",
        keys: HEALTH,
    },
    TableDoc {
        path: "app.upstream_tls",
        presence: Presence::Optional,
        doc: "TLS towards the app's upstreams: tlb verifies each upstream's certificate (and, with `cert` and \
              `key`, shows its own client certificate for upstreams that require mTLS). Health checks use the \
              same settings. A failed upstream handshake is a failure of that upstream, retried on another \
              like a refused connect. Sessions toward upstreams are resumed (a bounded cache per app). The \
              files are read at start and on each reload; an unreadable one refuses the reload.",
        keys: UPSTREAM_TLS,
    },
    TableDoc {
        path: "trust_domain",
        presence: Presence::ZeroOrMore,
        doc: "A SPIFFE trust domain and the CA that alone may issue its identities: a `[[client]]` matched by \
              a `spiffe://DOMAIN/...` URI is admitted only if its chain ends at DOMAIN's CA, so one domain's CA \
              cannot mint another's identities (refused as `wrong_trust_domain`, in audit mode too). Left out: \
              `[tls] ca` is the one trust domain. With any, every `spiffe://` `[[client]] uri` must name one \
              of them; CN and DNS identities, and other URIs, still chain to `[tls] ca`.",
        keys: TRUST_DOMAIN,
    },
    TableDoc {
        path: "client",
        presence: Presence::ZeroOrMore,
        doc: "An identity and the apps it may reach. It matches the certificate's subject CN (= `name`), or, \
              with `uri` or `dns`, one of its URI or DNS SANs; the chain must end at `[tls] ca` (or, for a \
              SPIFFE ID, at its `[[trust_domain]]`'s CA). A certificate no entry matches, or that matches two \
              entries, is refused in the handshake (`access_denied`): default deny, never a silent pick.",
        keys: CLIENT,
    },
];

const TRUST_DOMAIN: &[KeyDoc] = &[
    KeyDoc {
        name: "name",
        kind: TrustDomain,
        absent: Required,
        example: r#""prod.example""#,
        doc: "The trust domain, as in `spiffe://prod.example/...`. Unique.",
    },
    KeyDoc {
        name: "ca",
        kind: Path,
        absent: Required,
        example: r#""pki/prod-example-ca.crt""#,
        doc: "PEM file of the domain's CA certificate(s).",
    },
    KeyDoc {
        name: "crl",
        kind: Path,
        absent: Means("no revocation check for this domain"),
        example: r#""pki/prod-example.crl""#,
        doc: "PEM CRL(s) of the domain's CA, as `[tls] crl` for `[tls] ca`.",
    },
];

const TLS: &[KeyDoc] = &[
    KeyDoc {
        name: "ca",
        kind: Path,
        absent: Required,
        example: r#""pki/ca.crt""#,
        doc: "PEM file of one or more CA certificates: a client certificate must chain to one of them \
              (a SPIFFE ID of a `[[trust_domain]]`, to that domain's CA instead). The system store is \
              never used.",
    },
    KeyDoc {
        name: "cert",
        kind: Path,
        absent: Required,
        example: r#""pki/server.crt""#,
        doc: "PEM file: the server certificate first, then its intermediates. Its SANs must cover every \
              name clients connect to.",
    },
    KeyDoc {
        name: "key",
        kind: Path,
        absent: Required,
        example: r#""pki/server.key""#,
        doc: "Unencrypted PEM private key of `cert`: PKCS#8, PKCS#1 (RSA) or SEC1 (EC). Checked to match `cert`.",
    },
    KeyDoc {
        name: "crl",
        kind: Path,
        absent: Means("no revocation check"),
        example: r#""pki/crl.pem""#,
        doc: "PEM CRLs (several may be concatenated). At least one must be issued and validly signed by a CA \
              of `ca`; then every certificate of a client's chain needs a known status, or it is refused.",
    },
    KeyDoc {
        name: "min_version",
        kind: Version,
        absent: Is(r#""1.3""#),
        example: r#""1.2""#,
        doc: "`\"1.3\"`: TLS 1.3 only. `\"1.2\"`: TLS 1.2 too, with AEAD + ECDHE suites only.",
    },
    KeyDoc {
        name: "session_lifetime",
        kind: DurationOrZero,
        absent: Is(r#""1h""#),
        example: r#""10m""#,
        doc: "How long after a full handshake its session may be resumed; `\"0s\"` turns resumption off. \
              Every resumption is decided by the gate again.",
    },
    KeyDoc {
        name: "keep_deauthorized",
        kind: Bool,
        absent: Is("false"),
        example: "true",
        doc: "`true`: a reload, and a client certificate's expiry, leave open connections alone instead of \
              closing those no longer admitted.",
    },
    KeyDoc {
        name: "watch",
        kind: Interval,
        absent: Means("off: the files are read at start and on SIGHUP only"),
        example: r#""10s""#,
        doc: "Poll the TLS files (`cert`, `key`, `ca`, `crl`, each `[[trust_domain]]`'s and each \
              `[app.upstream_tls]`'s) this often and load a changed set without a signal, once every file \
              read the same on two polls in a row and the set is coherent (the key matches the certificate, \
              the chain verifies link by link, the certificate is valid now, everything loads). A bad set is \
              logged once and the old one keeps serving. `tlb.toml` itself is re-read on SIGHUP only. See \
              [Certificate rotation](#certificate-rotation).",
    },
    KeyDoc {
        name: "expiry_warning",
        kind: DurationOrZero,
        absent: Is(r#""14d""#),
        example: r#""30d""#,
        doc: "Warn in the log this long before a loaded certificate (server, CA, upstream TLS) expires: at \
              start, on each reload and once a day; `\"0s\"`: never. Its date is \
              `tlb_certificate_expiry_timestamp_seconds` either way.",
    },
];

const LIMITS: &[KeyDoc] = &[
    KeyDoc {
        name: "max_connections",
        kind: Count,
        absent: Means("(open-file limit − 100) / 2, logged at start"),
        example: "9000",
        doc: "Client connections open at once, all listeners together.",
    },
    KeyDoc {
        name: "max_handshakes",
        kind: Count,
        absent: Is("1024"),
        example: "256",
        doc: "TLS handshakes in progress, all listeners together.",
    },
    KeyDoc {
        name: "max_handshakes_per_ip",
        kind: Count,
        absent: Is("64"),
        example: "16",
        doc: "TLS handshakes in progress from one source: an IPv4 address or an IPv6 /64.",
    },
];

const DEFAULTS: &[KeyDoc] = &[
    KeyDoc {
        name: "max_connections",
        kind: Count,
        absent: Is("10"),
        example: "100",
        doc: "Concurrent connections of one client identity, all apps together.",
    },
    KeyDoc {
        name: "connection_rate",
        kind: Rate,
        absent: Is("20"),
        example: "50",
        doc: "New connections per second of one identity: the token bucket's refill rate.",
    },
    KeyDoc {
        name: "burst",
        kind: Count,
        absent: Is("40"),
        example: "100",
        doc: "The token bucket's capacity: new connections an identity may open at once.",
    },
];

const TIMEOUTS: &[KeyDoc] = &[
    KeyDoc {
        name: "handshake",
        kind: Duration,
        absent: Is(r#""5s""#),
        example: r#""2s""#,
        doc: "From TCP accept to the end of the TLS handshake (slowloris).",
    },
    KeyDoc {
        name: "connect",
        kind: Duration,
        absent: Is(r#""2s""#),
        example: r#""500ms""#,
        doc: "Connecting to an upstream, all attempts together (up to 2 retries on other upstreams).",
    },
    KeyDoc {
        name: "idle",
        kind: Duration,
        absent: Is(r#""10m""#),
        example: r#""1h""#,
        doc: "No bytes either way for this long closes both sides.",
    },
    KeyDoc {
        name: "drain",
        kind: Duration,
        absent: Is(r#""30s""#),
        example: r#""10s""#,
        doc: "On SIGTERM/SIGINT: how long open connections may finish before they are closed.",
    },
    KeyDoc {
        name: "max_lifetime",
        kind: Duration,
        absent: Means("off"),
        example: r#""24h""#,
        doc: "Any connection older than this is closed (reason `max_lifetime`).",
    },
];

const ADMIN: &[KeyDoc] = &[
    KeyDoc {
        name: "listen",
        kind: Listen,
        absent: Required,
        example: r#""127.0.0.1:9090""#,
        doc: "Address of the endpoint; not the `listen` of any app. Plain HTTP: keep it on loopback or a \
              management network. A reload cannot change it (restart).",
    },
    KeyDoc {
        name: "token_file",
        kind: Path,
        absent: Means("none: `/metrics` and `/status` are open"),
        example: r#""admin.token""#,
        doc: "File holding one token (printable ASCII, at most 4 KiB, trailing whitespace trimmed), read when \
              the config is loaded and on every reload. `/metrics` and `/status` then require \
              `Authorization: Bearer <token>`.",
    },
];

const APP: &[KeyDoc] = &[
    KeyDoc {
        name: "name",
        kind: Text,
        absent: Required,
        example: r#""web""#,
        doc: "Unique. What `[[client]] apps` lists, and the `app` label of logs and metrics.",
    },
    KeyDoc {
        name: "listen",
        kind: Listen,
        absent: Required,
        example: r#""0.0.0.0:8444""#,
        doc: "Address clients connect to. Apps may share one, told apart by `server_names`. A reload \
              binds a new one and closes one no app names any more (see \
              [Reload or restart](#reload-or-restart)).",
    },
    KeyDoc {
        name: "server_names",
        kind: Names,
        absent: Is("[]"),
        example: r#"["web.example.com"]"#,
        doc: "SNI names that select this app (case-insensitive, a trailing dot ignored). Empty: the \
              listener's default app, for any SNI no other app claims, or none; at most one per listener.",
    },
    KeyDoc {
        name: "upstreams",
        kind: HostPorts,
        absent: Required,
        example: r#"["10.0.0.21:8080", "10.0.0.22:8080"]"#,
        doc: "At least one, none twice. Host names are resolved when the config is loaded or reloaded, \
              not per connection.",
    },
    KeyDoc {
        name: "mode",
        kind: Mode,
        absent: Is(r#""enforce""#),
        example: r#""audit""#,
        doc: "`\"audit\"`: a client the `[[client]]` policy would refuse (not listed, app not allowed, pin \
              mismatch, ambiguous) is admitted, logged once per identity and reason, and counted in \
              `tlb_audit_denied_total`; for rolling a policy out. Certificate errors (unknown CA, expired, \
              revoked, wrong trust domain) are refused in both modes.",
    },
    KeyDoc {
        name: "proxy_protocol",
        kind: ProxyVersion,
        absent: Means("no header: upstreams see tlb's address as the client"),
        example: r#""v2""#,
        doc: "A PROXY protocol header sent first on every upstream connection, before any client byte: \
              `\"v2\"` (binary, with the client's address, SNI, ALPN, TLS details and identity as TLVs) or \
              `\"v1\"` (text, addresses only). Active health checks then send a `LOCAL` header first. See \
              [PROXY protocol](#proxy-protocol).",
    },
    KeyDoc {
        name: "proxy_protocol_cert",
        kind: Bool,
        absent: Is("false"),
        example: "true",
        doc: "With `proxy_protocol = \"v2\"`: the client certificate (DER) goes in the header too (TLV `0xE2`). \
              Refused without `\"v2\"`.",
    },
    KeyDoc {
        name: "reuse_port",
        kind: Bool,
        absent: Is("false"),
        example: "true",
        doc: "SO_REUSEPORT on the listener: several tlb processes on one host (same user, all with \
              `reuse_port = true`) bind the same `listen` address and the kernel spreads new connections over \
              them (see [A fleet of instances](#a-fleet-of-instances)). Apps sharing a listener set the same \
              value; changing it on an address that stays needs a restart (or an upgrade).",
    },
];

const CLIENT: &[KeyDoc] = &[
    KeyDoc {
        name: "name",
        kind: Text,
        absent: Required,
        example: r#""alice""#,
        doc: "The identity's label in logs, metrics and limits, and, without `uri` or `dns`, exactly the \
              certificate's subject CN it matches (case-sensitive). Unique, no control characters.",
    },
    KeyDoc {
        name: "uri",
        kind: Uri,
        absent: Means("matched by CN (or `dns`)"),
        example: r#""spiffe://prod.example/ns/web/sa/api""#,
        doc: "Match a URI SAN instead of the CN: a SPIFFE ID (checked by the SPIFFE ID rules) or another \
              URI, compared exactly. Not with `dns`; no two entries may match the same URI.",
    },
    KeyDoc {
        name: "dns",
        kind: DnsName,
        absent: Means("matched by CN (or `uri`)"),
        example: r#""api.web.internal""#,
        doc: "Match a DNS SAN instead of the CN (case-insensitive; no wildcards). Not with `uri`.",
    },
    KeyDoc {
        name: "apps",
        kind: Names,
        absent: Is("[]"),
        example: r#"["web"]"#,
        doc: "The apps this identity may reach, by name; each must exist. Empty: known, but refused on every app.",
    },
    KeyDoc {
        name: "max_connections",
        kind: Count,
        absent: From("defaults"),
        example: "2",
        doc: "As in `[defaults]`, for this identity.",
    },
    KeyDoc {
        name: "connection_rate",
        kind: Rate,
        absent: From("defaults"),
        example: "0.5",
        doc: "As in `[defaults]`, for this identity.",
    },
    KeyDoc {
        name: "burst",
        kind: Count,
        absent: From("defaults"),
        example: "5",
        doc: "As in `[defaults]`, for this identity.",
    },
    KeyDoc {
        name: "spki_sha256",
        kind: Sha256Hex,
        absent: Means("no pin"),
        example: r#""5d41402abc4b2a76b9719d911017c592aabbccddeeff00112233445566778899""#,
        doc: "Pin: SHA-256 of the certificate's SubjectPublicKeyInfo (`tlb pki show --spki` prints it; colons \
              allowed). A certificate with another key is refused even if otherwise valid.",
    },
];
