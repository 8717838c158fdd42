"""Accept first: delivery gives the event loop to submissions during a burst.

Theory of operation
-------------------
One process accepts and delivers on one event loop. When a burst of submissions
saturates that loop, every delivery step (a signature handed back, an SMTP round
trip, a settle) takes its turn in the same rounds as the sessions' steps, and the
clients wait for their 250 behind it. Measured on the plain listener (bench/e2e.py,
4,000 messages): with delivery running, 604-729 msgs/s accepted and p99 68-121 ms;
with no delivery at all, 1,260-1,529 msgs/s and p99 41-43 ms. A client waits on its
250; a message on disk waits on nobody.

Rule 1: delivery holds to `floor` transactions in flight only while both are true:
the loop is late (a probe sleeping `interval` wakes over `threshold` late) and
submissions arrive as a burst (at least `burst_min` accepted within `hold`). An idle
or lightly loaded loop delivers at once; a loop saturated by delivery is not held
back for a trickle of submissions (an application's few messages a second), which
would gain little from it.

Rule 2: delivery is held for at most `max_hold` seconds of one burst; then it takes
its full share back until the burst ends (the loop is on time, or nothing was
accepted for `hold`). A sustained overload is therefore shared as before after
`max_hold`, and no message waits on a burst for longer than that. (Postfix's
in_flow_delay makes the opposite trade, slowing the client; relay answers first,
since the message is already durable.)

Rule 3: `floor` (at least 1) transactions always proceed, so delivery never stops.

Times here are the event loop's own (`loop.time()`): the probe measures how late the
loop runs, which no injected clock can tell. Business time (retries, warm-up days)
stays with relay.clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable

from relay.tasks import cancel_and_wait


class LoopLag:
    """How late the event loop runs: a task sleeps `interval` and measures the overshoot.

    `late()` is true for `hold` seconds after a probe woke more than `threshold` late,
    so one quiet probe inside a busy stretch does not flip the answer."""

    def __init__(self, interval: float = 0.01, threshold: float = 0.005,
                 hold: float = 0.25) -> None:
        self.interval = interval
        self.threshold = threshold
        self.hold = hold
        self.last_lag = 0.0
        self._late_until = 0.0
        self._task: asyncio.Task[None] | None = None
        self.on_tick: list[Callable[[], None]] = []

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._probe(), name="loop-lag")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def late(self) -> bool:
        return asyncio.get_running_loop().time() < self._late_until

    def observe(self, lag: float, now: float) -> None:
        """Record one probe's overshoot (seconds) taken at loop time `now`."""
        self.last_lag = lag
        if lag > self.threshold:
            self._late_until = now + self.hold

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            now = loop.time()
            self.observe(now - asked, now)
            for cb in self.on_tick:
                cb()


class DeliveryGate:
    """Admits delivery transactions: all of them normally, `floor` at a time while
    submissions hold the loop (see the module's rules)."""

    def __init__(self, lag: LoopLag, *, max_hold: float, floor: int = 2,
                 hold: float = 0.25, burst_min: int = 25,
                 on_open: Iterable[Callable[[], None]] = ()) -> None:
        if floor < 1:
            raise ValueError("floor must be at least 1: delivery never stops")
        self.lag = lag
        self.max_hold = max_hold      # 0: never hold delivery back
        self.floor = floor
        self.hold = hold
        # Accepted within `hold` that make a burst: 25 in 0.25 s is 100 msgs/s, about a
        # tenth of what one process accepts on reused connections on the bench machine,
        # and under half of it with a new TLS connection per message (~240 msgs/s).
        self.burst_min = burst_min
        self._bucket_start = 0.0      # accepts counted per `hold`-long bucket
        self._bucket = 0
        self._last_bucket = 0
        self.in_flight = 0
        self.burst_started: float | None = None  # loop time; None between bursts
        self.held_seconds = 0.0       # in all (relay_delivery_held_seconds_total)
        self._last_tick: float | None = None
        self._accepting_until = 0.0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._was_holding = False
        # Called when a hold ends (the scheduler's wake: it promotes again).
        self.on_open: list[Callable[[], None]] = list(on_open)
        lag.on_tick.append(self._tick)

    # -------------------------------------------------------------- signals

    def accepted(self) -> None:
        """A submission was accepted (called by the submitter, once per message)."""
        now = asyncio.get_running_loop().time()
        if now - self._bucket_start >= self.hold:
            # A new bucket; the one before counts only if it was the previous one.
            adjacent = now - self._bucket_start < 2 * self.hold
            self._last_bucket = self._bucket if adjacent else 0
            self._bucket_start, self._bucket = now, 0
        self._bucket += 1
        if max(self._bucket, self._last_bucket) >= self.burst_min:
            self._accepting_until = now + self.hold

    def holding(self) -> bool:
        """True while delivery is held to `floor` in flight."""
        if self._closed or self.max_hold <= 0 or not self._burst():
            return False
        now = asyncio.get_running_loop().time()
        if self.burst_started is None:
            self.burst_started = now
        return now - self.burst_started < self.max_hold

    def _burst(self) -> bool:
        loop = asyncio.get_running_loop()
        return loop.time() < self._accepting_until and self.lag.late()

    def _tick(self) -> None:
        if not self._burst():
            self.burst_started = None  # the burst is over: the next one gets `max_hold`
        holding = self.holding()
        now = asyncio.get_running_loop().time()
        if holding and self._was_holding and self._last_tick is not None:
            self.held_seconds += now - self._last_tick
        self._last_tick = now
        if not holding:
            self._wake(len(self._waiters))
            if self._was_holding:
                for cb in self.on_open:
                    cb()
        self._was_holding = holding

    # -------------------------------------------------------------- admission

    async def acquire(self) -> None:
        while self.holding() and self.in_flight >= self.floor:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                if not fut.done():
                    fut.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._wake(1)

    def close(self) -> None:
        """Stop holding anything back (shutdown): every waiter goes on."""
        self._closed = True
        self._wake(len(self._waiters))

    def _wake(self, n: int) -> None:
        while n > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                n -= 1
