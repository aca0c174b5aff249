//! The text of a [`ConfigWriter`]: TOML for each section, and for an
//! annotated file the comments that explain each key and the commented-out
//! examples of what is left out.
//!
//! Promises: values are valid TOML (strings escaped, durations in human
//! form, whole rates without a fraction); one section renders the same
//! text alone (`Display`) as inside a document; examples and defaults shown
//! in comments are taken from the model's defaults where it has them; an
//! annotated file's commented-out examples are valid when uncommented.

use std::fmt;

mod cluster;

use cluster::{cluster, control};

use crate::core::config::literal::{count, duration, rate, string, strings, version};
use crate::core::config::model::{
    AppMode, DEFAULT_EXPIRY_WARNING, DEFAULT_SESSION_LIFETIME, GlobalLimits, HealthSettings, Limits, Timeouts,
    TlsVersion,
};
use crate::core::config::writer::{
    AdminSection, AppSection, ClientSection, ConfigWriter, GlobalLimitsSection, HealthSection, LimitsSection,
    TimeoutsSection, TlsSection, TrustDomainSection,
};

/// Column (0-based) where an annotated line's `#` comment starts.
const COMMENT_AT: usize = 29;

impl ConfigWriter {
    /// The whole file.
    pub fn render(&self) -> String {
        let mut out = Out {
            s: String::new(),
            annotated: self.annotated,
        };
        for line in &self.header {
            out.comment(line);
        }
        if let Some(t) = &self.tls {
            tls(t).write(&mut out);
        }
        limits(self.limits.as_ref()).write(&mut out);
        defaults(self.defaults.as_ref()).write(&mut out);
        timeouts(self.timeouts.as_ref()).write(&mut out);
        admin(self.admin.as_ref()).write(&mut out);
        control(self.control.as_deref()).write(&mut out);
        cluster(self.cluster.as_ref()).write(&mut out);
        for a in &self.apps {
            write_app(a, &mut out);
        }
        for td in &self.trust_domains {
            trust_domain(td).write(&mut out);
        }
        for c in &self.clients {
            client(c).write(&mut out);
        }
        if !self.footer.is_empty() {
            out.s.push('\n');
            for line in &self.footer {
                out.comment(line);
            }
        }
        match (self.header.is_empty(), out.s.strip_prefix('\n')) {
            (true, Some(rest)) => rest.to_string(),
            _ => out.s,
        }
    }
}

/// Text being written, plain or annotated.
struct Out {
    s: String,
    annotated: bool,
}

impl Out {
    /// `text`, with `comment` after it when annotated.
    fn line(&mut self, text: &str, comment: &str) {
        if self.annotated && !comment.is_empty() {
            let w = COMMENT_AT - 1;
            self.s.push_str(&format!("{text:<w$} # {comment}\n"));
        } else {
            self.s.push_str(text);
            self.s.push('\n');
        }
    }

    fn comment(&mut self, line: &str) {
        if line.is_empty() {
            self.s.push_str("#\n");
        } else {
            self.s.push_str(&format!("# {line}\n"));
        }
    }
}

/// `text` commented out, keeping a nested table's indentation visible.
fn commented(text: &str) -> String {
    if text.starts_with(' ') {
        format!("#{text}")
    } else {
        format!("# {text}")
    }
}

/// One key: its value as TOML when set, and what an annotated file says.
struct Key {
    name: &'static str,
    value: Option<String>,
    comment: &'static str,
    /// Shown commented out, when annotated, if the key is not set.
    example: Option<String>,
}

fn key(name: &'static str, value: Option<String>) -> Key {
    Key {
        name,
        value,
        comment: "",
        example: None,
    }
}

impl Key {
    fn doc(mut self, comment: &'static str) -> Key {
        self.comment = comment;
        self
    }

    fn example(mut self, example: impl Into<String>) -> Key {
        self.example = Some(example.into());
        self
    }
}

/// One table. Absent (`present` false) and annotated with `template`, it is
/// shown commented out, after `note`.
struct Table {
    header: &'static str,
    /// Nested tables (`[app.health]`) are indented and follow their parent
    /// without a blank line.
    nested: bool,
    comment: &'static str,
    present: bool,
    template: bool,
    note: &'static [&'static str],
    keys: Vec<Key>,
}

fn table(header: &'static str, present: bool, keys: Vec<Key>) -> Table {
    Table {
        header,
        nested: false,
        comment: "",
        present,
        template: true,
        note: &[],
        keys,
    }
}

impl Table {
    fn write(&self, out: &mut Out) {
        let indent = if self.nested { "  " } else { "" };
        if !self.present {
            if out.annotated && self.template {
                self.write_template(indent, out);
            }
            return;
        }
        if !self.nested {
            out.s.push('\n');
        }
        out.line(&format!("{indent}{}", self.header), self.comment);
        for k in &self.keys {
            match (&k.value, &k.example) {
                (Some(v), _) => out.line(&format!("{indent}{} = {v}", k.name), k.comment),
                (None, Some(ex)) if out.annotated => {
                    out.line(&commented(&format!("{indent}{} = {ex}", k.name)), k.comment)
                }
                (None, _) => {}
            }
        }
    }

    fn write_template(&self, indent: &str, out: &mut Out) {
        if !self.nested {
            out.s.push('\n');
        }
        for line in self.note {
            out.comment(line);
        }
        out.line(&commented(&format!("{indent}{}", self.header)), self.comment);
        for k in &self.keys {
            if let Some(ex) = &k.example {
                out.line(&commented(&format!("{indent}{} = {ex}", k.name)), k.comment);
            }
        }
    }

    /// The table alone, as a document would hold it (plain).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Out {
            s: String::new(),
            annotated: false,
        };
        self.write(&mut out);
        f.write_str(&out.s)
    }
}

fn tls(t: &TlsSection) -> Table {
    let lifetime = duration(DEFAULT_SESSION_LIFETIME);
    table(
        "[tls]",
        true,
        vec![
            key("ca", Some(string(&t.ca))).doc("trust root for client certificates"),
            key("cert", Some(string(&t.cert))),
            key("key", Some(string(&t.key))),
            key("crl", t.crl.as_deref().map(string)).doc("revoked client certificates are refused"),
            key("min_version", t.min_version.map(version))
                .doc("default: TLS 1.3 only; \"1.2\" also allows TLS 1.2 (AEAD + ECDHE)")
                .example(version(TlsVersion::V1_3)),
            key("session_lifetime", t.session_lifetime.map(duration))
                .doc("resumption window; each resumption is re-checked (validity, CRL, policy); \"0s\" = off")
                .example(lifetime),
            key("keep_deauthorized", t.keep_deauthorized.map(|b| b.to_string()))
                .doc("true: a reload leaves open connections of revoked/removed identities alone")
                .example("false"),
            key("watch", t.watch.map(duration))
                .doc("poll the TLS files; load a changed set once it is stable and coherent")
                .example(string("10s")),
            key("expiry_warning", t.expiry_warning.map(duration))
                .doc("warn this long before a loaded certificate expires; \"0s\" = never")
                .example(duration(DEFAULT_EXPIRY_WARNING)),
        ],
    )
}

fn limits(l: Option<&GlobalLimitsSection>) -> Table {
    let d = GlobalLimits::default();
    let l = l.copied();
    let mut t = table(
        "[limits]",
        l.is_some(),
        vec![
            key("max_connections", l.and_then(|l| l.max_connections).map(count))
                .doc("default: derived from the open-file limit")
                .example("9000"),
            key("max_handshakes", l.and_then(|l| l.max_handshakes).map(count)).example(count(d.max_handshakes)),
            key(
                "max_handshakes_per_ip",
                l.and_then(|l| l.max_handshakes_per_ip).map(count),
            )
            .example(count(d.max_handshakes_per_ip)),
        ],
    );
    t.comment = "caps at accept, before any TLS work (flood resistance)";
    t
}

/// The per-client limit keys of `[defaults]` and `[[client]]`.
fn limit_keys(l: &LimitsSection, documented: bool) -> Vec<Key> {
    let d = Limits::default();
    let doc = |k: Key, c: &'static str| if documented { k.doc(c) } else { k };
    let ex = |k: Key, e: String| if documented { k.example(e) } else { k };
    vec![
        ex(
            doc(
                key("max_connections", l.max_connections.map(count)),
                "concurrent connections per client identity",
            ),
            count(d.max_connections),
        ),
        ex(
            doc(
                key("connection_rate", l.connection_rate.map(rate)),
                "new connections per second (token bucket)",
            ),
            rate(d.connection_rate),
        ),
        ex(key("burst", l.burst.map(count)), count(d.burst)),
    ]
}

fn defaults(l: Option<&LimitsSection>) -> Table {
    let mut t = table(
        "[defaults]",
        l.is_some(),
        limit_keys(&l.copied().unwrap_or_default(), true),
    );
    t.comment = "per-client limits unless a [[client]] overrides them";
    t
}

fn timeouts(t: Option<&TimeoutsSection>) -> Table {
    let d = Timeouts::default();
    let v = t.copied().unwrap_or_default();
    table(
        "[timeouts]",
        t.is_some(),
        vec![
            key("handshake", v.handshake.map(duration))
                .doc("TCP accept -> TLS handshake done")
                .example(duration(d.handshake)),
            key("connect", v.connect.map(duration))
                .doc("to an upstream, retries included")
                .example(duration(d.connect)),
            key("idle", v.idle.map(duration))
                .doc("no bytes either way")
                .example(duration(d.idle)),
            key("drain", v.drain.map(duration))
                .doc("SIGTERM/SIGINT: grace period for open connections")
                .example(duration(d.drain)),
            key("max_lifetime", v.max_lifetime.map(duration))
                .doc("optional: close any connection older than this")
                .example(string("24h")),
        ],
    )
}

fn admin(a: Option<&AdminSection>) -> Table {
    table(
        "[admin]",
        a.is_some(),
        vec![
            key("listen", a.map(|a| string(&a.listen.to_string())))
                .doc("plain-HTTP admin: /metrics /healthz /status")
                .example(string("127.0.0.1:9090")),
            key("token_file", a.and_then(|a| a.token_file.as_deref()).map(string)),
        ],
    )
}

fn write_app(a: &AppSection, out: &mut Out) {
    let mut t = table(
        "[[app]]",
        true,
        vec![
            key("name", Some(string(&a.name))),
            key("listen", Some(string(&a.listen.to_string()))),
            key("server_names", a.server_names.as_deref().map(strings))
                .doc("SNI names that select this app on a shared listener"),
            key("upstreams", Some(strings(&a.upstreams))),
            key("proxy_protocol", a.proxy_protocol.map(|v| string(v.as_str())))
                .doc("a PROXY protocol header to the upstreams: \"v2\" (or \"v1\")"),
            key("proxy_protocol_cert", a.proxy_protocol_cert.map(|b| b.to_string())),
            key("reuse_port", a.reuse_port.map(|b| b.to_string())),
            key(
                "mode",
                a.mode.map(|m| {
                    string(match m {
                        AppMode::Enforce => "enforce",
                        AppMode::Audit => "audit",
                    })
                }),
            ),
        ],
    );
    t.template = false;
    t.write(out);
    health(a.health.as_ref()).write(out);
    if let Some(u) = &a.upstream_tls {
        let mut t = table(
            "[app.upstream_tls]",
            true,
            vec![
                key("ca", Some(string(&u.ca))),
                key("cert", u.cert.as_deref().map(string)),
                key("key", u.key.as_deref().map(string)),
                key("server_name", u.server_name.as_deref().map(string)),
                key("min_version", u.min_version.map(version)),
            ],
        );
        t.nested = true;
        t.write(out);
    }
}

fn health(h: Option<&HealthSection>) -> Table {
    let d = HealthSettings::default();
    let v = h.cloned().unwrap_or_default();
    let mut t = table(
        "[app.health]",
        h.is_some(),
        vec![
            key("interval", v.interval.map(duration)).example(duration(d.interval)),
            key("timeout", v.timeout.map(duration)).example(duration(d.timeout)),
            key("rise", v.rise.map(count))
                .doc("consecutive good checks to return")
                .example(count(d.rise)),
            key("fall", v.fall.map(count))
                .doc("consecutive failures (checks or traffic) to eject")
                .example(count(d.fall)),
            key("send", v.send.as_deref().map(string))
                .doc("optional: send/expect instead of a TCP connect")
                .example(string("ping\n")),
            key("expect", v.expect.as_deref().map(string)).example(string("ping")),
        ],
    );
    t.nested = true;
    t.comment = "active checks";
    t.note = &[
        "Without [app.health]: passive circuit breaker only (3 failed connects eject",
        "an upstream; half-open retry after 1 s, doubling up to 60 s).",
    ];
    t
}

fn trust_domain(td: &TrustDomainSection) -> Table {
    let mut t = table(
        "[[trust_domain]]",
        true,
        vec![
            key("name", Some(string(&td.name))),
            key("ca", Some(string(&td.ca))),
            key("crl", td.crl.as_deref().map(string)),
        ],
    );
    t.template = false;
    t
}

fn client(c: &ClientSection) -> Table {
    let mut keys = vec![
        key("name", Some(string(&c.name))),
        key("uri", c.uri.as_deref().map(string)),
        key("dns", c.dns.as_deref().map(string)),
        key("apps", Some(strings(&c.apps))),
    ];
    keys.extend(limit_keys(&c.limits, false));
    keys.push(key("spki_sha256", c.spki_sha256.map(|p| string(&hex::encode(p)))));
    let mut t = table("[[client]]", true, keys);
    t.template = false;
    t
}

impl fmt::Display for TlsSection {
    /// The section as a document holds it (plain, from a blank line).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        tls(self).fmt(f)
    }
}

impl fmt::Display for GlobalLimitsSection {
    /// The section as a document holds it (plain, from a blank line).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        limits(Some(self)).fmt(f)
    }
}

impl fmt::Display for TimeoutsSection {
    /// The section as a document holds it (plain, from a blank line).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        timeouts(Some(self)).fmt(f)
    }
}

impl fmt::Display for AdminSection {
    /// The section as a document holds it (plain, from a blank line).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        admin(Some(self)).fmt(f)
    }
}

impl fmt::Display for ClientSection {
    /// The section as a document holds it (plain, from a blank line).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        client(self).fmt(f)
    }
}

impl fmt::Display for AppSection {
    /// The `[[app]]` with its nested tables (plain, from a blank line).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Out {
            s: String::new(),
            annotated: false,
        };
        write_app(self, &mut out);
        f.write_str(&out.s)
    }
}
