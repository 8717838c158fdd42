"""The ledger of counts a node makes while Redis is unreachable (relay/cluster/fallback.py,
PURE): a sliding window's part of it by bucket with Redis's never-early rule, counts whose
window has passed pruned, and reservations given back taken out of open or sealed
batches, never below what is owed."""

from __future__ import annotations

import random

from relay.cluster.fallback import Batch, Ledger, Pending


def _rate(n: int, at_ms: int) -> Pending:
    return Pending("sliding", "sw:rate:tenant:acme", n, at_ms=at_ms, window_ms=1000,
                   bucket_ms=100)


def test_used_at_counts_buckets_not_wholly_older_than_the_window() -> None:
    ledger = Ledger("n1")
    ledger.record(_rate(2, 10_050))  # bucket [10000, 10100)
    ledger.record(_rate(3, 10_950))  # bucket [10900, 11000)
    assert ledger.used("sw:rate:tenant:acme") == 5
    assert ledger.used_at("sw:rate:tenant:acme", 11_000) == 5
    assert ledger.used_at("sw:rate:tenant:acme", 11_100) == 3  # the first bucket left
    assert ledger.used_at("sw:rate:tenant:acme", 12_000) == 0
    assert ledger.used_at("sw:other", 0) == 0
    assert len(ledger) == 0


def test_prune_drops_open_counts_whose_window_has_passed() -> None:
    ledger = Ledger("n1")
    ledger.record(_rate(2, 10_050))
    ledger.record(_rate(1, 12_000))
    ledger.prune(11_099)  # its bucket [10000, 10100) is not yet a whole second old
    assert ledger.used("sw:rate:tenant:acme") == 3
    ledger.prune(11_100)  # now it is: gone
    assert ledger.used("sw:rate:tenant:acme") == 1
    assert len(ledger) == 1


def test_forget_takes_back_from_open_then_sealed_batches_never_below_zero() -> None:
    ledger = Ledger("n1")
    ledger.record(_rate(3, 10_050))
    assert ledger.forget(_rate(1, 10_070))  # same bucket, open
    assert ledger.used("sw:rate:tenant:acme") == 2
    (batch,) = ledger.seal("e")
    assert ledger.forget(_rate(2, 10_000))  # sealed: lowered, same id
    current = ledger.current(batch.batch_id)
    assert current is not None and current.n == 0
    assert not ledger.forget(_rate(1, 10_000))  # nothing of that slot is owed any more
    assert not ledger.forget(_rate(1, 20_000))  # another bucket: never counted here
    ledger.confirm(batch.batch_id)
    assert len(ledger) == 0


def _run(seed: int, lose_answers: bool) -> tuple[dict[str, int], dict[str, int], int]:
    """Random records, give-backs, seals, sends (applied once per batch id, as the guard
    does; an answer sometimes lost) and confirmations against a stand-in for Redis's
    counts; at the end everything is sent. -> (Redis's totals, recorded minus given back,
    recorded) per key."""
    rng = random.Random(seed)
    ledger = Ledger("n1")
    redis: dict[str, int] = {}
    applied: set[str] = set()
    expected: dict[str, int] = {}
    recorded = 0
    held: list[Pending] = []

    def send(batches: list[Batch], lose: bool) -> None:
        for b in batches:
            p = ledger.current(b.batch_id)
            if p is None:
                continue
            if b.batch_id not in applied:
                applied.add(b.batch_id)
                redis[p.key] = redis.get(p.key, 0) + p.n
            if not lose:
                ledger.confirm(b.batch_id)

    for _ in range(400):
        op = rng.random()
        if op < 0.5:
            p = Pending("sliding", rng.choice(["a", "b"]), 1, at_ms=rng.randrange(0, 5) * 1000,
                        window_ms=86_400_000, bucket_ms=1000)
            ledger.record(p)
            held.append(p)
            expected[p.key] = expected.get(p.key, 0) + 1
            recorded += 1
        elif op < 0.65 and held:
            p = held.pop(rng.randrange(len(held)))
            expected[p.key] -= 1
            if not ledger.forget(p):  # already in Redis: given back there
                redis[p.key] -= 1
        elif op < 0.9:
            send(ledger.seal("e"), lose_answers and rng.random() < 0.3)
    send(ledger.seal("e"), False)
    assert len(ledger) == 0
    return redis, expected, recorded


def test_every_count_reaches_redis_once_whatever_the_order_of_give_backs_and_sends() -> None:
    for seed in range(30):
        redis, expected, _ = _run(seed, lose_answers=False)
        assert {k: v for k, v in redis.items() if v} == {k: v for k, v in expected.items() if v}
    for seed in range(30):  # a lost answer after a give-back may leave one counted: more,
        redis, expected, recorded = _run(seed, lose_answers=True)  # never less
        assert all(redis.get(k, 0) >= v for k, v in expected.items())
        assert sum(redis.values()) <= recorded
