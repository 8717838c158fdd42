"""AuthPolicy: growing delay, per-IP lockout (never per user), expiry, bounded memory (no I/O)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.smtp.authpolicy import AuthPolicy


def policy(**kw: float) -> AuthPolicy:
    args = {"base_delay": 0.5, "max_failures": 3, "lockout": 60.0} | kw
    return AuthPolicy(args["base_delay"], int(args["max_failures"]), args["lockout"])


def test_delay_grows_with_each_failure() -> None:
    p = AuthPolicy(0.5, 10, 900.0, max_delay=3.0)
    delays = [p.record_failure("192.0.2.1", "u", now=float(i)) for i in range(6)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_ip_locked_after_max_failures_and_lifted_after_lockout() -> None:
    p = policy()
    for i in range(3):
        assert not p.is_locked("192.0.2.1", now=float(i))
        p.record_failure("192.0.2.1", f"user{i}", now=float(i))
    assert p.is_locked("192.0.2.1", now=3.0)
    assert p.is_locked("192.0.2.1", now=61.9)
    assert not p.is_locked("192.0.2.9", now=3.0)  # other IPs unaffected
    assert not p.is_locked("192.0.2.1", now=62.0)  # locked_until = 2 + 60


def test_failures_for_a_user_from_other_addresses_never_lock_its_own_address() -> None:
    """Anyone who knows a user name could otherwise lock its owner out."""
    p = policy()
    for i in range(10):
        p.record_failure(f"192.0.2.{i}", "Alice", now=0.0)
    assert not p.is_locked("198.51.100.1", now=1.0)


def test_failures_for_a_user_slow_down_its_failures_case_insensitively() -> None:
    p = AuthPolicy(0.5, 100, 900.0, max_delay=30.0)
    for i in range(4):
        p.record_failure(f"192.0.2.{i}", "Alice", now=0.0)
    # A fifth address, first failure of its own: answered after the user's 5th delay.
    assert p.record_failure("198.51.100.1", "alice", now=1.0) == 8.0
    assert p.record_failure("198.51.100.2", "bob", now=1.0) == 0.5


def test_failures_older_than_window_are_forgotten() -> None:
    p = policy()
    p.record_failure("192.0.2.1", "u", now=0.0)
    p.record_failure("192.0.2.1", "u", now=1.0)
    p.record_failure("192.0.2.1", "u", now=100.0)  # the first two expired
    assert not p.is_locked("192.0.2.1", now=100.0)


def test_success_clears_counts_but_not_a_lock() -> None:
    p = policy()
    p.record_failure("192.0.2.1", "u", now=0.0)
    p.record_failure("192.0.2.1", "u", now=0.0)
    p.record_success("192.0.2.1", "u", now=0.0)
    p.record_failure("192.0.2.1", "u", now=0.0)
    assert not p.is_locked("192.0.2.1", now=0.0)
    p.record_failure("192.0.2.1", "u", now=0.0)
    p.record_failure("192.0.2.1", "u", now=0.0)
    p.record_success("192.0.2.1", "u", now=1.0)
    assert p.is_locked("192.0.2.1", now=1.0)


def test_zero_max_failures_never_locks() -> None:
    p = policy(max_failures=0)
    for i in range(50):
        p.record_failure("192.0.2.1", "u", now=float(i))
    assert not p.is_locked("192.0.2.1", now=50.0)


def test_memory_is_bounded() -> None:
    p = AuthPolicy(0.0, 5, 60.0, max_entries=100)
    for i in range(1000):
        p.record_failure(f"10.0.{i // 256}.{i % 256}", None, now=0.0)
    assert len(p) <= 100


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["u", "v", None]),
                          st.floats(0, 10)), max_size=30))
def test_delay_never_exceeds_cap_and_is_positive(events: list[tuple[str, str | None, float]]
                                                 ) -> None:
    p = AuthPolicy(0.5, 3, 60.0, max_delay=4.0)
    now = 0.0
    for ip, user, step in events:
        now += step
        delay = p.record_failure(ip, user, now)
        assert 0.5 <= delay <= 4.0
