//! TOML value literals as the config writer spells them: basic strings,
//! string arrays, counts, rates, human durations and TLS versions.
//!
//! Promises: every literal is valid TOML that the config model reads back
//! to the same value (strings escaped, whole rates without a fraction,
//! durations in the human form the model parses).

use std::time::Duration;

use crate::core::config::model::TlsVersion;

/// A TOML basic string.
pub(crate) fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(crate) fn strings(list: &[String]) -> String {
    let items: Vec<String> = list.iter().map(|s| string(s)).collect();
    format!("[{}]", items.join(", "))
}

pub(crate) fn count(n: u32) -> String {
    n.to_string()
}

/// A rate: whole numbers without a fraction (`20`, not `20.0`).
pub(crate) fn rate(r: f64) -> String {
    if r.is_nan() {
        "nan".into()
    } else if r.is_infinite() {
        if r > 0.0 { "inf".into() } else { "-inf".into() }
    } else if r.fract() == 0.0 && r.abs() < 1e15 {
        format!("{}", r as i64)
    } else {
        format!("{r:?}")
    }
}

pub(crate) fn duration(d: Duration) -> String {
    string(&humantime::format_duration(d).to_string())
}

pub(crate) fn version(v: TlsVersion) -> String {
    match v {
        TlsVersion::V1_2 => string("1.2"),
        TlsVersion::V1_3 => string("1.3"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_toml() {
        assert_eq!(string("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\u0001""#);
        assert_eq!(rate(20.0), "20");
        assert_eq!(rate(0.001), "0.001");
        assert_eq!(rate(1e300), "1e300");
        assert_eq!(duration(Duration::from_secs(600)), "\"10m\"");
        assert_eq!(duration(Duration::ZERO), "\"0s\"");
        assert_eq!(strings(&[]), "[]");
    }
}
