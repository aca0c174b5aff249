//! `tlb`: a mutual-TLS layer-4 load balancer.
//!
//! The crate is split in two:
//! - [`core`] is the reusable library: configuration, PKI, TLS, identity,
//!   balancing, limits, health, the proxy itself and metrics. Everything a
//!   test or another program needs lives here, with a small documented API.
//! - [`cmd`] holds one module per subcommand: its clap `Args` and a `run`
//!   that turns flags into calls of [`core`]. Nothing else.
#![forbid(unsafe_code)]

pub mod cmd;
pub mod core;
