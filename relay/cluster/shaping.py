"""Provider/site shaping for all nodes together: a site's messages per second and per
clock hour counted in Redis, and a connection lease per open connection to a site with
max_connections ([[provider]] and the built-in providers; relay/warmup/providers.py).

Rates (`take`): one script call per transaction (SITE_TAKE) grants up to what is left
of both limits at once, partially: the per-second limit is a token bucket kept as its
"theoretical arrival time" (GCRA: one number per site, the same bucket as
relay/warmup/shaping.py's SiteThrottle, one second deep), the hourly one a counter per
clock hour in SharedLimits' fixed-window key ("fw:site-hour:SITE:HOUR"), so the counts a
node made while Redis was unreachable are added by SharedLimits.reconcile. The shaper
asks after its warm-up gate, for what the gate granted, so nothing is left to give back;
a transaction from a warming IP asks the site in relay/cluster/warmup.py's script
(TAKE_SITE: SITE_LIB's functions and the IP's cap in the same call, `prepare` /
`answered` / `take_local` here). `give_back` (SITE_GIVE_BACK) remains for a caller that
took more than it sent.

Leases (`acquire`, `release`, `renew`): a new connection to such a site takes a lease
(SharedLimits.acquire_lease: one call), reuses one this node is giving back, or closes
one of this node's idle connections to the site and takes its lease; failing all three
it waits (polling, up to `wait` seconds) and then says no (the shaper holds the
recipients). A closed connection's lease is released in the background (one call). Every
`ttl / 3` one call (LEASES_KEEP) renews all of this node's leases; a lease Redis no longer
holds for this node (it expired while Redis or this node was slow, and the site is full)
is reported lost and its connection closes after its transaction. A node killed with
-9 renews nothing: its leases expire after `ttl` and the other nodes can open.

Redis unreachable: rates come from the local share (the rate divided by the live
nodes; the hour's count from relay/cluster/fallback.py, recorded in the ledger);
connections from max(1, max_connections // live nodes). The floor of 1 is a choice: a
share of 0 would stop delivery to a large provider for as long as Redis is away, while
one connection per node exceeds the site's limit only when it has fewer connections
than there are nodes, and only until Redis answers. Leases taken meanwhile are
registered in Redis at the next renewal (run at once when Redis answers again), within
the limit; the ones over it are lost and their connections close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from relay.clock import Clock
from relay.cluster.client import ClusterClient, ClusterUnavailable
from relay.cluster.fallback import Pending, local_share
from relay.cluster.limits import SharedLimits
from relay.cluster.scripts import ints
from relay.tasks import cancel_and_wait
from relay.warmup.providers import SiteLimits
from relay.warmup.shaping import HOUR, ConnectionLease, SiteGrant, SiteThrottle

log = logging.getLogger("relay.cluster")

LEASE_TTL = 60.0
LEASE_WAIT = 5.0
# Polling for a lease while the site is full: first after this long, doubling up to
# POLL_MAX (one acquire call each).
POLL_FIRST = 0.05
POLL_MAX = 0.5

# The site's two limits as Lua functions, so relay/cluster/warmup.py's transaction script
# grants a site's and a warming IP's units in the same call.
# site_room(bucket key, hour key, now_ms, n, interval_ms (0: no per-second limit), burst,
# hour cap (0: none)) -> how many of n both limits allow now, the bucket's arrival time,
# the hour's count. site_commit(..., granted, limited (1/0: the room was less than asked),
# tat, count, hour counter ttl_ms, the hour's end) counts `granted`
# -> {granted, hour count, next_ms (0: not limited)}.
SITE_LIB = """
local function site_room(kr, kh, now, n, T, burst, cap)
  local grant = n
  local tat = now
  if T > 0 then
    tat = tonumber(redis.call('GET', kr) or '0')
    if tat < now then tat = now end
    local room = math.floor((now + burst * T - tat) / T + 1e-9)
    if room < grant then grant = room end
  end
  local count = 0
  if cap > 0 then
    count = tonumber(redis.call('GET', kh) or '0')
    if cap - count < grant then grant = cap - count end
  end
  if grant < 0 then grant = 0 end
  return grant, tat, count
end
local function site_commit(kr, kh, now, T, burst, cap, grant, limited, tat, count, ttl,
                           hour_end)
  if grant > 0 then
    if T > 0 then
      tat = tat + grant * T
      redis.call('SET', kr, string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
    end
    if cap > 0 then
      count = redis.call('INCRBY', kh, grant)
      if redis.call('PTTL', kh) < 0 then redis.call('PEXPIRE', kh, ttl) end
    end
  end
  local next_at = 0
  if limited then
    if cap > 0 and count >= cap then next_at = hour_end
    elseif T > 0 then next_at = math.ceil(tat - burst * T + T) end
  end
  return {grant, count, next_at}
end
"""

# KEYS: the site's bucket (GCRA arrival time, ms), its counter for this clock hour.
# ARGV: now_ms, n, interval_ms (0: no per-second limit), burst, hour cap (0: none),
# hour counter ttl_ms, the hour's end (ms). -> {granted, hour count, next_ms (0: all)}
SITE_TAKE = SITE_LIB + """
local now = tonumber(ARGV[1]); local n = tonumber(ARGV[2])
local T = tonumber(ARGV[3]); local burst = tonumber(ARGV[4]); local cap = tonumber(ARGV[5])
local grant, tat, count = site_room(KEYS[1], KEYS[2], now, n, T, burst, cap)
return site_commit(KEYS[1], KEYS[2], now, T, burst, cap, grant, grant < n, tat, count,
                   ARGV[6], tonumber(ARGV[7]))
"""

# Units a transaction was granted and did not send. KEYS: as SITE_TAKE (the hour it was
# counted in). ARGV: now_ms, n, interval_ms, hour counted (1/0). -> 1
SITE_GIVE_BACK = """
local now = tonumber(ARGV[1]); local n = tonumber(ARGV[2]); local T = tonumber(ARGV[3])
if T > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat > now then
    tat = tat - n * T
    if tat < now then tat = now end
    redis.call('SET', KEYS[1], string.format('%.3f', tat), 'KEEPTTL')
  end
end
if ARGV[4] == '1' then
  local c = tonumber(redis.call('GET', KEYS[2]) or '0')
  if c < n then n = c end
  if n > 0 then redis.call('DECRBY', KEYS[2], n) end
end
return 1
"""

# All of one node's leases renewed in one step, across sites; a lease Redis no longer
# holds (expired, or taken from the local share while Redis was away) is registered
# again if the site has room, else reported lost. KEYS: per site i the lease sorted set
# (2i-1) and holders hash (2i), then the set of sites. ARGV: now_ms, ttl_ms, node, the
# number of sites, the site names, then per lease: site index, lease id, max.
# -> the lost lease ids
LEASES_KEEP = """
local now = tonumber(ARGV[1]); local ttl = tonumber(ARGV[2]); local node = ARGV[3]
local nsites = tonumber(ARGV[4])
local sites = KEYS[#KEYS]
for s = 1, nsites do
  local z = KEYS[2 * s - 1]; local h = KEYS[2 * s]
  local gone = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  for _, id in ipairs(gone) do redis.call('HDEL', h, id) end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', z, '-inf', now) end
end
local lost = {}
local i = 5 + nsites
while i + 2 <= #ARGV do
  local s = tonumber(ARGV[i]); local id = ARGV[i + 1]; local max = tonumber(ARGV[i + 2])
  local z = KEYS[2 * s - 1]; local h = KEYS[2 * s]
  if redis.call('ZSCORE', z, id) then
    redis.call('ZADD', z, now + ttl, id)
  elseif redis.call('ZCARD', z) < max then
    redis.call('ZADD', z, now + ttl, id)
    redis.call('HSET', h, id, node)
    redis.call('SADD', sites, ARGV[4 + s])
  else
    lost[#lost + 1] = id
  end
  i = i + 3
end
for s = 1, nsites do
  for _, k in ipairs({KEYS[2 * s - 1], KEYS[2 * s]}) do
    if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
  end
end
return lost
"""


@dataclass(frozen=True)
class SiteCall:
    """A site's part of a script call: SITE_LIB's keys and arguments (now_ms, interval_ms,
    burst, hour cap, hour counter ttl_ms, the hour's end), made at `now` in `hour`."""

    site: str
    limits: SiteLimits
    now: float
    hour: int
    keys: list[str]
    args: list[int | str]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class SharedShaping:
    """One node's site rates and connection leases (see the module docstring)."""

    def __init__(self, client: ClusterClient, clock: Clock, limits: SharedLimits, *,
                 ttl: float = LEASE_TTL, wait: float = LEASE_WAIT) -> None:
        self.client = client
        self.clock = clock
        self.limits = limits
        self.ttl = ttl
        self.wait = wait
        self._take = client.redis.register_script(SITE_TAKE)
        self._give_back = client.redis.register_script(SITE_GIVE_BACK)
        self._keep = client.redis.register_script(LEASES_KEEP)
        self._local = SiteThrottle()   # the per-second share while Redis is away
        self._hour_seen: dict[str, int] = {}   # hour key -> the count Redis last said
        self.held: dict[str, ConnectionLease] = {}   # lease id -> lease, this node's
        self._releasing: list[ConnectionLease] = []   # closed, not yet released in Redis
        self._lost: list[Callable[[ConnectionLease], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._stopped = False
        client.on_up(self._renew_soon)

    # -- rates -------------------------------------------------------------------------

    def _keys(self, site: str, hour: int) -> list[str]:
        # The hour counter is SharedLimits' fixed-window key, so reconcile() adds to it.
        return [self.client.key("site-rate", site),
                self.client.key("fw", f"site-hour:{site}", str(hour))]

    def prepare(self, site: str, limits: SiteLimits) -> SiteCall:
        """The keys and arguments of `site`'s part of a script call made now (SITE_TAKE's,
        or relay/cluster/warmup.py's transaction script)."""
        now = self.clock.now()
        hour = math.floor(now / HOUR)
        mps, cap = limits.messages_per_second, limits.messages_per_hour
        args: list[int | str] = [
            _ms(now), f"{1000.0 / mps:.6f}" if mps > 0 else 0, f"{max(1.0, mps)!r}", cap,
            _ms(HOUR) + 60_000, _ms((hour + 1) * HOUR)]
        return SiteCall(site, limits, now, hour, self._keys(site, hour), args)

    def answered(self, call: SiteCall, granted: int, count: int, next_ms: int) -> SiteGrant:
        """Redis's answer to `call`: the grant (the hour's count remembered for the local
        share should Redis go away)."""
        self._hour_seen[call.keys[1]] = count
        if len(self._hour_seen) > 10_000:
            self._hour_seen.clear()
        return SiteGrant(call.site, granted, next_ms / 1000 if next_ms else call.now,
                         call.hour, True, limited=next_ms != 0)

    async def take(self, site: str, limits: SiteLimits, want: int) -> SiteGrant:
        """Up to `want` of `site`'s messages per second and per hour, cluster-wide."""
        call = self.prepare(site, limits)
        now_ms, *rest = call.args
        args = [now_ms, want, *rest]
        try:
            granted, count, next_ms = ints(await self.client.call(
                lambda r: self._take(keys=call.keys, args=args)))
        except ClusterUnavailable:
            return self.take_local(call, want)
        return self.answered(call, granted, count, next_ms)

    def take_local(self, call: SiteCall, want: int) -> SiteGrant:
        """`call`'s grant from this node's local share (Redis unreachable)."""
        return self._take_local(call.site, call.limits, want, call.now, call.hour)

    def _take_local(self, site: str, limits: SiteLimits, want: int, now: float,
                    hour: int) -> SiteGrant:
        """This node's share while Redis is unreachable: the rate over the live nodes, and
        what was left of the hour over them (counted in the ledger, added later)."""
        live = max(1, self.limits.live_nodes())
        share = SiteLimits(messages_per_second=limits.messages_per_second / live)
        n = self._local.allowed(site, share, now, want)
        hour_key = self._keys(site, hour)[1]
        full = False
        if limits.messages_per_hour > 0:
            left = (local_share(limits.messages_per_hour, self._hour_seen.get(hour_key, 0),
                                live) - self.limits.ledger.used(hour_key))
            if left <= n:
                n, full = max(0, left), True
        self._local.take(site, share, now, n)
        if n and limits.messages_per_hour > 0:
            self.limits.ledger.record(Pending("fixed", hour_key, n,
                                              ttl_ms=_ms(HOUR) + 60_000))
        next_at = now
        if n < want:
            next_at = ((hour + 1) * HOUR if full
                       else self._local.next_at(site, share, now))
        return SiteGrant(site, n, next_at, hour, False, limited=n < want)

    async def give_back(self, grant: SiteGrant, n: int, limits: SiteLimits) -> None:
        """`n` of `grant` were not sent after all: the site's count shrinks by them (a
        local grant stays counted: the local share errs on the safe side)."""
        if n <= 0 or not grant.shared:
            return
        mps = limits.messages_per_second
        keys = self._keys(grant.site, grant.hour)
        args: list[int | str] = [_ms(self.clock.now()), n,
                                 f"{1000.0 / mps:.6f}" if mps > 0 else "0",
                                 1 if limits.messages_per_hour > 0 else 0]
        try:
            await self.client.call(lambda r: self._give_back(keys=keys, args=args))
        except ClusterUnavailable:
            log.warning("cluster: %d unsent unit(s) of site %s stay counted (redis down)",
                        n, grant.site)

    # -- leases ------------------------------------------------------------------------

    def on_lost(self, callback: Callable[[ConnectionLease], None]) -> None:
        """`callback(lease)` when a renewal finds a lease no longer held (close its
        connection)."""
        self._lost.append(callback)

    def leases_of(self, site: str) -> int:
        return sum(1 for lease in self.held.values() if lease.site == site)

    async def acquire(self, site: str, max_connections: int,
                      spare: Callable[[], Awaitable[ConnectionLease | None]] | None = None
                      ) -> ConnectionLease | None:
        """A lease for one more connection to `site`, or None when none came within
        `wait` seconds. `spare()`: close one of this node's idle connections to the site
        and hand over its lease (None: there is none)."""
        deadline = self.clock.monotonic() + self.wait
        delay = POLL_FIRST
        while True:
            lease = self._reuse(site) or await self._acquire_once(site, max_connections)
            if lease is None and spare is not None:
                lease = await spare()
            if lease is not None:
                return lease
            left = deadline - self.clock.monotonic()
            if left <= 0 or self._stopped:
                return None
            await self.clock.sleep(min(delay, left))
            delay = min(delay * 2, POLL_MAX)

    def _reuse(self, site: str) -> ConnectionLease | None:
        """A lease of `site` given back by a closed connection and not yet released in
        Redis: the new connection takes it over (no call)."""
        for i, lease in enumerate(self._releasing):
            if lease.site == site and not lease.lost:
                del self._releasing[i]
                self.held[lease.lease_id] = lease
                return lease
        return None

    async def _acquire_once(self, site: str, max_connections: int) -> ConnectionLease | None:
        if not self._stopped:
            try:
                lease_id = await self.limits.acquire_lease(site, max_connections, self.ttl)
            except ClusterUnavailable:
                pass
            else:
                if lease_id is None:
                    return None
                return self._hold(ConnectionLease(site, lease_id, max_connections))
        # Redis unreachable (or this node stopping): the local share.
        share = max(1, max_connections // max(1, self.limits.live_nodes()))
        if self.leases_of(site) >= share:
            return None
        lease_id = f"{self.client.node_id}:{secrets.token_hex(6)}"
        return self._hold(ConnectionLease(site, lease_id, max_connections, shared=False))

    def _hold(self, lease: ConnectionLease) -> ConnectionLease:
        self.held[lease.lease_id] = lease
        return lease

    def release(self, lease: ConnectionLease) -> None:
        """The lease's connection closed: released in Redis in the background."""
        if self.held.pop(lease.lease_id, None) is None:
            return
        if lease.shared and not lease.lost and not self._stopped:
            self._releasing.append(lease)
            if len(self._releasing) == 1:
                self._spawn(self._release_pending())

    async def _release_pending(self) -> None:
        await asyncio.sleep(0)   # a connection opened in this same step takes it over
        while self._releasing:
            lease = self._releasing.pop(0)
            with contextlib.suppress(ClusterUnavailable):   # else it expires after the TTL
                await self.limits.release_lease(lease.site, lease.lease_id)

    async def renew(self) -> int:
        """Renew every lease of this node in one call (registering the local ones);
        returns how many were lost. ClusterUnavailable when Redis does not answer."""
        leases = list(self.held.values())
        if not leases:
            return 0
        sites = sorted({lease.site for lease in leases})
        index = {site: i + 1 for i, site in enumerate(sites)}
        keys: list[str] = []
        for site in sites:
            base = self.client.key("lease", site)
            keys += [base, base + ":holders"]
        keys.append(self.client.key("lease-sites"))
        args: list[int | str] = [_ms(self.clock.now()), _ms(self.ttl), self.client.node_id,
                                 len(sites), *sites]
        for lease in leases:
            args += [index[lease.site], lease.lease_id, lease.max_connections]
        reply = await self.client.call(lambda r: self._keep(keys=keys, args=args))
        lost = {x.decode() if isinstance(x, bytes) else str(x) for x in reply}
        for lease in leases:
            if lease.lease_id in lost:
                lease.lost = True
                self.held.pop(lease.lease_id, None)
                log.warning("cluster: connection lease %s of site %s lost (the site is "
                            "full): its connection closes", lease.lease_id, lease.site)
                for callback in self._lost:
                    callback(lease)
            elif lease.lease_id not in self.held:
                # Closed while the renewal was under way: it may be registered again.
                self._releasing.append(lease)
                self._spawn(self._release_pending())
            else:
                lease.shared = True
        return len(lost)

    def _renew_soon(self) -> None:
        """Redis answers again: register the leases taken from the local share now."""
        if self.held and not self._stopped:
            with contextlib.suppress(RuntimeError):   # no running loop (shutting down)
                self._spawn(self._renew_quietly())

    async def _renew_quietly(self) -> None:
        with contextlib.suppress(ClusterUnavailable):
            await self.renew()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the releases and renewals in flight (stop, tests)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def start(self) -> None:
        """Renew every ttl / 3 until stop()."""
        self._renewer = asyncio.get_running_loop().create_task(
            self._renew_loop(), name="cluster-lease-renewal")

    async def _renew_loop(self) -> None:
        while True:
            await self.clock.sleep(self.ttl / 3)
            try:
                await self.renew()
            except ClusterUnavailable:
                pass   # logged by the client; the leases held locally stay
            except Exception:
                log.exception("cluster: lease renewal failed")

    async def stop(self) -> None:
        """Stop renewing and release every lease (this node is stopping: its connections
        close; new ones meanwhile count against the local share)."""
        await cancel_and_wait(self._renewer)
        self._renewer = None
        for lease in list(self.held.values()):
            self.release(lease)
        self._stopped = True   # connections closing from now on: their leases expire
        await self._release_pending()
        await self.drain()
