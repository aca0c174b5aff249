//! `tlb pki init | issue | revoke | crl | show`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use clap::builder::RangedU64ValueParser;

use crate::cmd::KeyTypeArg;
use tlb::core::config::{Config, example_toml};
use tlb::core::pki::{CRL_DAYS, InitOptions, KeyType, MAX_CRL_DAYS, MAX_DAYS, Pki, Role, San, Validity};

/// `--days` of a certificate: 1 to [`MAX_DAYS`] (out of range: a usage error).
fn cert_days() -> RangedU64ValueParser<u32> {
    RangedU64ValueParser::new().range(1..=u64::from(MAX_DAYS))
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Create a CA, a server certificate, client certificates, an empty CRL, issued.tsv and ./tlb.toml.
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
        #[arg(long, value_enum, default_value_t = KeyTypeArg::EcdsaP256)]
        key_type: KeyTypeArg,
        /// Validity of server and client certificates, 1-36500 (the CA gets at least 10 years).
        #[arg(long, default_value_t = 365, value_parser = cert_days())]
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
        /// Validity in days, 1-36500 (capped at the CA's expiry).
        #[arg(long, default_value_t = 365, value_parser = cert_days())]
        days: u32,
        #[arg(long, value_enum, default_value_t = KeyTypeArg::EcdsaP256)]
        key_type: KeyTypeArg,
        /// Replace an existing certificate of that name; the old one is revoked in crl.pem first.
        #[arg(long)]
        force: bool,
        /// A URI SAN, e.g. a SPIFFE ID spiffe://prod.example/ns/pay/sa/api (repeatable).
        #[arg(long = "uri", value_name = "URI")]
        uris: Vec<String>,
        /// A DNS SAN, e.g. api.pay.internal (repeatable; no wildcards).
        #[arg(long = "dns", value_name = "NAME")]
        dnss: Vec<String>,
    },
    /// Revoke a certificate: add its serial to crl.pem (reload `tlb serve` to apply).
    #[command(group(clap::ArgGroup::new("what").args(["name", "serial"]).required(true)))]
    Revoke {
        /// Name as shown by `tlb pki show`.
        name: Option<String>,
        /// Revoke by serial (hex) instead, e.g. a certificate replaced earlier; it must be in <dir>/issued.tsv.
        #[arg(long)]
        serial: Option<String>,
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
    },
    /// Re-sign crl.pem: same revoked serials, next CRL number, fresh nextUpdate (run it before the old one passes).
    Crl {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// Days until the CRL's nextUpdate, 1-366.
        #[arg(long, default_value_t = CRL_DAYS, value_parser = RangedU64ValueParser::<u32>::new().range(1..=u64::from(MAX_CRL_DAYS)))]
        days: u32,
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
        } => init(&dir, clients, server_names, key_type.into(), days, force, &config),
        Action::Issue {
            name,
            dir,
            server,
            days,
            key_type,
            force,
            uris,
            dnss,
        } => {
            let role = if server { Role::Server } else { Role::Client };
            let pki = Pki::new(&dir);
            let sans: Vec<San> = uris
                .into_iter()
                .map(San::Uri)
                .chain(dnss.into_iter().map(San::Dns))
                .collect();
            let issued = pki.issue_with_sans(&name, role, key_type.into(), Validity::days(days), force, &sans)?;
            if let Some(old) = &issued.replaced {
                if old.already_revoked {
                    println!(
                        "replaced certificate (serial {}) was already revoked in {}",
                        old.serial,
                        pki.crl().display()
                    );
                } else {
                    println!(
                        "revoked the replaced certificate (serial {}) in {}",
                        old.serial,
                        pki.crl().display()
                    );
                }
            }
            println!("issued {role} certificate {name} (serial {}):", issued.serial);
            println!("  {}", issued.cert.display());
            println!("  {}", issued.key.display());
            if issued.replaced.is_some() {
                println!("next: reload `tlb serve` (SIGHUP) so it refuses the replaced certificate");
            } else if role == Role::Client {
                println!(
                    "next: allow it in tlb.toml with a [[client]] name = \"{name}\" entry, then reload `tlb serve` (SIGHUP)"
                );
            }
            Ok(())
        }
        Action::Revoke { name, serial, dir } => {
            let pki = Pki::new(&dir);
            match (name, serial) {
                (_, Some(serial)) => {
                    let r = pki.revoke_serial(&serial)?;
                    println!(
                        "revoked serial {} ({} {}) in {}",
                        r.serial,
                        r.role,
                        r.name,
                        pki.crl().display()
                    );
                }
                (Some(name), None) => {
                    let serial = pki.revoke(&name)?;
                    println!("revoked {name} (serial {serial}) in {}", pki.crl().display());
                }
                (None, None) => {
                    return Err(super::UsageError("name a certificate to revoke, or pass --serial HEX".into()).into());
                }
            }
            println!("next: reload `tlb serve` (SIGHUP) so it refuses this certificate");
            Ok(())
        }
        Action::Crl { dir, days } => {
            let pki = Pki::new(&dir);
            let crl = pki.resign_crl(days)?;
            println!(
                "re-signed {}: CRL number {}, {} revoked serial(s), next update {}",
                pki.crl().display(),
                crl.number,
                crl.revoked,
                crl.next_update
            );
            println!("next: reload `tlb serve` (SIGHUP), and re-sign again before the next update (e.g. from cron)");
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
        tlb::core::pki::write_file(config, text.as_bytes(), 0o644)?;
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
        // A client's SANs follow its CN (a server's SANs are its identity).
        let identity = match c.role {
            Role::Server => c.identity,
            _ if c.sans.is_empty() => c.identity,
            _ => format!("{} ({})", c.identity, c.sans.join(", ")),
        };
        rows.push([
            c.name,
            c.role.to_string(),
            identity,
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
    let stale = pki.unrevoked_replaced()?;
    if !stale.is_empty() {
        println!();
    }
    for r in stale {
        println!(
            "note: an older {} certificate {} (serial {}, valid until {}) is not revoked; revoke it with `tlb pki revoke --serial {} --dir {}`",
            r.role,
            r.name,
            r.serial,
            r.not_after,
            r.serial,
            pki.dir().display()
        );
    }
    Ok(())
}
