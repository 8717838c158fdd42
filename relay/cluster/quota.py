"""Tenant and credential sending quotas (SES's Max24HourSend and MaxSendRate) counted in
Redis, so the nodes of a cluster together accept at most a tenant's quota: the same
rules as relay/tenants/quota.py (its Limits, scopes and refusals), with each window a
sliding window script (relay/cluster/scripts.py) instead of this process's book.

- the daily quota: a rolling 24 h window per scope (1 s buckets), one recipient reserved
  at RCPT (all of a message's at once at DATA or in one SES API request), given back on
  RSET or a refused DATA; the tenant's window counts every recipient, also when the
  tenant has no daily limit (SentLast24Hours, cluster-wide);
- the send rate: a 1 s sliding window (100 ms buckets) allowing the rate's whole number
  of recipients per second (at least 1); never given back (the pace of asking);
- every window of every scope in ONE script call (SharedLimits.reserve_all): one round
  trip to Redis per recipient (per message on the SES API), however many limits apply,
  all or nothing; the releases of a message in one call too;
- when Redis is unreachable both come from this node's local share
  (relay/cluster/fallback.py) and are added to Redis when it returns.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Literal

from relay.cluster.limits import Reservation, SharedLimits, Window
from relay.tenants.model import tenant_scope
from relay.tenants.quota import Cap, Limits, credential_scope
from relay.tenants.refusals import DAILY_QUOTA_EXCEEDED, RATE_EXCEEDED, Refusal

log = logging.getLogger("relay.cluster")
DAY = 86400.0


class SharedReservation:
    """One recipient's (or message's) place in the shared daily windows; the same life as
    relay.tenants.quota.Reservation (commit or release), with no local counts to write."""

    __slots__ = ("entries", "held", "quota", "state")

    def __init__(self, quota: SharedQuota, held: list[Reservation]) -> None:
        self.quota = quota
        self.held = held
        self.entries: list[tuple[str, int, int]] = []  # nothing for the local book
        self.state: Literal["held", "committed", "released"] = "held"

    def commit(self) -> None:
        if self.state == "held":
            self.state = "committed"

    def release(self) -> None:
        """Give the daily units back (idempotent; the Redis call runs in the background:
        RSET and a disconnect answer at once)."""
        if self.state != "held":
            return
        self.state = "released"
        if self.held:
            self.quota.release_later(self.held)


def daily_window(scope: str, cap: int, n: int) -> Window:
    """`scope`'s rolling 24 h window taking `n` below `cap` (0: unlimited, counted only)."""
    limit = -1 if cap == 0 else max(0, cap)
    return Window(f"quota:{scope}", limit, DAY, 1.0, n, n)


class SharedQuota:
    def __init__(self, limits: SharedLimits) -> None:
        self.limits = limits
        self._pending: set[asyncio.Task[None]] = set()
        self._to_release: list[Reservation] = []
        self._flushing = False

    def _scopes(self, tenant: str, credential: str,
                limits: Limits) -> list[tuple[str, Cap]]:
        scopes = [(tenant_scope(tenant), limits.tenant)]
        if limits.credential is not None:
            scopes.append((credential_scope(credential), limits.credential))
        return scopes

    def _windows(self, scopes: list[tuple[str, Cap]], daily: int, rate_take: int,
                 rate_need: int) -> tuple[list[Window], int]:
        """The windows to take at once: the send rates first (their refusal is the rate's),
        then the daily ones (the tenant's always, to count SentLast24Hours); and how many
        of the first are rate windows."""
        windows = [Window(f"rate:{scope}", max(1, math.floor(cap.max_send_rate)), 1.0, 0.1,
                          rate_need, rate_take)
                   for scope, cap in scopes if cap.max_send_rate > 0]
        rates = len(windows)
        if daily > 0:
            for i, (scope, cap) in enumerate(scopes):
                if i == 0 or cap.max_24h_send != 0:
                    windows.append(daily_window(scope, cap.max_24h_send, daily))
        return windows, rates

    async def _take(self, scopes: list[tuple[str, Cap]], daily: int, rate_take: int,
                    rate_need: int = 1) -> list[Reservation] | Refusal:
        windows, rates = self._windows(scopes, daily, rate_take, rate_need)
        taken = await self.limits.reserve_all(windows)
        if taken.refused is not None:
            return RATE_EXCEEDED if taken.refused < rates else DAILY_QUOTA_EXCEEDED
        # Rate units are never given back: only the daily ones stay held.
        return [r for r, w in zip(taken.held, [w for w in windows if w.take > 0],
                                  strict=True) if w.name.startswith("quota:")]

    async def reserve(self, tenant: str, credential: str, limits: Limits,
                      simulator: bool = False) -> SharedReservation | Refusal:
        """One recipient (relay.tenants.quota.QuotaBook.reserve, cluster-wide): one
        script call."""
        got = await self._take(self._scopes(tenant, credential, limits),
                               0 if simulator else 1, 1)
        if isinstance(got, Refusal):
            return got
        return SharedReservation(self, got)

    async def reserve_many(self, tenant: str, credential: str, limits: Limits,
                           simulator: Sequence[bool], debt: bool = True
                           ) -> list[SharedReservation] | Refusal:
        """All of a message's recipients at once, or none, in one script call. The rate
        takes one per recipient and needs room for one (`debt`: QuotaBook.reserve_many's
        rule at DATA) or for all of them (an SES API request: as its recipients one by
        one would)."""
        counted = sum(1 for sim in simulator if not sim)
        got = await self._take(self._scopes(tenant, credential, limits), counted,
                               len(simulator), 1 if debt else len(simulator))
        if isinstance(got, Refusal):
            return got
        # One SharedReservation holds the whole message's units; the others are empty.
        return [SharedReservation(self, got if i == 0 else []) for i in range(len(simulator))]

    async def sent_last_24h(self, tenant: str) -> tuple[int, bool]:
        """SentLast24Hours of `tenant` across the cluster (its rolling 24 h window in
        Redis, reservations included), True; when Redis is unreachable this node's own
        figure (what Redis last said plus what it accepted since), False."""
        return await self.limits.total(f"quota:{tenant_scope(tenant)}", DAY, 1.0)

    def release_later(self, held: list[Reservation]) -> None:
        """Give `held` back soon: every release asked for before the event loop next runs
        the flush (all of a transaction's recipients on RSET) goes in one call."""
        self._to_release.extend(held)
        if self._flushing:
            return
        self._flushing = True
        task = asyncio.get_running_loop().create_task(self._release())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _release(self) -> None:
        held, self._to_release, self._flushing = self._to_release, [], False
        # One call for all of them; Redis down: they stay counted until the window passes.
        await self.limits.release_all(held)

    async def drain(self) -> None:
        """Wait for the releases in flight (stop, tests)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
