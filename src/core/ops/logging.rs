//! Logging set-up: `tracing` to stderr, as text or one JSON object per line.
//!
//! `RUST_LOG` wins when set; otherwise `-v` raises the level from `info`
//! (the default, which includes the access log) to `debug`, then `trace`.
//!
//! Promises: colour (ANSI escapes) only when stderr is a terminal and
//! `NO_COLOR` is unset or empty ([`use_colour`]); a log redirected to a file
//! or a pipe is plain text.

use std::ffi::OsStr;
use std::io::IsTerminal;

use anyhow::{Result, anyhow};
use tracing_subscriber::EnvFilter;

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
    let colour = use_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let res = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    res.map_err(|e| anyhow!("installing the logger: {e}"))
}

/// Whether log lines get colour: only on a terminal, and not when
/// `NO_COLOR` (<https://no-color.org>) holds any non-empty value.
pub fn use_colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::use_colour;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))), "an empty NO_COLOR is unset");
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(
            !use_colour(true, Some(OsStr::new("0"))),
            "any non-empty value disables colour"
        );
        assert!(!use_colour(false, None), "never into a file or pipe");
        assert!(!use_colour(false, Some(OsStr::new("1"))));
    }
}
