//! The `tlb.toml` reference: every table and key the model accepts, with its
//! type, its value when left out, an example and what it does, and the
//! Markdown the README holds ([`render_markdown`]).
//!
//! Promises: `tests/reference.rs` holds these tables to the model, so they
//! cannot drift from it: each table lists exactly the keys the parser
//! accepts; a documented default is what the validated model uses when the
//! key is left out; a required key or table is refused when missing; every
//! example loads; and the README's reference is this module's rendering.

mod app_tables;
mod cluster;
mod tables;

pub use tables::TABLES;

/// Keys of one table that exclude each other: `(table, key, key)`. The
/// examples of a table are used together except for these.
pub const EXCLUSIVE: &[(&str, &str, &str)] = &[("client", "uri", "dns")];

/// One table of `tlb.toml` (`[tls]`, `[[app]]`, `[app.health]`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableDoc {
    /// Dotted path: `tls`, `app`, `app.health`.
    pub path: &'static str,
    pub presence: Presence,
    /// What the table is for (Markdown).
    pub doc: &'static str,
    /// Its keys; nested tables are tables of their own, found by path.
    pub keys: &'static [KeyDoc],
}

/// Whether a table must appear, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Required,
    Optional,
    /// An array of tables (`[[app]]`) with at least one entry.
    OneOrMore,
    /// An array of tables that may be empty.
    ZeroOrMore,
}

/// One key of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDoc {
    pub name: &'static str,
    pub kind: Kind,
    pub absent: Absent,
    /// A TOML value that loads (with the other examples of its table).
    pub example: &'static str,
    /// What the key does (Markdown).
    pub doc: &'static str,
}

/// What leaving a key out means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absent {
    /// The config is refused without it.
    Required,
    /// The same as writing this TOML value.
    Is(&'static str),
    /// The same as writing the value this table (e.g. `defaults`) gives the
    /// key of the same name, whether set there or left to its default.
    From(&'static str),
    /// Not expressible as a value: what tlb does then (Markdown).
    Means(&'static str),
}

/// The type of a value, with the rules the model enforces on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string naming a file, resolved against the config file's directory.
    Path,
    Text,
    /// An array of strings.
    Names,
    /// An `IP:PORT` string (no host name).
    Listen,
    /// An array of `HOST:PORT` strings, host names resolved at load.
    HostPorts,
    /// A whole number from 1 to `u32::MAX`.
    Count,
    /// A finite number greater than zero.
    Rate,
    /// A human duration string greater than zero.
    Duration,
    /// A human duration string, zero allowed.
    DurationOrZero,
    /// A human duration string of at least one second (a poll interval).
    Interval,
    Bool,
    /// `"1.2"` or `"1.3"`.
    Version,
    /// A SHA-256 in hex (64 digits, colons allowed).
    Sha256Hex,
    /// `"enforce"` or `"audit"`.
    Mode,
    /// A URI (`SCHEME:...`); a `spiffe://` one must be a SPIFFE ID.
    Uri,
    /// A DNS name, not a wildcard.
    DnsName,
    /// A SPIFFE trust domain: `a-z`, `0-9`, `.`, `-`, `_`.
    TrustDomain,
    /// `"v1"` or `"v2"` (PROXY protocol).
    ProxyVersion,
    /// `redis://HOST[:PORT][/DB]` or `rediss://...`.
    RedisUrl,
}

impl Kind {
    /// The type column of the reference.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Path => "path",
            Kind::Text => "string",
            Kind::Names => "array of strings",
            Kind::Listen => "`\"IP:PORT\"`",
            Kind::HostPorts => "array of `\"HOST:PORT\"`",
            Kind::Count => "integer, 1 to 4294967295",
            Kind::Rate => "number > 0",
            Kind::Duration => "duration > 0",
            Kind::DurationOrZero => "duration ≥ 0",
            Kind::Interval => "duration ≥ 1s",
            Kind::Bool => "boolean",
            Kind::Version => "`\"1.2\"` or `\"1.3\"`",
            Kind::Sha256Hex => "64 hex digits",
            Kind::Mode => "`\"enforce\"` or `\"audit\"`",
            Kind::Uri => "URI string",
            Kind::DnsName => "DNS name",
            Kind::TrustDomain => "trust domain name",
            Kind::ProxyVersion => "`\"v2\"` or `\"v1\"`",
            Kind::RedisUrl => "`\"redis://HOST:PORT\"` or `\"rediss://HOST:PORT\"`",
        }
    }
}

impl TableDoc {
    /// The table's header as written in `tlb.toml`: `[tls]`, `[[app]]`.
    pub fn header(&self) -> String {
        match self.presence {
            Presence::OneOrMore | Presence::ZeroOrMore => format!("[[{}]]", self.path),
            Presence::Required | Presence::Optional => format!("[{}]", self.path),
        }
    }

    /// Its name inside its parent: `health` for `app.health`.
    pub fn name(&self) -> &'static str {
        self.path.rsplit('.').next().unwrap_or(self.path)
    }

    /// The parent's path, `""` for a top-level table.
    pub fn parent(&self) -> &'static str {
        self.path.rsplit_once('.').map_or("", |(p, _)| p)
    }

    /// The key called `name`.
    pub fn key(&self, name: &str) -> Option<&'static KeyDoc> {
        self.keys.iter().find(|k| k.name == name)
    }
}

/// The table at `path` (`"app.health"`).
pub fn table(path: &str) -> Option<&'static TableDoc> {
    TABLES.iter().find(|t| t.path == path)
}

/// The tables nested directly in the table at `path` (`""`: the top level).
pub fn children(path: &str) -> impl Iterator<Item = &'static TableDoc> + '_ {
    TABLES.iter().filter(move |t| t.parent() == path)
}

/// The reference as Markdown: a short guide to the value types, then one
/// section per table with a row per key.
pub fn render_markdown() -> String {
    let mut out = String::new();
    out.push_str("<!-- Generated from src/core/config/reference/tables.rs by `render_markdown()`: edit there, then run `TLB_BLESS=1 cargo test --release --test integration reference::`. -->\n\n");
    out.push_str("Tables, in the order tlb writes them: ");
    let list: Vec<String> = TABLES
        .iter()
        .map(|t| format!("`{}` ({})", t.header(), presence(t.presence)))
        .collect();
    out.push_str(&list.join(", "));
    out.push_str(".\n\n");
    out.push_str(concat!(
        "A *path* is a string, resolved against the directory of the config file. ",
        "A *duration* is a string in human form (`\"500ms\"`, `\"5s\"`, `\"10m\"`, `\"1h\"`, `\"1h 30m\"`), ",
        "at most 100 years. A *default* in backquotes is the value a left-out key takes: writing it ",
        "changes nothing.\n",
    ));
    for t in TABLES {
        out.push('\n');
        render_table(t, &mut out);
    }
    out
}

fn presence(p: Presence) -> &'static str {
    match p {
        Presence::Required => "required",
        Presence::Optional => "optional",
        Presence::OneOrMore => "one or more",
        Presence::ZeroOrMore => "any number",
    }
}

fn render_table(t: &TableDoc, out: &mut String) {
    let within = match table(t.parent()) {
        Some(parent) => format!(", in each `{}`", parent.header()),
        None => String::new(),
    };
    out.push_str(&format!(
        "### `{}` ({}{within})\n\n{}\n",
        t.header(),
        presence(t.presence),
        t.doc
    ));
    let nested: Vec<String> = children(t.path).map(|c| format!("`{}`", c.header())).collect();
    if !nested.is_empty() {
        out.push_str(&format!("\nNested tables: {}.\n", nested.join(", ")));
    }
    out.push_str("\n| key | type | default | example | what it does |\n|---|---|---|---|---|\n");
    for k in t.keys {
        let default = match k.absent {
            Absent::Required => "**required**".to_string(),
            Absent::Is(v) => code(v),
            Absent::From(table) => format!("from `[{table}]`"),
            Absent::Means(m) => m.to_string(),
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            k.name,
            k.kind.describe(),
            cell(&default),
            cell(&code(k.example)),
            cell(k.doc)
        ));
    }
}

/// `s` as inline code, with a longer fence when it holds a backquote.
fn code(s: &str) -> String {
    if s.contains('`') {
        format!("`` {s} ``")
    } else {
        format!("`{s}`")
    }
}

/// `s` safe in a table cell: pipes escaped, one line.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_names_and_parents() {
        let health = table("app.health").expect("[app.health] is documented");
        assert_eq!(
            (health.header(), health.name(), health.parent()),
            ("[app.health]".into(), "health", "app")
        );
        let app = table("app").expect("[[app]] is documented");
        assert_eq!((app.header(), app.name(), app.parent()), ("[[app]]".into(), "app", ""));
        let nested: Vec<_> = children("app").map(|t| t.name()).collect();
        assert_eq!(nested, ["health", "upstream_tls"]);
    }

    #[test]
    fn cells_stay_in_their_column() {
        assert_eq!(cell("a | b\nc"), "a \\| b c");
        assert_eq!(code("x`y"), "`` x`y ``");
    }
}
