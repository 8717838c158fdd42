"""Pure quota policy on a fake clock: the rolling 24-hour window (exact at the second),
the token bucket (fractional rates), and the quota book's reserve / commit / release with
SES's answers, effective limits, sandbox caps and the mailbox simulator's exemption."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from relay.clock import FakeClock
from relay.tenants.bucket import TokenBucket
from relay.tenants.model import Quota, Tenant, tenant_scope
from relay.tenants.quota import (
    Cap,
    Limits,
    QuotaBook,
    Reservation,
    credential_scope,
    effective_limits,
    worker_share,
)
from relay.tenants.refusals import DAILY_QUOTA_EXCEEDED, RATE_EXCEEDED
from relay.tenants.window import WINDOW_SECONDS, RollingWindow

DAY = 86400.0
T0 = 1_790_035_200.0  # 2026-09-22T00:00:00Z


# --------------------------------------------------------------------------- window

def test_send_at_235959_leaves_the_window_exactly_24_hours_later() -> None:
    clock = FakeClock(T0 + 86399)  # 23:59:59
    w = RollingWindow()
    w.add(clock.now())
    clock.advance(86399.999)        # 23:59:58.999 the next day
    assert w.total(clock.now()) == 1
    clock.set(T0 + 86399 + 86400)   # 23:59:59 the next day: exactly 24 h
    assert w.total(clock.now()) == 0


def test_a_send_late_in_its_second_still_leaves_at_the_seconds_edge() -> None:
    w = RollingWindow()
    w.add(T0 + 0.75)
    assert w.total(T0 + 86399.9) == 1
    assert w.total(T0 + 86400) == 0


def test_window_rolls_counts_out_one_second_at_a_time() -> None:
    w = RollingWindow()
    for i in range(10):
        w.add(T0 + i, n=i + 1)
    assert w.total(T0 + 10) == 55
    assert w.total(T0 + DAY) == 54          # second 0 (1 recipient) left
    assert w.total(T0 + DAY + 5) == 55 - 21          # seconds 0-5 left
    assert w.total(T0 + DAY + 10) == 0


def test_window_memory_is_one_bucket_per_second_at_most() -> None:
    w = RollingWindow()
    for i in range(5000):
        w.add(T0 + i / 10)       # ten sends a second
    assert w.total(T0 + 500) == 5000
    assert w.buckets() == 500
    # Two days of sends with nobody asking for the total (an unlimited scope): add()
    # alone drops what left the window, so never more than WINDOW_SECONDS buckets.
    w2 = RollingWindow()
    for s in range(0, 2 * WINDOW_SECONDS, 3):
        w2.add(T0 + s)
        assert w2.buckets() <= WINDOW_SECONDS // 3 + 1


def test_remove_gives_back_and_ignores_buckets_that_left() -> None:
    w = RollingWindow()
    s = w.add(T0, 3)
    w.add(T0 + 5)
    w.remove(s, 2)
    assert w.total(T0 + 5) == 2
    w.remove(s + 1, 1)        # no such bucket: nothing happens
    assert w.total(T0 + 5) == 2
    w.expire(T0 + DAY + 1)
    w.remove(s, 1)            # already gone: not counted twice
    assert w.total(T0 + DAY + 1) == 1


def test_out_of_order_seconds_are_merged_in_place() -> None:
    w = RollingWindow()
    w.add_at(100, 1)
    w.add_at(300, 1)
    w.add_at(200, 2)
    w.add_at(50, 4)
    w.add_at(200, 1)
    assert w.items() == [(50, 4), (100, 1), (200, 3), (300, 1)]
    assert w.total(100 + WINDOW_SECONDS) == 4   # 50 and 100 are gone


# --------------------------------------------------------------------------- bucket

def test_bucket_is_one_second_deep_and_refills_at_its_rate() -> None:
    clock = FakeClock(T0)
    b = TokenBucket(3.0, clock.now())
    assert [b.take(clock.now()) for _ in range(4)] == [True, True, True, False]
    clock.advance(1 / 3)
    assert b.take(clock.now()) and not b.take(clock.now())
    clock.advance(60)                    # a long pause: still only one second's worth
    assert sum(b.take(clock.now()) for _ in range(10)) == 3


def test_fractional_rate_sends_one_every_two_seconds() -> None:
    clock = FakeClock(T0)
    b = TokenBucket(0.5, clock.now())
    assert b.capacity == 1.0
    assert b.take(clock.now())
    clock.advance(1.999)
    assert not b.take(clock.now())
    clock.advance(0.001)
    assert b.take(clock.now())
    # Over 100 s at most 1 + 100 * 0.5 recipients.
    sent = 0
    for _ in range(1000):
        clock.advance(0.1)
        sent += b.take(clock.now())
    assert sent == 50


def test_bucket_clock_step_back_adds_nothing() -> None:
    b = TokenBucket(1.0, T0)
    assert b.take(T0)
    assert not b.take(T0 - 100)
    assert not b.ready(T0 + 0.5)
    assert b.ready(T0 + 1)


def test_bucket_rejects_a_zero_rate() -> None:
    with pytest.raises(ValueError, match="rate 0"):
        TokenBucket(0, T0)


# --------------------------------------------------------------------------- limits

@dataclass(frozen=True)
class Defaults:
    max_24h_send: int = 0
    max_send_rate: float = 0.0
    sandbox_max_24h_send: int = 200
    sandbox_max_send_rate: float = 1.0


@pytest.mark.parametrize(("defaults", "tenant", "override", "expected"), [
    (Defaults(), Tenant("a"), None, Limits(Cap(0, 0.0))),
    (Defaults(1000, 10), Tenant("a"), None, Limits(Cap(1000, 10))),
    (Defaults(1000, 10), Tenant("a", quota=Quota(max_24h_send=50)), None, Limits(Cap(50, 10))),
    (Defaults(1000, 10), Tenant("a", quota=Quota(5, 2)), Quota(max_send_rate=7),
     Limits(Cap(0, 0.0), Cap(5, 7))),
    (Defaults(1000, 10), Tenant("a"), Quota(), Limits(Cap(1000, 10))),  # empty: no override
    # Sandbox: at most 200/24 h and 1/s, lower limits kept; also for the tenant as a whole.
    (Defaults(), Tenant("a", sandbox=True), None, Limits(Cap(200, 1.0))),
    (Defaults(), Tenant("a", sandbox=True, quota=Quota(20, 0.5)), None, Limits(Cap(20, 0.5))),
    (Defaults(), Tenant("a", sandbox=True), Quota(10_000, 100),
     Limits(Cap(200, 1.0), Cap(200, 1.0))),
    (Defaults(sandbox_max_24h_send=50), Tenant("a", sandbox=True), Quota(max_24h_send=10),
     Limits(Cap(50, 1.0), Cap(10, 1.0))),
])
def test_effective_limits(defaults: Defaults, tenant: Tenant, override: Quota | None,
                          expected: Limits) -> None:
    assert effective_limits(defaults, tenant, override) == expected


# --------------------------------------------------------------------------- book

def _held(r: object) -> Reservation:
    assert isinstance(r, Reservation), r
    return r


def test_daily_quota_refuses_the_recipient_that_crosses_it() -> None:
    clock = FakeClock(T0)
    book = QuotaBook()
    limits = Limits(Cap(3, 0))
    got = [book.reserve("a", "u", limits, clock.now()) for _ in range(4)]
    assert all(isinstance(r, Reservation) for r in got[:3])
    assert got[3] == DAILY_QUOTA_EXCEEDED
    assert str(got[3]) == "454 4.7.0 Throttling failure: Daily message quota exceeded."
    assert book.sent_last_24h(tenant_scope("a"), clock.now()) == 3
    clock.advance(DAY - 1)
    assert book.reserve("a", "u", limits, clock.now()) == DAILY_QUOTA_EXCEEDED
    clock.advance(1)                      # the first three leave the window
    assert isinstance(book.reserve("a", "u", limits, clock.now()), Reservation)


def test_rate_is_checked_first_and_a_refused_recipient_uses_nothing() -> None:
    clock = FakeClock(T0)
    book = QuotaBook()
    limits = Limits(Cap(2, 1.0))
    _held(book.reserve("a", "u", limits, clock.now()))
    # The bucket is empty and the quota has one left: the rate answers.
    r = book.reserve("a", "u", limits, clock.now())
    assert r == RATE_EXCEEDED
    assert str(r) == "454 4.7.0 Throttling failure: Maximum sending rate exceeded."
    assert book.sent_last_24h(tenant_scope("a"), clock.now()) == 1
    clock.advance(1)
    _held(book.reserve("a", "u", limits, clock.now()))
    clock.advance(1)
    # Both spent: the rate has a token, the quota does not; the token is not used.
    assert book.reserve("a", "u", limits, clock.now()) == DAILY_QUOTA_EXCEEDED
    assert book.buckets[tenant_scope("a")].tokens(clock.now()) == 1.0


def test_release_gives_the_daily_unit_back_and_commit_keeps_it() -> None:
    clock = FakeClock(T0)
    book = QuotaBook()
    limits = Limits(Cap(2, 0))
    a = _held(book.reserve("t", "u", limits, clock.now()))
    b = _held(book.reserve("t", "u", limits, clock.now()))
    assert book.reserve("t", "u", limits, clock.now()) == DAILY_QUOTA_EXCEEDED
    a.commit()
    b.release()
    b.release()                            # twice: once
    a.release()                            # committed: stays
    assert book.sent_last_24h(tenant_scope("t"), clock.now()) == 1
    c = _held(book.reserve("t", "u", limits, clock.now()))
    assert book.reserve("t", "u", limits, clock.now()) == DAILY_QUOTA_EXCEEDED
    c.commit()


def test_concurrent_sessions_cannot_both_take_the_last_unit() -> None:
    book = QuotaBook()
    limits = Limits(Cap(1, 0))
    first = book.reserve("t", "session-1", limits, T0)
    second = book.reserve("t", "session-2", limits, T0)
    assert isinstance(first, Reservation)
    assert second == DAILY_QUOTA_EXCEEDED


def test_simulator_counts_toward_the_rate_not_the_daily_quota() -> None:
    clock = FakeClock(T0)
    book = QuotaBook()
    limits = Limits(Cap(1, 2.0))
    _held(book.reserve("t", "u", limits, clock.now()))           # the daily quota is spent
    sim = _held(book.reserve("t", "u", limits, clock.now(), simulator=True))
    assert sim.entries == []
    assert book.reserve("t", "u", limits, clock.now(), simulator=True) == RATE_EXCEEDED
    clock.advance(1)
    assert book.reserve("t", "u", limits, clock.now()) == DAILY_QUOTA_EXCEEDED
    assert isinstance(book.reserve("t", "u", limits, clock.now(), simulator=True),
                      Reservation)
    assert book.sent_last_24h(tenant_scope("t"), clock.now()) == 1


def test_credential_override_has_its_own_scope_and_tenant_counts_everything() -> None:
    book = QuotaBook()
    tenant = Tenant("t", quota=Quota(max_24h_send=2))
    plain = effective_limits(Defaults(), tenant)
    own = effective_limits(Defaults(), tenant, Quota(max_24h_send=5))
    for _ in range(2):
        _held(book.reserve("t", "plain", plain, T0))
    assert book.reserve("t", "plain", plain, T0) == DAILY_QUOTA_EXCEEDED
    for _ in range(5):
        _held(book.reserve("t", "big", own, T0))
    assert book.reserve("t", "big", own, T0) == DAILY_QUOTA_EXCEEDED
    assert book.sent_last_24h(tenant_scope("t"), T0) == 7
    assert book.sent_last_24h(credential_scope("big"), T0) == 5
    assert book.sent_last_24h(credential_scope("plain"), T0) == 0


def test_one_tenants_limits_never_touch_anothers() -> None:
    book = QuotaBook()
    limits = Limits(Cap(1, 1.0))
    _held(book.reserve("a", "u", limits, T0))
    assert book.reserve("a", "u", limits, T0) == RATE_EXCEEDED
    _held(book.reserve("b", "v", limits, T0))


def test_sandbox_tenant_is_held_to_200_a_day_and_1_a_second() -> None:
    clock = FakeClock(T0)
    book = QuotaBook()
    limits = effective_limits(Defaults(), Tenant("s", sandbox=True), Quota(10**6, 1000))
    accepted = 0
    for _ in range(300):
        r = book.reserve("s", "u", limits, clock.now())
        assert book.reserve("s", "u", limits, clock.now()) in (RATE_EXCEEDED,
                                                               DAILY_QUOTA_EXCEEDED)
        if isinstance(r, Reservation):
            accepted += 1
            r.commit()
        clock.advance(1)
    assert accepted == 200


def test_rate_change_applies_at_once() -> None:
    book = QuotaBook()
    _held(book.reserve("t", "u", Limits(Cap(0, 10.0)), T0))
    assert book.buckets[tenant_scope("t")].capacity == 10.0
    _held(book.reserve("t", "u", Limits(Cap(0, 1.0)), T0))
    assert book.reserve("t", "u", Limits(Cap(0, 1.0)), T0) == RATE_EXCEEDED


def test_sweep_forgets_idle_scopes() -> None:
    book = QuotaBook()
    _held(book.reserve("t", "u", Limits(Cap(5, 1.0)), T0)).commit()
    book.sweep(T0 + 10)
    assert tenant_scope("t") in book.windows and tenant_scope("t") not in book.buckets
    book.sweep(T0 + DAY)
    assert book.windows == {}


# --------------------------------------------------------------------------- at DATA

def test_reserve_many_is_all_or_nothing_against_the_daily_quota() -> None:
    book = QuotaBook()
    limits = Limits(Cap(5, 0))
    got = book.reserve_many("t", "platform", limits, T0, [False] * 4)
    assert isinstance(got, list) and len(got) == 4
    # Two more do not fit in the one left: none is taken.
    assert book.reserve_many("t", "platform", limits, T0, [False] * 2) == DAILY_QUOTA_EXCEEDED
    assert book.sent_last_24h(tenant_scope("t"), T0) == 4
    # Simulator recipients need no room in the daily quota.
    sims = book.reserve_many("t", "platform", limits, T0, [True, True, False])
    assert isinstance(sims, list) and [len(r.entries) for r in sims] == [0, 0, 1]
    for r in got:
        r.release()
    assert book.sent_last_24h(tenant_scope("t"), T0) == 1


def test_reserve_many_goes_into_rate_debt_and_the_next_recipient_waits() -> None:
    clock = FakeClock(T0)
    book = QuotaBook()
    limits = Limits(Cap(0, 2.0))
    assert isinstance(book.reserve_many("t", "p", limits, clock.now(), [False] * 10), list)
    # 10 recipients at 2/s: the bucket owes 8 tokens, so 4.5 s pass before the next one.
    clock.advance(4.4)
    assert book.reserve("t", "p", limits, clock.now()) == RATE_EXCEEDED
    assert book.reserve_many("t", "p", limits, clock.now(), [True]) == RATE_EXCEEDED
    clock.advance(0.1)
    assert isinstance(book.reserve("t", "p", limits, clock.now()), Reservation)


def test_workers_split_every_limit_and_together_never_pass_it() -> None:
    limits = Limits(Cap(5, 3.0), Cap(1, 0.0))
    assert worker_share(limits, None) is limits and worker_share(limits, (0, 1)) is limits
    parts = [worker_share(limits, (i, 2)) for i in range(2)]
    assert [p.tenant for p in parts] == [Cap(3, 1.5), Cap(2, 1.5)]
    # A share of nothing is -1 (0 would be unlimited); unlimited stays unlimited.
    assert [p.credential for p in parts] == [Cap(1, 0.0), Cap(-1, 0.0)]
    books = [QuotaBook(), QuotaBook()]  # one per worker process
    got = [books[i].reserve("t", "u", Limits(parts[i].tenant), T0 + n)
           for n in range(4) for i in range(2)]
    assert sum(isinstance(r, Reservation) for r in got) == 5
    nothing = Limits(Cap(-1, 0.0))
    assert QuotaBook().reserve("t", "u", nothing, T0) == DAILY_QUOTA_EXCEEDED
    assert isinstance(QuotaBook().reserve("t", "u", nothing, T0, simulator=True),
                      Reservation)
    assert QuotaBook().reserve_many("t", "u", nothing, T0, [False]) == DAILY_QUOTA_EXCEEDED
