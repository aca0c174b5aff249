//! Revocation: `crl.pem`, read, extended and re-signed by the CA.
//!
//! Promises: every CRL is signed with the next CRL number (never reused,
//! never past 64 bits); revoking a serial already listed writes nothing;
//! the CA certificate cannot be revoked by serial.

use std::fs;

use anyhow::{Context, Result, anyhow, bail};
use rcgen::{CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber};
use time::{Duration as TimeDuration, OffsetDateTime};

use super::files::{cert_serial, check_name, write_file};
use super::record::{Record, normalize_serial, rfc3339, same_serial};
use super::{CRL_DAYS, MAX_CRL_DAYS, Pki, Role};

/// The state of `crl.pem` after [`Pki::resign_crl`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlState {
    pub number: u64,
    pub revoked: usize,
    /// RFC 3339, UTC.
    pub next_update: String,
}

impl Pki {
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

    /// Revoked entries and the CRL number of the current `crl.pem`
    /// (empty and 0 when there is none yet).
    pub(super) fn read_crl(&self) -> Result<(Vec<RevokedCertParams>, u64)> {
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
    pub(super) fn add_to_crl(&self, issuer: &Issuer<'_, KeyPair>, serial: &[u8]) -> Result<bool> {
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
    pub(super) fn write_crl(
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
