//! The README's "Put your own service behind tlb" recipe, run as written:
//! each line of its shell blocks (with the `tlb` under test first on PATH)
//! and its TOML block appended to the walk-through's `tlb.toml`, with the
//! README's fixed ports swapped for free ones. Then what the text around it
//! says: another client of the CA is refused, a new client takes effect on
//! SIGHUP, a new listen address does not.
//!
//! Needs `python3` (the stand-in service) and `curl`: without them the test
//! is skipped with a loud note on stderr.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Bounded, ChildGuard, free_port, have, run_bounded, tlb_bin, wait_until};

const SECTION: &str = "## Put your own service behind tlb";
/// The ports the recipe is written with: the service's and tlb's.
const SERVICE_PORT: &str = "8080";
const LISTEN_PORT: &str = "8444";
/// Limit for one command of the recipe.
const CMD: Duration = Duration::from_secs(30);

/// A fenced block of the recipe.
#[derive(Debug)]
pub(crate) enum Block {
    Sh(Vec<String>),
    Toml(String),
}

/// The `sh` and `toml` blocks of the README's recipe section, in order.
fn recipe(readme: &str) -> Vec<Block> {
    blocks_of(readme, SECTION)
}

/// The `sh` and `toml` blocks of the README's section headed `section`
/// (up to the next `## ` heading), in order.
pub(crate) fn blocks_of(readme: &str, section: &str) -> Vec<Block> {
    let start = readme
        .find(section)
        .unwrap_or_else(|| panic!("the README has no section {section:?}"));
    let body = &readme[start + section.len()..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    let mut blocks = Vec::new();
    let mut open: Option<(String, Vec<String>)> = None;
    for line in body.lines() {
        match open.take() {
            None => {
                if let Some(lang) = line.strip_prefix("```") {
                    open = Some((lang.trim().to_string(), Vec::new()));
                }
            }
            Some((lang, lines)) if line.starts_with("```") => match lang.as_str() {
                "sh" => blocks.push(Block::Sh(lines)),
                "toml" => blocks.push(Block::Toml(lines.join("\n") + "\n")),
                other => panic!("recipe block of unexpected kind {other:?}"),
            },
            Some((lang, mut lines)) => {
                lines.push(line.to_string());
                open = Some((lang, lines));
            }
        }
    }
    blocks
}

/// The recipe's processes and files, in a temporary walk-through directory.
struct Run {
    dir: tempfile::TempDir,
    service: String,
    listen: String,
    serve: Option<ChildGuard>,
    others: Vec<ChildGuard>,
}

impl Run {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `text` with the README's ports replaced by this run's.
    fn ports(&self, text: &str) -> String {
        text.replace(SERVICE_PORT, &self.service)
            .replace(LISTEN_PORT, &self.listen)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.path().join("serve.log")).unwrap_or_default()
    }

    /// `sh -c line` in the directory, with the tlb under test first on PATH
    /// and no proxy settings.
    fn sh(&self, line: &str) -> Command {
        let bin_dir = Path::new(tlb_bin()).parent().expect("the binary's directory");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![PathBuf::from(bin_dir)];
        dirs.extend(std::env::split_paths(&path));
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(line).current_dir(self.path());
        cmd.env("PATH", std::env::join_paths(dirs).expect("PATH"))
            .env_remove("RUST_LOG");
        for var in [
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Runs one line, bounded; panics (with the serve log) unless it succeeds.
    fn run(&self, line: &str) -> Bounded {
        let out = run_bounded(&mut self.sh(line), b"", CMD);
        assert_eq!(
            out.code(),
            Some(0),
            "`{line}` failed: {out:?}\n--- tlb serve log ---\n{}",
            self.log()
        );
        out
    }

    /// Starts a background line (`... &`) and waits until it listens.
    fn start(&mut self, line: &str) {
        let (port, log) = if line.starts_with("python3 ") {
            (self.service.clone(), "service.log")
        } else if line.starts_with("tlb serve") {
            (self.listen.clone(), "serve.log")
        } else {
            panic!("the recipe starts {line:?} in the background: which port is it ready on?");
        };
        let file = fs::File::create(self.path().join(log)).expect("log file");
        let mut cmd = self.sh(&format!("exec {line}"));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().expect("log file")))
            .stderr(Stdio::from(file));
        let mut child = ChildGuard::spawn(line, &mut cmd);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("an address");
        let deadline = Instant::now() + CMD;
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            if let Ok(Some(status)) = child.child.try_wait() {
                let log = fs::read_to_string(self.path().join(log)).unwrap_or_default();
                panic!("`{line}` exited ({status}) before listening on {addr}:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "`{line}`: {addr} not listening within {CMD:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if line.starts_with("tlb serve") {
            self.serve = Some(child);
        } else {
            self.others.push(child);
        }
    }

    fn append(&self, toml: &str) {
        let path = self.path().join("tlb.toml");
        let mut text = fs::read_to_string(&path).expect("tlb.toml");
        text.push('\n');
        text.push_str(toml);
        fs::write(&path, text).expect("tlb.toml");
    }

    /// `curl` of the recipe's URL with client `name`'s certificate.
    fn curl_as(&self, name: &str) -> Bounded {
        let line = format!(
            "curl -sS --cert pki/clients/{name}.crt --key pki/clients/{name}.key --cacert pki/ca.crt https://localhost:{}/",
            self.listen
        );
        run_bounded(&mut self.sh(&line), b"", CMD)
    }

    fn hup(&self) {
        self.serve.as_ref().expect("tlb serve is running").signal("HUP");
    }
}

#[test]
fn the_readme_recipe_puts_a_web_service_behind_tlb() {
    let missing: Vec<&str> = [("python3", "--version"), ("curl", "--version")]
        .into_iter()
        .filter(|(p, a)| !have(p, a))
        .map(|(p, _)| p)
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "\n******** SKIPPED the_readme_recipe_puts_a_web_service_behind_tlb: {} not on PATH (install them to run the README recipe test) ********\n",
            missing.join(" and ")
        );
        return;
    }
    let blocks = recipe(include_str!("../README.md"));
    assert!(blocks.len() >= 3, "the recipe lost its blocks: {blocks:?}");
    let mut run = Run {
        dir: tempfile::tempdir().expect("tempdir"),
        service: free_port().to_string(),
        listen: free_port().to_string(),
        serve: None,
        others: Vec::new(),
    };
    // The walk-through's directory: `tlb pki init`, its app moved off 8443.
    run.run("tlb pki init");
    let config = fs::read_to_string(run.path().join("tlb.toml")).expect("tlb.toml");
    assert!(config.contains("127.0.0.1:8443"), "pki init's app moved?\n{config}");
    fs::write(
        run.path().join("tlb.toml"),
        config.replace("127.0.0.1:8443", &format!("127.0.0.1:{}", free_port())),
    )
    .expect("tlb.toml");

    let mut served = Vec::new();
    for block in &blocks {
        match block {
            Block::Toml(text) => run.append(&run.ports(text)),
            Block::Sh(lines) => {
                for line in lines {
                    let line = run.ports(line.split(" #").next().unwrap_or("").trim());
                    match line.strip_suffix('&') {
                        Some(background) => run.start(background.trim()),
                        None => {
                            let out = run.run(&line);
                            if line.starts_with("curl ") || line.contains("| tlb client") {
                                served.push((line, out.stdout));
                            }
                        }
                    }
                }
            }
        }
    }
    let page = fs::read_to_string(run.path().join("site/index.html")).expect("the recipe's page");
    assert!(!page.trim().is_empty(), "the recipe serves an empty page");
    assert!(
        served.len() >= 2,
        "the recipe should reach the service with curl and tlb client: {served:?}"
    );
    for (line, stdout) in &served {
        assert!(
            stdout.contains(page.trim()),
            "`{line}` did not print the page:\n{stdout}"
        );
    }

    // Every other certificate of the CA is refused in the handshake.
    let refused = run.curl_as("client1");
    assert_ne!(refused.code(), Some(0), "client1 reached app web: {refused:?}");
    assert!(refused.stderr.contains("access denied"), "{}", refused.stderr);

    // A new client takes effect on SIGHUP, without a restart.
    run.run("tlb pki issue bob");
    run.append("[[client]]\nname = \"bob\"\napps = [\"web\"]\n");
    run.hup();
    wait_until("bob admitted after the reload", CMD, || {
        run.curl_as("bob").stdout.contains(page.trim())
    });

    // A new listen address is bound by a reload; the old one keeps serving.
    let added = free_port();
    run.append(&format!(
        "[[app]]\nname = \"web2\"\nlisten = \"127.0.0.1:{added}\"\nupstreams = [\"127.0.0.1:{}\"]\n",
        run.service
    ));
    run.hup();
    wait_until("the reload binds the new listener and accepts on it", CMD, || {
        std::net::TcpStream::connect(("127.0.0.1", added)).is_ok() && run.log().contains("added by a reload")
    });
    let still = run.curl_as("alice");
    assert!(still.stdout.contains(page.trim()), "{still:?}\n{}", run.log());
}
