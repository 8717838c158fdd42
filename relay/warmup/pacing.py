"""Pacing: a day's cap is spread over the day, never spent in its first minutes.

Hourly budget: in any clock hour an IP may send at most ceil(cap * burst / 24)
to one provider, and at most `cap` in the day. With burst >= 1 the 24 hourly
budgets always add up to at least the cap, so a steady stream reaches the cap
exactly; a burst factor of 2 lets a morning backlog catch up twice as fast.
`mode = "none"` turns pacing off (only the daily cap holds).
"""

from __future__ import annotations

import math

HOUR = 3600.0


def hourly_budget(cap: int, burst: float) -> int:
    return max(1, math.ceil(cap * burst / 24))


def allowed(cap: int, sent_today: int, hour_sent: int, *, mode: str, burst: float) -> int:
    """How many more may go now."""
    left = cap - sent_today
    if mode != "none":
        left = min(left, hourly_budget(cap, burst) - hour_sent)
    return max(0, left)


def next_window(cap: int, sent_today: int, now: float, day_end: float, *, mode: str,
                boundary: float) -> float:
    """When `allowed()` can be non-zero again: the next hour, or the next day."""
    if sent_today >= cap or mode == "none":
        return day_end
    hour_end = boundary + (math.floor((now - boundary) / HOUR) + 1) * HOUR
    return min(hour_end, day_end)
