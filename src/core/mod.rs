//! The reusable library behind every `tlb` subcommand.

pub mod config;
pub mod identity;
pub mod logging;
pub mod pki;
