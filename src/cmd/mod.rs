//! One module per subcommand: its clap `Args` and `run(args)`.
//!
//! These are thin: they turn flags into calls of `tlb::core` and print
//! results for people. Anything reusable belongs in `core`, which has no
//! clap: the flag-facing enums below mirror the library's.

pub mod bench;
pub mod client;
pub mod pki;
pub mod serve;
pub mod upstream;

use clap::{Parser, Subcommand};

use tlb::core::ops::logging::LogFormat;
use tlb::core::pki::KeyType;
use tlb::core::tools::bench::Mode;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(f: LogFormatArg) -> LogFormat {
        match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

/// `--key-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyTypeArg {
    /// ECDSA on P-256 with SHA-256 (default; accepted everywhere).
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
    /// Ed25519 (smaller, faster to sign; needs OpenSSL >= 1.1.1 on peers).
    #[value(name = "ed25519")]
    Ed25519,
}

impl From<KeyTypeArg> for KeyType {
    fn from(k: KeyTypeArg) -> KeyType {
        match k {
            KeyTypeArg::EcdsaP256 => KeyType::EcdsaP256,
            KeyTypeArg::Ed25519 => KeyType::Ed25519,
        }
    }
}

/// `tlb bench --mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// New mTLS connection per exchange.
    Handshake,
    /// Persistent connections, ping-pong of --size bytes.
    Rr,
    /// Bulk bytes through the echo, both directions.
    Stream,
    /// Open --connections connections (at --rate per second if given), one
    /// echo each, then hold them idle until the end (memory per idle
    /// connection, connection capacity).
    Idle,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Handshake => Mode::Handshake,
            ModeArg::Rr => Mode::Rr,
            ModeArg::Stream => Mode::Stream,
            ModeArg::Idle => Mode::Idle,
        }
    }
}

/// tlb: a mutual-TLS layer-4 load balancer, with its own PKI, echo
/// upstreams, client and load generator.
#[derive(Debug, Parser)]
#[command(name = "tlb", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormatArg::Text, global = true)]
    pub log_format: LogFormatArg,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and manage the CA, server and client certificates.
    Pki(pki::Args),
    /// Run the load balancer from a config file.
    Serve(serve::Args),
    /// TCP echo servers for demos and tests.
    Upstream(upstream::Args),
    /// Connect with mTLS: send a message, or relay stdin/stdout.
    Client(client::Args),
    /// Load generator; without --target it stands up the whole system on loopback.
    Bench(bench::Args),
}

impl Cli {
    /// Commands whose default log level is warnings only.
    pub fn quiet_by_default(&self) -> bool {
        matches!(self.command, Command::Bench(_))
    }

    /// Runs the chosen subcommand.
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Pki(a) => pki::run(a),
            Command::Serve(a) => serve::run(a),
            Command::Upstream(a) => upstream::run(a),
            Command::Client(a) => client::run(a),
            Command::Bench(a) => bench::run(a),
        }
    }
}

/// Process exit status for an error: 2 = a usage mistake found after
/// parsing ([`UsageError`]), 3 = TLS handshake refused, 4 = closed by the
/// balancer before any reply, 1 = anything else.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    use tlb::core::tools::client::ClientError;
    if e.downcast_ref::<UsageError>().is_some() {
        return 2;
    }
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::TlsRefused { .. }) => 3,
        Some(ClientError::ClosedBeforeReply { .. }) => 4,
        _ => 1,
    }
}

/// A flag value that clap accepted alone but that is out of range with
/// another (e.g. `--listen` port + `--count`): exits 2, like clap's own.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `--threads`: 0 (one per core) to 1024; beyond, a usage error.
pub fn threads_arg() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(0..=1024)
}

/// Help and version go to stdout as clap renders them; a usage mistake is
/// one line on stderr (clap's first line, without its usage block) with a
/// pointer to the command's own `--help`, and exit 2.
pub fn usage_error(e: clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            std::process::ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            std::process::ExitCode::from(2)
        }
        _ => {
            // Errors about a value (ValueValidation...) have no usage block to
            // read the command from: the first subcommand on the line says it.
            let names: Vec<String> = <Cli as clap::CommandFactory>::command()
                .get_subcommands()
                .map(|c| c.get_name().to_string())
                .collect();
            let command = std::env::args().skip(1).find(|a| names.contains(a));
            eprintln!(
                "tlb: error: {}",
                usage_line(&e.render().to_string(), command.as_deref())
            );
            std::process::ExitCode::from(2)
        }
    }
}

/// clap's rendered error as one line: its first line (with the indented
/// list that follows a line ending in ':'), then where to read more: the
/// command of clap's `Usage: tlb client ...` line, else `subcommand`.
fn usage_line(rendered: &str, subcommand: Option<&str>) -> String {
    let mut lines = rendered.lines().skip_while(|l| l.trim().is_empty());
    let first = lines.next().unwrap_or("invalid arguments");
    let mut msg = first.trim().trim_start_matches("error: ").to_string();
    // "...were not provided:" is followed by the indented list of them.
    if msg.ends_with(':') {
        let items: Vec<&str> = lines.take_while(|l| l.starts_with("  ")).map(str::trim).collect();
        msg = format!("{msg} {}", items.join(", "));
    }
    // The usage line starts with the binary's file name, whatever it is.
    let from_usage: Option<Vec<&str>> = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage: "))
        .map(|u| {
            u.split_whitespace()
                .skip(1)
                .take_while(|w| !w.starts_with(['[', '<', '-']))
                .collect()
        });
    let words = match from_usage {
        Some(words) => words,
        None => subcommand.into_iter().collect(),
    };
    let command = std::iter::once("tlb").chain(words).collect::<Vec<_>>().join(" ");
    format!("{msg} (see `{command} --help`)")
}

/// An error as one line: its context chain joined by ": ", leaving out a
/// cause whose text the line already holds (an error that repeats its
/// source in its own message), and with any line break flattened.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// `--connect`: HOST:PORT (`[v6]:PORT` for IPv6); anything else is a usage
/// error that says so.
pub fn host_port(s: &str) -> Result<String, String> {
    if tlb::core::tools::client::has_port(s) {
        Ok(s.to_string())
    } else {
        Err("wants HOST:PORT, e.g. 127.0.0.1:8443".into())
    }
}

/// Client-certificate flags shared by `client` and `bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientCertArgs {
    /// Client name: uses <pki>/clients/NAME.crt and .key.
    #[arg(long)]
    pub cert: Option<String>,
    /// PKI directory for --cert and the default --ca.
    #[arg(long, default_value = "pki")]
    pub pki: std::path::PathBuf,
    // --cert-file and --key-file go together; `resolve` says so in one line
    // (clap's `requires` would print "the following required arguments were
    // not provided" and a usage block).
    /// Client certificate file (PEM), instead of --cert; needs --key-file.
    #[arg(long, conflicts_with = "cert")]
    pub cert_file: Option<std::path::PathBuf>,
    /// Client key file (PEM), with --cert-file.
    #[arg(long, conflicts_with = "cert")]
    pub key_file: Option<std::path::PathBuf>,
    /// CA that signed the server certificate (default: <pki>/ca.crt).
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,
}

/// Resolved client TLS files: `(cert, key)` when a certificate was named, and the CA.
pub struct ClientCertFiles {
    pub cert_key: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub ca: std::path::PathBuf,
}

impl ClientCertArgs {
    /// Turns the flags into files; a `--cert NAME` whose file is missing is an error.
    pub fn resolve(&self) -> anyhow::Result<ClientCertFiles> {
        let pki = tlb::core::pki::Pki::new(&self.pki);
        let cert_key = match (&self.cert, &self.cert_file, &self.key_file) {
            (Some(name), None, None) => {
                let (c, k) = pki.client(name);
                if !c.exists() {
                    anyhow::bail!(
                        "no certificate for client {name:?} at {} (see `tlb pki show --dir {}`, or pass --pki)",
                        c.display(),
                        self.pki.display()
                    );
                }
                Some((c, k))
            }
            (None, Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, Some(c), None) => {
                return Err(UsageError(format!(
                    "--cert-file {} needs --key-file with its private key (e.g. --key-file {})",
                    c.display(),
                    c.with_extension("key").display()
                ))
                .into());
            }
            (None, None, Some(k)) => {
                return Err(UsageError(format!(
                    "--key-file {} needs --cert-file with its certificate (e.g. --cert-file {}), or use --cert NAME",
                    k.display(),
                    k.with_extension("crt").display()
                ))
                .into());
            }
            _ => None,
        };
        let ca = self.ca.clone().unwrap_or_else(|| pki.ca_cert());
        Ok(ClientCertFiles { cert_key, ca })
    }
}

#[cfg(test)]
mod tests {
    use super::{error_line, usage_line};

    #[test]
    fn error_line_never_repeats_a_cause() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let text = io.to_string();
        // A message that embeds its source, then context on top.
        let e = anyhow::Error::new(io)
            .context(format!("connecting failed: {text}"))
            .context("client");
        let line = error_line(&e);
        assert_eq!(line, format!("client: connecting failed: {text}"));
        assert_eq!(line.matches(&text).count(), 1, "{line}");
        // Distinct causes are all kept, in order.
        let e = anyhow::anyhow!("not found").context("reading a.crt");
        assert_eq!(error_line(&e), "reading a.crt: not found");
        assert!(!error_line(&anyhow::anyhow!("two\nlines")).contains('\n'));
    }

    #[test]
    fn usage_line_points_at_the_commands_help() {
        let rendered = "error: unexpected argument '--x' found\n\nUsage: tlb-copy pki issue [OPTIONS] <NAME>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_line(rendered, Some("pki")),
            "unexpected argument '--x' found (see `tlb pki issue --help`)"
        );
        assert_eq!(
            usage_line("error: bad\n\nUsage: tlb <COMMAND>\n", None),
            "bad (see `tlb --help`)"
        );
        assert_eq!(
            usage_line("error: bad\n", Some("client")),
            "bad (see `tlb client --help`)"
        );
        assert_eq!(usage_line("error: bad\n", None), "bad (see `tlb --help`)");
    }
}
