"""PURE message helpers for submission: the Received: line, commonHeaders, SES tags.

No I/O. Header values are unfolded and otherwise left as sent (no RFC 2047 decoding),
which is what SES puts in `mail.commonHeaders`/`mail.headers` of its events.
"""

from __future__ import annotations

import email.utils
import functools
import re
from email.parser import HeaderParser
from email.policy import compat32

COMMON_HEADERS = ("From", "To", "Subject", "Message-ID", "Date")
TAGS_HEADER = "X-SES-MESSAGE-TAGS"
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_HEADER_LIMIT = 256 * 1024  # headers past this are not examined (they are kept in the body)


def header_block(body: bytes) -> bytes:
    end = body.find(b"\r\n\r\n", 0, _HEADER_LIMIT)
    return body[: end + 2] if end >= 0 else body[:_HEADER_LIMIT]


_FIELD_NAME = re.compile(r"[\041-\071\073-\176]+:")  # RFC 5322 ftext, then the colon
_WANTED = {name.lower(): name for name in COMMON_HEADERS}


def extract_headers(body: bytes) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Return (common headers, X-SES-MESSAGE-TAGS) from a message with CRLF line endings.

    One pass over the header lines; the same answer as email's compat32 HeaderParser,
    which `_extract_headers_parsed` uses for anything unusual (a bare CR or LF, a line that
    is neither a field nor a continuation, an mbox `From ` line)."""
    block = header_block(body)
    if block.count(b"\n") != block.count(b"\r\n") or \
            block.count(b"\r") != block.count(b"\r\n"):
        return _extract_headers_parsed(body)
    lines = block.decode("utf-8", "replace").split("\r\n")
    if lines and lines[-1] == "":
        lines.pop()
    fields: list[tuple[str, list[str]]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not fields:
                return _extract_headers_parsed(body)
            fields[-1][1].append(line)
            continue
        m = _FIELD_NAME.match(line)
        if m is None or line.startswith("From "):
            return _extract_headers_parsed(body)
        fields.append((line[: m.end() - 1], [line[m.end():]]))
    headers: dict[str, str] = {}
    tags: dict[str, list[str]] = {}
    tags_header = TAGS_HEADER.lower()
    for name, parts in fields:
        key = name.lower()
        if key == tags_header:
            for tname, vals in parse_tags("".join(parts)).items():
                tags.setdefault(tname, []).extend(vals)
        else:
            common = _WANTED.get(key)
            if common is not None and common not in headers:
                headers[common] = "".join(parts).strip()
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
