//! `tlb.toml`: parsing, defaults, and validation errors that name
//! the file, the line and the key of the offending entry.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tlb::core::config::{Config, ConfigError, TlsVersion};

const FILE: &str = "/some/dir/tlb.toml";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(FILE))
}

fn parse_err(text: &str) -> ConfigError {
    match parse(text) {
        Ok(c) => panic!("expected an error, got a config: {c:#?}\n--- text ---\n{text}"),
        Err(e) => e,
    }
}

/// 1-based line of the first line of `text` that contains `needle`
/// (after `skip` earlier matches).
fn line_of(text: &str, needle: &str, skip: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(skip)
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} (match {skip}) not in the text"))
}

/// Asserts an error's line, key and a fragment of its message, and that its
/// Display is one line of the form `file:line: key `...`: message`.
#[track_caller]
fn assert_err(e: &ConfigError, line: usize, key: &str, fragment: &str) {
    assert_eq!(e.file, PathBuf::from(FILE), "file of {e}");
    assert_eq!(e.line, line, "line of {e}");
    assert_eq!(e.key, key, "key of {e}");
    assert!(
        e.message.to_lowercase().contains(&fragment.to_lowercase()),
        "message of {e} should contain {fragment:?}"
    );
    let shown = e.to_string();
    assert!(!shown.contains('\n'), "Display must be one line: {shown:?}");
    let prefix = format!("{FILE}:{line}: key `{key}`: ");
    assert!(shown.starts_with(&prefix), "{shown:?} should start with {prefix:?}");
    assert!(shown.ends_with(&e.message), "{shown:?} should end with the message");
}

/// The smallest valid config, with `extra` appended (used to add one mistake).
fn minimal(extra: &str) -> String {
    format!(
        r#"[tls]
ca = "pki/ca.crt"
cert = "pki/server.crt"
key = "pki/server.key"

[[app]]
name = "echo"
listen = "127.0.0.1:8443"
upstreams = ["127.0.0.1:9001"]
{extra}"#
    )
}

const FULL: &str = r#"# every section of tlb.toml
[tls]
ca   = "pki/ca.crt"
cert = "/etc/tlb/server.crt"
key  = "pki/server.key"
crl  = "pki/crl.pem"
min_version = "1.2"

[admin]
listen = "127.0.0.1:9090"

[defaults]
max_connections = 7
connection_rate = 2.5
burst = 9

[timeouts]
handshake = "500ms"
connect   = "3s"
idle      = "2m"

[[app]]
name = "echo"
listen = "127.0.0.1:8443"
server_names = ["Echo.Example.COM", "echo.internal."]
upstreams = ["127.0.0.1:9001", "127.0.0.1:9002", "[::1]:9003"]
proxy_protocol = "v2"
  [app.health]
  interval = "2s"
  timeout  = "250ms"
  rise = 4
  fall = 5
  send = "ping\n"
  expect = "pong"
  [app.upstream_tls]
  ca = "upstream/ca.crt"
  cert = "upstream/client.crt"
  key = "/abs/upstream/client.key"

[[app]]
name = "db"
listen = "127.0.0.1:8443"
upstreams = ["10.0.0.5:5432"]

[[client]]
name = "client1"
apps = ["echo", "db"]

[[client]]
name = "client2"
apps = ["echo"]
max_connections = 3
connection_rate = 0.5
burst = 1
spki_sha256 = "00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff"
"#;

#[test]
fn full_config_parses_to_expected_values() {
    let c = parse(FULL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.path, PathBuf::from(FILE));

    // [tls]: relative paths are resolved against the config's directory.
    assert_eq!(c.tls.ca, PathBuf::from("/some/dir/pki/ca.crt"));
    assert_eq!(c.tls.cert, PathBuf::from("/etc/tlb/server.crt"));
    assert_eq!(c.tls.key, PathBuf::from("/some/dir/pki/server.key"));
    assert_eq!(c.tls.crl, Some(PathBuf::from("/some/dir/pki/crl.pem")));
    assert_eq!(c.tls.min_version, TlsVersion::V1_2);

    let admin = c.admin.as_ref().expect("[admin]");
    assert_eq!(admin.listen, "127.0.0.1:9090".parse::<SocketAddr>().unwrap());

    assert_eq!(c.defaults.max_connections, 7);
    assert_eq!(c.defaults.connection_rate, 2.5);
    assert_eq!(c.defaults.burst, 9);

    assert_eq!(c.timeouts.handshake, Duration::from_millis(500));
    assert_eq!(c.timeouts.connect, Duration::from_secs(3));
    assert_eq!(c.timeouts.idle, Duration::from_secs(120));

    assert_eq!(c.apps.len(), 2);
    let echo = c.app("echo").expect("app echo");
    assert_eq!(echo.listen, "127.0.0.1:8443".parse::<SocketAddr>().unwrap());
    assert_eq!(echo.server_names, vec!["echo.example.com", "echo.internal"]);
    let names: Vec<&str> = echo.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["127.0.0.1:9001", "127.0.0.1:9002", "[::1]:9003"]);
    let addrs: Vec<SocketAddr> = echo.upstreams.iter().map(|u| u.addr).collect();
    assert_eq!(
        addrs,
        [
            "127.0.0.1:9001".parse::<SocketAddr>().unwrap(),
            "127.0.0.1:9002".parse().unwrap(),
            "[::1]:9003".parse().unwrap()
        ]
    );
    assert_eq!(echo.proxy_protocol, Some(tlb::core::config::ProxyProtocol::V2));
    assert!(!echo.proxy_protocol_cert);
    let h = echo.health.as_ref().expect("[app.health]");
    assert_eq!(h.interval, Duration::from_secs(2));
    assert_eq!(h.timeout, Duration::from_millis(250));
    assert_eq!((h.rise, h.fall), (4, 5));
    assert_eq!(h.send, b"ping\n");
    assert_eq!(h.expect, b"pong");
    let ut = echo.upstream_tls.as_ref().expect("[app.upstream_tls]");
    assert_eq!(ut.ca, PathBuf::from("/some/dir/upstream/ca.crt"));
    assert_eq!(ut.cert, Some(PathBuf::from("/some/dir/upstream/client.crt")));
    assert_eq!(ut.key, Some(PathBuf::from("/abs/upstream/client.key")));

    let db = c.app("db").expect("app db");
    assert!(db.server_names.is_empty());
    assert_eq!(db.proxy_protocol, None);
    assert!(db.health.is_none());
    assert!(db.upstream_tls.is_none());
    assert_eq!(db.upstreams[0].addr, "10.0.0.5:5432".parse::<SocketAddr>().unwrap());
    assert_eq!(c.listeners(), vec!["127.0.0.1:8443".parse::<SocketAddr>().unwrap()]);

    // [[client]]: client1 inherits [defaults]; client2 overrides all three.
    let c1 = c.client("client1").expect("client1");
    assert_eq!(c1.apps, vec!["echo", "db"]);
    assert_eq!(c1.limits, c.defaults);
    assert_eq!(c1.spki_sha256, None);
    let c2 = c.client("client2").expect("client2");
    assert_eq!(c2.apps, vec!["echo"]);
    assert_eq!(c2.limits.max_connections, 3);
    assert_eq!(c2.limits.connection_rate, 0.5);
    assert_eq!(c2.limits.burst, 1);
    let pin: [u8; 32] = hex::decode("00112233445566778899aabbccddeeff".repeat(2))
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(c2.spki_sha256, Some(pin));
    assert!(c.client("client3").is_none());
}

#[test]
fn client_override_of_one_limit_keeps_the_other_defaults() {
    let c = parse(&minimal(
        "[defaults]\nmax_connections = 4\nburst = 8\n\n[[client]]\nname = \"c\"\napps = [\"echo\"]\nburst = 2\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let l = c.client("c").unwrap().limits;
    assert_eq!(l.max_connections, 4);
    assert_eq!(l.connection_rate, 20.0);
    assert_eq!(l.burst, 2);
}

#[test]
fn defaults_when_sections_are_omitted() {
    let c = parse(&minimal("")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.tls.min_version, TlsVersion::V1_3);
    assert_eq!(c.tls.crl, None);
    assert!(c.admin.is_none());
    assert_eq!(c.defaults.max_connections, 10);
    assert_eq!(c.defaults.connection_rate, 20.0);
    assert_eq!(c.defaults.burst, 40);
    assert_eq!(c.timeouts.handshake, Duration::from_secs(5));
    assert_eq!(c.timeouts.connect, Duration::from_secs(2));
    assert_eq!(c.timeouts.idle, Duration::from_secs(600));
    let app = &c.apps[0];
    assert!(app.server_names.is_empty());
    assert_eq!(app.proxy_protocol, None);
    assert!(!app.proxy_protocol_cert);
    assert!(app.health.is_none(), "no [app.health] table means passive checks only");
    assert!(app.upstream_tls.is_none());
    assert!(c.clients.is_empty(), "no [[client]] means nobody is authorized");
}

#[test]
fn health_table_defaults() {
    let c = parse(&minimal("  [app.health]\n")).unwrap_or_else(|e| panic!("{e}"));
    let h = c.apps[0].health.as_ref().expect("health");
    assert_eq!(h.interval, Duration::from_secs(5));
    assert_eq!(h.timeout, Duration::from_secs(1));
    assert_eq!((h.rise, h.fall), (2, 3));
    assert!(h.send.is_empty() && h.expect.is_empty());
}

#[test]
fn a_config_without_a_directory_keeps_relative_paths() {
    let c = Config::parse(&minimal(""), Path::new("tlb.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.tls.ca, PathBuf::from("pki/ca.crt"));
}

#[test]
fn unknown_key_at_top_level() {
    let text = minimal("").replace("[tls]", "colour = \"blue\"\n\n[tls]");
    let e = parse_err(&text);
    assert_err(&e, line_of(&text, "colour", 0), "colour", "unknown");
}

#[test]
fn unknown_table() {
    let text = minimal("").replace("[tls]", "[timeout]\nidle = \"1m\"\n\n[tls]");
    let e = parse_err(&text);
    assert_err(&e, line_of(&text, "[timeout]", 0), "timeout", "unknown");
}

#[test]
fn error_inside_an_inline_table() {
    let text = minimal("health = { interval = \"1s\", rize = 2 }\n");
    let e = parse_err(&text);
    assert_err(&e, line_of(&text, "rize", 0), "app[0].health.rize", "unknown");
}

#[test]
fn unknown_key_in_tls() {
    let text = minimal("").replace(
        "key = \"pki/server.key\"",
        "key = \"pki/server.key\"\nmin_verison = \"1.3\"",
    );
    let e = parse_err(&text);
    assert_err(&e, line_of(&text, "min_verison", 0), "tls.min_verison", "unknown");
}

#[test]
fn unknown_key_in_app() {
    let text = minimal("\n[[app]]\nname = \"two\"\nlisten = \"127.0.0.1:8444\"\nupstream = [\"127.0.0.1:9001\"]\n");
    let e = parse_err(&text);
    assert_err(&e, line_of(&text, "upstream = ", 0), "app[1].upstream", "unknown");
}

#[test]
fn unknown_key_in_app_health() {
    let text = minimal("  [app.health]\n  intervall = \"1s\"\n");
    let e = parse_err(&text);
    assert_err(&e, line_of(&text, "intervall", 0), "app[0].health.intervall", "unknown");
}

#[test]
fn unknown_key_in_client() {
    let text = minimal(
        "\n[[client]]\nname = \"a\"\napps = [\"echo\"]\n\n[[client]]\nname = \"b\"\napps = [\"echo\"]\nmax_conections = 3\n",
    );
    let e = parse_err(&text);
    assert_err(
        &e,
        line_of(&text, "max_conections", 0),
        "client[1].max_conections",
        "unknown",
    );
}

#[test]
fn duplicate_app_names() {
    let text = minimal("\n[[app]]\nname = \"echo\"\nlisten = \"127.0.0.1:8444\"\nupstreams = [\"127.0.0.1:9001\"]\n");
    let e = parse_err(&text);
    assert_err(
        &e,
        line_of(&text, "name = \"echo\"", 1),
        "app[1].name",
        "duplicate app name",
    );
    assert!(
        e.message
            .contains(&format!("line {}", line_of(&text, "name = \"echo\"", 0))),
        "{e}"
    );
}

#[test]
fn app_with_an_empty_upstream_list() {
    let text = minimal("").replace("upstreams = [\"127.0.0.1:9001\"]", "upstreams = []");
    let e = parse_err(&text);
    assert_err(
        &e,
        line_of(&text, "upstreams = []", 0),
        "app[0].upstreams",
        "no upstreams",
    );
}

#[test]
fn app_without_the_upstreams_key() {
    let text = minimal("\n[[app]]\nname = \"two\"\nlisten = \"127.0.0.1:8444\"\n\n[[client]]\nname = \"c\"\n");
    let e = parse_err(&text);
    // Nothing to point at but the app itself: its [[app]] header.
    assert_err(&e, line_of(&text, "[[app]]", 1), "app[1].upstreams", "no upstreams");
}

#[test]
fn app_missing_a_required_key() {
    let text = minimal("\n[[app]]\nname = \"two\"\nupstreams = [\"127.0.0.1:9001\"]\n");
    let e = parse_err(&text);
    assert_err(
        &e,
        line_of(&text, "[[app]]", 1),
        "app[1].listen",
        "missing field `listen`",
    );
}

#[test]
fn upstream_tls_with_cert_but_no_key() {
    let text = minimal("  [app.upstream_tls]\n  ca = \"u/ca.crt\"\n  cert = \"u/c.crt\"\n");
    let e = parse_err(&text);
    assert_err(
        &e,
        line_of(&text, "[app.upstream_tls]", 0),
        "app[0].upstream_tls",
        "both cert and key",
    );
}

#[test]
fn two_default_apps_on_one_listener() {
    let text = minimal("\n[[app]]\nname = \"two\"\nlisten = \"127.0.0.1:8443\"\nupstreams = [\"127.0.0.1:9002\"]\n");
    let e = parse_err(&text);
    assert_err(
        &e,
        line_of(&text, "name = \"two\"", 0),
        "app[1].server_names",
        "server_names",
    );
    assert!(e.message.contains("127.0.0.1:8443"), "{e}");
}

#[test]
fn two_default_apps_on_one_listener_with_empty_server_names() {
    let text = minimal(
        "\n[[app]]\nname = \"two\"\nlisten = \"127.0.0.1:8443\"\nserver_names = []\nupstreams = [\"127.0.0.1:9002\"]\n",
    );
    let e = parse_err(&text);
    assert_err(
        &e,
        line_of(&text, "server_names = []", 0),
        "app[1].server_names",
        "server_names",
    );
}

#[test]
fn same_server_name_claimed_twice_on_one_listener() {
    let text = r#"[tls]
ca = "ca.crt"
cert = "s.crt"
key = "s.key"

[[app]]
name = "a"
listen = "127.0.0.1:8443"
server_names = ["a.example", "shared.example"]
upstreams = ["127.0.0.1:9001"]

[[app]]
name = "b"
listen = "127.0.0.1:8443"
server_names = [
  "b.example",
  "SHARED.example",
]
upstreams = ["127.0.0.1:9002"]
"#;
    let e = parse_err(text);
    assert_err(
        &e,
        line_of(text, "SHARED.example", 0),
        "app[1].server_names",
        "shared.example",
    );
    // The same name on different listeners is fine.
    let ok = text.replacen("127.0.0.1:8443", "127.0.0.1:8444", 1);
    parse(&ok).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn client_naming_an_unknown_app() {
    let text = minimal("\n[[client]]\nname = \"c\"\napps = [\"echo\", \"ecko\"]\n");
    let e = parse_err(&text);
    assert_err(&e, line_of(&text, "ecko", 0), "client[0].apps", "unknown app \"ecko\"");
    assert!(e.message.contains("echo"), "lists the known apps: {e}");
}

#[test]
fn bad_duration() {
    let text = minimal("").replace(
        "[tls]",
        "[timeouts]\nhandshake = \"5s\"\nidle = \"ten minutes\"\n\n[tls]",
    );
    let e = parse_err(&text);
    assert_err(&e, line_of(&text, "ten minutes", 0), "timeouts.idle", "duration");
}

#[test]
fn bad_duration_in_health() {
    let text = minimal("  [app.health]\n  interval = \"5\"\n");
    let e = parse_err(&text);
    assert_err(&e, line_of(&text, "interval", 0), "app[0].health.interval", "duration");
}

#[test]
fn zero_duration() {
    let text = minimal("").replace("[tls]", "[timeouts]\nconnect = \"0s\"\n\n[tls]");
    let e = parse_err(&text);
    assert_err(
        &e,
        line_of(&text, "connect = ", 0),
        "timeouts.connect",
        "greater than zero",
    );
}

#[test]
fn health_timeout_longer_than_interval() {
    let text = minimal("  [app.health]\n  interval = \"1s\"\n  timeout = \"2s\"\n");
    let e = parse_err(&text);
    assert_err(&e, line_of(&text, "timeout = ", 0), "app[0].health.timeout", "interval");
}

#[test]
fn bad_listen_address() {
    let text = minimal("").replace("listen = \"127.0.0.1:8443\"", "listen = \"127.0.0.1\"");
    let e = parse_err(&text);
    assert_err(&e, line_of(&text, "listen = ", 0), "app[0].listen", "127.0.0.1");
}

#[test]
fn bad_admin_listen_address() {
    let text = minimal("").replace("[tls]", "[admin]\nlisten = \"nowhere\"\n\n[tls]");
    let e = parse_err(&text);
    assert_err(&e, line_of(&text, "nowhere", 0), "admin.listen", "nowhere");
}

#[test]
fn admin_listen_must_not_be_an_app_listener() {
    let text = minimal("").replace("[tls]", "[admin]\nlisten = \"127.0.0.1:8443\"\n\n[tls]");
    let e = parse_err(&text);
    assert_err(
        &e,
        line_of(&text, "listen = \"127.0.0.1:8443\"", 0),
        "admin.listen",
        "its own port",
    );
}

#[test]
fn bad_upstream_address() {
    let text = minimal("").replace("[\"127.0.0.1:9001\"]", "[\"127.0.0.1:9001\",\n  \"127.0.0.1\"]");
    let e = parse_err(&text);
    assert_err(&e, line_of(&text, "  \"127.0.0.1\"]", 0), "app[0].upstreams", "port");
}

#[test]
fn max_connections_zero_in_defaults() {
    let text = minimal("").replace("[tls]", "[defaults]\nburst = 5\nmax_connections = 0\n\n[tls]");
    let e = parse_err(&text);
    assert_err(
        &e,
        line_of(&text, "max_connections", 0),
        "defaults.max_connections",
        "got 0",
    );
}

#[test]
fn max_connections_zero_in_client() {
    let text = minimal("\n[[client]]\nname = \"c\"\napps = [\"echo\"]\nmax_connections = 0\n");
    let e = parse_err(&text);
    assert_err(
        &e,
        line_of(&text, "max_connections", 0),
        "client[0].max_connections",
        "got 0",
    );
}

#[test]
fn wrong_value_type() {
    let text = minimal("\n[[client]]\nname = \"c\"\napps = [\"echo\"]\nburst = \"many\"\n");
    let e = parse_err(&text);
    assert_err(&e, line_of(&text, "burst", 0), "client[0].burst", "invalid type");
}

#[test]
fn bad_spki_sha256() {
    for bad in ["zz", "0011", &"g".repeat(64), &"ab".repeat(33)] {
        let text = minimal(&format!(
            "\n[[client]]\nname = \"c\"\napps = [\"echo\"]\nspki_sha256 = \"{bad}\"\n"
        ));
        let e = parse_err(&text);
        assert_err(
            &e,
            line_of(&text, "spki_sha256", 0),
            "client[0].spki_sha256",
            "64 hex digits",
        );
    }
    // Colon-separated (as openssl prints it) is accepted.
    let colons = vec!["ab"; 32].join(":");
    let c = parse(&minimal(&format!(
        "\n[[client]]\nname = \"c\"\napps = [\"echo\"]\nspki_sha256 = \"{colons}\"\n"
    )))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.clients[0].spki_sha256, Some([0xab; 32]));
}

#[test]
fn bad_min_version() {
    let text = minimal("").replace(
        "key = \"pki/server.key\"",
        "key = \"pki/server.key\"\nmin_version = \"1.1\"",
    );
    let e = parse_err(&text);
    assert_err(&e, line_of(&text, "min_version", 0), "tls.min_version", "1.1");
}

#[test]
fn duplicate_client() {
    let text = minimal("\n[[client]]\nname = \"c\"\napps = [\"echo\"]\n\n[[client]]\nname = \"c\"\n");
    let e = parse_err(&text);
    assert_err(
        &e,
        line_of(&text, "name = \"c\"", 1),
        "client[1].name",
        "duplicate client",
    );
}

#[test]
fn toml_syntax_error_has_a_line() {
    let text = minimal("\n[[client]]\nname = \"c\napps = []\n");
    let e = parse(&text).unwrap_err();
    assert_eq!(e.line, line_of(&text, "name = \"c", 0), "{e}");
    assert!(!e.to_string().contains('\n'), "{e}");
}

#[test]
fn missing_tls_section() {
    let text = minimal("").replace(
        "[tls]\nca = \"pki/ca.crt\"\ncert = \"pki/server.crt\"\nkey = \"pki/server.key\"\n",
        "",
    );
    let e = parse_err(&text);
    assert!(e.message.contains("tls"), "{e}");
    assert!(!e.to_string().contains('\n'), "{e}");
}

#[test]
fn no_app_at_all() {
    let text = "[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
    let e = parse_err(text);
    assert_eq!(e.key, "app");
    assert!(e.message.contains("[[app]]"), "{e}");
}

#[test]
fn load_of_a_missing_file_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tlb.toml");
    let e = Config::load(&path).unwrap_err();
    assert_eq!(e.file, path);
    let shown = e.to_string();
    assert!(shown.contains("tlb pki init"), "{shown}");
    assert!(shown.contains("--config"), "{shown}");
    assert!(shown.contains(&path.display().to_string()), "{shown}");
    assert!(!shown.contains('\n'), "{shown}");
}

#[test]
fn load_resolves_paths_against_the_files_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tlb.toml");
    std::fs::write(&path, minimal("")).unwrap();
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.tls.ca, dir.path().join("pki/ca.crt"));
    assert_eq!(c.path, path);
}

#[test]
fn cluster_defaults_name_the_instance_after_host_and_listener() {
    let c = parse(&minimal("[cluster]\nredis = \"redis://10.0.0.5:6379\"\n")).expect("loads");
    let cl = c.cluster.expect("[cluster]");
    assert_eq!(
        (cl.instances, cl.timeout, cl.liveness_ttl),
        (1, Duration::from_millis(20), Duration::from_secs(5))
    );
    let listen = c.apps[0].listen.to_string();
    let suffix = format!("/{listen}");
    assert!(
        cl.instance.ends_with(&suffix) && cl.instance.len() > suffix.len(),
        "{}",
        cl.instance
    );
    assert!(cl.password.is_none());
    assert_eq!((cl.prefix.as_str(), &cl.ca, &cl.cert_key), ("tlb", &None, &None));
    assert!(
        parse(&minimal("")).expect("loads").cluster.is_none(),
        "no [cluster], nothing shared"
    );
}

#[test]
fn cluster_mistakes_name_the_key_and_the_fix() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "redis = \"tcp://10.0.0.5:6379\"",
            "cluster.redis",
            "not redis or rediss",
        ),
        (
            "redis = \"redis://:pw@10.0.0.5\"",
            "cluster.redis",
            "redis_password_file",
        ),
        ("redis = \"rediss://10.0.0.5/#insecure\"", "cluster.redis", "no query"),
        ("redis = \"redis://10.0.0.5/db\"", "cluster.redis", "database number"),
        (
            "redis = \"redis://h\"\ninstance = \"\"",
            "cluster.instance",
            "1 to 200 bytes",
        ),
        (
            "redis = \"redis://h\"\ninstances = 0",
            "cluster.instances",
            "whole number",
        ),
        (
            "redis = \"redis://h\"\ntimeout = \"2s\"",
            "cluster.timeout",
            "4 x timeout",
        ),
        (
            "redis = \"redis://h\"\nliveness_ttl = \"500ms\"",
            "cluster.liveness_ttl",
            "at least 1s",
        ),
        (
            "redis = \"redis://h\"\nredis_password_file = \"/nonexistent/pw\"",
            "cluster.redis_password_file",
            "cannot read",
        ),
        (
            "redis = \"redis://h\"\nredis_ca = \"ca.crt\"",
            "cluster.redis_ca",
            "rediss://HOST:PORT",
        ),
        (
            "redis = \"rediss://h\"\nredis_cert = \"lb.crt\"",
            "cluster.redis_cert",
            "set both or neither",
        ),
        (
            "redis = \"rediss://h\"\nredis_key = \"lb.key\"",
            "cluster.redis_cert",
            "set both or neither",
        ),
        ("redis = \"redis://h\"\nprefix = \"a{b}\"", "cluster.prefix", "braces"),
        (
            "redis = \"redis://h\"\nprefix = \"\"",
            "cluster.prefix",
            "1 to 64 bytes",
        ),
    ];
    for (body, key, fragment) in cases {
        let text = minimal(&format!("[cluster]\n{body}\n"));
        let e = parse_err(&text);
        let last = body.lines().last().unwrap_or_default();
        assert_err(&e, line_of(&text, last, 0), key, fragment);
    }
}

#[test]
fn reuse_port_is_per_listener_and_names_each_process_in_a_fleet() {
    let c = parse(&minimal("reuse_port = true\n[cluster]\nredis = \"redis://10.0.0.5\"\n")).expect("loads");
    assert_eq!(c.listen_sockets(), vec![(c.apps[0].listen, true)]);
    let instance = c.cluster.expect("[cluster]").instance;
    let suffix = format!("/127.0.0.1:8443/pid={}", std::process::id());
    assert!(instance.ends_with(&suffix), "{instance}");
    assert!(
        !parse(&minimal("")).expect("loads").apps[0].reuse_port,
        "off by default"
    );
    let shared = minimal(
        "reuse_port = true\n\n[[app]]\nname = \"b\"\nlisten = \"127.0.0.1:8443\"\nserver_names = [\"b.internal\"]\nupstreams = [\"127.0.0.1:9002\"]\nreuse_port = false\n",
    );
    let e = parse_err(&shared);
    assert_err(
        &e,
        line_of(&shared, "reuse_port = false", 0),
        "app[1].reuse_port",
        "set the same reuse_port in both",
    );
}

#[test]
fn control_socket_is_resolved_next_to_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tlb.toml");
    let text = minimal("[control]\nsocket = \"run/tlb.sock\"\n");
    let c = Config::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.control.expect("[control]").socket, dir.path().join("run/tlb.sock"));
    assert!(parse(&minimal("")).expect("loads").control.is_none());
    let e = parse_err(&minimal("[control]\nsocket = 1\n"));
    assert!(e.to_string().contains("socket"), "{e}");
}
