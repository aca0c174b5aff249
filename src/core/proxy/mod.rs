//! The data path: listeners, the per-connection path (handshake, admission,
//! connect, relay, close), per-client limits.

pub mod connection;
pub mod limiter;
pub mod relay;
pub mod server;
