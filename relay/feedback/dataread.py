"""The DATA section of a feedback report, read in chunks (not line by line on the loop).

aiosmtpd reads DATA one line at a time and un-stuffs the lines in a Python loop: a 4 MB
report of 1.2 million short lines held the event loop for seconds. `read_report` reads
with `readuntil(CRLF "." CRLF)` (C-speed search, chunks of the reader's buffer) and
un-stuffs with one `bytes.replace`. Like aiosmtpd, and unlike the submission listener
(relay/smtp/session.py), it is lenient about bare CR or LF inside lines: a report is
never relayed, and a DSN refused for its line endings would be lost feedback. Only
CRLF "." CRLF ends the data, so one DATA can never become two messages. At most
`size_limit` bytes are kept; a longer section is read to its end and reported too big.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

_EOD = b"\r\n.\r\n"  # end of data; the DATA command's own CRLF may be its first two bytes


def _eod_prefix(tail: bytes) -> int:
    """How many bytes of _EOD `tail` ends with (0 to 4)."""
    for k in (4, 3, 2, 1):
        if tail.endswith(_EOD[:k]):
            return k
    return 0


async def read_report(reader: asyncio.StreamReader, size_limit: int,
                      progress: Callable[[], bool]) -> tuple[bytes | None, bool]:
    """(content, too_big): the un-stuffed content (ending with CRLF, or empty), or None
    if `progress()` (called after every chunk) says the connection is gone. Raises
    IncompleteReadError at EOF. Never reads past the end of data: while what was read
    ends with the start of _EOD, only the rest of an _EOD is read (readexactly)."""
    parts: list[bytes] = []
    size = 0
    too_big = False
    matched = 2  # bytes of _EOD the stream read so far ends with (DATA's CRLF at first)
    while True:
        if matched:
            chunk = await reader.readexactly(len(_EOD) - matched)
        else:
            try:
                chunk = await reader.readuntil(_EOD)
            except asyncio.LimitOverrunError as e:  # no _EOD in the buffer yet
                chunk = await reader.read(e.consumed)
        if not progress():
            return None, False
        size += len(chunk)
        if size_limit and size > size_limit + 3:  # (+ the final "." CRLF)
            too_big = True
            parts.clear()
        elif not too_big:
            parts.append(chunk)
        tail = _EOD[:matched] + chunk[-len(_EOD):]
        if tail.endswith(_EOD):
            break
        matched = _eod_prefix(tail)
    if too_big:
        return b"", True
    data = b"".join(parts)[:-3]  # all but the final "." CRLF
    parts.clear()
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n"), False
