//! `tlb pki init | issue | revoke | show`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use crate::core::config::{Config, example_toml};
use crate::core::pki::{InitOptions, KeyType, Pki, Role, Validity};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Create a CA, a server certificate, client certificates, an empty CRL and ./tlb.toml.
    Init {
        /// PKI directory.
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// Client certificates to issue (CN = name).
        #[arg(long, value_delimiter = ',', default_value = "client1,client2,client3,client4")]
        clients: Vec<String>,
        /// Extra server names (DNS or IP) besides localhost, 127.0.0.1 and ::1. Repeatable.
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// Key algorithm.
        #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
        key_type: KeyType,
        /// Validity of server and client certificates (the CA gets at least 10 years).
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Replace an existing PKI (invalidates every certificate issued from it).
        #[arg(long)]
        force: bool,
        /// Where to write the sample config, if the file does not exist yet.
        #[arg(long, default_value = "tlb.toml")]
        config: PathBuf,
    },
    /// Issue one more client (or, with --server, server) certificate from the existing CA.
    Issue {
        /// Client identity (CN), or the server's DNS name / IP with --server.
        name: String,
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// Issue a server certificate (SANs: NAME, localhost, 127.0.0.1, ::1) into servers/.
        #[arg(long)]
        server: bool,
        /// Validity in days (capped at the CA's expiry).
        #[arg(long, default_value_t = 365)]
        days: u32,
        #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
        key_type: KeyType,
        /// Replace an existing certificate of that name (revoke the old one first).
        #[arg(long)]
        force: bool,
    },
    /// Revoke a certificate: add its serial to crl.pem (reload `tlb serve` to apply).
    Revoke {
        /// Name as shown by `tlb pki show`.
        name: String,
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
    },
    /// List certificates: name, role, identity, serial, expiry, revoked.
    Show {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// Also print each certificate's SPKI SHA-256 (for `spki_sha256` pins).
        #[arg(long)]
        spki: bool,
    },
}

pub fn run(args: Args) -> Result<()> {
    match args.action {
        Action::Init {
            dir,
            clients,
            server_names,
            key_type,
            days,
            force,
            config,
        } => init(&dir, clients, server_names, key_type, days, force, &config),
        Action::Issue {
            name,
            dir,
            server,
            days,
            key_type,
            force,
        } => {
            if days == 0 {
                bail!("--days must be at least 1");
            }
            let role = if server { Role::Server } else { Role::Client };
            let pki = Pki::new(&dir);
            let (cert, key) = pki.issue(&name, role, key_type, Validity::days(days), force)?;
            println!("issued {role} certificate {name}:");
            println!("  {}", cert.display());
            println!("  {}", key.display());
            if role == Role::Client {
                println!(
                    "next: allow it in tlb.toml with a [[client]] name = \"{name}\" entry, then reload `tlb serve` (SIGHUP)"
                );
            }
            Ok(())
        }
        Action::Revoke { name, dir } => {
            let pki = Pki::new(&dir);
            let serial = pki.revoke(&name)?;
            println!("revoked {name} (serial {serial}) in {}", pki.crl().display());
            println!("next: reload `tlb serve` (SIGHUP) so it refuses this certificate");
            Ok(())
        }
        Action::Show { dir, spki } => show(&Pki::new(&dir), spki),
    }
}

fn init(
    dir: &Path,
    clients: Vec<String>,
    server_names: Vec<String>,
    key_type: KeyType,
    days: u32,
    force: bool,
    config: &Path,
) -> Result<()> {
    let pki = Pki::new(dir);
    let opts = InitOptions {
        clients: clients
            .iter()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect(),
        server_names,
        key_type,
        days,
        force,
    };
    // Checked before the PKI is written: failing afterwards would leave a PKI
    // that a re-run refuses to replace without --force.
    if !config.exists()
        && let Some(parent) = config.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        bail!(
            "cannot write {}: directory {} does not exist; create it or pass another --config",
            config.display(),
            parent.display()
        );
    }
    let written = pki.init(&opts)?;
    println!("created PKI in {}:", dir.display());
    for p in &written {
        println!("  {}", p.display());
    }
    if config.exists() {
        println!("kept existing {} (not overwritten)", config.display());
    } else {
        let pki_ref = pki_path_for_config(dir, config)?;
        let text = example_toml(&pki_ref, &opts.clients);
        crate::core::pki::write_file(config, text.as_bytes(), 0o644)?;
        // Prove the file we just wrote is valid.
        Config::load(config)
            .with_context(|| format!("the generated {} does not validate (a bug in tlb)", config.display()))?;
        let (allowed, denied) = opts
            .clients
            .split_at(opts.clients.len().saturating_sub(1).max(1).min(opts.clients.len()));
        println!(
            "wrote {}: app `echo` on 127.0.0.1:8443 -> 127.0.0.1:9001-9003",
            config.display()
        );
        println!("  authorized: {}", allowed.join(", "));
        if !denied.is_empty() {
            println!("  left unauthorized to show a refusal: {}", denied.join(", "));
        }
    }
    println!(
        "next: tlb upstream --count 3   (then `tlb serve` and `tlb client --cert {} hello`)",
        opts.clients
            .get(1)
            .or(opts.clients.first())
            .map(String::as_str)
            .unwrap_or("client1")
    );
    Ok(())
}

/// How the generated config refers to the PKI directory: as written when the
/// config sits in the current directory, else absolute.
fn pki_path_for_config(dir: &Path, config: &Path) -> Result<String> {
    let config_in_cwd = config
        .parent()
        .is_none_or(|p| p.as_os_str().is_empty() || p == Path::new("."));
    if dir.is_relative() && config_in_cwd {
        return Ok(dir.display().to_string());
    }
    let abs = std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    Ok(abs.display().to_string())
}

fn show(pki: &Pki, spki: bool) -> Result<()> {
    let certs = pki.show()?;
    let mut rows: Vec<[String; 7]> = vec![[
        "NAME".into(),
        "ROLE".into(),
        "IDENTITY".into(),
        "SERIAL".into(),
        "NOT AFTER".into(),
        "REVOKED".into(),
        if spki { "SPKI SHA-256".into() } else { String::new() },
    ]];
    for c in certs {
        let expiry = if c.expired {
            format!("{} (expired)", c.not_after)
        } else {
            c.not_after
        };
        rows.push([
            c.name,
            c.role.to_string(),
            c.identity,
            c.serial,
            expiry,
            if c.revoked { "yes".into() } else { "no".into() },
            if spki { c.spki_sha256 } else { String::new() },
        ]);
    }
    let mut widths = [0usize; 7];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(cell.len());
        }
    }
    for r in &rows {
        let line: Vec<String> = r.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(())
}
