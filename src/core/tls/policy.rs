//! Authorization policy of one app: which `[[client]]` identities (subject
//! CN, URI SAN or DNS SAN, optional SPKI pin) may use it, which trust
//! domain's CA must have issued each, and why a refused one was refused.
//!
//! Promises: default deny; a certificate matching two entries is refused
//! (never a silent pick); in audit mode a would-be policy refusal is
//! admitted and carries its denial (certificate errors are the gate's and
//! are never audited); the verdict is only trusted after the gate verified
//! the chain with the verifier the verdict names; refusal reasons are for
//! logs and metrics, never sent to the client.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use x509_parser::prelude::X509Certificate;

use crate::core::config::{AppMode, Client, ClientMatch};
use crate::core::tls::identity;

/// Why a client was refused by the policy (for logs and metrics; never
/// sent to the client, which only sees an alert).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The matched entry's name, else what the certificate presented (its
    /// CN, else its first URI or DNS SAN), if anything.
    pub identity: Option<String>,
    pub app: String,
    pub reason: DenialReason,
    /// `Ambiguous`: the entries matched; `WrongTrustDomain`: whose CA was
    /// required.
    pub detail: String,
}

/// The authorization verdicts that are not a certificate error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenialReason {
    /// Valid certificate without a CN.
    NoIdentity,
    /// The identity has no `[[client]]` entry.
    UnknownClient,
    /// The client exists but the app is not in its `apps`.
    AppNotAllowed,
    /// The public key does not match the client's `spki_sha256` pin.
    PinMismatch,
    /// The certificate matches more than one `[[client]]` entry.
    Ambiguous,
    /// The chain ends at a trusted CA, but not at the one the identity's
    /// trust domain requires (another domain's CA minted it). Refused in
    /// audit mode too.
    WrongTrustDomain,
}

impl DenialReason {
    /// Whether audit mode admits it (everything but the chain's anchor).
    pub fn auditable(self) -> bool {
        self != DenialReason::WrongTrustDomain
    }

    /// Short label (logs, `reason=`).
    pub fn label(self) -> &'static str {
        match self {
            DenialReason::NoIdentity => "no_identity",
            DenialReason::UnknownClient => "not_listed",
            DenialReason::AppNotAllowed => "app_not_allowed",
            DenialReason::PinMismatch => "pin_mismatch",
            DenialReason::Ambiguous => "ambiguous",
            DenialReason::WrongTrustDomain => "wrong_trust_domain",
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = crate::core::rt::log::escaped(self.identity.as_deref().unwrap_or("-"));
        match self.reason {
            DenialReason::NoIdentity => write!(
                f,
                "certificate has no subject CN, URI or DNS SAN to identify it (app {})",
                self.app
            ),
            DenialReason::UnknownClient => {
                write!(f, "identity {who} is not a configured [[client]] (app {})", self.app)
            }
            DenialReason::AppNotAllowed => write!(f, "identity {who} is not allowed on app {}", self.app),
            DenialReason::PinMismatch => write!(
                f,
                "identity {who}: public key does not match spki_sha256 pin (app {})",
                self.app
            ),
            DenialReason::Ambiguous => write!(
                f,
                "certificate matches several [[client]] entries ({}); refused rather than pick one (app {})",
                crate::core::rt::log::escaped(&self.detail),
                self.app
            ),
            DenialReason::WrongTrustDomain => write!(
                f,
                "identity {who}: chain does not end at the CA of {} (another trusted CA issued it; app {})",
                self.detail, self.app
            ),
        }
    }
}

/// What the verifier recorded about a chain it refused, for the
/// handshake's log line: the policy's denial when it was one, and the
/// certificate's identity (CN) and serial where they could be read.
/// Only a refusal builds one: an admitted chain costs nothing here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefusedCert {
    pub denial: Option<Denial>,
    pub identity: Option<String>,
    /// What the certificate presents: `cn:X`, `uri:X`, `dns:X`.
    pub presented: Vec<String>,
    /// Hex, as `tlb pki show` prints it.
    pub serial: Option<String>,
    /// The app whose gate refused it.
    pub app: String,
}

thread_local! {
    static LAST_REFUSAL: RefCell<Option<RefusedCert>> = const { RefCell::new(None) };
}

/// Takes the refusal recorded by an authorizing verifier on this thread.
///
/// The verifier runs inside the `poll` of the handshake future that then
/// returns the error, on the same thread, with no other task in between; so
/// a caller that polls the handshake and, on error, calls this in the same
/// `poll` gets that connection's refusal. Call `clear_refusal` before polling.
pub fn take_refusal() -> Option<RefusedCert> {
    LAST_REFUSAL.with(|d| d.borrow_mut().take())
}

/// Forgets any recorded refusal on this thread.
pub fn clear_refusal() {
    LAST_REFUSAL.with(|d| *d.borrow_mut() = None);
}

pub(crate) fn record_refusal(r: RefusedCert) {
    LAST_REFUSAL.with(|slot| *slot.borrow_mut() = Some(r));
}

/// Which CA must have issued an identity: `[tls] ca` or a trust domain's
/// (an index into the gate's trust-domain verifiers).
pub type Domain = Option<usize>;

/// What the policy admits a connection as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The `[[client]]` name; for an unlisted client admitted in audit
    /// mode, what its certificate presented.
    pub identity: String,
    /// `identity` is a `[[client]]` (its limits apply); false: an unlisted
    /// client admitted by audit mode (the shared `[defaults]` limits apply).
    pub listed: bool,
    /// The URI SAN the entry matched (a SPIFFE ID), if it matched by URI.
    pub uri: Option<String>,
    /// Audit mode: the denial enforcing would have given (boxed: an
    /// admitted connection carries this struct for its whole life).
    pub audit: Option<Box<Denial>>,
}

/// The policy's verdict on one certificate, before the chain is checked.
#[derive(Debug)]
pub struct Judged {
    pub verdict: Result<Admitted, Denial>,
    /// Whose CA the chain must end at for the verdict to stand.
    pub domain: Domain,
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    allowed: bool,
    pin: Option<[u8; 32]>,
    domain: Domain,
    uri: Option<String>,
}

/// Who may use one app, by CN, URI SAN and DNS SAN.
#[derive(Debug, Default, Clone)]
pub struct AppPolicy {
    pub app: String,
    pub mode: AppMode,
    entries: Vec<Entry>,
    by_cn: HashMap<String, usize>,
    by_uri: HashMap<String, usize>,
    by_dns: HashMap<String, usize>,
    /// The trust domains, in the order of the gate's verifiers.
    domains: Vec<String>,
}

impl AppPolicy {
    /// The policy of app `app` under `clients`, with `domains` the
    /// `[[trust_domain]]` names (empty: `[tls] ca` is the one domain).
    pub fn new(app: &str, mode: AppMode, clients: &[Client], domains: &[String]) -> AppPolicy {
        let mut p = AppPolicy {
            app: app.to_string(),
            mode,
            domains: domains.to_vec(),
            ..AppPolicy::default()
        };
        for (i, c) in clients.iter().enumerate() {
            let (map, key, uri) = match &c.matches {
                ClientMatch::Cn => (&mut p.by_cn, c.name.clone(), None),
                ClientMatch::Uri(u) => (&mut p.by_uri, u.clone(), Some(u.clone())),
                ClientMatch::Dns(d) => (&mut p.by_dns, d.clone(), None),
            };
            map.insert(key, i);
            let domain = c
                .matches
                .trust_domain()
                .and_then(|td| domains.iter().position(|d| d == td));
            p.entries.push(Entry {
                name: c.name.clone(),
                allowed: c.apps.iter().any(|a| a == app),
                pin: c.spki_sha256,
                domain,
                uri,
            });
        }
        p
    }

    /// Whether matching needs the certificate's SANs.
    fn reads_sans(&self) -> bool {
        !self.by_uri.is_empty() || !self.by_dns.is_empty() || !self.domains.is_empty()
    }

    /// The trust domain's name of `domain`, for messages.
    pub fn domain_name(&self, domain: Domain) -> String {
        match domain.and_then(|d| self.domains.get(d)) {
            Some(name) => format!("trust domain {name}"),
            None => "[tls] ca".to_string(),
        }
    }

    /// Judges a certificate (parsed, not yet verified): who it is, whether
    /// this app admits it, and which CA must have issued it.
    pub fn judge(&self, cert: &X509Certificate<'_>) -> Judged {
        let cn = identity::cn_of(cert);
        let (uris, dnss) = if self.reads_sans() {
            identity::sans_of(cert)
        } else {
            (Vec::new(), Vec::new())
        };
        // The entries matched: the first, and any others (no allocation
        // unless a certificate matches two).
        let (mut first, mut others): (Option<usize>, Vec<usize>) = (None, Vec::new());
        let found = cn.iter().filter_map(|c| self.by_cn.get(c)).chain(
            uris.iter()
                .filter_map(|u| self.by_uri.get(u))
                .chain(dnss.iter().filter_map(|d| self.by_dns.get(d))),
        );
        for &i in found {
            match first {
                None => first = Some(i),
                Some(f) if f == i || others.contains(&i) => {}
                Some(_) => others.push(i),
            }
        }
        // Without a (single) entry, the CA the certificate's own SPIFFE ID
        // names decides which verifier explains a certificate error.
        let natural = uris.iter().find_map(|u| {
            let td = crate::core::config::spiffe_trust_domain(u)?;
            self.domains.iter().position(|d| d == td)
        });
        let presented = || {
            cn.clone()
                .or_else(|| uris.first().cloned())
                .or_else(|| dnss.first().cloned())
        };
        let (verdict, domain, listed) = match first {
            Some(i) if others.is_empty() => match self.entries.get(i) {
                Some(e) => (self.entry_verdict(e, cert), e.domain, true),
                None => (Err(self.deny(presented(), DenialReason::UnknownClient)), natural, false),
            },
            None if presented().is_none() => (Err(self.no_identity()), natural, false),
            None => (Err(self.deny(presented(), DenialReason::UnknownClient)), natural, false),
            Some(i) => {
                let names: Vec<&str> = std::iter::once(i)
                    .chain(others.iter().copied())
                    .filter_map(|i| self.entries.get(i).map(|e| e.name.as_str()))
                    .collect();
                let mut d = self.deny(presented(), DenialReason::Ambiguous);
                d.detail = names.join(", ");
                (Err(d), natural, false)
            }
        };
        Judged {
            verdict: self.audited(verdict, listed),
            domain,
        }
    }

    /// The verdict for a certificate that matched entry `e` alone.
    fn entry_verdict(&self, e: &Entry, cert: &X509Certificate<'_>) -> Result<Admitted, Denial> {
        if !e.allowed {
            return Err(self.deny(Some(e.name.clone()), DenialReason::AppNotAllowed));
        }
        if let Some(pin) = &e.pin
            && identity::spki_of(cert).as_ref() != Some(pin)
        {
            return Err(self.deny(Some(e.name.clone()), DenialReason::PinMismatch));
        }
        Ok(Admitted {
            identity: e.name.clone(),
            listed: true,
            uri: e.uri.clone(),
            audit: None,
        })
    }

    /// In audit mode, a policy denial becomes an admission that carries it.
    pub fn audited(&self, verdict: Result<Admitted, Denial>, listed: bool) -> Result<Admitted, Denial> {
        match verdict {
            Err(d) if self.mode == AppMode::Audit && d.reason.auditable() => Ok(Admitted {
                identity: d.identity.clone().unwrap_or_else(|| "-".into()),
                listed: listed && d.identity.is_some(),
                uri: None,
                audit: Some(Box::new(d)),
            }),
            v => v,
        }
    }

    /// Checks a certificate (DER, already chain-verified) against the
    /// policy alone; what it is admitted as.
    pub fn authorize(&self, end_entity: &[u8]) -> Result<Admitted, Denial> {
        identity::parsed(end_entity, |c| self.judge(c).verdict).unwrap_or_else(|| Err(self.no_identity()))
    }

    fn deny(&self, identity: Option<String>, reason: DenialReason) -> Denial {
        Denial {
            identity,
            app: self.app.clone(),
            reason,
            detail: String::new(),
        }
    }

    /// The denial for a certificate without a usable identity.
    pub fn no_identity(&self) -> Denial {
        self.deny(None, DenialReason::NoIdentity)
    }

    /// The denial for a chain that ends at a trusted CA other than the one
    /// `domain` requires.
    pub fn wrong_trust_domain(&self, identity: Option<String>, domain: Domain) -> Denial {
        let mut d = self.deny(identity, DenialReason::WrongTrustDomain);
        d.detail = self.domain_name(domain);
        d
    }
}
