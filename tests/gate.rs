//! The gate holds on every path that admits a connection: a resumed
//! session, a reload, an open connection, a CRL. Each refusal test would
//! pass a connection through if the gate opened.
//!
//! Real sockets on 127.0.0.1:0, real mTLS with certificates generated in
//! temporary directories; time moves by the lab's injected clock
//! ([`ManualClock`]), not by waiting.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use time::{Duration as TimeDuration, OffsetDateTime};
use tlb::core::config::TlsVersion;
use tlb::core::config::writer::TlsSection;
use tlb::core::pki::{KeyType, Role, Validity};
use tlb::core::rt::clock::ManualClock;
use tlb::core::rt::timeout;
use tlb::core::tls::gate::CloseReason;
use tlb::core::tools::client::{ClientError, ClientOptions, ClientStream, connect, refused_or_io};
use tlb::core::tools::lab::{Lab, LabOptions};

use crate::common::*;

// ---------------------------------------------------------------------------
// Helpers

/// One greeted echo on a new connection: (was the session resumed, echo).
async fn session(opts: &ClientOptions, msg: &str) -> Result<(bool, String), ClientError> {
    let (addr, mut s) = connect(opts).await?;
    let io = |e| refused_or_io(addr, e);
    within("an echo", T, async {
        s.write_all(msg.as_bytes()).await.map_err(io)?;
        s.flush().await.map_err(io)?;
        let greeting = read_line(&mut s).await.map_err(io)?;
        if greeting.is_empty() {
            return Err(ClientError::ClosedBeforeReply { addr });
        }
        greeter(&greeting);
        let echo = read_line(&mut s).await.map_err(io)?;
        let resumed = s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let _ = s.close().await;
        Ok((resumed, echo))
    })
    .await
}

fn run<T>(fut: impl std::future::Future<Output = T>) -> T {
    smol::block_on(fut)
}

fn assert_refused<T: std::fmt::Debug>(result: Result<T, ClientError>, alert: &str) {
    match result {
        Err(ClientError::TlsRefused { detail, .. }) => {
            assert!(detail.contains(alert), "expected alert {alert}, got {detail:?}")
        }
        other => panic!("expected a TLS refusal with {alert}, got {other:?}"),
    }
}

fn proxied(lab: &Lab) -> u64 {
    lab.server.metrics.proxied.load(Ordering::Relaxed)
}

fn tickets_refused(lab: &Lab) -> u64 {
    lab.server.metrics.tickets_refused.load(Ordering::Relaxed)
}

/// A lab with a manual clock and the standard config, `[tls]` changed by
/// `tls`, `extra` appended.
fn clocked_lab(tls: impl FnOnce(&mut TlsSection), extra: &str) -> (Lab, Arc<ManualClock>) {
    let clock = ManualClock::new();
    let opts = LabOptions {
        clock: clock.clone(),
        ..opts(1, true)
    };
    let lab = lab(opts, move |p| {
        let mut s = standard_writer(p, "").tls(lab_tls(p, tls)).render();
        s.push_str(extra);
        s
    });
    (lab, clock)
}

const DAY: Duration = Duration::from_secs(86_400);

/// Issues client certificate `name` valid from 5 minutes ago for `valid`.
fn issue_for(lab: &Lab, name: &str, valid: TimeDuration) {
    let now = OffsetDateTime::now_utc();
    lab.pki
        .issue(
            name,
            Role::Client,
            KeyType::EcdsaP256,
            Validity {
                not_before: now - TimeDuration::minutes(5),
                not_after: now + valid,
            },
            false,
        )
        .expect("issuing a certificate");
}

fn reload_with(lab: &Lab, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(&lab.config_path).expect("config text");
    lab.reload(&edit(text)).expect("reload");
}

// ---------------------------------------------------------------------------
// 1. Resumption: admitted only if a full handshake would be admitted now

#[test]
fn a_session_resumes_and_is_counted() {
    let (lab, _) = clocked_lab(|_| {}, "");
    let opts = lab.client(Some("client1")).expect("options");
    let (resumed, echo) = run(session(&opts, "one\n")).expect("first connection");
    assert!(!resumed, "the first connection is a full handshake");
    assert_eq!(echo, "one\n");
    let (resumed, _) = run(session(&opts, "two\n")).expect("second connection");
    assert!(resumed, "the second connection resumes the session");
    assert_eq!(lab.server.metrics.resumed.load(Ordering::Relaxed), 1);
    assert_eq!(tickets_refused(&lab), 0);
}

#[test]
fn an_expired_certificate_cannot_resume() {
    // Tickets live a day; the certificate an hour.
    let (lab, clock) = clocked_lab(|t| t.session_lifetime = Some(DAY), &client("short1", &["echo"], ""));
    issue_for(&lab, "short1", TimeDuration::hours(1));
    let opts = lab.client(Some("short1")).expect("options");
    run(session(&opts, "valid\n")).expect("while valid");
    let before = proxied(&lab);

    clock.advance(Duration::from_secs(2 * 3600));
    assert_refused(run(session(&opts, "expired\n")), "certificate_expired");
    assert_eq!(proxied(&lab), before, "an expired certificate reached an upstream");
    assert!(tickets_refused(&lab) >= 1, "the ticket was not the thing refused");
    // A full handshake is refused the same way.
    let fresh = lab.client(Some("short1")).expect("options");
    assert_refused(run(session(&fresh, "expired\n")), "certificate_expired");
}

#[test]
fn a_revoked_certificate_cannot_resume_after_reload() {
    let (lab, _) = clocked_lab(|_| {}, "");
    let opts = lab.client(Some("client2")).expect("options");
    run(session(&opts, "before\n")).expect("before revocation");
    let (resumed, _) = run(session(&opts, "again\n")).expect("resumed before revocation");
    assert!(resumed, "tickets work before the revocation");
    let before = proxied(&lab);

    lab.pki.revoke("client2").expect("revoke");
    reload_with(&lab, |t| t);
    assert_refused(run(session(&opts, "after\n")), "certificate_revoked");
    assert_eq!(proxied(&lab), before, "a revoked certificate reached an upstream");
    assert!(tickets_refused(&lab) >= 1);
    // Tickets survive a reload for identities still admitted.
    let other = lab.client(Some("client1")).expect("options");
    run(session(&other, "a\n")).expect("client1");
    reload_with(&lab, |t| t);
    let (resumed, _) = run(session(&other, "b\n")).expect("client1 after a reload");
    assert!(resumed, "an admitted identity resumes across a reload");
}

#[test]
fn an_identity_removed_from_the_app_cannot_resume_after_reload() {
    let (lab, _) = clocked_lab(|_| {}, "");
    let opts = lab.client(Some("client3")).expect("options");
    run(session(&opts, "before\n")).expect("before");
    let before = proxied(&lab);
    reload_with(&lab, |t| {
        let entry = client("client3", &["echo"], "");
        assert!(t.contains(&entry), "standard config lists client3");
        t.replace(&entry, "")
    });
    assert_refused(run(session(&opts, "after\n")), "access_denied");
    assert_eq!(proxied(&lab), before, "a removed identity reached an upstream");
    assert!(tickets_refused(&lab) >= 1);
}

#[test]
fn an_expired_certificate_cannot_resume_a_tls12_session() {
    let (lab, clock) = clocked_lab(
        |t| {
            t.min_version = Some(TlsVersion::V1_2);
            t.session_lifetime = Some(DAY);
        },
        &client("short1", &["echo"], ""),
    );
    issue_for(&lab, "short1", TimeDuration::hours(1));
    let opts = tls12_only(&lab, "short1");
    run(session(&opts, "one\n")).expect("TLS 1.2, full");
    let (resumed, _) = run(session(&opts, "two\n")).expect("TLS 1.2, resumed");
    assert!(resumed, "TLS 1.2 resumption works while the certificate is valid");
    let before = proxied(&lab);
    clock.advance(Duration::from_secs(2 * 3600));
    assert_refused(run(session(&opts, "three\n")), "certificate_expired");
    assert_eq!(proxied(&lab), before);
}

#[test]
fn a_ticket_older_than_session_lifetime_is_not_resumed() {
    let (lab, clock) = clocked_lab(|t| t.session_lifetime = Some(Duration::from_secs(600)), "");
    let opts = lab.client(Some("client1")).expect("options");
    run(session(&opts, "one\n")).expect("first");
    clock.advance(Duration::from_secs(11 * 60));
    let (resumed, echo) = run(session(&opts, "two\n")).expect("a full handshake is still admitted");
    assert!(!resumed, "a ticket past session_lifetime resumed");
    assert_eq!(echo, "two\n");
    assert_eq!(tickets_refused(&lab), 1);
}

#[test]
fn session_lifetime_zero_turns_resumption_off() {
    let (lab, _) = clocked_lab(|t| t.session_lifetime = Some(Duration::ZERO), "");
    let opts = lab.client(Some("client1")).expect("options");
    for i in 0..3 {
        let (resumed, _) = run(session(&opts, "x\n")).expect("connection");
        assert!(!resumed, "connection {i} resumed with session_lifetime = 0s");
    }
}

/// A client session store that offers its last ticket to any server name,
/// as a client replaying a ticket against another SNI would.
#[derive(Debug, Default)]
struct AnyName(Mutex<Option<Tls13ClientSessionValue>>);

impl ClientSessionStore for AnyName {
    fn set_kx_hint(&self, _: ServerName<'static>, _: rustls::NamedGroup) {}
    fn kx_hint(&self, _: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        None
    }
    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {}
    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        *self.0.lock().expect("store") = Some(value);
    }
    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.0.lock().expect("store").take()
    }
}

#[test]
fn a_session_of_one_app_does_not_resume_on_another() {
    // Apps `a` (SNI localhost) and `b` (the listener's default: a client
    // connecting to "127.0.0.1" sends no SNI, and the server certificate
    // carries that address) on one listener; client1 may use `a` only,
    // client2 both.
    let lab = lab(opts(1, true), |p| {
        let u = ups(p);
        let mut s = base_config(p, "");
        s.push_str(&app("a", p.listen, &["localhost"], &u));
        s.push_str(&app("b", p.listen, &[], &u));
        s.push_str(&client("client1", &["a"], ""));
        s.push_str(&client("client2", &["a", "b"], ""));
        s
    });
    let with_store = |name: &str, sni: &str, store: &Arc<AnyName>| {
        let mut o = lab.client_with(Some(name), sni, true).expect("options");
        let mut cfg = (*o.tls).clone();
        cfg.resumption = rustls::client::Resumption::store(store.clone());
        o.tls = Arc::new(cfg);
        o
    };
    // client1's ticket from `a`, offered on `b`: refused, nothing proxied.
    let store = Arc::new(AnyName::default());
    run(session(&with_store("client1", "localhost", &store), "a\n")).expect("client1 on a");
    assert!(store.0.lock().expect("store").is_some(), "a ticket was issued");
    let before = proxied(&lab);
    assert_refused(
        run(session(&with_store("client1", "127.0.0.1", &store), "b\n")),
        "access_denied",
    );
    assert_eq!(proxied(&lab), before);
    // client2, allowed on both: admitted on `b`, but by a full handshake.
    let store = Arc::new(AnyName::default());
    run(session(&with_store("client2", "localhost", &store), "a\n")).expect("client2 on a");
    let (resumed, _) = run(session(&with_store("client2", "127.0.0.1", &store), "b\n")).expect("client2 on b");
    assert!(!resumed, "a session of app a resumed on app b");
}

// ---------------------------------------------------------------------------
// 2. Reload closes what it no longer admits; expiry and max_lifetime

/// An open, greeted connection (the greeting read), ready for more echoes.
fn open(lab: &Lab, name: &str) -> ClientStream {
    let opts = lab.client_with(Some(name), "localhost", false).expect("options");
    run(async {
        let (_, mut s) = connect(&opts).await.expect("connect");
        within("greeting", T, read_line(&mut s)).await.expect("greeting");
        s
    })
}

/// Echoes one line on an open connection.
fn echo_on(s: &mut ClientStream, msg: &str) -> std::io::Result<String> {
    run(within("echo", T, async {
        s.write_all(msg.as_bytes()).await?;
        s.flush().await?;
        read_line(s).await
    }))
}

/// Waits until the balancer closes `s` (EOF or an error on read); the time it took.
fn closed_within(s: &mut ClientStream, limit: Duration) -> Duration {
    let start = Instant::now();
    run(async {
        let mut buf = [0u8; 64];
        loop {
            match timeout(limit, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => continue,
                Err(_) => panic!("connection still open after {limit:?}"),
            }
        }
    });
    start.elapsed()
}

fn closed_for(lab: &Lab, r: CloseReason) -> u64 {
    lab.server.metrics.closed_for(r)
}

#[test]
fn a_reload_closes_the_open_connection_of_a_revoked_identity_only() {
    let lab = standard_lab(1);
    let mut revoked = open(&lab, "client2");
    let mut kept = open(&lab, "client1");
    assert_eq!(echo_on(&mut revoked, "before\n").expect("echo"), "before\n");

    lab.pki.revoke("client2").expect("revoke");
    reload_with(&lab, |t| t);
    let took = closed_within(&mut revoked, Duration::from_secs(1));
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    assert_eq!(closed_for(&lab, CloseReason::Revoked), 1);
    assert_eq!(echo_on(&mut kept, "still\n").expect("client1 still served"), "still\n");
    assert_eq!(closed_for(&lab, CloseReason::Deauthorized), 0);
}

#[test]
fn a_reload_closes_connections_removed_from_the_app_or_with_a_changed_pin() {
    let lab = standard_lab(1);
    let mut removed = open(&lab, "client1");
    let mut pinned = open(&lab, "client2");
    let mut kept = open(&lab, "client3");
    reload_with(&lab, |t| {
        let c1 = client("client1", &["echo"], "");
        let c2 = client("client2", &["echo"], "");
        let wrong_pin = format!("spki_sha256 = \"{}\"", "ab".repeat(32));
        t.replace(&c1, "")
            .replace(&c2, &client("client2", &["echo"], &wrong_pin))
    });
    closed_within(&mut removed, Duration::from_secs(1));
    closed_within(&mut pinned, Duration::from_secs(1));
    assert_eq!(closed_for(&lab, CloseReason::Deauthorized), 2);
    assert_eq!(echo_on(&mut kept, "still\n").expect("client3 still served"), "still\n");
}

#[test]
fn keep_deauthorized_leaves_open_connections_alone() {
    let lab = lab(opts(1, true), |p| {
        standard_writer(p, "")
            .tls(lab_tls(p, |t| t.keep_deauthorized = Some(true)))
            .render()
    });
    let mut s = open(&lab, "client2");
    lab.pki.revoke("client2").expect("revoke");
    reload_with(&lab, |t| t);
    assert_eq!(echo_on(&mut s, "kept\n").expect("still open"), "kept\n");
    assert_eq!(closed_for(&lab, CloseReason::Revoked), 0);
    // New connections are still refused.
    let fresh = lab.client(Some("client2")).expect("options");
    assert_refused(run(session(&fresh, "new\n")), "certificate_revoked");
}

#[test]
fn max_lifetime_closes_old_connections() {
    let lab = lab(opts(1, true), |p| standard_config(p, "max_lifetime = \"1s\"\n", ""));
    let mut s = open(&lab, "client1");
    let took = closed_within(&mut s, Duration::from_secs(5));
    assert!(took > Duration::from_millis(500), "closed too early: {took:?}");
    assert_eq!(closed_for(&lab, CloseReason::MaxLifetime), 1);
}

#[test]
fn an_open_connection_is_closed_when_its_certificate_expires() {
    let (lab, clock) = clocked_lab(|_| {}, &client("short1", &["echo"], ""));
    issue_for(&lab, "short1", TimeDuration::hours(1));
    // One second before the end of its validity, as the gate's clock says.
    clock.advance(Duration::from_secs(3600 - 1));
    let mut s = open(&lab, "short1");
    let took = closed_within(&mut s, Duration::from_secs(5));
    assert!(took < Duration::from_secs(4), "closed after {took:?}");
    assert_eq!(closed_for(&lab, CloseReason::Expired), 1);
}

// ---------------------------------------------------------------------------
// 3. CRLs: signature, intermediates, nextUpdate

/// The lab CA as an rcgen issuer.
fn lab_issuer(lab: &Lab) -> Issuer<'static, KeyPair> {
    let key = KeyPair::from_pem(&std::fs::read_to_string(lab.pki.ca_key()).expect("CA key")).expect("CA key");
    let pem = std::fs::read_to_string(lab.pki.ca_cert()).expect("CA cert");
    Issuer::from_ca_cert_pem(&pem, key).expect("CA issuer")
}

fn crl_pem(issuer: &Issuer<'_, KeyPair>, revoked: &[SerialNumber], next_update: OffsetDateTime) -> String {
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - TimeDuration::days(2),
        next_update,
        crl_number: SerialNumber::from(7u64),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: s.clone(),
                revocation_time: now - TimeDuration::minutes(1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params.signed_by(issuer).expect("CRL").pem().expect("PEM")
}

#[test]
fn a_crl_naming_the_ca_but_signed_by_another_key_is_refused_at_load() {
    let lab = standard_lab(1);
    // Same issuer name as the lab CA, another key.
    let ca_pem = std::fs::read_to_string(lab.pki.ca_cert()).expect("CA cert");
    let forged = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::generate().expect("key")).expect("issuer");
    let crl = lab.paths.pki_dir.join("forged-crl.pem");
    std::fs::write(
        &crl,
        crl_pem(&forged, &[], OffsetDateTime::now_utc() + TimeDuration::days(30)),
    )
    .expect("write");
    let text = std::fs::read_to_string(&lab.config_path)
        .expect("config")
        .replace("crl.pem", "forged-crl.pem");
    let err = lab.reload(&text).expect_err("a forged CRL was accepted");
    assert!(format!("{err:#}").contains("not validly signed"), "{err:#}");
}

#[test]
fn a_revoked_intermediate_ca_is_refused() {
    let lab = lab(opts(1, true), |p| {
        standard_config(p, "", &client("leaf1", &["echo"], ""))
    });
    let root = lab_issuer(&lab);
    // root -> intermediate -> leaf1 (clientAuth).
    let inter_key = KeyPair::generate().expect("key");
    let mut inter = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "test intermediate");
    inter.distinguished_name = dn;
    inter.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    inter.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let inter_serial = SerialNumber::from(4242u64);
    inter.serial_number = Some(inter_serial.clone());
    let inter_cert = inter.signed_by(&inter_key, &root).expect("intermediate");
    let inter_issuer = Issuer::new(inter, inter_key);
    let leaf_key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "leaf1");
    leaf.distinguished_name = dn;
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    leaf.serial_number = Some(SerialNumber::from(99u64));
    let leaf_cert = leaf.signed_by(&leaf_key, &inter_issuer).expect("leaf");
    let (cert_path, key_path) = lab.pki.client("leaf1");
    std::fs::write(&cert_path, format!("{}{}", leaf_cert.pem(), inter_cert.pem())).expect("chain");
    std::fs::write(&key_path, leaf_key.serialize_pem()).expect("key");

    let next = OffsetDateTime::now_utc() + TimeDuration::days(30);
    let inter_crl = crl_pem(&inter_issuer, &[], next);
    let set_crls = |root_revokes: &[SerialNumber]| {
        std::fs::write(
            lab.pki.crl(),
            format!("{}{}", crl_pem(&root, root_revokes, next), inter_crl),
        )
        .expect("CRLs");
        reload_with(&lab, |t| t);
    };
    // With the intermediate in good standing, the chain is admitted...
    set_crls(&[]);
    let opts = lab.client_with(Some("leaf1"), "localhost", false).expect("options");
    run(session(&opts, "ok\n")).expect("a chain through a valid intermediate");
    // ...and refused once the root's CRL revokes the intermediate.
    set_crls(&[inter_serial]);
    let before = proxied(&lab);
    assert_refused(run(session(&opts, "revoked\n")), "certificate_revoked");
    assert_eq!(proxied(&lab), before);
}

#[test]
fn the_crl_next_update_is_exposed_and_a_past_one_is_warned_about() {
    let lab = lab(
        LabOptions {
            admin: true,
            ..opts(1, true)
        },
        |p| standard_config(p, "", ""),
    );
    let issuer = lab_issuer(&lab);
    let next = OffsetDateTime::now_utc() + TimeDuration::days(3);
    std::fs::write(lab.pki.crl(), crl_pem(&issuer, &[], next)).expect("CRL");
    reload_with(&lab, |t| t);
    let (code, body) = http_get(lab.paths.admin.expect("admin"), "/metrics");
    assert_eq!(code, 200);
    let value = metric(&body, "tlb_crl_next_update_timestamp_seconds", "").expect("the gauge");
    assert_eq!(value as i64, next.unix_timestamp());

    // A CRL past its nextUpdate: `serve --check` warns, and still enforces it.
    std::fs::write(
        lab.pki.crl(),
        crl_pem(&issuer, &[], OffsetDateTime::now_utc() - TimeDuration::hours(1)),
    )
    .expect("CRL");
    let out = tlb(
        &["serve", "--check", "--config", &lab.config_path.display().to_string()],
        &lab.paths.pki_dir,
        T,
    );
    assert_eq!(out.code(), Some(0), "{}", out.all());
    assert!(out.all().contains("past its nextUpdate"), "{}", out.all());
}
