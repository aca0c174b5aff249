//! The data path, in the order a connection meets it, each module using
//! only those above it:
//!
//! - [`outcome`]: why a connection ended short of a relay (fixed enums);
//! - [`stats`]: the counters the data path records;
//! - [`limiter`]: per-client limits; [`relay`]: the byte relay;
//!   [`listener`]: binding and accepting; [`linger`]: closing without a reset;
//! - [`activation`]: listeners handed over (systemd) or bound, per address;
//! - [`generation`]: what one config builds, swapped whole on reload;
//! - [`registry`]: open connections, for reload re-checks;
//! - [`listening`]: listeners a reload binds, and copies for an upgrade;
//! - [`server`]: the balancer's state, reloads;
//! - [`admission`]: the `[limits]` caps at accept;
//! - [`handshake`]: the mTLS handshake, app chosen by SNI;
//! - [`proxy_header`]: the PROXY protocol header sent to upstreams;
//! - [`connection`]: one connection, accept to access log;
//! - [`accepting`]: accept loops per listen address, as reloads change them;
//! - [`watch`]: `[tls] watch` (certificate rotation from disk) and the
//!   certificate expiry warnings;
//! - [`serve`]: [`Server::run`](server::Server::run), the accept loops and the drain.

pub mod accepting;
pub mod activation;
pub mod admission;
pub mod connection;
pub mod generation;
pub mod handshake;
pub mod limiter;
pub mod linger;
pub mod listener;
pub mod listening;
pub mod outcome;
pub mod proxy_header;
pub mod registry;
pub mod relay;
pub mod serve;
pub mod server;
pub mod stats;
pub mod watch;
