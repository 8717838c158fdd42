"""Tenant and credential sending quotas (SES's Max24HourSend and MaxSendRate) counted in
Redis, so the nodes of a cluster together accept at most a tenant's quota: the same
rules as relay/tenants/quota.py (its Limits, scopes and refusals), with each window a
sliding window script (relay/cluster/scripts.py) instead of this process's book.

- the daily quota: a rolling 24 h window per scope (1 s buckets), one recipient reserved
  at RCPT (all of a message's at once at DATA), given back on RSET or a refused DATA;
- the send rate: a 1 s sliding window (100 ms buckets) allowing the rate's whole number
  of recipients per second (at least 1); never given back (the pace of asking);
- when Redis is unreachable both come from this node's local share
  (relay/cluster/fallback.py) and are added to Redis when it returns.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Literal

from relay.cluster.limits import Reservation, SharedLimits
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


class SharedQuota:
    def __init__(self, limits: SharedLimits) -> None:
        self.limits = limits
        self._pending: set[asyncio.Task[None]] = set()

    def _scopes(self, tenant: str, credential: str,
                limits: Limits) -> list[tuple[str, Cap]]:
        scopes = [(tenant_scope(tenant), limits.tenant)]
        if limits.credential is not None:
            scopes.append((credential_scope(credential), limits.credential))
        return scopes

    async def _rate_ok(self, scopes: list[tuple[str, Cap]]) -> bool:
        for scope, cap in scopes:
            if cap.max_send_rate > 0:
                per_second = max(1, math.floor(cap.max_send_rate))
                if await self.limits.reserve(f"rate:{scope}", 1, per_second, 1.0, 0.1) is None:
                    return False
        return True

    async def _daily(self, scopes: list[tuple[str, Cap]], n: int) -> list[Reservation] | None:
        """`n` in every scope's daily window, or none of them (None)."""
        held: list[Reservation] = []
        for scope, cap in scopes:
            if cap.max_24h_send == 0 or n == 0:
                continue  # unlimited
            got = (await self.limits.reserve(f"quota:{scope}", n, cap.max_24h_send, DAY, 1.0)
                   if cap.max_24h_send > 0 else None)
            if got is None:
                for r in held:
                    await self.limits.release(r)
                return None
            held.append(got)
        return held

    async def reserve(self, tenant: str, credential: str, limits: Limits,
                      simulator: bool = False) -> SharedReservation | Refusal:
        """One recipient (relay.tenants.quota.QuotaBook.reserve, cluster-wide)."""
        scopes = self._scopes(tenant, credential, limits)
        if not await self._rate_ok(scopes):
            return RATE_EXCEEDED
        held = await self._daily(scopes, 0 if simulator else 1)
        if held is None:
            return DAILY_QUOTA_EXCEEDED
        return SharedReservation(self, held)

    async def reserve_many(self, tenant: str, credential: str, limits: Limits,
                           simulator: Sequence[bool]) -> list[SharedReservation] | Refusal:
        """All of a message's recipients at once, or none (the rate needs one unit)."""
        scopes = self._scopes(tenant, credential, limits)
        if not await self._rate_ok(scopes):
            return RATE_EXCEEDED
        counted = sum(1 for sim in simulator if not sim)
        held = await self._daily(scopes, counted)
        if held is None:
            return DAILY_QUOTA_EXCEEDED
        # One SharedReservation holds the whole message's units; the others are empty.
        out = [SharedReservation(self, held if i == 0 else []) for i in range(len(simulator))]
        return out

    def release_later(self, held: list[Reservation]) -> None:
        task = asyncio.get_running_loop().create_task(self._release(held))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _release(self, held: list[Reservation]) -> None:
        for r in held:  # Redis down: it stays counted until its window passes
            await self.limits.release(r)

    async def drain(self) -> None:
        """Wait for the releases in flight (stop, tests)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
