"""Delivery attribution in the spool (relay/delivery/sentfrom.py), on a real LMDB store.

A complaint or a late bounce can arrive after a restart, or in another worker than the one
that delivered; the source IP must then come from the spool, and another process must be
able to read it there.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest

from relay.clock import FakeClock
from relay.delivery.sentfrom import SentFrom, prune_sent_op
from relay.queue.keys import new_message_id
from relay.queue.store import QueueStore
from relay.testing.factories import Stores

DAY = 86400.0


@pytest.fixture
async def store(make_store: Stores) -> QueueStore:
    """A real spool at tmp_path/q on a fake clock; closed afterwards."""
    return await make_store(FakeClock(1_800_000_000.0), name="q")


async def committed(sent: SentFrom) -> None:
    """Flush `sent` now and wait for the commit (the loop would flush at its next turn)."""
    durable = sent.flush()
    assert durable is not None
    await durable


async def test_a_delivery_is_attributed_after_a_reopen_and_a_refusal_only_in_memory(
        tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)
    store = QueueStore(tmp_path / "q", clock)
    await store.start()
    mid = new_message_id(clock.now())
    sent = SentFrom(store)
    sent.remember(mid, "Gmail.TEST", "127.0.0.10", "gmail", durable=True)
    sent.remember(mid, "yahoo.test", "127.0.0.11", "yahoo", durable=False)
    assert sent.lookup(mid, "gmail.test") == ("127.0.0.10", "gmail")
    assert sent.lookup(mid, "yahoo.test") == ("127.0.0.11", "yahoo")
    await committed(sent)
    await store.close()

    again = QueueStore(tmp_path / "q", clock)
    await again.start()
    try:
        fresh = SentFrom(again)  # a restarted process: nothing in memory
        assert fresh.lookup(mid, "gmail.test") == ("127.0.0.10", "gmail")
        assert fresh.lookup(mid, "GMAIL.test") == ("127.0.0.10", "gmail")
        assert fresh.lookup(mid, "yahoo.test") is None  # refused: handled when it happened
        assert fresh.lookup(new_message_id(clock.now()), "gmail.test") is None
    finally:
        await again.close()


async def test_writes_of_one_loop_turn_go_in_one_op_without_being_asked(
        store: QueueStore) -> None:
    clock = store.clock
    mids = [new_message_id(clock.now()) for _ in range(50)]
    sent = SentFrom(store)
    ops_before = store.stats.committed_ops
    for mid in mids:
        sent.remember(mid, "gmail.test", "127.0.0.10", "gmail", durable=True)
    # Nobody calls flush(): the loop does, once, at its next turn.
    await store.write(lambda txn: None)
    await store.write(lambda txn: None)
    other = SentFrom(store)
    assert all(other.lookup(mid, "gmail.test") == ("127.0.0.10", "gmail")
               for mid in mids)
    # 50 deliveries, one op (plus the two empty ones above).
    assert store.stats.committed_ops - ops_before == 3


async def test_another_process_reads_the_attribution(store: QueueStore, tmp_path: Path) -> None:
    # As worker 0's feedback listener does for a message worker 1 delivered.
    clock = store.clock
    mid = new_message_id(clock.now())
    sent = SentFrom(store)
    sent.remember(mid, "gmail.test", "127.0.0.10", "gmail", durable=True)
    await committed(sent)
    script = textwrap.dedent(f"""
        import asyncio, sys
        from relay.clock import FakeClock
        from relay.delivery.sentfrom import SentFrom
        from relay.queue.store import QueueStore

        async def main():
            store = QueueStore({str(tmp_path / "q")!r}, FakeClock(0.0))
            await store.start()
            try:
                print(SentFrom(store).lookup({mid!r}, "gmail.test"))
            finally:
                await store.close()
        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "('127.0.0.10', 'gmail')"


async def test_attributions_are_pruned_with_the_sent_records(store: QueueStore) -> None:
    clock = store.clock
    old, new = new_message_id(clock.now() - 10 * DAY), new_message_id(clock.now())
    sent = SentFrom(store)
    for mid in (old, new):
        sent.remember(mid, "gmail.test", "127.0.0.10", "gmail", durable=True)
    await committed(sent)
    await store.write(prune_sent_op(store, clock.now() - 5 * DAY))
    fresh = SentFrom(store)
    assert fresh.lookup(old, "gmail.test") is None
    assert fresh.lookup(new, "gmail.test") == ("127.0.0.10", "gmail")


def test_memory_is_bounded() -> None:
    sent = SentFrom(None, memory_max=3)
    for i in range(5):
        sent.remember(f"m{i}", "gmail.test", "127.0.0.10", "gmail", durable=False)
    assert sent.lookup("m0", "gmail.test") is None
    assert sent.lookup("m4", "gmail.test") == ("127.0.0.10", "gmail")


async def test_by_default_memory_keeps_a_few_mib_and_the_spool_the_rest(
        store: QueueStore) -> None:
    """A long drain: 20,000 deliveries keep at most 4 MiB in memory (10,000 of them; all
    20,000 held 5.1 MiB before, and 100,000 held 33 MiB), and the oldest is still found,
    in the spool."""
    sent = SentFrom(store)
    clock_ms = 1_800_000_000_000
    mids = [f"{clock_ms + i:012x}{i:08x}" for i in range(20_000)]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for n, mid in enumerate(mids):
            sent.remember(mid, f"d{n % 1000}.test", "203.0.113.10", "gmail", durable=True)
            if n % 2000 == 1999:
                await committed(sent)
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert held < 4 << 20, held
    assert sent.lookup(mids[0], "d0.test") == ("203.0.113.10", "gmail")
    assert sent.lookup(mids[-1], "d999.test") == ("203.0.113.10", "gmail")
