"""Doubling backoff: the wait before the n-th retry, doubling from a first wait up to a cap.

Pure, one function for every "try again later, a bit later each time" in relay: webhook
retries (relay/events/destinations.py), the delay before answering a failed AUTH
(relay/smtp/authpolicy.py) and a crashed worker's restart (relay/supervisor.py). The
delivery retry schedule is a configured table (relay/delivery/retry.py), not this.
"""

from __future__ import annotations

# 2**40 times any first wait is past every cap relay uses; bounding the exponent keeps a
# huge attempt count (a stranger's failed logins) from overflowing the float.
_MAX_DOUBLINGS = 40


def doubling(attempt: int, first: float, cap: float) -> float:
    """The wait before retry `attempt` (1-based): first, 2·first, 4·first, ... never above
    `cap`; `attempt` below 1 waits `first`."""
    return float(min(cap, first * (2 ** max(0, min(attempt - 1, _MAX_DOUBLINGS)))))
