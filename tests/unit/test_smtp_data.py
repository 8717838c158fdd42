"""relay.smtp.data: the DATA section checked and dot-unstuffed from chunks split anywhere.

The reference is a line reader written for the test: lines end at CRLF, the first faulty
line decides (too long, then past the size limit, then a bare CR or LF), a leading '.'
is removed. `DataScanner` must agree with it for every split of the stream, and
`DataSection` must stop exactly after the lone '.' line wherever the chunks cut the
end marker, leaving the next command unread.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.smtp import replies as R
from relay.smtp.data import EOD, DataScanner, DataSection, eod_prefix

Verdict = tuple[bytes | None, R.Reply | None]


def reference(text: bytes, size_limit: int, line_limit: int) -> Verdict:
    """The verdict of a line-by-line reader on `text` (CRLF-terminated, without '.')."""
    out: list[bytes] = []
    end = 0
    for line in text.split(b"\r\n")[:-1]:
        end += len(line) + 2
        if len(line) > line_limit:
            return None, R.LINE_TOO_LONG
        if size_limit and end > size_limit:
            return None, R.MESSAGE_TOO_BIG
        if b"\r" in line or b"\n" in line:
            return None, R.BARE_NEWLINE
        out.append((line[1:] if line.startswith(b".") else line) + b"\r\n")
    return b"".join(out), None


def scan(pieces: list[bytes], size_limit: int, line_limit: int) -> Verdict:
    scanner = DataScanner(size_limit, line_limit)
    for piece in pieces:
        scanner.feed(piece)
    parts, fault = scanner.result()
    return (None if parts is None else b"".join(parts)), fault


def splits(text: bytes) -> list[list[bytes]]:
    """Whole, every two-piece split, and byte by byte."""
    return [[text], *([text[:k], text[k:]] for k in range(1, len(text))),
            [text[i:i + 1] for i in range(len(text))]]


CASES = [
    # (name, text, size_limit, line_limit, verdict)
    ("plain lines", b"a\r\nbc\r\n", 0, 10, (b"a\r\nbc\r\n", None)),
    ("empty message", b"", 0, 10, (b"", None)),
    ("dot-stuffed lines lose their first dot", b"..x\r\n.\r\n..\r\n", 0, 10,
     (b".x\r\n\r\n.\r\n", None)),
    ("a dot inside a line stays", b"a.b\r\n", 0, 10, (b"a.b\r\n", None)),
    ("bare LF", b"a\nb\r\n", 0, 10, (None, R.BARE_NEWLINE)),
    ("bare CR", b"a\rb\r\n", 0, 10, (None, R.BARE_NEWLINE)),
    ("CR CR LF", b"ab\r\r\n", 0, 10, (None, R.BARE_NEWLINE)),
    ("LF then CRLF: a smuggled end marker", b"a\n.\r\nMAIL FROM:<x@y.z>\r\n", 0, 40,
     (None, R.BARE_NEWLINE)),
    ("a line at the limit", b"x" * 10 + b"\r\n", 0, 10, (b"x" * 10 + b"\r\n", None)),
    ("a line over the limit", b"x" * 11 + b"\r\n", 0, 10, (None, R.LINE_TOO_LONG)),
    ("too long decides before a later bare LF", b"x" * 11 + b"\r\na\nb\r\n", 0, 10,
     (None, R.LINE_TOO_LONG)),
    ("bare LF on an earlier line decides", b"a\nb\r\n" + b"x" * 11 + b"\r\n", 0, 10,
     (None, R.BARE_NEWLINE)),
    ("within one line, too long beats a bare CR", b"\r" + b"x" * 11 + b"\r\n", 0, 10,
     (None, R.LINE_TOO_LONG)),
    ("exactly the size limit", b"abcd\r\n", 6, 10, (b"abcd\r\n", None)),
    ("one byte over the size limit", b"abcde\r\n", 6, 10, (None, R.MESSAGE_TOO_BIG)),
    ("size counts the stuffed dot", b"..abc\r\n", 6, 10, (None, R.MESSAGE_TOO_BIG)),
    ("too big beats a bare LF on the same line", b"ab\ncdefg\r\n", 6, 10,
     (None, R.MESSAGE_TOO_BIG)),
]


@pytest.mark.parametrize(("text", "size_limit", "line_limit", "verdict"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_scanner_table_in_every_split(text: bytes, size_limit: int, line_limit: int,
                                      verdict: Verdict) -> None:
    assert reference(text, size_limit, line_limit) == verdict  # the table is the reference's
    for pieces in splits(text):
        assert scan(pieces, size_limit, line_limit) == verdict, pieces


lines = st.lists(st.binary(max_size=14).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
                 | st.sampled_from([b".", b"..", b".x", b"a\nb", b"a\rb", b"\r", b"x" * 13]),
                 max_size=8)


@settings(max_examples=300, deadline=None)
@given(lines, st.integers(0, 60), st.integers(1, 12), st.data())
def test_scanner_agrees_with_the_line_reader(body: list[bytes], size_limit: int,
                                             line_limit: int, data: st.DataObject) -> None:
    text = b"".join(line + b"\r\n" for line in body)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=6)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    pieces = [p for p in pieces if p]
    assert scan(pieces, size_limit, line_limit) == reference(text, size_limit, line_limit)


# --- the end of data --------------------------------------------------------------------

def read_section(stream: bytes, cuts: list[int], size_limit: int = 0,
                 line_limit: int = 100) -> tuple[Verdict, int]:
    """Drive a DataSection as read_data_section does: `need` bytes exactly, else up to the
    next end marker but never past the next cut (data not yet arrived). Returns the
    verdict and how many bytes were consumed."""
    section = DataSection(size_limit, line_limit)
    pos = 0
    while True:
        need = section.need
        if need:
            chunk = stream[pos:pos + need]
        else:
            stop = next((c for c in cuts if c > pos), len(stream))
            found = stream.find(EOD, pos, stop)
            chunk = stream[pos:found + len(EOD) if found >= 0 else stop]
        assert chunk, "read past the end of the stream"
        pos += len(chunk)
        if section.feed(chunk):
            parts, fault = section.result()
            return ((None if parts is None else b"".join(parts)), fault), pos


BODIES = [b"", b"a\r\n", b"..\r\n...\r\n", b"x\r\n.x\r\n\r\n", b"\r\n\r\n", b"a.\r\n.\r\r\n"]
NEXT = b"QUIT\r\n"


@pytest.mark.parametrize("body", BODIES)
def test_the_end_marker_split_across_every_chunk_boundary(body: bytes) -> None:
    stream = body + b".\r\n" + NEXT  # what follows DATA's own CRLF
    expected = reference(body, 0, 100)
    cut_sets = [[k] for k in range(1, len(stream))]
    cut_sets.append(list(range(1, len(stream))))  # byte by byte
    for cuts in cut_sets:
        verdict, consumed = read_section(stream, cuts)
        assert verdict == expected, cuts
        assert stream[consumed:] == NEXT, cuts  # the next command is left unread


def test_a_dot_line_inside_a_line_is_not_the_end() -> None:
    stream = b"a.\r\nb\r\n.x\r\n.\r\n" + NEXT
    for k in range(1, len(stream)):
        verdict, consumed = read_section(stream, [k])
        assert verdict == (b"a.\r\nb\r\nx\r\n", None)
        assert stream[consumed:] == NEXT


def test_a_smuggled_end_marker_is_data_of_the_refused_message() -> None:
    # "\n.\r\n" is no end of data: everything up to the real CRLF.CRLF is this message.
    stream = b"a\n.\r\nMAIL FROM:<x@y.z>\r\n.\r\n" + NEXT
    for k in range(1, len(stream)):
        verdict, consumed = read_section(stream, [k])
        assert verdict == (None, R.BARE_NEWLINE)
        assert stream[consumed:] == NEXT


@settings(max_examples=200, deadline=None)
@given(lines, st.data())
def test_any_split_stops_at_the_end_marker(body: list[bytes], data: st.DataObject) -> None:
    # As a client sends it: a line starting with '.' gets one more (RFC 5321 §4.5.2).
    text = b"".join((b"." if line.startswith(b".") else b"") + line + b"\r\n" for line in body)
    stream = text + b".\r\n" + NEXT
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=8)))
    verdict, consumed = read_section(stream, cuts, size_limit=0, line_limit=12)
    assert verdict == reference(text, 0, 12)
    assert stream[consumed:] == NEXT


@pytest.mark.parametrize(("tail", "matched"), [
    (b"x", 0), (b"x\r", 1), (b"\r\n", 2), (b"\r\n.", 3), (b"\r\n.\r", 4), (b"\r\r", 1),
    (b"\n.", 0), (b".\r", 1), (b"\r\n.\r\n", 2),
])
def test_eod_prefix(tail: bytes, matched: int) -> None:
    assert eod_prefix(tail) == matched
