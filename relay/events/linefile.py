"""An append-only JSON-lines file that a full disk cannot break: the writer under the event
log (relay/events/log.py) and under every file event destination.

`append(line)` never raises and writes within the turn of the event loop (one write(2)
per turn, not per line; at once without a loop, as in the CLI). A write that fails (disk
full, quota, I/O error) keeps the lines not yet written in memory, up to `max_unwritten`
bytes (lines beyond it are dropped and counted), and writes them again every
`retry_interval` on the injected clock until the disk takes them. A partly written line
is completed from the byte it stopped at, never repeated or torn (the file is opened
unbuffered, so this class alone knows what reached it). One log line when writing stops
and one when it resumes; `write_failures`, `dropped` and `unwritten` are metrics.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from pathlib import Path

from relay.clock import Clock, SystemClock

log = logging.getLogger("relay.events")

MAX_UNWRITTEN = 32 << 20  # bytes of lines kept in memory while writes fail
RETRY_INTERVAL = 1.0      # seconds between attempts while writes fail


class LineFile:
    # How the log lines name this file, and what they add about lines that were dropped.
    what = "event destination file"
    dropped_note = ""

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
        # (sequence number, line) not yet written whole; the first may be partly written.
        self._lines: collections.deque[tuple[int, bytes]] = collections.deque()
        self._head_done = 0       # bytes of the first line already in the file
        self._unwritten_bytes = 0
        self.seq = 0              # lines appended so far
        self.written_seq = 0      # every line up to this one is in the file (or dropped)
        self.write_failures = 0   # write(2) calls that failed
        self.dropped = 0          # lines never written: memory bound reached
        self._failing_since: float | None = None
        self._dropped_at_failure = 0
        self._flush_soon = False
        self._retry: asyncio.Task[None] | None = None

    @property
    def unwritten(self) -> int:
        """Lines waiting in memory for the disk."""
        return len(self._lines)

    def append(self, line: bytes) -> bool:
        """Keep `line` (ending in a newline) for the next write; False when memory was
        full and it was dropped. Call schedule() after a batch of appends."""
        self.seq += 1
        if self._unwritten_bytes + len(line) <= self.max_unwritten:
            self._lines.append((self.seq, line))
            self._unwritten_bytes += len(line)
            return True
        self.dropped += 1
        return False

    def schedule(self) -> None:
        """Write what append() kept within this turn of the event loop (now without one)."""
        if not self._lines or self._flush_soon:
            return
        if self._failing_since is not None and self._retry is not None:
            return  # the retry loop writes them
        try:
            # One write(2) per turn of the event loop, not per line: the lines reach the
            # file a moment later.
            asyncio.get_running_loop().call_soon(self._flush)
            self._flush_soon = True
        except RuntimeError:  # no loop (the CLI): now, also after a failed write
            self.flush()

    def write(self, line: bytes) -> None:
        """One JSON object (no newline) appended and scheduled."""
        self.append(line + b"\n")
        self.schedule()

    def _flush(self) -> None:
        self._flush_soon = False
        self.flush()

    def flush(self) -> bool:
        """Write out what append() kept; True when nothing is left unwritten. Never raises:
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
            log.error("%s %s: cannot write (%s); keeping up to %d MB of events in "
                      "memory and retrying every %gs", self.what, self.path, e.strerror or e,
                      self.max_unwritten >> 20, self.retry_interval)
        # Without a loop (the CLI) the next append or close() tries again.
        if self._retry is None:
            with contextlib.suppress(RuntimeError):
                self._retry = asyncio.get_running_loop().create_task(
                    self._retry_loop(), name="event-file-retry")

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
        log.warning("%s %s: writing again after %.0fs%s", self.what, self.path,
                    self.clock.monotonic() - self._failing_since,
                    f"; {dropped} events could not be kept in memory{self.dropped_note}"
                    if dropped else "")
        self._failing_since = None

    def close(self) -> None:
        if self._fd < 0:
            return
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if not self.flush():
            log.error("%s %s: %d events could not be written before the stop%s",
                      self.what, self.path, len(self._lines), self.dropped_note)
        os.close(self._fd)
        self._fd = -1
