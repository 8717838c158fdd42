"""The LMDB store on a real LMDB in a temp dir: group commit, schedule index, leases, recovery."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from types import FrameType

import pytest

from relay.clock import FakeClock
from relay.queue.committer import StoreFull
from relay.queue.ops import NewMessage, Result
from relay.queue.records import Action, State
from relay.queue.store import QueueStore


def _msg(i: int, rcpts: int = 1, size: int = 100) -> NewMessage:
    return NewMessage(sender=f"s{i}@example.com",
                      recipients=[f"r{j}@d{j % 2}.test" for j in range(rcpts)],
                      body=b"x" * size, headers={"Subject": f"m{i}"})


async def test_concurrent_submissions_share_commits(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q", FakeClock(), commit_window=0.002)
    await store.start()
    ids = await asyncio.gather(*(store.submit(_msg(i)) for i in range(200)))
    assert len(set(ids)) == 200
    # Group commit: far fewer fsyncs than messages.
    assert store.stats.commits < 50
    assert store.message_count() == 200
    await store.close()


async def test_committed_message_survives_reopen(tmp_path: Path) -> None:
    clock = FakeClock()
    store = QueueStore(tmp_path / "q", clock)
    await store.start()
    mid = await store.submit(_msg(1, rcpts=3))
    await store.close()
    again = QueueStore(tmp_path / "q", clock)
    msg = again.message(mid)
    assert msg is not None and msg.recipients == ["r0@d0.test", "r1@d1.test", "r2@d0.test"]
    assert again.body(mid) == b"x" * 100
    assert [r.state for r in again.recipients(mid)] == [State.QUEUED] * 3
    again.close_sync()


async def test_due_lease_settle_and_removal(tmp_path: Path) -> None:
    clock = FakeClock()
    store = QueueStore(tmp_path / "q", clock)
    await store.start()
    mid = await store.submit(_msg(1, rcpts=2))
    due = store.due(clock.now(), lane="new", limit=10)
    assert len(due) == 2
    leased = await store.write(store.lease_op(due, clock.now()))
    assert [lease.recipient.state for lease in leased] == [State.INFLIGHT] * 2
    # Leased items are no longer due now, and not leased twice.
    assert store.due(clock.now(), lane="new", limit=10) == []
    assert store.due(clock.now(), lane="retry", limit=10) == []
    assert await store.write(store.lease_op(due, clock.now())) == []
    later = clock.now() + 60
    settled = await store.write(store.settle_op([
        Result(mid, 0, Action.DELIVER, "250 ok"),
        Result(mid, 1, Action.DEFER, "451 4.3.0 later", next_attempt_at=later),
    ], clock.now()))
    assert [s.recipient.state for s in settled] == [State.DELIVERED, State.DEFERRED]
    assert not any(s.message_done for s in settled)
    assert store.due(clock.now(), lane="retry", limit=10) == []
    assert store.next_due_at() == pytest.approx(later, abs=0.001)
    clock.advance(60)
    due = store.due(clock.now(), lane="retry", limit=10)
    assert [d.index for d in due] == [1]
    await store.write(store.lease_op(due, clock.now()))
    settled = await store.write(store.settle_op(
        [Result(mid, 1, Action.DELIVER, "250 ok")], clock.now()))
    assert settled[0].message_done and settled[0].recipient.attempts == 2
    assert store.message(mid) is None and store.body(mid) is None
    assert store.next_due_at() is None
    await store.close()


async def test_recover_makes_inflight_due(tmp_path: Path) -> None:
    clock = FakeClock()
    store = QueueStore(tmp_path / "q", clock, lease_seconds=3600)
    await store.start()
    mid = await store.submit(_msg(1))
    await store.write(store.lease_op(store.due(clock.now(), lane="new", limit=5), clock.now()))
    await store.close()
    # "Crash": reopen, recover.
    store = QueueStore(tmp_path / "q", clock, lease_seconds=3600)
    assert store.write_now(store.recover_op(clock.now())) == 1
    due = store.due(clock.now(), lane="retry", limit=5)
    assert [(d.message_id, d.index) for d in due] == [(mid, 0)]
    assert store.recipients(mid)[0].state is State.DEFERRED
    store.close_sync()


def _inflight_index(store: QueueStore) -> list[bytes]:
    db = store.named_db("inflight")
    return store.read(lambda txn: [bytes(k) for k, _ in txn.cursor(db=db).iternext()
                                   if bytes(k) != QueueStore.INFLIGHT_COMPLETE])


async def test_recover_reads_only_the_inflight_index(tmp_path: Path) -> None:
    """Recovery finds in-flight recipients through their index (O(in flight), not a scan
    of every recipient); the index follows lease, settle and delete, per shard too."""
    clock = FakeClock()
    store = QueueStore(tmp_path / "q", clock, lease_seconds=3600)
    assert store.write_now(store.recover_op(clock.now())) == 0  # first start: index complete
    await store.start()
    # Messages accepted by worker 0 of 2 (a, b, d) and by worker 1 (c): each is
    # delivered, and recovered, by the worker that accepted it.
    owners = [(0, 2), (0, 2), (1, 2), (0, 2)]
    ids = []
    for i, owner in enumerate(owners):
        store.shard = owner
        ids.append(await store.submit(_msg(i, rcpts=2)))
    store.shard = None
    a, b, c, d = ids
    await store.submit(_msg(5, rcpts=2))  # never leased
    due = [x for x in store.due(clock.now(), lane="new", limit=20) if x.message_id != d or
           x.index == 0]
    leased = await store.write(store.lease_op(
        [x for x in due if x.message_id in (a, b, c, d)], clock.now()))
    assert len(leased) == 7 and len(_inflight_index(store)) == 7
    await store.write(store.settle_op([Result(a, 0, Action.DELIVER, "250 ok"),
                                       Result(a, 1, Action.DEFER, "451 x",
                                              next_attempt_at=clock.now() + 60)], clock.now()))
    await store.write(store.delete_op(b))
    assert len(_inflight_index(store)) == 3  # c/0, c/1, d/0
    await store.close()
    # "Crash": worker 1 of 2 recovers its shard only (message c), then everyone else's.
    store = QueueStore(tmp_path / "q", clock, lease_seconds=3600)
    assert store.write_now(store.recover_op(clock.now(), shard=(1, 2))) == 2
    assert [r.state for r in store.recipients(c)] == [State.DEFERRED, State.DEFERRED]
    assert store.recipients(d)[0].state is State.INFLIGHT
    assert len(_inflight_index(store)) == 1
    assert store.write_now(store.recover_op(clock.now())) == 1
    assert _inflight_index(store) == []
    assert {(x.message_id, x.index) for x in store.due(clock.now(), lane="retry", limit=10)} \
        == {(c, 0), (c, 1), (d, 0)}
    assert store.write_now(store.recover_op(clock.now())) == 0
    store.close_sync()


async def test_recover_builds_the_index_on_an_older_spool(tmp_path: Path) -> None:
    """A spool written before the index (in-flight recipients, no index keys): the first
    recovery scans once, recovers its shard's and indexes the other shards' in-flight ones."""
    clock = FakeClock()
    store = QueueStore(tmp_path / "q", clock, lease_seconds=3600)
    await store.start()
    store.shard = (0, 2)
    mine = await store.submit(_msg(1, rcpts=2))    # accepted by worker 0 of 2
    store.shard = (1, 2)
    theirs = await store.submit(_msg(2, rcpts=2))  # by worker 1
    store.shard = None
    await store.write(store.lease_op(store.due(clock.now(), lane="new", limit=5), clock.now()))
    db = store.named_db("inflight")
    await store.write(lambda txn: txn.drop(db, delete=False))  # as the older code left it
    await store.close()
    store = QueueStore(tmp_path / "q", clock, lease_seconds=3600)
    assert store.write_now(store.recover_op(clock.now(), shard=(0, 2))) == 2
    assert [r.state for r in store.recipients(mine)] == [State.DEFERRED] * 2
    assert [r.state for r in store.recipients(theirs)] == [State.INFLIGHT] * 2
    assert len(_inflight_index(store)) == 2
    assert store.write_now(store.recover_op(clock.now(), shard=(1, 2))) == 2  # from the index
    assert [r.state for r in store.recipients(theirs)] == [State.DEFERRED] * 2
    assert _inflight_index(store) == []
    store.close_sync()


async def test_lease_expiry_brings_stuck_work_back(tmp_path: Path) -> None:
    clock = FakeClock()
    store = QueueStore(tmp_path / "q", clock, lease_seconds=600)
    await store.start()
    await store.submit(_msg(1))
    await store.write(store.lease_op(store.due(clock.now(), lane="new", limit=5), clock.now()))
    clock.advance(601)
    assert len(store.due(clock.now(), lane="retry", limit=5)) == 1
    await store.close()


async def test_operator_retry_bounce_delete(tmp_path: Path) -> None:
    clock = FakeClock()
    store = QueueStore(tmp_path / "q", clock)
    await store.start()
    a = await store.submit(_msg(1))
    b = await store.submit(_msg(2))
    c = await store.submit(_msg(3))
    leased = await store.write(store.lease_op(
        [d for d in store.due(clock.now(), lane="new", limit=5) if d.message_id == a],
        clock.now()))
    await store.write(store.settle_op(
        [Result(a, 0, Action.DEFER, "451 x", next_attempt_at=clock.now() + 3600)
         for _ in leased], clock.now()))
    settled = await store.write(store.operator_op(a, Action.RETRY, clock.now()))
    assert settled and store.due(clock.now(), lane="retry", limit=5)[0].message_id == a
    bounced = await store.write(store.operator_op(b, Action.BOUNCE, clock.now(), "operator"))
    assert bounced[0].recipient.state is State.BOUNCED and bounced[0].message_done
    assert store.message(b) is None
    await store.write(store.delete_op(c))
    assert store.message(c) is None
    with pytest.raises(KeyError):
        await store.write(store.delete_op(c))
    await store.close()


async def test_map_full_grows_then_succeeds(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q", FakeClock(), map_size=256 * 1024)
    await store.start()
    for i in range(20):
        await store.submit(_msg(i, size=60_000))
    assert store.stats.map_grows >= 1
    assert store.message_count() == 20
    await store.close()


async def test_map_full_without_room_is_store_full(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q", FakeClock(), map_size=256 * 1024)
    store.committer._grow_map = lambda: False  # type: ignore[method-assign]  # a disk with no room
    await store.start()
    ok = await store.submit(_msg(0, size=1000))
    with pytest.raises(StoreFull):
        await store.submit(_msg(1, size=400_000))
    # Still serving, and nothing already queued was harmed.
    ok2 = await store.submit(_msg(2, size=1000))
    assert store.message(ok) is not None and store.message(ok2) is not None
    await store.close()


async def test_batch_ops_run_on_the_loop_thread(tmp_path: Path) -> None:
    """The writer thread opens and commits; the ops run on the loop thread (py-lmdb drops
    the GIL on every call, so a writer thread running them fought the loop for it)."""
    store = QueueStore(tmp_path / "q", FakeClock())
    await store.start()
    seen: list[int] = []

    def op(txn: object) -> int:
        seen.append(threading.get_ident())
        return 7

    assert await asyncio.gather(*(store.write(op) for _ in range(20))) == [7] * 20
    assert set(seen) == {threading.get_ident()}
    await store.close()


async def test_write_now_on_the_loop_of_a_started_store_is_refused(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q", FakeClock())
    await store.start()
    with pytest.raises(RuntimeError, match="use await write"):
        store.write_now(lambda txn: None)
    # From another thread it still works (it waits for the write lock like the CLI).
    assert await asyncio.to_thread(store.write_now, lambda txn: 5) == 5
    await store.close()


_HOLD_LOCK = """
import sys, lmdb
env = lmdb.open(sys.argv[1], subdir=True, max_dbs=20)
with env.begin(write=True):
    print("held", flush=True)
    sys.stdin.readline()
"""


async def test_another_process_holding_the_write_lock_does_not_block_the_loop(
        tmp_path: Path) -> None:
    """A CLI command mid-transaction makes the group commit wait, in the writer thread:
    the loop keeps serving (here: a sleep finishes while the write is still pending)."""
    store = QueueStore(tmp_path / "q", FakeClock())
    await store.start()
    await store.submit(_msg(0))
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLD_LOCK, str(tmp_path / "q"),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert holder.stdout is not None and holder.stdin is not None
    assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"held\n"
    try:
        pending = asyncio.ensure_future(store.submit(_msg(1)))
        await asyncio.sleep(0.2)
        assert not pending.done()  # waiting for the lock, and the loop ran meanwhile
    finally:
        holder.stdin.write(b"go\n")
        await holder.stdin.drain()
        assert await asyncio.wait_for(holder.wait(), 30) == 0
    mid = await asyncio.wait_for(pending, 30)
    assert store.message(mid) is not None
    await store.close()


_TAKE_LOCK = """
import sys, lmdb
env = lmdb.open(sys.argv[1], subdir=True, max_dbs=20)
with env.begin(write=True):
    print("took", flush=True)
"""


async def test_the_write_lock_is_not_held_while_the_loop_is_busy(tmp_path: Path) -> None:
    """With server.workers = N every process commits to one environment, so whatever
    happens while a process holds the write lock, the others wait out. A commit must not
    hold it across its loop's turn: the writer thread takes the lock only once the loop
    is at the mailbox to run the ops (it used to take it first and then wait for the
    loop). Here the loop is stuck in a long step while a write is queued, and another
    process can still take the write lock meanwhile."""
    import select
    import subprocess
    import time

    store = QueueStore(tmp_path / "q", FakeClock(), commit_window=0)
    await store.start()
    await store.submit(_msg(0))
    pending = asyncio.ensure_future(store.submit(_msg(1)))
    await asyncio.sleep(0)  # the submission is queued for the writer thread
    # From here the loop is blocked on purpose until the other process reports.
    deadline = time.monotonic() + 10
    while not store.committer._mailbox._calls and time.monotonic() < deadline:
        time.sleep(0.001)  # until the writer thread has called for the loop
    assert store.committer._mailbox._calls, "the writer thread never called for the loop"
    other = subprocess.Popen([sys.executable, "-c", _TAKE_LOCK, str(tmp_path / "q")],
                             stdout=subprocess.PIPE)
    try:
        assert other.stdout is not None
        ready, _, _ = select.select([other.stdout], [], [], 15)
        assert ready and other.stdout.readline() == b"took\n", \
            "the write lock was held while the loop was busy"
        assert other.wait(15) == 0
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    mid = await asyncio.wait_for(pending, 30)
    assert store.message(mid) is not None
    await store.close()


_CONTEND = """
import random, sys, time, lmdb
env = lmdb.open(sys.argv[1], subdir=True, max_dbs=20)
rng = random.Random(7)
print("ready", flush=True)
deadline = time.monotonic() + 60
for i in range(int(sys.argv[2])):
    if time.monotonic() > deadline:
        break
    with env.begin(write=True):
        time.sleep(rng.choice([0.0, 0.001, 0.003, 0.012]))  # some beyond PARK_MAX
    time.sleep(rng.random() * 0.004)
print("done", flush=True)
"""


async def test_commits_stay_whole_and_in_order_while_another_process_contends(
        tmp_path: Path) -> None:
    """Another writer takes the lock over and over, sometimes for less than the loop
    waits at the mailbox and sometimes for longer (so both ways of handing the ops to
    the loop run): every submission is committed, each on its own, in the order queued."""
    store = QueueStore(tmp_path / "q", FakeClock())
    await store.start()
    await store.submit(_msg(0))
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CONTEND, str(tmp_path / "q"), "300",
        stdout=asyncio.subprocess.PIPE)
    assert other.stdout is not None
    assert await asyncio.wait_for(other.stdout.readline(), 30) == b"ready\n"
    durable: list[str] = []
    queued: list[str] = []
    try:
        for wave in range(20):
            futs = [store.submit_record(_msg(wave * 100 + i),
                                        on_durable=durable.append) for i in range(25)]
            records = await asyncio.wait_for(asyncio.gather(*futs), 60)
            queued += [r.id for r in records]
            await asyncio.sleep(0.005)
    finally:
        assert await asyncio.wait_for(other.wait(), 90) == 0
    assert durable == queued  # durable in the order they were queued
    assert store.message_count() == 1 + 20 * 25
    assert all(store.message(mid) is not None for mid in queued)
    await store.close()


async def test_the_loop_waits_for_the_writer_thread_once_per_commit(tmp_path: Path) -> None:
    """The loop blocks (GIL released) only to be handed the write transaction; once the
    ops ran it goes back to its sessions at once, and the writer thread commits without
    it. It used to wait a second time, until the writer thread had woken up and reached
    commit: one more thread wake-up per commit with the whole loop stopped, 0.3-0.4 ms
    of every message's loop time on a loaded machine. Counted here: the blocking lock
    waits the loop thread makes per group commit."""
    store = QueueStore(tmp_path / "q", FakeClock(), commit_window=0)
    await store.start()
    await store.submit(_msg(0))
    waits = 0

    def count(frame: FrameType, event: str, arg: object) -> None:
        nonlocal waits  # the committer's own lock waits (not threading.Event's internals)
        if (event == "c_call" and getattr(arg, "__name__", "") == "acquire"
                and frame.f_code.co_filename.endswith("committer.py")):
            waits += 1

    commits = store.stats.commits
    sys.setprofile(count)
    try:
        for i in range(30):
            await store.submit(_msg(i + 1))
    finally:
        sys.setprofile(None)
    commits = store.stats.commits - commits
    assert commits >= 30
    assert waits <= commits, (waits, commits)
    await store.close()
