"""CommandLines cuts command lines as the stream reader the command loop used before did:
`readuntil(b"\\n")` with a limit, an over-long line read to its end and reported once.
Differential: any stream, fed in any split, gives the same lines, the same over-long
reports and the same bytes left over as that reader."""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.smtp.commandlines import CommandLines

OVERLONG = None  # an over-long line, in both results

Result = tuple[list[bytes | None], bytes | None]


async def _reference(pieces: list[bytes], limit: int) -> Result:
    """The old command loop's reading: lines, and the unfinished rest (None: in an
    over-long line)."""
    reader = asyncio.StreamReader(limit=limit)

    async def feed() -> None:
        for piece in pieces:
            reader.feed_data(piece)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    lines: list[bytes | None] = []
    rest: bytes | None = b""
    while True:
        try:
            lines.append(await reader.readuntil(b"\n"))
        except asyncio.LimitOverrunError as e:
            await reader.read(e.consumed)
            while True:
                try:
                    await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError as more:
                    await reader.read(more.consumed)
                    continue
                except asyncio.IncompleteReadError:
                    rest = None
                    break
                lines.append(OVERLONG)
                break
            if rest is None:
                break
        except asyncio.IncompleteReadError as e:
            rest = e.partial
            break
    await feeder
    return lines, rest


def _cut(pieces: list[bytes], limit: int) -> Result:
    lines = CommandLines(limit)
    out: list[bytes | None] = []
    for piece in pieces:
        lines.feed(piece)
        while (line := lines.next_line()) is not None:
            out.append(OVERLONG if lines.overlong else line)
    return out, None if lines.draining else lines.take()


def _pieces(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(points) if b > a]


TOKENS = [b"\r\n", b"\n", b"\r", b"NOOP\r\n", b"MAIL FROM:<a@b.test>\r\n", b"\r\r\n", b"x"]


@st.composite
def cases(draw: st.DrawFn) -> tuple[bytes, list[int], int]:
    limit = draw(st.sampled_from([4, 9, 16, 1001]))
    token = st.one_of(st.sampled_from(TOKENS), st.binary(max_size=5),
                      st.integers(0, limit + 3).map(lambda k: b"y" * k))
    stream = b"".join(draw(st.lists(token, max_size=25)))
    return stream, draw(st.lists(st.integers(0, 10_000), max_size=10)), limit


@settings(max_examples=600, deadline=None)
@given(cases())
@example((b"x" * 12 + b"\nNOOP\r\n", [], 9))
@example((b"x" * 12 + b"\nNOOP\r\n", [5, 11], 9))
@example((b"x" * 10 + b"\n", [10], 9))
@example((b"x" * 9 + b"\n", [], 9))
@example((b"abc", [1, 2], 9))
def test_lines_match_the_stream_reader(case: tuple[bytes, list[int], int]) -> None:
    stream, cuts, limit = case
    pieces = _pieces(stream, cuts)
    assert _cut(pieces, limit) == asyncio.run(_reference(pieces, limit)), (pieces, limit)


def test_an_endless_line_is_never_kept_whole() -> None:
    """A client that sends no LF (or never stops one line) costs at most limit + a read."""
    lines = CommandLines(16)
    for _ in range(1000):
        lines.feed(b"z" * 7)
        assert lines.next_line() is None
        assert len(lines) <= 16 + 7
    lines.feed(b"z\r\nNOOP\r\n")
    assert lines.next_line() is not None and lines.overlong
    assert lines.next_line() == b"NOOP\r\n" and not lines.overlong
