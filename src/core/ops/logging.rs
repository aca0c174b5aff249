//! Logging set-up: `tracing` to stderr, as text or one JSON object per line.
//!
//! `RUST_LOG` wins when set; otherwise `-v` raises the level from `info`
//! (the default, which includes the access log) to `debug`, then `trace`.

use anyhow::{Result, anyhow};
use tracing_subscriber::EnvFilter;

/// Moved to [`crate::core::rt::log`] (every layer escapes what it logs);
/// kept here for `tls::gate` until it imports it from there.
pub use crate::core::rt::log::escaped;

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. Call once, at start. `quiet` lowers the
/// default level to warnings (for `bench`, whose in-process balancer would
/// otherwise log every connection).
pub fn init(verbose: u8, format: LogFormat, quiet: bool) -> Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => EnvFilter::try_new(&s)
            .map_err(|e| anyhow!("RUST_LOG={s:?} is not a valid filter ({e}); e.g. RUST_LOG=tlb=debug"))?,
        _ => EnvFilter::new(match verbose {
            0 if quiet => "warn",
            0 => "warn,tlb=info",
            1 => "info,tlb=debug",
            _ => "debug,tlb=trace",
        }),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let res = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    res.map_err(|e| anyhow!("installing the logger: {e}"))
}
