"""PURE: one DATA section checked and dot-unstuffed, fed in pieces split anywhere.

`DataSection` is the sans-I/O half of reading DATA: the chunks read go in, and it
says how much to read next (the rest of an end marker split across chunks, or up to
the next one), finds the end of data without ever consuming past it, and feeds the
rest to a `DataScanner`. `DataScanner` gives the verdict of a line-by-line reader
(RFC 5321 §4.5.3.1.6 line limit, the message size limit, bare CR or LF refused:
§2.3.8, against SMTP smuggling) with C-speed bytes operations on whole chunks. The
session feeds it as bytes arrive (`DataSection.feed_stream`); this module does no
I/O.
"""

from __future__ import annotations

import functools
import re

from relay.smtp import replies as R

EOD = b"\r\n.\r\n"  # end of data (RFC 5321 §4.1.1.4); DATA's own CRLF may be its first two


@functools.lru_cache(maxsize=8)
def long_line(line_limit: int) -> re.Pattern[bytes]:
    # Between two LFs of CRLF-only text: a line whose content is over line_limit bytes.
    return re.compile(rb"\n[^\n]{%d}" % (line_limit + 2))


class DataScanner:
    """Checks and dot-unstuffs one DATA section, fed in pieces split anywhere.

    The verdict is the one of a line-by-line reader (lines end at CRLF; the first faulty
    line decides, and within one line: longer than `line_limit` bytes before its CRLF →
    LINE_TOO_LONG, else ending past byte `size_limit` → MESSAGE_TOO_BIG, else a CR or LF
    not part of a CRLF → BARE_NEWLINE). Clean pieces are checked with C-speed bytes
    operations and kept unstuffed ('.' removed at the start of every line); once a fault
    is certain nothing more is kept and the remaining lines up to the decisive one are
    walked one by one.
    """

    __slots__ = ("bare", "cr", "doomed", "fault", "line_limit", "parts", "run", "size",
                 "size_limit")

    def __init__(self, size_limit: int, line_limit: int) -> None:
        self.size_limit = size_limit  # 0: no limit
        self.line_limit = line_limit
        self.parts: list[bytes] = []
        self.fault: R.Reply | None = None
        self.doomed = False  # some fault is certain (its kind not yet): keep nothing
        self.size = 0  # bytes fed
        self.run = 0  # bytes fed since the start of the current line
        self.cr = False  # the last byte fed is a CR (maybe half of a CRLF)
        self.bare = False  # the current line has a bare CR or LF

    def feed(self, data: bytes) -> None:
        if self.fault is not None or not data:
            return
        if not self.doomed:
            if self._feed_clean(data):
                return
            self.doomed = True
            self.parts = []
        self._feed_lines(data)

    def result(self) -> tuple[list[bytes] | None, R.Reply | None]:
        """At the end of data (everything fed ends with CRLF, or nothing was fed)."""
        if self.fault is not None or self.doomed:
            return None, self.fault or R.INTERNAL_ERROR  # (doomed: its line has ended)
        return self.parts, None

    def _feed_clean(self, data: bytes) -> bool:
        """Keep `data` if it cannot make the message faulty; False (nothing done) if not."""
        n = len(data)
        size = self.size + n
        if self.size_limit and size > self.size_limit:
            return False
        cr_in = self.cr
        cr_out = data[-1] == 13  # judged with the next piece
        crlf = data.count(b"\r\n")
        if cr_in:
            if data[0] != 10:
                return False
            crlf += 1
        if data.count(b"\n") != crlf or data.count(b"\r") + cr_in - cr_out != crlf:
            return False  # a bare CR or LF
        limit = self.line_limit
        first = data.find(b"\n")
        if first < 0:
            run = self.run + n
        else:
            if self.run + first - 1 > limit:  # the line going on from the last piece
                return False
            last = data.rfind(b"\n")
            if last - first > limit + 2 and long_line(limit).search(data, first, last + 1):
                return False
            run = n - last - 1
        if run - cr_out > limit:
            return False
        if self.run == 0 and data[0] == 46:  # '.' starting a line
            data = data[1:]
        elif cr_in and data[1:2] == b".":
            data = b"\n" + data[2:]
        self.parts.append(data.replace(b"\r\n.", b"\r\n"))
        self.size, self.run, self.cr = size, run, cr_out
        return True

    def _feed_lines(self, data: bytes) -> None:
        """Line by line, until the fault is known."""
        limit = self.line_limit
        i, n = 0, len(data)
        if self.cr:
            self.cr = False
            if data[0] == 10:
                self._end_line(self.run - 1, self.size + 1)
                i = 1
            else:
                self.bare = True
        while self.fault is None and i < n:
            j = data.find(b"\r\n", i)
            if j < 0:
                cr_out = data[-1] == 13
                end = n - cr_out
                if data.find(b"\n", i, end) >= 0 or data.find(b"\r", i, end) >= 0:
                    self.bare = True
                self.run += n - i
                self.cr = cr_out
                if self.run - cr_out > limit:
                    self.fault = R.LINE_TOO_LONG
                break
            if data.find(b"\n", i, j) >= 0 or data.find(b"\r", i, j) >= 0:
                self.bare = True
            self._end_line(self.run + j - i, self.size + j + 2)
            i = j + 2
        self.size += n

    def _end_line(self, length: int, end: int) -> None:
        if length > self.line_limit:
            self.fault = R.LINE_TOO_LONG
        elif self.size_limit and end > self.size_limit:
            self.fault = R.MESSAGE_TOO_BIG
        elif self.bare:
            self.fault = R.BARE_NEWLINE
        self.run = 0
        self.bare = False


def eod_prefix(tail: bytes) -> int:
    """How many bytes of EOD `tail` ends with (0 to 4)."""
    if tail[-1:] not in (b"\r", b"\n", b"."):
        return 0
    for k in (4, 3, 2, 1):
        if tail.endswith(EOD[:k]):
            return k
    return 0


class DataSection:
    """One DATA section, from the bytes after DATA's own CRLF to the lone '.' line.

    Only CRLF '.' CRLF ends the data ('.' CRLF as the first line too): the data ends at
    the first EOD in b"\\r\\n" + stream. `need` is how many bytes to read exactly next
    while what was fed ends with the start of an EOD (at first: DATA's own CRLF), which
    cannot overshoot it (KMP); 0 means any chunk that ends at or before the next EOD
    (`readuntil(EOD)`, or what a limit lets through). `feed(chunk)` is True at the end
    of data; `result()` is then (parts, None) or (None, fault).
    """

    __slots__ = ("held", "matched", "scanner")

    def __init__(self, size_limit: int, line_limit: int) -> None:
        self.scanner = DataScanner(size_limit, line_limit)
        self.matched = 2  # how many bytes of EOD what was fed so far ends with
        self.held = b""  # bytes fed but not scanned: the '.' or '.\r' of a possible EOD

    @property
    def need(self) -> int:
        return len(EOD) - self.matched if self.matched else 0

    def feed(self, chunk: bytes) -> bool:
        matched, held = self.matched, self.held
        tail = EOD[:matched] + chunk[-len(EOD):]
        data = held + chunk if held else chunk
        if tail.endswith(EOD):
            self.scanner.feed(data[:-3])  # all but the '.' CRLF
            return True
        self.matched = matched = eod_prefix(tail)
        keep = matched - 2
        if keep > 0:
            self.held = data[-keep:]
            data = data[:-keep]
        else:
            self.held = b""
        self.scanner.feed(data)
        return False

    def feed_stream(self, data: bytes) -> int:
        """Feed bytes as they were received, split anywhere, which may run past the end
        of data (a client pipelining its next commands): the pieces `feed` is given are
        cut as a reader following `need` would cut them (never past an EOD). Returns
        where the data ended in `data` (what follows is the client's next commands), or
        -1 when all of it was data."""
        pos, n = 0, len(data)
        while pos < n:
            need = self.need
            if need:  # the rest of a possible EOD, or less: the bytes that decide it
                end = min(pos + need, n)
            else:  # up to the next EOD (none spans the start: nothing of it was fed)
                k = data.find(EOD, pos)
                end = n if k < 0 else k + len(EOD)
            if self.feed(data[pos:end] if pos or end < n else data):
                return end
            pos = end
        return -1

    def result(self) -> tuple[list[bytes] | None, R.Reply | None]:
        return self.scanner.result()
