"""A file event destination on a full disk (a real 1 MB tmpfs, the `tiny_disk` fixture of
conftest.py): publishing an event never raises into the publisher (before, ENOSPC from the
destination's write reached whoever emitted the event: a delivery, a bounce, a DATA
reply). What waits for the disk is bounded in memory (the excess counted as dropped),
written once space returns, and the file holds whole lines, none repeated or torn.
Needs root for `mount -t tmpfs`.
"""

from __future__ import annotations

import json
from pathlib import Path

from relay.clock import FakeClock
from relay.config import from_dict
from relay.events.destinations import EventRouter
from relay.events.model import send_event
from relay.queue.records import MessageRecord
from relay.testing.disk import fill


def _event(i: int) -> object:
    return send_event(MessageRecord(
        id=f"m{i:06d}", sender="a@example.com", recipients=[f"r{i}@dest.test"],
        received_at=1.0e9, size=100, headers={"Subject": "s" * 200}))


def test_a_full_disk_never_raises_into_the_publisher_and_loses_no_line_it_kept(
        tmp_path: Path, tiny_disk: Path) -> None:
    cfg = from_dict({"server": {"state_dir": str(tmp_path / "state")},
                     "event_destination": [{"name": "copy",
                                            "path": str(tiny_disk / "copy.jsonl")}]})
    router = EventRouter(lambda: cfg, None, FakeClock(), tmp_path / "state")  # type: ignore[arg-type]
    filler = fill(tiny_disk, leave=4096)  # one page: a few lines, then a cut one
    for i in range(1000):  # ~700 KB of lines: far more than the page left, fits once freed
        router(_event(i))  # type: ignore[arg-type]
    [out] = router.files
    assert out.write_failures > 0 and out.unwritten > 0
    assert out.dropped == 0
    filler.unlink()  # space returns; the next event writes everything held
    router(_event(1000))  # type: ignore[arg-type]
    assert out.unwritten == 0
    lines = (tiny_disk / "copy.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends in a whole line
    ids = [json.loads(x)["mail"]["messageId"] for x in lines[:-1]]
    assert ids == [f"m{i:06d}" for i in range(1001)]


def test_what_waits_for_the_disk_is_bounded(tmp_path: Path, tiny_disk: Path) -> None:
    from relay.events.linefile import LineFile

    out = LineFile(tiny_disk / "copy.jsonl", max_unwritten=64 << 10)
    fill(tiny_disk, leave=0)
    line = b"x" * 1000
    for _ in range(1000):
        out.write(line)
    assert out.unwritten <= 64 << 10
    assert out.dropped >= 1000 - (64 << 10) // len(line)
