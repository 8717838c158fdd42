"""The shared counters as their callers see them: a capped fixed window, a sliding window
reservation, a connection lease. Each is one script call (relay/cluster/scripts.py) when
Redis answers; when it does not (ClusterUnavailable), the answer comes from this node's
local share (relay/cluster/fallback.py) and the count goes into the ledger, added to
Redis once when it answers again (`reconcile`, run by the heartbeat and on reconnect).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relay.clock import Clock
from relay.cluster.client import ClusterClient, ClusterUnavailable
from relay.cluster.fallback import Ledger, Pending, local_share, passed
from relay.cluster.scripts import Scripts, ints

log = logging.getLogger("relay.cluster")
# A reconciliation batch's guard lives this long in Redis: longer than any outage a retry
# could follow (the windows it adds to are at most a day or so).
GUARD_TTL_MS = 3 * 86400 * 1000
# Last counts remembered per key (for the local share), most recently used first.
MAX_REMEMBERED = 10_000
# Reconciliation batches sent per pipelined round trip.
RECONCILE_CHUNK = 500


@dataclass(frozen=True)
class Grant:
    granted: int
    count: int  # the window's count after this call (cluster-wide, or local when not shared)
    shared: bool  # False: decided from the local share (Redis unreachable)


@dataclass(frozen=True)
class Reservation:
    key: str
    n: int
    bucket: int
    shared: bool
    at_ms: int = 0  # when it was taken (a local one: its place in the ledger)
    window_ms: int = 0
    bucket_ms: int = 0


@dataclass(frozen=True)
class Window:
    """One sliding window of a `reserve_all()`: `name`'s `window` seconds in buckets of
    `bucket` seconds; it must have room for `need` below `limit` (-1: no limit, counted
    only) and `take` is added (more than `need` for a rate's debt)."""

    name: str
    limit: int
    window: float
    bucket: float
    need: int
    take: int


@dataclass(frozen=True)
class Taken:
    """What `reserve_all()` did: `refused` the index of the first window without room
    (nothing taken) or None; `held` the reservations of the windows it added to."""

    refused: int | None
    held: list[Reservation]
    shared: bool


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class SharedLimits:
    def __init__(self, client: ClusterClient, clock: Clock,
                 live_nodes: Callable[[], int]) -> None:
        self.client = client
        self.clock = clock
        self.live_nodes = live_nodes
        self.scripts = Scripts(client.redis)
        self.ledger = Ledger(client.node_id)
        self._epoch = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._last: OrderedDict[str, int] = OrderedDict()
        self._seen_ms: dict[str, int] = {}
        self._reconciling = asyncio.Lock()

    def _remember(self, key: str, count: int) -> None:
        self._last[key] = count
        self._last.move_to_end(key)
        self._seen_ms[key] = _ms(self.clock.now())
        while len(self._last) > MAX_REMEMBERED:
            gone, _ = self._last.popitem(last=False)
            self._seen_ms.pop(gone, None)

    def share(self, key: str, limit: int) -> int:
        """This node's local share of `limit` for `key` (Redis unreachable)."""
        return local_share(limit, self._last.get(key, 0), self.live_nodes())

    def last_seen(self, key: str, within_ms: int | None = None) -> int:
        """`key`'s count as Redis last told this node (0 when it never did, or, with
        `within_ms`, when that was longer ago: a 1 s window's count of a minute ago says
        nothing of now)."""
        if within_ms is not None and _ms(self.clock.now()) - self._seen_ms.get(key, 0) \
                > within_ms:
            return 0
        return self._last.get(key, 0)

    # -- fixed windows -----------------------------------------------------------------

    def window_key(self, name: str, window: float) -> str:
        """The counter of `name`'s current fixed window (`window` seconds, epoch-aligned:
        a day window is the UTC day)."""
        return self.client.key("fw", name, str(int(self.clock.now() // window)))

    async def take(self, name: str, n: int, cap: int, window: float,
                   partial: bool = False) -> Grant:
        """Up to `n` (all or nothing unless `partial`) of `cap` in `name`'s window."""
        key = self.window_key(name, window)
        ttl = _ms(window) + 60_000
        try:
            granted, count = ints(await self.client.call(
                lambda r: self.scripts.fixed_take(keys=[key],
                                                  args=[n, cap, ttl, 1 if partial else 0])))
        except ClusterUnavailable:
            used = self.ledger.used(key)
            left = self.share(key, cap) - used
            granted = max(0, min(n, left)) if partial else (n if n <= left else 0)
            if granted:
                self.ledger.record(Pending("fixed", key, granted, ttl_ms=ttl))
            return Grant(granted, used + granted, shared=False)
        self._remember(key, count)
        return Grant(granted, count, shared=True)

    # -- sliding windows ---------------------------------------------------------------

    async def reserve(self, name: str, n: int, limit: int, window: float,
                      bucket: float) -> Reservation | None:
        """`n` in `name`'s sliding `window` (buckets of `bucket` seconds) if it stays at or
        below `limit`; None when it would not."""
        base = self.client.key("sw", name)
        keys = [base, base + ":ids"]
        now = _ms(self.clock.now())
        try:
            granted, total, b = ints(await self.client.call(
                lambda r: self.scripts.slide_reserve(
                    keys=keys, args=[now, _ms(window), _ms(bucket), n, limit])))
        except ClusterUnavailable:
            if self.ledger.used(base) + n > self.share(base, limit):
                return None
            self.ledger.record(Pending("sliding", base, n, at_ms=now, window_ms=_ms(window),
                                       bucket_ms=_ms(bucket)))
            return Reservation(base, n, now // _ms(bucket), shared=False)
        self._remember(base, total)
        return Reservation(base, n, b, shared=True) if granted else None

    async def release(self, reservation: Reservation) -> None:
        """Give a reservation back (best effort: a local one is simply forgotten)."""
        if not reservation.shared:
            return
        keys = [reservation.key]
        try:
            await self.client.call(lambda r: self.scripts.slide_release(
                keys=keys, args=[reservation.bucket, reservation.n]))
        except ClusterUnavailable:
            log.warning("cluster: a released reservation of %s stays counted (redis down)",
                        reservation.key)

    # -- every window of a recipient at once -------------------------------------------

    def _keys(self, name: str) -> str:
        return self.client.key("sw", name)

    async def reserve_all(self, windows: list[Window]) -> Taken:
        """Every window's `take`, if each has room for its `need`, in ONE script call (one
        round trip); else nothing (`refused`: the first window without room). Redis
        unreachable: the same decision on this node's local shares, counted in the
        ledger. After an outage this node first adds what it owes (`reconcile`), so its
        own counts of the gap are in Redis before it takes more."""
        if not windows:
            return Taken(None, [], shared=True)
        if len(self.ledger):
            try:
                await self.reconcile()
            except ClusterUnavailable:
                return self._reserve_all_locally(windows)
        now = _ms(self.clock.now())
        keys: list[str] = []
        args: list[int] = [now, len(windows)]
        for w in windows:
            base = self._keys(w.name)
            keys += [base, base + ":ids"]
            args += [_ms(w.window), _ms(w.bucket), w.need, w.take, w.limit]
        try:
            reply = ints(await self.client.call(
                lambda r: self.scripts.slide_reserve_all(keys=keys, args=args)))
        except ClusterUnavailable:
            return self._reserve_all_locally(windows)
        refused = reply[0]
        held = []
        for i, w in enumerate(windows):
            total, bucket = reply[1 + 2 * i], reply[2 + 2 * i]
            self._remember(keys[2 * i], total)
            if not refused and w.take > 0:
                held.append(Reservation(keys[2 * i], w.take, bucket, shared=True))
        return Taken(refused - 1 if refused else None, held, shared=True)

    def _reserve_all_locally(self, windows: list[Window]) -> Taken:
        now = _ms(self.clock.now())
        for i, w in enumerate(windows):
            if w.limit < 0:
                continue
            key, win = self._keys(w.name), _ms(w.window)
            share = local_share(w.limit, self.last_seen(key, win), self.live_nodes())
            if self.ledger.used_at(key, now) + w.need > share:
                return Taken(i, [], shared=False)
        held = []
        for w in windows:
            if w.take <= 0:
                continue
            key, win, bms = self._keys(w.name), _ms(w.window), _ms(w.bucket)
            self.ledger.record(Pending("sliding", key, w.take, at_ms=now, window_ms=win,
                                       bucket_ms=bms))
            held.append(Reservation(key, w.take, now // bms, shared=False, at_ms=now,
                                    window_ms=win, bucket_ms=bms))
        return Taken(None, held, shared=False)

    async def release_all(self, held: list[Reservation]) -> None:
        """Give reservations back in one call (best effort: when Redis is unreachable a
        shared one stays counted until its window passes; a local one leaves the ledger
        unless its batch is already on its way to Redis)."""
        # A local one still owed leaves the ledger; one already added to Redis (its batch
        # reconciled) is given back there like a shared one: same key, same bucket.
        shared = [r for r in held if r.shared or not self.ledger.forget(Pending(
            "sliding", r.key, r.n, at_ms=r.at_ms, window_ms=r.window_ms,
            bucket_ms=r.bucket_ms))]
        if not shared:
            return
        keys = [r.key for r in shared]
        args = [x for r in shared for x in (r.bucket, r.n)]
        try:
            await self.client.call(lambda r: self.scripts.slide_release_all(keys=keys,
                                                                            args=args))
        except ClusterUnavailable:
            log.warning("cluster: %d released reservation(s) stay counted (redis down)",
                        len(shared))

    async def total(self, name: str, window: float, bucket: float) -> tuple[int, bool]:
        """`name`'s sliding window total now and whether Redis said so (True), or this
        node's own figure (False: Redis unreachable): the count Redis last told it plus
        what it counted since."""
        key = self._keys(name)
        keys = [key, key + ":ids"]
        args = [_ms(self.clock.now()), _ms(window), _ms(bucket)]
        try:
            total = int(await self.client.call(
                lambda r: self.scripts.slide_total(keys=keys, args=args)))
        except ClusterUnavailable:
            return self.last_seen(key) + self.ledger.used(key), False
        self._remember(key, total)
        return total, True

    # -- connection leases -------------------------------------------------------------

    def _lease_keys(self, site: str) -> list[str]:
        base = self.client.key("lease", site)
        return [base, base + ":holders", self.client.key("lease-sites")]

    async def acquire_lease(self, site: str, max_leases: int, ttl: float) -> str | None:
        """A lease id for one more connection to `site`, or None at `max_leases`."""
        lease = f"{self.client.node_id}:{secrets.token_hex(6)}"
        keys = self._lease_keys(site)
        args: list[int | str] = [_ms(self.clock.now()), _ms(ttl), max_leases, lease,
                                 self.client.node_id, site]
        ok, _held = ints(await self.client.call(
            lambda r: self.scripts.lease_acquire(keys=keys, args=args)))
        return lease if ok else None

    async def renew_lease(self, site: str, lease: str, ttl: float) -> bool:
        """False: the lease expired (this node was too late) and is no longer held."""
        keys = self._lease_keys(site)[:2]
        args: list[int | str] = [_ms(self.clock.now()), _ms(ttl), lease]
        return bool(int(await self.client.call(
            lambda r: self.scripts.lease_renew(keys=keys, args=args))))

    async def release_lease(self, site: str, lease: str) -> None:
        keys = self._lease_keys(site)[:2]
        await self.client.call(lambda r: self.scripts.lease_release(keys=keys, args=[lease]))

    # -- reconciliation ----------------------------------------------------------------

    async def reconcile(self) -> int:
        """Add the counts made while Redis was unreachable, each batch once. Returns the
        batches confirmed; ClusterUnavailable if Redis went away again (the rest stay).
        One at a time (the heartbeat and every recipient after an outage ask for it: the
        others wait for the one running, then find nothing owed), and RECONCILE_CHUNK
        batches per pipelined round trip: a long outage owes thousands of buckets."""
        async with self._reconciling:
            return await self._reconcile()

    async def _reconcile(self) -> int:
        done = 0
        now = _ms(self.clock.now())
        owed: list[tuple[str, Pending]] = []
        for batch in self.ledger.seal(self._epoch):
            p = self.ledger.current(batch.batch_id)
            if p is None or p.n <= 0 or passed(p, now):
                # all given back, or its window has passed: Redis would drop it at once
                self.ledger.confirm(batch.batch_id)
            else:
                owed.append((batch.batch_id, p))
        for start in range(0, len(owed), RECONCILE_CHUNK):
            chunk = owed[start:start + RECONCILE_CHUNK]
            await self.client.call(functools.partial(self._add_batches, chunk=chunk))
            for batch_id, _p in chunk:
                self.ledger.confirm(batch_id)
            done += len(chunk)
        if done:
            log.info("cluster: reconciled %d local count(s) into redis", done)
        return done

    async def _add_batches(self, r: Any, chunk: list[tuple[str, Pending]]) -> list[Any]:
        """FIXED_ADD / SLIDE_ADD of each batch (guarded by its id), one pipeline."""
        async with r.pipeline(transaction=False) as pipe:
            for batch_id, p in chunk:
                guard = self.client.key("reconciled", batch_id)
                if p.kind == "fixed":
                    await self.scripts.fixed_add(keys=[p.key, guard],
                                                 args=[p.n, p.ttl_ms, GUARD_TTL_MS],
                                                 client=pipe)
                else:
                    await self.scripts.slide_add(
                        keys=[p.key, p.key + ":ids", guard],
                        args=[p.at_ms, p.window_ms, p.bucket_ms, p.n, GUARD_TTL_MS],
                        client=pipe)
            return list(await pipe.execute())
