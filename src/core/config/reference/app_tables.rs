//! The reference entries of the tables inside each `[[app]]`
//! (`[app.health]`, `[app.upstream_tls]`), kept apart from `tables` for size.
//!
//! Promises: declarative only, checked like every table by `tests/reference.rs`.

use super::Absent::{Is, Means, Required};
use super::KeyDoc;
use super::Kind::*;

pub(super) const HEALTH: &[KeyDoc] = &[
    KeyDoc {
        name: "interval",
        kind: Duration,
        absent: Is(r#""5s""#),
        example: r#""2s""#,
        doc: "One check per upstream per interval.",
    },
    KeyDoc {
        name: "timeout",
        kind: Duration,
        absent: Is(r#""1s""#),
        example: r#""500ms""#,
        doc: "Per check; must not exceed `interval`.",
    },
    KeyDoc {
        name: "rise",
        kind: Count,
        absent: Is("2"),
        example: "3",
        doc: "Consecutive good checks that bring a DOWN upstream back.",
    },
    KeyDoc {
        name: "fall",
        kind: Count,
        absent: Is("3"),
        example: "2",
        doc: "Consecutive failures, of checks or of real connections, that eject an upstream (DOWN).",
    },
    KeyDoc {
        name: "send",
        kind: Text,
        absent: Is(r#""""#),
        example: r#""GET /health HTTP/1.0\r\n\r\n""#,
        doc: "Sent after connecting (and after the `LOCAL` header when the app has `proxy_protocol`). Empty, \
              with `expect` empty too: the check is a TCP connect.",
    },
    KeyDoc {
        name: "expect",
        kind: Text,
        absent: Is(r#""""#),
        example: r#"" 200 ""#,
        doc: "The reply must contain these bytes within the first 16 KiB.",
    },
];

pub(super) const UPSTREAM_TLS: &[KeyDoc] = &[
    KeyDoc {
        name: "ca",
        kind: Path,
        absent: Required,
        example: r#""upstream-ca.crt""#,
        doc: "CA certificates the upstreams' certificates are to chain to.",
    },
    KeyDoc {
        name: "cert",
        kind: Path,
        absent: Means("none"),
        example: r#""upstream-client.crt""#,
        doc: "Client certificate for mutual TLS to the upstreams; set both `cert` and `key`, or neither.",
    },
    KeyDoc {
        name: "key",
        kind: Path,
        absent: Means("none"),
        example: r#""upstream-client.key""#,
        doc: "The key of `cert`.",
    },
    KeyDoc {
        name: "server_name",
        kind: Text,
        absent: Means("the upstream's host"),
        example: r#""db.internal""#,
        doc: "The name to send as SNI and check the upstreams' certificates against (a DNS name, or an IP \
              address matched against IP SANs). Left out: each upstream's host as written in `upstreams`.",
    },
    KeyDoc {
        name: "min_version",
        kind: Version,
        absent: Is(r#""1.2""#),
        example: r#""1.3""#,
        doc: "`\"1.2\"`: offer TLS 1.3 and 1.2 (AEAD + ECDHE suites only), as many upstreams still need. \
              `\"1.3\"`: TLS 1.3 only.",
    },
];
