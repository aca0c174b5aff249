//! The reference entries of `[control]` and `[cluster]` (kept apart from
//! `tables` for size): the hand-off socket; the Redis server, this
//! instance's name and the fleet's timing.
//!
//! Promises: declarative only, checked like every table by `tests/reference.rs`.

use super::Absent::{Is, Means, Required};
use super::KeyDoc;
use super::Kind::*;

/// What `[control]` is for.
pub(super) const CONTROL_DOC: &str = "The Unix socket through which `tlb serve --upgrade` (a new binary, or the \
    same one with a new config) takes the listening sockets over from the running instance, which then \
    drains and exits (see [Upgrade without dropping a connection](#upgrade-without-dropping-a-connection)). \
    Left out: no control socket, no `--upgrade`.";

pub(super) const CONTROL: &[KeyDoc] = &[KeyDoc {
    name: "socket",
    kind: Path,
    absent: Required,
    example: r#""/run/tlb/tlb.sock""#,
    doc: "Path of the socket, created owner-only (0600) at start (replacing a stale file left by a crash), \
          relative to the config file's directory. Its directory must exist and be writable by tlb only; \
          changing it needs a restart.",
}];

/// What `[cluster]` is for.
pub(super) const CLUSTER_DOC: &str = "Per-client limits (`max_connections`, `connection_rate`/`burst`) shared by \
    several tlb instances through Redis (see [A fleet of instances](#a-fleet-of-instances)). Left out: each \
    instance enforces every limit alone. Redis unreachable, slow or refusing: each instance enforces \
    `limit / instances` until it is back. Nothing connects to Redis when the config is loaded.";

pub(super) const CLUSTER: &[KeyDoc] = &[
    KeyDoc {
        name: "redis",
        kind: RedisUrl,
        absent: Required,
        example: r#""rediss://10.0.0.5:6379""#,
        doc: "The Redis server (a Redis Cluster node works too: every key of one identity shares a hash tag). \
              `rediss://` is TLS, verified against `redis_ca` (else the system's trust store), the name checked \
              against the URL's host (an IP address against IP SANs). A password goes in \
              `redis_password_file`, never in the URL.",
    },
    KeyDoc {
        name: "redis_password_file",
        kind: Path,
        absent: Means("no `AUTH`"),
        example: r#""redis.password""#,
        doc: "File holding the Redis password (printable ASCII, at most 4 KiB, trailing whitespace trimmed), \
              read when tlb starts (a reload that finds another password is refused: restart to change it); \
              with a user name in the URL (`redis://USER@HOST:PORT`), an ACL login.",
    },
    KeyDoc {
        name: "redis_ca",
        kind: Path,
        absent: Means("the system's trust store"),
        example: r#""pki/redis-ca.crt""#,
        doc: "PEM CA bundle that verifies the `rediss://` server, read when tlb starts. Only with `rediss://`.",
    },
    KeyDoc {
        name: "redis_cert",
        kind: Path,
        absent: Means("no client certificate"),
        example: r#""pki/lb-a.crt""#,
        doc: "PEM certificate tlb presents to a `rediss://` server that requires one (Redis's default \
              `tls-auth-clients yes`), with `redis_key`; both or neither, only with `rediss://`.",
    },
    KeyDoc {
        name: "redis_key",
        kind: Path,
        absent: Means("no client certificate"),
        example: r#""pki/lb-a.key""#,
        doc: "The PEM private key of `redis_cert`.",
    },
    KeyDoc {
        name: "prefix",
        kind: Text,
        absent: Is(r#""tlb""#),
        example: r#""tlb-prod""#,
        doc: "First part of every key (`PREFIX:{IDENTITY}:rate`, `PREFIX:{IDENTITY}:conns`). Two fleets that \
              share one Redis but not their limits use two prefixes; 1 to 64 bytes, no spaces or braces.",
    },
    KeyDoc {
        name: "instance",
        kind: Text,
        absent: Means(
            "host name and first listen address: `lb-a/0.0.0.0:8443`; with `reuse_port`, the process id too: `lb-a/0.0.0.0:8443/pid=4242`",
        ),
        example: r#""lb-a""#,
        doc: "This instance's name in the shared counts (each connection it holds is counted as \
              `INSTANCE#TOKEN:SEQ`, the token random per process, so two processes with one name still count \
              apart; a name unique in the fleet keeps Redis readable), in logs and in `/status`. What a crashed \
              process left is forgotten within `liveness_ttl`.",
    },
    KeyDoc {
        name: "instances",
        kind: Count,
        absent: Is("1"),
        example: "3",
        doc: "Expected fleet size. While Redis is unreachable each instance enforces `limit / instances` \
              (rounded down, at least 1) of every limit, so the fleet stays near the limit; `1` keeps the \
              whole limit per instance (the fleet may then admit `instances ×` the limit).",
    },
    KeyDoc {
        name: "timeout",
        kind: Duration,
        absent: Is(r#""20ms""#),
        example: r#""50ms""#,
        doc: "Longest wait for Redis on a new connection; past it the connection is decided by the local \
              share and Redis is probed in the background.",
    },
    KeyDoc {
        name: "liveness_ttl",
        kind: Duration,
        absent: Is(r#""5s""#),
        example: r#""10s""#,
        doc: "An instance refreshes its counts every third of this; counts of an instance silent for this long \
              (crashed, cut off) are forgotten. At least `1s` and 4 × `timeout`.",
    },
];
