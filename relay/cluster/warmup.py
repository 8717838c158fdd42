"""Warm-up shared across nodes: per source IP x provider, the day's and the hour's sends and
the plan's progress live in Redis, so the nodes that share a warming IP together send at
most its plan's cap (relay/warmup/gate.py stays each node's pre-filter).

Redis keys (prefix from [cluster] key_prefix):
- `wu:ip:IP` (hash): frozen, reason, base (progress given to providers not seen yet);
- `wu:prov:IP` (set): the providers the IP has counters for;
- `wu:pc:IP:PROVIDER` (hash): adv (counted sending days), day (the gate's DayClock day
  number `sent` belongs to: the configured boundary, not an epoch-aligned window), sent,
  hour, hs (the hour's sends), fz (a day backoff froze), pu / pr (backoff pause until,
  why). The plan day is adv + 1 after the lazy roll (relay.warmup.counters.roll, in Lua).

One script call per delivery transaction (`take`): it first applies the refunds queued
since the last call (units a provider never took: 4xx, connection failures), then grants
each of the transaction's parts up to what is left of the IP's cap (partial), and answers
each counter as Redis has it, which the node's gate adopts. Toward a provider site with
rates (relay/cluster/shaping.py), `take_site` makes it the same call (TAKE_SITE): the
parts are granted in order up to what the site allows now, and the site counts what they
were granted. Refunds that no transaction
carries go within REFUND_DELAY (`flush`). Operator changes (freeze, resume, set day) and
restrictions learned from replies (a reputation freeze, a backoff pause or frozen day) are
scripts too: they write and PUBLISH the IP's whole state on the flags' channel (kind
"warmup"), and every node's gate adopts it within a second.

Redis unreachable: each part gets this node's local share of what was left of the day's
cap when Redis last answered (relay/cluster/fallback.py local_share over the live nodes);
the counts go into a ledger and are added to Redis once (a guard per batch) when it
answers again.

The scripts name the provider keys of an IP from its set (`wu:prov:IP`): standalone Redis
or Sentinel, not Redis Cluster (as the rest of relay.cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from relay.clock import Clock
from relay.cluster.client import RETRY_INTERVAL, ClusterClient, ClusterUnavailable
from relay.cluster.fallback import Ledger, Pending, local_share
from relay.cluster.flags import SharedFlags
from relay.cluster.shaping import SITE_LIB, SharedShaping, SiteCall
from relay.config.cluster import Cluster
from relay.warmup.providers import SiteLimits
from relay.warmup.shaping import SiteGrant

log = logging.getLogger("relay.cluster")
# A refund no transaction carried goes to Redis alone after this long.
REFUND_DELAY = 1.0
GUARD_TTL_MS = 3 * 86400 * 1000
KIND = "warmup"

# The IP's state as every node sees it (JSON, published and answered by `state`).
_LIB = """
local P = ARGV[1]
local function pckey(ip, prov) return P .. 'wu:pc:' .. ip .. ':' .. prov end
local function ipkey(ip) return P .. 'wu:ip:' .. ip end
local function setkey(ip) return P .. 'wu:prov:' .. ip end
local function num(v, d) local x = tonumber(v); if x == nil then return d end; return x end
local function is_frozen(ip) return redis.call('HGET', ipkey(ip), 'frozen') == '1' end
-- the lazy roll of relay.warmup.counters.roll: a day counts when sent to and not frozen.
-- A counter Redis does not have starts at `seed` (the node's plan progress: a Redis that
-- lost its data does not send every IP back to day 1) or else at the IP's base.
local function roll(ip, prov, today, frozen, seed)
  local k = pckey(ip, prov)
  local h = redis.call('HMGET', k, 'adv', 'day', 'sent', 'fz')
  local adv = tonumber(h[1])
  if adv == nil and seed ~= nil and seed >= 0 then adv = seed end
  if adv == nil then adv = num(redis.call('HGET', ipkey(ip), 'base'), 0) end
  local day = num(h[2], -1); local sent = num(h[3], 0)
  if day < today then
    if day >= 0 and sent > 0 and num(h[4], -1) ~= day and not frozen then adv = adv + 1 end
    if day < 0 then redis.call('SADD', setkey(ip), prov) end
    day = today; sent = 0
    redis.call('HSET', k, 'adv', adv, 'day', day, 'sent', sent)
  end
  return adv, day, sent
end
local function state(ip)
  local h = redis.call('HMGET', ipkey(ip), 'frozen', 'reason', 'base')
  local provs = {}
  for _, prov in ipairs(redis.call('SMEMBERS', setkey(ip))) do
    local c = redis.call('HMGET', pckey(ip, prov), 'adv', 'day', 'sent', 'hour', 'hs',
                         'fz', 'pu', 'pr')
    provs[prov] = {adv = num(c[1], 0), day = num(c[2], -1), sent = num(c[3], 0),
                   hour = num(c[4], -1), hs = num(c[5], 0), fz = num(c[6], -1),
                   pu = num(c[7], 0), pr = c[8] or ''}
  end
  if next(provs) == nil then provs = cjson.decode('{}') end
  return cjson.encode({ip = ip, known = redis.call('EXISTS', ipkey(ip)) == 1,
                       frozen = h[1] == '1', reason = h[2] or '', base = num(h[3], 0),
                       providers = provs})
end
local function announce(ip, channel, node)
  local s = state(ip)
  redis.call('PUBLISH', channel,
             cjson.encode({kind = 'warmup', name = ip, value = s, node = node}))
  return s
end
"""

# take_all(today, hour, now, paced, burst, ngrants, nrefunds, i, budget): the refunds and
# then the grants whose arguments start at ARGV[i]: per refund ip, provider, n, day, hour;
# per grant ip, provider, n, caps ("c1,c2,..."; "": a warm IP, not counted here), seed (the
# node's counted days, -1: none). `budget` (nil: none): at most this many granted in all,
# in the order asked (what a provider site's rates allow).
# -> per grant {granted, what its IP's cap alone allowed, adv, day, sent, hour, hs, fz, pu},
# the total granted
_TAKE_LIB = _LIB + """
local function take_all(today, hour, now, paced, burst, ng, nr, i, budget)
  for _ = 1, nr do
    local k = pckey(ARGV[i], ARGV[i + 1]); local n = tonumber(ARGV[i + 2])
    local h = redis.call('HMGET', k, 'day', 'sent', 'hour', 'hs')
    if num(h[1], -1) == tonumber(ARGV[i + 3]) then
      redis.call('HSET', k, 'sent', math.max(0, num(h[2], 0) - n))
    end
    if num(h[3], -1) == tonumber(ARGV[i + 4]) then
      redis.call('HSET', k, 'hs', math.max(0, num(h[4], 0) - n))
    end
    i = i + 5
  end
  local out = {}
  local total = 0
  for _ = 1, ng do
    local ip, prov, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
    local caps = {}
    for c in string.gmatch(ARGV[i + 3], '[^,]+') do caps[#caps + 1] = tonumber(c) end
    local seed = tonumber(ARGV[i + 4])
    i = i + 5
    local room = n
    if budget ~= nil then room = math.max(0, math.min(n, budget - total)) end
    if #caps == 0 then
      total = total + room
      for _, v in ipairs({room, n, 0, -1, 0, -1, 0, -1, '0'}) do out[#out + 1] = v end
    else
      local k = pckey(ip, prov)
      local d = today
      local seen = num(redis.call('HGET', k, 'day'), -1)
      if seen > d then d = seen end  -- a node whose clock is behind counts in the newer day
      local adv, day, sent = roll(ip, prov, d, is_frozen(ip), seed)
      local h = redis.call('HMGET', k, 'hour', 'hs', 'fz', 'pu')
      local hr = num(h[1], -1); local hs = num(h[2], 0)
      if hr < hour then hr = hour; hs = 0 end
      local pd = adv + 1
      if pd > #caps then pd = #caps end
      local cap = caps[pd]
      local left = cap - sent
      if paced then
        local budget_h = math.max(1, math.ceil(cap * burst / 24))
        if hr == hour then left = math.min(left, budget_h - hs) end
      end
      if num(h[4], 0) > now then left = 0 end
      local w = math.max(0, math.min(n, left))
      local g = math.min(w, room)
      total = total + g
      sent = sent + g
      if hr == hour then hs = hs + g end
      redis.call('HSET', k, 'sent', sent, 'hour', hr, 'hs', hs)
      for _, v in ipairs({g, w, adv, day, sent, hr, hs, num(h[3], -1)}) do
        out[#out + 1] = v
      end
      out[#out + 1] = tostring(num(h[4], 0))
    end
  end
  return out, total
end
"""

# ARGV: prefix, today, hour, now, paced (1/0), burst, ngrants, nrefunds, then the refunds
# and the grants (take_all). -> take_all's per grant answers
TAKE = _TAKE_LIB + """
local out = take_all(tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5] == '1',
                     tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), 9, nil)
return out
"""

# One delivery transaction to a provider site with rate limits, in one call: what the site
# allows now (relay/cluster/shaping.py's SITE_LIB) is the budget of the warm-up grants, and
# the site counts exactly what they granted, so nothing is given back to it afterwards.
# KEYS: the site's bucket and hour counter. ARGV: as TAKE's first 8, then the site's
# now_ms, interval_ms, burst, hour cap, hour counter ttl_ms, the hour's end (ms), then the
# refunds and the grants. -> take_all's per grant answers, then the site's {granted,
# hour count, next_ms (0: the site allowed every one asked)}
TAKE_SITE = _TAKE_LIB + SITE_LIB + """
local ng = tonumber(ARGV[7]); local nr = tonumber(ARGV[8])
local now = tonumber(ARGV[9]); local T = tonumber(ARGV[10]); local burst = tonumber(ARGV[11])
local cap = tonumber(ARGV[12])
local want = 0
for j = 15 + nr * 5, 15 + nr * 5 + (ng - 1) * 5, 5 do want = want + tonumber(ARGV[j + 2]) end
local room, tat, count = site_room(KEYS[1], KEYS[2], now, want, T, burst, cap)
local out, total = take_all(tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
                            ARGV[5] == '1', tonumber(ARGV[6]), ng, nr, 15, room)
local site = site_commit(KEYS[1], KEYS[2], now, T, burst, cap, total, room < want, tat,
                         count, ARGV[13], tonumber(ARGV[14]))
for _, v in ipairs(site) do out[#out + 1] = v end
return out
"""

# Operator changes. ARGV: prefix, today, action (freeze|resume|set), value (the reason or
# the day), ip, channel, node. -> the IP's state (JSON)
OPERATE = _LIB + """
local today = tonumber(ARGV[2]); local action = ARGV[3]; local ip = ARGV[5]
local frozen = is_frozen(ip)
local provs = redis.call('SMEMBERS', setkey(ip))
for _, prov in ipairs(provs) do
  -- freeze: the days before count; resume: the days sent while frozen do not
  roll(ip, prov, today, frozen)
end
if action == 'freeze' then
  redis.call('HSET', ipkey(ip), 'frozen', '1', 'reason', ARGV[4])
elseif action == 'resume' then
  redis.call('HSET', ipkey(ip), 'frozen', '0', 'reason', '')
elseif action == 'set' then
  local adv = tonumber(ARGV[4]) - 1
  redis.call('HSET', ipkey(ip), 'base', adv)
  for _, prov in ipairs(provs) do redis.call('HSET', pckey(ip, prov), 'adv', adv) end
end
return announce(ip, ARGV[6], ARGV[7])
"""

# Restrictions learned from replies (the most restrictive stands, as
# relay.warmup.counters.adopt_restrictions). ARGV: prefix, today, ip, channel, node,
# frozen (1/0), reason, n, then per provider: name, paused_until, pause reason, frozen
# today (1/0). -> the IP's state (JSON)
RESTRICT = _LIB + """
local today = tonumber(ARGV[2]); local ip = ARGV[3]
if ARGV[6] == '1' and not is_frozen(ip) then
  for _, prov in ipairs(redis.call('SMEMBERS', setkey(ip))) do roll(ip, prov, today, false) end
  redis.call('HSET', ipkey(ip), 'frozen', '1', 'reason', ARGV[7])
end
local i = 9
for _ = 1, tonumber(ARGV[8]) do
  local prov = ARGV[i]; local k = pckey(ip, prov)
  roll(ip, prov, today, is_frozen(ip))
  local pu = tonumber(ARGV[i + 1])
  if pu > num(redis.call('HGET', k, 'pu'), 0) then
    redis.call('HSET', k, 'pu', ARGV[i + 1], 'pr', ARGV[i + 2])
  end
  if ARGV[i + 3] == '1' then redis.call('HSET', k, 'fz', today) end
  i = i + 4
end
return announce(ip, ARGV[4], ARGV[5])
"""

# ARGV: prefix, ip... -> each IP's state (JSON)
STATE = _LIB + """
local out = {}
for i = 2, #ARGV do out[#out + 1] = state(ARGV[i]) end
return out
"""

# Counts made while Redis was unreachable, each batch added once (its guard is set in the
# same step, so a batch whose answer was lost adds nothing when sent again).
# KEYS: a guard per batch. ARGV: prefix, guard_ttl_ms, then per batch: ip, provider, n,
# day, hour. -> batches added
ADD = _LIB + """
local added = 0
for b = 1, #KEYS do
  local i = 3 + (b - 1) * 5
  if redis.call('SET', KEYS[b], '1', 'NX', 'PX', ARGV[2]) then
    added = added + 1
    local ip, prov, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
    local day = tonumber(ARGV[i + 3]); local hour = tonumber(ARGV[i + 4])
    local _, d, sent = roll(ip, prov, day, is_frozen(ip))
    local k = pckey(ip, prov)
    if d == day then redis.call('HSET', k, 'sent', math.max(0, sent + n)) end
    local h = redis.call('HMGET', k, 'hour', 'hs')
    local hr = num(h[1], -1)
    if hr < hour then redis.call('HSET', k, 'hour', hour, 'hs', math.max(0, n))
    elseif hr == hour then redis.call('HSET', k, 'hs', math.max(0, num(h[2], 0) + n)) end
  end
end
return added
"""


class Ask(NamedTuple):
    """One part of a transaction: `n` recipients from `ip` toward `provider`, under the
    plan whose day-indexed caps are `caps`; `cap`: today's cap as this node sees it (the
    one its local share divides while Redis is unreachable); `seen`: today's count as
    this node's gate has it without this ask (the cluster's as last adopted, for a local
    share before this process heard from Redis at all, e.g. started while it was down)."""

    ip: str
    provider: str
    n: int
    caps: tuple[int, ...]
    cap: int
    seen: int = 0
    advanced: int = -1  # the node's counted days (plan day - 1), seeding a counter
                        # Redis does not have; -1: none


@dataclass(frozen=True)
class Counter:
    """An IP x provider counter as Redis has it after a call."""

    advanced: int
    day: int
    sent: int
    hour: int
    hour_sent: int
    freeze_day: int
    paused_until: float


@dataclass(frozen=True)
class Answer:
    granted: int
    shared: bool              # False: from the local share (Redis unreachable)
    counter: Counter | None   # None when not shared, or a warm IP's part (no caps)
    allowed: int = -1         # what the IP's cap alone allowed (more than `granted` when
                              # the site's rates cut it); -1: as granted


@dataclass(frozen=True)
class Refund:
    ip: str
    provider: str
    n: int
    day: int
    hour: int


class Scripts:
    def __init__(self, redis: Any) -> None:
        self.take = redis.register_script(TAKE)
        self.take_site = redis.register_script(TAKE_SITE)
        self.operate = redis.register_script(OPERATE)
        self.restrict = redis.register_script(RESTRICT)
        self.state = redis.register_script(STATE)
        self.add = redis.register_script(ADD)


def _slot(ip: str, provider: str, day: int) -> str:
    return f"{ip}|{provider}|{day}"


StateListener = Callable[[dict[str, Any]], None]


class SharedWarmup:
    """A node's view of the shared warm-up counters (see the module doc)."""

    Unavailable = ClusterUnavailable  # for callers that do not import relay.cluster

    def __init__(self, client: ClusterClient, clock: Clock,
                 live_nodes: Callable[[], int], flags: SharedFlags | None = None) -> None:
        self.client = client
        self.clock = clock
        self.live_nodes = live_nodes
        self.scripts = Scripts(client.redis)
        self.channel = client.key("changes")
        self.ledger = Ledger(client.node_id)
        self._epoch = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._refunds: list[Refund] = []
        self._last: dict[tuple[str, str], tuple[int, int]] = {}  # (ip, prov) -> (day, sent)
        self._flusher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.calls = 0  # script calls made (round trips), for tests and the bench
        self._down_at: float | None = None  # clock.monotonic() of the last failed call
        self._watched: tuple[str, ...] = ()
        self._listeners: list[StateListener] = []
        client.on_up(self._reconcile_soon)
        if flags is not None:
            flags.on_change(self._on_change)
            flags.on_reload(self._reload_soon)

    # -- every node's view of every IP ---------------------------------------------------

    def watch(self, ips: Sequence[str], listener: StateListener) -> None:
        """`listener(state)` for every change of one of `ips` made on any node (an
        operator's, a restriction), and for each of them whenever the subscription
        (re)starts (what changed while it was down)."""
        self._watched = tuple(dict.fromkeys((*self._watched, *ips)))
        self._listeners.append(listener)

    def _on_change(self, kind: str, name: str, value: str | None, node: str) -> None:
        if kind != KIND or value is None or name not in self._watched:
            return
        try:
            state = json.loads(value)
        except ValueError:
            log.warning("cluster: ignored a malformed warm-up state of %s", name)
            return
        if isinstance(state, dict):
            self._tell(state)

    def _tell(self, state: dict[str, Any]) -> None:
        for listener in self._listeners:
            try:
                listener(state)
            except (KeyError, TypeError, ValueError) as e:
                log.warning("cluster: ignored a malformed warm-up state: %s", e)

    def _reload_soon(self) -> None:
        if self._watched:
            self.spawn(self._reload())

    async def _reload(self) -> None:
        with contextlib.suppress(ClusterUnavailable):
            for state in (await self.states(self._watched)).values():
                self._tell(state)

    # -- the delivery transaction ------------------------------------------------------

    async def take(self, asks: Sequence[Ask], today: int, hour: int, *, paced: bool,
                   burst: float) -> list[Answer]:
        """Grant each ask up to what is left of its IP's cap cluster-wide (one script
        call, carrying the refunds queued meanwhile); from the local share when Redis is
        unreachable."""
        answers, _ = await self._take(asks, today, hour, paced, burst, None)
        return answers

    async def take_site(self, asks: Sequence[Ask], today: int, hour: int, *, paced: bool,
                        burst: float, shaping: SharedShaping, site: str,
                        limits: SiteLimits) -> tuple[list[Answer], SiteGrant]:
        """`take` and the provider site's rates (relay/cluster/shaping.py) in ONE script
        call: the asks are granted in order up to what the site allows now, and the site
        counts exactly what they were granted. An ask with no caps is a warm IP's part,
        limited by the site only. Redis unreachable: each side's local share, the site's
        cutting the warm-up's (what it cut goes back to the warm-up's share)."""
        call = shaping.prepare(site, limits)
        answers, grant = await self._take(asks, today, hour, paced, burst, (shaping, call))
        assert grant is not None
        return answers, grant

    async def _take(self, asks: Sequence[Ask], today: int, hour: int, paced: bool,
                    burst: float, site: tuple[SharedShaping, SiteCall] | None
                    ) -> tuple[list[Answer], SiteGrant | None]:
        # What this node counted while Redis was away goes in before it takes more (else
        # every node's first take after an outage would see the count without its own).
        # Not tried again within a second of a failure: a batch per second at most.
        if len(self.ledger) and (self._down_at is None or self.clock.monotonic()
                                 - self._down_at >= RETRY_INTERVAL):
            with contextlib.suppress(ClusterUnavailable):
                await self.reconcile()
        asks = [Ask(*a) for a in asks]
        refunds, self._refunds = self._refunds, []
        args: list[Any] = [self.client.prefix, today, hour, repr(self.clock.now()),
                           1 if paced else 0, repr(burst), len(asks), len(refunds)]
        keys: list[str] = []
        if site is not None:
            keys = site[1].keys
            args += site[1].args
        for r in refunds:
            args += [r.ip, r.provider, r.n, r.day, r.hour]
        for a in asks:
            args += [a.ip, a.provider, a.n, ",".join(map(str, a.caps)), a.advanced]
        script = self.scripts.take if site is None else self.scripts.take_site
        try:
            self.calls += 1
            reply = await self.client.call(lambda r: script(keys=keys, args=args))
        except ClusterUnavailable:
            self._down_at = self.clock.monotonic()
            self._refunds = refunds + self._refunds
            return self._take_local(asks, today, hour, site)
        out: list[Answer] = []
        for k, a in enumerate(asks):
            v = reply[k * 9:(k + 1) * 9]
            if not a.caps:
                out.append(Answer(int(v[0]), True, None, int(v[1])))
                continue
            c = Counter(int(v[2]), int(v[3]), int(v[4]), int(v[5]), int(v[6]), int(v[7]),
                        float(v[8]))
            self._last[(a.ip, a.provider)] = (c.day, c.sent)
            out.append(Answer(int(v[0]), True, c, int(v[1])))
        if site is None:
            return out, None
        granted, count, next_ms = (int(x) for x in reply[len(asks) * 9:])
        return out, site[0].answered(site[1], granted, count, next_ms)

    def _take_local(self, asks: Sequence[Ask], today: int, hour: int,
                    site: tuple[SharedShaping, SiteCall] | None
                    ) -> tuple[list[Answer], SiteGrant | None]:
        """The local shares (Redis unreachable): each IP's, then the site's over what
        they granted, in the order asked; what the site cut goes back to the IP's."""
        out = [self._local(a, today, hour) if a.caps else Answer(a.n, False, None, a.n)
               for a in asks]
        if site is None:
            return out, None
        grant = site[0].take_local(site[1], sum(a.granted for a in out))
        budget = grant.granted
        for k, (ask, answer) in enumerate(zip(asks, out, strict=True)):
            g = min(answer.granted, budget)
            budget -= g
            if g < answer.granted:
                if ask.caps:
                    self.refund(ask.ip, ask.provider, answer.granted - g, today, hour, False)
                out[k] = dataclasses.replace(answer, granted=g)
        return out, grant

    def _local(self, ask: Ask, today: int, hour: int) -> Answer:
        slot = _slot(ask.ip, ask.provider, today)
        day, sent = self._last.get((ask.ip, ask.provider), (-1, 0))
        if day != today:  # not heard from Redis today: the gate's count, less our own
            sent = max(0, ask.seen - self.ledger.used(slot))
        share = local_share(ask.cap, sent, self.live_nodes())
        granted = max(0, min(ask.n, share - self.ledger.used(slot)))
        if granted:
            self.ledger.record(Pending(KIND, slot, granted, at_ms=hour, bucket_ms=1))
        return Answer(granted, False, None, granted)

    def refund(self, ip: str, provider: str, n: int, day: int, hour: int,
               shared: bool) -> None:
        """Give back `n` units the provider never took: with the next call, or alone
        within REFUND_DELAY. Units of the local share go back into it."""
        if n <= 0:
            return
        if not shared:
            self.ledger.record(Pending(KIND, _slot(ip, provider, day), -n, at_ms=hour,
                                       bucket_ms=1))
            return
        self._refunds.append(Refund(ip, provider, n, day, hour))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await self.clock.sleep(REFUND_DELAY)
        await self.flush()

    async def flush(self) -> None:
        """Send the queued refunds now (a call with no asks)."""
        if not self._refunds:
            return
        await self.take([], 0, 0, paced=False, burst=1.0)  # no asks: day, hour unused

    # -- operator changes and restrictions ----------------------------------------------

    async def operate(self, ip: str, action: str, value: str, today: int) -> dict[str, Any]:
        """freeze (value: the reason), resume, or set (value: the plan day) cluster-wide;
        the IP's new state, announced to every node."""
        args = [self.client.prefix, today, action, value, ip, self.channel,
                self.client.node_id]
        self.calls += 1
        raw = await self.client.call(lambda r: self.scripts.operate(keys=[], args=args))
        return dict(json.loads(raw))

    async def restrict(self, ip: str, today: int, frozen: bool, reason: str,
                       providers: Sequence[tuple[str, float, str, bool]]) -> dict[str, Any]:
        """Restrictions this node learned (a reputation freeze; per provider (name,
        paused until, why, frozen today)), kept in Redis and announced to every node."""
        args: list[Any] = [self.client.prefix, today, ip, self.channel, self.client.node_id,
                           1 if frozen else 0, reason, len(providers)]
        for name, until, why, fz in providers:
            args += [name, repr(until), why, 1 if fz else 0]
        self.calls += 1
        raw = await self.client.call(lambda r: self.scripts.restrict(keys=[], args=args))
        return dict(json.loads(raw))

    async def state(self, ip: str) -> dict[str, Any]:
        """The IP's state as Redis has it."""
        return (await self.states([ip]))[ip]

    async def states(self, ips: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Each IP's state as Redis has it (one call)."""
        args = [self.client.prefix, *ips]
        self.calls += 1
        raw = await self.client.call(lambda r: self.scripts.state(keys=[], args=args))
        return {ip: dict(json.loads(one)) for ip, one in zip(ips, raw, strict=True)}

    def spawn(self, coro: Any) -> None:
        """Run `coro` in the background (kept until done)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- reconciliation ------------------------------------------------------------------

    def _reconcile_soon(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # called outside the event loop: the next take reconciles
            return
        if len(self.ledger):
            self.spawn(self._reconcile_quietly())

    async def _reconcile_quietly(self) -> None:
        with contextlib.suppress(ClusterUnavailable):
            await self.reconcile()

    async def reconcile(self) -> int:
        """Add the counts made while Redis was unreachable, each batch once, all in one
        call. Returns the batches confirmed; ClusterUnavailable if Redis is still away
        (they stay, under the same ids)."""
        batches = self.ledger.seal(self._epoch)
        if not batches:
            return 0
        guards: list[str] = []
        args: list[Any] = [self.client.prefix, GUARD_TTL_MS]
        for batch in batches:
            p = batch.pending
            ip, provider, day = p.key.rsplit("|", 2)
            guards.append(self.client.key("reconciled", batch.batch_id))
            args += [ip, provider, p.n, int(day), p.at_ms]
        self.calls += 1
        try:
            await self.client.call(functools.partial(self._add, keys=guards, args=args))
        except ClusterUnavailable:
            self._down_at = self.clock.monotonic()
            raise
        for batch in batches:
            self.ledger.confirm(batch.batch_id)
        log.info("cluster: reconciled %d local warm-up count(s) into redis", len(batches))
        return len(batches)

    async def _add(self, _r: Any, keys: list[str], args: list[Any]) -> Any:
        return await self.scripts.add(keys=keys, args=args)

    def pending(self, ip: str, provider: str) -> int:
        """Refunds of `ip` toward `provider` queued for the next call."""
        return sum(r.n for r in self._refunds if r.ip == ip and r.provider == provider)

    async def drain(self) -> None:
        """Send what is queued (at shutdown), best effort."""
        if self._flusher is not None:
            self._flusher.cancel()
        try:
            await self.flush()
        except ClusterUnavailable:
            log.warning("cluster: %d warm-up refund(s) not sent (redis down)",
                        len(self._refunds))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def operate_once(cfg: Cluster, ip: str, action: str, value: str, today: int,
                       clock: Clock) -> bool:
    """`SharedWarmup.operate` through a short-lived connection (`relay warmup`); False
    when Redis is unreachable."""
    client = ClusterClient(cfg, clock)
    try:
        await SharedWarmup(client, clock, lambda: 1).operate(ip, action, value, today)
    except ClusterUnavailable:
        return False
    finally:
        await client.close()
    return True


async def states_once(cfg: Cluster, ips: Sequence[str], clock: Clock
                      ) -> dict[str, dict[str, Any]] | None:
    """Each IP's state as Redis has it, through a short-lived connection (`relay warmup
    status`); None when Redis is unreachable."""
    client = ClusterClient(cfg, clock)
    try:
        return await SharedWarmup(client, clock, lambda: 1).states(ips)
    except ClusterUnavailable:
        return None
    finally:
        await client.close()
