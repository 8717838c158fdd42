"""Feedback reports parsed in a separate process, never on the event loop.

`ReportParser.parse(data)` hands the report to a one-process `multiprocessing` pool
(spawned, not forked: the parent holds an LMDB environment, which must never cross a
fork) and awaits the answer, so a report built to be expensive costs that process CPU
and memory, not the event loop that greets every submission client. Bounds:
- one report at a time in the parser process, a second one waiting (the others wait
  for a turn before their data is handed over), so memory in flight stays bounded;
- `timeout` seconds per report: a report still being parsed by then, or a parser
  process that died, gets the pool killed and replaced, and is answered as unparsed;
- the parser process may map at most `MEMORY_LIMIT` bytes (RLIMIT_AS): a parse that
  needs more fails with MemoryError there, not in relay;
- the process is replaced every `TASKS_PER_PROCESS` reports (returns its memory).
Spawning imports the parent's main module as multiprocessing does (`python -m relay` and
the `relay` script are safe); a program that embeds relay needs the usual
`if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.pool
import resource
from typing import Any

from relay.feedback.bounds import ReportBounds, parse_bounded
from relay.feedback.parse import Report

log = logging.getLogger("relay.feedback")

MEMORY_LIMIT = 1 << 30
TASKS_PER_PROCESS = 100
IN_FLIGHT = 2


def _limit_memory() -> None:  # runs in the parser process
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


class ReportParser:
    def __init__(self, bounds: ReportBounds, timeout: float) -> None:
        self.bounds = bounds
        self.timeout = timeout
        self._pool: multiprocessing.pool.Pool | None = None
        self._turns = asyncio.Semaphore(IN_FLIGHT)
        self.replaced = 0  # pools killed for a timeout or a dead process

    def _started(self) -> multiprocessing.pool.Pool:
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ctx.Pool(1, initializer=_limit_memory,
                                  maxtasksperchild=TASKS_PER_PROCESS)
        return self._pool

    async def parse(self, data: bytes) -> Report:
        async with self._turns:
            loop = asyncio.get_running_loop()
            answer: asyncio.Future[Report] = loop.create_future()

            def settle(value: Any, failed: bool = False) -> None:
                if answer.done():
                    return
                if failed:
                    answer.set_exception(value)
                else:
                    answer.set_result(value)

            pool = self._started()
            pool.apply_async(
                parse_bounded, (data, self.bounds),
                callback=lambda r: loop.call_soon_threadsafe(settle, r),
                error_callback=lambda e: loop.call_soon_threadsafe(settle, e, True))
            try:
                return await asyncio.wait_for(answer, self.timeout)
            except TimeoutError:
                log.warning("feedback: parsing a %d-byte report took over %.0fs; "
                            "parser process replaced", len(data), self.timeout)
                await self._replace(pool)
                return Report("unknown", reason=f"parse took over {self.timeout:.0f}s")
            except Exception as e:  # raised in the parser process (MemoryError, ...)
                return Report("unknown", reason=f"parse error: {type(e).__name__}: {e}")

    async def _replace(self, pool: multiprocessing.pool.Pool) -> None:
        if self._pool is pool:
            self._pool = None
        self.replaced += 1
        await asyncio.to_thread(pool.terminate)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.terminate)
