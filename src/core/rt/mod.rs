//! A multi-threaded smol runtime: N threads driving one shared
//! [`smol::Executor`], plus small async helpers (timeouts).
//!
//! smol's global executor runs on one thread unless `SMOL_THREADS` is set;
//! tlb instead owns its executor so `--threads` means what it says. Worker
//! threads stop when the [`Runtime`] is dropped.

pub mod clock;
pub mod log;
pub mod net;

use std::future::Future;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use smol::{Executor, Timer, channel};

/// N threads running one executor. `block_on` runs on the calling thread as
/// the Nth worker.
pub struct Runtime {
    ex: Arc<Executor<'static>>,
    stop: Option<channel::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Runtime {
    /// `threads` = total worker count, including the thread that calls
    /// [`Runtime::block_on`]; 0 means one per available core.
    pub fn new(threads: usize) -> std::io::Result<Runtime> {
        let n = if threads == 0 { default_threads() } else { threads };
        let ex = Arc::new(Executor::new());
        let (stop, stop_rx) = channel::bounded::<()>(1);
        let mut handles = Vec::with_capacity(n.saturating_sub(1));
        for i in 1..n {
            let ex = ex.clone();
            let rx = stop_rx.clone();
            let h = std::thread::Builder::new()
                .name(format!("tlb-worker-{i}"))
                .spawn(move || {
                    let _ = smol::block_on(ex.run(rx.recv()));
                })?;
            handles.push(h);
        }
        Ok(Runtime {
            ex,
            stop: Some(stop),
            threads: handles,
        })
    }

    /// The shared executor, to spawn tasks on.
    pub fn executor(&self) -> &Arc<Executor<'static>> {
        &self.ex
    }

    /// Runs `fut` to completion on this thread while also serving the executor.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        smol::block_on(self.ex.run(fut))
    }

    /// Total worker threads.
    pub fn threads(&self) -> usize {
        self.threads.len() + 1
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Closing the channel makes every worker's `recv()` return.
        self.stop.take();
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

/// One thread per available core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The time limit of [`timeout`] passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("timed out")
    }
}

impl std::error::Error for Elapsed {}

/// `fut`, unless `limit` passes first.
pub async fn timeout<F: Future>(limit: Duration, fut: F) -> Result<F::Output, Elapsed> {
    futures_lite::future::or(async { Ok(fut.await) }, async {
        Timer::after(limit).await;
        Err(Elapsed)
    })
    .await
}

/// Raises the open-file soft limit to the hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("could not raise the open-file limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(s, _)| s).unwrap_or(0)
        }
    }
}
