"""events.log.tail(): the last events of events.jsonl, bounded in bytes, whole lines only."""

from __future__ import annotations

from pathlib import Path

import msgspec

from relay.events.log import read_events, tail


def _write(path: Path, n: int) -> list[bytes]:
    lines = [msgspec.json.encode({"eventType": "Send", "n": i}) + b"\n" for i in range(n)]
    path.write_bytes(b"".join(lines))
    return lines


def test_missing_log_has_no_events(tmp_path: Path) -> None:
    assert tail(tmp_path / "events.jsonl", 1 << 20) == []
    assert read_events(tmp_path / "events.jsonl") == []


def test_whole_log_without_a_bound(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    _write(path, 5)
    assert [e["n"] for e in tail(path)] == [0, 1, 2, 3, 4]


def test_bound_keeps_only_whole_lines_of_the_end(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = _write(path, 10)
    last3 = sum(len(x) for x in lines[-3:])
    # The window starts exactly where a line starts: that line is whole and kept.
    assert [e["n"] for e in tail(path, last3)] == [7, 8, 9]
    # One byte less cuts the first line of the window: it is skipped, never half-read.
    assert [e["n"] for e in tail(path, last3 - 1)] == [8, 9]
    # A window inside one line holds no whole event.
    assert tail(path, 3) == []


def test_torn_last_line_and_lines_that_are_not_objects_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    _write(path, 2)
    with open(path, "ab") as f:
        f.write(b'[1, 2]\n"text"\n\n{"eventType": "Deliv')
    assert [e["n"] for e in tail(path, 1 << 20)] == [0, 1]


def test_containing_reads_only_lines_with_those_bytes(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"eventType": "Send"}\n{"eventType": "WarmupFreeze", "warmup": {}}\n')
    assert tail(path, 1 << 20, containing=b'"Warmup') == [
        {"eventType": "WarmupFreeze", "warmup": {}}]
