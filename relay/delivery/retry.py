"""Retry timing (RFC 5321 §4.5.4.1): pure, clock-free, tested in milliseconds.

A recipient that failed temporarily is tried again after the delay for its
attempt number (the schedule's last entry repeats), with jitter so that a
destination that comes back is not hit by its whole backlog at once. No attempt
is scheduled past the message's deadline (received_at + max_delivery_time);
instead the last attempt happens exactly at the deadline, and a temporary
failure at or after the deadline expires the recipient. relay's 72 h default is
shorter than the RFC's "4-5 days" on purpose: it is what SES users expect.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def delay_for_attempt(attempts: int, schedule: Sequence[float]) -> float:
    """Delay after the `attempts`-th failed attempt (1-based)."""
    if attempts < 1:
        return 0.0
    return float(schedule[min(attempts, len(schedule)) - 1])


def next_attempt_at(*, received_at: float, attempts: int, now: float,
                    schedule: Sequence[float], max_delivery_time: float,
                    jitter: float = 0.0, rng: random.Random | None = None) -> float | None:
    """When to try next after a temporary failure; None means expire now."""
    deadline = received_at + max_delivery_time
    if now >= deadline:
        return None
    delay = delay_for_attempt(attempts, schedule)
    if jitter and rng is not None:
        delay *= 1.0 + rng.uniform(-jitter, jitter)
    return min(now + delay, deadline)
