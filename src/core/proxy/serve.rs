//! Serving: [`Server::run`] starts accepting on the app listeners (see
//! [`accepting`](super::accepting), which follows reloads), runs the
//! active health checks of the current generation (restarting them on
//! reload) and the certificate watcher, and drains on shutdown.
//!
//! Promises: after shutdown, no listener accepts, and open connections get
//! `timeouts.drain`, then are cut.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use smol::{Executor, Task, Timer, channel};
use tracing::{info, warn};

use crate::core::cluster::Cluster;
use crate::core::pool::checker;
use crate::core::proxy::accepting::{ConnChannels, app_listener};
use crate::core::proxy::generation::Generation;
use crate::core::proxy::proxy_header;
use crate::core::proxy::server::Server;
use crate::core::proxy::watch;
use crate::core::rt::timeout;

/// How long connections still open after the drain get to notice the cut.
const CUT_GRACE: Duration = Duration::from_secs(5);

impl Server {
    /// Serves `listeners` until `shutdown` resolves; then stops accepting,
    /// lets open connections finish for `timeouts.drain`, and returns.
    /// Each listener's local address must be an app's `listen` address
    /// ([`Server::bind`] binds them). Active health checks run meanwhile.
    /// The admin endpoint is the caller's: spawn `ops::admin::serve` next
    /// to this (its `/healthz` reads [`Server::is_draining`]).
    pub async fn run<S>(
        self: &Arc<Self>,
        ex: &Arc<Executor<'static>>,
        listeners: Vec<TcpListener>,
        shutdown: S,
    ) -> Result<()>
    where
        S: Future<Output = ()>,
    {
        let generation = self.current();
        log_limits(&generation);
        if let Some(settings) = generation.config.cluster.clone() {
            let cluster = Cluster::start(settings, ex).map_err(anyhow::Error::msg)?;
            let _ = self.cluster.set(cluster);
        }
        // Open connections hold a sender; when all are dropped, `recv` ends.
        let (conn_tx, conn_rx) = channel::bounded::<()>(1);
        // Closing `hard_tx` cuts every connection still open after the drain.
        let (hard_tx, hard_rx) = channel::bounded::<()>(1);
        let (stop_tx, stop_rx) = channel::bounded::<()>(1);
        let first = listeners
            .into_iter()
            .map(|l| app_listener(&generation, l, ""))
            .collect::<Result<Vec<_>>>()?;
        for l in &first {
            self.keep_copy(l);
        }
        let conns = ConnChannels {
            held: conn_tx,
            hard: hard_rx,
        };
        let accepting = ex.spawn(self.clone().serve_listeners(ex.clone(), first, conns, stop_rx));
        let checks = ex.spawn(self.clone().supervise_health_checks(ex.clone()));
        // [tls] watch and the certificate expiry warnings.
        let watch = ex.spawn(watch::run(self.clone()));
        let summaries = ex.spawn(self.clone().log_summaries());
        shutdown.await;
        self.draining.store(true, Ordering::Relaxed);
        drop(stop_tx);
        accepting.await;
        self.drain(conn_rx, hard_tx).await;
        if let Some(c) = self.cluster() {
            c.leave();
        }
        drop(checks);
        drop(watch);
        drop(summaries);
        info!("stopped");
        Ok(())
    }

    /// Waits up to `timeouts.drain` for the open connections (holders of
    /// `conn_rx`'s senders) to end; then cuts the rest by closing `hard_tx`.
    async fn drain(&self, conn_rx: channel::Receiver<()>, hard_tx: channel::Sender<()>) {
        let drain = self.current().config.timeouts.drain;
        let open = self.metrics.active.load(Ordering::Relaxed);
        if open > 0 {
            info!("draining {open} open connection(s) for up to {drain:?}");
        }
        if timeout(drain, conn_rx.recv()).await.is_err() {
            warn!(
                "drain period over: closing {} connection(s)",
                self.metrics.active.load(Ordering::Relaxed)
            );
            drop(hard_tx);
            // Connections notice the closed channel at once; wait for them.
            let _ = timeout(CUT_GRACE, conn_rx.recv()).await;
        }
    }

    /// Runs the active checks of the current generation; on each reload,
    /// cancels them and starts the new generation's (upstream state is kept).
    async fn supervise_health_checks(self: Arc<Self>, ex: Arc<Executor<'static>>) {
        loop {
            let generation = self.current();
            let mut tasks: Vec<Task<()>> = Vec::new();
            for app in &generation.apps {
                let policy = app.balancer.policy();
                if policy.active.is_none() {
                    continue;
                }
                for u in app.balancer.upstreams() {
                    tasks.push(ex.spawn(checker::check_loop(
                        app.balancer.app().clone(),
                        u.clone(),
                        app.balancer.tls().cloned(),
                        policy.clone(),
                        self.clock().clone(),
                        app.proxy_protocol.map_or(&[][..], proxy_header::health_check_header),
                    )));
                }
            }
            if self.reloaded_rx.recv().await.is_err() {
                return;
            }
            drop(tasks);
        }
    }

    /// Once a second: the summary of throttled log lines (caps, accept errors).
    async fn log_summaries(self: Arc<Self>) {
        loop {
            Timer::after(Duration::from_secs(1)).await;
            let now = Instant::now();
            self.log_cap_summary(now);
            if let Some(n) = self.accept_log.flush(now) {
                warn!("accept failed {n} more time(s) in the last second");
            }
        }
    }
}

fn log_limits(g: &Generation) {
    let l = &g.config.limits;
    info!(
        "limits: max_connections {}{}, max_handshakes {}, max_handshakes_per_ip {}",
        g.max_connections,
        if l.max_connections.is_none() {
            " (from the open-file limit)"
        } else {
            ""
        },
        l.max_handshakes,
        l.max_handshakes_per_ip
    );
}
