"""Events committed with the state change they report (relay/events/journal.py).

The crash window the soak bench found: the queue committed DELIVERED, the process died
before the event log write, and the Delivery event was gone. With the journal the event
is in the same LMDB transaction, so "crash after commit" is replayed at the next start.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from relay.clock import FakeClock
from relay.events.journal import EventJournal
from relay.events.log import EventLog, read_events
from relay.events.model import send_event
from relay.queue.ops import NewMessage
from relay.queue.store import QueueStore


def _msg() -> NewMessage:
    return NewMessage(sender="a@example.com", recipients=["r@dest.test"],
                      body=b"Subject: x\r\n\r\nhi\r\n", headers={"Subject": "x"})


async def test_staged_event_survives_a_crash_before_publication(tmp_path: Path) -> None:
    clock = FakeClock()
    store = QueueStore(tmp_path / "q", clock)
    log = EventLog(tmp_path / "events.jsonl")
    journal = EventJournal(store, log, clock)
    await store.start()
    record = await store.submit_record(
        _msg(), also=lambda txn, rec: journal.stage(txn, [send_event(rec)]))
    # "kill -9" here: the message and its Send event are committed, the log never written.
    await store.close()
    log.close()
    assert read_events(tmp_path / "events.jsonl") == []

    store = QueueStore(tmp_path / "q", clock)
    log = EventLog(tmp_path / "events.jsonl")
    journal = EventJournal(store, log, clock)
    assert journal.replay() == 1
    events = read_events(tmp_path / "events.jsonl")
    assert [(e["eventType"], e["mail"]["messageId"]) for e in events] == [  # type: ignore[index]
        ("Send", record.id)]
    # Replayed once: a second start publishes nothing again.
    assert journal.replay() == 0
    store.close_sync()
    log.close()


async def test_published_events_are_pruned_after_the_grace_period(tmp_path: Path) -> None:
    clock = FakeClock()
    store = QueueStore(tmp_path / "q", clock)
    log = EventLog(tmp_path / "events.jsonl")
    journal = EventJournal(store, log, clock, grace=2.0)
    await store.start()
    staged: list[bytes] = []
    rec: Any = await store.submit_record(
        _msg(), also=lambda txn, r: staged.extend(journal.stage(txn, [send_event(r)])))
    journal.published([send_event(rec)], staged)
    assert len(store.read_db(EventJournal.DB)) == 1
    await journal.flush()  # inside the grace period: kept (subscribers may still buffer)
    assert len(store.read_db(EventJournal.DB)) == 1
    clock.advance(2.5)
    await journal.flush()
    assert store.read_db(EventJournal.DB) == []
    assert len(read_events(tmp_path / "events.jsonl")) == 1
    await store.close()
    log.close()


async def test_event_log_writes_once_per_loop_turn(tmp_path: Path) -> None:
    """emit() buffers and the loop's next turn writes every line of it at once (one
    write(2) per turn, not two per message); without a running loop it writes at once."""
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    store = QueueStore(tmp_path / "q", FakeClock())
    await store.start()
    first = await store.submit_record(_msg())
    second = await store.submit_record(_msg())
    log.emit([send_event(first)])
    log.emit([send_event(second)])
    assert read_events(path) == []  # still buffered: same turn
    await asyncio.sleep(0)
    assert [e["mail"]["messageId"] for e in read_events(path)] == [  # type: ignore[index]
        first.id, second.id]
    await store.close()
    log.close()
    sync = EventLog(tmp_path / "cli.jsonl")
    await asyncio.to_thread(sync.emit, [send_event(first)])  # a thread with no loop
    assert len(read_events(tmp_path / "cli.jsonl")) == 1
    sync.close()
