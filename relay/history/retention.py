"""History retention: a task that removes the messages older than `retention` and the
statistics buckets older than `stats_retention` and, with `max_bytes`, the oldest
messages while the history's sub-databases use more than that.

Each removal is an op of the queue's group commit of at most 2000 messages (or 50,000
statistics counts), so a large backlog is removed in many small transactions that never
hold the writer long. One log line per sweep that removed something.
"""

from __future__ import annotations

import asyncio
import logging
import math

from relay.clock import Clock
from relay.history.stats import StatsStore
from relay.history.store import PRUNE_CHUNK, HistoryStore
from relay.tasks import cancel_and_wait

log = logging.getLogger("relay.history")


class HistoryPruner:
    def __init__(self, history: HistoryStore, stats: StatsStore, clock: Clock, *,
                 retention: float, stats_retention: float, max_bytes: int = 0,
                 every: float = 60.0, chunk: int = PRUNE_CHUNK) -> None:
        self.history = history
        self.stats = stats
        self.clock = clock
        self.retention = retention
        self.stats_retention = stats_retention
        self.max_bytes = max_bytes
        self.every = every
        self.chunk = chunk
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="history-pruner")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("history: pruning failed; retrying in %.0f s", self.every)
            await self.clock.sleep(self.every)

    async def run_once(self) -> dict[str, int]:
        """One sweep: {"expired": messages past retention, "over_cap": oldest messages
        removed for max_bytes, "stats": statistics counts removed}."""
        store = self.history.store
        now = self.clock.now()
        expired = await self._prune(now - self.retention)
        over_cap = 0
        if self.max_bytes > 0:
            while self.history.usage()["bytes"] > self.max_bytes:
                n = await store.write(self.history.prune_op(math.inf, self.chunk))
                over_cap += n
                if n == 0:
                    break
        counts = 0
        while True:
            n = await store.write(self.stats.prune_op(now - self.stats_retention))
            counts += n
            if n == 0:
                break
        done = {"expired": expired, "over_cap": over_cap, "stats": counts}
        if expired or over_cap or counts:
            usage = self.history.usage()
            log.info("history: pruned %d messages older than %.0f s, %d over the %d-byte "
                     "cap, %d statistics counts; %d messages, %d bytes kept", expired,
                     self.retention, over_cap, self.max_bytes, counts, usage["messages"],
                     usage["bytes"])
        return done

    async def _prune(self, before: float) -> int:
        removed = 0
        while True:
            n = await self.history.store.write(self.history.prune_op(before, self.chunk))
            removed += n
            if n < self.chunk:
                return removed
