"""The event log: one SES-shaped JSON object per line in state_dir/events.jsonl.

Events are appended and flushed per batch, not fsynced: they report what the
queue (which is synced) already decided. Readers (`relay events tail`, tests)
read whole lines only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import msgspec

from relay.events.model import Event

_enc = msgspec.json.Encoder()


class EventLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: BinaryIO = open(path, "ab")  # noqa: SIM115 - held open for the process life
        self.subscribers: list[Callable[[Event], None]] = []

    def emit(self, events: Iterable[Event]) -> None:
        wrote = False
        for ev in events:
            self._fh.write(_enc.encode(ev) + b"\n")
            wrote = True
            for sub in self.subscribers:
                sub(ev)
        if wrote:
            self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_events(path: Path) -> list[dict[str, object]]:
    """All complete events in a log (a torn last line is ignored)."""
    if not path.exists():
        return []
    out: list[dict[str, object]] = []
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            out.append(msgspec.json.decode(line))
        except msgspec.DecodeError:
            continue
    return out
