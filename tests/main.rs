//! The integration tests, as one test binary: one compile of the shared
//! helpers and the dependencies' generic code, one link (fifteen separate
//! binaries compiled and linked the same code fifteen times). Each module
//! is one area; `cargo test --release --test integration gate::` runs one.

mod common;

mod activation;
mod admin;
mod bench;
mod bench_fleet;
mod cli;
mod cluster;
mod cluster_auth;
mod config;
mod data_path;
mod faults;
mod fleet;
mod flood;
mod gate;
mod health;
mod identity;
mod interop;
mod local_resource;
mod pki;
mod proxy_protocol;
mod recipe;
mod reference;
mod reload;
mod reuse_port;
mod rotation;
mod samples;
mod upgrade;
mod upstream_tls;
