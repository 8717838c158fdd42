"""The Lua scripts every shared limit runs in Redis: each reads, decides and writes in one
atomic step, so two nodes (or two tasks of one node) can never both take the last unit.
Nothing here reads a count into Python to write it back.

Time is an argument (milliseconds from relay/clock.py's clock), never Redis TIME: the
nodes' clocks are NTP-synchronised anyway, and FakeClock drives the scripts in tests.
redis-py's register_script runs each by SHA (EVALSHA) and loads it on NOSCRIPT.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

# A fixed window with a cap (warm-up per IP x provider x day; shaping per second, per
# hour). KEYS: counter. ARGV: n, cap, ttl_ms, partial (1: grant what is left below the
# cap; 0: all n or nothing). -> {granted, count after}
FIXED_TAKE = """
local n = tonumber(ARGV[1]); local cap = tonumber(ARGV[2])
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = cap - count
if grant > n then grant = n end
if grant < 0 then grant = 0 end
if grant < n and ARGV[4] ~= '1' then grant = 0 end
if grant > 0 then
  count = redis.call('INCRBY', KEYS[1], grant)
  if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
end
return {grant, count}
"""

# Counts a node made while Redis was unreachable, added once: the batch's guard key is
# set in the same step, so a retry of a batch whose answer was lost adds nothing.
# KEYS: counter, guard. ARGV: n, ttl_ms, guard_ttl_ms. -> {added (0/1), count}
FIXED_ADD = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then
  return {0, tonumber(redis.call('GET', KEYS[1]) or '0')}
end
local count = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return {1, count}
"""

# A sliding window (rolling 24 h quota, per-second rate) of buckets: KEYS[1] a hash of
# bucket id -> count plus 't' (the total), KEYS[2] a sorted set of the bucket ids, so the
# buckets that left the window are found and subtracted without a scan. A count leaves
# the window when its whole bucket is older than the window: never early.
_TRIM = """
local now = tonumber(ARGV[1]); local win = tonumber(ARGV[2]); local bms = tonumber(ARGV[3])
local cutoff = (now - win) / bms - 1
local total = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', tostring(cutoff))
for _, id in ipairs(old) do
  total = total - tonumber(redis.call('HGET', KEYS[1], id) or '0')
  redis.call('HDEL', KEYS[1], id)
end
if #old > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tostring(cutoff))
  redis.call('HSET', KEYS[1], 't', total)
end
"""
_ADD = """
redis.call('HINCRBY', KEYS[1], bucket, n)
redis.call('ZADD', KEYS[2], bucket, bucket)
total = redis.call('HINCRBY', KEYS[1], 't', n)
redis.call('PEXPIRE', KEYS[1], win + bms); redis.call('PEXPIRE', KEYS[2], win + bms)
"""
# ARGV: now_ms, window_ms, bucket_ms, n, limit. -> {granted (0 or n), total, bucket}
SLIDE_RESERVE = _TRIM + """
local n = tonumber(ARGV[4]); local limit = tonumber(ARGV[5])
local bucket = math.floor(now / bms)
if total + n > limit then return {0, total, bucket} end
""" + _ADD + """
return {n, total, bucket}
"""
# Reconciliation: n counted at ARGV[1] (its own bucket) added once per guard KEYS[3].
# ARGV: at_ms, window_ms, bucket_ms, n, guard_ttl_ms. -> {added, total}
SLIDE_ADD = _TRIM + """
local n = tonumber(ARGV[4])
local bucket = math.floor(now / bms)
if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[5]) then return {0, total} end
""" + _ADD + """
return {1, total}
"""
# Give back a reservation (the message was refused after all). ARGV: bucket, n.
# -> released (0 when its bucket already left the window)
SLIDE_RELEASE = """
local c = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local n = tonumber(ARGV[2])
if c < n then n = c end
if n <= 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], -n)
redis.call('HINCRBY', KEYS[1], 't', -n)
return n
"""

# Every window of a recipient's (or message's) limits at once, all or nothing: one round
# trip per recipient at acceptance, however many scopes (tenant, credential) and windows
# (send rate, 24 h) apply. KEYS: per window its hash and its sorted set of bucket ids.
# ARGV: now_ms, m (windows), then per window: window_ms, bucket_ms, need, take, limit
# (need: the room it must have; take: what is added, may be more: the rate's debt of a
# message; limit -1: counted, never refused). Nothing is added unless every window has
# room. -> {refused (index of the first window without room, 0: none), then per window
# its total (after taking, when taken) and its bucket}
SLIDE_RESERVE_ALL = """
local now = tonumber(ARGV[1]); local m = tonumber(ARGV[2])
local out = {0}
for i = 1, m do
  local h = KEYS[2 * i - 1]; local z = KEYS[2 * i]; local a = 2 + (i - 1) * 5
  local win = tonumber(ARGV[a + 1]); local bms = tonumber(ARGV[a + 2])
  local cutoff = (now - win) / bms - 1
  local total = tonumber(redis.call('HGET', h, 't') or '0')
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', tostring(cutoff))
  for _, id in ipairs(old) do
    total = total - tonumber(redis.call('HGET', h, id) or '0')
    redis.call('HDEL', h, id)
  end
  if #old > 0 then
    redis.call('ZREMRANGEBYSCORE', z, '-inf', tostring(cutoff))
    redis.call('HSET', h, 't', total)
  end
  local limit = tonumber(ARGV[a + 5])
  if out[1] == 0 and limit >= 0 and total + tonumber(ARGV[a + 3]) > limit then out[1] = i end
  out[2 * i] = total; out[2 * i + 1] = math.floor(now / bms)
end
if out[1] ~= 0 then return out end
for i = 1, m do
  local h = KEYS[2 * i - 1]; local z = KEYS[2 * i]; local a = 2 + (i - 1) * 5
  local n = tonumber(ARGV[a + 4])
  if n > 0 then
    local win = tonumber(ARGV[a + 1]); local bms = tonumber(ARGV[a + 2])
    local bucket = out[2 * i + 1]
    redis.call('HINCRBY', h, bucket, n)
    redis.call('ZADD', z, bucket, bucket)
    out[2 * i] = redis.call('HINCRBY', h, 't', n)
    redis.call('PEXPIRE', h, win + bms); redis.call('PEXPIRE', z, win + bms)
  end
end
return out
"""
# Give back several reservations at once (SLIDE_RELEASE for each). KEYS: their hashes.
# ARGV: per key its bucket and n. -> the units given back in all
SLIDE_RELEASE_ALL = """
local back = 0
for i = 1, #KEYS do
  local c = tonumber(redis.call('HGET', KEYS[i], ARGV[2 * i - 1]) or '0')
  local n = tonumber(ARGV[2 * i])
  if c < n then n = c end
  if n > 0 then
    redis.call('HINCRBY', KEYS[i], ARGV[2 * i - 1], -n)
    redis.call('HINCRBY', KEYS[i], 't', -n)
    back = back + n
  end
end
return back
"""
# A sliding window's total now (SentLast24Hours), its expired buckets dropped on the way.
# KEYS: hash, ids. ARGV: now_ms, window_ms, bucket_ms. -> total
SLIDE_TOTAL = _TRIM + """
return total
"""

# Connection leases per destination site: KEYS[1] a sorted set of lease ids scored by
# expiry (ms), KEYS[2] a hash lease id -> holder node, KEYS[3] the set of sites with
# leases (for `relay cluster status`). Expired leases (a dead node's) go first.
_EXPIRE_LEASES = """
local now = tonumber(ARGV[1])
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, id in ipairs(gone) do redis.call('HDEL', KEYS[2], id) end
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end
"""
# ARGV: now_ms, ttl_ms, max, lease_id, node, site. -> {acquired (0/1), leases held}
LEASE_ACQUIRE = _EXPIRE_LEASES + """
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[3]) then return {0, held} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[4])
redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
redis.call('SADD', KEYS[3], ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[2]); redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {1, held + 1}
"""
# ARGV: now_ms, ttl_ms, lease_id. -> 1 renewed, 0 lost (expired: the connection must
# close, its slot may be someone else's now)
LEASE_RENEW = _EXPIRE_LEASES + """
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[3])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]); redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1
"""
# ARGV: lease_id. -> 1 released, 0 was not held
LEASE_RELEASE = """
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

# A flag (tenant/configuration set/IP status, a suppression entry) set or removed and
# announced in one step. KEYS: hash. ARGV: field, value ("" removes), channel, message.
FLAG_SET = """
if ARGV[2] == '' then redis.call('HDEL', KEYS[1], ARGV[1])
else redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""


class Scripts:
    """The scripts registered once on one client (each call: EVALSHA, EVAL on NOSCRIPT)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.fixed_take = redis.register_script(FIXED_TAKE)
        self.fixed_add = redis.register_script(FIXED_ADD)
        self.slide_reserve = redis.register_script(SLIDE_RESERVE)
        self.slide_add = redis.register_script(SLIDE_ADD)
        self.slide_release = redis.register_script(SLIDE_RELEASE)
        self.slide_reserve_all = redis.register_script(SLIDE_RESERVE_ALL)
        self.slide_release_all = redis.register_script(SLIDE_RELEASE_ALL)
        self.slide_total = redis.register_script(SLIDE_TOTAL)
        self.lease_acquire = redis.register_script(LEASE_ACQUIRE)
        self.lease_renew = redis.register_script(LEASE_RENEW)
        self.lease_release = redis.register_script(LEASE_RELEASE)
        self.flag_set = redis.register_script(FLAG_SET)


def ints(reply: Any) -> list[int]:
    """A script's array of integers."""
    return [int(x) for x in reply]
