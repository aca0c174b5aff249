//! What a set of TLS files found changed on disk must satisfy before the
//! certificate watcher (`proxy::watch`) loads it, beyond what every load
//! checks (everything parses, the key is the certificate's, the CRL is
//! signed by its CA: the build itself, all or nothing).
//!
//! Promises: for `[tls] cert`/`key` and each `[app.upstream_tls]`
//! `cert`/`key`, from the very bytes that will be loaded: the key is the
//! leaf's (public keys compared), each certificate of the file is signed by
//! the next one (leaf first, then its issuers), and the leaf is valid at
//! `now` (the server's clock). A failure is one line naming the file, what
//! is wrong, and the fix.

use std::path::Path;
use std::time::SystemTime;

use anyhow::{Result, anyhow, bail};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::core::config::Config;
use crate::core::tls::identity::system_time;
use crate::core::tls::load::{certified_key_in, certs_in};
use crate::core::tls::material::Material;
use crate::core::tls::suites::provider;

/// Checks every certificate/key pair of `config` in `m` (see the module's
/// promises).
pub fn check(config: &Config, m: &Material, now: SystemTime) -> Result<()> {
    let tls = &config.tls;
    pair(m, &tls.cert, &tls.key, "[tls]", now)?;
    for app in &config.apps {
        if let Some(u) = &app.upstream_tls
            && let (Some(cert), Some(key)) = (&u.cert, &u.key)
        {
            pair(m, cert, key, &format!("app {:?}: [app.upstream_tls]", app.name), now)?;
        }
    }
    Ok(())
}

/// One certificate file and its key (the keys of table `what`).
fn pair(m: &Material, cert: &Path, key: &Path, what: &str, now: SystemTime) -> Result<()> {
    certified_key_in(m, cert, key, &provider(), what)?;
    let chain = certs_in(m, cert, &format!("{what} cert"))?;
    let parsed = chain
        .iter()
        .enumerate()
        .map(|(i, der)| {
            X509Certificate::from_der(der).map(|(_, c)| c).map_err(|e| {
                anyhow!(
                    "{what} cert {}: certificate {} of the file does not parse ({e})",
                    cert.display(),
                    i + 1
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    for (i, link) in parsed.windows(2).enumerate() {
        link[0].verify_signature(Some(link[1].public_key())).map_err(|_| {
            anyhow!(
                "{what} cert {}: certificate {} ({}) is not signed by certificate {} ({}); write the leaf first, then each issuer in order",
                cert.display(),
                i + 1,
                link[0].subject(),
                i + 2,
                link[1].subject()
            )
        })?;
    }
    let Some(leaf) = parsed.first() else {
        bail!("{what} cert {} holds no certificate", cert.display());
    };
    // Before 1970 (or out of range): as early as a SystemTime goes.
    let at = |t| system_time(t).unwrap_or(SystemTime::UNIX_EPOCH);
    let (from, until) = (at(leaf.validity().not_before), at(leaf.validity().not_after));
    if now < from {
        bail!(
            "{what} cert {} is not valid before {}; install it then, or check the clock",
            cert.display(),
            humantime::format_rfc3339_seconds(from)
        );
    }
    if now > until {
        bail!(
            "{what} cert {} expired on {}; issue a new one",
            cert.display(),
            humantime::format_rfc3339_seconds(until)
        );
    }
    Ok(())
}
