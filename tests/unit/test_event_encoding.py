"""An event's JSON encoded once for the event log and the subscribers that write it, and
SES timestamps formatted from a cached second: both must give what encoding and
formatting afresh give."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import msgspec

from relay.events.log import EventLog
from relay.events.model import Event, delivery_event, encoded, iso, send_event
from relay.queue.records import MessageRecord


def record(i: int) -> MessageRecord:
    return MessageRecord(f"0000{i:012x}", "a@example.com", ["b@example.net"],
                         1_765_000_000.25 + i, 100,
                         headers={"From": "a@example.com", "Subject": f"n{i}"})


def test_subscribers_get_the_bytes_the_log_wrote(tmp_path: Path) -> None:
    seen: list[tuple[bytes, bytes]] = []

    def writer(ev: Event) -> None:
        data = encoded(ev)
        seen.append((data, msgspec.json.encode(ev)))

    log = EventLog(tmp_path / "events.jsonl", subscribers=[writer])
    events = [send_event(record(1)), delivery_event(record(1), ["b@example.net"],
                                                    "250 ok", 1_765_000_001.5, "mx.example.net")]
    log.emit(events)
    log.flush()
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    assert [d for d, _ in seen] == lines
    assert all(given == fresh for given, fresh in seen)


def test_an_event_changed_after_it_was_published_is_encoded_afresh(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl", subscribers=[lambda ev: None])
    ev = send_event(record(2))
    log.emit([ev])
    ev.mail.source = "changed@example.com"
    assert b"changed@example.com" in encoded(ev)


def old_iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{int(ts * 1000) % 1000:03d}Z"


def test_iso_from_a_cached_second_is_what_datetime_gives() -> None:
    rng = random.Random(5)
    base = [rng.uniform(0, 4e9) for _ in range(2000)]
    # In order within a second (the cache's hits), and just below the next second, which
    # datetime rounds up to.
    values = [s + f for s in (1_765_000_000, 0, 59) for f in
              (0.0, 0.001, 0.5, 0.999, 0.9994999, 0.9999994, 0.9999995, 0.9999996, 0.99999999)]
    # An event's two times (the report's and its message's received time) alternate.
    pairs = [t for s in values for t in (s, s - 3.25)]
    for ts in base + values + sorted(base) + [v + 1e-7 for v in values] + pairs:
        assert iso(ts) == old_iso(ts), ts
