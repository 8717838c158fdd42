"""PURE: command lines cut out of the bytes a client sends, fed in pieces split anywhere.

`CommandLines` is the sans-I/O half of the submission session's command loop: the bytes
read go in (`feed`), complete lines come out (`next_line`), exactly as asyncio's
`StreamReader.readuntil(b"\\n")` with a reader limit of `limit` would cut them: a line
ends at the first LF. A line whose LF lies more than `limit` bytes in, or a run of more
than `limit` bytes with no LF yet, is dropped as it comes (never kept whole: memory stays
under `limit` + one read) up to and including its LF, which is then returned on its own
with `overlong` set, so the caller answers "command line too long" once, when the line
has ended. Whether a line ends in CRLF or a bare LF is the caller's to judge. No I/O.
"""

from __future__ import annotations


class CommandLines:
    __slots__ = ("_buf", "_pos", "draining", "limit", "overlong")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = b""
        self._pos = 0  # where the next line starts in _buf
        self.draining = False  # inside an over-long line: dropping it up to its LF
        self.overlong = False  # the line next_line() returned last ended an over-long one

    def feed(self, data: bytes) -> None:
        if self._pos < len(self._buf):
            self._buf = self._buf[self._pos:] + data
        else:
            self._buf = data
        self._pos = 0

    def next_line(self) -> bytes | None:
        """The next complete line with its LF, or None until more is fed."""
        buf, pos = self._buf, self._pos
        end = buf.find(b"\n", pos)
        if end < 0:
            if len(buf) - pos > self.limit:  # readuntil: no LF, and over the limit
                self._buf, self._pos = b"", 0
                self.draining = True
            return None
        if end - pos > self.limit:  # readuntil: an LF, but past the limit
            self.draining = True
            pos = end
        self._pos = end + 1
        self.overlong = self.draining
        self.draining = False
        return buf[pos:end + 1]

    def take(self) -> bytes:
        """Everything fed and not returned as a line yet; the buffer is left empty."""
        rest = self._buf[self._pos:]
        self._buf, self._pos = b"", 0
        return rest

    def __len__(self) -> int:
        """Bytes fed and not returned as a line yet."""
        return len(self._buf) - self._pos
