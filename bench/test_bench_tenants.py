"""The accept path's quota cost: what the SMTP session adds per recipient with quotas on.

- reserve + commit: QuotaBook.reserve() at RCPT (rate bucket, then the 24-hour window of
  the tenant and of a credential with its own quota) and Reservation.commit() after the
  250, for RECIPIENTS recipients of one tenant; the figure divided by RECIPIENTS is the
  cost per recipient.
- accept path: both of the above plus the reputation send counts (tenant and
  configuration set) that the accepting transaction also records, per recipient.
- commit ops: quotastore.commit_op() and repstore.record_op() for BATCH messages of
  MESSAGE_RECIPIENTS recipients in one write transaction, as the submitter's group
  commit runs them (the transaction is aborted: the ops' own cost, without the fsync
  they share); divided by BATCH, the cost per message.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.clock import SystemClock
from relay.queue.store import QueueStore
from relay.tenants import quotastore, repstore
from relay.tenants.quota import Cap, Limits, QuotaBook, Reservation
from relay.tenants.reputation import Lines, ReputationBook

RECIPIENTS = 1000
MESSAGE_RECIPIENTS = 10
BATCH = 100
LIMITS = Limits(Cap(10**9, 10**6), Cap(10**9, 10**6))


def test_reserve_commit_per_recipient(benchmark: Any) -> None:
    book = QuotaBook()
    clock = iter(range(10**12))

    def run() -> int:
        now = 1_790_000_000.0 + next(clock) * 0.001
        kept = 0
        for _ in range(RECIPIENTS):
            r = book.reserve("acme", "platform", LIMITS, now)
            assert isinstance(r, Reservation)
            r.commit()
            kept += 1
        return kept

    assert benchmark(run) == RECIPIENTS
    benchmark.extra_info["recipients_per_round"] = RECIPIENTS


def test_accept_path_per_recipient(benchmark: Any) -> None:
    """RCPT: reserve; accept: commit and count the send for the tenant and its set."""
    book = QuotaBook()
    rep = ReputationBook(Lines())
    clock = iter(range(10**12))

    def run() -> int:
        now = 1_790_000_000.0 + next(clock) * 0.001
        entries = []
        for _ in range(RECIPIENTS):
            r = book.reserve("acme", "platform", LIMITS, now)
            assert isinstance(r, Reservation)
            r.commit()
            entries.append(rep.record("tenant:acme", now, sends=1))
            entries.append(rep.record("configuration-set:news", now, sends=1))
        return len(entries)

    assert benchmark(run) == 2 * RECIPIENTS
    benchmark.extra_info["recipients_per_round"] = RECIPIENTS


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QueueStore]:
    s = QueueStore(tmp_path / "queue", SystemClock(), map_size=1 << 26)
    yield s
    s.close_sync()


def test_commit_ops_per_message(benchmark: Any, store: QueueStore) -> None:
    """BATCH messages' ops in one transaction, as one group commit runs them; the figure
    divided by BATCH is the cost per message."""
    book = QuotaBook()
    reservations = []
    for _ in range(MESSAGE_RECIPIENTS):
        r = book.reserve("acme", "platform", LIMITS, 1_790_000_000.0)
        assert isinstance(r, Reservation)
        reservations.append(r)
    sends = [("tenant:acme", 497_222, MESSAGE_RECIPIENTS, 0, 0),
             ("configuration-set:news", 497_222, MESSAGE_RECIPIENTS, 0, 0)]

    def run() -> None:
        txn = store.env.begin(write=True)
        try:
            for _ in range(BATCH):
                quotastore.commit_op(store, reservations)(txn)
                repstore.record_op(store, sends)(txn)
        finally:
            txn.abort()

    benchmark(run)
    benchmark.extra_info["messages_per_round"] = BATCH
    benchmark.extra_info["recipients_per_message"] = MESSAGE_RECIPIENTS
