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
/// one line on stderr (clap's first line, without its usage block) and exit 2.
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
            let rendered = e.render().to_string();
            let mut lines = rendered.lines().skip_while(|l| l.trim().is_empty());
            let first = lines.next().unwrap_or("invalid arguments");
            let mut msg = first.trim().trim_start_matches("error: ").to_string();
            // "...were not provided:" is followed by the indented list of them.
            if msg.ends_with(':') {
                let items: Vec<&str> = lines.take_while(|l| l.starts_with("  ")).map(str::trim).collect();
                msg = format!("{msg} {}", items.join(", "));
            }
            eprintln!("tlb: error: {msg} (see `tlb --help`, or `tlb <command> --help`)");
            std::process::ExitCode::from(2)
        }
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
    /// Client certificate file (PEM), instead of --cert.
    #[arg(long, requires = "key_file", conflicts_with = "cert")]
    pub cert_file: Option<std::path::PathBuf>,
    /// Client key file (PEM), with --cert-file.
    #[arg(long, requires = "cert_file")]
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
            _ => None,
        };
        let ca = self.ca.clone().unwrap_or_else(|| pki.ca_cert());
        Ok(ClientCertFiles { cert_key, ca })
    }
}
