//! The validation context: the config's text and path, and the checks every
//! section shares (whole numbers, rates, per-client limits, path resolution).
//!
//! Promises: every error it builds names the config file, the line of the
//! offending span and the dotted key; relative paths are resolved against the
//! config file's directory, absolute ones are kept.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use crate::core::config::error::{ConfigError, line_of};
use crate::core::config::model::Limits;

/// The text being validated and the file it came from.
pub(crate) struct Ctx<'a> {
    pub(crate) text: &'a str,
    pub(crate) path: &'a Path,
}

impl Ctx<'_> {
    /// An error at the line where `span` starts.
    pub(crate) fn err(&self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            line: line_of(self.text, span.start),
            key: key.into(),
            message: message.into(),
        }
    }

    /// An error about something absent (no line to point at).
    pub(crate) fn err_noline(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            line: 0,
            key: key.into(),
            message: message.into(),
        }
    }

    /// The 1-based line of byte `offset` of the text.
    pub(crate) fn line(&self, offset: usize) -> usize {
        line_of(self.text, offset)
    }

    /// `p` resolved against the config file's directory (absolute: kept).
    pub(crate) fn resolve(&self, p: PathBuf) -> PathBuf {
        if p.is_absolute() {
            return p;
        }
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
            _ => p,
        }
    }

    /// A whole number from 1 to `u32::MAX`.
    pub(crate) fn positive(&self, v: &Spanned<i64>, key: String) -> Result<u32, ConfigError> {
        let n = *v.get_ref();
        if n < 1 || n > i64::from(u32::MAX) {
            return Err(self.err(
                v.span(),
                key,
                format!("must be a whole number from 1 to {}, got {n}", u32::MAX),
            ));
        }
        Ok(n as u32)
    }

    /// A finite, positive rate (connections per second).
    pub(crate) fn rate(&self, v: &Spanned<f64>, key: String) -> Result<f64, ConfigError> {
        let r = *v.get_ref();
        if !(r.is_finite() && r > 0.0) {
            return Err(self.err(
                v.span(),
                key,
                format!("must be a positive number of connections per second, got {r}"),
            ));
        }
        Ok(r)
    }

    /// `base` with the limits the entry sets (keys under `prefix`) checked
    /// and applied.
    pub(crate) fn limits(
        &self,
        base: Limits,
        prefix: &str,
        mc: &Option<Spanned<i64>>,
        rate: &Option<Spanned<f64>>,
        burst: &Option<Spanned<i64>>,
    ) -> Result<Limits, ConfigError> {
        let mut out = base;
        if let Some(v) = mc {
            out.max_connections = self.positive(v, format!("{prefix}max_connections"))?;
        }
        if let Some(v) = rate {
            out.connection_rate = self.rate(v, format!("{prefix}connection_rate"))?;
        }
        if let Some(v) = burst {
            out.burst = self.positive(v, format!("{prefix}burst"))?;
        }
        Ok(out)
    }
}
