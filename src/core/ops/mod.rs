//! Operating a running balancer: metrics exposition, the admin endpoint,
//! logging set-up.

pub mod admin;
pub mod logging;
pub mod metrics;
