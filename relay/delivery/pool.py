"""The idle SMTP connections of one Sender: take, put, reap; per-site connection counts.

Owns the bookkeeping of relay/delivery/client.py's connection cache; the client owns the
connections themselves and hands in how to close one (`discard`) and how to make a taken
one ready for MAIL (`prepare`: RSET after a transaction abandoned half-way).

- The pool key is the target, not the destination: (MX host name, IP address, port, source
  address), like Postfix's connection cache looking up by next-hop address. Many domains
  hosted behind one MX share its connections. `take()` walks the targets in order and takes
  the most recently used idle connection under one of their keys: for a target of the most
  preferred MX level any such connection; for a less preferred one only a connection whose
  last transaction was for the same destination (made when its better MX failed; another
  domain's backup-MX connection would skip this one's primary). A connection made with
  weaker TLS than the message needs (plain for "require", unverified for "verify") stays
  pooled for others.
- Caps: at most delivery.max_connections_per_destination idle connections per key and
  delivery.max_idle_connections in all; over either, the oldest idle one is closed.
- Sites: a connection counts against the shaping site of the transaction using it
  (`site_open`); reused by another site it moves to that site's count, within that site's
  limit (the oldest idle ones of the site are closed to make room: `victims`).
- Idle expiry: a connection idle for delivery.idle_connection_timeout (or dead) is closed by
  the reaper, one pass at a time, the pass's connections closed together.
- Leases ([cluster], `use_leases`): every connection to a provider's site with
  max_connections (relay.warmup.providers.is_provider_site) also holds a lease from the
  `SiteLeases` (relay/cluster/shaping.py), taken before it is opened (`reserve`) or
  claimed, and given back once it is closed (`closed`) or moved to another site. No
  lease in time: `reserve` raises NoLease and no connection is opened. A lease reported
  lost closes its connection: at once if idle, else when its transaction ends (`put`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Protocol, TypeVar

from relay.clock import Clock
from relay.config import Delivery
from relay.tasks import cancel_and_wait
from relay.warmup.providers import is_provider_site
from relay.warmup.shaping import ConnectionLease

__all__ = ["NoLease", "Pool", "PoolKey", "Pooled", "SiteLeases", "Target", "pool_key"]


class NoLease(Exception):
    """No connection lease for the site came in time: the cluster's connections to it
    are all in use."""


class SiteLeases(Protocol):
    """Connection leases shared across nodes (relay.cluster.shaping.SharedShaping)."""

    async def acquire(self, site: str, max_connections: int,
                      spare: Callable[[], Awaitable[ConnectionLease | None]] | None = None
                      ) -> ConnectionLease | None: ...

    def release(self, lease: ConnectionLease) -> None: ...

    def on_lost(self, callback: Callable[[ConnectionLease], None]) -> None: ...


class Target(Protocol):
    """One host to try, as routing produces it (relay/delivery/routing.py `Target`)."""

    @property
    def host_name(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def preference(self) -> int: ...


# (MX host name lower-cased without the final dot, IP address, port, source address)
PoolKey = tuple[str, str, int, str]


def pool_key(target: Target, src: str) -> PoolKey:
    return (target.host_name.rstrip(".").lower(), target.address, target.port, src)


class Pooled(Protocol):
    """What the pool keeps of a connection."""

    key: PoolKey
    idle_since: float
    site: str            # the shaping site it counts against ("" = none)
    destination: str     # the destination its last transaction was for
    tls: bool
    verified: bool       # the certificate was checked against the MX host name
    rset_needed: bool    # its last transaction was left half-way: `prepare` first

    @property
    def alive(self) -> bool: ...


C = TypeVar("C", bound=Pooled)


class Pool(Generic[C]):
    """Idle connections per key (oldest first), and open connections per site."""

    def __init__(self, delivery: Delivery, clock: Clock,
                 discard: Callable[[C, bool], Awaitable[None]],
                 prepare: Callable[[C], Awaitable[bool]]) -> None:
        self._cfg = delivery
        self._clock = clock
        self._discard = discard    # close a connection (QUIT first if the flag says)
        self._prepare = prepare    # RSET a taken one (rset_needed); False: it was unusable
        self._by_key: dict[PoolKey, list[C]] = {}   # idle, per key, oldest first
        self.idle: dict[C, None] = {}   # every idle connection, oldest first
        self.site_open: dict[str, int] = {}   # open connections per shaping site
        self._reaper: asyncio.Task[None] | None = None
        self._reaping = asyncio.Lock()   # one reap pass at a time
        self.leases: SiteLeases | None = None   # [cluster]: see use_leases
        self._lease: dict[C, ConnectionLease] = {}   # connection -> its lease
        self._closing: set[asyncio.Task[None]] = set()

    def use_leases(self, leases: SiteLeases) -> None:
        """[cluster]: connections to a provider's site hold a lease from `leases`."""
        self.leases = leases
        leases.on_lost(self._lease_lost)

    # ------------------------------------------------------------------ take and put

    async def take(self, destination: str, targets: Sequence[Target], src: str,
                   need_tls: bool = False, need_verified: bool = False) -> C | None:
        """An idle connection for one of `targets`, tried in their order (see the module
        docstring); None: open a new one."""
        if not self.idle:
            return None
        best = min(t.preference for t in targets) if targets else 0
        for target in targets:
            key = pool_key(target, src)
            if key not in self._by_key:
                continue
            only = None if target.preference <= best else destination
            conn = await self._take_key(key, only, need_tls, need_verified)
            if conn is not None:
                return conn
        return None

    async def _take_key(self, key: PoolKey, only: str | None, need_tls: bool,
                        need_verified: bool) -> C | None:
        while idle := self._by_key.get(key):
            # the most recently used that fits; plain (or unverified) ones stay pooled
            conn = next((c for c in reversed(idle)
                         if (only is None or c.destination == only)
                         and (c.tls or not need_tls)
                         and (c.verified or not need_verified)), None)
            if conn is None:
                return None
            self.unpool(conn)
            if (self._clock.monotonic() - conn.idle_since >= self._cfg.idle_connection_timeout
                    or not conn.alive):
                await self._discard(conn, conn.alive)
                continue
            if conn.rset_needed and not await self._prepare(conn):
                continue
            return conn
        return None

    def put(self, conn: C) -> list[C]:
        """Pool `conn`; return the idle connections to close to keep the caps: at most
        max_connections_per_destination per key and max_idle_connections in all (the
        oldest go). They no longer count against their site. A connection whose lease
        was lost is not pooled: it is returned to be closed."""
        lease = self._lease.get(conn)
        if lease is not None and lease.lost:
            self.forget_site(conn)
            return [conn]
        idle = self._by_key.setdefault(conn.key, [])
        conn.idle_since = self._clock.monotonic()
        idle.append(conn)
        self.idle[conn] = None
        evicted: list[C] = []
        while len(idle) > self._cfg.max_connections_per_destination:
            evicted.append(idle[0])
            self.unpool(idle[0])
        while len(self.idle) > self._cfg.max_idle_connections:
            oldest = next(iter(self.idle))
            evicted.append(oldest)
            self.unpool(oldest)
        for c in evicted:
            self.forget_site(c)
        if self.idle and (self._reaper is None or self._reaper.done()):
            self._reaper = asyncio.get_running_loop().create_task(self._reap_loop())
        return evicted

    def unpool(self, conn: C) -> None:
        idle = self._by_key.get(conn.key)
        if idle is not None:
            with contextlib.suppress(ValueError):
                idle.remove(conn)
            if not idle:
                del self._by_key[conn.key]
        self.idle.pop(conn, None)

    def drain(self) -> list[C]:
        """Take every idle connection out (closing the Sender)."""
        conns = list(self.idle)
        self._by_key.clear()
        self.idle.clear()
        return conns

    # ------------------------------------------------------------------ expiry

    async def reap(self) -> int:
        """Close idle connections older than delivery.idle_connection_timeout (or dead);
        return how many. They are closed concurrently, so one pass takes about one QUIT
        round trip however many expired; one pass at a time."""
        async with self._reaping:
            now = self._clock.monotonic()
            limit = self._cfg.idle_connection_timeout
            expired = [c for c in self.idle if now - c.idle_since >= limit or not c.alive]
            for c in expired:
                self.unpool(c)
            await asyncio.gather(*(self._discard(c, True) for c in expired))
            return len(expired)

    async def _reap_loop(self) -> None:
        period = max(self._cfg.idle_connection_timeout / 2, 0.05)
        while self.idle:
            await self._clock.sleep(period)
            with contextlib.suppress(Exception):
                await self.reap()

    async def stop(self) -> None:
        """Stop the reaper (and wait for the connections being closed)."""
        await cancel_and_wait(self._reaper)
        self._reaper = None
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # ------------------------------------------------------------------ sites

    def forget_site(self, conn: C) -> None:
        if conn.site:
            self.site_open[conn.site] -= 1
            conn.site = ""

    def closed(self, conn: C) -> None:
        """`conn` is closed: its lease goes back (only now, so the site never sees one
        more connection than there are leases)."""
        self._give_back(self._lease.pop(conn, None))

    def _give_back(self, lease: ConnectionLease | None) -> None:
        if lease is not None and self.leases is not None:
            self.leases.release(lease)

    def _needs_lease(self, site: str, limit: int) -> bool:
        return self.leases is not None and limit > 0 and is_provider_site(site)

    async def _acquire(self, site: str, limit: int) -> ConnectionLease:
        """A lease for one more connection to `site`; NoLease when none came in time."""
        assert self.leases is not None
        lease = await self.leases.acquire(site, limit, functools.partial(self._spare, site))
        if lease is None:
            raise NoLease(site)
        return lease

    async def _spare(self, site: str) -> ConnectionLease | None:
        """Close this node's oldest idle connection to `site` (another MX host or source
        address than the one wanted) and hand its lease over; None if it has none."""
        conn = next((c for c in self.idle if c.site == site and c in self._lease), None)
        if conn is None:
            return None
        self.unpool(conn)
        lease = self._lease.pop(conn)
        self.forget_site(conn)
        await self._discard(conn, True)
        return lease

    def _close_later(self, conn: C) -> None:
        task = asyncio.get_running_loop().create_task(self._close(conn))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, conn: C) -> None:
        await self._discard(conn, True)

    def _lease_lost(self, lease: ConnectionLease) -> None:
        """Redis no longer holds `lease` for this node: an idle connection holding it
        closes now, one in use when its transaction ends (put)."""
        conn = next((c for c, held in self._lease.items() if held is lease), None)
        if conn is not None and conn in self.idle:
            self.unpool(conn)
            self.forget_site(conn)
            self._close_later(conn)

    def victims(self, site: str, limit: int) -> list[C]:
        """Take out of the pool the idle connections of `site` (oldest first) that must close
        before one more of its connections may be open; they no longer count against it."""
        victims: list[C] = []
        excess = self.site_open.get(site, 0) - limit + 1 if site and limit else 0
        if excess > 0:
            victims = [c for c in self.idle if c.site == site][:excess]
            for c in victims:
                self.unpool(c)
                self.forget_site(c)
        return victims

    async def claim(self, conn: C, site: str, limit: int) -> bool:
        """Count the taken `conn` against `site` instead of its own. False ([cluster]: no
        lease for `site` in time): `conn` was closed, open none."""
        self.forget_site(conn)
        self._give_back(self._lease.pop(conn, None))   # it no longer counts there
        if not site:
            return True
        victims = self.victims(site, limit)
        self.site_open[site] = self.site_open.get(site, 0) + 1
        conn.site = site
        if victims:   # closed first: their leases are what the new one may take over
            await asyncio.gather(*(self._discard(c, True) for c in victims))
        try:
            if self._needs_lease(site, limit):
                self._lease[conn] = await self._acquire(site, limit)
        except NoLease:
            self.forget_site(conn)
            await self._discard(conn, True)
            return False
        return True

    async def reserve(self, site: str, limit: int) -> ConnectionLease | None:
        """Count one more connection about to be opened against `site` (before the first
        await, so concurrent openers see each other), closing idle ones over its limit;
        [cluster]: and its lease (NoLease: none in time, nothing counted)."""
        victims = self.victims(site, limit)
        if site:
            self.site_open[site] = self.site_open.get(site, 0) + 1
        lease = None
        try:
            if victims:   # closed first: their leases are what the new one may take over
                await asyncio.gather(*(self._discard(c, True) for c in victims))
            if self._needs_lease(site, limit):
                lease = await self._acquire(site, limit)
        except BaseException:
            self.release(site)
            raise
        return lease

    def opened(self, conn: C, site: str, lease: ConnectionLease | None) -> None:
        """The connection `reserve` counted is open: it counts against `site` (and
        holds `lease`)."""
        conn.site = site
        if lease is not None:
            self._lease[conn] = lease

    def release(self, site: str, lease: ConnectionLease | None = None) -> None:
        """The connection `reserve` counted was not opened after all."""
        if site:
            self.site_open[site] -= 1
        self._give_back(lease)
