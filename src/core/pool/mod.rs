//! Upstream pools: the upstreams of an app, their health, and the choice of
//! one (least connections, retries).
//!
//! Dependencies run one way: [`policy`] (how an app judges, pure data) <-
//! [`health`] (one upstream's state machine, no I/O) <- [`upstream`] (an
//! upstream, its counters and slot guard) <- [`checker`] (active checks)
//! and [`balancer`] (pick and connect). Decisions read the injected
//! [`Clock`](crate::core::rt::clock::Clock).

pub mod balancer;
pub mod checker;
pub mod health;
pub mod policy;
pub mod upstream;

/// A clock that stands still unless a test moves it: health decisions in
/// unit tests then depend on `advance` only, never on how slow the machine
/// is (a `ManualClock` keeps running in real time).
#[cfg(test)]
pub(crate) mod stopped {
    use std::sync::Mutex;
    use std::time::{Duration, Instant, SystemTime};

    use crate::core::rt::clock::{Clock, SystemClock};

    #[derive(Debug)]
    pub(crate) struct StoppedClock {
        at: (Instant, SystemTime),
        ahead: Mutex<Duration>,
    }

    impl StoppedClock {
        pub(crate) fn new() -> std::sync::Arc<StoppedClock> {
            std::sync::Arc::new(StoppedClock {
                at: (SystemClock.instant(), SystemClock.now()),
                ahead: Mutex::new(Duration::ZERO),
            })
        }
        pub(crate) fn advance(&self, by: Duration) {
            *self.ahead.lock().unwrap() += by;
        }
    }

    impl Clock for StoppedClock {
        fn now(&self) -> SystemTime {
            self.at.1 + *self.ahead.lock().unwrap()
        }
        fn instant(&self) -> Instant {
            self.at.0 + *self.ahead.lock().unwrap()
        }
    }
}
