//! `[cluster]` towards a guarded Redis, all against a real `redis-server`:
//! `rediss://` verified with `redis_ca` and logging in with a client
//! certificate (`tls-auth-clients yes`); a wrong CA, a missing client
//! certificate or a wrong password never make the link "shared" (limits
//! stay local, errors counted); a password logs in; two `prefix`es on one
//! Redis keep two fleets' counts apart. The config path (files named in
//! `tlb.toml`) is covered end to end by a lab over TLS with a password.
//! SKIP (loudly) without `redis-server`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use tlb::core::cluster::{Cluster, Denied};
use tlb::core::config::writer::ClusterSection;
use tlb::core::config::{ClusterSettings, Limits, RedisPassword};
use tlb::core::rt::Runtime;
use tlb::core::tools::client::connect_to;
use tlb::core::tools::lab::LabOptions;

use crate::common::redis::{RedisOptions, RedisServer, conn, counted_for, redis_with_or_skip};
use crate::common::*;
use tlb::core::tools::redis::RedisTls;

/// A PKI made by `tlb pki`: a server certificate `redis.internal` (also
/// valid for 127.0.0.1) for Redis and a client certificate `lb-a` for tlb.
/// A second PKI's CA (`other/ca.crt`) is one Redis does not chain to.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::Builder::new()
            .prefix("tlb-rediss-")
            .tempdir()
            .expect("tempdir");
        for args in [
            &["pki", "init", "--dir", "pki", "--config", "init.toml"][..],
            &["pki", "issue", "redis.internal", "--server", "--dir", "pki"],
            &["pki", "issue", "lb-a", "--dir", "pki"],
            &["pki", "init", "--dir", "other", "--config", "other.toml"],
        ] {
            let out = tlb(args, dir.path(), Duration::from_secs(30));
            assert_eq!(out.code(), Some(0), "tlb {args:?}: {out:?}");
        }
        Certs { dir }
    }

    fn file(&self, rel: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        assert!(p.exists(), "tlb pki wrote no {rel}");
        p
    }

    /// Redis serving TLS only, requiring a client certificate of our CA.
    fn redis_options(&self) -> RedisOptions {
        RedisOptions {
            password: None,
            tls: Some(RedisTls {
                cert: self.file("pki/servers/redis.internal.crt"),
                key: self.file("pki/servers/redis.internal.key"),
                ca: self.file("pki/ca.crt"),
                auth_clients: true,
            }),
        }
    }

    fn client(&self) -> Option<(PathBuf, PathBuf)> {
        Some((self.file("pki/clients/lb-a.crt"), self.file("pki/clients/lb-a.key")))
    }
}

fn settings(redis: &RedisServer, instance: &str) -> ClusterSettings {
    ClusterSettings {
        instances: 2,
        timeout: Duration::from_millis(200),
        liveness_ttl: Duration::from_secs(1),
        ..ClusterSettings::new(redis.url(), instance)
    }
}

fn limits(max: u32) -> Limits {
    Limits {
        max_connections: max,
        connection_rate: 1000.0,
        burst: 1000,
    }
}

fn up(rt: &Runtime, s: ClusterSettings) -> Cluster {
    let c = Cluster::start(s, rt.executor()).expect("cluster start");
    wait_until("the instance reaches Redis", Duration::from_secs(10), || c.is_up());
    c
}

/// Starts an instance that Redis must never let in: it keeps failing
/// (two connect attempts counted) and stays local, deciding by its share.
fn refused(rt: &Runtime, s: ClusterSettings, why: &str) {
    let c = Cluster::start(s, rt.executor()).expect("cluster start");
    wait_until(why, Duration::from_secs(10), || c.status().errors >= 2);
    let st = c.status();
    assert!(!st.up && st.mode == "local", "{why}: the link came up: {st:?}");
    // Decided locally: a share of 1 of max 2 (two instances).
    let _one = smol::block_on(c.admit("client1", limits(2))).expect("the share admits one");
    assert_eq!(
        smol::block_on(c.admit("client1", limits(2))).err(),
        Some(Denied::MaxConnections),
        "{why}: the local share is half the limit"
    );
    assert!(c.status().local_decisions >= 1, "{:?}", c.status());
}

#[test]
fn rediss_with_redis_ca_and_a_client_certificate_shares_limits() {
    let certs = Certs::new();
    let Some(redis) = redis_with_or_skip(
        "rediss_with_redis_ca_and_a_client_certificate_shares_limits",
        certs.redis_options(),
    ) else {
        return;
    };
    assert!(redis.url().starts_with("rediss://127.0.0.1:"), "{}", redis.url());
    let rt = Runtime::new(2).expect("runtime");
    let tls = |name: &str| ClusterSettings {
        ca: Some(certs.file("pki/ca.crt")),
        cert_key: certs.client(),
        ..settings(&redis, name)
    };
    let (a, b) = (up(&rt, tls("a")), up(&rt, tls("b")));
    let l = limits(2);
    let _a1 = smol::block_on(a.admit("client1", l)).expect("1st on A");
    let _b1 = smol::block_on(b.admit("client1", l)).expect("1st on B");
    assert_eq!(
        smol::block_on(a.admit("client1", l)).err(),
        Some(Denied::MaxConnections),
        "the 3rd is refused: counts are shared over TLS"
    );
    assert!(a.is_up() && b.is_up(), "{:?} {:?}", a.status(), b.status());
}

#[test]
fn rediss_with_a_wrong_ca_or_without_a_client_certificate_stays_local() {
    let certs = Certs::new();
    let Some(redis) = redis_with_or_skip(
        "rediss_with_a_wrong_ca_or_without_a_client_certificate_stays_local",
        certs.redis_options(),
    ) else {
        return;
    };
    let rt = Runtime::new(2).expect("runtime");
    let with = |ca: Option<PathBuf>, cert_key| ClusterSettings {
        ca,
        cert_key,
        ..settings(&redis, "a")
    };
    refused(
        &rt,
        with(Some(certs.file("other/ca.crt")), certs.client()),
        "a CA that did not issue Redis's certificate",
    );
    refused(
        &rt,
        with(None, certs.client()),
        "the system's trust store (our CA is not in it)",
    );
    refused(
        &rt,
        with(Some(certs.file("pki/ca.crt")), None),
        "no client certificate for a Redis that requires one",
    );
}

#[test]
fn a_password_logs_in_and_a_wrong_or_missing_one_stays_local() {
    let opts = RedisOptions {
        password: Some("s3cret-for-tlb".into()),
        tls: None,
    };
    let Some(redis) = redis_with_or_skip("a_password_logs_in_and_a_wrong_or_missing_one_stays_local", opts) else {
        return;
    };
    let rt = Runtime::new(2).expect("runtime");
    let pw = |p: Option<&str>| ClusterSettings {
        password: p.map(|p| RedisPassword::new(p.into())),
        ..settings(&redis, "a")
    };
    refused(&rt, pw(Some("wrong")), "a wrong password");
    refused(&rt, pw(None), "no password for a Redis that requires one");
    let c = up(&rt, pw(Some("s3cret-for-tlb")));
    let _one = smol::block_on(c.admit("client1", limits(2))).expect("admitted");
    assert_eq!(c.status().local_decisions, 0, "decided by Redis: {:?}", c.status());
}

#[test]
fn two_prefixes_on_one_redis_keep_two_fleets_apart() {
    let Some(redis) = redis_with_or_skip(
        "two_prefixes_on_one_redis_keep_two_fleets_apart",
        RedisOptions::default(),
    ) else {
        return;
    };
    let rt = Runtime::new(2).expect("runtime");
    let fleet = |prefix: &str| ClusterSettings {
        prefix: prefix.into(),
        ..settings(&redis, "a")
    };
    let (x, y) = (up(&rt, fleet("tlb-x")), up(&rt, fleet("tlb-y")));
    let x2 = up(
        &rt,
        ClusterSettings {
            instance: "b".into(),
            ..fleet("tlb-x")
        },
    );
    let l = limits(1);
    let _x1 = smol::block_on(x.admit("client1", l)).expect("fleet x");
    let _y1 = smol::block_on(y.admit("client1", l)).expect("fleet y: its own count");
    assert_eq!(
        smol::block_on(x2.admit("client1", l)).err(),
        Some(Denied::MaxConnections),
        "fleet x's other instance shares x's count"
    );
    let count = |key: &str| counted_for(&mut conn(&redis), key, "a");
    assert_eq!((count("tlb-x:{client1}:conns"), count("tlb-y:{client1}:conns")), (1, 1));
    assert_eq!(count("tlb:{client1}:conns"), 0, "the default prefix is unused");
}

/// The config path: `rediss://` with `redis_ca`, `redis_cert`, `redis_key`
/// and `redis_password_file` named in `tlb.toml`, served by a lab.
#[test]
fn a_lab_reaches_a_tls_redis_with_password_through_its_config() {
    let certs = Certs::new();
    let opts = RedisOptions {
        password: Some("pw-from-a-file".into()),
        ..certs.redis_options()
    };
    let Some(redis) = redis_with_or_skip("a_lab_reaches_a_tls_redis_with_password_through_its_config", opts) else {
        return;
    };
    let pw = certs.dir.path().join("redis.password");
    std::fs::write(&pw, "pw-from-a-file\n").expect("password file");
    set_private(&pw);
    let shown = |p: PathBuf| p.display().to_string();
    let section = ClusterSection {
        redis_password_file: Some(shown(pw.clone())),
        redis_ca: Some(shown(certs.file("pki/ca.crt"))),
        redis_cert: Some(shown(certs.file("pki/clients/lb-a.crt"))),
        redis_key: Some(shown(certs.file("pki/clients/lb-a.key"))),
        prefix: Some("lab".into()),
        instance: Some("lab-1".into()),
        ..ClusterSection::new(&redis.url())
    };
    let lab = lab(opts_for_lab(), |p| {
        base(p, "")
            .cluster(section)
            .app(app_section("echo", p.listen, &[], &ups(p)))
            .client(client_section("client1", &["echo"], ""))
            .render()
    });
    wait_until("the lab reaches Redis over TLS", Duration::from_secs(10), || {
        lab.server.cluster().is_some_and(Cluster::is_up)
    });
    let opts = lab.client(Some("client1")).expect("client1");
    smol::block_on(async {
        let mut s = connect_to(lab.addr(), &opts).await.expect("connect");
        within("write", T, s.write_all(b"hold\n")).await.expect("write");
        within("flush", T, s.flush()).await.expect("flush");
        let mut b = [0u8; 1];
        within("greeting", T, s.read_exact(&mut b)).await.expect("relayed");
        let n = counted_for(&mut authed(&redis, &certs), "lab:{client1}:conns", "lab-1");
        assert_eq!(n, 1, "the open connection is counted under the prefix");
        drop(s);
    });
}

fn opts_for_lab() -> LabOptions {
    opts(1, true)
}

/// Owner-only, as `redis_password_file` requires.
fn set_private(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// A checking connection to the TLS Redis, as `lb-a` with the password.
fn authed(redis: &RedisServer, certs: &Certs) -> ::redis::Connection {
    let read = |rel: &str| std::fs::read(certs.file(rel)).expect("pem");
    let tls = ::redis::TlsCertificates {
        client_tls: Some(::redis::ClientTlsConfig {
            client_cert: read("pki/clients/lb-a.crt"),
            client_key: read("pki/clients/lb-a.key"),
        }),
        root_cert: Some(read("pki/ca.crt")),
    };
    let url = redis.url().replace("rediss://", "rediss://:pw-from-a-file@");
    let client = ::redis::Client::build_with_tls(url.as_str(), tls).expect("tls client");
    client
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connecting to the TLS redis")
}
