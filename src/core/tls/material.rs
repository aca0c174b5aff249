//! The TLS files one configuration generation is built from, as bytes:
//! read from disk (start, SIGHUP) or handed in already read and checked
//! (the certificate watcher, `proxy::watch`), and remembered with their
//! SHA-256 so that what a generation loaded can be named exactly.
//!
//! Promises: within one build a path is read at most once, so two loaders
//! of the same file (`[tls] ca` by the verifier and by the CRL check) see
//! the same bytes; bytes handed in with [`Material::pinned`] are used
//! instead of the disk, byte for byte; a file larger than [`MAX_FILE`] is
//! refused without being read whole.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Largest TLS file tlb reads (a CA bundle or CRL included): 16 MiB.
pub const MAX_FILE: u64 = 16 * 1024 * 1024;

/// SHA-256 of a file's bytes: a file's identity for the watcher.
pub type Digest = [u8; 32];

/// SHA-256 of `bytes` (aws-lc-rs, the crypto provider already in use).
pub fn sha256(bytes: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref());
    out
}

/// `path` read whole, refusing more than [`MAX_FILE`] bytes.
pub fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)?.take(MAX_FILE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {} MiB, not a PEM file tlb reads", MAX_FILE >> 20),
        ));
    }
    Ok(buf)
}

/// The bytes of the TLS files of one build.
#[derive(Debug, Default)]
pub struct Material {
    /// Used instead of the disk for these paths.
    pinned: BTreeMap<PathBuf, Arc<[u8]>>,
    /// Every file the build used, as it used it.
    used: Mutex<BTreeMap<PathBuf, Arc<[u8]>>>,
}

impl Material {
    /// Every file read from disk (once per build).
    pub fn disk() -> Material {
        Material::default()
    }

    /// The files in `pinned` as given (bytes read and checked earlier);
    /// any other from disk.
    pub fn pinned(pinned: BTreeMap<PathBuf, Arc<[u8]>>) -> Material {
        Material {
            pinned,
            used: Mutex::default(),
        }
    }

    /// The bytes of `path`: as this build already used them, else pinned,
    /// else read from disk now.
    pub fn read(&self, path: &Path) -> io::Result<Arc<[u8]>> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = used.get(path) {
            return Ok(b.clone());
        }
        let bytes = match self.pinned.get(path) {
            Some(b) => b.clone(),
            None => Arc::from(read_bounded(path)?),
        };
        used.insert(path.to_path_buf(), bytes.clone());
        Ok(bytes)
    }

    /// The bytes of `path` if this build used it.
    pub fn used(&self, path: &Path) -> Option<Arc<[u8]>> {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).get(path).cloned()
    }

    /// Every file this build used, with its SHA-256, by path.
    pub fn digests(&self) -> Vec<(PathBuf, Digest)> {
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.iter().map(|(p, b)| (p.clone(), sha256(b))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_read_once_per_build_and_pinned_bytes_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a.pem"), dir.path().join("b.pem"));
        std::fs::write(&a, "disk a").expect("a");
        std::fs::write(&b, "disk b").expect("b");
        let m = Material::pinned(BTreeMap::from([(b.clone(), Arc::from(&b"pinned b"[..]))]));
        assert_eq!(&*m.read(&a).expect("a"), b"disk a");
        std::fs::write(&a, "changed a").expect("a");
        assert_eq!(&*m.read(&a).expect("a"), b"disk a", "the bytes the build already used");
        assert_eq!(&*m.read(&b).expect("b"), b"pinned b");
        let paths: Vec<_> = m.digests().into_iter().map(|(p, d)| (p, hex::encode(d))).collect();
        assert_eq!(
            paths,
            [
                (a, hex::encode(sha256(b"disk a"))),
                (b, hex::encode(sha256(b"pinned b")))
            ]
        );
    }

    #[test]
    fn a_file_over_the_limit_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big.pem");
        let f = File::create(&big).expect("create");
        f.set_len(MAX_FILE + 1).expect("set_len");
        let e = read_bounded(&big).expect_err("too large");
        assert!(e.to_string().contains("larger than 16 MiB"), "{e}");
    }
}
