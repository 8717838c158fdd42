"""The event log: one SES-shaped JSON object per line in state_dir/events.jsonl.

Events are appended and written once per turn of the event loop, not fsynced: they
report what the queue (which is synced) already decided. Readers (`tail()`: the admin
API's /api/events, `relay warmup status`, tests) read whole lines only.

The writing is relay/events/linefile.py's, shared with the file event destinations. A
write that fails (disk full, quota, I/O error) never raises to the caller: the lines
not yet written stay in memory, up to `max_unwritten` bytes (events beyond it are
dropped and counted), and are written again every `retry_interval` until the disk takes
them, as the queue answers 452 and keeps serving when its disk is full. A partly written
line is completed, never repeated or torn. One log line when writing stops and one when
it resumes; the counters (`write_failures`, `dropped`, `unwritten`) are metrics
(relay/admin/metrics.py). Events that report queue state are also staged in the queue
(relay/events/journal.py), which keeps them until this log says they are written
(`written_seq`), so a dropped one is published again at the next start.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from relay.clock import Clock
from relay.events.linefile import MAX_UNWRITTEN, RETRY_INTERVAL, LineFile
from relay.events.model import Event, publishing

log = logging.getLogger(__name__)

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


class EventLog(LineFile):
    what = "event log"
    dropped_note = (" (those that report queue state are published again at the next "
                    "start)")

    def __init__(self, path: Path, clock: Clock | None = None, *,
                 max_unwritten: int = MAX_UNWRITTEN,
                 retry_interval: float = RETRY_INTERVAL,
                 subscribers: Iterable[Callable[[Event], None]] = ()) -> None:
        super().__init__(path, clock, max_unwritten=max_unwritten,
                         retry_interval=retry_interval)
        # Given every event as it is written (the webhook outbox, metrics).
        self.subscribers: list[Callable[[Event], None]] = list(subscribers)

    def emit(self, events: Iterable[Event]) -> int | None:
        """Write `events` (within this loop turn) and hand them to the subscribers.
        Returns the sequence number of the last line, which `written_seq` reaches once
        they are all in the file; None when memory was full and one was dropped."""
        kept = True
        for ev in events:
            data = _enc.encode(ev)
            kept = self.append(data + b"\n") and kept
            if self.subscribers:
                # The subscribers that write the event (history, destinations) take
                # these bytes through `model.encoded` instead of encoding it again.
                publishing(ev, data)
                try:
                    for sub in self.subscribers:
                        sub(ev)
                finally:
                    publishing(None)
        # Journaled events (Send, Delivery, Bounce...) stay staged in the queue until
        # written, so a crash before the write replays them; the others (Reject,
        # Subscription) could be lost in it, as in a crash just before emit().
        self.schedule()
        return self.seq if kept else None


def tail(path: Path, max_bytes: int | None = None, *,
         containing: bytes = b"") -> list[dict[str, Any]]:
    """The events at the end of a log, oldest first: those in its last `max_bytes` (the
    whole file when None), so a reader's time and memory do not grow with the log. A
    line cut by that bound or torn by a write in progress, and any line that is not a
    JSON object, is skipped; with `containing`, so is every line without those bytes
    (checked before decoding: cheap when looking for a few events among many). A missing
    log has no events; one that cannot be read raises OSError."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = 0 if max_bytes is None else max(0, size - max_bytes)
            # From the byte before the window: it tells whether the window's first line
            # is whole (it follows a line end) or the cut end of a longer one.
            f.seek(max(0, start - 1))
            data = f.read(size - start + (start > 0))
    except FileNotFoundError:
        return []
    if start > 0:
        data = data[data.find(b"\n") + 1:] if b"\n" in data else b""
    out: list[dict[str, Any]] = []
    for line in data.split(b"\n"):
        if not line.strip() or containing not in line:
            continue
        try:
            event = _dec.decode(line)
        except msgspec.DecodeError:
            continue
        if isinstance(event, dict):
            out.append(event)
    return out


def read_events(path: Path) -> list[dict[str, object]]:
    """All complete events in a log (a torn last line is ignored)."""
    return list(tail(path))
