//! Operating a running balancer: metrics exposition, the admin endpoint,
//! logging set-up, the control socket (binary upgrade hand-off).

pub mod admin;
pub mod control;
pub mod logging;
pub mod metrics;
