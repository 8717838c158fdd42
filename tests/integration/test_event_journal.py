"""Events committed with the state change they report (relay/events/journal.py).

The crash window the soak bench found: the queue committed DELIVERED, the process died
before the event log write, and the Delivery event was gone. With the journal the event
is in the same LMDB transaction, so "crash after commit" is replayed at the next start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relay.clock import FakeClock
from relay.events.journal import EventJournal
from relay.events.log import EventLog, read_events
from relay.events.model import send_event
from relay.queue.store import NewMessage, QueueStore


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
