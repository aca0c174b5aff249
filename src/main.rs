//! The `tlb` binary: parse flags, start logging, dispatch. Nothing else.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

mod cmd;

fn main() -> ExitCode {
    let cli = match cmd::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return cmd::usage_error(e),
    };
    if let Err(e) = tlb::core::ops::logging::init(cli.verbose, cli.log_format.into(), cli.quiet_by_default()) {
        eprintln!("tlb: error: {}", cmd::error_line(&e));
        return ExitCode::from(2);
    }
    let json = cli.log_format == cmd::LogFormatArg::Json;
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined by ": ", each cause once (a
            // JSON object with --log-format json).
            let line = format!("tlb: error: {}", cmd::error_line(&e));
            if json {
                // Written directly (not through the logger, which RUST_LOG may filter).
                let line = serde_json::json!({
                    "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
                    "level": "ERROR",
                    "message": line,
                    "target": "tlb",
                });
                eprintln!("{line}");
            } else {
                eprintln!("{line}");
            }
            ExitCode::from(cmd::exit_code(&e))
        }
    }
}
