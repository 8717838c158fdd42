"""PURE message helpers for submission: the Received: line, commonHeaders, SES tags, and
the header section rules applied at DATA (`scan_header_section`: the hop limit, one of
each RFC 5322 §3.6 field, the one From; `complete_header_section`: Message-ID and Date
added when absent, RFC 6409 §8).

No I/O. Header values are unfolded and otherwise left as sent (no RFC 2047 decoding),
which is what SES puts in `mail.commonHeaders`/`mail.headers` of its events.
"""

from __future__ import annotations

import datetime
import email.utils
import functools
import itertools
import os
import re
from dataclasses import dataclass, field
from email.parser import HeaderParser
from email.policy import compat32

from relay.events.headers import SCAN_LIMIT
from relay.smtp import replies as R

COMMON_HEADERS = ("From", "To", "Subject", "Message-ID", "Date")
TAGS_HEADER = "X-SES-MESSAGE-TAGS"
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_HEADER_LIMIT = 256 * 1024  # headers past this are not examined (they are kept in the body)


def header_block(body: bytes) -> bytes:
    end = body.find(b"\r\n\r\n", 0, _HEADER_LIMIT)
    return body[: end + 2] if end >= 0 else body[:_HEADER_LIMIT]


# RFC 5322 §3.6 (and its obs-optional, §4.5.8): at most one of each; From exactly one.
SINGLE_FIELDS = ("From", "Sender", "Reply-To", "To", "Cc", "Bcc", "Message-ID", "Date",
                 "Subject")
_SINGLE = {name.lower().encode(): name for name in SINGLE_FIELDS}
_COMMON = {name.lower().encode(): name for name in COMMON_HEADERS}
_TAGS = TAGS_HEADER.lower().encode()
# A field: an ftext name, WSP allowed before the colon (obsolete syntax, RFC 5322 §4.5.8:
# "From :" is From). Continuation lines start with WSP, so they never match.
_FIELD = re.compile(rb"([!-9;-~]+)([ \t]*):")  # the section's first line
_NEXT_FIELD = re.compile(rb"\n([!-9;-~]+)([ \t]*):")  # any other line
_FIELD_VALUE = re.compile(rb"\n([!-9;-~]+)([ \t]*):([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)")
# The first line after a line end that is neither a continuation nor a field: the empty
# line before the body, or a stray line (an mbox "From x@y ...", text with no headers).
_NOT_HEADER_LINE = re.compile(rb"\n(?![ \t]|[!-9;-~]+[ \t]*:)")
# Past _HEADER_LIMIT, only the fields counted against RFC 5322 §3.6 and the hop limit are
# looked at, found in C: the others cost no Python work, however many there are.
_COUNTED = re.compile(
    rb"\n(from|sender|reply-to|to|cc|bcc|message-id|date|subject|received)[ \t]*:",
    re.IGNORECASE)
_OBS_NAME = re.compile(rb"(^|\n)([!-9;-~]+)[ \t]+:")  # to rewrite one header section
_OBS_NEXT = re.compile(rb"\n[!-9;-~]+[ \t]+:")  # to search (a literal first: fast)
_CRLF_NOT_FOLD = re.compile(rb"\r\n(?![ \t])")


@dataclass(slots=True)
class HeaderSection:
    """The header section of a submitted message, as `scan_header_section` found it."""

    start: int  # where it begins in the message
    end: int  # where it ends: the empty line before the body, a stray line, or the end
    separated: bool  # followed by the empty line (or nothing): no separator to insert
    oversized: bool = False  # longer than the limit: nothing else was looked at
    obsolete_names: bool = False  # some field has WSP before its colon ("From :")
    received: int = 0  # Received: fields (past _HEADER_LIMIT: counted up to a refusal)
    repeated: str | None = None  # the first RFC 5322 §3.6 field found twice, or None
    from_value: str | None = None  # the (first) From: value, unfolded; None: no From
    has_message_id: bool = False
    has_date: bool = False
    headers: dict[str, str] = field(default_factory=dict)  # commonHeaders: the first of each
    tags: dict[str, list[str]] = field(default_factory=dict)  # X-SES-MESSAGE-TAGS
    # Every field in order, (name, WSP before the colon, folded value) as found, for
    # `complete_and_list_fields`; None: the section was not read whole (a refusal,
    # longer than _HEADER_LIMIT, or at the very start of the message).
    fields: list[tuple[bytes, bytes, bytes]] | None = None


def scan_header_section(body: bytes, start: int, max_hops: int,
                        max_size: int = 1_000_000) -> HeaderSection:
    """Read the header section of `body` (CRLF-only, as DATA leaves it) from `start`:
    what `header_refusal` and `complete_header_section` need, the common headers, the
    SES tags and (for `complete_and_list_fields`) every field, in one pass.

    A header section ends at the first line that is neither a field nor a continuation:
    normally the empty line, but a stray line ends it too (RFC 5322 §2.1), and then the
    empty line is inserted before it, so every reader downstream splits the message where
    relay did (a lenient parser skipping an mbox "From " line would otherwise read the
    fields after it as headers: two Froms). Field names are case-insensitive and may have
    WSP before the colon. Fields are read one by one in the first _HEADER_LIMIT bytes;
    past that, C regex searches find only the counted fields and stop at a refusal. A
    section longer than `max_size` bytes is `oversized` and not read at all, so the work
    is bounded whatever the message (Exim's header_maxsize)."""
    first = _FIELD.match(body, start)
    bound = start + max_size
    if first is None:  # no field at all: an empty line, text, or nothing
        end = start
    else:
        m = _NOT_HEADER_LINE.search(body, start, bound)
        if bound >= len(body):
            end = m.start() + 1 if m is not None else len(body)
        elif m is not None and body.find(b"\n", m.end(), bound) >= 0:
            end = m.start() + 1  # (a line cut at `bound` may look like no field: checked)
        else:  # no end within max_size bytes
            return HeaderSection(start, bound, False, oversized=True)
    section = HeaderSection(start, end, end == len(body) or body.startswith(b"\r\n", end))
    if first is None:
        section.fields = []
    else:
        counts: dict[bytes, int] = {}
        if end - start <= _HEADER_LIMIT and body[start - 1:start] == b"\n":
            rest = _read_small_section(body, section, counts, max_hops)  # the usual case
        else:
            rest = _read_fields(body, first, section, counts, max_hops)
        if rest < end and section.repeated is None and section.received <= max_hops:
            _count_fields(body, rest, section, counts, max_hops)
        section.has_message_id = b"message-id" in counts
        section.has_date = b"date" in counts
        section.from_value = section.headers.get("From")
    return section


def _read_small_section(body: bytes, s: HeaderSection, counts: dict[bytes, int],
                        max_hops: int) -> int:
    """`_read_fields` for a section within _HEADER_LIMIT that follows a line end: one
    findall of (name, WSP, folded value) tuples, cheaper than a match object per field.
    Every field is kept in s.fields too (the events' header list: no second reading)."""
    found = _FIELD_VALUE.findall(body, s.start - 1, s.end)
    for name, wsp, raw in found:
        if wsp:
            s.obsolete_names = True
        key = name.lower()
        if key == b"received":
            s.received += 1
            if s.received > max_hops:
                return s.end
            continue
        single = _SINGLE.get(key)
        if single is not None:
            n = counts[key] = counts.get(key, 0) + 1
            if n > 1:
                s.repeated = single
                return s.end
        if key in _COMMON or key == _TAGS:
            _keep(s, key, raw)
    s.fields = found
    return s.end


def _read_fields(body: bytes, first: re.Match[bytes], s: HeaderSection,
                 counts: dict[bytes, int], max_hops: int) -> int:
    """Every field up to _HEADER_LIMIT, or up to a refusal; returns where the rest
    begins (s.end: none)."""
    limit = min(s.end, s.start + _HEADER_LIMIT)
    wanted = b""  # the field whose value is kept, open until the next field starts
    value_at = 0
    for m in itertools.chain((first,), _NEXT_FIELD.finditer(body, first.end(), s.end)):
        at = m.start(1)
        if wanted:
            _keep(s, wanted, body[value_at:at])
            wanted = b""
        if at >= limit:
            return at - 1
        name = m.group(1).lower()
        if m.group(2):
            s.obsolete_names = True
        if name == b"received":
            s.received += 1
            if s.received > max_hops:
                return s.end
            continue
        single = _SINGLE.get(name)
        if single is not None:
            n = counts[name] = counts.get(name, 0) + 1
            if n > 1:
                s.repeated = single
                return s.end
        if name in _COMMON or name == _TAGS:
            wanted, value_at = name, m.end()
    if wanted:
        _keep(s, wanted, body[value_at:s.end])
    return s.end


def _keep(s: HeaderSection, name: bytes, raw: bytes) -> None:
    value = raw.replace(b"\r\n", b"").decode("utf-8", "replace")
    if name == _TAGS:
        for tname, vals in parse_tags(value).items():
            s.tags.setdefault(tname, []).extend(vals)
    else:
        s.headers.setdefault(_COMMON[name], value.strip())


def _count_fields(body: bytes, rest: int, s: HeaderSection, counts: dict[bytes, int],
                  max_hops: int) -> None:
    """Past _HEADER_LIMIT: the counted fields only, found in C, up to a refusal."""
    if _OBS_NEXT.search(body, rest, s.end) is not None:
        s.obsolete_names = True
    for m in _COUNTED.finditer(body, rest, s.end):
        name = m.group(1).lower()
        if name == b"received":
            s.received += 1
            if s.received > max_hops:
                return
            continue
        n = counts[name] = counts.get(name, 0) + 1
        if n > 1:
            s.repeated = s.repeated or _SINGLE[name]
            return
        if name == b"from" and "From" not in s.headers:
            fold = _CRLF_NOT_FOLD.search(body, m.end(), s.end)
            raw = body[m.end():fold.start() if fold is not None else s.end]
            s.headers["From"] = raw.replace(b"\r\n", b"").decode("utf-8", "replace").strip()


def header_refusal(section: HeaderSection, max_hops: int) -> R.Reply | None:
    """Why a message with this header section is refused at DATA, or None."""
    if section.oversized:
        return R.HEADER_TOO_BIG
    if section.received > max_hops:
        return R.TOO_MANY_HOPS
    if section.repeated is not None:
        return R.HEADER_REPEATED.with_text(
            R.HEADER_REPEATED.text.format(name=section.repeated))
    return None


def complete_header_section(body: bytes, section: HeaderSection, *, hostname: str,
                            now: float, unique: str) -> tuple[bytes, dict[str, str]]:
    """`body` with what RFC 6409 §8 lets a submission server add or fix: Message-ID and
    Date when absent (first in the section), field names written without WSP before the
    colon, the empty line before the body when a stray line ended the headers. Returns the
    (possibly same) message and the fields added. One copy of the message at most, and
    none when nothing changes."""
    added = _missing_fields(section, hostname, now, unique)
    return _completed(body, section, _field_lines(added)), added


def complete_and_list_fields(
        body: bytes, section: HeaderSection, *, hostname: str, now: float, unique: str,
) -> tuple[bytes, dict[str, str], list[tuple[str, str]] | None]:
    """`complete_header_section`, and the header fields of the message it returns exactly
    as events' `read_fields` reads them from its header block, made from the scan's
    reading (the section is not read a second time). The fields are None when they must
    be read from the message (relay/events/headers.py `header_fields`): the scan did not
    read every field, or the readings could differ (the block would end past
    SCAN_LIMIT; a bare CR or LF, or what precedes the section is not one trace field:
    never so at DATA)."""
    added = _missing_fields(section, hostname, now, unique)
    lines = _field_lines(added)
    return _completed(body, section, lines), added, _stored_fields(body, section, added, lines)


def _missing_fields(section: HeaderSection, hostname: str, now: float,
                    unique: str) -> dict[str, str]:
    added: dict[str, str] = {}
    if not section.has_message_id:
        added["Message-ID"] = f"<{unique}@{hostname}>"
    if not section.has_date:
        added["Date"] = _rfc5322_date(int(now))
    return added


def _field_lines(added: dict[str, str]) -> bytes:
    return "".join([f"{name}: {value}\r\n" for name, value in added.items()]).encode()


def _completed(body: bytes, section: HeaderSection, fields: bytes) -> bytes:
    if not fields and section.separated and not section.obsolete_names:
        return body
    start, end = section.start, section.end
    if section.separated and not section.obsolete_names:  # the usual case: insert only
        return b"".join((body[:start], fields, memoryview(body)[start:]))
    with memoryview(body) as view:
        head: bytes | memoryview = view[start:end]
        if section.obsolete_names:
            head = _OBS_NAME.sub(rb"\1\2:", bytes(head))
        new = b"".join((view[:start], fields, head,
                        b"" if section.separated else b"\r\n", view[end:]))
        del head
    return new


def _stored_fields(body: bytes, section: HeaderSection, added: dict[str, str],
                   lines: bytes) -> list[tuple[str, str]] | None:
    """The fields of [body up to the section] + `lines` (`added`, names without ":" or
    WSP) + the section, for `complete_and_list_fields`."""
    fields = section.fields
    if fields is None:
        return None
    start, end = section.start, section.end
    if end + len(lines) + 4 > SCAN_LIMIT or not _crlf_only(body, 0, end) \
            or not lines.count(b"\n") == lines.count(b"\r") == len(added):  # CR/LF in a value
        return None
    front = [(name, " " + value) for name, value in added.items()]  # "Name: value"
    if start:  # one Received field whose other lines are continuations (our trace)
        if not body.startswith(b"Received:") or body[start - 1] != 10 or \
                body.count(b"\r\n\t", 0, start) + 1 != body.count(b"\r\n", 0, start):
            return None
        front.insert(0, ("Received",
                         body[9:start].replace(b"\r\n", b"").decode("utf-8", "replace")))
    front += [(name.decode("ascii"), raw.replace(b"\r\n", b"").decode("utf-8", "replace"))
              for name, _, raw in fields]
    return front


def _crlf_only(data: bytes, start: int, end: int) -> bool:
    crlf = data.count(b"\r\n", start, end)
    return data.count(b"\n", start, end) == crlf and data.count(b"\r", start, end) == crlf


def random_uuid() -> str:
    """A random (version 4) UUID as text: what str(uuid.uuid4()) gives, for a third of
    its cost (it is made for every message without a Message-ID)."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


@functools.lru_cache(maxsize=4)
def _rfc5322_date(second: int) -> str:
    """RFC 5322 §3.3 date-time in UTC ("+0000"); the same for a whole second."""
    return email.utils.format_datetime(datetime.datetime.fromtimestamp(second, datetime.UTC))


def extract_headers(body: bytes) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Return (common headers, X-SES-MESSAGE-TAGS) from a message with CRLF line endings:
    the first of each common header, unfolded and stripped, and every tags header, read as
    `scan_header_section` reads them (names case-insensitive, WSP before the colon; up to
    a second instance of a field RFC 5322 allows once). A
    message with a bare CR or LF in its headers (never one from DATA) is read by email's
    compat32 parser."""
    block = header_block(body)
    if block.count(b"\n") != block.count(b"\r\n") or \
            block.count(b"\r") != block.count(b"\r\n"):
        return _extract_headers_parsed(body)
    section = scan_header_section(body, 0, _HEADER_LIMIT, len(body))
    return section.headers, section.tags


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
    """`name=value, name2=value2` → {"name": ["value"], "name2": ["value2"]}. Names with
    SES's reserved prefix "ses:" are relay's own (the tenant, the configuration set that
    routes events, how and by which key a message was sent): a client's are dropped, as
    SES refuses them."""
    tags: dict[str, list[str]] = {}
    for item in value.split(","):
        name, eq, val = item.partition("=")
        name, val = name.strip(), val.strip()
        if name and eq and not name.lower().startswith("ses:"):
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
