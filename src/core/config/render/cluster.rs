//! The text of `[control]` and `[cluster]` (apart from `render` for size).
//!
//! Promises: as [`super`]: examples and defaults come from the model.

use super::{Table, key, table};
use crate::core::config::literal::{count, duration, string};
use crate::core::config::model::{
    DEFAULT_CLUSTER_INSTANCES, DEFAULT_CLUSTER_PREFIX, DEFAULT_CLUSTER_TIMEOUT, DEFAULT_LIVENESS_TTL,
};
use crate::core::config::writer::ClusterSection;

pub(super) fn control(socket: Option<&str>) -> Table {
    let mut t = table(
        "[control]",
        socket.is_some(),
        vec![
            key("socket", socket.map(string))
                .doc("Unix socket (0600) for `tlb serve --upgrade`")
                .example(string("tlb.sock")),
        ],
    );
    t.comment = "optional: hand-off to a new binary";
    t
}

pub(super) fn cluster(c: Option<&ClusterSection>) -> Table {
    let path = |f: fn(&ClusterSection) -> &Option<String>| c.and_then(|c| f(c).as_deref()).map(string);
    let mut t = table(
        "[cluster]",
        c.is_some(),
        vec![
            key("redis", c.map(|c| string(&c.redis))).example(string("redis://127.0.0.1:6379")),
            key("redis_password_file", path(|c| &c.redis_password_file)),
            key("redis_ca", path(|c| &c.redis_ca)).doc("rediss://: CA of the server (default: system store)"),
            key("redis_cert", path(|c| &c.redis_cert)).doc("rediss://: client certificate, with redis_key"),
            key("redis_key", path(|c| &c.redis_key)),
            key("prefix", path(|c| &c.prefix))
                .doc("of every key; one per fleet sharing a Redis")
                .example(string(DEFAULT_CLUSTER_PREFIX)),
            key("instance", path(|c| &c.instance)).doc("unique; default: host name/listen address"),
            key("instances", c.and_then(|c| c.instances).map(count))
                .doc("fleet size: Redis unreachable -> limit / instances")
                .example(count(DEFAULT_CLUSTER_INSTANCES)),
            key("timeout", c.and_then(|c| c.timeout).map(duration))
                .doc("longest wait for Redis per connection")
                .example(duration(DEFAULT_CLUSTER_TIMEOUT)),
            key("liveness_ttl", c.and_then(|c| c.liveness_ttl).map(duration))
                .doc("a silent instance's counts are forgotten after this")
                .example(duration(DEFAULT_LIVENESS_TTL)),
        ],
    );
    t.comment = "optional: per-client limits shared by a fleet";
    t
}
