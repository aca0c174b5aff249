//! Ctrl-C (SIGINT) and SIGTERM during `tlb bench`: the first one stops
//! the load, so the partial report is printed and the self-hosted system
//! (or `--fleet`'s redis-server and instances) is shut down and removed; a
//! second one quits at once, after killing that redis-server and removing
//! the temporary directories itself.
//!
//! Promises: the handlers are installed before the self-hosted system
//! writes anything, so no signal can leave its files (or a redis-server)
//! behind; no lock is held across an `.await` or while files are removed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use async_signal::{Signal, Signals};
use futures_lite::StreamExt;
use smol::channel;

use tlb::core::tools::client::ClientOptions;
use tlb::core::tools::lab::Lab;
use tlb::core::tools::redis::RedisKiller;

/// What a second signal cleans up before quitting at once.
#[derive(Debug, Clone)]
pub struct Leftovers {
    /// Temporary directories, removed.
    pub dirs: Vec<PathBuf>,
    /// A redis-server, killed first.
    pub redis: Option<RedisKiller>,
}

/// Where the self-hosted system is, for a second signal.
#[derive(Debug, Clone)]
enum LabState {
    /// None (yet, or any more): a second signal quits at once.
    None,
    /// Being created: its directory is not known yet, so a second signal
    /// waits for the first one's orderly stop instead of quitting.
    Starting,
    /// Running: a second signal kills its redis-server, removes its
    /// directories, then quits.
    Running(Leftovers),
}

/// The signal watcher's shared state.
struct Shared {
    lab: Mutex<LabState>,
    /// 130 (SIGINT) or 143 (SIGTERM): the exit status after an interrupt.
    code: AtomicI32,
}

/// Handles SIGINT and SIGTERM for the lifetime of the process.
pub struct Interrupts {
    /// Closed (never sent on) by the first signal.
    fired: channel::Receiver<()>,
    shared: Arc<Shared>,
}

impl Interrupts {
    /// Installs the handlers and starts the thread that watches them.
    pub fn install() -> Result<Interrupts> {
        let signals = Signals::new([Signal::Int, Signal::Term]).context("installing signal handlers")?;
        let (tx, rx) = channel::bounded::<()>(1);
        let shared = Arc::new(Shared {
            lab: Mutex::new(LabState::None),
            code: AtomicI32::new(130),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("tlb-bench-signals".into())
            .spawn(move || smol::block_on(watch(signals, tx, s)))
            .context("starting the signal watcher")?;
        Ok(Interrupts { fired: rx, shared })
    }

    /// Has a first signal come?
    pub fn fired(&self) -> bool {
        self.fired.is_closed()
    }

    /// Completes when the first signal comes.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + use<> {
        let rx = self.fired.clone();
        async move {
            let _ = rx.recv().await;
        }
    }

    /// The exit status after an interrupt: 130 for SIGINT, 143 for SIGTERM.
    pub fn exit_code(&self) -> i32 {
        self.shared.code.load(Ordering::Relaxed)
    }

    /// Starts the self-hosted system with `start`, telling the watcher
    /// where it lives once it exists.
    pub fn lab_starting(
        &self,
        start: impl FnOnce() -> Result<(Lab, ClientOptions, usize)>,
    ) -> Result<(Lab, ClientOptions, usize)> {
        self.hosting(start, |(lab, ..)| Leftovers {
            dirs: vec![lab.dir().to_path_buf()],
            redis: None,
        })
    }

    /// Starts what `start` stands up, telling the watcher what to clean
    /// up (`leftovers`) once it exists.
    pub fn hosting<T>(&self, start: impl FnOnce() -> Result<T>, leftovers: impl FnOnce(&T) -> Leftovers) -> Result<T> {
        self.set(LabState::Starting);
        let started = start();
        self.set(match &started {
            Ok(t) => LabState::Running(leftovers(t)),
            Err(_) => LabState::None,
        });
        started
    }

    /// The self-hosted system is gone (stopped and removed).
    pub fn lab_gone(&self) {
        self.set(LabState::None);
    }

    fn set(&self, state: LabState) {
        if let Ok(mut g) = self.shared.lab.lock() {
            *g = state;
        }
    }
}

/// The watcher: the first signal closes `tx` (the run stops and reports);
/// the next ones quit at once, killing redis-server and removing the
/// directories first (unless the system is still being created: then the
/// orderly stop is already coming).
async fn watch(mut signals: Signals, tx: channel::Sender<()>, shared: Arc<Shared>) {
    while let Some(sig) = signals.next().await {
        let code = match sig {
            Ok(Signal::Term) => 143,
            _ => 130,
        };
        if !tx.is_closed() {
            shared.code.store(code, Ordering::Relaxed);
            tx.close();
            eprintln!("\ntlb bench: stopping; the partial report follows (interrupt again to quit at once)");
            continue;
        }
        let state = shared.lab.lock().map(|g| g.clone()).unwrap_or(LabState::None);
        match state {
            LabState::Starting => {
                eprintln!("tlb bench: still starting the self-hosted system; it stops and is removed right after");
            }
            LabState::Running(left) => {
                if let Some(redis) = &left.redis {
                    redis.kill();
                }
                for dir in &left.dirs {
                    remove(dir);
                }
                eprintln!("tlb bench: interrupted again: quit at once (temporary files removed)");
                std::process::exit(code);
            }
            LabState::None => {
                eprintln!("tlb bench: interrupted again: quit at once");
                std::process::exit(code);
            }
        }
    }
}

/// Removes `dir` and everything in it; retried a few times, since the lab
/// may be removing it at the same moment (an entry vanishing mid-way makes
/// one pass fail).
fn remove(dir: &std::path::Path) {
    for _ in 0..5 {
        if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
            return;
        }
    }
}
