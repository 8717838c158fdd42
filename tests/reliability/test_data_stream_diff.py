"""Differential test of DATA received as it comes (`DataSection.feed_stream`, what the
submission session feeds from data_received) against the line-by-line reader the session
had before the chunked one: for any stream delivered in any split, the same (body,
fault), and the same bytes left for the next command (inbound SMTP smuggling: nothing
after a bad ending starts a transaction).

The reference and the streams are those of test_data_reader_diff.py; over a real
socket the session's whole transcripts are compared there.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from test_data_reader_diff import BAD_ENDINGS, SMUGGLED, cases, old_read_data, pieces_of

from relay.smtp.data import DataSection


def fed(pieces: list[bytes], line_limit: int, size_limit: int) -> tuple[Any, bytes]:
    section = DataSection(size_limit, line_limit)
    for i, piece in enumerate(pieces):
        end = section.feed_stream(piece)
        if end >= 0:
            parts, fault = section.result()
            body = None if parts is None else b"".join(parts)
            return (body, fault), piece[end:] + b"".join(pieces[i + 1:])
    return None, b""


async def by_lines(pieces: list[bytes], line_limit: int, size_limit: int) -> tuple[Any, bytes]:
    reader = asyncio.StreamReader(limit=line_limit)
    for piece in pieces:
        reader.feed_data(piece)
    reader.feed_eof()
    result = await old_read_data(reader, size_limit)
    leftover = await reader.read()
    if result is None:
        return None, b""
    parts, fault = result
    return (None if parts is None else b"".join(parts), fault), leftover


def differential(stream: bytes, cuts: list[int], line_limit: int, size_limit: int) -> None:
    pieces = pieces_of(stream, cuts)
    old = asyncio.run(by_lines(pieces, line_limit, size_limit))
    assert fed(pieces, line_limit, size_limit) == old, (stream, pieces, line_limit, size_limit)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
@example((b".\r\nQUIT\r\n", [], 10, 0))
@example((b".\r\nQUIT\r\n", [1, 2], 10, 0))
@example((b"..\r\n.\r\n", [1], 10, 0))
@example((b"a\r\n.\r\nNOOP\r\n", [2, 3, 4], 10, 0))
@example((b"\r\n.\r\n", [1], 10, 0))
@example((b"\r\r\n.\r\n", [1], 10, 0))
@example((b"x" * 11 + b"\r\n.\r\n", [11, 12], 10, 0))
@example((b"ab\n.\r\nMAIL FROM:<a@b.test>\r\n.\r\n", [], 10, 0))
@example((b"a\r\n.\r\n.\r\nQUIT\r\n", [1, 3, 4, 6], 10, 0))
def test_data_fed_as_received_matches_the_line_reader(
        case: tuple[bytes, list[int], int, int]) -> None:
    differential(*case)


def test_smuggling_endings_fed_byte_by_byte_and_in_one_piece() -> None:
    for ending in BAD_ENDINGS:
        stream = b"From: u@tenant.example\r\n\r\nbody" + ending + SMUGGLED + b"QUIT\r\n"
        for step in (1, 2, 3, 5, 64, 10_000):
            differential(stream, list(range(0, len(stream), step)), 1001, 40_000_000)
