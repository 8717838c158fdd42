"""DKIM relaxed canonicalisation (RFC 6376 §3.4.2 headers, §3.4.4 body) over whole byte strings.

Byte-for-byte what dkimpy computes (dkimpy verifies what relay signs, and signed it before
this module), but with whole-buffer regex/`bytes` operations instead of Python work per
line, so a 1 MB body costs a few milliseconds. Like dkimpy, a message is split into lines
at CRLF or a bare LF; header lines are `name:value` with a name of printable ASCII and no
WSP, continued by lines that start with WSP (an mbox `From ` line is skipped).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_NEWLINE = re.compile(rb"\r?\n")
_WSP_RUN = re.compile(rb"[ \t]+")
# Only WSP that is not already a single SP (a tab, or SP followed by more WSP): runs of
# length one are the common case and are not worth a substitution each.
_WSP_TO_SP = re.compile(rb"\t[ \t]*| [ \t]+")
_HEADER_NAME = re.compile(rb"([\x21-\x7e]+?):")


class MessageFormatError(ValueError):
    """The header section has a line that is neither a field, a continuation nor `From `."""


def crlf(message: bytes) -> bytes:
    """`message` with every bare LF made CRLF (how dkimpy, and the wire, read it)."""
    if message.count(b"\n") == message.count(b"\r\n"):
        return message
    return _NEWLINE.sub(b"\r\n", message)


def split_message(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(header fields, body) of `message`: each field as (name, raw value after the colon,
    folding and final CRLF included); the body after the first empty line (b"" when there
    is none). Line ends are CRLF afterwards."""
    message = crlf(message)
    if message.startswith(b"\r\n"):
        head, body = b"", message[2:]
    else:
        end = message.find(b"\r\n\r\n")
        if end < 0:
            head, body = message.removesuffix(b"\r\n"), b""
        else:
            head, body = message[:end], message[end + 4:]
    fields: list[tuple[bytes, bytes]] = []
    if not head:
        return fields, body
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise MessageFormatError("the header section starts with a continuation line")
            name, value = fields[-1]
            fields[-1] = (name, value + line + b"\r\n")
            continue
        m = _HEADER_NAME.match(line)
        if m is not None:
            fields.append((m.group(1), line[m.end():] + b"\r\n"))
        elif not line.startswith(b"From "):
            raise MessageFormatError(f"not a header field: {line[:60]!r}")
    return fields, body


def relaxed_value(value: bytes) -> bytes:
    """A header field value, relaxed: unfolded, WSP runs as one SP, stripped (no CRLF)."""
    # Every raw value of split_message() ends in its CRLF: cut it without a regex pass,
    # which is then left for folded values only (the same result: a line end is gone).
    if value.endswith(b"\r\n"):
        value = value[:-2]
    if b"\n" in value:
        value = _NEWLINE.sub(b"", value)
    if b"\t" in value or b"  " in value:
        value = _WSP_RUN.sub(b" ", value)
    return value.strip()


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """`name:value` relaxed (RFC 6376 §3.4.2), without the CRLF that follows it."""
    return name.lower().rstrip() + b":" + relaxed_value(value)


def relaxed_headers(fields: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """(lower-case name, relaxed value + CRLF) of each field: dkimpy's
    `Relaxed.canonicalize_headers()`."""
    return [(n.lower().rstrip(), relaxed_value(v) + b"\r\n") for n, v in fields]


def select_headers(fields: list[tuple[bytes, bytes]],
                   names: Iterable[bytes]) -> list[tuple[bytes, bytes]]:
    """The fields `names` (the h= list, lower-case) sign, in h= order: a name listed k times
    takes its k last instances bottom-up, and a name with no instance left contributes
    nothing (oversigning; RFC 6376 §5.4.2)."""
    where: dict[bytes, list[int]] = {}
    for i, (n, _) in enumerate(fields):
        where.setdefault(n.lower(), []).append(i)
    out: list[tuple[bytes, bytes]] = []
    for n in names:
        left = where.get(n)
        if left:
            out.append(fields[left.pop()])
    return out


def relaxed_body(body: bytes) -> bytes:
    """The body relaxed (RFC 6376 §3.4.4): WSP runs as one SP, none at line ends, no empty
    lines at the end, a final CRLF on a non-empty body; an empty body stays empty. `body`
    must have CRLF line ends (see `crlf()`)."""
    if b"\t" in body or b"  " in body:
        body = _WSP_TO_SP.sub(b" ", body)
    if b" \r\n" in body:  # after the line above a line end has at most one SP before it
        body = body.replace(b" \r\n", b"\r\n")
    text = body.rstrip(b"\r\n")
    tail = body[len(text):]
    if not tail.endswith(b"\r\n"):  # no line end at all, or a last line ending in a bare CR
        body += b"\r\n"
    else:
        if tail.count(b"\r\n") * 2 != len(tail):  # CRs before the trailing empty lines
            keep = len(tail)
            while tail.endswith(b"\r\n", 0, keep):
                keep -= 2
            text += tail[:keep]
        body = text + b"\r\n"
    return b"" if body == b"\r\n" else body
