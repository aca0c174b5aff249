//! Authorization policy of one app: which `[[client]]` identities (subject
//! CN, optional SPKI pin) may use it, and why a refused one was refused.
//!
//! Promises: default deny; only reads an already verified certificate;
//! refusal reasons are for logs and metrics, never sent to the client.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::core::config::Client;
use crate::core::tls::identity;

/// Why a client was refused by the policy (for logs and metrics; never
/// sent to the client, which only sees an alert).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Certificate CN, if it had one.
    pub identity: Option<String>,
    pub app: String,
    pub reason: DenialReason,
}

/// The authorization verdicts that are not a certificate error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialReason {
    /// Valid certificate without a CN.
    NoIdentity,
    /// The identity has no `[[client]]` entry.
    UnknownClient,
    /// The client exists but the app is not in its `apps`.
    AppNotAllowed,
    /// The public key does not match the client's `spki_sha256` pin.
    PinMismatch,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = crate::core::rt::log::escaped(self.identity.as_deref().unwrap_or("-"));
        match self.reason {
            DenialReason::NoIdentity => write!(f, "certificate has no subject CN (app {})", self.app),
            DenialReason::UnknownClient => {
                write!(f, "identity {who} is not a configured [[client]] (app {})", self.app)
            }
            DenialReason::AppNotAllowed => write!(f, "identity {who} is not allowed on app {}", self.app),
            DenialReason::PinMismatch => write!(f, "identity {who}: public key does not match spki_sha256 pin"),
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
    /// Hex, as `tlb pki show` prints it.
    pub serial: Option<String>,
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

/// Who may use one app: identity -> optional SPKI pin.
#[derive(Debug, Default, Clone)]
pub struct AppPolicy {
    pub app: String,
    allowed: HashMap<String, Option<[u8; 32]>>,
    known: HashSet<String>,
}

impl AppPolicy {
    /// The policy of app `app` under `clients`.
    pub fn new(app: &str, clients: &[Client]) -> AppPolicy {
        let mut allowed = HashMap::new();
        let mut known = HashSet::new();
        for c in clients {
            known.insert(c.name.clone());
            if c.apps.iter().any(|a| a == app) {
                allowed.insert(c.name.clone(), c.spki_sha256);
            }
        }
        AppPolicy {
            app: app.to_string(),
            allowed,
            known,
        }
    }

    /// Checks an already chain-verified end-entity certificate; the
    /// identity (CN) when admitted.
    pub fn authorize(&self, end_entity: &[u8]) -> Result<String, Denial> {
        let deny = |identity: Option<String>, reason| Denial {
            identity,
            app: self.app.clone(),
            reason,
        };
        // One parse for the CN and, when pinned, the SPKI digest.
        let verdict = identity::parsed(end_entity, |cert| {
            let cn = identity::cn_of(cert)?;
            Some(match self.allowed.get(&cn) {
                Some(None) => Ok(cn),
                Some(Some(pin)) if identity::spki_of(cert).as_ref() == Some(pin) => Ok(cn),
                Some(Some(_)) => Err(deny(Some(cn), DenialReason::PinMismatch)),
                None if self.known.contains(&cn) => Err(deny(Some(cn), DenialReason::AppNotAllowed)),
                None => Err(deny(Some(cn), DenialReason::UnknownClient)),
            })
        });
        verdict.flatten().unwrap_or_else(|| Err(self.no_identity()))
    }

    /// The denial for a certificate without a usable subject CN.
    pub fn no_identity(&self) -> Denial {
        Denial {
            identity: None,
            app: self.app.clone(),
            reason: DenialReason::NoIdentity,
        }
    }
}
