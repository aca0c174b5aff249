//! Identities beyond the CN: `[[client]]` entries matched by URI SAN
//! (SPIFFE IDs), DNS SAN or CN; ambiguity refused; SPIFFE IDs admitted only
//! from their own `[[trust_domain]]`'s CA; audit mode.
//!
//! Real sockets on 127.0.0.1:0, real mTLS; every certificate is issued in
//! a temporary directory by `tlb`'s own PKI code. Each refusal test would
//! see a connection through if the gate opened.

use std::path::Path;

use time::{Duration as TimeDuration, OffsetDateTime};
use tlb::core::config::writer::{ClientSection, TrustDomainSection};
use tlb::core::config::{AppMode, Config};
use tlb::core::pki::{InitOptions, KeyType, Pki, Role, San, Validity};
use tlb::core::proxy::outcome::HandshakeFailureKind;
use tlb::core::tools::client::{ClientError, ClientOptions};
use tlb::core::tools::lab::{Lab, LabPaths};

use crate::common::*;

const PROD_API: &str = "spiffe://prod.example/ns/web/sa/api";
const DEV_API: &str = "spiffe://dev.example/ns/web/sa/api";

fn validity(days: i64) -> Validity {
    let now = OffsetDateTime::now_utc();
    Validity {
        not_before: now - TimeDuration::minutes(5),
        not_after: now + TimeDuration::days(days),
    }
}

/// Issues client certificate `cn` with `sans` from `pki` (replacing one
/// of that name).
fn issue(pki: &Pki, cn: &str, sans: &[San]) {
    pki.issue_with_sans(cn, Role::Client, KeyType::EcdsaP256, validity(30), true, sans)
        .unwrap_or_else(|e| panic!("issuing {cn}: {e:#}"));
}

/// A second CA (a PKI of its own) under `dir`.
fn other_ca(dir: &Path) -> Pki {
    let pki = Pki::new(dir.join("pki"));
    pki.init(&InitOptions {
        clients: vec!["seed".into()],
        server_names: vec![],
        key_type: KeyType::EcdsaP256,
        days: 30,
        force: false,
    })
    .expect("a second CA");
    pki
}

/// Client options for the lab's server with certificate `cn` of `pki`.
fn client_of(lab: &Lab, pki: &Pki, cn: &str) -> ClientOptions {
    client_with_cert_of(lab, pki, cn, false)
}

fn uri_client(name: &str, uri: &str) -> ClientSection {
    ClientSection {
        uri: Some(uri.into()),
        ..ClientSection::new(name, ["echo"])
    }
}

fn dns_client(name: &str, dns: &str) -> ClientSection {
    ClientSection {
        dns: Some(dns.into()),
        ..ClientSection::new(name, ["echo"])
    }
}

/// App `echo` in `mode` over the lab's upstreams, `clients`, and
/// `domains` as `[[trust_domain]]`s.
fn identity_lab(mode: AppMode, clients: Vec<ClientSection>, domains: Vec<TrustDomainSection>) -> Lab {
    lab(opts(1, true), move |p: &LabPaths| {
        let mut app = app_section("echo", p.listen, &[], &ups(p));
        app.mode = Some(mode);
        let mut w = base(p, "").app(app);
        for td in domains {
            w = w.trust_domain(td);
        }
        for c in clients {
            w = w.client(c);
        }
        w.render()
    })
}

/// Whether the balancer admitted the client and echoed (else: refused in
/// the handshake, with an alert).
fn admitted(opts: &ClientOptions) -> bool {
    match smol::block_on(greeted_exchange(opts, "ping\n")) {
        Ok((_, rest)) => {
            assert_eq!(rest, "ping\n");
            true
        }
        Err(ClientError::TlsRefused { .. }) => false,
        Err(e) => panic!("neither admitted nor refused with an alert: {e}"),
    }
}

/// Asserts the handshake is refused with `alert`.
fn refused(opts: &ClientOptions, alert: &str, what: &str) {
    match smol::block_on(greeted_exchange(opts, "ping\n")) {
        Err(ClientError::TlsRefused { detail, .. }) => {
            assert!(detail.contains(alert), "{what}: expected alert {alert}, got {detail:?}")
        }
        other => panic!("{what}: expected a TLS refusal with {alert}, got {other:?}"),
    }
}

/// Connections the limiter granted to `[[client]]` `name`.
fn granted(lab: &Lab, name: &str) -> u64 {
    lab.server
        .current()
        .limiter
        .get(name, true)
        .expect("client state")
        .total()
}

fn unauthorized(lab: &Lab) -> u64 {
    lab.server
        .metrics
        .handshake_failures_for(HandshakeFailureKind::Unauthorized)
}

/// Waits until `n` more handshakes than `before` were refused by the policy
/// (the server counts a refusal after its alert is on the way), then checks
/// that it is exactly `n`.
fn assert_unauthorized(lab: &Lab, before: u64, n: u64, what: &str) {
    wait_until(what, T, || unauthorized(lab) >= before + n);
    assert_eq!(unauthorized(lab) - before, n, "{what}");
}

fn audit_denied(lab: &Lab) -> u64 {
    let g = lab.server.current();
    let app = g.app("echo").expect("app echo");
    app.stats.audit_denied.load(std::sync::atomic::Ordering::Relaxed)
}

/// Entries of each kind: `api` by URI, `web` by DNS, `client1` by CN.
fn three_kinds_lab() -> Lab {
    identity_lab(
        AppMode::Enforce,
        vec![
            uri_client("api", PROD_API),
            dns_client("web", "web.internal"),
            ClientSection::new("client1", ["echo"]),
        ],
        vec![],
    )
}

#[test]
fn uri_dns_and_cn_entries_each_admit_their_own_identity_only() {
    let lab = three_kinds_lab();
    let pki = &lab.pki;
    issue(pki, "svc-a", &[San::Uri(PROD_API.into())]);
    issue(pki, "svc-b", &[San::Dns("Web.Internal".into())]);
    issue(
        pki,
        "svc-c",
        &[San::Uri("spiffe://prod.example/ns/web/sa/other".into())],
    );
    issue(pki, "api", &[]); // the CN of a URI entry's name: not that identity
    issue(pki, "svc-d", &[San::Dns("web.internal.evil".into())]);

    assert!(admitted(&client_of(&lab, pki, "svc-a")), "URI SAN entry");
    assert_eq!(granted(&lab, "api"), 1, "counted under the entry's name");
    assert!(
        admitted(&client_of(&lab, pki, "svc-b")),
        "DNS SAN entry (case-insensitive)"
    );
    assert_eq!(granted(&lab, "web"), 1);
    assert!(admitted(&client_of(&lab, pki, "client1")), "CN entry");
    assert_eq!(granted(&lab, "client1"), 1);

    let before = unauthorized(&lab);
    for cn in ["svc-c", "api", "svc-d"] {
        refused(
            &client_of(&lab, pki, cn),
            "access_denied",
            &format!("{cn} must be refused"),
        );
    }
    assert_unauthorized(&lab, before, 3, "each refused by the policy");
    assert_eq!(
        granted(&lab, "api"),
        1,
        "a CN equal to a URI entry's name is not that entry"
    );
    lab.shutdown().expect("shutdown");
}

#[test]
fn a_certificate_matching_two_entries_is_refused_not_picked() {
    let lab = three_kinds_lab();
    let pki = &lab.pki;
    issue(pki, "both-uri-cn", &[San::Uri(PROD_API.into())]);
    // CN client1 (an entry) plus the URI of another entry.
    issue(pki, "client1", &[San::Uri(PROD_API.into())]);
    issue(
        pki,
        "both-sans",
        &[San::Uri(PROD_API.into()), San::Dns("web.internal".into())],
    );
    let before = unauthorized(&lab);
    assert!(
        admitted(&client_of(&lab, pki, "both-uri-cn")),
        "one match only: admitted"
    );
    refused(
        &client_of(&lab, pki, "client1"),
        "access_denied",
        "CN and URI of two entries",
    );
    refused(
        &client_of(&lab, pki, "both-sans"),
        "access_denied",
        "URI and DNS of two entries",
    );
    assert_unauthorized(&lab, before, 2, "both refused by the policy");
    assert_eq!(granted(&lab, "client1"), 0);
    assert_eq!(granted(&lab, "web"), 0);
    assert_eq!(granted(&lab, "api"), 1, "only the unambiguous one");
    lab.shutdown().expect("shutdown");
}

#[test]
fn a_spiffe_id_is_admitted_only_from_its_own_trust_domains_ca() {
    let prod_dir = tempfile::tempdir().expect("tempdir");
    let dev_dir = tempfile::tempdir().expect("tempdir");
    let prod = other_ca(prod_dir.path());
    let dev = other_ca(dev_dir.path());
    let domains = vec![
        TrustDomainSection {
            name: "prod.example".into(),
            ca: prod.ca_cert().display().to_string(),
            crl: None,
        },
        TrustDomainSection {
            name: "dev.example".into(),
            ca: dev.ca_cert().display().to_string(),
            crl: None,
        },
    ];
    for mode in [AppMode::Enforce, AppMode::Audit] {
        let lab = identity_lab(
            mode,
            vec![
                uri_client("api", PROD_API),
                uri_client("dev-api", DEV_API),
                ClientSection::new("client1", ["echo"]),
            ],
            domains.clone(),
        );
        let force = mode == AppMode::Audit;
        for (pki, cn, uri) in [
            (&prod, "prod-api", PROD_API),
            (&dev, "dev-api", DEV_API),
            (&dev, "forged-prod", PROD_API),
            (&lab.pki, "lab-prod", PROD_API),
        ] {
            pki.issue_with_sans(
                cn,
                Role::Client,
                KeyType::EcdsaP256,
                validity(30),
                force,
                &[San::Uri(uri.into())],
            )
            .expect("issue");
        }
        // The lab CA (`[tls] ca`) still admits CN identities.
        lab.pki
            .issue("client1", Role::Client, KeyType::EcdsaP256, validity(30), true)
            .expect("client1");
        // Another domain's CA cannot mint a CN identity either.
        prod.issue("client1", Role::Client, KeyType::EcdsaP256, validity(30), force)
            .expect("client1 of prod");

        assert!(
            admitted(&client_of(&lab, &prod, "prod-api")),
            "{mode:?}: prod ID from prod's CA"
        );
        assert!(
            admitted(&client_of(&lab, &dev, "dev-api")),
            "{mode:?}: dev ID from dev's CA"
        );
        assert!(
            admitted(&client_of(&lab, &lab.pki, "client1")),
            "{mode:?}: CN from [tls] ca"
        );
        let before = unauthorized(&lab);
        refused(
            &client_of(&lab, &dev, "forged-prod"),
            "access_denied",
            &format!("{mode:?}: prod ID minted by dev's CA"),
        );
        refused(
            &client_of(&lab, &lab.pki, "lab-prod"),
            "access_denied",
            &format!("{mode:?}: prod ID minted by [tls] ca"),
        );
        refused(
            &client_of(&lab, &prod, "client1"),
            "access_denied",
            &format!("{mode:?}: CN minted by prod's CA"),
        );
        assert_unauthorized(&lab, before, 3, &format!("{mode:?}: refused as wrong trust domain"));
        assert_eq!(granted(&lab, "api"), 1, "{mode:?}");
        assert_eq!(granted(&lab, "client1"), 1, "{mode:?}");
        assert_eq!(
            audit_denied(&lab),
            0,
            "{mode:?}: a wrong trust domain is never audited through"
        );
        lab.shutdown().expect("shutdown");
    }
}

#[test]
fn a_trust_domains_crl_refuses_its_revoked_spiffe_ids() {
    let prod_dir = tempfile::tempdir().expect("tempdir");
    let prod = other_ca(prod_dir.path());
    issue(&prod, "prod-api", &[San::Uri(PROD_API.into())]);
    issue(
        &prod,
        "prod-other",
        &[San::Uri("spiffe://prod.example/ns/web/sa/other".into())],
    );
    prod.revoke("prod-api").expect("revoking prod-api");
    let domains = vec![TrustDomainSection {
        name: "prod.example".into(),
        ca: prod.ca_cert().display().to_string(),
        crl: Some(prod.crl().display().to_string()),
    }];
    let lab = identity_lab(
        AppMode::Audit,
        vec![
            uri_client("api", PROD_API),
            uri_client("other", "spiffe://prod.example/ns/web/sa/other"),
        ],
        domains,
    );
    refused(
        &client_of(&lab, &prod, "prod-api"),
        "certificate_revoked",
        "revoked by its domain's CRL, in audit mode too",
    );
    assert!(admitted(&client_of(&lab, &prod, "prod-other")), "not revoked");
    assert_eq!(granted(&lab, "api"), 0);
    assert_eq!(audit_denied(&lab), 0);
    lab.shutdown().expect("shutdown");
}

#[test]
fn audit_mode_admits_and_counts_would_be_refusals_but_not_certificate_errors() {
    let lab = identity_lab(
        AppMode::Audit,
        vec![
            ClientSection::new("client1", ["echo"]),
            ClientSection::new("client4", Vec::<String>::new()),
            uri_client("api", PROD_API),
            ClientSection::new("both", ["echo"]),
        ],
        vec![],
    );
    let pki = &lab.pki;
    issue(pki, "client4", &[]);
    issue(pki, "stranger", &[]);
    issue(pki, "both", &[San::Uri(PROD_API.into())]);
    let now = OffsetDateTime::now_utc();
    let expired = Validity {
        not_before: now - TimeDuration::days(2),
        not_after: now - TimeDuration::days(1),
    };
    pki.issue("client1", Role::Client, KeyType::EcdsaP256, expired, true)
        .expect("an expired client1");
    let foreign_dir = tempfile::tempdir().expect("tempdir");
    let foreign = other_ca(foreign_dir.path());
    issue(&foreign, "client9", &[]);

    assert_eq!(audit_denied(&lab), 0);
    assert!(
        admitted(&client_of(&lab, pki, "client4")),
        "app not allowed: audited through"
    );
    assert!(admitted(&client_of(&lab, pki, "client4")), "again");
    assert_eq!(granted(&lab, "client4"), 2, "a listed identity keeps its own limits");
    assert!(
        admitted(&client_of(&lab, pki, "stranger")),
        "not listed: audited through"
    );
    assert!(admitted(&client_of(&lab, pki, "both")), "ambiguous: audited through");
    assert_eq!(audit_denied(&lab), 4);
    let unlisted = lab
        .server
        .current()
        .limiter
        .get("stranger", false)
        .expect("the unlisted state")
        .total();
    assert_eq!(unlisted, 2, "unlisted and ambiguous share the [defaults] state");

    let before = unauthorized(&lab);
    refused(
        &client_of(&lab, pki, "client1"),
        "certificate_expired",
        "expired: refused in audit mode",
    );
    refused(
        &client_of(&lab, &foreign, "client9"),
        "unknown_ca",
        "unknown CA: refused in audit mode",
    );
    let bad_certificate = || {
        lab.server
            .metrics
            .handshake_failures_for(HandshakeFailureKind::BadCertificate)
    };
    wait_until("both certificate refusals counted", T, || bad_certificate() >= 2);
    assert_eq!(audit_denied(&lab), 4, "certificate errors are not audited");
    assert_eq!(
        unauthorized(&lab),
        before,
        "they are certificate failures, not policy ones"
    );
    lab.shutdown().expect("shutdown");
}

/// One echo on a new connection: whether the session was resumed.
fn resumed_echo(opts: &ClientOptions) -> Result<bool, ClientError> {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    use tlb::core::tools::client::{connect, refused_or_io};
    smol::block_on(async {
        let (addr, mut s) = connect(opts).await?;
        let io = |e| refused_or_io(addr, e);
        within("an echo", T, async {
            s.write_all(b"again\n").await.map_err(io)?;
            s.flush().await.map_err(io)?;
            let greeting = read_line(&mut s).await.map_err(io)?;
            if greeting.is_empty() {
                return Err(ClientError::ClosedBeforeReply { addr });
            }
            let mut echo = [0u8; 6];
            s.read_exact(&mut echo).await.map_err(io)?;
            assert_eq!(&echo, b"again\n");
            Ok(s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
        })
        .await
    })
}

#[test]
fn a_uri_identity_resumes_only_while_the_gate_admits_it() {
    let lab = identity_lab(AppMode::Enforce, vec![uri_client("api", PROD_API)], vec![]);
    issue(&lab.pki, "svc-a", &[San::Uri(PROD_API.into())]);
    let opts = client_with_cert_of(&lab, &lab.pki, "svc-a", true);
    assert!(
        !resumed_echo(&opts).expect("full handshake"),
        "the first is a full handshake"
    );
    assert!(resumed_echo(&opts).expect("resumed"), "a URI identity resumes");
    // The entry now names another SPIFFE ID: the ticket is refused, and so
    // is the full handshake that follows.
    let text = std::fs::read_to_string(&lab.config_path).expect("config");
    lab.reload(&text.replace(PROD_API, "spiffe://prod.example/ns/web/sa/other"))
        .expect("reload");
    match resumed_echo(&opts) {
        Err(ClientError::TlsRefused { detail, .. }) => assert!(detail.contains("access_denied"), "{detail}"),
        other => panic!("expected access_denied after the reload, got {other:?}"),
    }
    assert!(
        lab.server
            .metrics
            .tickets_refused
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    lab.shutdown().expect("shutdown");
}

// ---------------------------------------------------------------------------
// Config-time refusals

fn parse(clients: Vec<ClientSection>, domains: Vec<TrustDomainSection>) -> Result<Config, String> {
    use tlb::core::config::writer::{AppSection, ConfigWriter, TlsSection};
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = "127.0.0.1:8443".parse().expect("addr");
    let mut w = ConfigWriter::new(TlsSection::pki("pki")).app(AppSection::new("echo", listen, ["127.0.0.1:9001"]));
    for td in domains {
        w = w.trust_domain(td);
    }
    for c in clients {
        w = w.client(c);
    }
    Config::parse(&w.render(), &dir.path().join("tlb.toml")).map_err(|e| e.to_string())
}

#[test]
fn ambiguous_or_malformed_entries_are_refused_at_load_with_the_key() {
    let td = |name: &str| TrustDomainSection {
        name: name.into(),
        ca: "prod-ca.crt".into(),
        crl: None,
    };
    let both = ClientSection {
        dns: Some("a.internal".into()),
        ..uri_client("x", PROD_API)
    };
    let cases: Vec<(Vec<ClientSection>, Vec<TrustDomainSection>, &str, &str)> = vec![
        (vec![both], vec![], "client[0].dns", "not both"),
        (
            vec![uri_client("a", PROD_API), uri_client("b", PROD_API)],
            vec![],
            "client[1].uri",
            "already matches",
        ),
        (
            vec![dns_client("a", "x.internal"), dns_client("b", "X.Internal")],
            vec![],
            "client[1].dns",
            "already matches",
        ),
        (
            vec![uri_client("a", "spiffe://Prod/x")],
            vec![],
            "client[0].uri",
            "SPIFFE ID",
        ),
        (
            vec![uri_client("a", "no scheme")],
            vec![],
            "client[0].uri",
            "client[0].uri",
        ),
        (vec![dns_client("a", "*.internal")], vec![], "client[0].dns", "wildcard"),
        (
            vec![uri_client("a", DEV_API)],
            vec![td("prod.example")],
            "client[0].uri",
            "no [[trust_domain]]",
        ),
        (vec![], vec![td("Prod")], "trust_domain[0].name", "not a trust domain"),
        (
            vec![],
            vec![td("prod.example"), td("prod.example")],
            "trust_domain[1].name",
            "duplicate",
        ),
    ];
    for (clients, domains, key, why) in cases {
        let e = parse(clients, domains).map(|_| ()).expect_err(key);
        assert!(e.contains(key) && e.contains(why), "{key}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
    // A URI entry and a CN entry of the same label text are different identities.
    let ok = parse(
        vec![uri_client("api", PROD_API), ClientSection::new("client1", ["echo"])],
        vec![td("prod.example")],
    )
    .expect("loads");
    assert_eq!(ok.trust_domains[0].name, "prod.example");
}
