"""The event log: one SES-shaped JSON object per line in state_dir/events.jsonl.

Events are appended and written once per turn of the event loop, not fsynced: they
report what the queue (which is synced) already decided. Readers (`tail()`: the admin
API's /api/events, `relay warmup status`, tests) read whole lines only.

A write that fails (disk full, quota, I/O error) never raises to the caller: the lines
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

import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from relay.clock import Clock, SystemClock
from relay.events.model import Event

log = logging.getLogger(__name__)

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()

MAX_UNWRITTEN = 32 << 20  # bytes of event lines kept in memory while writes fail
RETRY_INTERVAL = 1.0      # seconds between attempts while writes fail


class EventLog:
    def __init__(self, path: Path, clock: Clock | None = None, *,
                 max_unwritten: int = MAX_UNWRITTEN,
                 retry_interval: float = RETRY_INTERVAL) -> None:
        self.path = path
        self.clock: Clock = clock or SystemClock()
        self.max_unwritten = max_unwritten
        self.retry_interval = retry_interval
        path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: this class keeps the lines itself, so a failed write loses nothing
        # and a partial one is continued from the byte it stopped at.
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.subscribers: list[Callable[[Event], None]] = []
        # (sequence number, line) not yet written whole; the first may be partly written.
        self._lines: collections.deque[tuple[int, bytes]] = collections.deque()
        self._head_done = 0       # bytes of the first line already in the file
        self._unwritten_bytes = 0
        self.seq = 0              # lines emitted so far
        self.written_seq = 0      # every line up to this one is in the file (or dropped)
        self.write_failures = 0   # write(2) calls that failed
        self.dropped = 0          # events never written: memory bound reached
        self._failing_since: float | None = None
        self._dropped_at_failure = 0
        self._flush_soon = False
        self._retry: asyncio.Task[None] | None = None

    @property
    def unwritten(self) -> int:
        """Events waiting in memory for the disk."""
        return len(self._lines)

    def emit(self, events: Iterable[Event]) -> int | None:
        """Write `events` (within this loop turn) and hand them to the subscribers.
        Returns the sequence number of the last line, which `written_seq` reaches once
        they are all in the file; None when memory was full and one was dropped."""
        kept = True
        for ev in events:
            line = _enc.encode(ev) + b"\n"
            self.seq += 1
            if self._unwritten_bytes + len(line) <= self.max_unwritten:
                self._lines.append((self.seq, line))
                self._unwritten_bytes += len(line)
            else:
                self.dropped += 1
                kept = False
            for sub in self.subscribers:
                sub(ev)
        if self._lines and not self._flush_soon and self._failing_since is None:
            try:
                # One write(2) per turn of the event loop, not per call (two calls per
                # message): the lines reach the file a moment later. Journaled events
                # (Send, Delivery, Bounce...) stay staged in the queue until written, so
                # a crash in that moment replays them; the others (Reject, Subscription)
                # could be lost in it, as in a crash just before emit().
                asyncio.get_running_loop().call_soon(self._flush)
                self._flush_soon = True
            except RuntimeError:  # no loop (the CLI): now
                self.flush()
        return self.seq if kept else None

    def _flush(self) -> None:
        self._flush_soon = False
        self.flush()

    def flush(self) -> bool:
        """Write out what emit() kept; True when nothing is left unwritten. Never raises:
        on failure the lines stay for the next attempt (a retry is scheduled)."""
        if self._fd < 0 or not self._lines:
            return not self._lines
        try:
            self._write_out()
        except OSError as e:
            self.write_failures += 1
            self._failed(e)
            return False
        if self._failing_since is not None:
            self._recovered()
        return True

    def _write_out(self) -> None:
        first = self._lines[0][1][self._head_done:]
        data = first + b"".join(line for _, line in list(self._lines)[1:]) \
            if len(self._lines) > 1 else first
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, view[done:])
        finally:
            self._consumed(done)

    def _consumed(self, n: int) -> None:
        """`n` more bytes are in the file: drop the lines they complete."""
        while n > 0 and self._lines:
            seq, line = self._lines[0]
            rest = len(line) - self._head_done
            if n < rest:
                self._head_done += n
                return
            n -= rest
            self._lines.popleft()
            self._unwritten_bytes -= len(line)
            self._head_done = 0
            self.written_seq = seq
        if not self._lines:
            self.written_seq = self.seq  # dropped lines after the last written count too

    def _failed(self, e: OSError) -> None:
        if self._failing_since is None:
            self._failing_since = self.clock.monotonic()
            self._dropped_at_failure = self.dropped
            log.error("event log %s: cannot write (%s); keeping up to %d MB of events in "
                      "memory and retrying every %gs", self.path, e.strerror or e,
                      self.max_unwritten >> 20, self.retry_interval)
        # Without a loop (the CLI) the next emit() or close() tries again.
        if self._retry is None:
            with contextlib.suppress(RuntimeError):
                self._retry = asyncio.get_running_loop().create_task(
                    self._retry_loop(), name="event-log-retry")

    async def _retry_loop(self) -> None:
        try:
            while self._lines and self._fd >= 0:
                await self.clock.sleep(self.retry_interval)
                self.flush()
        finally:
            self._retry = None

    def _recovered(self) -> None:
        assert self._failing_since is not None
        dropped = self.dropped - self._dropped_at_failure
        log.warning("event log %s: writing again after %.0fs%s", self.path,
                    self.clock.monotonic() - self._failing_since,
                    f"; {dropped} events could not be kept in memory (those that report "
                    "queue state are published again at the next start)" if dropped else "")
        self._failing_since = None

    def close(self) -> None:
        if self._fd < 0:
            return
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if not self.flush():
            log.error("event log %s: %d events could not be written before the stop (those "
                      "that report queue state are published again at the next start)",
                      self.path, len(self._lines))
        os.close(self._fd)
        self._fd = -1


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
