//! The Redis side of shared limits: key names, the two Lua scripts (admit,
//! refresh), each run atomically by Redis, and the member names.
//!
//! Promises: every key of one identity carries the hash tag `{identity}`,
//! so a script touches one Redis Cluster slot only; all timing inside a
//! script is Redis's own `TIME` (one clock for the whole fleet, whatever the
//! instances' clocks say); a script never leaves a key without an expiry;
//! numbers a script computes are passed to Redis commands as decimal
//! strings (`%.0f`, never Lua's exponent form), capped so that absurd
//! limits (a rate of one per century) stay valid commands.
//!
//! Per identity, two keys (`tlb` is the default `[cluster] prefix`):
//! - `tlb:{ID}:rate`: the GCRA theoretical arrival time, in µs of Redis
//!   time, expiring when the bucket would be full again;
//! - `tlb:{ID}:conns`: a sorted set with one member per connection held
//!   anywhere in the fleet (`INSTANCE#TOKEN:SEQ`, see [`member`]), scored
//!   by the Redis time (ms) until which it counts. Admitting adds the
//!   member, closing removes it (`ZREM`), and the owning instance renews
//!   the deadlines of what it holds every third of `liveness_ttl`; the
//!   admit script drops members past their deadline (their instance
//!   crashed or was cut off), so they are forgotten within `liveness_ttl`.
//!   One member per connection, rather than one count per instance, makes
//!   every write idempotent: an add, a removal and a renewal of one
//!   connection give the same set in whatever order Redis runs them, so a
//!   refresh racing a close can never lower the fleet's count below what
//!   is held (a count rewritten while a decrement was still on its way
//!   did: the limit was exceeded by one per race).

use redis::Script;

/// The rate key of `identity` (`prefix`: `[cluster] prefix`).
pub(crate) fn rate_key(prefix: &str, identity: &str) -> String {
    format!("{prefix}:{{{identity}}}:rate")
}

/// The set of connections held of `identity`.
pub(crate) fn conns_key(prefix: &str, identity: &str) -> String {
    format!("{prefix}:{{{identity}}}:conns")
}

/// The member of connection `seq` of the process whose token is `token`
/// (`INSTANCE#RANDOM`): unique across the fleet and across restarts of one
/// instance, and the instance's name reads back with `rsplit_once('#')`
/// on the part before the last `:`.
pub(crate) fn member(token: &str, seq: u64) -> String {
    format!("{token}:{seq:x}")
}

/// Admit one connection, or say why not.
///
/// KEYS: rate, conns. ARGV: member, max_connections, emission interval
/// (µs per connection = 1e6 / rate), burst, liveness ttl (ms).
/// Returns `{1}` (admitted), `{0, "max", total}` or `{0, "rate", retry_ms}`.
const ADMIT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local member, max = ARGV[1], tonumber(ARGV[2])
local interval, burst, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%.0f', now_ms))
local total = redis.call('ZCARD', KEYS[2])
if total >= max then return {0, 'max', total} end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now_us then tat = now_us end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now_us < allow_at then return {0, 'rate', math.min(math.ceil((allow_at - now_us) / 1000), 1e12)} end
local px = math.min(math.ceil((new_tat - now_us) / 1000) + 1, 1e15)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', string.format('%.0f', px))
redis.call('ZADD', KEYS[2], string.format('%.0f', now_ms + ttl), member)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {1}
"#;

/// Renew (or, after Redis lost them, restore) the deadlines of connections
/// this instance holds. KEYS: conns. ARGV: liveness ttl (ms), members...
/// Returns how many members it wrote.
const REFRESH: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = string.format('%.0f', now_ms + tonumber(ARGV[1]))
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], deadline, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return #ARGV - 1
"#;

/// The scripts, hashed once (`EVALSHA`, loaded on `NOSCRIPT`). A close is a
/// plain `ZREM` (no script).
pub(crate) struct Scripts {
    pub(crate) admit: Script,
    pub(crate) refresh: Script,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        Scripts {
            admit: Script::new(ADMIT),
            refresh: Script::new(REFRESH),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_identity_share_a_hash_tag() {
        assert_eq!(rate_key("tlb", "client1"), "tlb:{client1}:rate");
        assert_eq!(conns_key("tlb", "client1"), "tlb:{client1}:conns");
        assert_eq!(conns_key("tlb-b", "client1"), "tlb-b:{client1}:conns");
        // Distinct identities never share a key, whatever they hold.
        assert_ne!(conns_key("tlb", "a}:conns"), conns_key("tlb", "a"));
    }

    #[test]
    fn a_member_names_its_instance_and_is_unique_per_connection() {
        let m = member("lb-a/0.0.0.0:8443#00ff", 26);
        assert_eq!(m, "lb-a/0.0.0.0:8443#00ff:1a");
        let (rest, _seq) = m.rsplit_once(':').expect("seq");
        assert_eq!(rest.rsplit_once('#').map(|(i, _)| i), Some("lb-a/0.0.0.0:8443"));
        assert_ne!(member("a#1", 1), member("a#1", 2));
    }
}
