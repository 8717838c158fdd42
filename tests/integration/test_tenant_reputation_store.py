"""Reputation counts in a real LMDB spool: added by ops, read back after a restart into
the same figures, cleared by the operator's resume, pruned past max_window."""

from __future__ import annotations

from pathlib import Path

from relay.clock import FakeClock
from relay.queue.store import QueueStore
from relay.tenants import repstore
from relay.tenants.model import StatusRecord
from relay.tenants.reputation import Lines, ReputationBook

T0 = 1_790_035_200.0
DAY = 86400.0


def test_counts_survive_a_restart_and_resume_clears_them(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    lines = Lines(min_volume=100)
    store = QueueStore(tmp_path / "q", clock)
    book = ReputationBook(lines)
    for _ in range(3):
        entries = [book.record("tenant:a", clock.now(), sends=100),
                   book.record("configuration-set:x", clock.now(), sends=10, bounces=1),
                   book.record("tenant:a", clock.now(), bounces=3, complaints=1)]
        store.write_now(repstore.record_op(store, entries))
        clock.advance(days=1)
    # A second process on the same spool adds to the same hour.
    store.write_now(repstore.record_op(store, [("tenant:a", int(T0 // 3600), 5, 0, 0)]))
    store.close_sync()

    reopened = QueueStore(tmp_path / "q", clock)
    fresh = ReputationBook(lines)
    repstore.load(reopened, fresh, clock.now())
    fig = fresh.figures("tenant:a", clock.now())
    assert (fig.sends, fig.bounces, fig.complaints) == (305, 9, 3)
    assert fresh.figures("configuration-set:x", clock.now()).bounces == 3
    paused = fresh.evaluate("tenant:a", StatusRecord(), clock.now())
    assert paused is not None and paused.status == "Paused"  # 1 % complaints

    status = fresh.resume("tenant:a", paused, "alice", clock.now())
    # "tenant:a" sorts last: the reset deletes up to the end of the database.
    assert reopened.write_now(repstore.reset_op(reopened, "tenant:a")) == 3
    assert reopened.write_now(repstore.reset_op(reopened, "tenant:b")) == 0
    again = ReputationBook(lines)
    repstore.load(reopened, again, clock.now())
    assert again.evaluate("tenant:a", status, clock.now()) is None
    assert again.figures("tenant:a", clock.now()).sends == 0
    assert again.figures("configuration-set:x", clock.now()).sends == 30

    # refresh(): one scope as all processes stored it, in place of this process's.
    mine = ReputationBook(lines)
    mine.record("configuration-set:x", clock.now(), sends=1)
    repstore.refresh(reopened, mine, "configuration-set:x", clock.now())
    assert mine.figures("configuration-set:x", clock.now()).sends == 30
    reopened.close_sync()


def test_prune_drops_hours_past_max_window(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q", FakeClock(T0))
    entries = [(scope, int(T0 // 3600) + h * 24, 1, 0, 0)
               for scope in ("tenant:a", "tenant:ab", "tenant:z") for h in range(10)]
    store.write_now(repstore.record_op(store, entries))
    now = T0 + 35 * DAY  # max_window 30 days: days 0-4 have left it
    assert store.write_now(repstore.prune_op(store, now, 30 * DAY, limit=7)) == 7
    assert store.write_now(repstore.prune_op(store, now, 30 * DAY)) == 8
    assert store.write_now(repstore.prune_op(store, now, 30 * DAY)) == 0
    assert len(repstore.stored(store)) == 15
    store.close_sync()
