//! Every sample `tlb.toml` comes from the one config writer
//! (`tlb::core::config::writer`): what it renders loads with the real model,
//! pki init's annotated examples are valid when uncommented, the bench
//! scripts write exactly the writer's text, and every ```toml block of the
//! README parses (an excerpt completed into a minimal config).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{have, run_bounded};
use tlb::core::config::writer::{
    AdminSection, AppSection, ClientSection, ClusterSection, ConfigWriter, GlobalLimitsSection, HealthSection,
    LimitsSection, TimeoutsSection, TlsSection, TrustDomainSection, UpstreamTlsSection,
};
use tlb::core::config::{AppMode, ClientMatch, Config, ConfigError, ProxyProtocol, TlsVersion, example_toml};
use tlb::core::tools::lab::LabPaths;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(file))
}

fn loads(text: &str) -> Config {
    parse(text, "/etc/tlb/tlb.toml").unwrap_or_else(|e| panic!("{e}\n--- text ---\n{text}"))
}

#[test]
fn every_key_the_writer_knows_loads_with_its_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("admin.token"), "s3cret\n").expect("token");
    std::fs::write(dir.path().join("redis.password"), "r3dis\n").expect("password");
    let pin = [0xab; 32];
    let text = ConfigWriter::new(TlsSection {
        min_version: Some(TlsVersion::V1_2),
        session_lifetime: Some(Duration::ZERO),
        keep_deauthorized: Some(true),
        ..TlsSection::pki("pki/")
    })
    .limits(GlobalLimitsSection {
        max_connections: Some(500),
        max_handshakes: Some(50),
        max_handshakes_per_ip: Some(5),
    })
    .defaults(LimitsSection {
        max_connections: Some(7),
        connection_rate: Some(2.5),
        burst: Some(9),
    })
    .timeouts(TimeoutsSection {
        handshake: Some(Duration::from_millis(500)),
        connect: Some(Duration::from_secs(3)),
        idle: Some(Duration::from_secs(120)),
        drain: Some(Duration::from_secs(1)),
        max_lifetime: Some(Duration::from_secs(86_400)),
    })
    .admin(AdminSection {
        token_file: Some("admin.token".into()),
        ..AdminSection::new(addr("127.0.0.1:9090"))
    })
    .cluster(ClusterSection {
        redis_password_file: Some("redis.password".into()),
        instance: Some("lb-a".into()),
        instances: Some(3),
        timeout: Some(Duration::from_millis(30)),
        liveness_ttl: Some(Duration::from_secs(6)),
        ..ClusterSection::new("rediss://redis.internal:6380/1")
    })
    .app(AppSection {
        server_names: Some(vec!["echo.example".into()]),
        proxy_protocol: Some(ProxyProtocol::V2),
        proxy_protocol_cert: Some(true),
        health: Some(HealthSection {
            interval: Some(Duration::from_secs(2)),
            timeout: Some(Duration::from_millis(250)),
            rise: Some(4),
            fall: Some(5),
            send: Some("ping \"x\"\n".into()),
            expect: Some("pong\\".into()),
        }),
        upstream_tls: Some(UpstreamTlsSection {
            ca: "u/ca.crt".into(),
            cert: Some("u/c.crt".into()),
            key: Some("u/c.key".into()),
            server_name: Some("up.internal".into()),
            min_version: Some(TlsVersion::V1_3),
        }),
        ..AppSection::new("echo", addr("127.0.0.1:8443"), ["127.0.0.1:9001", "[::1]:9002"])
    })
    .app(AppSection {
        mode: Some(AppMode::Audit),
        ..AppSection::new("db", addr("127.0.0.1:8444"), ["10.0.0.5:5432"])
    })
    .trust_domain(TrustDomainSection {
        name: "prod.example".into(),
        ca: "td/ca.crt".into(),
        crl: Some("td/crl.pem".into()),
    })
    .client(ClientSection {
        uri: Some("spiffe://prod.example/ns/db/sa/api".into()),
        ..ClientSection::new("api", ["db"])
    })
    .client(ClientSection {
        dns: Some("web.internal".into()),
        ..ClientSection::new("web", ["echo"])
    })
    .client(ClientSection::new("client1", ["echo", "db"]))
    .client(ClientSection {
        limits: LimitsSection {
            max_connections: Some(3),
            connection_rate: Some(0.001),
            burst: Some(1),
        },
        spki_sha256: Some(pin),
        ..ClientSection::new("client2", ["echo"])
    })
    .render();
    let c = parse(&text, dir.path().join("tlb.toml").to_str().expect("utf-8"))
        .unwrap_or_else(|e| panic!("{e}\n--- text ---\n{text}"));
    assert_eq!(c.tls.ca, dir.path().join("pki/ca.crt"));
    assert_eq!(c.tls.crl, Some(dir.path().join("pki/crl.pem")));
    assert_eq!(c.tls.min_version, TlsVersion::V1_2);
    assert_eq!(c.tls.session_lifetime, Duration::ZERO);
    assert!(c.tls.keep_deauthorized);
    assert_eq!(
        (
            c.limits.max_connections,
            c.limits.max_handshakes,
            c.limits.max_handshakes_per_ip
        ),
        (Some(500), 50, 5)
    );
    assert_eq!(
        (c.defaults.max_connections, c.defaults.connection_rate, c.defaults.burst),
        (7, 2.5, 9)
    );
    assert_eq!(c.timeouts.handshake, Duration::from_millis(500));
    assert_eq!(c.timeouts.connect, Duration::from_secs(3));
    assert_eq!(c.timeouts.idle, Duration::from_secs(120));
    assert_eq!(c.timeouts.drain, Duration::from_secs(1));
    assert_eq!(c.timeouts.max_lifetime, Some(Duration::from_secs(86_400)));
    let admin = c.admin.as_ref().expect("[admin]");
    assert_eq!(admin.listen, addr("127.0.0.1:9090"));
    assert!(admin.token.as_ref().expect("token").matches(b"s3cret"));
    let cl = c.cluster.as_ref().expect("[cluster]");
    assert_eq!(
        (
            cl.redis.as_str(),
            cl.instance.as_str(),
            cl.instances,
            cl.timeout,
            cl.liveness_ttl
        ),
        (
            "rediss://redis.internal:6380/1",
            "lb-a",
            3,
            Duration::from_millis(30),
            Duration::from_secs(6)
        )
    );
    assert_eq!(cl.password.as_ref().map(|p| p.reveal()), Some("r3dis"));
    assert_eq!(format!("{:?}", cl.password), "Some(RedisPassword(..))", "never shown");
    let echo = c.app("echo").expect("echo");
    assert_eq!(echo.server_names, ["echo.example"]);
    assert_eq!(echo.proxy_protocol, Some(ProxyProtocol::V2));
    assert!(echo.proxy_protocol_cert);
    let names: Vec<&str> = echo.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["127.0.0.1:9001", "[::1]:9002"]);
    let h = echo.health.as_ref().expect("health");
    assert_eq!(
        (h.interval, h.timeout, h.rise, h.fall),
        (Duration::from_secs(2), Duration::from_millis(250), 4, 5)
    );
    assert_eq!(
        (h.send.as_slice(), h.expect.as_slice()),
        (&b"ping \"x\"\n"[..], &b"pong\\"[..])
    );
    let ut = echo.upstream_tls.as_ref().expect("upstream_tls");
    assert_eq!(ut.key, Some(dir.path().join("u/c.key")));
    assert_eq!(ut.server_name.as_deref(), Some("up.internal"));
    assert_eq!(c.client("client1").expect("client1").apps, ["echo", "db"]);
    let c2 = c.client("client2").expect("client2");
    assert_eq!(
        (c2.limits.max_connections, c2.limits.connection_rate, c2.limits.burst),
        (3, 0.001, 1)
    );
    assert_eq!(c2.spki_sha256, Some(pin));
    assert_eq!(c.app("db").expect("db").mode, AppMode::Audit);
    assert_eq!(echo.mode, AppMode::Enforce);
    let td = &c.trust_domains[0];
    assert_eq!(
        (td.name.as_str(), &td.ca, &td.crl),
        (
            "prod.example",
            &dir.path().join("td/ca.crt"),
            &Some(dir.path().join("td/crl.pem"))
        )
    );
    assert_eq!(
        c.client("api").expect("api").matches,
        ClientMatch::Uri("spiffe://prod.example/ns/db/sa/api".into())
    );
    assert_eq!(
        c.client("web").expect("web").matches,
        ClientMatch::Dns("web.internal".into())
    );
    assert_eq!(c.client("client1").expect("client1").matches, ClientMatch::Cn);
}

#[test]
fn a_section_renders_alone_as_inside_a_document() {
    let admin = AdminSection::new(addr("127.0.0.1:9090"));
    let app = AppSection {
        health: Some(HealthSection::default()),
        ..AppSection::new("echo", addr("127.0.0.1:8443"), ["127.0.0.1:9001"])
    };
    let client = ClientSection::new("client2", ["echo"]);
    let tls = TlsSection::pki("pki");
    let doc = ConfigWriter::new(tls.clone())
        .admin(admin.clone())
        .app(app.clone())
        .client(client.clone())
        .render();
    for part in [admin.to_string(), app.to_string(), client.to_string()] {
        assert!(doc.contains(&part), "{part:?} not in\n{doc}");
    }
    assert!(doc.starts_with(tls.to_string().trim_start()), "{doc}");
    assert_eq!(admin.to_string(), "\n[admin]\nlisten = \"127.0.0.1:9090\"\n");
    loads(&doc);
}

#[test]
fn the_pki_init_sample_loads_and_its_commented_examples_are_valid() {
    let clients: Vec<String> = ["client1", "client2", "client3", "client4"].map(String::from).into();
    let text = example_toml("pki", &clients);
    let c = loads(&text);
    assert_eq!(c.clients.len(), 3);
    assert!(text.contains("# client4 has a valid certificate"), "{text}");
    // Uncomment every example line (`# key = value`, `# [table]`, `#  [app.health]`).
    let uncommented: String = text
        .lines()
        .map(|l| {
            if is_commented_example(l) {
                l[1..].trim_start().to_string()
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    let shown = text.lines().filter(|l| is_commented_example(l)).count();
    assert!(shown >= 15, "{shown} commented examples in\n{text}");
    let c = loads(&uncommented);
    assert_eq!(c.limits.max_connections, Some(9000));
    assert!(c.admin.is_some());
    assert!(c.apps[0].health.is_some());
    assert_eq!(c.timeouts.max_lifetime, Some(Duration::from_secs(86_400)));
}

/// `# key = value`, `# [table]` or `#  [app.health]`-style lines.
fn is_commented_example(l: &str) -> bool {
    let Some(rest) = l.strip_prefix('#') else {
        return false;
    };
    let rest = rest.trim_start();
    let key_end = rest.find(|c: char| !(c.is_ascii_lowercase() || c == '_')).unwrap_or(0);
    rest.starts_with('[') && rest.split_whitespace().next().is_some_and(|h| h.ends_with(']'))
        || key_end > 0 && rest[key_end..].starts_with(" = ")
}

#[test]
fn the_lab_sample_loads() {
    let paths = LabPaths {
        pki_dir: "/tmp/lab/pki".into(),
        listen: addr("127.0.0.1:18443"),
        upstreams: vec![addr("127.0.0.1:19001"), addr("127.0.0.1:19002")],
        admin: Some(addr("127.0.0.1:19090")),
    };
    let c = loads(&paths.sample().render());
    assert_eq!(c.clients.len(), 3, "client4 is left out");
    assert_eq!(c.app("echo").expect("echo").upstreams.len(), 2);
    assert!(c.admin.is_some());
    assert!(paths.sample().render().contains(&paths.admin_table()));
}

/// What `scripts/benchlib.py`'s `write_tlb_config` (used by both bench scripts) means, typed.
fn bench_script_config(work: &str, port: u16, ups: &[&str], preauth_caps: bool) -> ConfigWriter {
    let mut w = ConfigWriter::new(TlsSection::pki(&format!("{work}/pki")));
    if preauth_caps {
        w = w.limits(GlobalLimitsSection {
            max_connections: Some(100_000),
            max_handshakes: Some(100_000),
            max_handshakes_per_ip: Some(100_000),
        });
    }
    w.defaults(LimitsSection {
        max_connections: Some(100_000),
        connection_rate: Some(1e6),
        burst: Some(1_000_000),
    })
    .timeouts(TimeoutsSection {
        idle: Some(Duration::from_secs(600)),
        drain: Some(Duration::from_secs(1)),
        ..TimeoutsSection::default()
    })
    .app(AppSection::new("echo", SocketAddr::from(([127, 0, 0, 1], port)), ups))
    .client(ClientSection::new("client1", ["echo"]))
}

#[test]
fn the_bench_scripts_write_the_writers_config() {
    if !have("python3", "--version") {
        eprintln!("skipped: no python3 to run scripts/benchlib.py");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().to_str().expect("utf-8 path");
    let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts");
    let ups = ["127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103"];
    for caps in [true, false] {
        let out = dir.path().join(format!("tlb-{caps}.toml"));
        let py = "import sys; sys.path.insert(0, sys.argv[1]); from benchlib import write_tlb_config; \
                  write_tlb_config(sys.argv[2], int(sys.argv[3]), sys.argv[4].split(','), path=sys.argv[5], \
                  preauth_caps=sys.argv[6] == 'true')";
        let run = run_bounded(
            Command::new("python3").args([
                "-B",
                "-c",
                py,
                scripts,
                work,
                "8543",
                &ups.join(","),
                out.to_str().expect("utf-8 path"),
                &caps.to_string(),
            ]),
            b"",
            Duration::from_secs(30),
        );
        assert_eq!(run.code(), Some(0), "{run:?}");
        let got = std::fs::read_to_string(&out).expect("the script's config");
        let want = bench_script_config(work, 8543, &ups, caps).render();
        assert_eq!(got, want, "preauth_caps={caps}: the script and the writer differ");
        let c = loads(&got);
        assert_eq!(c.limits.max_handshakes, if caps { 100_000 } else { 1024 });
    }
}

/// Each ```toml block of `markdown`: (1-based line of its first line, text).
fn toml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        match &mut open {
            None if line.trim_start().starts_with("```toml") => open = Some((i + 2, String::new())),
            Some(_) if line.trim_start().starts_with("```") => out.extend(open.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    out
}

/// A README block, completed into a config that can load: a block without
/// `[tls]` gets the writer's `[tls]` for `pki/`, one without `[[app]]` gets
/// app `echo` on 127.0.0.1:8443. The block comes first, so an error's line
/// is its line in the block.
fn completed(block: &str) -> String {
    let table: toml::Table = toml::from_str(block).unwrap_or_else(|e| panic!("not TOML: {e}"));
    let mut filler = if table.contains_key("tls") {
        ConfigWriter::empty()
    } else {
        ConfigWriter::new(TlsSection::pki("pki"))
    };
    if !table.contains_key("app") {
        filler = filler.app(AppSection::new("echo", addr("127.0.0.1:8443"), ["127.0.0.1:9001"]));
    }
    format!("{block}\n{}", filler.render())
}

#[test]
fn every_toml_block_of_the_readme_parses() {
    let readme = include_str!("../README.md");
    let blocks = toml_blocks(readme);
    assert!(blocks.len() >= 3, "the README's config excerpts are gone? {blocks:?}");
    let mut failed = Vec::new();
    for (line, block) in &blocks {
        if let Err(e) = parse(&completed(block), "README.md") {
            failed.push(readme_error(*line, block, &e));
        }
    }
    assert!(
        failed.is_empty(),
        "README config blocks that do not parse:\n{}",
        failed.join("\n")
    );
}

/// `e` (from the completed block starting at README line `line`) located in
/// the README when it points into the block.
fn readme_error(line: usize, block: &str, e: &ConfigError) -> String {
    if (1..=block.lines().count()).contains(&e.line) {
        format!("README.md:{}: key `{}`: {}", line + e.line - 1, e.key, e.message)
    } else {
        format!("README.md:{line} (the block, completed): {e}")
    }
}

#[test]
fn a_readme_block_with_a_mistake_would_be_reported() {
    let md = "text\n```toml\n[limits]\nmax_handshakes = 0\n```\n";
    let blocks = toml_blocks(md);
    assert_eq!(blocks, [(3, "[limits]\nmax_handshakes = 0\n".to_string())]);
    let (line, block) = &blocks[0];
    let e = parse(&completed(block), "README.md").expect_err("max_handshakes = 0 is refused");
    assert_eq!(
        readme_error(*line, block, &e),
        format!("README.md:4: key `limits.max_handshakes`: {}", e.message)
    );
}
