//! Certificate rotation from disk (`[tls] watch`) and certificate expiry:
//! a new cert+key reached through a swapped symlink is served under load
//! with no failed connection; a key that does not match its new certificate,
//! or a half-written certificate, is refused (logged and counted once) and
//! the old pair keeps serving until the files are right; the expiry of each
//! loaded certificate is in `/metrics`; bad `watch` values and a mismatched
//! key at start or on SIGHUP are one-line errors; and the gate on this path:
//! a CRL replaced on disk closes the revoked open connection, no signal.
//!
//! Waiting for a rotation is polling new handshakes (no resumption) until
//! the presented leaf changes, with a deadline.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tlb::core::config::Config;
use tlb::core::config::writer::TlsSection;
use tlb::core::pki::{KeyType, Role, Validity};
use tlb::core::proxy::server::Server;
use tlb::core::tools::client::{ClientOptions, connect, exchange};
use tlb::core::tools::lab::{Lab, LabPaths};
use x509_parser::prelude::FromDer;

use crate::common::*;

/// The watch interval of these tests (the shortest allowed).
const WATCH: Duration = Duration::from_secs(1);

/// Longest wait for a rotation: two polls to see a stable set, plus slack.
const ROTATION: Duration = Duration::from_secs(20);

/// The directory of the versioned certificates: `certs/v1`, `certs/live -> v1`.
fn certs(p: &LabPaths) -> PathBuf {
    p.pki_dir.parent().expect("lab dir").join("certs")
}

/// `certs/NAME/server.{crt,key}` holding `cert` and `key`.
fn version(p: &LabPaths, name: &str, cert: &Path, key: &Path) -> PathBuf {
    let dir = certs(p).join(name);
    std::fs::create_dir_all(&dir).expect("version dir");
    std::fs::copy(cert, dir.join("server.crt")).expect("cert");
    std::fs::copy(key, dir.join("server.key")).expect("key");
    dir
}

/// Points `certs/live` at `certs/NAME` atomically: a new symlink, renamed
/// over the old one.
fn swap_live(p: &LabPaths, name: &str) {
    let dir = certs(p);
    let tmp = dir.join("live.tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(name, &tmp).expect("new symlink");
    std::fs::rename(&tmp, dir.join("live")).expect("swapping the symlink");
}

/// A lab whose `[tls]` cert and key are `certs/live/server.{crt,key}`
/// (`live -> v1`, the lab's own pair), watched every second, with an admin
/// endpoint and client1 unlimited.
fn rotation_lab() -> Lab {
    let mut o = opts(1, true);
    o.admin = true;
    lab(o, |p| {
        let pki = p.pki_dir.clone();
        version(p, "v1", &pki.join("server.crt"), &pki.join("server.key"));
        symlink("v1", certs(p).join("live")).expect("live symlink");
        let live = certs(p).join("live");
        base(p, "")
            .tls(TlsSection {
                cert: live.join("server.crt").display().to_string(),
                key: live.join("server.key").display().to_string(),
                watch: Some(WATCH),
                ..lab_tls(p, |_| {})
            })
            .app(app_section("echo", p.listen, &[], &ups(p)))
            .client(client_section(
                "client1",
                &["echo"],
                "max_connections = 1000\nconnection_rate = 1000000\nburst = 1000000",
            ))
            .render()
    })
}

/// client1's options without resumption: every connection is a full
/// handshake, which shows the server's current certificate.
fn fresh(lab: &Lab) -> ClientOptions {
    lab.client_with(Some("client1"), "localhost", false)
        .expect("client options")
}

/// The DER of the leaf certificate a new handshake presents.
fn presented(opts: &ClientOptions) -> Vec<u8> {
    smol::block_on(async {
        let (_, tls) = connect(opts).await.expect("a handshake");
        let (_, session) = tls.get_ref();
        let chain = session.peer_certificates().expect("the server's certificate");
        chain[0].as_ref().to_vec()
    })
}

/// The DER of the first certificate in PEM file `path`.
fn der(path: &Path) -> Vec<u8> {
    tlb::core::tls::load_certs(path).expect("a certificate")[0]
        .as_ref()
        .to_vec()
}

/// Polls new handshakes until they present `want` (within [`ROTATION`]).
fn wait_presented(opts: &ClientOptions, want: &[u8], what: &str) {
    let deadline = Instant::now() + ROTATION;
    while presented(opts) != want {
        assert!(Instant::now() < deadline, "{what}: not presented within {ROTATION:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts that new handshakes present `want` for `polls` watch intervals.
fn keeps_presenting(opts: &ClientOptions, want: &[u8], polls: u32, what: &str) {
    let until = Instant::now() + WATCH * polls;
    while Instant::now() < until {
        assert!(presented(opts) == want, "{what}: another certificate was presented");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `(loaded, refused)` of the watcher, from `/metrics`.
fn rotations(lab: &Lab) -> (f64, f64) {
    let text = scrape(lab);
    let get = |r: &str| {
        metric(&text, "tlb_certificate_rotations_total", &format!("result=\"{r}\"")).expect("the rotations metric")
    };
    (get("loaded"), get("refused"))
}

/// A new server certificate (SANs: localhost and the loopback addresses)
/// valid for `days`, issued by the lab CA: (cert, key).
fn issue(lab: &Lab, name: &str, days: u32) -> (PathBuf, PathBuf) {
    let i = lab
        .pki
        .issue(name, Role::Server, KeyType::EcdsaP256, Validity::days(days), false)
        .expect("issuing a server certificate");
    (i.cert, i.key)
}

/// notAfter of the first certificate in `path`, Unix seconds.
fn not_after(path: &Path) -> f64 {
    let d = der(path);
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(&d).expect("parse");
    c.validity().not_after.timestamp() as f64
}

/// Clients in loops (a new connection per exchange) until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(opts: &ClientOptions, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|i| {
                let (stop, ok, failed, opts) = (stop.clone(), ok.clone(), failed.clone(), opts.clone());
                std::thread::spawn(move || {
                    let mut errors = Vec::new();
                    let msg = format!("ping {i}\n");
                    while !stop.load(Ordering::Relaxed) {
                        match smol::block_on(exchange(&opts, msg.as_bytes(), T)) {
                            Ok(reply) if String::from_utf8_lossy(&reply).ends_with(&msg) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(reply) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(format!("reply {:?}", String::from_utf8_lossy(&reply)));
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(e.to_string());
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Waits until `n` more exchanges succeeded (or fails after `T`).
    fn advance(&self, n: u64, what: &str) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        wait_until(what, T, || self.ok.load(Ordering::Relaxed) >= target);
    }

    /// Stops the loops: (exchanges that succeeded, every failure).
    fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().expect("a client loop"))
            .collect();
        assert_eq!(self.failed.load(Ordering::Relaxed), 0, "failed exchanges: {errors:?}");
        (self.ok.load(Ordering::Relaxed), errors)
    }
}

#[test]
fn a_new_pair_behind_a_swapped_symlink_is_served_under_load_with_no_failed_connection() {
    let lab = rotation_lab();
    let p = lab.paths.clone();
    let opts = fresh(&lab);
    let old = der(&lab.pki.server_cert());
    assert_eq!(presented(&opts), old, "the lab's certificate at first");
    let load = Load::start(&opts, 4);
    load.advance(20, "exchanges before the rotation");
    let (cert, key) = issue(&lab, "v2", 20);
    version(&p, "v2", &cert, &key);
    swap_live(&p, "v2");
    let new = der(&cert);
    assert_ne!(new, old);
    wait_presented(&opts, &new, "the new certificate");
    load.advance(20, "exchanges after the rotation");
    let (ok, errors) = load.stop();
    assert!(ok >= 40 && errors.is_empty(), "{ok} exchanges, errors {errors:?}");
    assert_eq!(rotations(&lab), (1.0, 0.0), "one rotation, nothing refused");
    let text = scrape(&lab);
    let live = certs(&p).join("live/server.crt").display().to_string();
    let expiry = metric(
        &text,
        "tlb_certificate_expiry_timestamp_seconds",
        &format!("file=\"{live}\""),
    );
    assert_eq!(expiry, Some(not_after(&cert)), "the metric follows the rotation");
    assert_ne!(not_after(&cert), not_after(&lab.pki.server_cert()));
}

#[test]
fn a_key_that_does_not_match_the_new_certificate_is_refused_and_the_old_pair_keeps_serving() {
    let lab = rotation_lab();
    let p = lab.paths.clone();
    let opts = fresh(&lab);
    let old = der(&lab.pki.server_cert());
    let (cert, key) = issue(&lab, "v2", 20);
    // The new certificate with the old key.
    version(&p, "mismatched", &cert, &lab.pki.server_key());
    swap_live(&p, "mismatched");
    wait_until("the mismatched pair is refused", ROTATION, || rotations(&lab).1 >= 1.0);
    keeps_presenting(&opts, &old, 3, "a mismatched pair");
    assert_eq!(rotations(&lab), (0.0, 1.0), "refused (and logged) once, not every poll");
    // Fixed: the right key next to it is loaded.
    version(&p, "v2", &cert, &key);
    swap_live(&p, "v2");
    wait_presented(&opts, &der(&cert), "the fixed pair");
    assert_eq!(rotations(&lab), (1.0, 1.0));
}

#[test]
fn a_half_written_certificate_is_not_loaded_until_it_is_complete() {
    use std::io::Write;
    let lab = rotation_lab();
    let p = lab.paths.clone();
    let opts = fresh(&lab);
    let old = der(&lab.pki.server_cert());
    let (cert, key) = issue(&lab, "v2", 20);
    let pem = std::fs::read(&cert).expect("new cert");
    let live = certs(&p).join("live");
    // In place: the certificate cut in the middle of its PEM, then the new key.
    let mut f = std::fs::File::create(live.join("server.crt")).expect("truncating the cert");
    f.write_all(&pem[..pem.len() / 2]).expect("half the cert");
    f.flush().expect("flush");
    std::fs::copy(&key, live.join("server.key")).expect("new key");
    wait_until("the half-written set is refused", ROTATION, || rotations(&lab).1 >= 1.0);
    keeps_presenting(&opts, &old, 3, "a half-written certificate");
    assert_eq!(rotations(&lab).0, 0.0, "nothing loaded");
    f.write_all(&pem[pem.len() / 2..]).expect("the rest of the cert");
    f.flush().expect("flush");
    drop(f);
    wait_presented(&opts, &der(&cert), "the completed certificate");
    assert_eq!(rotations(&lab).0, 1.0);
}

#[test]
fn the_expiry_of_each_loaded_certificate_is_in_metrics() {
    let mut o = opts(1, true);
    o.admin = true;
    let lab = lab(o, |p| standard_config(p, "", ""));
    let text = scrape(&lab);
    for file in [lab.pki.server_cert(), lab.pki.ca_cert()] {
        let labels = format!("file=\"{}\"", file.display());
        let v = metric(&text, "tlb_certificate_expiry_timestamp_seconds", &labels);
        assert_eq!(v, Some(not_after(&file)), "{labels} in:\n{text}");
    }
    assert_ne!(not_after(&lab.pki.server_cert()), not_after(&lab.pki.ca_cert()));
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("tlb_certificate_expiry_timestamp_seconds{"))
            .count(),
        2,
        "the server certificate and the CA: {text}"
    );
}

#[test]
fn bad_watch_values_are_one_line_errors_naming_the_key_and_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tlb.toml");
    let with = |v: &str| {
        format!(
            "[tls]\nca = \"ca.crt\"\ncert = \"s.crt\"\nkey = \"s.key\"\nwatch = {v}\n\n[[app]]\nname = \"a\"\nlisten = \"127.0.0.1:8443\"\nupstreams = [\"127.0.0.1:9001\"]\n"
        )
    };
    for (v, says) in [
        ("\"500ms\"", "write at least \"1s\""),
        ("\"0s\"", "leave `watch` out to turn watching off"),
        ("\"ten seconds\"", "invalid duration"),
        ("10", "invalid type"),
    ] {
        let e = Config::parse(&with(v), &path).expect_err(v).to_string();
        assert!(!e.contains('\n'), "{v}: not one line: {e}");
        assert!(e.contains(":5: key `tls.watch`"), "{v}: names the line and key: {e}");
        assert!(e.contains(says), "{v}: {e}");
    }
    let c = Config::parse(&with("\"1s\""), &path).expect("1s");
    assert_eq!(c.tls.watch, Some(WATCH));
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused_at_start_and_on_reload() {
    let lab = standard_lab(1);
    let p = lab.paths.clone();
    let (client_key, server_cert) = (lab.pki.client("client1").1, lab.pki.server_cert());
    let text = base(&p, "")
        .tls(lab_tls(&p, |t| t.key = client_key.display().to_string()))
        .app(app_section("echo", p.listen, &[], &ups(&p)))
        .render();
    let path = lab.dir().join("mismatched.toml");
    std::fs::write(&path, &text).expect("config");
    let e = Server::new(Config::load(&path).expect("config"))
        .err()
        .expect("refused at start");
    let e = format!("{e:#}");
    let want = format!(
        "[tls] key {} is not the private key of cert {}; use the .key written with that .crt",
        client_key.display(),
        server_cert.display()
    );
    assert_eq!(e, want, "one line, both files, the fix");
    let e = lab.reload(&text).expect_err("refused on reload");
    assert_eq!(format!("{e:#}"), want);
    let opts = lab.client_with(Some("client1"), "localhost", false).expect("options");
    assert_eq!(presented(&opts), der(&server_cert), "the old pair keeps serving");
}

#[test]
fn an_expired_certificate_or_a_chain_out_of_order_is_refused_though_it_would_load() {
    let lab = rotation_lab();
    let p = lab.paths.clone();
    let opts = fresh(&lab);
    let old = der(&lab.pki.server_cert());
    let day = time::Duration::days(1);
    let now = time::OffsetDateTime::now_utc();
    let expired = Validity {
        not_before: now - 10 * day,
        not_after: now - day,
    };
    let i = lab
        .pki
        .issue("expired", Role::Server, KeyType::EcdsaP256, expired, false)
        .expect("an expired certificate");
    version(&p, "expired", &i.cert, &i.key);
    swap_live(&p, "expired");
    wait_until("the expired certificate is refused", ROTATION, || {
        rotations(&lab).1 >= 1.0
    });
    keeps_presenting(&opts, &old, 2, "an expired certificate");
    // A valid leaf followed by a CA that did not sign it.
    let (cert, key) = issue(&lab, "v2", 20);
    let (_, foreign) = foreign_client(&lab);
    let mut chain = std::fs::read(&cert).expect("cert");
    chain.extend(std::fs::read(foreign.path().join("pki/ca.crt")).expect("foreign CA"));
    let dir = version(&p, "unchained", &cert, &key);
    std::fs::write(dir.join("server.crt"), &chain).expect("chain");
    swap_live(&p, "unchained");
    wait_until("the broken chain is refused", ROTATION, || rotations(&lab).1 >= 2.0);
    keeps_presenting(&opts, &old, 2, "a chain out of order");
    assert_eq!(rotations(&lab), (0.0, 2.0));
}

#[test]
fn a_rotation_never_undoes_a_reload_that_happened_meanwhile() {
    let lab = standard_lab(1);
    let before = lab.server.current();
    let text = std::fs::read_to_string(&lab.config_path).expect("config");
    lab.reload(&text).expect("a SIGHUP-like reload");
    let reloaded = lab.server.current();
    assert!(!Arc::ptr_eq(&before, &reloaded));
    let files = tlb::core::tls::Material::disk();
    let e = lab
        .server
        .reload_from(before.config.clone(), &files, Some(&before))
        .expect_err("based on a replaced generation");
    assert!(e.to_string().contains("reloaded meanwhile"), "{e}");
    assert!(Arc::ptr_eq(&lab.server.current(), &reloaded), "the later reload stays");
}

/// The gate on the watch path: a CRL replaced on disk, with no SIGHUP,
/// closes the open connection of the certificate it revokes and refuses
/// that certificate's new handshakes; another client's connection stays.
#[test]
fn a_crl_replaced_on_disk_closes_the_revoked_connection_and_refuses_it_without_a_signal() {
    use futures_lite::AsyncWriteExt;
    use tlb::core::tls::gate::CloseReason;
    let lab = lab(opts(1, true), |p| {
        base(p, "")
            .tls(TlsSection {
                watch: Some(WATCH),
                ..lab_tls(p, |_| {})
            })
            .app(app_section("echo", p.listen, &[], &ups(p)))
            .client(client_section("client1", &["echo"], ""))
            .client(client_section("client2", &["echo"], ""))
            .render()
    });
    assert!(
        lab.server.current().config.tls.crl.is_some(),
        "the lab's config names a CRL"
    );
    let opened = |name: &str| {
        let opts = lab.client_with(Some(name), "localhost", false).expect("options");
        smol::block_on(async {
            let (_, mut s) = within("connect", T, connect(&opts)).await.expect("connect");
            within("greeting", T, read_line(&mut s)).await.expect("greeting");
            s
        })
    };
    let mut revoked = opened("client2");
    let mut kept = opened("client1");

    lab.pki.revoke("client2").expect("revoke (rewrites the CRL file)");
    // No reload: the watcher finds the new CRL within two polls.
    smol::block_on(async {
        let mut buf = [0u8; 64];
        loop {
            match tlb::core::rt::timeout(ROTATION, futures_lite::AsyncReadExt::read(&mut revoked, &mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => continue,
                Err(_) => panic!("the revoked connection is still open {ROTATION:?} after the CRL changed"),
            }
        }
    });
    assert_eq!(lab.server.metrics.closed_for(CloseReason::Revoked), 1);
    let c2 = lab.client_with(Some("client2"), "localhost", false).expect("options");
    let again = smol::block_on(exchange(&c2, b"again\n", T));
    assert!(
        again.is_err(),
        "a revoked certificate got through after the rotation: {again:?}"
    );
    let echoed = smol::block_on(within("echo", T, async {
        kept.write_all(b"kept\n").await?;
        kept.flush().await?;
        read_line(&mut kept).await
    }))
    .expect("client1's connection");
    assert_eq!(echoed, "kept\n");
}
