//! The fleet tests' `redis-server` (`tlb::core::tools::redis`): skipped
//! loudly when not installed, plus a plain connection for checks and
//! faults (`DEBUG SLEEP`).

use std::time::Duration;

pub use tlb::core::tools::redis::{RedisOptions, RedisServer};

/// `None`, after a loud SKIP line, when `redis-server` is not installed
/// (`.ci/run` installs it).
pub fn redis_or_skip(test: &str) -> Option<RedisServer> {
    redis_with_or_skip(test, RedisOptions::default())
}

/// [`redis_or_skip`] with options (password, TLS).
pub fn redis_with_or_skip(test: &str, opts: RedisOptions) -> Option<RedisServer> {
    if !RedisServer::installed() {
        eprintln!("SKIP {test}: redis-server is not installed (apt-get install redis-server; .ci/run does it)");
        return None;
    }
    Some(RedisServer::start(opts).expect("starting redis-server"))
}

/// A plain connection to a server without password or TLS.
pub fn conn(redis: &RedisServer) -> redis::Connection {
    let client = redis::Client::open(redis.url()).expect("redis url");
    let c = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connecting to redis");
    c.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    c
}

/// How many connections of `instance` the sorted set `key` (for example
/// `tlb:{client1}:conns`) counts: its members are
/// `INSTANCE#TOKEN:SEQ`, one per connection, whatever their deadline.
pub fn counted_for(c: &mut redis::Connection, key: &str, instance: &str) -> usize {
    let members: Vec<String> = redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).query(c).expect("ZRANGE");
    members
        .iter()
        .filter(|m| m.rsplit_once('#').is_some_and(|(i, _)| i == instance))
        .count()
}
