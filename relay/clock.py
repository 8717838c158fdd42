"""The one source of time.

Every component that needs "now" or wants to wait gets a Clock through its
constructor. Nothing else in relay calls time.time(), time.monotonic() or
asyncio.sleep() for policy decisions, so 72-hour retry lives and 45-day warm-up
plans are tested in milliseconds with FakeClock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time, seconds since the epoch (UTC)."""

    def monotonic(self) -> float:
        """Monotonic seconds, for measuring intervals."""

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when a test says so.

    `sleep()` parks the caller until `advance()` moves time past its deadline,
    so a scheduler loop can be driven through days of retries instantly.
    """

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self._now = start
        self._mono = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._seq), fut))
        await fut

    def advance(self, seconds: float = 0.0, *, minutes: float = 0.0, hours: float = 0.0,
                days: float = 0.0) -> None:
        step = seconds + minutes * 60 + hours * 3600 + days * 86400
        self._now += step
        self._mono += step
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def set(self, epoch: float) -> None:
        """Jump wall-clock time (e.g. to a given date), waking due sleepers."""
        self.advance(epoch - self._now)
