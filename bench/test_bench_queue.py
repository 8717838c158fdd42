"""Queue store benchmarks: group commit, next-due lookup, lease + settle.

- submit: N messages submitted concurrently go through the group committer (one synced
  LMDB commit per batch); the figure per round divided by N is the per-message cost.
- due / next_due_at: the scheduler's lookups on a store holding 10,000 due recipients.
- lease + settle: the delivery cycle for 100 recipients (due → lease op → settle op
  DELIVER, which removes the messages), each op in its own group commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.clock import SystemClock
from relay.queue.ops import NewMessage, Result
from relay.queue.records import Action
from relay.queue.store import QueueStore

BODY_2K = (b"Subject: bench\r\n\r\n" + b"x" * 76 + b"\r\n") * 26
DUE_RECIPIENTS = 10_000
SUBMIT_BATCH = 200
CYCLE = 100


def _msg(i: int) -> NewMessage:
    return NewMessage(sender="bench@sender.test", recipients=[f"user{i}@bench.test"],
                      body=BODY_2K, client_ip="127.0.0.1", helo="bench")


def _open(path: Path, loop: asyncio.AbstractEventLoop, **kw: Any) -> QueueStore:
    store = QueueStore(path, SystemClock(), map_size=1 << 28, **kw)
    loop.run_until_complete(store.start())
    return store


async def _submit_many(store: QueueStore, start: int, count: int) -> list[str]:
    return await asyncio.gather(*(store.submit(_msg(start + i)) for i in range(count)))


@pytest.fixture
def store(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> Iterator[QueueStore]:
    s = _open(tmp_path / "queue", loop)
    yield s
    loop.run_until_complete(s.close())


def test_submit_group_commit(benchmark: Any, store: QueueStore,
                             loop: asyncio.AbstractEventLoop) -> None:
    counter = iter(range(0, 10**9, SUBMIT_BATCH))

    def run() -> list[str]:
        return loop.run_until_complete(_submit_many(store, next(counter), SUBMIT_BATCH))

    ids = benchmark(run)
    assert len(set(ids)) == SUBMIT_BATCH
    benchmark.extra_info["messages_per_round"] = SUBMIT_BATCH
    benchmark.extra_info["commits"] = store.stats.commits
    benchmark.extra_info["mean_batch"] = round(
        store.stats.committed_ops / max(1, store.stats.commits), 1)


def test_submit_single(benchmark: Any, store: QueueStore,
                       loop: asyncio.AbstractEventLoop) -> None:
    """One message alone: the commit window plus one fsync (the latency floor)."""
    counter = iter(range(10**9))

    def run() -> str:
        return loop.run_until_complete(store.submit(_msg(next(counter))))

    assert benchmark(run)


@pytest.fixture(scope="module")
def due_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueueStore]:
    """A store holding DUE_RECIPIENTS due recipients (built once per module)."""
    import uvloop

    lp = uvloop.new_event_loop()
    s = _open(tmp_path_factory.mktemp("due") / "queue", lp, commit_window=0.0,
              commit_batch_max=5000)
    lp.run_until_complete(_submit_many(s, 0, DUE_RECIPIENTS))
    yield s
    lp.run_until_complete(s.close())
    lp.close()


def test_due_lookup_10k(benchmark: Any, due_store: QueueStore) -> None:
    now = due_store.clock.now() + 1
    items = benchmark(due_store.due, now, lane="new", limit=100)
    assert len(items) == 100


def test_next_due_at_10k(benchmark: Any, due_store: QueueStore) -> None:
    assert benchmark(due_store.next_due_at) is not None


def test_lease_settle_cycle(benchmark: Any, store: QueueStore,
                            loop: asyncio.AbstractEventLoop) -> None:
    counter = iter(range(0, 10**9, CYCLE))

    def setup() -> tuple[tuple[()], dict[str, Any]]:
        loop.run_until_complete(_submit_many(store, next(counter), CYCLE))
        return (), {}

    async def cycle() -> int:
        now = store.clock.now() + 0.01
        items = store.due(now, lane="new", limit=CYCLE)
        leased = await store.write(store.lease_op(items, now))
        results = [Result(x.message.id, x.index, Action.DELIVER, "250 2.0.0 ok", "mx.bench")
                   for x in leased]
        settled = await store.write(store.settle_op(results, now))
        return sum(1 for s in settled if s.message_done)

    done = benchmark.pedantic(lambda: loop.run_until_complete(cycle()), setup=setup,
                              rounds=15, iterations=1)
    assert done == CYCLE
    assert store.message_count() == 0
