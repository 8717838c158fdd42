"""The feedback listener's chunked DATA reader: the end of data, un-stuffing, the size bound."""

from __future__ import annotations

import asyncio

import pytest

from relay.feedback.dataread import read_report


async def read(stream: bytes, size_limit: int = 0, limit: int = 64
               ) -> tuple[bytes | None, bool, bytes]:
    """(content, too_big, what is left in the reader) for `stream` after DATA's CRLF."""
    reader = asyncio.StreamReader(limit=limit)
    reader.feed_data(stream)
    reader.feed_eof()
    content, too_big = await read_report(reader, size_limit, lambda: True)
    return content, too_big, await reader.read()


@pytest.mark.parametrize(("stream", "content"), [
    (b".\r\n", b""),
    (b"x\r\n.\r\n", b"x\r\n"),
    (b"..x\r\n..\r\n.\r\n", b".x\r\n.\r\n"),
    (b"a\n.\r\nb\r\n.\r\n", b"a\n.\r\nb\r\n"),           # bare LF then "." ends nothing
    (b"a\r\n.\n.\r\r\n.\r\n", b"a\r\n\n.\r\r\n"),         # nor CR CR LF
    (b"y" * 500 + b"\r\n" + b"z" * 300 + b"\r\n.\r\n", b"y" * 500 + b"\r\n" + b"z" * 300 + b"\r\n"),
])
async def test_content_ends_only_at_crlf_dot_crlf(stream: bytes, content: bytes) -> None:
    got, too_big, left = await read(stream + b"QUIT\r\n")
    assert (got, too_big, left) == (content, False, b"QUIT\r\n")


async def test_too_big_is_read_to_its_end_and_kept_nowhere() -> None:
    got, too_big, left = await read(b"x" * 60 + b"\r\n" + b"y" * 5000 + b"\r\n.\r\nNOOP\r\n",
                                    size_limit=1000)
    assert (got, too_big, left) == (b"", True, b"NOOP\r\n")
