//! The files of a PKI directory: private (0700) directories, atomic writes,
//! the certificates in a folder, and the names that become file names.
//!
//! Promises: a directory it creates is 0700 and one that others may write to
//! is refused; a file is written to a temporary name and renamed, so a
//! failure never leaves it half-written; a name is checked before it is
//! used as a file name or a DNS SAN.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::Pki;

impl Pki {
    /// The certificate file of client or extra server `name`, or `server.crt` for `server`.
    pub(super) fn find_cert(&self, name: &str) -> Result<PathBuf> {
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
}

/// Names become file names: keep them to a safe alphabet.
pub(super) fn check_name(name: &str) -> Result<()> {
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

pub(super) fn invalid_server_name(name: &str) -> anyhow::Error {
    anyhow!("server name {name:?} is not a valid DNS name or IP address; use letters, digits, '-' and '.'")
}

/// rcgen accepts any IA5 string as a DNS name: check the syntax here.
pub(super) fn check_server_name(name: &str) -> Result<()> {
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
pub(super) fn make_private_dir(dir: &Path) -> Result<()> {
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

pub(super) fn remove_pem_files(dir: &Path) -> Result<()> {
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

pub(super) fn list_certs(dir: &Path) -> Result<Vec<PathBuf>> {
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
pub(super) fn cert_serial(path: &Path) -> Result<Vec<u8>> {
    let der = read_cert_der(path)?;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| anyhow!("{} is not a valid certificate: {e}", path.display()))?;
    Ok(cert.raw_serial().to_vec())
}

/// DER of the first certificate in a PEM file.
pub fn read_cert_der(path: &Path) -> Result<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der =
        CertificateDer::from_pem_file(path).map_err(|e| anyhow!("reading certificate {}: {e}", path.display()))?;
    Ok(der.to_vec())
}
