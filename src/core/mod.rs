//! The library behind every `tlb` subcommand, in the order a connection
//! meets it (see the crate docs for the whole layout).

pub mod cluster;
pub mod config;
pub mod ops;
pub mod pki;
pub mod pool;
pub mod proxy;
pub mod rt;
pub mod tls;
pub mod tools;
