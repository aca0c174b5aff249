//! A complete tlb system on loopback, in-process: a temporary PKI, echo
//! upstreams and the balancer, all on `127.0.0.1:0` ports. `tlb bench`
//! without `--target` runs its load through one; integration tests build
//! theirs with custom configs.
//!
//! Promises: no fixed ports, nothing written outside the temporary
//! directory, readiness without sleeps (listeners are bound before the
//! config is written), and everything stopped and removed on drop.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use smol::channel;

use crate::core::config::Config;
use crate::core::config::demo_clients;
use crate::core::config::writer::{AdminSection, AppSection, ConfigWriter, TlsSection};
use crate::core::ops::admin;
use crate::core::pki::{InitOptions, KeyType, Pki};
use crate::core::proxy::listener::bind_listener;
use crate::core::proxy::server::Server;
use crate::core::rt::Runtime;
use crate::core::rt::clock::Clock;
use crate::core::tls::ClientTlsFiles;
use crate::core::tools::client::ClientOptions;
use crate::core::tools::echo::{EchoOptions, serve_echo};

/// What the lab's config may refer to.
#[derive(Debug, Clone)]
pub struct LabPaths {
    /// The PKI directory (`ca.crt`, `server.crt`, `clients/...`).
    pub pki_dir: PathBuf,
    /// The balancer's listen address (already bound).
    pub listen: SocketAddr,
    /// Echo upstream addresses (already serving).
    pub upstreams: Vec<SocketAddr>,
    /// The admin endpoint's address (already bound), when asked for.
    pub admin: Option<SocketAddr>,
}

impl LabPaths {
    /// `[admin]\nlisten = "..."` (as the writer renders the section) when
    /// the lab has an admin listener, else "".
    pub fn admin_table(&self) -> String {
        self.admin.map(|a| AdminSection::new(a).to_string()).unwrap_or_default()
    }

    /// A config like `pki init` writes (app `echo` over the lab's upstreams,
    /// clients 1-3 allowed, client4 not), plus `[admin]` when the lab has
    /// one; add sections before rendering it.
    pub fn sample(&self) -> ConfigWriter {
        let tls = TlsSection::pki(&self.pki_dir.display().to_string());
        let mut w = ConfigWriter::new(tls).app(AppSection::new("echo", self.listen, &self.upstreams));
        if let Some(a) = self.admin {
            w = w.admin(AdminSection::new(a));
        }
        demo_clients(w, "echo", &lab_clients())
    }
}

/// The client certificates every lab PKI has: client1 to client4.
fn lab_clients() -> Vec<String> {
    (1..=4).map(|i| format!("client{i}")).collect()
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Number of echo upstreams.
    pub upstreams: usize,
    /// Upstreams greet with `<name> client=...` first.
    pub greet: bool,
    /// Runtime threads (0 = one per core).
    pub threads: usize,
    pub key_type: KeyType,
    /// Bind an admin listener too (its address is in [`LabPaths::admin`]).
    pub admin: bool,
    /// The balancer's wall clock (certificate validity, ticket age); tests
    /// pass a [`ManualClock`](crate::core::rt::clock::ManualClock) to move it.
    pub clock: Arc<dyn Clock>,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            upstreams: 3,
            greet: true,
            threads: 0,
            key_type: KeyType::EcdsaP256,
            admin: false,
            clock: crate::core::rt::clock::system(),
        }
    }
}

/// Everything a lab binds on `127.0.0.1:0` before its config is written:
/// upstream listeners, the balancer's listener, the optional admin one.
type Bound = (Vec<TcpListener>, TcpListener, Option<TcpListener>, LabPaths);

fn bind_all(opts: &LabOptions, pki: &Pki) -> Result<Bound> {
    let any = || bind_listener(SocketAddr::from(([127, 0, 0, 1], 0)));
    let up_listeners = (0..opts.upstreams).map(|_| any()).collect::<Result<Vec<_>>>()?;
    let upstreams = up_listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<std::io::Result<Vec<_>>>()
        .context("reading upstream addresses")?;
    let listener = any()?;
    let listen = listener.local_addr().context("reading the listener address")?;
    let admin_listener = if opts.admin { Some(any()?) } else { None };
    let admin = match &admin_listener {
        Some(l) => Some(l.local_addr().context("reading the admin address")?),
        None => None,
    };
    let paths = LabPaths {
        pki_dir: pki.dir().to_path_buf(),
        listen,
        upstreams,
        admin,
    };
    Ok((up_listeners, listener, admin_listener, paths))
}

/// A running system; stopped and deleted on drop.
pub struct Lab {
    pub paths: LabPaths,
    pub pki: Pki,
    pub server: Arc<Server>,
    pub config_path: PathBuf,
    stop: Option<channel::Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
    dir: tempfile::TempDir,
}

impl Lab {
    /// A lab whose config text is produced by `config` from the bound
    /// addresses and PKI paths.
    pub fn start_with(opts: LabOptions, config: impl FnOnce(&LabPaths) -> String) -> Result<Lab> {
        let dir = tempfile::Builder::new()
            .prefix("tlb-lab-")
            .tempdir()
            .context("creating a temporary directory")?;
        let pki = Pki::new(dir.path().join("pki"));
        pki.init(&InitOptions {
            clients: lab_clients(),
            server_names: vec![],
            key_type: opts.key_type,
            days: 30,
            force: false,
        })?;
        let (up_listeners, listener, admin_listener, paths) = bind_all(&opts, &pki)?;
        let config_path = dir.path().join("tlb.toml");
        std::fs::write(&config_path, config(&paths)).context("writing the lab config")?;
        let cfg = Config::load(&config_path)?;
        let server = Server::with_clock(cfg, opts.clock.clone())?;

        let rt = Runtime::new(opts.threads).context("starting the lab runtime")?;
        let (stop_tx, stop_rx) = channel::bounded::<()>(1);
        let srv = server.clone();
        let greet = opts.greet;
        let thread = std::thread::Builder::new()
            .name("tlb-lab".into())
            .spawn(move || -> Result<()> {
                let ex = rt.executor().clone();
                rt.block_on(async move {
                    for (i, l) in up_listeners.into_iter().enumerate() {
                        let rx = stop_rx.clone();
                        let opts = EchoOptions {
                            name: format!("up{}", i + 1),
                            greet,
                            tls: None,
                            proxy_protocol: false,
                        };
                        let ex2 = ex.clone();
                        ex.spawn(async move {
                            let _ = serve_echo(&ex2, l, opts, async move {
                                let _ = rx.recv().await;
                            })
                            .await;
                        })
                        .detach();
                    }
                    let _admin = admin_listener.map(|l| admin::spawn(&srv, &ex, l)).transpose()?;
                    srv.run(&ex, vec![listener], async move {
                        let _ = stop_rx.recv().await;
                    })
                    .await
                })
            })
            .context("starting the lab thread")?;
        Ok(Lab {
            paths,
            pki,
            server,
            config_path,
            stop: Some(stop_tx),
            thread: Some(thread),
            dir,
        })
    }

    /// The temporary directory holding everything the lab wrote (PKI, CA
    /// key included, and config); removed on drop. Created under
    /// `std::env::temp_dir()`, so `TMPDIR` decides where.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The balancer's address.
    pub fn addr(&self) -> SocketAddr {
        self.paths.listen
    }

    /// Client options for `client` (a name under `pki/clients`, or `None`
    /// for no client certificate), trusting the lab CA, SNI `localhost`.
    pub fn client(&self, client: Option<&str>) -> Result<ClientOptions> {
        self.client_with(client, "localhost", true)
    }

    /// Like [`Lab::client`] with an explicit server name and resumption setting.
    pub fn client_with(&self, client: Option<&str>, server_name: &str, resumption: bool) -> Result<ClientOptions> {
        let files = client.map(|c| self.pki.client(c));
        let tls_files = ClientTlsFiles {
            ca: &self.pki.ca_cert(),
            cert: files.as_ref().map(|f| f.0.as_path()),
            key: files.as_ref().map(|f| f.1.as_path()),
            allow_tls12: false,
            resumption,
        };
        ClientOptions::new(
            &self.addr().to_string(),
            server_name,
            &tls_files,
            Duration::from_secs(5),
        )
    }

    /// Rewrites the config file with `text` and reloads the server from it.
    pub fn reload(&self, text: &str) -> Result<()> {
        std::fs::write(&self.config_path, text).context("writing the lab config")?;
        self.server.reload(Config::load(&self.config_path)?)
    }

    /// Stops the system (drain included) and returns the server's result.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        self.stop.take();
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow!("the lab thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}
