"""The event log: one SES-shaped JSON object per line in state_dir/events.jsonl.

Events are appended and flushed once per turn of the event loop, not fsynced: they
report what the queue (which is synced) already decided. Readers (`relay events tail`,
tests) read whole lines only.
"""

from __future__ import annotations

import asyncio
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
        self._flush_soon = False

    def emit(self, events: Iterable[Event]) -> None:
        wrote = False
        for ev in events:
            self._fh.write(_enc.encode(ev) + b"\n")
            wrote = True
            for sub in self.subscribers:
                sub(ev)
        if wrote and not self._flush_soon:
            try:
                # One write(2) per turn of the event loop, not per call (two calls per
                # message): the lines reach the file a moment later. Journaled events
                # (Send, Delivery, Bounce...) stay staged in the queue for the journal's
                # grace, so a crash in that moment replays them; the others (Reject,
                # Subscription) could be lost in it, as in a crash just before emit().
                asyncio.get_running_loop().call_soon(self._flush)
                self._flush_soon = True
            except RuntimeError:  # no loop (the CLI): now
                self._fh.flush()

    def _flush(self) -> None:
        self._flush_soon = False
        self.flush()

    def flush(self) -> None:
        """Write out what emit() buffered (it does so itself within a loop turn)."""
        if not self._fh.closed:
            self._fh.flush()

    def close(self) -> None:
        self.flush()
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
