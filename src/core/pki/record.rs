//! `issued.tsv`, the record of every certificate issued from the CA, and
//! the serial forms it and `show` use.
//!
//! Promises: a line is appended (and synced) before its certificate is
//! written, so an older certificate can still be revoked by serial; a
//! malformed line is an error naming the file and line, never skipped.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{Context, Result, anyhow};
use rcgen::SerialNumber;
use time::OffsetDateTime;

use super::{Pki, Role};

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
    pub(super) fn new(serial: &SerialNumber, name: &str, role: Role, not_after: OffsetDateTime) -> Record {
        Record {
            serial: hex::encode_upper(serial.to_bytes()),
            name: name.to_string(),
            role,
            not_after: rfc3339(not_after),
        }
    }

    pub(super) fn line(&self) -> String {
        format!("{}\t{}\t{}\t{}\n", self.serial, self.name, self.role, self.not_after)
    }
}

/// First lines of a new `issued.tsv`.
pub(super) const RECORD_HEADER: &str = "# every certificate issued from this CA, appended as issued; tlb pki revoke --serial checks it\n\
                             # serial\tname\trole\tnot_after\n";

impl Pki {
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

    /// Appends one line to `issued.tsv` (created with its header, 0644).
    pub(super) fn append_record(&self, record: &Record) -> Result<()> {
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
}

/// A serial as typed (hex, any case, optional `0x` and `:` separators) in
/// the form `show` prints; `None` if it is not hex.
pub(super) fn normalize_serial(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    let hex: String = s.chars().filter(|c| *c != ':').collect::<String>().to_ascii_uppercase();
    (!hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// Two normalized serials are the same number (leading zeros aside).
pub(super) fn same_serial(a: &str, b: &str) -> bool {
    a.trim_start_matches('0') == b.trim_start_matches('0')
}

/// `2027-05-01T12:00:00Z`: RFC 3339 in UTC, to the second (so that two of
/// them compare as text like the times they are).
pub(super) fn rfc3339(t: OffsetDateTime) -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::from(t)).to_string()
}
