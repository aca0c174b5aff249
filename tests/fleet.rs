//! `[cluster]` end to end: two tlb instances sharing one real
//! `redis-server`, so that client1's `max_connections` holds across both
//! (in-process labs, each with its own PKI and echo upstream), the fleet's
//! state in `/metrics` and `/status`, and a `tlb serve` process killed with
//! SIGKILL whose connections the fleet forgets within `liveness_ttl`.
//! SKIP (loudly) without `redis-server`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use tlb::core::config::writer::{ClusterSection, ConfigWriter};
use tlb::core::tools::client::{ClientError, ClientOptions, ClientStream, connect_to, exchange};
use tlb::core::tools::lab::{Lab, LabOptions, LabPaths};

use crate::common::redis::{RedisServer, conn, counted_for, redis_or_skip};
use crate::common::*;

const TTL: Duration = Duration::from_secs(1);

/// The config of one instance of a fleet of two on `redis`, client1
/// limited to 4 connections (and a rate the tests' probes stay under).
fn fleet_config(p: &LabPaths, redis: &RedisServer, instance: &str) -> ConfigWriter {
    base(p, "")
        .cluster(ClusterSection {
            instance: Some(instance.into()),
            instances: Some(2),
            timeout: Some(Duration::from_millis(200)),
            liveness_ttl: Some(TTL),
            ..ClusterSection::new(&redis.url())
        })
        .app(app_section("echo", p.listen, &[], &ups(p)))
        .client(client_section(
            "client1",
            &["echo"],
            "max_connections = 4\nconnection_rate = 1000\nburst = 1000",
        ))
}

/// An in-process instance of the fleet, with an admin endpoint.
fn fleet_lab(redis: &RedisServer, instance: &str) -> Lab {
    let opts = LabOptions {
        admin: true,
        ..opts(1, true)
    };
    lab(opts, |p| fleet_config(p, redis, instance).render())
}

fn shared(lab: &Lab) -> bool {
    lab.server.cluster().is_some_and(|c| c.is_up())
}

/// An open, relayed connection of client1 (the upstream greeted it).
async fn hold(lab: &Lab) -> ClientStream {
    let opts = lab.client(Some("client1")).expect("client1");
    hold_at(&opts, lab.addr()).await
}

/// An open, relayed connection to `addr` with `opts`.
async fn hold_at(opts: &ClientOptions, addr: SocketAddr) -> ClientStream {
    let mut tls = connect_to(addr, opts).await.expect("connect");
    within("write", T, tls.write_all(b"hold\n")).await.expect("write");
    within("flush", T, tls.flush()).await.expect("flush");
    let mut b = [0u8; 1];
    within("greeting", T, tls.read_exact(&mut b))
        .await
        .expect("greeting: relayed");
    tls
}

/// Whether a new connection of client1 is refused after its handshake.
fn refused(lab: &Lab) -> bool {
    let opts = lab.client(Some("client1")).expect("client1");
    match smol::block_on(exchange(&opts, b"x\n", T)) {
        Err(ClientError::ClosedBeforeReply { .. }) => true,
        Ok(_) => false,
        Err(e) => panic!("neither relayed nor refused: {e}"),
    }
}

#[test]
fn max_connections_holds_across_two_instances() {
    let Some(redis) = redis_or_skip("max_connections_holds_across_two_instances") else {
        return;
    };
    let (a, b) = (fleet_lab(&redis, "a"), fleet_lab(&redis, "b"));
    wait_until("both instances share limits", T, || shared(&a) && shared(&b));
    let mut on_a = smol::block_on(async { vec![hold(&a).await, hold(&a).await] });
    let on_b = smol::block_on(async { vec![hold(&b).await, hold(&b).await] });
    assert!(refused(&a), "a 5th connection on A is refused");
    assert!(refused(&b), "a 5th connection on B is refused");
    let mut one = on_a.pop().expect("held on A");
    smol::block_on(async {
        within("close", T, one.close()).await.expect("close");
        let mut rest = Vec::new();
        within("EOF", T, one.read_to_end(&mut rest)).await.expect("EOF");
    });
    drop(one);
    wait_until("closing one on A lets one more in on B", T, || !refused(&b));
    let m = scrape(&b);
    assert_eq!(metric(&m, "tlb_cluster_up", ""), Some(1.0), "{m}");
    assert_eq!(metric(&m, "tlb_cluster_errors_total", ""), Some(0.0), "{m}");
    assert!(metric_sum(&m, "tlb_refused_total") >= 1.0, "{m}");
    assert_eq!(status(b.paths.admin.expect("admin"))["cluster"]["mode"], "shared");
    drop((on_a, on_b));
}

#[test]
fn a_killed_instance_is_forgotten_within_the_ttl() {
    let Some(redis) = redis_or_skip("a_killed_instance_is_forgotten_within_the_ttl") else {
        return;
    };
    let a = fleet_lab(&redis, "a");
    // B: a `tlb serve` process on A's PKI and upstream, on its own port.
    let b_paths = LabPaths {
        listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
        admin: None,
        ..a.paths.clone()
    };
    let b_config = a.dir().join("b.toml");
    std::fs::write(&b_config, fleet_config(&b_paths, &redis, "b").render()).expect("b.toml");
    let log = a.dir().join("b.log");
    let config_arg = b_config.to_str().expect("utf-8 path");
    let mut b = start_logged("tlb serve (b)", &["serve", "--config", config_arg], a.dir(), &log);
    wait_listening(b_paths.listen, &mut b, &log);
    wait_until("both instances share limits", T, || shared(&a));
    let opts = a.client(Some("client1")).expect("client1");
    let on_b = smol::block_on(async {
        vec![
            hold_at(&opts, b_paths.listen).await,
            hold_at(&opts, b_paths.listen).await,
        ]
    });
    let count = |instance: &str| counted_for(&mut conn(&redis), "tlb:{client1}:conns", instance);
    wait_until("B's two connections are counted in Redis", T, || count("b") == 2);
    let on_a = smol::block_on(async { vec![hold(&a).await, hold(&a).await] });
    assert!(refused(&a), "a 5th connection on A is refused while B holds 2");
    b.signal("KILL");
    let killed = Instant::now();
    assert!(b.wait_for(T).is_some(), "tlb serve (b) did not die");
    assert!(refused(&a), "right after the kill, B's connections still count");
    wait_until("B's connections are forgotten", TTL + T, || !refused(&a));
    let forgotten = killed.elapsed();
    assert!(
        forgotten <= TTL + Duration::from_millis(800),
        "forgotten after {forgotten:?}"
    );
    // The probe that got in has closed; once its release reached Redis, A holds 2.
    wait_until("the probe's release", T, || count("a") == 2);
    let more = smol::block_on(async { vec![hold(&a).await, hold(&a).await] });
    assert!(refused(&a), "A now holds all 4");
    assert_eq!(count("b"), 0, "B's connections are removed");
    drop((on_a, on_b, more));
}
