//! The `tlb.toml` reference (`tlb::core::config::reference`) held to the
//! model it documents: each table lists exactly the keys the parser accepts
//! (read from the parser's own "expected one of" list), each documented
//! default is what the validated model uses when the key is left out, each
//! required key and table is refused when missing, each type's rules are
//! enforced, every example loads, and the README holds the rendering.
//!
//! `TLB_BLESS=1 cargo test --release --test integration reference::` rewrites the README's
//! reference from the tables instead of failing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tlb::core::config::reference::{self, Absent, KeyDoc, Kind, Presence, TABLES, TableDoc};
use tlb::core::config::{Config, ConfigError};

const BEGIN: &str = "<!-- config-reference:begin -->";
const END: &str = "<!-- config-reference:end -->";

/// A directory holding what the examples read at load (`admin.token`,
/// `redis.password`).
struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("admin.token"), "an-example-token\n").expect("admin.token");
        std::fs::write(dir.path().join("redis.password"), "an-example-password\n").expect("redis.password");
        Dir(dir)
    }

    fn parse(&self, text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, &self.0.path().join("tlb.toml"))
    }

    fn loads(&self, text: &str, what: &str) -> Config {
        self.parse(text)
            .unwrap_or_else(|e| panic!("{what}: {e}\n--- text ---\n{text}"))
    }

    fn refuses(&self, text: &str, what: &str) -> ConfigError {
        match self.parse(text) {
            Ok(_) => panic!("{what}: loaded, but should be refused\n--- text ---\n{text}"),
            Err(e) => e,
        }
    }
}

/// What to leave out of a [`config`].
#[derive(Clone, Copy, PartialEq)]
enum Omit<'a> {
    Nothing,
    /// A required key: (table path, key).
    Key(&'a str, &'a str),
    /// A required table.
    Table(&'a str),
}

/// A config text, tables in reference order: the required ones and those
/// named in `tables` or `set`, each with its required keys at their
/// examples (unless `set` writes them), then its `set` lines. A `set` line
/// for table `""` goes to the top level.
fn config(tables: &[&str], set: &[(&str, String)], omit: Omit<'_>) -> String {
    let mut out = String::new();
    let key_of = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
    for (_, line) in set.iter().filter(|(t, _)| t.is_empty()) {
        out.push_str(&format!("{line}\n"));
    }
    for t in TABLES {
        let required = matches!(t.presence, Presence::Required | Presence::OneOrMore);
        let wanted = required || tables.contains(&t.path) || set.iter().any(|(p, _)| *p == t.path);
        if !wanted || omit == Omit::Table(t.path) {
            continue;
        }
        out.push_str(&format!("\n{}\n", t.header()));
        for k in t.keys.iter().filter(|k| k.absent == Absent::Required) {
            let written = set.iter().any(|(p, l)| *p == t.path && key_of(l) == k.name);
            if !written && omit != Omit::Key(t.path, k.name) {
                out.push_str(&format!("{} = {}\n", k.name, k.example));
            }
        }
        for (_, line) in set.iter().filter(|(p, _)| *p == t.path) {
            out.push_str(&format!("{line}\n"));
        }
    }
    out
}

/// The dotted key an error names for `key` of the table at `path`, as the
/// first entry of every array of tables: `app[0].health.rise`.
fn error_key(path: &str, key: &str) -> String {
    let mut out = String::new();
    let mut prefix = String::new();
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        prefix = if prefix.is_empty() {
            seg.to_string()
        } else {
            format!("{prefix}.{seg}")
        };
        let t = reference::table(&prefix).unwrap_or_else(|| panic!("no table {prefix}"));
        out.push_str(seg);
        if matches!(t.presence, Presence::OneOrMore | Presence::ZeroOrMore) {
            out.push_str("[0]");
        }
        out.push('.');
    }
    format!("{out}{key}")
}

/// The names the parser lists after "expected" in an unknown-field error:
/// "unknown field `x`, expected one of `a`, `b`" (or "expected `a` or `b`").
fn expected_fields(message: &str) -> Option<BTreeSet<String>> {
    let rest = message.strip_prefix("unknown field `")?;
    let (_, list) = rest.split_once("expected")?;
    Some(list.split('`').skip(1).step_by(2).map(str::to_string).collect())
}

/// What the reference documents in the table at `path` (`""`: the top
/// level): its keys and its nested tables.
fn documented(path: &str) -> BTreeSet<String> {
    let keys = reference::table(path).map_or(&[][..], |t| t.keys);
    let nested = reference::children(path).map(|t| t.name().to_string());
    keys.iter().map(|k| k.name.to_string()).chain(nested).collect()
}

/// The model's verdict on the reference's key list of every table, one
/// line per table that differs (empty: none).
fn key_list_drift() -> Vec<String> {
    let dir = Dir::new();
    let paths = std::iter::once("").chain(TABLES.iter().map(|t| t.path));
    let mut problems = Vec::new();
    for path in paths {
        let text = config(&[path], &[(path, "zz_not_a_key = 1".into())], Omit::Nothing);
        let e = dir.refuses(&text, &format!("an unknown key in table {path:?}"));
        assert_eq!(e.key, error_key(path, "zz_not_a_key"), "{e}\n--- text ---\n{text}");
        let accepted = expected_fields(&e.message)
            .unwrap_or_else(|| panic!("not an unknown-field error with the accepted keys: {e}"));
        let documented = documented(path);
        if accepted != documented {
            let missing: Vec<_> = accepted.difference(&documented).collect();
            let extra: Vec<_> = documented.difference(&accepted).collect();
            problems.push(format!(
                "table {path:?}: the model accepts {missing:?} that the reference lacks, the reference lists {extra:?} that the model refuses"
            ));
        }
    }
    problems
}

#[test]
fn every_table_lists_exactly_the_keys_the_model_accepts() {
    let problems = key_list_drift();
    assert!(
        problems.is_empty(),
        "the reference drifted from the model:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_documented_default_is_what_the_model_uses() {
    let dir = Dir::new();
    let mut checked = 0;
    for t in TABLES {
        for k in t.keys {
            let what = format!("{}.{}", t.path, k.name);
            let (tables, base): (Vec<&str>, Vec<(&str, String)>) = match k.absent {
                Absent::Is(_) => (vec![t.path], vec![]),
                Absent::From(from) => {
                    let source = reference::table(from).and_then(|f| f.key(k.name));
                    let source = source.unwrap_or_else(|| panic!("{what}: no key {} in [{from}]", k.name));
                    // A value that is not the source's own default, so inheriting is seen.
                    assert_ne!(
                        Absent::Is(source.example),
                        source.absent,
                        "{what}: pick another example"
                    );
                    (
                        vec![t.path, from],
                        vec![(from, format!("{} = {}", k.name, source.example))],
                    )
                }
                Absent::Required | Absent::Means(_) => continue,
            };
            let value = match k.absent {
                Absent::Is(v) => v.to_string(),
                _ => base[0]
                    .1
                    .split_once('=')
                    .map_or(String::new(), |(_, v)| v.trim().to_string()),
            };
            let left_out = dir.loads(&config(&tables, &base, Omit::Nothing), &what);
            let mut set = base.clone();
            set.push((t.path, format!("{} = {value}", k.name)));
            let written = dir.loads(&config(&tables, &set, Omit::Nothing), &what);
            assert_eq!(
                left_out, written,
                "{what}: left out is not the same as `{} = {value}`",
                k.name
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} defaults checked");
}

#[test]
fn a_required_key_or_table_is_refused_when_missing() {
    let dir = Dir::new();
    for t in TABLES {
        if matches!(t.presence, Presence::Required | Presence::OneOrMore) {
            let e = dir.refuses(&config(&[], &[], Omit::Table(t.path)), &format!("no {}", t.header()));
            assert!(e.key == t.path || e.message.contains(&format!("`{}`", t.path)), "{e}");
        }
        for k in t.keys.iter().filter(|k| k.absent == Absent::Required) {
            let what = format!("{} without {}", t.header(), k.name);
            let e = dir.refuses(&config(&[t.path], &[], Omit::Key(t.path, k.name)), &what);
            let named = e.key == error_key(t.path, k.name) || e.message == format!("missing field `{}`", k.name);
            assert!(named, "{what}: the error does not name the key: {e}");
        }
    }
}

/// Every key of `t` at its example, but of two keys that exclude each
/// other (`reference::EXCLUSIVE`) only the first, or `focus` if it is one.
fn examples_around(t: &TableDoc, focus: Option<&str>) -> Vec<(&'static str, String)> {
    let excluded = |name: &str| {
        reference::EXCLUSIVE.iter().any(|&(table, a, b)| {
            table == t.path
                && match focus {
                    Some(f) if f == a => name == b,
                    Some(f) if f == b => name == a,
                    _ => name == b,
                }
        })
    };
    t.keys
        .iter()
        .filter(|k| !excluded(k.name))
        .map(|k| (t.path, format!("{} = {}", k.name, k.example)))
        .collect()
}

/// Every key of `t` at its example (see [`examples_around`]).
fn examples(t: &TableDoc) -> Vec<(&'static str, String)> {
    examples_around(t, None)
}

#[test]
fn exclusive_keys_are_refused_together() {
    let dir = Dir::new();
    for &(path, a, b) in reference::EXCLUSIVE {
        let t = reference::table(path).expect("table");
        let mut set = examples(t);
        let kb = t.key(b).expect("key");
        set.push((path, format!("{b} = {}", kb.example)));
        let e = dir.refuses(&config(&[path], &set, Omit::Nothing), &format!("{a} with {b}"));
        assert!(e.message.contains("not both"), "{e}");
    }
}

#[test]
fn every_example_loads_and_is_used() {
    let dir = Dir::new();
    let mut all = Vec::new();
    for t in TABLES {
        let set = examples(t);
        dir.loads(
            &config(&[t.path], &set, Omit::Nothing),
            &format!("the examples of {}", t.header()),
        );
        all.extend(set);
    }
    let c = dir.loads(&config(&[], &all, Omit::Nothing), "every example at once");
    // Spot checks that the examples land where the reference says.
    assert_eq!(c.apps[0].name, "web");
    assert_eq!(c.clients[0].apps, ["web"]);
    assert_eq!(c.clients[0].limits.connection_rate, 0.5);
    assert_eq!(
        c.tls.ca,
        dir.0.path().join("pki/ca.crt"),
        "a path is relative to the config file"
    );
}

/// TOML values of each type that the model must refuse.
fn refused_values(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Path | Kind::Text => &["1", "[]"],
        Kind::Names => &[r#""web""#, "[1]"],
        Kind::Listen => &[r#""localhost:8444""#, r#""8444""#, "8444"],
        Kind::HostPorts => &[r#"["10.0.0.1"]"#, r#""10.0.0.1:80""#],
        Kind::Count => &["0", "-1", "4294967296", r#""1""#, "1.5"],
        Kind::Rate => &["0", "-1", "nan", "inf", r#""1""#],
        Kind::Duration => &[r#""0s""#, r#""5""#, "5", r#""101y""#],
        Kind::DurationOrZero => &[r#""-1s""#, r#""5""#, r#""101y""#],
        Kind::Interval => &[r#""0s""#, r#""999ms""#, r#""5""#, "5", r#""101y""#],
        Kind::Bool => &[r#""true""#, "1"],
        Kind::Version => &[r#""1.1""#, "1.3"],
        Kind::ProxyVersion => &["true", "false", r#""v3""#, r#""V2""#, "2"],
        Kind::Sha256Hex => &[
            r#""abc""#,
            r#""zz41402abc4b2a76b9719d911017c592aabbccddeeff00112233445566778899""#,
        ],
        Kind::Mode => &[r#""enforcing""#, r#""""#, "true"],
        Kind::Uri => &[
            r#""no-scheme""#,
            r#""spiffe://Prod/x""#,
            r#""spiffe://prod.example/a/../b""#,
            r#""x:a b""#,
            "1",
        ],
        Kind::DnsName => &[r#""*.web.internal""#, r#""bad name""#, r#""""#, "1"],
        Kind::TrustDomain => &[r#""Prod.Example""#, r#""prod/x""#, r#""""#, "1"],
        Kind::RedisUrl => &[
            r#""10.0.0.5:6379""#,
            r#""http://10.0.0.5:6379""#,
            r#""redis://""#,
            r#""redis://:secret@10.0.0.5:6379""#,
            r#""rediss://10.0.0.5:6379/#insecure""#,
            r#""redis://10.0.0.5:6379/x""#,
            r#""redis://10.0.0.5:99999""#,
            "1",
        ],
    }
}

/// TOML values of each type the model must accept (besides the examples).
fn accepted_values(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Count => &["1", "4294967295"],
        Kind::Rate => &["0.001", "1e6"],
        Kind::DurationOrZero => &[r#""0s""#],
        Kind::Interval => &[r#""1s""#, r#""1h""#],
        Kind::Sha256Hex => {
            &[r#""5D:41:40:2A:BC:4B:2A:76:B9:71:9D:91:10:17:C5:92:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99""#]
        }
        Kind::Mode => &[r#""enforce""#],
        Kind::Uri => &[
            r#""urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66""#,
            r#""spiffe://prod.example""#,
        ],
        Kind::DnsName => &[r#""API.Web.Internal""#],
        Kind::RedisUrl => &[r#""rediss://redis.internal""#, r#""rediss://tlb@[::1]:6380/2""#],
        _ => &[],
    }
}

#[test]
fn every_type_is_enforced_as_documented() {
    let dir = Dir::new();
    let mut refused = 0;
    for t in TABLES {
        for k in t.keys {
            // The other keys of the table at their examples, so that a refusal is this key's.
            let others: Vec<_> = examples_around(t, Some(k.name))
                .into_iter()
                .filter(|(_, l)| !is_key(l, k))
                .collect();
            let with = |v: &str| {
                let mut set = others.clone();
                set.push((t.path, format!("{} = {v}", k.name)));
                config(&[t.path], &set, Omit::Nothing)
            };
            for v in refused_values(k.kind) {
                let what = format!("{}.{} = {v} ({:?})", t.path, k.name, k.kind);
                let e = dir.refuses(&with(v), &what);
                assert_eq!(e.key, error_key(t.path, k.name), "{what}: {e}");
                refused += 1;
            }
            for v in accepted_values(k.kind) {
                dir.loads(&with(v), &format!("{}.{} = {v} ({:?})", t.path, k.name, k.kind));
            }
        }
    }
    assert!(refused > 100, "only {refused} refusals checked");
}

fn is_key(line: &str, k: &KeyDoc) -> bool {
    line.split('=').next().map(str::trim) == Some(k.name)
}

// ---------------------------------------------------------------------------
// The README holds the rendering

fn readme_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")
}

/// `readme` with the text between the markers replaced by `fresh`; `None`
/// when the markers are not there once each, in order.
fn with_reference(readme: &str, fresh: &str) -> Option<String> {
    let (head, rest) = readme.split_once(BEGIN)?;
    let (_, tail) = rest.split_once(END)?;
    if tail.contains(BEGIN) || tail.contains(END) || head.contains(END) {
        return None;
    }
    Some(format!("{head}{BEGIN}\n{fresh}{END}{tail}"))
}

/// The first line where `a` and `b` differ (1-based), with both versions.
fn first_difference(a: &str, b: &str) -> String {
    let (mut la, mut lb) = (a.lines(), b.lines());
    for n in 1.. {
        match (la.next(), lb.next()) {
            (None, None) => break,
            (x, y) if x != y => return format!("README.md:{n}:\n  README:    {x:?}\n  rendering: {y:?}"),
            _ => {}
        }
    }
    "(no line differs; line endings?)".into()
}

#[test]
fn the_readme_holds_the_rendered_reference() {
    let path = readme_path();
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let fresh = reference::render_markdown();
    let want = with_reference(&readme, &fresh)
        .unwrap_or_else(|| panic!("README.md must hold {BEGIN} and then {END}, once each"));
    if want == readme {
        return;
    }
    if std::env::var_os("TLB_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &want).expect("rewriting README.md");
        eprintln!("TLB_BLESS=1: rewrote the config reference in {}", path.display());
        return;
    }
    panic!(
        "README.md's config reference is not the rendering of src/core/config/reference/tables.rs; \
         run `TLB_BLESS=1 cargo test --release --test integration reference::` to rewrite it. First difference:\n{}",
        first_difference(&readme, &want)
    );
}

#[test]
fn the_rendering_has_a_row_per_key_and_a_section_per_table() {
    let md = reference::render_markdown();
    for t in TABLES {
        assert!(
            md.contains(&format!("### `{}`", t.header())),
            "no section for {}",
            t.header()
        );
        for k in t.keys {
            assert!(
                md.contains(&format!("| `{}` | {} |", k.name, k.kind.describe())),
                "no row for {}",
                k.name
            );
        }
    }
    let rows = md.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(rows, TABLES.iter().map(|t| t.keys.len()).sum::<usize>());
}

#[test]
fn a_drifted_readme_is_detected_and_located() {
    let fresh = "line one\nline two\n";
    let readme = format!("# x\n{BEGIN}\nline one\nline 2\n{END}\nrest\n");
    let want = with_reference(&readme, fresh).expect("markers");
    assert_ne!(want, readme);
    assert!(
        first_difference(&readme, &want).starts_with("README.md:4:"),
        "{}",
        first_difference(&readme, &want)
    );
    assert_eq!(
        with_reference(&want, fresh).as_deref(),
        Some(want.as_str()),
        "blessed text is stable"
    );
    assert_eq!(with_reference("no markers", fresh), None);
    assert_eq!(with_reference(&format!("{END}{BEGIN}{END}"), fresh), None);
}
