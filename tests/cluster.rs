//! `[cluster]` (tlb::core::cluster) against a real `redis-server`: two
//! instances share `max_connections` and `connection_rate`, a silent
//! instance's counts are forgotten within `liveness_ttl`, Redis stopped
//! means the local share within `timeout` and restarted means shared limits
//! again, and a Redis that answers late costs no more than `timeout`.
//!
//! Each test starts its own `redis-server` on a free port (SKIP, loudly,
//! when it is not installed).

use std::time::{Duration, Instant};

use tlb::core::cluster::{Cluster, ClusterSlot, Denied};
use tlb::core::config::{ClusterSettings, Limits};
use tlb::core::rt::Runtime;

use crate::common::redis::{RedisServer, conn, counted_for, redis_or_skip};
use crate::common::wait_until;

/// Generous for a loaded 2-core machine; the slow-Redis test sets its own.
const TIMEOUT: Duration = Duration::from_millis(200);
const TTL: Duration = Duration::from_secs(1);

fn settings(redis: &RedisServer, instance: &str) -> ClusterSettings {
    ClusterSettings {
        instances: 2,
        timeout: TIMEOUT,
        liveness_ttl: TTL,
        ..ClusterSettings::new(redis.url(), instance)
    }
}

fn limits(max: u32, rate: f64, burst: u32) -> Limits {
    Limits {
        max_connections: max,
        connection_rate: rate,
        burst,
    }
}

/// A started instance, waited until Redis is up for it.
fn instance(rt: &Runtime, s: ClusterSettings) -> Cluster {
    let c = Cluster::start(s, rt.executor()).expect("cluster start");
    wait_until("the instance reaches Redis", Duration::from_secs(10), || c.is_up());
    c
}

/// Instances `a` and `b` of one fleet on `redis`, both up.
fn two_instances(rt: &Runtime, redis: &RedisServer) -> (Cluster, Cluster) {
    (instance(rt, settings(redis, "a")), instance(rt, settings(redis, "b")))
}

fn admit(c: &Cluster, identity: &str, l: Limits) -> Result<ClusterSlot, Denied> {
    smol::block_on(c.admit(identity, l))
}

/// Connections of `identity` Redis counts for `instance`.
fn counted(redis: &RedisServer, identity: &str, instance: &str) -> usize {
    counted_for(&mut conn(redis), &format!("tlb:{{{identity}}}:conns"), instance)
}

#[test]
fn two_instances_share_max_connections() {
    let Some(redis) = redis_or_skip("two_instances_share_max_connections") else {
        return;
    };
    let rt = Runtime::new(2).expect("runtime");
    let (a, b) = two_instances(&rt, &redis);
    let l = limits(4, 1000.0, 1000);
    let a1 = admit(&a, "client1", l).expect("1st on A");
    let _a2 = admit(&a, "client1", l).expect("2nd on A");
    let _b1 = admit(&b, "client1", l).expect("1st on B");
    let _b2 = admit(&b, "client1", l).expect("2nd on B");
    assert_eq!(admit(&a, "client1", l).err(), Some(Denied::MaxConnections), "5th on A");
    assert_eq!(admit(&b, "client1", l).err(), Some(Denied::MaxConnections), "5th on B");
    assert!(admit(&b, "client2", l).is_ok(), "another identity has its own limit");
    assert_eq!(
        (counted(&redis, "client1", "a"), counted(&redis, "client1", "b")),
        (2, 2)
    );
    drop(a1);
    let mut b3 = None;
    wait_until("closing one on A lets one more in on B", Duration::from_secs(5), || {
        b3 = admit(&b, "client1", l).ok();
        b3.is_some()
    });
    assert_eq!(
        admit(&b, "client1", l).err(),
        Some(Denied::MaxConnections),
        "and only one"
    );
    assert_eq!((a.held("client1"), b.held("client1")), (1, 3));
    assert!(
        a.is_up() && b.is_up(),
        "no fallback happened: {:?} {:?}",
        a.status(),
        b.status()
    );
}

#[test]
fn two_instances_share_the_connection_rate() {
    let Some(redis) = redis_or_skip("two_instances_share_the_connection_rate") else {
        return;
    };
    let rt = Runtime::new(2).expect("runtime");
    let (a, b) = two_instances(&rt, &redis);
    let (rate, burst) = (10.0, 2);
    let l = limits(1000, rate, burst);
    let start = Instant::now();
    let mut admitted = [0u32; 2];
    // Both instances try as fast as they can for 1.5 s.
    while start.elapsed() < Duration::from_millis(1500) {
        for (i, c) in [&a, &b].into_iter().enumerate() {
            if admit(c, "client1", l).is_ok() {
                admitted[i] += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let total = admitted[0] + admitted[1];
    let most = f64::from(burst) + rate * elapsed + 1.0;
    assert!(
        f64::from(total) <= most,
        "{admitted:?} admitted in {elapsed:.2}s: over {most:.1}"
    );
    assert!(
        f64::from(total) >= rate * elapsed * 0.6,
        "{admitted:?} in {elapsed:.2}s: too few"
    );
    assert!(admitted[0] > 0 && admitted[1] > 0, "both instances admit: {admitted:?}");
    assert!(
        a.is_up() && b.is_up(),
        "decided by Redis, not the local share: {:?}",
        a.status()
    );
}

#[test]
fn a_silent_instance_is_forgotten_within_the_ttl() {
    let Some(redis) = redis_or_skip("a_silent_instance_is_forgotten_within_the_ttl") else {
        return;
    };
    let rt = Runtime::new(2).expect("runtime");
    let (a, b) = two_instances(&rt, &redis);
    let l = limits(4, 1000.0, 1000);
    let held_by_a: Vec<_> = (0..3).map(|_| admit(&a, "client1", l).expect("on A")).collect();
    let _b1 = admit(&b, "client1", l).expect("on B");
    // A goes silent without releasing anything (as if killed).
    a.leave();
    let silent = Instant::now();
    drop(held_by_a);
    assert_eq!(counted(&redis, "client1", "a"), 3, "a silent instance sends no release");
    assert_eq!(
        admit(&b, "client1", l).err(),
        Some(Denied::MaxConnections),
        "A's counts still hold"
    );
    let mut got = Vec::new();
    wait_until("A's connections are forgotten", TTL + Duration::from_secs(2), || {
        if let Ok(s) = admit(&b, "client1", l) {
            got.push(s);
        }
        got.len() == 3
    });
    let forgotten = silent.elapsed();
    assert!(
        forgotten <= TTL + Duration::from_millis(500),
        "forgotten after {forgotten:?}"
    );
    assert_eq!(counted(&redis, "client1", "a"), 0, "A's connections are removed");
    assert_eq!(
        admit(&b, "client1", l).err(),
        Some(Denied::MaxConnections),
        "B holds all 4"
    );
}

#[test]
fn redis_stopped_means_the_local_share_and_restarted_means_shared_limits() {
    let test = "redis_stopped_means_the_local_share_and_restarted_means_shared_limits";
    let Some(mut redis) = redis_or_skip(test) else { return };
    let rt = Runtime::new(2).expect("runtime");
    let (a, b) = two_instances(&rt, &redis);
    let l = limits(4, 1000.0, 1000);
    redis.stop();
    // Share: 4 / 2 instances = 2 on A, decided without waiting on Redis.
    let mut held = Vec::new();
    for n in 1..=3 {
        let t = Instant::now();
        let r = admit(&a, "client1", l);
        assert!(
            t.elapsed() <= TIMEOUT + Duration::from_millis(100),
            "admit {n} took {:?}",
            t.elapsed()
        );
        match n {
            1 | 2 => held.push(r.expect("within the local share")),
            _ => assert_eq!(r.err(), Some(Denied::MaxConnections), "over the share of 2"),
        }
    }
    let st = a.status();
    assert_eq!((st.mode, st.up), ("local", false), "{st:?}");
    assert!(st.errors >= 1 && st.local_decisions >= 2, "{st:?}");
    // B holds nothing, so only its keeper's PING (every third of the TTL)
    // can tell it Redis is gone: its /status must say so all the same.
    wait_until("idle B notices Redis is gone", TTL, || !b.is_up());
    redis.restart().expect("restarting redis-server");
    // Up again on a new connection (B's old one died with the server: a
    // first admit on it would be decided locally, and counted in Redis
    // only at B's next refresh).
    wait_until("A and B reach Redis again", Duration::from_secs(10), || {
        a.is_up() && b.is_up()
    });
    // A's two connections are written back, and the fleet-wide limit holds.
    wait_until("A's count is reconciled", Duration::from_secs(5), || {
        counted(&redis, "client1", "a") == 2
    });
    let _b1 = admit(&b, "client1", l).expect("3rd, on B");
    let _b2 = admit(&b, "client1", l).expect("4th, on B");
    assert_eq!(admit(&b, "client1", l).err(), Some(Denied::MaxConnections), "5th, on B");
    assert_eq!(a.status().mode, "shared");
}

#[test]
fn a_slow_redis_costs_at_most_the_timeout() {
    let Some(redis) = redis_or_skip("a_slow_redis_costs_at_most_the_timeout") else {
        return;
    };
    let rt = Runtime::new(2).expect("runtime");
    let timeout = Duration::from_millis(50);
    let a = instance(
        &rt,
        ClusterSettings {
            timeout,
            ..settings(&redis, "a")
        },
    );
    // Limits high enough that the local share (half of each), which
    // decides in memory at a far higher rate than Redis, never refuses.
    let l = limits(u32::MAX, 1e12, u32::MAX);
    let mut sleeper = conn(&redis);
    let sleeping = std::thread::spawn(move || {
        let _: redis::RedisResult<()> = redis::cmd("DEBUG").arg("SLEEP").arg("1.5").query(&mut sleeper);
    });
    let (start, mut worst, mut saw_local) = (Instant::now(), Duration::ZERO, false);
    while start.elapsed() < Duration::from_secs(1) {
        let t = Instant::now();
        let r = admit(&a, "client1", l);
        worst = worst.max(t.elapsed());
        assert!(r.is_ok(), "fails open: {r:?}");
        saw_local |= !a.is_up();
    }
    assert!(worst <= timeout + Duration::from_millis(100), "an admit took {worst:?}");
    assert!(saw_local, "the late answers turned the limits local: {:?}", a.status());
    sleeping.join().expect("DEBUG SLEEP");
    wait_until("A is back on Redis", Duration::from_secs(10), || a.is_up());
}
