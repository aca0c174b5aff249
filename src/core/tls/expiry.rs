//! When the certificates of a configuration generation expire, and when to
//! warn about it.
//!
//! Promises: one entry per certificate file a generation loaded (`[tls]
//! cert`: its leaf; `[tls] ca`, each `[[trust_domain]] ca` and each
//! `[app.upstream_tls] ca`: the earliest of the bundle; `[app.upstream_tls]
//! cert`: its leaf; a file named twice: the earliest), dated from the very
//! bytes the generation was built from; a warning is due for a certificate
//! that expires within the warning period, again on every new generation
//! and otherwise at most once a day per file, all decided at the `now` the
//! caller reads from the server's injected clock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::prelude::FromDer;

use crate::core::config::Config;
use crate::core::tls::identity::not_after_of;
use crate::core::tls::material::Material;

/// A day: how often a certificate due for renewal is warned about again.
pub const REPEAT: Duration = Duration::from_secs(86_400);

/// When one certificate file of a generation expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertExpiry {
    /// The path as the config names it (resolved against its directory).
    pub file: PathBuf,
    /// The key that names it: `[tls] cert`, `app "web" [app.upstream_tls] ca`.
    pub what: String,
    /// The leaf's notAfter (a certificate file) or the earliest of the
    /// bundle (a CA file).
    pub not_after: SystemTime,
}

/// Which certificate of a file is dated.
#[derive(Clone, Copy)]
enum Pick {
    Leaf,
    Earliest,
}

/// The expiry of every certificate file of `config`, dated from the bytes
/// `m` holds (those the generation used); a file it did not use or whose
/// certificates do not parse is left out.
pub fn of(config: &Config, m: &Material) -> Vec<CertExpiry> {
    let tls = &config.tls;
    let mut files: Vec<(&Path, String, Pick)> = vec![
        (&tls.cert, "[tls] cert".into(), Pick::Leaf),
        (&tls.ca, "[tls] ca".into(), Pick::Earliest),
    ];
    for td in &config.trust_domains {
        files.push((&td.ca, format!("[[trust_domain]] {} ca", td.name), Pick::Earliest));
    }
    for app in &config.apps {
        if let Some(u) = &app.upstream_tls {
            files.push((
                &u.ca,
                format!("app {:?} [app.upstream_tls] ca", app.name),
                Pick::Earliest,
            ));
            if let Some(cert) = &u.cert {
                files.push((cert, format!("app {:?} [app.upstream_tls] cert", app.name), Pick::Leaf));
            }
        }
    }
    let mut out: Vec<CertExpiry> = Vec::with_capacity(files.len());
    for (file, what, pick) in files {
        let Some(not_after) = m.used(file).and_then(|b| not_after(&b, pick)) else {
            continue;
        };
        match out.iter_mut().find(|e| e.file == file) {
            Some(e) if not_after < e.not_after => (e.not_after, e.what) = (not_after, what),
            Some(_) => {}
            None => out.push(CertExpiry {
                file: file.to_path_buf(),
                what,
                not_after,
            }),
        }
    }
    out
}

/// The notAfter of the first certificate in `pem` (`Leaf`) or the
/// earliest of them (`Earliest`).
fn not_after(pem: &[u8], pick: Pick) -> Option<SystemTime> {
    let mut dates = CertificateDer::pem_slice_iter(pem).map(|c| {
        let der = c.ok()?;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).ok()?;
        Some(not_after_of(&cert).unwrap_or(SystemTime::UNIX_EPOCH))
    });
    match pick {
        Pick::Leaf => dates.next().flatten(),
        Pick::Earliest => dates.collect::<Option<Vec<_>>>()?.into_iter().min(),
    }
}

/// The warnings already given, per file.
#[derive(Debug, Default)]
pub struct ExpiryWarnings {
    warned: HashMap<PathBuf, SystemTime>,
}

impl ExpiryWarnings {
    /// The entries of `certs` to warn about now: those expiring within
    /// `before` of `now` (or expired), each unless warned about less than
    /// [`REPEAT`] ago; `fresh` (a new generation) warns about all of them
    /// again. `before` zero: none.
    pub fn due<'a>(
        &mut self,
        certs: &'a [CertExpiry],
        before: Duration,
        now: SystemTime,
        fresh: bool,
    ) -> Vec<&'a CertExpiry> {
        if fresh {
            self.warned.clear();
        }
        if before.is_zero() {
            return Vec::new();
        }
        let horizon = now.checked_add(before).unwrap_or(now);
        let mut out = Vec::new();
        for c in certs.iter().filter(|c| c.not_after <= horizon) {
            let recent = self
                .warned
                .get(&c.file)
                .is_some_and(|at| now.duration_since(*at).map_or(true, |d| d < REPEAT));
            if !recent {
                self.warned.insert(c.file.clone(), now);
                out.push(c);
            }
        }
        out
    }
}

/// The warning about `c` at `now`: the file, the date, and the fix
/// (`watching`: `[tls] watch` is on, so replacing the file is enough).
pub fn warning(c: &CertExpiry, now: SystemTime, watching: bool) -> String {
    let date = humantime::format_rfc3339_seconds(c.not_after);
    let when = match c.not_after.duration_since(now) {
        Err(_) => format!("expired on {date}"),
        Ok(left) if left < REPEAT => format!("expires on {date}, in less than a day"),
        Ok(left) => format!("expires on {date}, in {} days", left.as_secs() / REPEAT.as_secs()),
    };
    let load = if watching {
        "[tls] watch loads it"
    } else {
        "then send SIGHUP"
    };
    format!(
        "certificate {} ({}) {when}; issue a new one and replace the file ({load})",
        c.file.display(),
        c.what
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rt::clock::{Clock, StoppedClock};

    fn cert(file: &str, not_after: SystemTime) -> CertExpiry {
        CertExpiry {
            file: PathBuf::from(file),
            what: "[tls] cert".into(),
            not_after,
        }
    }

    #[test]
    fn warned_within_the_period_then_once_a_day_and_on_each_new_generation() {
        let clock = StoppedClock::new();
        let day = REPEAT;
        let certs = [
            cert("soon.crt", clock.now() + 20 * day),
            cert("later.crt", clock.now() + 60 * day),
        ];
        let before = 14 * day;
        let mut w = ExpiryWarnings::default();
        let due = |w: &mut ExpiryWarnings, fresh| -> Vec<String> {
            w.due(&certs, before, clock.now(), fresh)
                .iter()
                .map(|c| c.file.display().to_string())
                .collect()
        };
        assert!(due(&mut w, true).is_empty(), "20 days left, 14 days' warning");
        clock.advance(6 * day + Duration::from_secs(3600));
        assert_eq!(due(&mut w, false), ["soon.crt"], "now within 14 days");
        assert!(due(&mut w, false).is_empty(), "once");
        clock.advance(day - Duration::from_secs(1));
        assert!(due(&mut w, false).is_empty(), "not again within a day");
        assert_eq!(due(&mut w, true), ["soon.crt"], "a new generation warns again");
        clock.advance(day);
        assert_eq!(due(&mut w, false), ["soon.crt"], "a day later");
        clock.advance(40 * day);
        assert_eq!(due(&mut w, false), ["soon.crt", "later.crt"], "expired and due");
        assert!(w.due(&certs, Duration::ZERO, clock.now(), true).is_empty(), "0s: never");
    }

    #[test]
    fn the_warning_names_the_file_the_date_and_the_fix() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let c = cert("/etc/tlb/server.crt", at);
        let line = warning(&c, at - 3 * REPEAT, true);
        assert_eq!(
            line,
            "certificate /etc/tlb/server.crt ([tls] cert) expires on 2030-03-17T17:46:40Z, in 3 days; issue a new one and replace the file ([tls] watch loads it)"
        );
        assert!(warning(&c, at + REPEAT, false).contains("expired on 2030-03-17T17:46:40Z"));
        assert!(warning(&c, at + REPEAT, false).ends_with("(then send SIGHUP)"));
    }
}
