//! `tlb`: a mutual-TLS layer-4 load balancer.
//!
//! This library is everything but the command line (the `tlb` binary's
//! `cmd/` modules: clap flags turned into calls of [`core`]). Its modules,
//! in the order a connection meets them; dependencies run one way, down
//! this list (`scripts/check_layout.py` checks it in CI):
//!
//! - [`core::rt`]: runtime support: the executor and timeouts, the TCP
//!   stream and I/O error helpers, the injectable clock, log-line helpers.
//! - [`core::config`]: `tlb.toml`, typed and validated.
//! - [`core::tls`]: certificates and rustls configs, and the **gate**: the
//!   one admission decision (chain, validity, CRL, policy) that full
//!   handshakes, resumptions and reloads all go through.
//! - [`core::pool`]: upstreams, their health, least-connections choice.
//! - [`core::cluster`]: `[cluster]`, per-client limits shared by a fleet
//!   through Redis, failing open to a local share.
//! - [`core::proxy`]: listeners and `[limits]` caps, then per connection:
//!   handshake, per-client limits, upstream connect, relay, close.
//! - [`core::ops`]: metrics exposition, the admin endpoint, logging set-up.
//! - [`core::tools`]: echo upstreams, the mTLS client, the load generator,
//!   the in-process lab used by tests and `tlb bench`.
//! - [`core::pki`]: the built-in CA (`tlb pki`).
#![forbid(unsafe_code)]

pub mod core;
