"""PURE header helpers for events, shaped as SES shapes them.

- `header_fields`: every header field of a message, in order, unfolded, values as sent
  (SES `mail.headers`), cut before the field that would take the total past 10 KB
  (then `mail.headersTruncated` is true). Once per message at submission, from the
  fields the DATA scan already read when it read them all (relay/smtp/message.py
  `complete_and_list_fields`), else from the message; kept in its MessageRecord.
- `decode_words` / `address_list`: RFC 2047 encoded-words decoded, as SES decodes
  `mail.commonHeaders` (subject, from and to display names). Anything undecodable (an
  unknown charset, broken base64) is kept as sent, never an error.

No I/O.
"""

from __future__ import annotations

import functools
from email.header import decode_header, make_header
from email.utils import getaddresses

HEADERS_LIMIT = 10 * 1024        # SES: headers are truncated past 10 KB
SCAN_LIMIT = 256 * 1024          # the header block is not looked for past this
_SPECIALS = set('()<>[]:;@\\,."')  # RFC 5322 specials: a display name with one is quoted


def header_fields(body: bytes, limit: int = HEADERS_LIMIT,
                  known: list[tuple[str, str]] | None = None,
                  ) -> tuple[list[tuple[str, str]], bool]:
    """(name, value) of each header field in order, and whether the list was cut at
    `limit` characters (counting each field as `name: value`). `known`: the fields of
    `body` already read, as `read_fields` reads them (at DATA, by the scan of the header
    section: relay/smtp/message.py `complete_and_list_fields`); then `body` is not read."""
    if known is None:
        end = body.find(b"\r\n\r\n", 0, SCAN_LIMIT)
        known = read_fields(body[: end] if end >= 0 else body[:SCAN_LIMIT])
    return cut_fields(known, limit)


def read_fields(block: bytes) -> list[tuple[str, str]]:
    """(name, value) of each field of a header block, in order, unfolded; values not yet
    stripped. Lines that are not fields (an mbox "From " line, junk) are left out."""
    lines = block.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    fields: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if fields:  # a continuation: unfold it into the field before
                name, value = fields[-1]
                fields[-1] = (name, value + line)
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip()  # "From :" (RFC 5322 obsolete syntax) is still From
        if not colon or not name or " " in name or "\t" in name:
            continue  # not a field (an mbox "From " line, junk): not a header SES would show
        fields.append((name, value))
    return fields


def cut_fields(fields: list[tuple[str, str]], limit: int = HEADERS_LIMIT,
               ) -> tuple[list[tuple[str, str]], bool]:
    """`fields` with values stripped, cut before the field that takes the total past
    `limit` characters; and whether it was cut."""
    out: list[tuple[str, str]] = []
    size = 0
    for name, value in fields:
        value = value.strip()
        size += len(name) + 2 + len(value)
        if size > limit:
            return out, True
        out.append((name, value))
    return out, False


def without_fields(fields: list[tuple[str, str]] | None,
                   names: frozenset[str]) -> list[tuple[str, str]] | None:
    """`fields` less those whose lower-case name is in `names`: the field list of a
    message after those fields were removed from its header (relay/configsets.py)."""
    if fields is None:
        return None
    return [f for f in fields if f[0].lower() not in names]


@functools.lru_cache(maxsize=4096)
def decode_words(value: str) -> str:
    """`=?utf-8?q?Caf=C3=A9?=` → `Café`; a value without encoded-words is returned as is.
    Cached: every event of a message decodes the same few values."""
    if "=?" not in value:
        return value
    try:
        decoded = str(make_header(decode_header(value)))
    except Exception:  # an unknown charset or a malformed word: keep it as sent
        return value
    return decoded if decoded.strip() or not value.strip() else value


@functools.lru_cache(maxsize=4096)
def _addresses(value: str) -> tuple[str, ...]:
    if "=?" not in value and "," not in value:
        return (value,) if value else ()
    found = []
    for name, addr in getaddresses([value]):
        if not addr:
            continue
        name = decode_words(name)
        if not name:
            found.append(addr)
            continue
        if _SPECIALS & set(name):
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        found.append(f"{name} <{addr}>")
    return tuple(found) if found else (decode_words(value),)


def address_list(value: str) -> list[str]:
    """An address header (From, To) as SES's commonHeaders list: one entry per address,
    display names decoded (`Jane Doe <jane@example.com>`)."""
    return list(_addresses(value.strip()))
