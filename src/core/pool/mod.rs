//! Upstream pools: the upstreams of an app, their health, and the choice of
//! one (least connections, retries).
//!
//! Dependencies run one way: [`policy`] (how an app judges, pure data) <-
//! [`health`] (one upstream's state machine, no I/O) <- [`upstream`] (an
//! upstream, its counters and slot guard) <- [`checker`] (active checks)
//! and [`balancer`] (pick and connect). Decisions read the injected
//! [`Clock`](crate::core::rt::clock::Clock).

pub mod balancer;
pub mod checker;
pub mod health;
pub mod policy;
pub mod upstream;
