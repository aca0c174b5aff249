//! `tlb pki` through the binary and the library: the files it
//! writes, what is in the certificates, that standard tools (openssl) accept
//! them, revocation, and clean one-line errors.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;
use time::{Duration, OffsetDateTime};
use tlb::core::config::Config;
use tlb::core::pki::{InitOptions, KeyType, Pki, Role, Validity};
use x509_parser::asn1_rs::Oid;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_PRIME256V1: &str = "1.2.840.10045.3.1.7";
const OID_ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const OID_ED25519: &str = "1.3.101.112";
const DEFAULT_CLIENTS: [&str; 4] = ["client1", "client2", "client3", "client4"];

// ---------------------------------------------------------------------------
// Helpers.

/// Runs `tlb ARGS` in `cwd` (so a default `tlb.toml` and `pki/` land there).
fn tlb(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tlb"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        // A panic would print its backtrace: the error tests check there is none.
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("running the tlb binary")
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `tlb ARGS` in `cwd`, asserts success, returns stdout.
#[track_caller]
fn tlb_ok(cwd: &Path, args: &[&str]) -> String {
    let out = tlb(cwd, args);
    assert!(out.status.success(), "tlb {args:?} failed: {}", describe(&out));
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

/// Runs `tlb ARGS` in `cwd` expecting a failure reported the documented way:
/// non-zero exit, exactly one line on stderr starting `tlb: error:`, no panic
/// and no backtrace. Returns that line.
#[track_caller]
fn tlb_fails(cwd: &Path, args: &[&str]) -> String {
    let out = tlb(cwd, args);
    let what = describe(&out);
    assert!(!out.status.success(), "tlb {args:?} should fail: {what}");
    assert!(
        out.status.code().is_some(),
        "tlb {args:?} was killed by a signal: {what}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "tlb {args:?} panicked: {what}");
    assert!(
        !stderr.contains("backtrace"),
        "tlb {args:?} printed a backtrace: {what}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "tlb {args:?}: stderr must be exactly one line: {what}");
    assert!(lines[0].starts_with("tlb: error:"), "tlb {args:?}: {what}");
    lines[0].to_string()
}

/// `tlb pki init ARGS` in a fresh temporary directory (the cwd of the run).
fn init(args: &[&str]) -> TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut all = vec!["pki", "init"];
    all.extend_from_slice(args);
    tlb_ok(tmp.path(), &all);
    tmp
}

/// DER of the (first) certificate in a PEM file.
fn cert_der(path: &Path) -> Vec<u8> {
    let pem = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(pem.label, "CERTIFICATE", "{}", path.display());
    pem.contents
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).expect("a DER certificate");
    assert!(rest.is_empty(), "trailing bytes after the certificate");
    cert
}

fn cn(cert: &X509Certificate<'_>) -> String {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// DNS names and IP addresses (as text) of a certificate's SAN extension.
fn sans(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<String>) {
    let san = cert
        .subject_alternative_name()
        .expect("SAN parses")
        .expect("a SAN extension");
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    for g in &san.value.general_names {
        match g {
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::IPAddress(b) => ips.push(match b.len() {
                4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string(),
                16 => std::net::IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string(),
                n => panic!("IP SAN of {n} bytes"),
            }),
            GeneralName::URI(_) => {} // see uri_sans
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    (dns, ips)
}

/// Asserts `leaf` was issued and signed by `ca`.
#[track_caller]
fn assert_issued_by(leaf: &X509Certificate<'_>, ca: &X509Certificate<'_>) {
    assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw(), "issuer == CA subject");
    leaf.verify_signature(Some(ca.public_key()))
        .unwrap_or_else(|e| panic!("signature of {} does not verify with the CA key: {e}", cn(leaf)));
    // And not by some other key: the CA's own self-signature check must not
    // accept the leaf as self-signed.
    assert!(leaf.verify_signature(None).is_err(), "a leaf must not be self-signed");
}

/// Asserts the public key type (and the signature algorithm that goes with it).
#[track_caller]
fn assert_key_type(cert: &X509Certificate<'_>, key_type: KeyType) {
    let alg = &cert.public_key().algorithm;
    match key_type {
        KeyType::EcdsaP256 => {
            assert_eq!(alg.algorithm.to_id_string(), OID_EC_PUBLIC_KEY, "{}", cn(cert));
            let params = alg.parameters.clone().expect("EC parameters (the named curve)");
            let curve = Oid::try_from(params).expect("the curve is a named-curve OID");
            assert_eq!(curve.to_id_string(), OID_PRIME256V1, "{}", cn(cert));
        }
        KeyType::Ed25519 => {
            assert_eq!(alg.algorithm.to_id_string(), OID_ED25519, "{}", cn(cert));
        }
    }
}

fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `true` when openssl can run; otherwise says why the check is skipped.
fn have_openssl(test: &str) -> bool {
    let ok = openssl_available();
    if !ok {
        eprintln!("SKIPPED openssl checks in {test}: `openssl` is not on PATH (install it to run them)");
    }
    ok
}

/// `openssl verify ARGS`; returns (success, stdout + stderr).
fn openssl_verify(args: &[&Path], flags: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("verify")
        .args(flags)
        .args(args)
        .output()
        .expect("running openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[track_caller]
fn assert_openssl_verifies(ca: &Path, leaf: &Path, extra: &[&str]) {
    let ca_s = ca.to_str().unwrap();
    let mut flags = vec!["-CAfile", ca_s];
    flags.extend_from_slice(extra);
    let (ok, text) = openssl_verify(&[leaf], &flags);
    assert!(ok, "openssl verify {flags:?} {} failed: {text}", leaf.display());
    assert!(text.contains(": OK"), "{text}");
}

/// (revoked serials, CRL number) of a PEM CRL, after checking the CA signed it.
fn read_crl(path: &Path, ca: &X509Certificate<'_>) -> (Vec<Vec<u8>>, String) {
    let bytes = fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes).expect("crl.pem is PEM");
    assert_eq!(pem.label, "X509 CRL");
    let (_, crl) = x509_parser::parse_x509_crl(&pem.contents).expect("a DER CRL");
    assert_eq!(crl.issuer().as_raw(), ca.subject().as_raw(), "CRL issuer == CA subject");
    crl.verify_signature(ca.public_key())
        .expect("the CRL is signed by the CA");
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect();
    let number = crl.crl_number().expect("a CRL number").to_string();
    (serials, number)
}

/// `tlb pki show` as rows of (name, role, revoked): the table, up to the
/// blank line before any notes.
fn show(cwd: &Path, dir: &str) -> Vec<(String, String, String)> {
    let out = tlb_ok(cwd, &["pki", "show", "--dir", dir]);
    let mut lines = out.lines();
    let header = lines.next().expect("a header line");
    assert!(header.starts_with("NAME"), "{out}");
    lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (
                cells[0].to_string(),
                cells[1].to_string(),
                cells.last().unwrap().to_string(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// init: files, modes, key format.

#[test]
fn init_writes_every_file_with_private_modes() {
    let tmp = init(&[]);
    let pki = Pki::new(tmp.path().join("pki"));
    let mut keys = vec![pki.ca_key(), pki.server_key()];
    let mut certs = vec![pki.ca_cert(), pki.server_cert()];
    for c in DEFAULT_CLIENTS {
        let (crt, key) = pki.client(c);
        certs.push(crt);
        keys.push(key);
    }
    for f in certs
        .iter()
        .chain(&keys)
        .chain([&pki.crl(), &tmp.path().join("tlb.toml")])
    {
        assert!(f.is_file(), "{} missing", f.display());
    }
    assert_eq!(mode(pki.dir()), 0o700, "pki/ is 0700");
    assert_eq!(mode(&pki.clients_dir()), 0o700, "pki/clients/ is 0700");
    for k in &keys {
        assert_eq!(mode(k), 0o600, "{} is 0600", k.display());
        let text = fs::read_to_string(k).unwrap();
        assert!(
            text.starts_with("-----BEGIN PRIVATE KEY-----"),
            "{} is not PKCS#8 PEM: {}",
            k.display(),
            text.lines().next().unwrap_or("")
        );
        assert!(text.trim_end().ends_with("-----END PRIVATE KEY-----"));
    }
    for c in &certs {
        assert!(
            fs::read_to_string(c)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
    }
    // No temporary files left behind.
    for d in [pki.dir().to_path_buf(), pki.clients_dir()] {
        for e in fs::read_dir(&d).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.ends_with(".tmp"), "left-over {name} in {}", d.display());
        }
    }
    // Exactly the default clients.
    let mut names: Vec<String> = fs::read_dir(pki.clients_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = DEFAULT_CLIENTS
        .iter()
        .flat_map(|c| [format!("{c}.crt"), format!("{c}.key")])
        .collect();
    expected.sort();
    assert_eq!(names, expected);
}

#[test]
fn init_prints_what_it_wrote_and_the_next_command() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tlb_ok(tmp.path(), &["pki", "init"]);
    assert!(out.contains("ca.crt") && out.contains("client4.key"), "{out}");
    assert!(out.contains("tlb.toml"), "{out}");
    assert!(out.contains("next:"), "{out}");
}

#[test]
fn init_with_explicit_dir_and_config_outside_the_cwd() {
    let cwd = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    let dir = target.path().join("nested/pki");
    let config = target.path().join("conf/tlb.toml");
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    tlb_ok(
        cwd.path(),
        &[
            "pki",
            "init",
            "--dir",
            dir.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    assert!(dir.join("ca.crt").is_file());
    assert_eq!(mode(&dir), 0o700);
    assert!(
        fs::read_dir(cwd.path()).unwrap().next().is_none(),
        "nothing is written to the cwd"
    );
    // The config names the PKI so that it resolves from wherever it is.
    let c = Config::load(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.tls.ca.canonicalize().unwrap(),
        dir.join("ca.crt").canonicalize().unwrap()
    );
    assert!(c.tls.cert.is_file() && c.tls.key.is_file());
    assert!(c.tls.crl.as_ref().is_some_and(|p| p.is_file()));
}

#[test]
fn custom_client_list() {
    let tmp = init(&["--clients", "alice,bob"]);
    let pki = Pki::new(tmp.path().join("pki"));
    let mut names: Vec<String> = fs::read_dir(pki.clients_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["alice.crt", "alice.key", "bob.crt", "bob.key"]);
    for c in ["alice", "bob"] {
        let der = cert_der(&pki.client(c).0);
        assert_eq!(cn(&parse(&der)), c);
    }
    // The generated config authorizes all but the last.
    let cfg = Config::load(&tmp.path().join("tlb.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.client("alice").is_some());
    assert!(cfg.client("bob").is_none());
}

// ---------------------------------------------------------------------------
// Certificate contents.

#[test]
fn ca_certificate_is_a_self_signed_ca() {
    let tmp = init(&[]);
    let pki = Pki::new(tmp.path().join("pki"));
    let der = cert_der(&pki.ca_cert());
    let ca = parse(&der);
    let bc = ca.basic_constraints().unwrap().expect("basicConstraints");
    assert!(bc.value.ca, "basicConstraints CA=true");
    assert!(bc.critical, "basicConstraints is critical on a CA");
    let ku = ca.key_usage().unwrap().expect("keyUsage");
    assert!(ku.value.key_cert_sign(), "keyCertSign");
    assert!(ku.value.crl_sign(), "cRLSign");
    assert_eq!(ca.subject().as_raw(), ca.issuer().as_raw(), "self-issued");
    ca.verify_signature(None).expect("self-signed");
    assert!(cn(&ca).starts_with("tlb CA"), "{}", cn(&ca));
    assert!(ca.validity().is_valid());
    // At least ten years, whatever --days says.
    let years = (ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp()) / (365 * 86400);
    assert!(years >= 9, "CA valid for {years} years");
}

#[test]
fn server_certificate_has_server_auth_and_every_name() {
    let tmp = init(&["--server-name", "db.internal", "--server-name", "10.1.2.3"]);
    let pki = Pki::new(tmp.path().join("pki"));
    let ca_der = cert_der(&pki.ca_cert());
    let ca = parse(&ca_der);
    let der = cert_der(&pki.server_cert());
    let server = parse(&der);

    let eku = server.extended_key_usage().unwrap().expect("extendedKeyUsage");
    assert!(eku.value.server_auth, "serverAuth");
    assert!(
        !eku.value.client_auth,
        "a server certificate is not a client certificate"
    );
    assert!(!eku.value.any);
    let (dns, ips) = sans(&server);
    for d in ["localhost", "db.internal"] {
        assert!(dns.iter().any(|x| x == d), "DNS SAN {d} in {dns:?}");
    }
    for ip in ["127.0.0.1", "::1", "10.1.2.3"] {
        assert!(ips.iter().any(|x| x == ip), "IP SAN {ip} in {ips:?}");
    }
    assert!(
        !dns.iter().any(|d| d == "10.1.2.3"),
        "an IP is an IP SAN, not a DNS SAN: {dns:?}"
    );
    let not_ca = server.basic_constraints().unwrap().is_none_or(|bc| !bc.value.ca);
    assert!(not_ca, "a leaf is not a CA");
    let ku = server.key_usage().unwrap().expect("keyUsage");
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign());
    assert_issued_by(&server, &ca);
    assert!(server.validity().is_valid());
}

#[test]
fn client_certificates_have_client_auth_only_and_cn_name() {
    let tmp = init(&[]);
    let pki = Pki::new(tmp.path().join("pki"));
    let ca_der = cert_der(&pki.ca_cert());
    let ca = parse(&ca_der);
    for name in DEFAULT_CLIENTS {
        let der = cert_der(&pki.client(name).0);
        let c = parse(&der);
        assert_eq!(cn(&c), name);
        let eku = c.extended_key_usage().unwrap().expect("extendedKeyUsage");
        assert!(eku.value.client_auth, "{name}: clientAuth");
        assert!(
            !eku.value.server_auth && !eku.value.any && eku.value.other.is_empty(),
            "{name}: clientAuth only: {:?}",
            eku.value
        );
        assert!(c.basic_constraints().unwrap().is_none_or(|bc| !bc.value.ca));
        assert!(!c.key_usage().unwrap().expect("keyUsage").value.key_cert_sign());
        assert_issued_by(&c, &ca);
        assert!(c.validity().is_valid());
        // --days 365 by default.
        let days = (c.validity().not_after.timestamp() - OffsetDateTime::now_utc().unix_timestamp()) / 86400;
        assert!((363..=365).contains(&days), "{name} valid for {days} more days");
    }
}

#[test]
fn days_sets_the_leaf_validity() {
    let tmp = init(&["--days", "30", "--clients", "a"]);
    let pki = Pki::new(tmp.path().join("pki"));
    let der = cert_der(&pki.client("a").0);
    let c = parse(&der);
    let days = (c.validity().not_after.timestamp() - OffsetDateTime::now_utc().unix_timestamp()) / 86400;
    assert!((28..=30).contains(&days), "valid for {days} more days");
}

#[test]
fn default_key_type_is_ecdsa_p256() {
    let tmp = init(&[]);
    let pki = Pki::new(tmp.path().join("pki"));
    let mut files = vec![pki.ca_cert(), pki.server_cert()];
    files.extend(DEFAULT_CLIENTS.iter().map(|c| pki.client(c).0));
    for f in files {
        let der = cert_der(&f);
        let cert = parse(&der);
        assert_key_type(&cert, KeyType::EcdsaP256);
        assert_eq!(
            cert.signature_algorithm.algorithm.to_id_string(),
            OID_ECDSA_SHA256,
            "{}",
            f.display()
        );
    }
}

#[test]
fn ed25519_key_type() {
    let tmp = init(&["--key-type", "ed25519", "--clients", "a,b"]);
    let pki = Pki::new(tmp.path().join("pki"));
    let ca_der = cert_der(&pki.ca_cert());
    let ca = parse(&ca_der);
    for f in [pki.ca_cert(), pki.server_cert(), pki.client("a").0, pki.client("b").0] {
        let der = cert_der(&f);
        let cert = parse(&der);
        assert_key_type(&cert, KeyType::Ed25519);
        assert_eq!(cert.signature_algorithm.algorithm.to_id_string(), OID_ED25519);
        if f != pki.ca_cert() {
            assert_issued_by(&cert, &ca);
        }
    }
    assert!(
        fs::read_to_string(pki.client("a").1)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    if have_openssl("ed25519_key_type") {
        assert_openssl_verifies(&pki.ca_cert(), &pki.server_cert(), &["-purpose", "sslserver"]);
        assert_openssl_verifies(&pki.ca_cert(), &pki.client("a").0, &["-purpose", "sslclient"]);
    }
}

#[test]
fn serials_are_distinct_and_sixteen_bytes() {
    let a = init(&[]);
    let b = init(&[]);
    let mut seen = HashSet::new();
    for tmp in [&a, &b] {
        let pki = Pki::new(tmp.path().join("pki"));
        let mut files = vec![pki.ca_cert(), pki.server_cert()];
        files.extend(DEFAULT_CLIENTS.iter().map(|c| pki.client(c).0));
        for f in files {
            let der = cert_der(&f);
            let cert = parse(&der);
            let serial = cert.raw_serial().to_vec();
            assert!(serial.len() >= 16, "{}: serial of {} bytes", f.display(), serial.len());
            assert!(serial[0] & 0x80 == 0, "{}: serial must be positive", f.display());
            assert!(seen.insert(serial), "{}: duplicate serial", f.display());
        }
    }
}

// ---------------------------------------------------------------------------
// openssl accepts them.

#[test]
fn openssl_verifies_server_and_clients() {
    if !have_openssl("openssl_verifies_server_and_clients") {
        return;
    }
    let tmp = init(&["--server-name", "db.internal"]);
    let pki = Pki::new(tmp.path().join("pki"));
    assert_openssl_verifies(&pki.ca_cert(), &pki.server_cert(), &[]);
    assert_openssl_verifies(&pki.ca_cert(), &pki.server_cert(), &["-purpose", "sslserver"]);
    assert_openssl_verifies(
        &pki.ca_cert(),
        &pki.server_cert(),
        &["-purpose", "sslserver", "-verify_hostname", "db.internal"],
    );
    assert_openssl_verifies(
        &pki.ca_cert(),
        &pki.server_cert(),
        &["-purpose", "sslserver", "-verify_ip", "127.0.0.1"],
    );
    for c in DEFAULT_CLIENTS {
        let crt = pki.client(c).0;
        assert_openssl_verifies(&pki.ca_cert(), &crt, &[]);
        assert_openssl_verifies(&pki.ca_cert(), &crt, &["-purpose", "sslclient"]);
        // clientAuth only: not usable as a server certificate.
        let (ok, text) = openssl_verify(
            &[&crt],
            &["-CAfile", pki.ca_cert().to_str().unwrap(), "-purpose", "sslserver"],
        );
        assert!(!ok, "{c} must not verify as a server certificate: {text}");
    }
    let (ok, text) = openssl_verify(
        &[&pki.server_cert()],
        &["-CAfile", pki.ca_cert().to_str().unwrap(), "-purpose", "sslclient"],
    );
    assert!(!ok, "the server certificate must not verify as a client: {text}");
    // The CRL is well-formed and signed by the CA as far as openssl is concerned.
    assert_openssl_verifies(
        &pki.ca_cert(),
        &pki.client("client1").0,
        &["-crl_check", "-CRLfile", pki.crl().to_str().unwrap()],
    );
}

#[test]
fn openssl_rejects_a_leaf_from_another_ca() {
    if !have_openssl("openssl_rejects_a_leaf_from_another_ca") {
        return;
    }
    let a = init(&[]);
    let b = init(&[]);
    let (ok, text) = openssl_verify(
        &[&b.path().join("pki/clients/client1.crt")],
        &["-CAfile", a.path().join("pki/ca.crt").to_str().unwrap()],
    );
    assert!(!ok, "{text}");
}

// ---------------------------------------------------------------------------
// Overwrite protection.

#[test]
fn second_init_refuses_and_force_replaces() {
    let tmp = init(&[]);
    let pki = Pki::new(tmp.path().join("pki"));
    let ca_before = fs::read(pki.ca_cert()).unwrap();
    let key_before = fs::read(pki.ca_key()).unwrap();
    let client_before = fs::read(pki.client("client1").0).unwrap();
    let crl_before = fs::read(pki.crl()).unwrap();
    let config_before = fs::read(tmp.path().join("tlb.toml")).unwrap();

    let line = tlb_fails(tmp.path(), &["pki", "init"]);
    assert!(line.contains("--force"), "{line}");
    assert!(line.contains("already exists"), "{line}");
    assert_eq!(fs::read(pki.ca_cert()).unwrap(), ca_before, "ca.crt unchanged");
    assert_eq!(fs::read(pki.ca_key()).unwrap(), key_before, "ca.key unchanged");
    assert_eq!(fs::read(pki.client("client1").0).unwrap(), client_before);
    assert_eq!(fs::read(pki.crl()).unwrap(), crl_before);

    // A server certificate issued from the old CA, to see it go with it.
    tlb_ok(tmp.path(), &["pki", "issue", "web.internal", "--server"]);
    let out = tlb_ok(tmp.path(), &["pki", "init", "--force", "--clients", "client1,x"]);
    assert!(out.contains("kept existing"), "tlb.toml is not overwritten: {out}");
    assert_ne!(fs::read(pki.ca_cert()).unwrap(), ca_before, "--force replaces the CA");
    assert_ne!(fs::read(pki.ca_key()).unwrap(), key_before);
    assert_ne!(fs::read(pki.client("client1").0).unwrap(), client_before);
    assert_eq!(fs::read(tmp.path().join("tlb.toml")).unwrap(), config_before);
    // Old leaves are gone: the directory never mixes two CAs.
    assert!(!pki.client("client3").0.exists());
    assert!(!pki.server("web.internal").0.exists());
    assert!(pki.client("x").0.exists());
    let ca_der = cert_der(&pki.ca_cert());
    let ca = parse(&ca_der);
    let der = cert_der(&pki.client("client1").0);
    assert_issued_by(&parse(&der), &ca);
    let (revoked, number) = read_crl(&pki.crl(), &ca);
    assert!(revoked.is_empty());
    assert_eq!(number, "1");
}

// ---------------------------------------------------------------------------
// issue.

#[test]
fn issue_a_client_and_a_server_from_the_existing_ca() {
    let tmp = init(&[]);
    let pki = Pki::new(tmp.path().join("pki"));
    let ca_before = fs::read(pki.ca_cert()).unwrap();
    let out = tlb_ok(tmp.path(), &["pki", "issue", "client5"]);
    assert!(out.contains("client5.crt"), "{out}");
    assert_eq!(fs::read(pki.ca_cert()).unwrap(), ca_before, "issue leaves the CA alone");
    let (crt, key) = pki.client("client5");
    assert_eq!(mode(&key), 0o600);
    assert!(
        fs::read_to_string(&key)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    let ca_der = cert_der(&pki.ca_cert());
    let ca = parse(&ca_der);
    let der = cert_der(&crt);
    let c = parse(&der);
    assert_eq!(cn(&c), "client5");
    let eku = c.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.client_auth && !eku.value.server_auth);
    assert_issued_by(&c, &ca);

    // Again: refused, the first certificate kept.
    let before = fs::read(&crt).unwrap();
    let line = tlb_fails(tmp.path(), &["pki", "issue", "client5"]);
    assert!(line.contains("--force"), "{line}");
    assert!(line.contains("client5"), "{line}");
    assert_eq!(fs::read(&crt).unwrap(), before);
    // With --force: a new certificate.
    tlb_ok(tmp.path(), &["pki", "issue", "client5", "--force"]);
    assert_ne!(fs::read(&crt).unwrap(), before);

    tlb_ok(tmp.path(), &["pki", "issue", "web.internal", "--server"]);
    let (scrt, skey) = pki.server("web.internal");
    assert_eq!(scrt, tmp.path().join("pki/servers/web.internal.crt"));
    assert_eq!(mode(&skey), 0o600);
    assert_eq!(mode(&pki.servers_dir()), 0o700);
    let sder = cert_der(&scrt);
    let s = parse(&sder);
    let (dns, ips) = sans(&s);
    assert!(dns.iter().any(|d| d == "web.internal"), "{dns:?}");
    assert!(dns.iter().any(|d| d == "localhost"), "{dns:?}");
    assert!(ips.iter().any(|i| i == "127.0.0.1"), "{ips:?}");
    let eku = s.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && !eku.value.client_auth);
    assert_issued_by(&s, &ca);

    if have_openssl("issue_a_client_and_a_server_from_the_existing_ca") {
        let orig_ca = tmp.path().join("orig-ca.crt");
        fs::write(&orig_ca, &ca_before).unwrap();
        assert_openssl_verifies(&orig_ca, &crt, &["-purpose", "sslclient"]);
        assert_openssl_verifies(
            &orig_ca,
            &scrt,
            &["-purpose", "sslserver", "-verify_hostname", "web.internal"],
        );
    }
}

#[test]
fn issue_with_an_ed25519_ca() {
    let tmp = init(&["--key-type", "ed25519", "--clients", "a"]);
    let pki = Pki::new(tmp.path().join("pki"));
    tlb_ok(tmp.path(), &["pki", "issue", "b", "--key-type", "ed25519"]);
    tlb_ok(tmp.path(), &["pki", "issue", "c"]);
    let ca_der = cert_der(&pki.ca_cert());
    let ca = parse(&ca_der);
    let b_der = cert_der(&pki.client("b").0);
    let b = parse(&b_der);
    assert_key_type(&b, KeyType::Ed25519);
    assert_issued_by(&b, &ca);
    let c_der = cert_der(&pki.client("c").0);
    let c = parse(&c_der);
    assert_key_type(&c, KeyType::EcdsaP256);
    assert_issued_by(&c, &ca);
}

// ---------------------------------------------------------------------------
// revoke and show.

#[test]
fn revoke_adds_exactly_that_serial_to_the_crl() {
    let tmp = init(&[]);
    let pki = Pki::new(tmp.path().join("pki"));
    let ca_der = cert_der(&pki.ca_cert());
    let ca = parse(&ca_der);
    let (revoked, number_before) = read_crl(&pki.crl(), &ca);
    assert!(revoked.is_empty(), "init writes an empty CRL");

    let out = tlb_ok(tmp.path(), &["pki", "revoke", "client3"]);
    let c3_der = cert_der(&pki.client("client3").0);
    let c3_serial = parse(&c3_der).raw_serial().to_vec();
    assert!(out.contains(&hex::encode_upper(&c3_serial)), "prints the serial: {out}");
    let (revoked, number_after) = read_crl(&pki.crl(), &ca);
    assert_eq!(revoked, vec![c3_serial.clone()], "exactly client3's serial");
    let (n0, n1): (u64, u64) = (number_before.parse().unwrap(), number_after.parse().unwrap());
    assert!(n1 > n0, "CRL number {n0} -> {n1}");

    let rows = show(tmp.path(), "pki");
    let find = |name: &str| {
        rows.iter()
            .find(|r| r.0 == name)
            .unwrap_or_else(|| panic!("{name} not in {rows:?}"))
            .clone()
    };
    assert_eq!(find("ca").1, "ca");
    assert_eq!(find("server").1, "server");
    assert_eq!(find("client3"), ("client3".into(), "client".into(), "yes".into()));
    for other in ["ca", "server", "client1", "client2", "client4"] {
        assert_eq!(find(other).2, "no", "{other} is not revoked: {rows:?}");
    }
    assert_eq!(rows.len(), 6, "{rows:?}");

    if have_openssl("revoke_adds_exactly_that_serial_to_the_crl") {
        let (crl, ca_file) = (pki.crl(), pki.ca_cert());
        let flags = ["-crl_check", "-CRLfile", crl.to_str().unwrap()];
        let (ok, text) = openssl_verify(
            &[&pki.client("client3").0],
            &["-CAfile", ca_file.to_str().unwrap(), flags[0], flags[1], flags[2]],
        );
        assert!(!ok, "a revoked certificate must fail: {text}");
        assert!(text.contains("revoked"), "{text}");
        assert_openssl_verifies(&pki.ca_cert(), &pki.client("client1").0, &flags);
    }

    // A second revocation keeps the first and bumps the number again.
    tlb_ok(tmp.path(), &["pki", "revoke", "client1"]);
    let (revoked, number_third) = read_crl(&pki.crl(), &ca);
    assert_eq!(revoked.len(), 2);
    assert!(revoked.contains(&c3_serial));
    assert!(number_third.parse::<u64>().unwrap() > n1);
}

#[test]
fn revoking_twice_or_an_unknown_name_fails_clearly() {
    let tmp = init(&[]);
    tlb_ok(tmp.path(), &["pki", "revoke", "client3"]);
    let crl = fs::read(tmp.path().join("pki/crl.pem")).unwrap();
    let line = tlb_fails(tmp.path(), &["pki", "revoke", "client3"]);
    assert!(line.contains("already revoked"), "{line}");
    assert!(line.contains("client3"), "{line}");
    assert_eq!(
        fs::read(tmp.path().join("pki/crl.pem")).unwrap(),
        crl,
        "crl.pem unchanged"
    );

    let line = tlb_fails(tmp.path(), &["pki", "revoke", "nobody"]);
    assert!(line.contains("nobody"), "{line}");
    assert!(line.contains("pki show"), "says how to list the names: {line}");
}

#[test]
fn revoke_an_extra_server_certificate() {
    let tmp = init(&[]);
    let pki = Pki::new(tmp.path().join("pki"));
    tlb_ok(tmp.path(), &["pki", "issue", "web.internal", "--server"]);
    tlb_ok(tmp.path(), &["pki", "revoke", "web.internal"]);
    let ca_der = cert_der(&pki.ca_cert());
    let ca = parse(&ca_der);
    let (revoked, _) = read_crl(&pki.crl(), &ca);
    let der = cert_der(&pki.server("web.internal").0);
    assert_eq!(revoked, vec![parse(&der).raw_serial().to_vec()]);
    let rows = show(tmp.path(), "pki");
    let row = rows.iter().find(|r| r.0 == "web.internal").expect("listed");
    assert_eq!((row.1.as_str(), row.2.as_str()), ("server", "yes"));
}

// ---------------------------------------------------------------------------
// Hygiene: a replaced certificate is revoked, every serial is recorded and
// revocable, existing directories keep their mode, the CRL is re-signed.

/// The serial of the certificate in a PEM file, upper-case hex.
fn serial_hex(path: &Path) -> String {
    let der = cert_der(path);
    hex::encode_upper(parse(&der).raw_serial())
}

/// `issued.tsv` of the PKI in `dir`: its rows split at tabs, comments and
/// blank lines left out.
fn record_rows(dir: &Path) -> Vec<Vec<String>> {
    let text = fs::read_to_string(dir.join("issued.tsv")).expect("reading issued.tsv");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// `2027-05-01T12:00:00Z`.
fn rfc3339(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// (thisUpdate, nextUpdate) of a PEM CRL, as Unix times.
fn crl_times(path: &Path) -> (i64, i64) {
    let bytes = fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes).expect("crl.pem is PEM");
    let (_, crl) = x509_parser::parse_x509_crl(&pem.contents).expect("a DER CRL");
    let next = crl.next_update().expect("a nextUpdate");
    (crl.last_update().timestamp(), next.timestamp())
}

/// Asserts the CRL's nextUpdate is `days` from now (to the hour) and its
/// thisUpdate is fresh (within the last hour).
#[track_caller]
fn assert_crl_valid_for(path: &Path, days: i64) {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let (this, next) = crl_times(path);
    assert!(
        this <= now && this > now - 3600,
        "fresh thisUpdate: {this} vs now {now}"
    );
    let ahead = next - now;
    assert!(
        (days * 86400 - 3600..=days * 86400).contains(&ahead),
        "nextUpdate {ahead} s ahead, expected {days} days"
    );
}

/// Runs `tlb ARGS` expecting a usage error: exit status 2 and one line.
#[track_caller]
fn tlb_usage_error(cwd: &Path, args: &[&str]) -> String {
    let line = tlb_fails(cwd, args);
    let out = tlb(cwd, args);
    assert_eq!(out.status.code(), Some(2), "tlb {args:?}: {}", describe(&out));
    line
}

#[test]
fn issue_force_revokes_the_certificate_it_replaces() {
    let tmp = init(&[]);
    let pki = Pki::new(tmp.path().join("pki"));
    let ca_der = cert_der(&pki.ca_cert());
    let ca = parse(&ca_der);
    let old = tmp.path().join("old-client1.crt");
    fs::copy(pki.client("client1").0, &old).unwrap();
    let old_serial = serial_hex(&old);

    let out = tlb_ok(tmp.path(), &["pki", "issue", "client1", "--force"]);
    assert!(
        out.contains("revoked") && out.contains(&old_serial),
        "says which serial it revoked: {out}"
    );
    let new_serial = serial_hex(&pki.client("client1").0);
    assert_ne!(new_serial, old_serial, "a new certificate");
    let (revoked, number) = read_crl(&pki.crl(), &ca);
    assert_eq!(
        revoked,
        vec![hex::decode(&old_serial).unwrap()],
        "exactly the replaced serial"
    );
    assert_eq!(number, "2", "re-signed with the next CRL number");
    if have_openssl("issue_force_revokes_the_certificate_it_replaces") {
        let crl = pki.crl();
        let flags = ["-crl_check", "-CRLfile", crl.to_str().unwrap()];
        let ca_file = pki.ca_cert();
        let (ok, text) = openssl_verify(
            &[&old],
            &["-CAfile", ca_file.to_str().unwrap(), flags[0], flags[1], flags[2]],
        );
        assert!(
            !ok && text.contains("revoked"),
            "the replaced certificate is refused: {text}"
        );
        assert_openssl_verifies(&pki.ca_cert(), &pki.client("client1").0, &flags);
    }

    // A server certificate too.
    tlb_ok(tmp.path(), &["pki", "issue", "web.internal", "--server"]);
    let web_serial = serial_hex(&pki.server("web.internal").0);
    let out = tlb_ok(tmp.path(), &["pki", "issue", "web.internal", "--server", "--force"]);
    assert!(out.contains(&web_serial), "{out}");
    let (revoked, number) = read_crl(&pki.crl(), &ca);
    assert!(revoked.contains(&hex::decode(&web_serial).unwrap()), "{revoked:?}");
    assert_eq!((revoked.len(), number.as_str()), (2, "3"));

    // Revoked by hand first: replacing it does not list it twice.
    tlb_ok(tmp.path(), &["pki", "revoke", "client1"]);
    let crl_before = fs::read(pki.crl()).unwrap();
    let out = tlb_ok(tmp.path(), &["pki", "issue", "client1", "--force"]);
    assert!(out.contains("already revoked") && out.contains(&new_serial), "{out}");
    assert_eq!(fs::read(pki.crl()).unwrap(), crl_before, "crl.pem unchanged");
    let (revoked, _) = read_crl(&pki.crl(), &ca);
    assert_eq!(revoked.len(), 3);
}

#[test]
fn init_and_issue_record_every_serial() {
    let tmp = init(&[]);
    let dir = tmp.path().join("pki");
    let pki = Pki::new(&dir);
    let record = dir.join("issued.tsv");
    assert_eq!(mode(&record), 0o644);
    let mut expected = vec![
        ("ca".to_string(), "ca", pki.ca_cert()),
        ("server".to_string(), "server", pki.server_cert()),
    ];
    expected.extend(DEFAULT_CLIENTS.map(|c| (c.to_string(), "client", pki.client(c).0)));
    let expect_row = |name: &str, role: &str, path: &Path| {
        let der = cert_der(path);
        let cert = parse(&der);
        vec![
            hex::encode_upper(cert.raw_serial()),
            name.to_string(),
            role.to_string(),
            rfc3339(cert.validity().not_after.to_datetime()),
        ]
    };
    let rows = record_rows(&dir);
    let want: Vec<Vec<String>> = expected.iter().map(|(n, r, p)| expect_row(n, r, p)).collect();
    assert_eq!(rows, want, "one line per certificate init wrote");
    let text = fs::read_to_string(&record).unwrap();
    assert!(!text.contains("PRIVATE"), "no secrets in the record");

    // issue appends, and a replacement keeps the old line.
    let client5 = pki.client("client5").0;
    tlb_ok(tmp.path(), &["pki", "issue", "client5"]);
    let first = expect_row("client5", "client", &client5);
    tlb_ok(tmp.path(), &["pki", "issue", "client5", "--force"]);
    let second = expect_row("client5", "client", &client5);
    tlb_ok(tmp.path(), &["pki", "issue", "web.internal", "--server"]);
    let web = expect_row("web.internal", "server", &pki.server("web.internal").0);
    assert!(fs::read_to_string(&record).unwrap().starts_with(&text), "append-only");
    let rows = record_rows(&dir);
    assert_eq!(rows[..6], want[..]);
    assert_eq!(rows[6..], [first, second, web]);
}

#[test]
fn revoke_by_serial_reaches_a_certificate_no_longer_on_disk() {
    let tmp = init(&[]);
    let pki = Pki::new(tmp.path().join("pki"));
    let ca_der = cert_der(&pki.ca_cert());
    let ca = parse(&ca_der);
    let (crt, key) = pki.client("client2");
    let old_serial = serial_hex(&crt);
    // Replaced by hand: deleted and issued again. The old one still works.
    fs::remove_file(&crt).unwrap();
    fs::remove_file(&key).unwrap();
    tlb_ok(tmp.path(), &["pki", "issue", "client2"]);
    let out = tlb_ok(tmp.path(), &["pki", "show"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("note:") && l.contains(&old_serial) && l.contains("revoke --serial")),
        "show points at the unrevoked old certificate: {out}"
    );

    // As openssl prints serials: lower case, colon-separated.
    let typed = old_serial
        .to_lowercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let out = tlb_ok(tmp.path(), &["pki", "revoke", "--serial", &typed]);
    assert!(out.contains(&old_serial) && out.contains("client2"), "{out}");
    let (revoked, number) = read_crl(&pki.crl(), &ca);
    assert_eq!(revoked, vec![hex::decode(&old_serial).unwrap()]);
    assert_eq!(number, "2");
    let out = tlb_ok(tmp.path(), &["pki", "show"]);
    assert!(!out.contains("note:"), "nothing left to revoke: {out}");
    let rows = show(tmp.path(), "pki");
    assert!(
        rows.iter().any(|r| r.0 == "client2" && r.2 == "no"),
        "the new client2 is not revoked: {rows:?}"
    );

    let crl = fs::read(pki.crl()).unwrap();
    let line = tlb_fails(tmp.path(), &["pki", "revoke", "--serial", &old_serial]);
    assert!(line.contains("already revoked") && line.contains("client2"), "{line}");
    let line = tlb_fails(tmp.path(), &["pki", "revoke", "--serial", "0123456789abcdef"]);
    assert!(
        line.contains("0123456789ABCDEF") && line.contains("issued.tsv") && line.contains("pki show"),
        "{line}"
    );
    let line = tlb_fails(tmp.path(), &["pki", "revoke", "--serial", "not-hex"]);
    assert!(line.contains("not-hex") && line.contains("hexadecimal"), "{line}");
    let ca_serial = serial_hex(&pki.ca_cert());
    let line = tlb_fails(tmp.path(), &["pki", "revoke", "--serial", &ca_serial]);
    assert!(line.contains("CA") && line.contains("init --force"), "{line}");
    assert_eq!(fs::read(pki.crl()).unwrap(), crl, "failures leave crl.pem alone");

    let line = tlb_usage_error(tmp.path(), &["pki", "revoke", "client1", "--serial", &old_serial]);
    assert!(line.contains("--serial"), "{line}");
    let line = tlb_usage_error(tmp.path(), &["pki", "revoke"]);
    assert!(line.contains("--serial") || line.contains("NAME"), "{line}");
}

#[test]
fn init_leaves_the_mode_of_an_existing_directory_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let existing = tmp.path().join("existing");
    fs::create_dir(&existing).unwrap();
    fs::set_permissions(&existing, fs::Permissions::from_mode(0o750)).unwrap();
    tlb_ok(
        tmp.path(),
        &["pki", "init", "--dir", "existing", "--config", "existing.toml"],
    );
    assert_eq!(mode(&existing), 0o750, "an existing --dir keeps its mode");
    assert_eq!(mode(&existing.join("clients")), 0o700, "what init creates is 0700");
    assert_eq!(mode(&existing.join("ca.key")), 0o600);

    // `--dir .`: the working directory.
    let cwd = tmp.path().join("work");
    fs::create_dir(&cwd).unwrap();
    fs::set_permissions(&cwd, fs::Permissions::from_mode(0o755)).unwrap();
    tlb_ok(&cwd, &["pki", "init", "--dir", "."]);
    assert_eq!(mode(&cwd), 0o755, "--dir . keeps the working directory's mode");
    assert!(cwd.join("ca.crt").is_file());

    // Missing parents are created, each 0700.
    tlb_ok(
        tmp.path(),
        &["pki", "init", "--dir", "new/deeper/pki", "--config", "new.toml"],
    );
    for d in ["new", "new/deeper", "new/deeper/pki", "new/deeper/pki/clients"] {
        assert_eq!(mode(&tmp.path().join(d)), 0o700, "{d}");
    }
}

#[test]
fn init_refuses_a_directory_its_group_or_others_can_write() {
    let tmp = tempfile::tempdir().unwrap();
    for m in [0o777, 0o770, 0o1777] {
        let dir = tmp.path().join(format!("shared{m:o}"));
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(m)).unwrap();
        let d = dir.to_str().unwrap();
        let line = tlb_fails(tmp.path(), &["pki", "init", "--dir", d, "--config", "shared.toml"]);
        assert!(line.contains(d) && line.contains("chmod go-w"), "{line}");
        let full = fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(full, m, "mode unchanged");
        assert!(fs::read_dir(&dir).unwrap().next().is_none(), "nothing written into {d}");
        assert!(!tmp.path().join("shared.toml").exists());
    }
}

#[test]
fn crl_resigns_the_same_entries_with_the_next_number() {
    let tmp = init(&[]);
    let pki = Pki::new(tmp.path().join("pki"));
    let ca_der = cert_der(&pki.ca_cert());
    let ca = parse(&ca_der);
    tlb_ok(tmp.path(), &["pki", "revoke", "client3"]);
    let (revoked, number) = read_crl(&pki.crl(), &ca);
    assert_eq!((revoked.len(), number.as_str()), (1, "2"));

    let out = tlb_ok(tmp.path(), &["pki", "crl"]);
    assert!(out.contains("CRL number 3") && out.contains("next update"), "{out}");
    let (again, number) = read_crl(&pki.crl(), &ca);
    assert_eq!((again, number.as_str()), (revoked.clone(), "3"));
    assert_crl_valid_for(&pki.crl(), 30);

    tlb_ok(tmp.path(), &["pki", "crl", "--days", "7", "--dir", "pki"]);
    let (again, number) = read_crl(&pki.crl(), &ca);
    assert_eq!((again, number.as_str()), (revoked, "4"));
    assert_crl_valid_for(&pki.crl(), 7);
    if have_openssl("crl_resigns_the_same_entries_with_the_next_number") {
        let crl = pki.crl();
        let flags = ["-crl_check", "-CRLfile", crl.to_str().unwrap()];
        assert_openssl_verifies(&pki.ca_cert(), &pki.client("client1").0, &flags);
        let ca_file = pki.ca_cert();
        let (ok, text) = openssl_verify(
            &[&pki.client("client3").0],
            &["-CAfile", ca_file.to_str().unwrap(), flags[0], flags[1], flags[2]],
        );
        assert!(!ok && text.contains("revoked"), "{text}");
    }

    let crl = fs::read(pki.crl()).unwrap();
    for bad in ["0", "367", "99999999999"] {
        let line = tlb_usage_error(tmp.path(), &["pki", "crl", "--days", bad]);
        assert!(line.contains("--days") && line.contains("1..=366"), "{line}");
    }
    assert_eq!(fs::read(pki.crl()).unwrap(), crl);
    let empty = tempfile::tempdir().unwrap();
    let line = tlb_fails(empty.path(), &["pki", "crl"]);
    assert!(line.contains("tlb pki init"), "{line}");
}

#[test]
fn every_crl_tlb_signs_is_valid_for_thirty_days() {
    let tmp = init(&[]);
    let crl = tmp.path().join("pki/crl.pem");
    assert_crl_valid_for(&crl, 30);
    tlb_ok(tmp.path(), &["pki", "revoke", "client4"]);
    assert_crl_valid_for(&crl, 30);
    tlb_ok(tmp.path(), &["pki", "issue", "client1", "--force"]);
    assert_crl_valid_for(&crl, 30);
}

#[test]
fn crl_numbers_that_cannot_grow_are_clean_errors() {
    let tmp = init(&[]);
    let pki = Pki::new(tmp.path().join("pki"));
    let ca_pem = fs::read_to_string(pki.ca_cert()).unwrap();
    let key = rcgen::KeyPair::from_pem(&fs::read_to_string(pki.ca_key()).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, key).unwrap();
    let now = OffsetDateTime::now_utc();
    // The largest 64-bit number, then one beyond 64 bits.
    for number in [u64::MAX.to_be_bytes().to_vec(), vec![1; 9]] {
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + Duration::days(1),
            crl_number: rcgen::SerialNumber::from_slice(&number),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let pem = params.signed_by(&issuer).unwrap().pem().unwrap();
        fs::write(pki.crl(), &pem).unwrap();
        for args in [
            &["pki", "revoke", "client1"][..],
            &["pki", "issue", "client2", "--force"],
            &["pki", "crl"],
        ] {
            let line = tlb_fails(tmp.path(), args);
            assert!(
                line.contains("crl.pem") && line.contains("CRL number"),
                "{args:?}: {line}"
            );
            assert_eq!(
                fs::read_to_string(pki.crl()).unwrap(),
                pem,
                "{args:?}: crl.pem unchanged"
            );
        }
    }
}

#[test]
fn out_of_range_days_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["3000000", "36501", "4294967296", "0"] {
        let line = tlb_usage_error(tmp.path(), &["pki", "init", "--days", bad]);
        assert!(line.contains("--days") && line.contains("1..=36500"), "{line}");
        assert!(!tmp.path().join("pki").exists(), "nothing written for --days {bad}");
    }
    let pki = init(&["--days", "36500"]);
    for bad in ["3000000", "36501", "0"] {
        let line = tlb_usage_error(pki.path(), &["pki", "issue", "x", "--days", bad]);
        assert!(line.contains("--days") && line.contains("1..=36500"), "{line}");
        assert!(!pki.path().join("pki/clients/x.crt").exists());
    }
    tlb_ok(pki.path(), &["pki", "issue", "x", "--days", "36500"]);
}

// ---------------------------------------------------------------------------
// Errors: one line, no panic.

#[test]
fn missing_ca_is_a_clean_error() {
    let tmp = tempfile::tempdir().unwrap();
    let line = tlb_fails(tmp.path(), &["pki", "issue", "client5"]);
    assert!(line.contains("ca.crt"), "{line}");
    assert!(line.contains("tlb pki init"), "{line}");
    assert!(
        !tmp.path().join("pki").exists(),
        "issue must not create an empty PKI directory"
    );
    let line = tlb_fails(tmp.path(), &["pki", "show"]);
    assert!(line.contains("tlb pki init"), "{line}");
    let line = tlb_fails(tmp.path(), &["pki", "revoke", "client1"]);
    assert!(line.contains("client1"), "{line}");
}

#[test]
fn corrupt_ca_key_is_a_clean_error() {
    let tmp = init(&[]);
    let key = tmp.path().join("pki/ca.key");
    fs::write(&key, "this is not a key\n\x00\x01garbage").unwrap();
    let line = tlb_fails(tmp.path(), &["pki", "issue", "client5"]);
    assert!(line.contains("ca.key"), "{line}");
    assert!(!tmp.path().join("pki/clients/client5.crt").exists());
    let line = tlb_fails(tmp.path(), &["pki", "revoke", "client1"]);
    assert!(line.contains("ca.key"), "{line}");
    // Valid PEM, wrong contents.
    fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
    let line = tlb_fails(tmp.path(), &["pki", "issue", "client5"]);
    assert!(line.contains("ca.key"), "{line}");
}

#[test]
fn corrupt_ca_certificate_is_a_clean_error() {
    let tmp = init(&[]);
    fs::write(tmp.path().join("pki/ca.crt"), "garbage").unwrap();
    let line = tlb_fails(tmp.path(), &["pki", "issue", "client5"]);
    assert!(line.contains("ca.crt"), "{line}");
    let line = tlb_fails(tmp.path(), &["pki", "show"]);
    assert!(line.contains("ca.crt"), "{line}");
}

#[test]
fn ca_key_of_another_pki_is_a_clean_error() {
    let tmp = init(&[]);
    let other = init(&[]);
    fs::copy(other.path().join("pki/ca.key"), tmp.path().join("pki/ca.key")).unwrap();
    let line = tlb_fails(tmp.path(), &["pki", "issue", "client5"]);
    assert!(line.contains("does not match"), "{line}");
    assert!(!tmp.path().join("pki/clients/client5.crt").exists());
    let crl = fs::read(tmp.path().join("pki/crl.pem")).unwrap();
    let line = tlb_fails(tmp.path(), &["pki", "revoke", "client1"]);
    assert!(line.contains("does not match"), "{line}");
    assert_eq!(fs::read(tmp.path().join("pki/crl.pem")).unwrap(), crl);
}

#[test]
fn unwritable_directory_is_a_clean_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file.txt");
    fs::write(&file, "a regular file").unwrap();
    let dir = file.join("pki");
    let config = tmp.path().join("tlb.toml");
    let line = tlb_fails(
        tmp.path(),
        &[
            "pki",
            "init",
            "--dir",
            dir.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    assert!(line.contains(&dir.display().to_string()), "{line}");
    assert!(!config.exists(), "no config for a PKI that was not written");
    assert_eq!(fs::read_to_string(&file).unwrap(), "a regular file");
    let line = tlb_fails(tmp.path(), &["pki", "issue", "a", "--dir", dir.to_str().unwrap()]);
    assert!(line.contains("file.txt"), "{line}");
}

#[test]
fn config_in_a_missing_directory_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let line = tlb_fails(tmp.path(), &["pki", "init", "--config", "nodir/tlb.toml"]);
    assert!(line.contains("nodir"), "{line}");
    assert!(
        !tmp.path().join("pki").exists(),
        "no PKI left behind: a re-run must not need --force"
    );
}

#[test]
fn invalid_names_are_clean_errors() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["../evil", "a/b", ".hidden", "-x", "sp ace", &"n".repeat(65)] {
        let clients = format!("ok,{bad}");
        let line = tlb_fails(tmp.path(), &["pki", "init", "--clients", &clients]);
        assert!(line.contains("invalid name"), "{bad}: {line}");
        assert!(!tmp.path().join("pki").exists(), "{bad}: nothing written");
        assert!(!tmp.path().join("tlb.toml").exists(), "{bad}: nothing written");
    }
    // `--clients ,` leaves no client at all.
    let line = tlb_fails(tmp.path(), &["pki", "init", "--clients", ","]);
    assert!(line.contains("--clients"), "{line}");

    let pki = init(&[]);
    for bad in ["../evil", "../../etc/evil", "a/b"] {
        let line = tlb_fails(pki.path(), &["pki", "issue", bad]);
        assert!(line.contains("invalid name"), "{bad}: {line}");
        let line = tlb_fails(pki.path(), &["pki", "revoke", bad]);
        assert!(line.contains("invalid name"), "{bad}: {line}");
    }
    assert!(!pki.path().join("pki/evil.crt").exists());
    assert!(!pki.path().join("evil.crt").exists());
    let line = tlb_fails(pki.path(), &["pki", "issue", "bad name", "--server"]);
    assert!(line.contains("invalid name"), "{line}");
}

#[test]
fn bad_flags_are_clean_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let line = tlb_fails(tmp.path(), &["pki", "init", "--days", "0"]);
    assert!(line.contains("--days"), "{line}");
    assert!(!tmp.path().join("pki").exists());
    for bad in ["not a name!", "a..b", "-a.example", "a_b/c"] {
        let flag = format!("--server-name={bad}");
        let line = tlb_fails(tmp.path(), &["pki", "init", "--server-name", "ok.example", &flag]);
        assert!(line.contains(bad), "{line}");
        assert!(!tmp.path().join("pki").exists(), "nothing written for {bad:?}");
    }
    let pki = init(&[]);
    let line = tlb_fails(pki.path(), &["pki", "issue", "x", "--days", "0"]);
    assert!(line.contains("--days"), "{line}");
    let line = tlb_fails(pki.path(), &["pki", "issue", "a..b", "--server"]);
    assert!(line.contains("a..b"), "{line}");
    assert!(!pki.path().join("pki/servers/a..b.crt").exists());
}

// ---------------------------------------------------------------------------
// The generated tlb.toml.

#[test]
fn init_writes_a_config_that_loads() {
    let tmp = init(&[]);
    let path = tmp.path().join("tlb.toml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.tls.ca, tmp.path().join("pki/ca.crt"));
    assert_eq!(c.tls.cert, tmp.path().join("pki/server.crt"));
    assert_eq!(c.tls.key, tmp.path().join("pki/server.key"));
    assert_eq!(c.tls.crl, Some(tmp.path().join("pki/crl.pem")));
    let echo = c.app("echo").expect("app echo");
    assert_eq!(echo.listen.to_string(), "127.0.0.1:8443");
    let ups: Vec<String> = echo.upstreams.iter().map(|u| u.addr.to_string()).collect();
    assert_eq!(ups, ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]);
    for name in ["client1", "client2", "client3"] {
        let client = c.client(name).unwrap_or_else(|| panic!("{name} authorized"));
        assert_eq!(client.apps, vec!["echo"], "{name}");
    }
    assert!(c.client("client4").is_none(), "client4 is left out to show a refusal");
    assert_eq!(c.clients.len(), 3);
}

#[test]
fn init_keeps_an_existing_config() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tlb.toml");
    let mine = "# my own config, not valid on purpose\n";
    fs::write(&path, mine).unwrap();
    let out = tlb_ok(tmp.path(), &["pki", "init"]);
    assert!(out.contains("kept existing"), "{out}");
    assert_eq!(fs::read_to_string(&path).unwrap(), mine);
    assert!(tmp.path().join("pki/ca.crt").is_file());
}

#[test]
fn single_client_is_authorized() {
    let tmp = init(&["--clients", "solo"]);
    let c = Config::load(&tmp.path().join("tlb.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.client("solo").is_some());
}

// ---------------------------------------------------------------------------
// Library API.

fn lib_pki(tmp: &TempDir) -> Pki {
    let pki = Pki::new(tmp.path().join("pki"));
    pki.init(&InitOptions {
        clients: vec!["client1".into()],
        server_names: vec![],
        key_type: KeyType::EcdsaP256,
        days: 365,
        force: false,
    })
    .expect("init");
    pki
}

#[test]
fn library_issue_with_a_past_validity_makes_an_expired_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = lib_pki(&tmp);
    let now = OffsetDateTime::now_utc();
    let past = Validity {
        not_before: now - Duration::days(10),
        not_after: now - Duration::days(1),
    };
    let issued = pki
        .issue("expired", Role::Client, KeyType::EcdsaP256, past, false)
        .expect("issue");
    let (crt, key) = (issued.cert, issued.key);
    assert_eq!(crt, pki.client("expired").0);
    assert!(key.is_file());
    let der = cert_der(&crt);
    let c = parse(&der);
    assert!(!c.validity().is_valid(), "expired");
    assert!(c.validity().not_after.timestamp() < now.unix_timestamp());
    let ca_der = cert_der(&pki.ca_cert());
    assert_issued_by(&c, &parse(&ca_der));

    let info = pki.show().unwrap();
    let row = info.iter().find(|i| i.name == "expired").expect("listed");
    assert!(row.expired && !row.revoked);
    assert_eq!(row.role, Role::Client);
    assert_eq!(row.identity, "expired");
    assert!(!info.iter().find(|i| i.name == "client1").unwrap().expired);

    if have_openssl("library_issue_with_a_past_validity_makes_an_expired_certificate") {
        let (ok, text) = openssl_verify(&[&crt], &["-CAfile", pki.ca_cert().to_str().unwrap()]);
        assert!(!ok, "{text}");
        assert!(text.contains("certificate has expired"), "{text}");
        // And a not-yet-valid one, for completeness.
        let future = Validity {
            not_before: now + Duration::days(1),
            not_after: now + Duration::days(10),
        };
        let crt = pki
            .issue("future", Role::Client, KeyType::EcdsaP256, future, false)
            .expect("issue")
            .cert;
        let (ok, text) = openssl_verify(&[&crt], &["-CAfile", pki.ca_cert().to_str().unwrap()]);
        assert!(!ok, "{text}");
        assert!(text.contains("not yet valid"), "{text}");
    }
}

#[test]
fn library_issue_caps_validity_at_the_ca_expiry() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = lib_pki(&tmp);
    let crt = pki
        .issue(
            "long",
            Role::Client,
            KeyType::EcdsaP256,
            Validity::days(100 * 365),
            false,
        )
        .expect("issue")
        .cert;
    let ca_der = cert_der(&pki.ca_cert());
    let ca = parse(&ca_der);
    let der = cert_der(&crt);
    let c = parse(&der);
    assert!(c.validity().not_after.timestamp() <= ca.validity().not_after.timestamp());
}

#[test]
fn library_show_lists_every_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = lib_pki(&tmp);
    pki.issue("web", Role::Server, KeyType::Ed25519, Validity::days(1), false)
        .expect("issue server");
    let info = pki.show().unwrap();
    let names: Vec<(&str, Role)> = info.iter().map(|i| (i.name.as_str(), i.role)).collect();
    assert_eq!(
        names,
        [
            ("ca", Role::Ca),
            ("server", Role::Server),
            ("web", Role::Server),
            ("client1", Role::Client)
        ]
    );
    let web = &info[2];
    assert!(web.identity.split(',').any(|n| n == "web"), "{}", web.identity);
    assert_eq!(web.path, pki.server("web").0);
    for i in &info {
        assert_eq!(i.serial.len(), 32, "{}: 16 bytes in hex", i.name);
        assert_eq!(i.spki_sha256.len(), 64, "{}", i.name);
        assert!(!i.revoked && !i.expired);
    }
    assert!(info[0].identity.starts_with("tlb CA"));
    assert_eq!(info[3].identity, "client1");
    // The SPKI pin matches what the config would check.
    let der = fs::read(pki.client("client1").0).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&der).unwrap();
    let pin = tlb::core::tls::identity::spki_sha256(&pem.contents).unwrap();
    assert_eq!(hex::encode(pin), info[3].spki_sha256);
}

#[test]
fn paths_are_laid_out_as_the_spec_says() {
    let pki = Pki::new(PathBuf::from("/x/pki"));
    assert_eq!(pki.ca_cert(), Path::new("/x/pki/ca.crt"));
    assert_eq!(pki.ca_key(), Path::new("/x/pki/ca.key"));
    assert_eq!(pki.server_cert(), Path::new("/x/pki/server.crt"));
    assert_eq!(pki.server_key(), Path::new("/x/pki/server.key"));
    assert_eq!(pki.crl(), Path::new("/x/pki/crl.pem"));
    assert_eq!(
        pki.client("a"),
        (
            PathBuf::from("/x/pki/clients/a.crt"),
            PathBuf::from("/x/pki/clients/a.key")
        )
    );
    assert_eq!(
        pki.server("w"),
        (
            PathBuf::from("/x/pki/servers/w.crt"),
            PathBuf::from("/x/pki/servers/w.key")
        )
    );
}

/// The URI SANs of `cert`.
fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
fn issue_puts_uri_and_dns_sans_into_a_client_certificate_and_show_lists_them() {
    let tmp = init(&[]);
    let pki = Pki::new(tmp.path().join("pki"));
    let id = "spiffe://prod.example/ns/pay/sa/api";
    let out = tlb_ok(
        tmp.path(),
        &[
            "pki",
            "issue",
            "api",
            "--uri",
            id,
            "--dns",
            "api.pay.internal",
            "--dns",
            "api2.pay.internal",
        ],
    );
    assert!(out.contains("api"), "{out}");
    let der = cert_der(&pki.client("api").0);
    let cert = parse(&der);
    assert_eq!(cn(&cert), "api", "the CN stays the name");
    assert_eq!(uri_sans(&cert), [id]);
    let (dns, ips) = sans(&cert);
    assert_eq!(dns, ["api.pay.internal", "api2.pay.internal"]);
    assert!(ips.is_empty(), "a client gets no loopback IPs: {ips:?}");
    // Still a client certificate: clientAuth only.
    let eku = cert.extended_key_usage().expect("EKU").expect("an EKU extension").value;
    assert!(eku.client_auth && !eku.server_auth, "{eku:?}");

    let show = tlb_ok(tmp.path(), &["pki", "show"]);
    let row = show
        .lines()
        .find(|l| l.starts_with("api "))
        .unwrap_or_else(|| panic!("no row for api: {show}"));
    assert!(
        row.contains(&format!("api (uri:{id}, dns:api.pay.internal, dns:api2.pay.internal)")),
        "{row}"
    );
    let info = pki.show().expect("show");
    let api = info.iter().find(|c| c.name == "api").expect("api listed");
    assert_eq!(api.identity, "api");
    assert_eq!(
        api.sans,
        [
            format!("uri:{id}"),
            "dns:api.pay.internal".into(),
            "dns:api2.pay.internal".into()
        ]
    );
    // A client without SANs shows its CN alone.
    let plain = show.lines().find(|l| l.starts_with("client1 ")).expect("client1 row");
    assert!(!plain.contains("uri:") && !plain.contains("dns:"), "{plain}");

    // --dns on a server certificate adds to its names.
    tlb_ok(
        tmp.path(),
        &["pki", "issue", "web", "--server", "--dns", "web.pay.internal"],
    );
    let (dns, _) = sans(&parse(&cert_der(&pki.server("web").0)));
    assert!(
        dns.contains(&"web".to_string()) && dns.contains(&"web.pay.internal".to_string()),
        "{dns:?}"
    );
}

#[test]
fn bad_sans_are_one_line_errors_and_nothing_is_written() {
    let tmp = init(&[]);
    let pki = Pki::new(tmp.path().join("pki"));
    let issued_before = fs::read_to_string(pki.issued()).expect("issued.tsv");
    for (args, words) in [
        (&["--uri", "spiffe://Prod.example/a"][..], "trust domain"),
        (&["--uri", "spiffe://prod.example/a/"][..], "segment"),
        (&["--uri", "no-scheme"][..], "no scheme"),
        (&["--uri", "spiffe://prod/a b"][..], "space"),
        (&["--dns", "*.pay.internal"][..], "wildcard"),
        (&["--dns", "bad_name!"][..], "not a valid DNS name"),
    ] {
        let mut a = vec!["pki", "issue", "bad"];
        a.extend_from_slice(args);
        let line = tlb_fails(tmp.path(), &a);
        assert!(line.contains(words) && line.contains(args[0]), "{args:?}: {line}");
        assert!(!pki.client("bad").0.exists(), "{args:?}: a certificate was written");
        assert!(!pki.client("bad").1.exists(), "{args:?}: a key was written");
    }
    assert_eq!(
        fs::read_to_string(pki.issued()).expect("issued.tsv"),
        issued_before,
        "no serial recorded"
    );
}
