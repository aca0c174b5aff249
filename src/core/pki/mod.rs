//! The built-in PKI: a CA, server and client certificates, and a CRL, made
//! with rcgen and laid out as SPEC §1.1 describes.
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

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType,
    SerialNumber,
};
use time::{Duration as TimeDuration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

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

/// One line of `issued.tsv`: a certificate issued from the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Upper-case hex, no separators (as `show` prints it).
    pub serial: String,
    pub name: String,
    pub role: Role,
    /// RFC 3339, UTC, to the second.
    pub not_after: String,
}

impl Record {
    fn new(serial: &SerialNumber, name: &str, role: Role, not_after: OffsetDateTime) -> Record {
        Record {
            serial: hex::encode_upper(serial.to_bytes()),
            name: name.to_string(),
            role,
            not_after: rfc3339(not_after),
        }
    }

    fn line(&self) -> String {
        format!("{}\t{}\t{}\t{}\n", self.serial, self.name, self.role, self.not_after)
    }
}

/// First lines of a new `issued.tsv`.
const RECORD_HEADER: &str = "# every certificate issued from this CA, appended as issued; tlb pki revoke --serial checks it\n\
                             # serial\tname\trole\tnot_after\n";

/// The state of `crl.pem` after [`Pki::resign_crl`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlState {
    pub number: u64,
    pub revoked: usize,
    /// RFC 3339, UTC.
    pub next_update: String,
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
        for c in &opts.clients {
            check_name(c)?;
        }
        // Checked before anything is written, so a typo leaves no half-made PKI.
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
        make_private_dir(&self.dir)?;
        if opts.force {
            // A new CA invalidates every old leaf: remove them so the
            // directory never mixes certificates from two CAs.
            for d in [self.clients_dir(), self.servers_dir()] {
                remove_pem_files(&d)?;
            }
        }
        make_private_dir(&self.clients_dir())?;

        let ca_key = KeyPair::generate_for(opts.key_type.algorithm()).context("generating the CA key")?;
        let ca_days = opts.days.max(CA_MIN_DAYS);
        let ca_serial = random_serial()?;
        let ca_params = ca_params(Validity::days(ca_days), ca_serial.clone())?;
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .context("self-signing the CA certificate")?;
        let mut records = vec![Record::new(&ca_serial, "ca", Role::Ca, ca_params.not_after)];
        let ca_key_pem = ca_key.serialize_pem();
        let issuer = Issuer::new(ca_params, ca_key);

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
        let server = self.sign_leaf(&issuer, Role::Server, "tlb server", &names, opts.key_type, validity)?;
        records.push(server.record("server", Role::Server));
        let mut leaves = vec![(self.server_cert(), self.server_key(), server)];
        for c in &opts.clients {
            let leaf = self.sign_leaf(&issuer, Role::Client, c, &[], opts.key_type, validity)?;
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
        write_file(&self.ca_key(), ca_key_pem.as_bytes(), 0o600)?;
        written.push(self.ca_key());
        write_file(&self.ca_cert(), ca_cert.pem().as_bytes(), 0o644)?;
        written.push(self.ca_cert());
        for (cp, kp, leaf) in leaves {
            write_file(&kp, leaf.key.as_bytes(), 0o600)?;
            write_file(&cp, leaf.cert.as_bytes(), 0o644)?;
            written.extend([cp, kp]);
        }
        self.write_crl(&issuer, Vec::new(), 0, CRL_DAYS)?;
        written.extend([self.crl(), self.issued()]);
        Ok(written)
    }

    /// Issues one more certificate from the existing CA: a client (CN =
    /// `name`) or, with `Role::Server`, a server certificate whose SANs are
    /// `name` plus the loopback names. With `force`, a certificate of that
    /// name is replaced, and revoked before the new one is written. The new
    /// serial is added to `issued.tsv` before the files are written.
    pub fn issue(&self, name: &str, role: Role, key_type: KeyType, validity: Validity, force: bool) -> Result<Issued> {
        check_name(name)?;
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
        let leaf = self.sign_leaf(&issuer, role, cn, &sans, key_type, validity)?;
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

    /// Adds the serial of certificate `name` (a client, an extra server, or
    /// `server`) to `crl.pem`, re-signed by the CA with the next CRL number.
    /// Returns the revoked serial (hex). Revoking twice is an error.
    pub fn revoke(&self, name: &str) -> Result<String> {
        check_name(name)?;
        let serial = cert_serial(&self.find_cert(name)?)?;
        let serial_hex = hex::encode_upper(&serial);
        let issuer = self.load_issuer()?;
        if !self.add_to_crl(&issuer, &serial)? {
            bail!(
                "{name} (serial {serial_hex}) is already revoked in {}",
                self.crl().display()
            );
        }
        Ok(serial_hex)
    }

    /// Revokes the certificate with serial `serial` (hex; case, `:`
    /// separators and leading zeros do not matter), which must be in
    /// `issued.tsv`: e.g. one replaced earlier. Returns its record line.
    pub fn revoke_serial(&self, serial: &str) -> Result<Record> {
        let wanted = normalize_serial(serial).ok_or_else(|| {
            anyhow!(
                "--serial {serial:?} is not a hexadecimal serial; copy it from `tlb pki show` or {}",
                self.issued().display()
            )
        })?;
        let record = self
            .records()?
            .into_iter()
            .find(|r| normalize_serial(&r.serial).is_some_and(|s| same_serial(&s, &wanted)))
            .ok_or_else(|| {
                anyhow!(
                    "no certificate with serial {wanted} in {} (the record of every certificate this CA issued); check the serial with `tlb pki show`, or revoke by name",
                    self.issued().display()
                )
            })?;
        if record.role == Role::Ca {
            bail!(
                "serial {} is the CA certificate, which cannot revoke itself; replace the whole PKI with `tlb pki init --force`",
                record.serial
            );
        }
        let bytes = hex::decode(&record.serial).map_err(|_| {
            anyhow!(
                "{}: serial {:?} is not hex; restore the file from backup",
                self.issued().display(),
                record.serial
            )
        })?;
        let issuer = self.load_issuer()?;
        if !self.add_to_crl(&issuer, &bytes)? {
            bail!(
                "serial {} ({}) is already revoked in {}",
                record.serial,
                record.name,
                self.crl().display()
            );
        }
        Ok(record)
    }

    /// Re-signs `crl.pem`: the same revoked serials, the next CRL number, a
    /// fresh thisUpdate and a nextUpdate `days` ahead.
    pub fn resign_crl(&self, days: u32) -> Result<CrlState> {
        if !(1..=MAX_CRL_DAYS).contains(&days) {
            bail!("--days must be from 1 to {MAX_CRL_DAYS}");
        }
        let issuer = self.load_issuer()?;
        let (revoked, number) = self.read_crl()?;
        let count = revoked.len();
        let (number, next_update) = self.write_crl(&issuer, revoked, number, days)?;
        Ok(CrlState {
            number,
            revoked: count,
            next_update: rfc3339(next_update),
        })
    }

    /// Every line of `issued.tsv` (none when there is no such file yet).
    pub fn records(&self) -> Result<Vec<Record>> {
        let path = self.issued();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            let record = match fields[..] {
                [serial, name, role, not_after] => Role::parse(role).map(|role| Record {
                    serial: serial.to_string(),
                    name: name.to_string(),
                    role,
                    not_after: not_after.to_string(),
                }),
                _ => None,
            };
            out.push(record.ok_or_else(|| {
                anyhow!(
                    "{} line {} is not `serial<TAB>name<TAB>role<TAB>not_after`; restore the file from backup",
                    path.display(),
                    i + 1
                )
            })?);
        }
        Ok(out)
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

    fn find_cert(&self, name: &str) -> Result<PathBuf> {
        let candidates = [self.client(name).0, self.server(name).0];
        if let Some(p) = candidates.iter().find(|p| p.exists()) {
            return Ok(p.clone());
        }
        if name == "server" && self.server_cert().exists() {
            return Ok(self.server_cert());
        }
        bail!(
            "no certificate named {name:?} in {} (looked for clients/{name}.crt and servers/{name}.crt); `tlb pki show` lists them",
            self.dir.display()
        )
    }

    fn load_issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let ca_pem = fs::read_to_string(self.ca_cert()).with_context(|| {
            format!(
                "reading CA certificate {} (run `tlb pki init` or pass --dir)",
                self.ca_cert().display()
            )
        })?;
        let key_pem = fs::read_to_string(self.ca_key()).with_context(|| {
            format!(
                "reading CA key {} (run `tlb pki init` or pass --dir)",
                self.ca_key().display()
            )
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            anyhow!(
                "CA key {} is not a valid PKCS#8 PEM private key ({e}); restore it from backup or re-create the PKI with `tlb pki init --force`",
                self.ca_key().display()
            )
        })?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|e| {
            anyhow!(
                "CA certificate {} is not valid PEM ({e}); re-create the PKI with `tlb pki init --force`",
                self.ca_cert().display()
            )
        })?;
        // The key must belong to the certificate, or everything we sign is junk.
        let ca_der = read_cert_der(&self.ca_cert())?;
        let (_, ca) =
            X509Certificate::from_der(&ca_der).map_err(|e| anyhow!("parsing {}: {e}", self.ca_cert().display()))?;
        if ca.public_key().subject_public_key.data.as_ref() != rcgen::PublicKeyData::der_bytes(issuer.key()) {
            bail!(
                "CA key {} does not match CA certificate {}; restore the matching pair or re-create with `tlb pki init --force`",
                self.ca_key().display(),
                self.ca_cert().display()
            );
        }
        Ok(issuer)
    }

    fn ca_not_after(&self) -> Result<OffsetDateTime> {
        let der = read_cert_der(&self.ca_cert())?;
        let (_, ca) =
            X509Certificate::from_der(&der).map_err(|e| anyhow!("parsing {}: {e}", self.ca_cert().display()))?;
        OffsetDateTime::from_unix_timestamp(ca.validity().not_after.timestamp()).context("CA expiry out of range")
    }

    /// Revoked entries and the CRL number of the current `crl.pem`
    /// (empty and 0 when there is none yet).
    fn read_crl(&self) -> Result<(Vec<RevokedCertParams>, u64)> {
        let path = self.crl();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes)
            .map_err(|e| anyhow!("{} is not a PEM CRL: {e}", path.display()))?;
        let (_, crl) = x509_parser::parse_x509_crl(&pem.contents)
            .map_err(|e| anyhow!("{} is not a valid CRL: {e}", path.display()))?;
        let number = match crl.crl_number() {
            None => 0,
            Some(n) => u64::try_from(n.clone()).map_err(|_| {
                anyhow!(
                    "{} has a CRL number beyond 64 bits, so it was not made by tlb; restore tlb's crl.pem from backup",
                    path.display()
                )
            })?,
        };
        let mut out = Vec::new();
        for r in crl.iter_revoked_certificates() {
            out.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(r.raw_serial()),
                revocation_time: OffsetDateTime::from_unix_timestamp(r.revocation_date.timestamp())
                    .unwrap_or_else(|_| OffsetDateTime::now_utc()),
                reason_code: None,
                invalidity_date: None,
            });
        }
        Ok((out, number))
    }

    /// Adds `serial` to `crl.pem`, re-signed with the next CRL number;
    /// `Ok(false)`, and nothing written, when it is already listed.
    fn add_to_crl(&self, issuer: &Issuer<'_, KeyPair>, serial: &[u8]) -> Result<bool> {
        let (mut revoked, number) = self.read_crl()?;
        if revoked.iter().any(|r| r.serial_number.to_bytes() == serial) {
            return Ok(false);
        }
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(serial),
            revocation_time: OffsetDateTime::now_utc(),
            reason_code: None,
            invalidity_date: None,
        });
        self.write_crl(issuer, revoked, number, CRL_DAYS)?;
        Ok(true)
    }

    /// Signs and writes `crl.pem` with CRL number `previous + 1` and a
    /// nextUpdate `days` ahead; returns that number and nextUpdate.
    fn write_crl(
        &self,
        issuer: &Issuer<'_, KeyPair>,
        revoked: Vec<RevokedCertParams>,
        previous: u64,
        days: u32,
    ) -> Result<(u64, OffsetDateTime)> {
        let number = previous.checked_add(1).ok_or_else(|| {
            anyhow!(
                "the CRL number of {} is at its maximum; re-create the PKI with `tlb pki init --force`",
                self.crl().display()
            )
        })?;
        let next_update = OffsetDateTime::now_utc().saturating_add(TimeDuration::days(i64::from(days)));
        let crl = build_crl(issuer, revoked, number, next_update)?;
        write_file(&self.crl(), crl.as_bytes(), 0o644)?;
        Ok((number, next_update))
    }

    /// Appends one line to `issued.tsv` (created with its header, 0644).
    fn append_record(&self, record: &Record) -> Result<()> {
        let path = self.issued();
        let res = (|| -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o644)
                .open(&path)?;
            let mut text = String::new();
            if f.metadata()?.len() == 0 {
                text.push_str(RECORD_HEADER);
            }
            text.push_str(&record.line());
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })();
        res.with_context(|| {
            format!(
                "appending to {} (check the directory's permissions, or pass --dir)",
                path.display()
            )
        })
    }

    fn sign_leaf(
        &self,
        issuer: &Issuer<'_, KeyPair>,
        role: Role,
        cn: &str,
        sans: &[String],
        key_type: KeyType,
        validity: Validity,
    ) -> Result<Signed> {
        let key = KeyPair::generate_for(key_type.algorithm()).context("generating a key")?;
        let serial = random_serial()?;
        let mut params = CertificateParams::default();
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.serial_number = Some(serial.clone());
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if key_type == KeyType::EcdsaP256 && role == Role::Server {
            params.key_usages.push(KeyUsagePurpose::KeyAgreement);
        }
        params.extended_key_usages = vec![match role {
            Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
            _ => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        for s in sans {
            params.subject_alt_names.push(match s.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    check_server_name(s)?;
                    SanType::DnsName(s.clone().try_into().map_err(|_| invalid_server_name(s))?)
                }
            });
        }
        let cert = params
            .signed_by(&key, issuer)
            .with_context(|| format!("signing the certificate for {cn}"))?;
        Ok(Signed {
            cert: cert.pem(),
            key: key.serialize_pem(),
            serial,
            not_after: validity.not_after,
        })
    }
}

/// A leaf signed in memory, not yet written.
struct Signed {
    cert: String,
    key: String,
    serial: SerialNumber,
    not_after: OffsetDateTime,
}

impl Signed {
    fn record(&self, name: &str, role: Role) -> Record {
        Record::new(&self.serial, name, role, self.not_after)
    }
}

fn ca_params(validity: Validity, serial: SerialNumber) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.serial_number = Some(serial);
    let mut dn = DistinguishedName::new();
    let id = hex::encode_upper(random_bytes::<3>()?);
    dn.push(DnType::CommonName, format!("tlb CA {id}"));
    dn.push(DnType::OrganizationName, "tlb");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.key_identifier_method = KeyIdMethod::Sha256;
    Ok(params)
}

fn build_crl(
    issuer: &Issuer<'_, KeyPair>,
    revoked: Vec<RevokedCertParams>,
    number: u64,
    next_update: OffsetDateTime,
) -> Result<String> {
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now.saturating_sub(TimeDuration::minutes(5)),
        next_update,
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(issuer).context("signing the CRL")?;
    crl.pem().context("encoding the CRL as PEM")
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| anyhow!("the system random number generator failed"))?;
    Ok(b)
}

/// 16 random bytes, positive (top bit clear) and with a non-zero first byte
/// so the DER encoding keeps all 127 bits.
fn random_serial() -> Result<SerialNumber> {
    let mut b = random_bytes::<16>()?;
    b[0] = (b[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&b))
}

/// Names become file names: keep them to a safe alphabet.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("invalid name {name:?}: use 1-64 letters, digits, '-', '_' or '.', not starting with '.' or '-'");
    }
    Ok(())
}

fn invalid_server_name(name: &str) -> anyhow::Error {
    anyhow!("server name {name:?} is not a valid DNS name or IP address; use letters, digits, '-' and '.'")
}

/// rcgen accepts any IA5 string as a DNS name: check the syntax here.
fn check_server_name(name: &str) -> Result<()> {
    if is_dns_name(name) {
        Ok(())
    } else {
        Err(invalid_server_name(name))
    }
}

/// A DNS name as a certificate SAN may carry: dot-separated labels of
/// letters, digits, '-' and '_' (1-63 bytes, no '-' at either end), at most
/// 253 bytes, optionally with a leading `*.` wildcard label.
fn is_dns_name(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    !rest.is_empty()
        && name.len() <= 253
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Makes `dir`, and any missing parent, mode 0700. A directory that already
/// exists keeps its mode (its owner's choice), but is refused when its group
/// or others may write to it: they could swap the CA certificate or the CRL.
fn make_private_dir(dir: &Path) -> Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            let mode = m.permissions().mode() & 0o7777;
            if mode & 0o022 != 0 {
                bail!(
                    "directory {} is writable by its group or others (mode {mode:04o}), who could replace its certificates or CRL; run `chmod go-w {}` or pass another --dir",
                    dir.display(),
                    dir.display()
                );
            }
            Ok(())
        }
        _ => create_private_dir(dir),
    }
}

/// Creates `dir` and its missing parents, each 0700 whatever the umask.
fn create_private_dir(dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        create_private_dir(parent)?;
    }
    fs::DirBuilder::new().mode(0o700).create(dir).with_context(|| {
        format!(
            "creating directory {} (check the path and its permissions, or pass --dir)",
            dir.display()
        )
    })?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting mode 0700 on {}", dir.display()))
}

/// Writes `bytes` to `path` with `mode`, through a temporary file and a rename.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let res = (|| -> std::io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| {
            format!(
                "writing {} (check the directory's permissions, or pass --dir)",
                path.display()
            )
        });
    }
    Ok(())
}

fn remove_pem_files(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
        if matches!(path.extension().and_then(|e| e.to_str()), Some("crt" | "key")) {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

fn list_certs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("crt") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The serial (DER content bytes) of the certificate in a PEM file.
fn cert_serial(path: &Path) -> Result<Vec<u8>> {
    let der = read_cert_der(path)?;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| anyhow!("{} is not a valid certificate: {e}", path.display()))?;
    Ok(cert.raw_serial().to_vec())
}

/// A serial as typed (hex, any case, optional `0x` and `:` separators) in
/// the form `show` prints; `None` if it is not hex.
fn normalize_serial(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    let hex: String = s.chars().filter(|c| *c != ':').collect::<String>().to_ascii_uppercase();
    (!hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// Two normalized serials are the same number (leading zeros aside).
fn same_serial(a: &str, b: &str) -> bool {
    a.trim_start_matches('0') == b.trim_start_matches('0')
}

/// `2027-05-01T12:00:00Z`: RFC 3339 in UTC, to the second (so that two of
/// them compare as text like the times they are).
fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// DER of the first certificate in a PEM file.
pub fn read_cert_der(path: &Path) -> Result<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der =
        CertificateDer::from_pem_file(path).map_err(|e| anyhow!("reading certificate {}: {e}", path.display()))?;
    Ok(der.to_vec())
}

fn cert_info(name: &str, role: Role, path: &Path, revoked: &[Vec<u8>]) -> Result<CertInfo> {
    let der = read_cert_der(path)?;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| anyhow!("{} is not a valid certificate: {e}", path.display()))?;
    let identity = match role {
        Role::Server => match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .map(|g| match g {
                    x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                    x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                        4 => <[u8; 4]>::try_from(*b)
                            .map(|a| IpAddr::from(a).to_string())
                            .unwrap_or_default(),
                        16 => <[u8; 16]>::try_from(*b)
                            .map(|a| IpAddr::from(a).to_string())
                            .unwrap_or_default(),
                        _ => String::from("?"),
                    },
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            _ => String::new(),
        },
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
        spki_sha256: crate::core::tls::identity::spki_sha256(&der)
            .map(hex::encode)
            .unwrap_or_default(),
        path: path.to_path_buf(),
    })
}
