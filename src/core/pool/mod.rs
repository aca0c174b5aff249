//! Upstream pools: the upstreams of an app, their health, and the choice of
//! one (least connections, retries).

pub mod balancer;
pub mod health;
