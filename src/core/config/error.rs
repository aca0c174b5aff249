//! [`ConfigError`]: a config problem located by file, 1-based line and
//! dotted key, and the helpers that find the line and key of a byte span.
//!
//! Promises: an error's `Display` is one line, `file:line: key `k`: message`
//! (line and key left out when unknown), so a user can go straight to it.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

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

/// 1-based line number of byte `offset` in `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The dotted key path (e.g. `app[1].upstreams`) of the entry under `span`
/// in the document: the key whose name or value the span starts in. For a
/// "missing field" error on a table, that field is appended to the table's
/// path. `None` when the text does not parse or nothing matches.
pub(crate) fn key_path_at(text: &str, span: Range<usize>, message: &str) -> Option<String> {
    let doc = toml::de::DeTable::parse(text).ok()?;
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

/// The path of the key at byte `at` under `table`, and whether it names a
/// table (rather than a key or value).
fn walk(table: &toml::de::DeTable<'_>, at: usize, prefix: &str) -> Option<(String, bool)> {
    use toml::de::DeValue;
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

/// The key text under a span, when it looks like a bare key.
pub(crate) fn key_at(text: &str, span: Range<usize>) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_of_counts_from_one() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 4), 3);
    }
}
