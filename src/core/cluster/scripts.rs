//! The Redis side of shared limits: key names and the three Lua scripts
//! (admit, release, refresh), each run atomically by Redis.
//!
//! Promises: every key of one identity carries the hash tag `{identity}`,
//! so a script touches one Redis Cluster slot only; all timing inside a
//! script is Redis's own `TIME` (one clock for the whole fleet, whatever the
//! instances' clocks say); a script never leaves a count below zero or a
//! key without an expiry; numbers a script computes are passed to Redis
//! commands as decimal strings (`%.0f`, never Lua's exponent form), capped
//! so that absurd limits (a rate of one per century) stay valid commands.
//!
//! Per identity, two keys (`tlb` is the default `[cluster] prefix`):
//! - `tlb:{ID}:rate`: the GCRA theoretical arrival time, in µs of Redis
//!   time, expiring when the bucket would be full again;
//! - `tlb:{ID}:conn`: a hash, per instance `c:INSTANCE` = connections held
//!   and `t:INSTANCE` = Redis time (ms) until which they count. An instance
//!   refreshes its deadline every third of `liveness_ttl`; the admit script
//!   drops the fields of instances past their deadline (crashed, cut off),
//!   so their connections are forgotten within `liveness_ttl`. The liveness
//!   deadline lives in the identity's own hash, not in a key per instance,
//!   because a script may only touch keys of its own slot.

use redis::Script;

/// The rate key of `identity` (`prefix`: `[cluster] prefix`).
pub(crate) fn rate_key(prefix: &str, identity: &str) -> String {
    format!("{prefix}:{{{identity}}}:rate")
}

/// The concurrency hash of `identity`.
pub(crate) fn conn_key(prefix: &str, identity: &str) -> String {
    format!("{prefix}:{{{identity}}}:conn")
}

/// Admit one connection, or say why not.
///
/// KEYS: rate, conn. ARGV: instance, max_connections, emission interval
/// (µs per connection = 1e6 / rate), burst, liveness ttl (ms).
/// Returns `{1}` (admitted), `{0, "max", total}` or `{0, "rate", retry_ms}`.
const ADMIT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local me, max = ARGV[1], tonumber(ARGV[2])
local interval, burst, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local h = redis.call('HGETALL', KEYS[2])
local count, deadline = {}, {}
for i = 1, #h, 2 do
  local kind, inst = string.sub(h[i], 1, 2), string.sub(h[i], 3)
  if kind == 'c:' then count[inst] = tonumber(h[i + 1]) elseif kind == 't:' then deadline[inst] = tonumber(h[i + 1]) end
end
local total = 0
for inst, n in pairs(count) do
  if inst ~= me and (deadline[inst] or 0) < now_ms then
    redis.call('HDEL', KEYS[2], 'c:' .. inst, 't:' .. inst)
  else
    total = total + n
  end
end
for inst, d in pairs(deadline) do
  if count[inst] == nil and inst ~= me and d < now_ms then redis.call('HDEL', KEYS[2], 't:' .. inst) end
end
if total >= max then return {0, 'max', total} end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now_us then tat = now_us end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now_us < allow_at then return {0, 'rate', math.min(math.ceil((allow_at - now_us) / 1000), 1e12)} end
local px = math.min(math.ceil((new_tat - now_us) / 1000) + 1, 1e15)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', string.format('%.0f', px))
redis.call('HINCRBY', KEYS[2], 'c:' .. me, 1)
redis.call('HSET', KEYS[2], 't:' .. me, string.format('%.0f', now_ms + ttl))
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {1}
"#;

/// Release one connection. KEYS: conn. ARGV: instance.
const RELEASE: &str = r#"
local n = redis.call('HINCRBY', KEYS[1], 'c:' .. ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], 'c:' .. ARGV[1], 't:' .. ARGV[1]) end
return n
"#;

/// Set this instance's count to what it really holds, and its deadline.
/// KEYS: conn. ARGV: instance, count, liveness ttl (ms).
const REFRESH: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local me, n, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if n <= 0 then
  redis.call('HDEL', KEYS[1], 'c:' .. me, 't:' .. me)
  return 0
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'c:' .. me, ARGV[2], 't:' .. me, string.format('%.0f', now_ms + ttl))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return n
"#;

/// The scripts, hashed once (`EVALSHA`, loaded on `NOSCRIPT`).
pub(crate) struct Scripts {
    pub(crate) admit: Script,
    pub(crate) release: Script,
    pub(crate) refresh: Script,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        Scripts {
            admit: Script::new(ADMIT),
            release: Script::new(RELEASE),
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
        assert_eq!(conn_key("tlb", "client1"), "tlb:{client1}:conn");
        assert_eq!(conn_key("tlb-b", "client1"), "tlb-b:{client1}:conn");
        // Distinct identities never share a key, whatever they hold.
        assert_ne!(conn_key("tlb", "a}:conn"), conn_key("tlb", "a"));
    }
}
