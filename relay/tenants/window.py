"""PURE rolling 24-hour count with one bucket per second (SES's Max24HourSend window).

A recipient accepted during second `s` (s = floor(t)) is counted while `now < s + 86400`,
so a send at 23:59:59 is counted until 23:59:58.999… the next day and gone at 23:59:59:
exact at the edge, with no rounding to minutes or hours.

Cost: `add()` and `total()` are O(1) amortised: a running sum and a deque of
(second, count) buckets in time order; `total()` first drops the buckets that left the
window (each bucket is dropped once). Memory is bounded: at most one bucket per second
with sends, so at most 86,400 buckets per scope, however many recipients are sent.
`remove()` (a reservation given back) looks for its bucket from the newest end; a
reservation is at most one SMTP session old, so that is a few steps.
Nothing here reads a clock: every call takes `now` (epoch seconds).
"""

from __future__ import annotations

import math
from collections import deque

WINDOW_SECONDS = 86400


class RollingWindow:
    """Counts over the last 24 hours, bucketed per second."""

    __slots__ = ("_buckets", "_sum", "span")

    def __init__(self, span: int = WINDOW_SECONDS) -> None:
        self.span = span
        self._buckets: deque[list[int]] = deque()  # [second, count], oldest first
        self._sum = 0

    def add(self, now: float, n: int = 1) -> int:
        """Count `n` at `now`; return the second it was counted under (for remove())."""
        second = math.floor(now)
        b = self._buckets
        if b and b[-1][0] == second:  # the common case: more in the same second
            if n > 0:
                b[-1][1] += n
                self._sum += n
            return second
        self.add_at(second, n)
        self.expire(now)  # a new second: the oldest may have left (bounded memory)
        return second

    def add_at(self, second: int, n: int) -> None:
        """Count `n` under `second` (loading stored counts; out-of-order seconds are
        merged into their place)."""
        if n <= 0:
            return
        b = self._buckets
        if not b or b[-1][0] < second:
            b.append([second, n])
        elif b[-1][0] == second:
            b[-1][1] += n
        else:  # older than the newest bucket: rare (a clock step back, a load)
            for bucket in reversed(b):
                if bucket[0] == second:
                    bucket[1] += n
                    break
                if bucket[0] < second:
                    self._insert(second, n)
                    break
            else:
                b.appendleft([second, n])
        self._sum += n

    def _insert(self, second: int, n: int) -> None:
        b = self._buckets
        i = len(b)
        while i > 0 and b[i - 1][0] > second:
            i -= 1
        b.insert(i, [second, n])

    def remove(self, second: int, n: int = 1) -> None:
        """Take back `n` counted under `second` (a released reservation). A bucket that
        has already left the window is not counted any more: nothing to take back."""
        for bucket in reversed(self._buckets):
            if bucket[0] == second:
                take = min(n, bucket[1])
                bucket[1] -= take
                self._sum -= take
                return
            if bucket[0] < second:
                return

    def expire(self, now: float) -> None:
        """Drop the buckets that have left the window at `now`."""
        edge = math.floor(now) - self.span  # a bucket at `edge` or before is gone
        b = self._buckets
        while b and b[0][0] <= edge:
            self._sum -= b.popleft()[1]

    def total(self, now: float) -> int:
        """Recipients counted in the 24 hours up to `now`."""
        self.expire(now)
        return self._sum

    def buckets(self) -> int:
        """How many per-second buckets are held (at most `span`)."""
        return len(self._buckets)

    def items(self) -> list[tuple[int, int]]:
        """(second, count) of every held bucket, oldest first."""
        return [(s, c) for s, c in self._buckets if c]
