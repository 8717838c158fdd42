"""The signing lane: DKIM private-key operations on a few dedicated threads.

Owns: handing `SigningPlan.private_operations` from the event loop to its threads and
the results back. `asyncio.to_thread` per signature cost the loop a copied context, an
executor future wrapped in an asyncio one, and one `call_soon_threadsafe` (a write to
the loop's wake-up pipe) per result. Here the loop appends to a deque and wakes a thread
only if one is idle; a thread takes several waiting plans at once and posts all their
results to the loop in one `call_soon_threadsafe`.

OpenSSL's RSA signature (~0.85 ms for 2048 bits) runs with the GIL released, so two
threads sign on two cores beside the loop; an Ed25519 signature (~50 µs) holds the GIL
for its length. More threads than cores would only queue for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import weakref
from collections import deque
from typing import Protocol

# Threads of the lane: this machine class has two cores, one of them the loop's.
THREADS = 2
# At most this many plans per wake-up of a thread (a batch's first result waits for its
# last: 8 RSA-2048 signatures are ~7 ms).
BATCH = 8


class Plan(Protocol):
    def private_operations(self) -> list[bytes]: ...


_Item = tuple[asyncio.AbstractEventLoop, asyncio.Future[list[bytes]], Plan]
_Result = tuple[asyncio.Future[list[bytes]], list[bytes] | None, BaseException | None]


def _deliver(results: list[_Result]) -> None:
    """On the loop: settle the futures of a batch (a waiter that gave up is skipped)."""
    for fut, value, error in results:
        if fut.done():
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            assert value is not None
            fut.set_result(value)


class SigningLane:
    """`await lane.run(plan)`: `plan.private_operations()` on one of the lane's threads.

    Threads start at the first plan and are daemons; `close()` stops them (the plans
    queued are still run)."""

    def __init__(self, threads: int = THREADS, batch: int = BATCH, *,
                 name: str = "dkim-sign") -> None:
        if threads < 1 or batch < 1:
            raise ValueError("a signing lane needs at least one thread and a batch of one")
        self._size = threads
        self._batch = batch
        self._name = name
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._idle = 0
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.batches = 0  # wake-ups that found work (for tests and profiles)
        _lanes.add(self)

    def _after_fork(self) -> None:
        """In a forked child: the threads were not copied, so start afresh (new ones
        start at the next plan); plans queued in the parent are the parent's."""
        self._queue = deque()
        self._cond = threading.Condition(threading.Lock())
        self._idle = 0
        self._threads = []

    async def run(self, plan: Plan) -> list[bytes]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[bytes]] = loop.create_future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the signing lane is closed")
            self._queue.append((loop, fut, plan))
            if self._idle:
                self._cond.notify()
            elif len(self._threads) < self._size:
                self._start()
        return await fut

    def _start(self) -> None:
        thread = threading.Thread(target=self._work, daemon=True,
                                  name=f"{self._name}-{len(self._threads)}")
        self._threads.append(thread)
        thread.start()

    def _take(self) -> list[_Item] | None:
        """The next plans to run (a fair share of those waiting), or None when closed."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._idle += 1
                self._cond.wait()
                self._idle -= 1
            # A share, so that the other thread gets some of a burst.
            count = min(self._batch, max(1, -(-len(self._queue) // self._size)))
            return [self._queue.popleft() for _ in range(count)]

    def _work(self) -> None:
        while (items := self._take()) is not None:
            self.batches += 1
            by_loop: dict[asyncio.AbstractEventLoop, list[_Result]] = {}
            for loop, fut, plan in items:
                try:
                    result: _Result = (fut, plan.private_operations(), None)
                except Exception as e:  # goes to the waiter, as to_thread would
                    result = (fut, None, e)
                by_loop.setdefault(loop, []).append(result)
            for loop, results in by_loop.items():
                # RuntimeError: the loop closed meanwhile, so nobody waits any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_deliver, results)

    def close(self) -> None:
        """Stop the threads once the queued plans are done (waits for them)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()


# Every lane, so a forked child resets them (relay spawns its processes; this keeps a
# fork by anything else from waiting on threads the child does not have).
_lanes: weakref.WeakSet[SigningLane] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for lane in list(_lanes):
        lane._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)

_shared: SigningLane | None = None
_shared_lock = threading.Lock()


def shared_lane() -> SigningLane:
    """The process's lane (its threads start at its first plan), for every Signer that is
    not given one: like the default executor, one per process however many signers."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SigningLane()
        return _shared
