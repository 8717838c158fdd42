"""The one doubling backoff (webhook retries, failed-AUTH delay, worker restarts), as a table."""

from __future__ import annotations

import pytest

from relay.backoff import doubling
from relay.smtp.authpolicy import AuthPolicy


@pytest.mark.parametrize(("attempt", "first", "cap", "wait"), [
    (1, 1.0, 60.0, 1.0),          # the first retry waits `first`
    (2, 1.0, 60.0, 2.0),
    (3, 1.0, 60.0, 4.0),
    (6, 1.0, 60.0, 32.0),
    (7, 1.0, 60.0, 60.0),         # 64 is above the cap
    (1000, 1.0, 60.0, 60.0),
    (0, 1.0, 60.0, 1.0),          # before the first attempt: still `first`
    (-3, 1.0, 60.0, 1.0),
    (1, 5.0, 2.0, 2.0),           # a first wait above the cap is capped too
    (4, 0.0, 30.0, 0.0),          # no base delay: never a wait
    (2, 0.2, 5.0, 0.4),           # a worker restarted once quickly
    (6, 0.2, 5.0, 5.0),
    (41, 1.0, float("inf"), 2.0 ** 40),  # the exponent stops at 40 doublings
    (10**9, 1.0, float("inf"), 2.0 ** 40),
])
def test_doubling_table(attempt: int, first: float, cap: float, wait: float) -> None:
    got = doubling(attempt, first, cap)
    assert got == wait
    assert type(got) is float


def test_failed_logins_for_one_user_beyond_a_thousand_still_answer_with_the_capped_delay(
        ) -> None:
    """A user name is never locked, so strangers on many addresses can keep failing for it
    within the window: the delay stays at its cap instead of overflowing a float."""
    p = AuthPolicy(0.5, 5, 900.0, max_delay=3.0)
    delays = [p.record_failure(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "admin",
                               now=i * 0.001) for i in range(1100)]
    assert delays[:4] == [0.5, 1.0, 2.0, 3.0]
    assert set(delays[3:]) == {3.0}
