//! The load of `tlb bench --fleet`: one client's connections, spread
//! round-robin over the instances, each opened (TCP, mTLS), confirmed by
//! the echo of one message, held for [`HOLD`], closed and opened again
//! until the deadline (a refused one is retried after [`RETRY`]); and the
//! counters that say how many were held at once.
//!
//! Promises: a connection counts as held from the moment its whole echo
//! came back until just before its close begins, so the loader's count
//! never exceeds what the instances hold at that moment (an instance
//! admits a connection before relaying its first byte, and gives it back
//! after the close); the fleet-wide count is one atomic, so each of its
//! values is how many were held at one instant across all instances, and
//! its peak is kept with `fetch_max` on every increment (one counter per
//! instance likewise); a task stopped mid-hold gives its count back (a
//! guard, dropped before the connection); every network wait has a
//! timeout; a refusal (handshake done, closed before any echo) is told
//! apart from other errors by the bench's one classifier.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use smol::Timer;
use smol::channel::Receiver;

use crate::core::rt::timeout;
use crate::core::tools::bench::diagnose::{self, Class, Failure};
use crate::core::tools::client::{ClientOptions, ClientStream, connect_tcp, tls_handshake};

/// How long each admitted connection is held before it is closed (and
/// reopened): long enough that the fleet sits at its limit, short enough
/// that slots keep moving between instances.
pub const HOLD: Duration = Duration::from_millis(200);

/// The pause after a refused or failed attempt (no spinning on refusals).
pub const RETRY: Duration = Duration::from_millis(20);

/// A count of connections held now, and its peak.
#[derive(Debug, Default)]
pub struct Gauge {
    now: AtomicU64,
    peak: AtomicU64,
}

impl Gauge {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst).saturating_add(1);
        self.peak.fetch_max(n, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }

    pub fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }
}

/// One instance's live counters (as the loader sees them).
#[derive(Debug, Default)]
pub struct InstanceLive {
    /// Connections whose echo came back.
    pub admitted: AtomicU64,
    /// Connections closed after the handshake, before any echo.
    pub refused: AtomicU64,
    /// Every other failed attempt.
    pub errors: AtomicU64,
    pub held: Gauge,
}

/// The run's live counters: the fleet-wide gauge and one set per instance.
#[derive(Debug)]
pub struct FleetLive {
    pub held: Gauge,
    pub instances: Vec<InstanceLive>,
}

impl FleetLive {
    pub fn new(instances: usize) -> FleetLive {
        FleetLive {
            held: Gauge::default(),
            instances: (0..instances).map(|_| InstanceLive::default()).collect(),
        }
    }

    /// (admitted, refused, errors) over all instances.
    pub fn totals(&self) -> (u64, u64, u64) {
        self.instances.iter().fold((0, 0, 0), |(a, r, e), i| {
            (
                a + i.admitted.load(Ordering::Relaxed),
                r + i.refused.load(Ordering::Relaxed),
                e + i.errors.load(Ordering::Relaxed),
            )
        })
    }
}

/// One connection held: counted in both gauges until dropped.
struct Held<'a> {
    fleet: &'a Gauge,
    instance: &'a Gauge,
}

impl<'a> Held<'a> {
    fn new(fleet: &'a Gauge, instance: &'a Gauge) -> Held<'a> {
        instance.enter();
        fleet.enter();
        Held { fleet, instance }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.fleet.leave();
        self.instance.leave();
    }
}

/// What one task connects with and to.
pub struct Target {
    pub client: ClientOptions,
    pub addr: SocketAddr,
    /// Its index in [`FleetLive::instances`].
    pub index: usize,
    pub size: usize,
    pub op_timeout: Duration,
}

/// One connection's task: the hold loop until `deadline`, or until `stop`
/// is closed. Returns its errors by label (refusals are counted, not
/// listed).
pub async fn task(t: Target, live: Arc<FleetLive>, deadline: Instant, stop: Receiver<()>) -> BTreeMap<String, u64> {
    let mut errors = BTreeMap::new();
    let work = hold_loop(&t, &live, deadline, &mut errors);
    futures_lite::future::or(work, async {
        let _ = stop.recv().await;
    })
    .await;
    errors
}

async fn hold_loop(t: &Target, live: &FleetLive, deadline: Instant, errors: &mut BTreeMap<String, u64>) {
    let Some(me) = live.instances.get(t.index) else {
        return;
    };
    let msg = payload(t.size);
    let mut buf = vec![0u8; msg.len()];
    while Instant::now() < deadline {
        match attempt(t, &msg, &mut buf).await {
            Ok(mut s) => {
                me.admitted.fetch_add(1, Ordering::Relaxed);
                {
                    let _held = Held::new(&live.held, &me.held);
                    let until = Instant::now().checked_add(HOLD).map_or(deadline, |u| u.min(deadline));
                    Timer::at(until).await;
                } // given back before the close begins
                let _ = timeout(Duration::from_secs(1), s.close()).await;
            }
            Err(f) if f.class == Class::ClosedBeforeReply => {
                me.refused.fetch_add(1, Ordering::Relaxed);
                Timer::after(RETRY).await;
            }
            Err(f) => {
                me.errors.fetch_add(1, Ordering::Relaxed);
                *errors.entry(f.label).or_insert(0) += 1;
                Timer::after(RETRY).await;
            }
        }
    }
}

/// `size - 1` dots and a newline.
fn payload(size: usize) -> Vec<u8> {
    let mut p = vec![b'.'; size.max(1)];
    if let Some(last) = p.last_mut() {
        *last = b'\n';
    }
    p
}

/// Connects, handshakes, sends `msg` and reads its whole echo into `buf`:
/// the connection, admitted, or why not.
async fn attempt(t: &Target, msg: &[u8], buf: &mut [u8]) -> Result<ClientStream, Failure> {
    let tcp = connect_tcp(t.addr, t.client.connect_timeout)
        .await
        .map_err(|e| diagnose::of_connect(&e))?;
    let mut s = match tls_handshake(tcp, &t.client).await {
        Some(Ok(s)) => s,
        Some(Err(e)) => return Err(diagnose::of_handshake(&e)),
        None => return Err(diagnose::timeout("TLS handshake")),
    };
    let echo = timeout(t.op_timeout, async {
        s.write_all(msg).await?;
        s.flush().await?;
        s.read_exact(buf).await
    })
    .await;
    match echo {
        Ok(Ok(())) => Ok(s),
        Ok(Err(e)) => Err(diagnose::of_exchange(&e, true)),
        Err(_) => Err(diagnose::timeout("echo")),
    }
}
