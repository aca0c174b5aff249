//! The built-in PKI: a CA, server and client certificates, and a CRL, made
//! with rcgen and laid out as the README's `tlb pki` section describes.
//!
//! Promises: directories it creates are 0700 (an existing directory keeps
//! its mode, but one that others may write to is refused) and every key file
//! 0600 (PKCS#8 PEM); every certificate has a random 127-bit serial, so
//! revocation by serial is unambiguous; files are written to a temporary name
//! and renamed, so a failure never leaves a half-written key; nothing is
//! overwritten unless the caller asks (`force`), and a certificate replaced
//! by `issue` with `force` is revoked first.
//!
//! Two records: `crl.pem` holds the revocations (`show` reads it), signed
//! with a nextUpdate [`CRL_DAYS`] ahead unless [`Pki::resign_crl`] is given
//! another period; `issued.tsv` lists every certificate ever issued from the
//! CA (serial, name, role, notAfter; appended before the certificate is
//! written), so an older certificate can still be revoked by serial.

mod crl;
mod files;
mod record;
pub mod sans;
mod sign;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use time::{Duration as TimeDuration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

pub use crl::CrlState;
pub use files::{read_cert_der, write_file};
pub use record::Record;
pub use sans::{San, check_uri};

use files::{cert_serial, check_name, check_server_name, list_certs, make_private_dir, remove_pem_files};
use record::{RECORD_HEADER, rfc3339};
use sign::NewCa;

/// Key algorithm for newly generated keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256 (default; accepted everywhere).
    #[default]
    EcdsaP256,
    /// Ed25519 (smaller, faster to sign; needs OpenSSL >= 1.1.1 on peers).
    Ed25519,
}

impl KeyType {
    fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Ca,
    Server,
    Client,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Ca => "ca",
            Role::Server => "server",
            Role::Client => "client",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        [Role::Ca, Role::Server, Role::Client]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Validity window of a new certificate.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From five minutes ago (clock skew) to `days` from now, at most the
    /// end of year 9999 (the last date X.509 and the `time` crate can hold).
    pub fn days(days: u32) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now.saturating_sub(TimeDuration::minutes(5)),
            not_after: now.saturating_add(TimeDuration::days(i64::from(days))),
        }
    }
}

/// Longest certificate validity `--days` accepts: 100 years.
pub const MAX_DAYS: u32 = 36_500;

/// nextUpdate of every CRL this tool signs (init, revoke, `issue --force`),
/// in days, unless `tlb pki crl --days` picks another period.
pub const CRL_DAYS: u32 = 30;

/// Longest CRL validity `tlb pki crl --days` accepts.
pub const MAX_CRL_DAYS: u32 = 366;

/// What [`Pki::issue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Serial of the new certificate (upper-case hex).
    pub serial: String,
    /// The certificate it replaced (`force`), if there was one.
    pub replaced: Option<Replaced>,
}

/// A certificate replaced by `issue --force`: revoked before the new one
/// was written (or found already revoked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaced {
    pub serial: String,
    pub already_revoked: bool,
}

/// Options of `tlb pki init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub clients: Vec<String>,
    pub server_names: Vec<String>,
    pub key_type: KeyType,
    /// Validity of server and client certificates; the CA gets at least ten years.
    pub days: u32,
    pub force: bool,
}

/// One certificate as `show` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub name: String,
    pub role: Role,
    /// CN for clients and the CA; the SANs for servers.
    pub identity: String,
    /// Upper-case hex, no separators.
    pub serial: String,
    pub not_after: String,
    pub expired: bool,
    pub revoked: bool,
    /// Every SAN as `kind:value` (`dns:`, `ip:`, `uri:`).
    pub sans: Vec<String>,
    pub spki_sha256: String,
    pub path: PathBuf,
}

/// A PKI directory (`pki/` by default) and the paths inside it.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

/// CA validity floor: leaf `--days` must not make the CA expire first.
const CA_MIN_DAYS: u32 = 3650;

impl Pki {
    pub fn new(dir: impl Into<PathBuf>) -> Pki {
        Pki { dir: dir.into() }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }
    /// The record of every issued certificate.
    pub fn issued(&self) -> PathBuf {
        self.dir.join("issued.tsv")
    }
    pub fn clients_dir(&self) -> PathBuf {
        self.dir.join("clients")
    }
    pub fn servers_dir(&self) -> PathBuf {
        self.dir.join("servers")
    }
    /// `(cert, key)` of client `name`.
    pub fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        let d = self.clients_dir();
        (d.join(format!("{name}.crt")), d.join(format!("{name}.key")))
    }
    /// `(cert, key)` of extra server certificate `name` (from `issue --server`).
    pub fn server(&self, name: &str) -> (PathBuf, PathBuf) {
        let d = self.servers_dir();
        (d.join(format!("{name}.crt")), d.join(format!("{name}.key")))
    }

    /// Creates the CA, the server certificate, the clients, an empty CRL and
    /// a new `issued.tsv`. Returns the files written.
    pub fn init(&self, opts: &InitOptions) -> Result<Vec<PathBuf>> {
        self.check_init(opts)?;
        make_private_dir(&self.dir)?;
        if opts.force {
            // A new CA invalidates every old leaf: remove them so the
            // directory never mixes certificates from two CAs.
            for d in [self.clients_dir(), self.servers_dir()] {
                remove_pem_files(&d)?;
            }
        }
        make_private_dir(&self.clients_dir())?;

        let ca = NewCa::generate(opts.key_type, opts.days.max(CA_MIN_DAYS))?;
        let mut records = vec![ca.record.clone()];

        // Everything is signed first, so the record lists every serial
        // before any certificate exists on disk.
        let validity = Validity::days(opts.days);
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        for n in &opts.server_names {
            let n = n.trim().to_string();
            if !n.is_empty() && !names.contains(&n) {
                names.push(n);
            }
        }
        let issuer = &ca.issuer;
        let server_sans = names.iter().map(|n| sans::server_san(n)).collect::<Result<Vec<_>>>()?;
        let server = self.sign_leaf(issuer, Role::Server, "tlb server", server_sans, opts.key_type, validity)?;
        records.push(server.record("server", Role::Server));
        let mut leaves = vec![(self.server_cert(), self.server_key(), server)];
        for c in &opts.clients {
            let leaf = self.sign_leaf(issuer, Role::Client, c, Vec::new(), opts.key_type, validity)?;
            records.push(leaf.record(c, Role::Client));
            let (cp, kp) = self.client(c);
            leaves.push((cp, kp, leaf));
        }

        // A new CA starts a new record: the old CA's certificates died with it.
        let mut record = String::from(RECORD_HEADER);
        for r in &records {
            record.push_str(&r.line());
        }
        write_file(&self.issued(), record.as_bytes(), 0o644)?;
        let mut written = Vec::new();
        write_file(&self.ca_key(), ca.key_pem.as_bytes(), 0o600)?;
        written.push(self.ca_key());
        write_file(&self.ca_cert(), ca.cert_pem.as_bytes(), 0o644)?;
        written.push(self.ca_cert());
        for (cp, kp, leaf) in leaves {
            write_file(&kp, leaf.key.as_bytes(), 0o600)?;
            write_file(&cp, leaf.cert.as_bytes(), 0o644)?;
            written.extend([cp, kp]);
        }
        self.write_crl(issuer, Vec::new(), 0, CRL_DAYS)?;
        written.extend([self.crl(), self.issued()]);
        Ok(written)
    }

    /// The checks of [`Pki::init`], made before anything is written, so a
    /// typo leaves no half-made PKI.
    fn check_init(&self, opts: &InitOptions) -> Result<()> {
        for c in &opts.clients {
            check_name(c)?;
        }
        for n in &opts.server_names {
            let n = n.trim();
            if !n.is_empty() && n.parse::<IpAddr>().is_err() {
                check_server_name(n)?;
            }
        }
        if opts.clients.is_empty() {
            bail!("--clients is empty; name at least one client, e.g. --clients client1,client2");
        }
        if !(1..=MAX_DAYS).contains(&opts.days) {
            bail!("--days must be from 1 to {MAX_DAYS}");
        }
        let existing: Vec<PathBuf> = [self.ca_cert(), self.ca_key()]
            .into_iter()
            .filter(|p| p.exists())
            .collect();
        if !existing.is_empty() && !opts.force {
            bail!(
                "a PKI already exists in {} ({}); pass --force to replace it (every certificate issued from the old CA stops working)",
                self.dir.display(),
                existing[0].display()
            );
        }
        Ok(())
    }

    /// Issues one more certificate from the existing CA: a client (CN =
    /// `name`) or, with `Role::Server`, a server certificate whose SANs are
    /// `name` plus the loopback names. With `force`, a certificate of that
    /// name is replaced, and revoked before the new one is written. The new
    /// serial is added to `issued.tsv` before the files are written.
    pub fn issue(&self, name: &str, role: Role, key_type: KeyType, validity: Validity, force: bool) -> Result<Issued> {
        self.issue_with_sans(name, role, key_type, validity, force, &[])
    }

    /// [`Pki::issue`] with `extra` SANs (`--dns`, `--uri`) besides the CN
    /// (a client) or the server names (a server). Every SAN is checked
    /// before anything is signed or written.
    pub fn issue_with_sans(
        &self,
        name: &str,
        role: Role,
        key_type: KeyType,
        validity: Validity,
        force: bool,
        extra: &[San],
    ) -> Result<Issued> {
        check_name(name)?;
        let extra = extra.iter().map(San::to_san_type).collect::<Result<Vec<_>>>()?;
        let issuer = self.load_issuer()?;
        let ca_not_after = self.ca_not_after()?;
        let validity = Validity {
            not_before: validity.not_before,
            not_after: validity.not_after.min(ca_not_after),
        };
        let (cp, kp, sans) = match role {
            Role::Client => {
                let (c, k) = self.client(name);
                (c, k, Vec::new())
            }
            Role::Server => {
                let (c, k) = self.server(name);
                let mut sans = vec![name.to_string()];
                for n in ["localhost", "127.0.0.1", "::1"] {
                    if n != name {
                        sans.push(n.to_string());
                    }
                }
                (c, k, sans)
            }
            Role::Ca => bail!("a CA is made by `tlb pki init`, not `issue`"),
        };
        let old_serial = if cp.exists() {
            if !force {
                bail!(
                    "{} already exists; pass --force to replace it (the old certificate is revoked)",
                    cp.display()
                );
            }
            // Read before anything is written: what cannot be revoked is not replaced.
            Some(cert_serial(&cp).with_context(|| {
                format!(
                    "the certificate to replace cannot be revoked (move {} away to issue anyway)",
                    cp.display()
                )
            })?)
        } else {
            None
        };
        make_private_dir(cp.parent().unwrap_or(&self.dir))?;
        let cn = if role == Role::Server { "tlb server" } else { name };
        let mut sans = sans.iter().map(|n| sans::server_san(n)).collect::<Result<Vec<_>>>()?;
        sans.extend(extra);
        let leaf = self.sign_leaf(&issuer, role, cn, sans, key_type, validity)?;
        let replaced = match old_serial {
            Some(serial) => Some(Replaced {
                already_revoked: !self.add_to_crl(&issuer, &serial)?,
                serial: hex::encode_upper(&serial),
            }),
            None => None,
        };
        self.append_record(&leaf.record(name, role))?;
        write_file(&kp, leaf.key.as_bytes(), 0o600)?;
        write_file(&cp, leaf.cert.as_bytes(), 0o644)?;
        Ok(Issued {
            cert: cp,
            key: kp,
            serial: hex::encode_upper(leaf.serial.to_bytes()),
            replaced,
        })
    }

    /// Certificates in `issued.tsv` that are not expired, not revoked and no
    /// longer in a file (replaced or deleted by hand): whoever holds one can
    /// still use it until `revoke --serial`.
    pub fn unrevoked_replaced(&self) -> Result<Vec<Record>> {
        let current: Vec<String> = self.show()?.into_iter().map(|c| c.serial).collect();
        let revoked: Vec<String> = self
            .read_crl()?
            .0
            .iter()
            .map(|r| hex::encode_upper(r.serial_number.to_bytes()))
            .collect();
        let now = rfc3339(OffsetDateTime::now_utc());
        Ok(self
            .records()?
            .into_iter()
            .filter(|r| r.role != Role::Ca && r.not_after > now)
            .filter(|r| !current.contains(&r.serial) && !revoked.contains(&r.serial))
            .collect())
    }

    /// Every certificate in the directory with its state, CA first.
    pub fn show(&self) -> Result<Vec<CertInfo>> {
        if !self.ca_cert().exists() {
            bail!(
                "no PKI in {} (no ca.crt); run `tlb pki init` or pass --dir",
                self.dir.display()
            );
        }
        let revoked: Vec<Vec<u8>> = self.read_crl()?.0.iter().map(|r| r.serial_number.to_bytes()).collect();
        let mut out = Vec::new();
        out.push(cert_info("ca", Role::Ca, &self.ca_cert(), &revoked)?);
        if self.server_cert().exists() {
            out.push(cert_info("server", Role::Server, &self.server_cert(), &revoked)?);
        }
        for (dir, role) in [(self.servers_dir(), Role::Server), (self.clients_dir(), Role::Client)] {
            for path in list_certs(&dir)? {
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.push(cert_info(&name, role, &path, &revoked)?);
            }
        }
        Ok(out)
    }
}

fn cert_info(name: &str, role: Role, path: &Path, revoked: &[Vec<u8>]) -> Result<CertInfo> {
    let der = read_cert_der(path)?;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| anyhow!("{} is not a valid certificate: {e}", path.display()))?;
    let listed = sans::listed(&cert);
    let identity = match role {
        Role::Server => listed.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>().join(","),
        _ => crate::core::tls::identity::common_name(&der).unwrap_or_default(),
    };
    let serial = cert.raw_serial().to_vec();
    let not_after = cert.validity().not_after;
    Ok(CertInfo {
        name: name.to_string(),
        role,
        identity,
        serial: hex::encode_upper(&serial),
        not_after: not_after.to_datetime().date().to_string(),
        expired: !cert.validity().is_valid(),
        revoked: revoked.contains(&serial),
        sans: listed.into_iter().map(|(k, v)| format!("{k}:{v}")).collect(),
        spki_sha256: crate::core::tls::identity::spki_sha256(&der)
            .map(hex::encode)
            .unwrap_or_default(),
        path: path.to_path_buf(),
    })
}
