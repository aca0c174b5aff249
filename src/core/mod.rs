//! The reusable library behind every `tlb` subcommand.

pub mod admin;
pub mod balancer;
pub mod bench;
pub mod client;
pub mod clock;
pub mod config;
pub mod connection;
pub mod gate;
pub mod health;
pub mod identity;
pub mod lab;
pub mod limiter;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod pki;
pub mod relay;
pub mod runtime;
pub mod server;
pub mod tls;
pub mod upstream;
