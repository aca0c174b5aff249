//! The `tlb.toml` model: typed, defaulted, validated, and the one
//! writer of `tlb.toml` text.
//!
//! [`Config::load`] reads a file, [`Config::parse`] a string. Every problem is a
//! [`ConfigError`] that names the file, the 1-based line and the key, so a user
//! can go straight to it. Relative paths in the file are resolved against the
//! directory that holds the config file. Upstream host names are resolved when
//! the config is loaded (and again on each reload), not per connection.
//! [`writer::ConfigWriter`] renders config text (pki init's sample, the lab's,
//! the tests'); what it renders loads with [`Config::parse`].

mod error;
mod literal;
mod model;
mod raw;
pub mod reference;
mod render;
mod sample;
mod validate;
pub mod writer;

use std::path::Path;

pub use error::ConfigError;
pub use model::*;
pub use sample::{demo_clients, example_toml};

impl Config {
    /// Reads and validates `path`. A missing file is reported with the fix.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let message = if e.kind() == std::io::ErrorKind::NotFound {
                "file not found; run `tlb pki init` to create one, or pass --config FILE".to_string()
            } else {
                format!("cannot read: {e}")
            };
            ConfigError {
                file: path.to_path_buf(),
                line: 0,
                key: String::new(),
                message,
            }
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is used for messages and to
    /// resolve relative paths (against its parent directory).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span();
            let line = span.as_ref().map(|s| error::line_of(text, s.start)).unwrap_or(0);
            let key = span
                .map(|s| error::key_path_at(text, s.clone(), e.message()).unwrap_or_else(|| error::key_at(text, s)))
                .unwrap_or_default();
            ConfigError {
                file: path.to_path_buf(),
                line,
                key,
                message: e.message().trim().replace('\n', " "),
            }
        })?;
        validate::config(raw, text, path)
    }
}
