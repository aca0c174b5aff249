//! Interoperability: the balancer driven by TLS clients nobody here wrote,
//! Python's `ssl` module and `openssl s_client`. Each test is skipped (with
//! a note on stderr) when its tool is not on PATH.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;
use tlb::core::tools::lab::Lab;

/// Limit for one external client run.
const RUN: Duration = Duration::from_secs(20);

const PY_CLIENT: &str = r#"
import socket, ssl, sys
host, port, ca, cert, key, msg = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(ca)
ctx.load_cert_chain(cert, key)
try:
    with socket.create_connection((host, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(msg.encode() + b"\n")
            buf = b""
            while buf.count(b"\n") < 2:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
            print("VERSION " + str(s.version()))
            sys.stdout.write(buf.decode())
except ssl.SSLError as e:
    print("SSLERROR " + str(e), file=sys.stderr)
    sys.exit(3)
except OSError as e:
    print("OSERROR " + str(e), file=sys.stderr)
    sys.exit(4)
"#;

fn python(lab: &Lab, client: &str, msg: &str) -> Option<Bounded> {
    if !have("python3", "--version") {
        eprintln!("SKIPPED: python3 is not on PATH");
        return None;
    }
    let (cert, key) = lab.pki.client(client);
    let port = lab.addr().port().to_string();
    let ca = lab.pki.ca_cert();
    Some(run_bounded(
        Command::new("python3")
            .arg("-c")
            .arg(PY_CLIENT)
            .arg("127.0.0.1")
            .arg(&port)
            .arg(&ca)
            .arg(&cert)
            .arg(&key)
            .arg(msg),
        b"",
        RUN,
    ))
}

fn openssl_args(lab: &Lab, client: &str) -> Vec<String> {
    let (cert, key) = lab.pki.client(client);
    [
        "s_client",
        "-connect",
        &lab.addr().to_string(),
        "-servername",
        "localhost",
        "-CAfile",
        &lab.pki.ca_cert().display().to_string(),
        "-verify_hostname",
        "localhost",
        "-verify_return_error",
        "-cert",
        &cert.display().to_string(),
        "-key",
        &key.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn have_openssl() -> bool {
    if have("openssl", "version") {
        return true;
    }
    eprintln!("SKIPPED: openssl is not on PATH");
    false
}

#[test]
fn python_ssl_client_gets_greeting_and_echo() {
    let lab = standard_lab(3);
    let Some(out) = python(&lab, "client2", "hello from python") else {
        return;
    };
    assert_eq!(out.code(), Some(0), "python client failed: {out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.first().copied(), Some("VERSION TLSv1.3"), "{out:?}");
    let greeting = lines.get(1).copied().unwrap_or_default();
    let up = greeter(greeting);
    assert!(["up1", "up2", "up3"].contains(&up.as_str()), "{greeting}");
    assert!(greeting.ends_with("sni=- identity=-"), "{greeting}");
    assert_eq!(lines.get(2).copied(), Some("hello from python"), "{out:?}");
    assert_eq!(totals(&lab, "echo").iter().sum::<u64>(), 1);
}

#[test]
fn python_ssl_client_not_authorized_gets_access_denied() {
    let lab = standard_lab(3);
    let Some(out) = python(&lab, "client4", "hello") else {
        return;
    };
    assert_eq!(out.code(), Some(3), "expected an SSL error: {out:?}");
    let text = out.stderr.to_ascii_lowercase();
    assert!(
        text.contains("access_denied") || text.contains("access denied"),
        "{out:?}"
    );
    assert_eq!(totals(&lab, "echo").iter().sum::<u64>(), 0);
}

#[test]
fn openssl_s_client_gets_greeting_and_echo() {
    if !have_openssl() {
        return;
    }
    let lab = standard_lab(3);
    let mut cmd = Command::new("openssl");
    cmd.args(openssl_args(&lab, "client1"))
        // Only application data on stdout; end the session at stdin EOF.
        .args(["-quiet", "-no_ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::spawn("openssl s_client", &mut cmd);
    let stdout = child.child.stdout.take().expect("stdout");
    let mut stderr = child.child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let (tx, rx) = mpsc::channel::<String>();
    let out_reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    let mut stdin = child.child.stdin.take().expect("stdin");
    stdin.write_all(b"hello from openssl\n").expect("writing to s_client");
    stdin.flush().expect("flush");

    let deadline = Instant::now() + RUN;
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l == "hello from openssl") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => panic!("no echo from s_client within {RUN:?}; got {lines:?}"),
        }
    }
    // stdin EOF: s_client sends close_notify and exits.
    drop(stdin);
    let status = child.wait_for(RUN);
    let _ = out_reader.join();
    let stderr = err_reader.join().unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "s_client: {status:?}, stderr {stderr}"
    );
    let up = greeter(&lines[0]);
    assert!(["up1", "up2", "up3"].contains(&up.as_str()), "{lines:?}");
    assert_eq!(lines.len(), 2, "{lines:?}");
}

#[test]
fn openssl_s_client_not_authorized_gets_access_denied() {
    if !have_openssl() {
        return;
    }
    let lab = standard_lab(3);
    let out = run_bounded(
        Command::new("openssl")
            .args(openssl_args(&lab, "client4"))
            .arg("-quiet"),
        b"hello\n",
        RUN,
    );
    assert!(out.status.is_some(), "s_client did not finish: {out:?}");
    let text = out.all().to_ascii_lowercase();
    assert!(text.contains("access denied"), "{out:?}");
    assert!(!out.stdout.contains("hello"), "{out:?}");
    assert_eq!(totals(&lab, "echo").iter().sum::<u64>(), 0);
}

#[test]
fn openssl_s_client_tls12_gets_protocol_version() {
    if !have_openssl() {
        return;
    }
    let lab = standard_lab(3);
    let out = run_bounded(
        Command::new("openssl")
            .args(openssl_args(&lab, "client1"))
            .args(["-tls1_2", "-quiet"]),
        b"hello\n",
        RUN,
    );
    assert!(out.status.is_some(), "s_client did not finish: {out:?}");
    assert_ne!(out.code(), Some(0), "{out:?}");
    let text = out.all().to_ascii_lowercase();
    assert!(text.contains("protocol version"), "{out:?}");
    assert_eq!(totals(&lab, "echo").iter().sum::<u64>(), 0);
}
