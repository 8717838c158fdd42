"""Following events.jsonl like `tail -f` (relay/events/follow.py) and the live feed's
per-stream buffer (relay/admin/api/livefeed.py): whole lines only, bounded reads, a
truncated or replaced file read again from its start, an overlong line skipped, and a
slow stream losing what its buffer cannot hold (counted) instead of growing."""

from __future__ import annotations

import os
from pathlib import Path

from relay.admin.api.livefeed import Stream, frame
from relay.events.follow import LogFollower


def test_reads_only_whole_lines_appended_after_the_start(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(b'{"eventType":"Send"}\n')
    f = LogFollower(log)
    f.seek_end()
    assert f.read() == []
    with open(log, "ab") as out:
        out.write(b'{"eventType":"Delivery"}\n{"eventType":"Bou')
    assert f.read() == [b'{"eventType":"Delivery"}']      # the torn line waits
    with open(log, "ab") as out:
        out.write(b'nce"}\n')
    assert f.read() == [b'{"eventType":"Bounce"}']


def test_bounded_reads_catch_up_over_several_calls(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"")
    f = LogFollower(log, max_read=64)
    f.seek_end()
    lines = [f'{{"eventType":"Send","n":{i}}}'.encode() for i in range(20)]
    log.write_bytes(b"\n".join(lines) + b"\n")
    got: list[bytes] = []
    for _ in range(40):
        got += f.read()
        if not f.behind:
            break
    assert got == lines


def test_truncated_or_rotated_file_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(b'{"a":1}\n{"a":2}\n')
    f = LogFollower(log)
    f.seek_end()
    log.write_bytes(b'{"b":1}\n')                   # truncated and rewritten: shorter
    assert f.read() == [b'{"b":1}']
    os.replace(log, tmp_path / "old.jsonl")          # rotated: a new file, a new inode
    (tmp_path / "new.jsonl").write_bytes(b'{"c":1}\n{"c":2}\n')
    os.replace(tmp_path / "new.jsonl", log)
    assert f.read() == [b'{"c":1}', b'{"c":2}']
    log.unlink()
    assert f.read() == []


def test_a_line_longer_than_a_read_is_skipped(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"")
    f = LogFollower(log, max_read=32)
    f.seek_end()
    log.write_bytes(b"x" * 100 + b'\n{"ok":1}\n')
    got: list[bytes] = []
    for _ in range(10):
        got += f.read()
    assert got == [b'{"ok":1}'] and f.skipped == 1


def test_frame_names_the_event_type() -> None:
    assert frame(b'{"eventType":"Rendering Failure","x":1}') == (
        b'event: Rendering Failure\ndata: {"eventType":"Rendering Failure","x":1}\n\n')
    assert frame(b"not json").startswith(b"event: event\ndata: not json")


async def test_a_slow_stream_drops_what_its_buffer_cannot_hold() -> None:
    s = Stream(limit=100)
    for _ in range(10):
        s.put(b"y" * 30)
    assert s.size <= 100 and s.dropped == 7
    assert len(s.take()) == 3 and s.size == 0
    s.put(b"z")
    assert s.take() == [b"z"]
