"""The ledger of counts a node makes while Redis is unreachable (relay/cluster/fallback.py,
PURE): a sliding window's part of it by bucket with Redis's never-early rule, counts whose
window has passed pruned, and reservations given back taken out of open or sealed
batches, never below what is owed."""

from __future__ import annotations

from relay.cluster.fallback import Ledger, Pending


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
