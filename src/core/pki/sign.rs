//! Signing: the CA's parameters, leaf certificates signed in memory, the
//! issuer loaded back from the directory, and random serials.
//!
//! Promises: every certificate has a random 127-bit serial; a loaded CA key
//! must match the CA certificate; nothing here writes a file.

use std::fs;

use anyhow::{Context, Result, anyhow, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::files::read_cert_der;
use super::record::Record;
use super::{KeyType, Pki, Role, Validity};

impl Pki {
    /// Signs a leaf for `role` with a new key of `key_type`, in memory.
    pub(super) fn sign_leaf(
        &self,
        issuer: &Issuer<'_, KeyPair>,
        role: Role,
        cn: &str,
        sans: Vec<SanType>,
        key_type: KeyType,
        validity: Validity,
    ) -> Result<Signed> {
        let key = KeyPair::generate_for(key_type.algorithm()).context("generating a key")?;
        let serial = random_serial()?;
        let mut params = CertificateParams::default();
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.serial_number = Some(serial.clone());
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if key_type == KeyType::EcdsaP256 && role == Role::Server {
            params.key_usages.push(KeyUsagePurpose::KeyAgreement);
        }
        params.extended_key_usages = vec![match role {
            Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
            _ => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.subject_alt_names = sans;
        let cert = params
            .signed_by(&key, issuer)
            .with_context(|| format!("signing the certificate for {cn}"))?;
        Ok(Signed {
            cert: cert.pem(),
            key: key.serialize_pem(),
            serial,
            not_after: validity.not_after,
        })
    }

    /// The CA of `ca.crt` and `ca.key`, refused unless the two are a pair.
    pub(super) fn load_issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let ca_pem = fs::read_to_string(self.ca_cert()).with_context(|| {
            format!(
                "reading CA certificate {} (run `tlb pki init` or pass --dir)",
                self.ca_cert().display()
            )
        })?;
        let key_pem = fs::read_to_string(self.ca_key()).with_context(|| {
            format!(
                "reading CA key {} (run `tlb pki init` or pass --dir)",
                self.ca_key().display()
            )
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            anyhow!(
                "CA key {} is not a valid PKCS#8 PEM private key ({e}); restore it from backup or re-create the PKI with `tlb pki init --force`",
                self.ca_key().display()
            )
        })?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|e| {
            anyhow!(
                "CA certificate {} is not valid PEM ({e}); re-create the PKI with `tlb pki init --force`",
                self.ca_cert().display()
            )
        })?;
        // The key must belong to the certificate, or everything we sign is junk.
        let ca_der = read_cert_der(&self.ca_cert())?;
        let (_, ca) =
            X509Certificate::from_der(&ca_der).map_err(|e| anyhow!("parsing {}: {e}", self.ca_cert().display()))?;
        if ca.public_key().subject_public_key.data.as_ref() != rcgen::PublicKeyData::der_bytes(issuer.key()) {
            bail!(
                "CA key {} does not match CA certificate {}; restore the matching pair or re-create with `tlb pki init --force`",
                self.ca_key().display(),
                self.ca_cert().display()
            );
        }
        Ok(issuer)
    }

    /// The notAfter of `ca.crt`.
    pub(super) fn ca_not_after(&self) -> Result<OffsetDateTime> {
        let der = read_cert_der(&self.ca_cert())?;
        let (_, ca) =
            X509Certificate::from_der(&der).map_err(|e| anyhow!("parsing {}: {e}", self.ca_cert().display()))?;
        OffsetDateTime::from_unix_timestamp(ca.validity().not_after.timestamp()).context("CA expiry out of range")
    }
}

/// A new self-signed CA, in memory, not yet written.
pub(super) struct NewCa {
    pub(super) key_pem: String,
    pub(super) cert_pem: String,
    pub(super) record: Record,
    pub(super) issuer: Issuer<'static, KeyPair>,
}

impl NewCa {
    /// A CA key of `key_type` and a certificate valid for `days`.
    pub(super) fn generate(key_type: KeyType, days: u32) -> Result<NewCa> {
        let ca_key = KeyPair::generate_for(key_type.algorithm()).context("generating the CA key")?;
        let ca_serial = random_serial()?;
        let ca_params = ca_params(Validity::days(days), ca_serial.clone())?;
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .context("self-signing the CA certificate")?;
        let record = Record::new(&ca_serial, "ca", Role::Ca, ca_params.not_after);
        let key_pem = ca_key.serialize_pem();
        Ok(NewCa {
            key_pem,
            cert_pem: ca_cert.pem(),
            record,
            issuer: Issuer::new(ca_params, ca_key),
        })
    }
}

/// A leaf signed in memory, not yet written.
pub(super) struct Signed {
    pub(super) cert: String,
    pub(super) key: String,
    pub(super) serial: SerialNumber,
    pub(super) not_after: OffsetDateTime,
}

impl Signed {
    pub(super) fn record(&self, name: &str, role: Role) -> Record {
        Record::new(&self.serial, name, role, self.not_after)
    }
}

fn ca_params(validity: Validity, serial: SerialNumber) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.serial_number = Some(serial);
    let mut dn = DistinguishedName::new();
    let id = hex::encode_upper(random_bytes::<3>()?);
    dn.push(DnType::CommonName, format!("tlb CA {id}"));
    dn.push(DnType::OrganizationName, "tlb");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.key_identifier_method = KeyIdMethod::Sha256;
    Ok(params)
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| anyhow!("the system random number generator failed"))?;
    Ok(b)
}

/// 16 random bytes, positive (top bit clear) and with a non-zero first byte
/// so the DER encoding keeps all 127 bits.
fn random_serial() -> Result<SerialNumber> {
    let mut b = random_bytes::<16>()?;
    b[0] = (b[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&b))
}
