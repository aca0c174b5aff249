//! Memoized signature checks on DER-signed data (certificates, CRLs).
//!
//! webpki verifies the CRL's signature again on every handshake (an ECDSA
//! P-256 verification, ~20 % of a full mTLS handshake's instructions; see
//! rustls/webpki#81), and a returning client's certificate signature is
//! the same bytes every time. A verification that succeeded for exactly the
//! same (algorithm, public key, signed bytes, signature) always succeeds
//! again, so its result is kept, keyed by a SHA-256 of those four.
//!
//! Only successes are kept; only DER-encoded signed data (a first byte of
//! 0x30: certificates and CRLs) is memoized, never a handshake's
//! CertificateVerify (unique per handshake, and proof of key possession);
//! chain building, validity dates, usages and revocation lookups still run
//! on every handshake. The set is bounded: when full it is emptied.
//!
//! Promises: only successful verifications of DER signed data are kept;
//! the set is bounded.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm};

/// Verified signatures kept (32 bytes each).
const CAPACITY: usize = 4096;

static VERIFIED: Mutex<Option<HashSet<[u8; 32]>>> = Mutex::new(None);
static TABLE: OnceLock<WebPkiSupportedAlgorithms> = OnceLock::new();

#[derive(Debug)]
struct Memo(&'static dyn SignatureVerificationAlgorithm);

fn key(alg: &Memo, public_key: &[u8], message: &[u8], signature: &[u8]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [
        alg.0.public_key_alg_id().as_ref(),
        alg.0.signature_alg_id().as_ref(),
        public_key,
        message,
        signature,
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl SignatureVerificationAlgorithm for Memo {
    fn verify_signature(&self, public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), InvalidSignature> {
        if message.first() != Some(&0x30) {
            return self.0.verify_signature(public_key, message, signature);
        }
        let k = key(self, public_key, message, signature);
        let known = |set: &Option<HashSet<[u8; 32]>>| set.as_ref().is_some_and(|s| s.contains(&k));
        if known(&VERIFIED.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(());
        }
        self.0.verify_signature(public_key, message, signature)?;
        let mut guard = VERIFIED.lock().unwrap_or_else(|p| p.into_inner());
        let set = guard.get_or_insert_with(HashSet::new);
        if set.len() >= CAPACITY {
            set.clear();
        }
        set.insert(k);
        Ok(())
    }
    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        self.0.public_key_alg_id()
    }
    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.0.signature_alg_id()
    }
    fn fips(&self) -> bool {
        self.0.fips()
    }
}

/// `base` with every algorithm memoized (built once per process).
pub fn algorithms(base: WebPkiSupportedAlgorithms) -> WebPkiSupportedAlgorithms {
    *TABLE.get_or_init(|| {
        let wrap = |a: &'static dyn SignatureVerificationAlgorithm| -> &'static dyn SignatureVerificationAlgorithm {
            Box::leak(Box::new(Memo(a)))
        };
        let all: Vec<_> = base.all.iter().map(|a| wrap(*a)).collect();
        let mapping: Vec<_> = base
            .mapping
            .iter()
            .map(|(scheme, algs)| {
                let algs: Vec<_> = algs.iter().map(|a| wrap(*a)).collect();
                (*scheme, &*Box::leak(algs.into_boxed_slice()))
            })
            .collect();
        WebPkiSupportedAlgorithms {
            all: Box::leak(all.into_boxed_slice()),
            mapping: Box::leak(mapping.into_boxed_slice()),
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn memoized_signatures_admit_only_what_verified() {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
        let base = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
        let memo = super::algorithms(base);
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        let pk = key.public_key().as_ref().to_vec();
        let p256 = rustls::SignatureScheme::ECDSA_NISTP256_SHA256;
        let (_, algs) = memo.mapping.iter().find(|(s, _)| *s == p256).unwrap();
        let alg = algs[0];
        for msg in [&b"\x30 DER-like signed data"[..], &b"not DER: never memoized"[..]] {
            let sig = key.sign(&rng, msg).unwrap().as_ref().to_vec();
            assert!(alg.verify_signature(&pk, msg, &sig).is_ok());
            assert!(
                alg.verify_signature(&pk, msg, &sig).is_ok(),
                "second time, from the memo"
            );
            let mut bad = sig.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(alg.verify_signature(&pk, msg, &bad).is_err());
            let mut other = msg.to_vec();
            other.push(0);
            assert!(alg.verify_signature(&pk, &other, &sig).is_err());
        }
    }
}
