"""PURE message helpers for submission: the Received: line, commonHeaders, SES tags.

No I/O. Header values are unfolded and otherwise left as sent (no RFC 2047 decoding),
which is what SES puts in `mail.commonHeaders`/`mail.headers` of its events.
"""

from __future__ import annotations

import datetime
import email.utils
import functools
import itertools
import re
from dataclasses import dataclass
from email.parser import HeaderParser
from email.policy import compat32

from relay.smtp import replies as R

COMMON_HEADERS = ("From", "To", "Subject", "Message-ID", "Date")
TAGS_HEADER = "X-SES-MESSAGE-TAGS"
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_HEADER_LIMIT = 256 * 1024  # headers past this are not examined (they are kept in the body)
_WANTED = {name.lower(): name for name in COMMON_HEADERS}


def header_block(body: bytes) -> bytes:
    end = body.find(b"\r\n\r\n", 0, _HEADER_LIMIT)
    return body[: end + 2] if end >= 0 else body[:_HEADER_LIMIT]


# RFC 5322 §3.6 (and its obs-optional, §4.5.8): at most one of each; From exactly one.
SINGLE_FIELDS = ("From", "Sender", "Reply-To", "To", "Cc", "Bcc", "Message-ID", "Date",
                 "Subject")
_SINGLE_NAMES = {name.lower().encode(): name for name in SINGLE_FIELDS}
# A field line: ftext name, WSP allowed before the colon (obsolete syntax, RFC 5322 §4.5:
# "From :" is From). Continuation lines start with WSP, so they never match.
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")
_FIELD_LINE = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.MULTILINE)
_OBS_FIELD_LINE = re.compile(rb"^([!-9;-~]+)[ \t]+:", re.MULTILINE)
# The first line after a line end that is neither a continuation nor a field: the empty
# line before the body, or a stray line (an mbox "From x@y ...", text with no headers).
_NOT_HEADER_LINE = re.compile(rb"\n(?![ \t]|[!-9;-~]+[ \t]*:)")
# The fields counted against RFC 5322 §3.6 and the hop limit, searched in C over the whole
# header section: the other fields cost no Python work, however many there are.
_COUNTED = re.compile(
    rb"^(from|sender|reply-to|to|cc|bcc|message-id|date|subject|received)[ \t]*:",
    re.MULTILINE | re.IGNORECASE)
_CRLF_NOT_FOLD = re.compile(rb"\r\n(?![ \t])")


@dataclass(frozen=True, slots=True)
class HeaderSection:
    """The header section of a submitted message, as `scan_header_section` found it."""

    start: int  # where it begins in the message
    end: int  # where it ends: the empty line before the body, a stray line, or the end
    separated: bool  # followed by the empty line (or nothing): no separator to insert
    obsolete_names: bool  # some field has WSP before its colon ("From :")
    received: int  # Received: fields (capped just past the hop limit)
    repeated: str | None  # a RFC 5322 §3.6 field that occurs more than once, or None
    from_value: str | None  # the (one) From: value, unfolded; None when there is none
    has_message_id: bool
    has_date: bool


def scan_header_section(body: bytes, start: int, max_hops: int) -> HeaderSection:
    """Find the header section of `body` (CRLF-only, as DATA leaves it) from `start`, and
    count what `header_refusal` and `complete_header_section` need.

    A header section ends at the first line that is neither a field nor a continuation:
    normally the empty line, but a stray line ends it too (RFC 5322 §2.1), and then the
    empty line is inserted before it, so every reader downstream splits the message where
    relay did (a lenient parser skipping an mbox "From " line would otherwise read the
    fields after it as headers: two Froms). Field names are case-insensitive and may have
    WSP before the colon. Only the fields counted here cost Python work; the count stops
    as soon as the message is refused, so a header section of a million fields costs
    what a C regex search of it costs."""
    if _FIELD.match(body, start) is None:  # no field at all: an empty line, text or nothing
        end = start
    else:
        m = _NOT_HEADER_LINE.search(body, start)
        end = m.start() + 1 if m is not None else len(body)
    separated = end == len(body) or body.startswith(b"\r\n", end)
    counts: dict[bytes, int] = {}
    received = 0
    repeated: str | None = None
    from_at = -1
    for m in _COUNTED.finditer(body, start, end):
        name = m.group(1).lower()
        if name == b"received":
            received += 1
            if received > max_hops:
                break
            continue
        n = counts[name] = counts.get(name, 0) + 1
        if n > 1:
            repeated = _SINGLE_NAMES[name]
            break
        if name == b"from":
            from_at = m.end()
    from_value = None
    if from_at >= 0:
        fold = _CRLF_NOT_FOLD.search(body, from_at, end)
        raw = body[from_at:fold.start() if fold is not None else end]
        from_value = raw.replace(b"\r\n", b"").decode("utf-8", "replace").strip()
    return HeaderSection(
        start=start, end=end, separated=separated,
        obsolete_names=_OBS_FIELD_LINE.search(body, start, end) is not None,
        received=received, repeated=repeated, from_value=from_value,
        has_message_id=b"message-id" in counts, has_date=b"date" in counts)


def header_refusal(section: HeaderSection, max_hops: int) -> R.Reply | None:
    """Why a message with this header section is refused at DATA, or None."""
    if section.received > max_hops:
        return R.TOO_MANY_HOPS
    if section.repeated is not None:
        return R.HEADER_REPEATED.with_text(
            R.HEADER_REPEATED.text.format(name=section.repeated))
    return None


def complete_header_section(body: bytes, section: HeaderSection, *, hostname: str,
                            now: float, unique: str) -> tuple[bytes, dict[str, str], int]:
    """`body` with what RFC 6409 §8 lets a submission server add or fix: Message-ID and
    Date when absent (first in the section), field names written without WSP before the
    colon, the empty line before the body when a stray line ended the headers. Returns the
    (possibly same) message, the fields added and where its header section now ends. One
    copy of the message at most, and none when nothing changes."""
    added: dict[str, str] = {}
    if not section.has_message_id:
        added["Message-ID"] = f"<{unique}@{hostname}>"
    if not section.has_date:
        added["Date"] = email.utils.format_datetime(
            datetime.datetime.fromtimestamp(now, datetime.UTC))
    if not added and section.separated and not section.obsolete_names:
        return body, added, section.end
    fields = "".join(f"{name}: {value}\r\n" for name, value in added.items()).encode("ascii")
    with memoryview(body) as view:
        head: bytes | memoryview = view[section.start:section.end]
        if section.obsolete_names:
            head = _OBS_FIELD_LINE.sub(rb"\1:", bytes(head))
        end = section.start + len(fields) + len(head)
        new = b"".join((view[:section.start], fields, head,
                        b"" if section.separated else b"\r\n", view[section.end:]))
        del head
    return new, added, end


def extract_headers(body: bytes, start: int = 0,
                    end: int | None = None) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Return (common headers, X-SES-MESSAGE-TAGS) from a message with CRLF line endings:
    the first of each common header, unfolded and stripped, and every tags header.

    The header section runs from `start` to `end` (`HeaderSection.start`/`.end`; found
    here when not given), as `scan_header_section` reads it: names case-insensitive, WSP
    allowed before the colon. Only its first _HEADER_LIMIT bytes are examined. A message
    with a bare CR or LF in its headers (never one from DATA) is read by email's compat32
    parser."""
    if end is None:
        block = header_block(body)
        if block.count(b"\n") != block.count(b"\r\n") or \
                block.count(b"\r") != block.count(b"\r\n"):
            return _extract_headers_parsed(body)
        if _FIELD.match(body, start) is None:
            return {}, {}
        m = _NOT_HEADER_LINE.search(body, start)
        end = m.start() + 1 if m is not None else len(body)
    end = min(end, start + _HEADER_LIMIT)
    starts = [f.start() for f in _FIELD_LINE.finditer(body, start, end)]
    starts.append(end)
    headers: dict[str, str] = {}
    tags: dict[str, list[str]] = {}
    tags_header = TAGS_HEADER.lower()
    for at, nxt in itertools.pairwise(starts):
        colon = body.index(b":", at, nxt)
        key = body[at:colon].rstrip(b" \t").decode("ascii").lower()
        if key == tags_header or key in _WANTED:
            value = body[colon + 1:nxt].replace(b"\r\n", b"").decode("utf-8", "replace")
            if key == tags_header:
                for tname, vals in parse_tags(value).items():
                    tags.setdefault(tname, []).extend(vals)
            elif _WANTED[key] not in headers:
                headers[_WANTED[key]] = value.strip()
    return headers, tags


def _extract_headers_parsed(body: bytes) -> tuple[dict[str, str], dict[str, list[str]]]:
    text = header_block(body).decode("utf-8", "replace")
    msg = HeaderParser(policy=compat32).parsestr(text, headersonly=True)
    headers: dict[str, str] = {}
    for name in COMMON_HEADERS:
        value = msg.get(name)
        if isinstance(value, str):
            headers[name] = _FOLD.sub("", value).strip()
    tags: dict[str, list[str]] = {}
    for value in msg.get_all(TAGS_HEADER) or []:
        if isinstance(value, str):
            for name, vals in parse_tags(_FOLD.sub("", value)).items():
                tags.setdefault(name, []).extend(vals)
    return headers, tags


def parse_tags(value: str) -> dict[str, list[str]]:
    """`name=value, name2=value2` → {"name": ["value"], "name2": ["value2"]}."""
    tags: dict[str, list[str]] = {}
    for item in value.split(","):
        name, eq, val = item.partition("=")
        name, val = name.strip(), val.strip()
        if name and eq:
            tags.setdefault(name, []).append(val)
    return tags


def received_header(*, helo: str, client_ip: str, hostname: str, tls: bool,
                    authenticated: bool, recipients: list[str], now: float,
                    queue_id: str = "") -> bytes:
    """RFC 5321 §4.4 trace line; protocol per RFC 3848 (ESMTP, ESMTPS, ESMTPSA)."""
    protocol = "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")
    if authenticated and not tls:
        protocol = "ESMTPA"
    parts = [f"Received: from {helo} ([{client_ip}])", f"\tby {hostname} with {protocol}"]
    if queue_id:
        parts[-1] += f" id {queue_id}"
    if len(recipients) == 1:
        parts.append(f"\tfor <{recipients[0]}>")
    parts[-1] += ";"
    parts.append("\t" + email.utils.formatdate(now, localtime=False))
    return ("\r\n".join(parts) + "\r\n").encode("utf-8", "surrogateescape")


_MEMO_MAX_CHARS = 512  # longer values are parsed each time (the memo stays small)


def header_addresses(value: str) -> tuple[str, ...]:
    """The non-empty addresses of an address-list header (From:), as
    email.utils.getaddresses() gives them. Memoised: an application sends from the same
    From: again and again, and getaddresses() was ~0.2 ms of pure Python per message on
    each of the paths that ask (the From check at submission, the return-path identity
    and the DKIM domain at delivery)."""
    if len(value) > _MEMO_MAX_CHARS:
        return _parse_addresses(value)
    return _memo_addresses(value)


def _parse_addresses(value: str) -> tuple[str, ...]:
    return tuple(a for _, a in email.utils.getaddresses([value]) if a)


_memo_addresses = functools.lru_cache(maxsize=2048)(_parse_addresses)
