"""An append-only JSON-lines file that a full disk cannot break: a file event destination.

`write(line)` never raises. The bytes not yet in the file stay in memory, up to
`max_unwritten` (lines beyond it are dropped and counted), and go out with the next
write, or the next `retry()`, once the disk takes them; a line cut short by a full disk
is continued from the byte it stopped at, never repeated or torn (the file is opened
unbuffered, so this class alone knows what reached it). One log line when writing stops
and one when it resumes; `write_failures` and `dropped` are metrics.

The event log itself (relay/events/log.py) keeps its own lines this way, with the queue's
journal behind it; a file destination is a copy for the operator, so dropping past the
bound (and saying so) is the right trade against unbounded memory.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("relay.events")

MAX_UNWRITTEN = 8 << 20  # bytes kept in memory per file while its writes fail


class AppendFile:
    def __init__(self, path: Path, *, max_unwritten: int = MAX_UNWRITTEN) -> None:
        self.path = path
        self.max_unwritten = max_unwritten
        self._fd: int | None = None
        self._pending = bytearray()  # bytes not yet in the file, whole lines but the first
        self._failing = False
        self.write_failures = 0  # write or open calls that failed
        self.dropped = 0         # lines given up while the bound was reached

    @property
    def unwritten(self) -> int:
        return len(self._pending)

    def write(self, line: bytes) -> None:
        """Append `line` (one JSON object, no newline) and write out what is pending."""
        if self._pending and len(self._pending) + len(line) + 1 > self.max_unwritten:
            self.dropped += 1
        else:
            self._pending += line
            self._pending += b"\n"
        self.retry()

    def retry(self) -> bool:
        """Write what is pending; whether everything is now in the file."""
        try:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                                   | os.O_CLOEXEC, 0o644)
            while self._pending:
                n = os.write(self._fd, self._pending)
                del self._pending[:n]
        except OSError as e:
            self.write_failures += 1
            if not self._failing:
                self._failing = True
                log.warning("events: cannot write event destination file %s (%s); keeping "
                            "up to %d bytes of events in memory until it can",
                            self.path, e.strerror or e, self.max_unwritten)
            return False
        if self._failing:
            self._failing = False
            log.warning("events: event destination file %s is written again (%d events "
                        "dropped while it could not be)", self.path, self.dropped)
        return True

    def close(self) -> None:
        self.retry()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
