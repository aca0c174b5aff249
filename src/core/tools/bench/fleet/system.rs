//! The system `tlb bench --fleet N` loads: a real `redis-server` on
//! loopback and N in-process tlb instances (`tlb-1` .. `tlb-N`), all with
//! `[cluster]` on it (`instances = N`), sharing one temporary PKI and one
//! echo upstream, each on its own `127.0.0.1:0` port and runtime thread;
//! client1 is limited to `max_connections = L` (its rate left out of the
//! way), so the limit is the fleet's, kept in Redis.
//!
//! Promises: no fixed ports; listeners are bound before the configs are
//! written (no sleep for readiness); [`FleetSystem::start`] returns only
//! once every instance shares limits through Redis (polled, 10 s
//! deadline), else says which did not; a missing `redis-server` is one
//! line naming the fix; on drop (and on every error while starting) the
//! instances are stopped first (drain included), then the lab (upstream,
//! temporary directory with the CA key), then redis-server (killed, its
//! directory removed).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use smol::channel;

use crate::core::cluster::ClusterStatus;
use crate::core::config::writer::{
    AppSection, ClientSection, ClusterSection, ConfigWriter, GlobalLimitsSection, LimitsSection, TimeoutsSection,
    TlsSection,
};
use crate::core::config::{Config, DEFAULT_LIVENESS_TTL};
use crate::core::proxy::listener::bind_listener;
use crate::core::proxy::server::Server;
use crate::core::rt::Runtime;
use crate::core::tools::client::ClientOptions;
use crate::core::tools::lab::{Lab, LabOptions, LabPaths};
use crate::core::tools::redis::{RedisKiller, RedisOptions, RedisServer};

/// The limited client (a certificate of the lab's PKI).
pub const CLIENT: &str = "client1";

/// `[cluster] timeout` of the instances: far above a loopback round trip
/// (well under 1 ms), so a loaded machine does not make them decide
/// locally (the default, 20 ms, is for production networks).
pub const CLUSTER_TIMEOUT: Duration = Duration::from_millis(250);

/// `[cluster] liveness_ttl` of the instances: the default, written out so
/// the report can name it.
pub const LIVENESS_TTL: Duration = DEFAULT_LIVENESS_TTL;

/// How long the instances get to reach Redis.
const SHARED_WITHIN: Duration = Duration::from_secs(10);

/// One instance, as the load and the report see it.
#[derive(Clone)]
pub struct Member {
    /// `tlb-1` .. `tlb-N`: its `[cluster] instance`.
    pub name: String,
    pub addr: SocketAddr,
    pub server: Arc<Server>,
}

impl Member {
    /// Its fleet state (`mode`, errors, local decisions), as `/status` shows it.
    pub fn cluster(&self) -> Option<ClusterStatus> {
        self.server.cluster().map(|c| c.status())
    }

    fn shared(&self) -> bool {
        self.server.cluster().is_some_and(|c| c.is_up())
    }
}

/// redis-server and the N instances; stopped and removed on drop.
pub struct FleetSystem {
    pub members: Vec<Member>,
    // Dropped in this order: instances 2..N, the lab (instance 1, the
    // upstream and the PKI), redis-server.
    _others: Vec<ServerThread>,
    lab: Lab,
    redis: RedisServer,
}

impl FleetSystem {
    /// Starts redis-server, then `instances` instances on it with
    /// client1's fleet-wide `max_connections = limit`, and waits until all
    /// of them share limits through it.
    pub fn start(instances: usize, limit: u32, threads_each: usize) -> Result<FleetSystem> {
        if !RedisServer::installed() {
            bail!("--fleet needs redis-server, which is not installed (apt-get install redis-server)");
        }
        let redis = RedisServer::start(RedisOptions::default()).context("starting redis-server")?;
        let url = redis.url();
        let n = u32::try_from(instances).map_err(|_| anyhow!("{instances} instances is too many"))?;
        let lab_opts = LabOptions {
            upstreams: 1,
            greet: false,
            threads: threads_each,
            ..LabOptions::default()
        };
        let lab = Lab::start_with(lab_opts, |p| instance_config(p, &url, &name(1), n, limit))
            .with_context(|| format!("starting instance {}", name(1)))?;
        let mut members = vec![Member {
            name: name(1),
            addr: lab.addr(),
            server: lab.server.clone(),
        }];
        let mut others = Vec::with_capacity(instances.saturating_sub(1));
        for k in 2..=instances {
            let (m, t) = start_instance(&lab, &url, k, n, limit, threads_each)
                .with_context(|| format!("starting instance {}", name(k)))?;
            members.push(m);
            others.push(t);
        }
        let system = FleetSystem {
            members,
            _others: others,
            lab,
            redis,
        };
        system.wait_shared()?;
        Ok(system)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn redis_url(&self) -> String {
        self.redis.url()
    }

    /// Client options for [`CLIENT`] (the lab's CA, SNI `localhost`); the
    /// load connects them to each member's address itself.
    pub fn client(&self, resumption: bool) -> Result<ClientOptions> {
        self.lab.client_with(Some(CLIENT), "localhost", resumption)
    }

    /// The echo upstream every instance relays to.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.lab.paths.upstreams
    }

    /// The temporary directories (the lab's, with the CA key; redis-server's).
    pub fn dirs(&self) -> Vec<PathBuf> {
        vec![self.lab.dir().to_path_buf(), self.redis.dir().to_path_buf()]
    }

    /// A handle that kills redis-server from another thread (a signal
    /// handler quitting at once).
    pub fn redis_killer(&self) -> RedisKiller {
        self.redis.killer()
    }

    fn wait_shared(&self) -> Result<()> {
        let deadline = Instant::now() + SHARED_WITHIN;
        loop {
            let local: Vec<&str> = self
                .members
                .iter()
                .filter(|m| !m.shared())
                .map(|m| m.name.as_str())
                .collect();
            if local.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "instance(s) {} did not reach redis-server at {} within {}: their limits would be local",
                    local.join(", "),
                    self.redis.url(),
                    humantime::format_duration(SHARED_WITHIN)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `tlb-K`.
fn name(k: usize) -> String {
    format!("tlb-{k}")
}

/// The config of instance `name` of `n` on `redis`: app `echo` over the
/// lab's upstream, client1 limited to `limit` connections fleet-wide.
fn instance_config(p: &LabPaths, redis: &str, name: &str, n: u32, limit: u32) -> String {
    let client = ClientSection {
        limits: LimitsSection {
            max_connections: Some(limit),
            connection_rate: Some(1e6),
            burst: Some(1_000_000),
        },
        ..ClientSection::new(CLIENT, ["echo"])
    };
    ConfigWriter::new(TlsSection::pki(&p.pki_dir.display().to_string()))
        .limits(GlobalLimitsSection {
            max_connections: None,
            max_handshakes: Some(100_000),
            max_handshakes_per_ip: Some(100_000),
        })
        .timeouts(TimeoutsSection {
            drain: Some(Duration::from_secs(1)),
            ..TimeoutsSection::default()
        })
        .cluster(ClusterSection {
            instance: Some(name.into()),
            instances: Some(n),
            timeout: Some(CLUSTER_TIMEOUT),
            liveness_ttl: Some(LIVENESS_TTL),
            ..ClusterSection::new(redis)
        })
        .app(AppSection::new("echo", p.listen, &p.upstreams))
        .client(client)
        .render()
}

/// Instance `k` on `lab`'s PKI and upstream: its own listener, config file
/// (in the lab's directory) and runtime thread.
fn start_instance(
    lab: &Lab,
    redis: &str,
    k: usize,
    n: u32,
    limit: u32,
    threads: usize,
) -> Result<(Member, ServerThread)> {
    let listener = bind_listener(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = listener.local_addr().context("reading the listener address")?;
    let paths = LabPaths {
        listen: addr,
        admin: None,
        ..lab.paths.clone()
    };
    let path = lab.dir().join(format!("{}.toml", name(k)));
    std::fs::write(&path, instance_config(&paths, redis, &name(k), n, limit))
        .with_context(|| format!("writing {}", path.display()))?;
    let server = Server::new(Config::load(&path)?)?;
    let rt = Runtime::new(threads).context("starting the instance's runtime")?;
    let (stop, stop_rx) = channel::bounded::<()>(1);
    let srv = server.clone();
    let thread = std::thread::Builder::new()
        .name(name(k))
        .spawn(move || -> Result<()> {
            let ex = rt.executor().clone();
            rt.block_on(async move {
                srv.run(&ex, vec![listener], async move {
                    let _ = stop_rx.recv().await;
                })
                .await
            })
        })
        .context("starting the instance's thread")?;
    let member = Member {
        name: name(k),
        addr,
        server,
    };
    Ok((
        member,
        ServerThread {
            stop: Some(stop),
            thread: Some(thread),
        },
    ))
}

/// An instance's serving thread; stopped (and joined) on drop.
struct ServerThread {
    stop: Option<channel::Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
