"""Follows a JSON-lines file like `tail -f`: the whole lines appended since the last read.

`LogFollower.read()` is a blocking read meant for a thread (the admin API's event stream
calls it through asyncio.to_thread): at most `max_read` bytes per call, so one call's
time and memory are bounded however much was appended. A file that shrank or was
replaced (another inode: rotated) is read again from its start; a missing file has no
lines until it appears. A line longer than `max_read` is skipped whole rather than held.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_READ = 1 << 20


class LogFollower:
    def __init__(self, path: Path, *, max_read: int = MAX_READ) -> None:
        self.path = path
        self.max_read = max_read
        self.offset = 0
        self._inode: int | None = None
        self._partial = b""
        self._skipping = False      # inside a line too long to keep: drop up to its end
        self.skipped = 0            # lines dropped for their length
        self.behind = False         # the last read stopped at max_read: more is waiting

    def seek_end(self) -> None:
        """Start at the file's current end (only lines appended from now on)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.offset, self._inode = 0, None
        else:
            self.offset, self._inode = st.st_size, st.st_ino
        self._partial, self._skipping = b"", False

    def read(self) -> list[bytes]:
        """The whole lines appended since the last read (without their line ends)."""
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != self._inode or st.st_size < self.offset:
                    # Rotated or truncated: the new content from its start.
                    self.offset, self._inode = 0, st.st_ino
                    self._partial, self._skipping = b"", False
                if st.st_size <= self.offset:
                    self.behind = False
                    return []
                f.seek(self.offset)
                data = f.read(min(self.max_read, st.st_size - self.offset))
                self.behind = self.offset + len(data) < st.st_size
        except FileNotFoundError:
            self.offset, self._inode, self._partial = 0, None, b""
            self.behind = False
            return []
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if self._skipping and lines:
            lines.pop(0)            # the end of the overlong line
            self._skipping = False
        if len(self._partial) > self.max_read:
            self._partial, self._skipping = b"", True
            self.skipped += 1
        return [line for line in lines if line.strip()]
