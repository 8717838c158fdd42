"""The accept path's quota cost: what the SMTP session adds per recipient with quotas on.

- reserve + commit: QuotaBook.reserve() at RCPT (rate bucket, then the 24-hour window of
  the tenant and of a credential with its own quota) and Reservation.commit() after the
  250, for RECIPIENTS recipients of one tenant; the figure divided by RECIPIENTS is the
  cost per recipient.
- commit op: quotastore.commit_op() for one message of MESSAGE_RECIPIENTS recipients,
  run inside a write transaction as the submitter's group commit runs it (the
  transaction is aborted, so this is the op's own cost without the fsync it shares).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.clock import SystemClock
from relay.queue.store import QueueStore
from relay.tenants import quotastore
from relay.tenants.quota import Cap, Limits, QuotaBook, Reservation

RECIPIENTS = 1000
MESSAGE_RECIPIENTS = 10
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


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QueueStore]:
    s = QueueStore(tmp_path / "queue", SystemClock(), map_size=1 << 26)
    yield s
    s.close_sync()


def test_commit_op_per_message(benchmark: Any, store: QueueStore) -> None:
    book = QuotaBook()
    reservations = []
    for _ in range(MESSAGE_RECIPIENTS):
        r = book.reserve("acme", "platform", LIMITS, 1_790_000_000.0)
        assert isinstance(r, Reservation)
        reservations.append(r)

    def run() -> None:
        txn = store.env.begin(write=True)
        try:
            quotastore.commit_op(store, reservations)(txn)
        finally:
            txn.abort()

    benchmark(run)
    benchmark.extra_info["recipients_per_message"] = MESSAGE_RECIPIENTS
