//! The crypto provider (aws-lc-rs only) and the protocol versions and
//! cipher-suite order tlb offers.
//!
//! Promises: one provider for every config; TLS 1.3 only unless a config
//! asks for 1.2; the server prefers AES-128-GCM.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

use crate::core::config::TlsVersion;

/// The process's one crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server's provider: the same suites, in the server's order of
/// preference (applied with `ignore_client_order`): AES-128-GCM-SHA256
/// first. P-256 and X25519 give 128-bit security, so AES-256 adds cost
/// (14 AES rounds instead of 10 per block, SHA-384 instead of SHA-256 in
/// the key schedule, no SHA-NI) without raising the connection's strength.
pub fn server_provider() -> Arc<CryptoProvider> {
    use rustls::CipherSuite as CS;
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        CS::TLS13_AES_128_GCM_SHA256 => 0,
        CS::TLS13_AES_256_GCM_SHA384 => 1,
        CS::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        _ => 3,
    };
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites.sort_by_key(rank);
    Arc::new(p)
}

pub fn versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static V13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        TlsVersion::V1_3 => &V13,
        TlsVersion::V1_2 => rustls::ALL_VERSIONS, // TLS 1.3, then 1.2
    }
}
