//! TLS set-up: loading PEM material, the per-app server configs whose
//! client-certificate verifier and session tickets are the app's
//! [`Gate`](crate::core::tls::gate::Gate), client configs for `tlb client` and
//! `tlb bench`, and TLS towards upstreams (`[app.upstream_tls]`, see
//! [`upstream`]).
//!
//! Promises:
//! - One crypto provider (aws-lc-rs), TLS 1.3 only unless `min_version = "1.2"`
//!   (then TLS 1.2 with AEAD + ECDHE suites only, which is all rustls offers).
//! - A client certificate is required and decided by the gate in the
//!   handshake (chain to `tls.ca`, validity at the gate clock, clientAuth
//!   usage, CRL for the whole chain when configured, then the app's policy);
//!   a refusal is a TLS alert, before any upstream is touched.
//! - Resumption only through the gate's tickets (no stateful session cache),
//!   at most `session_lifetime` after the full handshake, never across apps
//!   or config generations.
//! - `[tls] crl` is checked at load: signed by `tls.ca`, nextUpdate known.

pub mod alerts;
pub mod client;
pub mod crl;
pub mod expiry;
pub mod gate;
pub mod identity;
pub mod load;
pub mod material;
pub mod policy;
pub mod rotation;
pub mod server;
pub mod sigmemo;
pub mod suites;
pub mod upstream;

// The names the rest of tlb uses, in one place.
pub use alerts::{alert_name, describe_rustls_error, describe_tls_error};
pub use client::{ClientTlsFiles, client_config};
pub use load::{
    load_certified_key, load_certs, load_certs_as, load_crls, load_key, load_key_as, load_roots, load_roots_as,
};
pub use material::Material;
pub use server::{ServerTls, TicketKeys};
pub use suites::provider;
