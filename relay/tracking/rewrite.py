"""Open and click tracking in a message's HTML (PURE): link rewriting and the open pixel.

`rewrite()` walks the MIME structure of the raw message at the byte level and changes
only the bodies of its text/html parts; every other byte (the header sections of the
message and of every part, text/plain and attachment parts, preambles and epilogues) is
copied as it was, and a message with nothing to change is returned as the same object.

In each HTML body part (a text/html part not marked `Content-Disposition: attachment`,
outside attached messages: message/rfc822 parts are not entered):
- the href of every <a> and <area> whose URL (HTML character references decoded, leading
  and trailing spaces removed as a browser does) is http: or https: becomes
  `click_url(index)`; links marked `ses:no-track`, mailto:, tel:, "#anchor",
  javascript: and relative links are left exactly as they are. A rewritten link's
  `ses:tags="name:value;name2:value2"` becomes the Link's tags and is removed.
  Links are numbered in document order across the message's HTML parts, from 0.
- the open pixel `<img src="open_url" width="1" height="1" alt="" style="display:none">`
  goes before `</body>` (at the end of the part when it has none). Every HTML body part
  gets it: a client shows one alternative, whichever it picks carries the pixel, and a
  client showing several parts loads the one URL once.

`links_of(raw)` is the same walk without writing: at click time the link index of a
token is looked up in the stored message, so only links that were in the message can be
redirected to.

The HTML is scanned by a small tokenizer that follows the HTML parsing rules where they
matter here: comments, <script>/<style> and the other raw-text elements, quoted and
unquoted attribute values, upper-case names, the first of duplicate attributes. The body is
decoded from its Content-Transfer-Encoding (7bit/8bit/binary, quoted-printable, base64;
an unknown one or broken base64 leaves the part alone) and worked on as bytes of its
charset (charsets in which "<" or a quote can be part of another character, such as UTF-16
or ISO-2022-JP, are left alone). A changed part is re-encoded in its own encoding:
quoted-printable and base64 lines of at most 76 characters; in 7bit/8bit a line a rewrite
made longer than 998 octets is broken before a rewritten href or the pixel (whitespace
inside a tag or between elements, which HTML ignores).

Bounds (hostile input is normal here; nothing raises, everything is linear): MIME nesting
depth, number of parts, a part's header section, an HTML part's size, the number of tags
and of links. A part past a bound is sent as it is.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import html.entities
import re
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

MAX_DEPTH = 16             # multipart nesting
MAX_PARTS = 500            # MIME entities walked in one message
MAX_HEADER = 64 * 1024     # one part's header section
MAX_HTML = 4 * 1024 * 1024  # an HTML part's encoded body
MAX_TAGS = 200_000         # tags read one by one in a message (links, comments, ...)
MAX_LINKS = 1000           # links numbered in one message; later ones are not tracked
MAX_TAG = 16 * 1024        # one start tag, attributes included
MAX_TAGS_PER_LINK = 50     # ses:tags pairs kept per link
LINE_LIMIT = 998

_HTML5 = html.entities.html5


@dataclass(frozen=True)
class Link:
    index: int
    url: str                               # the original URL, character references decoded
    tags: tuple[tuple[str, str], ...] = ()  # ses:tags, in order


@dataclass(frozen=True)
class Rewritten:
    data: bytes
    links: list[Link]


# --- the MIME walk -----------------------------------------------------------------------

@dataclass(frozen=True)
class _HtmlPart:
    start: int      # the body's span in the raw message
    end: int
    encoding: str   # Content-Transfer-Encoding, lower-case
    charset: str


_FIELD = re.compile(
    rb"^(content-type|content-transfer-encoding|content-disposition)[ \t]*:"
    rb"([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.I | re.M)
_PARAM = re.compile(r'([^\s=;"]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"?|([^\s;]*))', re.S)
_TYPE = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+/[a-z0-9!#$%&'*+.^_`|~-]+")


def _fields(block: bytes) -> dict[bytes, bytes]:
    """The first Content-Type, -Transfer-Encoding and -Disposition of a header block."""
    found: dict[bytes, bytes] = {}
    for m in _FIELD.finditer(block):
        found.setdefault(m.group(1).lower(), re.sub(rb"\r?\n", b"", m.group(2)).strip())
    return found


def _content_type(value: bytes | None, default: str) -> tuple[str, dict[str, str]]:
    if value is None:
        return default, {}
    text = value.decode("latin-1")
    main, _, rest = text.partition(";")
    main = main.strip().lower()
    if not _TYPE.fullmatch(main):
        return default, {}
    params: dict[str, str] = {}
    for m in _PARAM.finditer(rest):
        val = re.sub(r"\\(.)", r"\1", m.group(2)) if m.group(2) is not None else m.group(3)
        params.setdefault(m.group(1).lower(), val)
    return main, params


def _split_header(raw: bytes, start: int, end: int) -> int:
    """Where the body of the entity at raw[start:end] starts; -1 when its header section
    does not end within MAX_HEADER."""
    if raw.startswith(b"\r\n", start, end):
        return start + 2
    if raw.startswith(b"\n", start, end):
        return start + 1
    limit = min(end, start + MAX_HEADER)
    crlf = raw.find(b"\n\r\n", start, limit)
    lf = raw.find(b"\n\n", start, crlf + 1 if crlf >= 0 else limit)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf + 3
    if lf >= 0:
        return lf + 2
    return -1


def _children(raw: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """The spans of the body parts of a multipart body at raw[start:end] (RFC 2046: the
    line break before a delimiter belongs to the delimiter). Without a close delimiter
    the last part runs to the end, as mail clients read it."""
    delim = b"--" + boundary
    spans: list[tuple[int, int]] = []
    current = -1
    search = start
    first = True
    while len(spans) <= MAX_PARTS:
        if first and raw.startswith(delim, start, end):
            hit, part_end = start, start
        else:
            k = raw.find(b"\n" + delim, search, end)
            if k < 0:
                break
            hit = k + 1
            part_end = k - 1 if k > start and raw[k - 1] == 0x0D else k
        first = False
        after = hit + len(delim)
        close = raw.startswith(b"--", after, end)
        nxt = end
        if not close:
            p = after
            while p < end and raw[p] in (0x20, 0x09):
                p += 1
            if p < end and raw[p] not in (0x0D, 0x0A):
                search = after  # a longer boundary that starts with this one
                continue
            nxt = p + 2 if raw.startswith(b"\r\n", p, end) else min(p + 1, end)
        if current >= 0:
            spans.append((current, max(current, part_end)))
        if close:
            return spans
        current = nxt
        search = nxt - 1 if nxt > start and raw[nxt - 1] == 0x0A else nxt
    if current >= 0 and len(spans) <= MAX_PARTS:
        spans.append((current, end))
    return spans


def _html_parts(raw: bytes) -> list[_HtmlPart]:
    found: list[_HtmlPart] = []
    budget = [MAX_PARTS]

    def walk(start: int, end: int, depth: int, default: str) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            return
        body = _split_header(raw, start, end)
        if body < 0:
            return
        fields = _fields(raw[start:body])
        ctype, params = _content_type(fields.get(b"content-type"), default)
        if ctype.startswith("multipart/"):
            boundary = params.get("boundary", "")
            if depth >= MAX_DEPTH or not 0 < len(boundary) <= 200:
                return
            inner = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
            for s, e in _children(raw, body, end, boundary.encode("latin-1")):
                walk(s, e, depth + 1, inner)
                if budget[0] < 0:
                    return
        elif ctype == "text/html":
            disposition = fields.get(b"content-disposition", b"").split(b";")[0]
            if disposition.strip().lower() == b"attachment":
                return
            encoding = fields.get(b"content-transfer-encoding", b"7bit").split(b"(")[0]
            found.append(_HtmlPart(body, end, encoding.strip().lower().decode("latin-1"),
                                   params.get("charset", "us-ascii").strip().lower()))

    walk(0, len(raw), 0, "text/plain")
    return found


# --- decoding and encoding a part's body ------------------------------------------------

_IDENTITY = ("7bit", "8bit", "binary")
# Charsets in which the bytes of "<", ">", "=" and the quotes can be part of another
# character: the byte-level scan would misread them.
_NOT_ASCII_SAFE = ("utf_16", "utf_32", "utf_7", "iso2022", "hz", "cp1026", "cp037",
                   "cp273", "cp424", "cp500", "cp875", "cp1140", "idna", "punycode",
                   "raw_unicode_escape", "unicode_escape", "undefined")


_PROBE = b"<a href=\"x\" b='y'>&amp;</a>"


def _codec(charset: str) -> str | None:
    """The Python codec of an ASCII-compatible charset; None for one the scan must not
    touch (unknown, or not ASCII-compatible)."""
    try:
        name = codecs.lookup(charset[:64]).name.replace("-", "_")
        if name.startswith(_NOT_ASCII_SAFE) or _PROBE.decode(name) != _PROBE.decode():
            return None  # not ASCII-compatible, or not a text encoding ("base64", "rot13")
    except (LookupError, ValueError, TypeError):
        return None
    return name


def _decode(body: bytes, encoding: str) -> bytes | None:
    if encoding in _IDENTITY:
        return body
    if encoding == "quoted-printable":
        return binascii.a2b_qp(body)
    if encoding == "base64":
        try:
            return binascii.a2b_base64(body.translate(None, b" \t\r\n"), strict_mode=True)
        except (binascii.Error, ValueError):
            return None
    return None


def _encode(data: bytes, encoding: str, nl: bytes, original: bytes) -> bytes:
    if encoding == "quoted-printable":
        out = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
        if nl == b"\r\n":
            out = out.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    elif encoding == "base64":
        out = base64.encodebytes(data)
        if nl == b"\r\n":
            out = out.replace(b"\n", b"\r\n")
        if not original.endswith(b"\n"):
            out = out[:-len(nl)] if out.endswith(nl) else out
        return out
    else:
        return data
    if original.endswith(b"\n") and not out.endswith(b"\n"):
        out += nl
    return out


# --- the HTML scan ----------------------------------------------------------------------

_TAG = re.compile(rb"<(?:(!--)|([!?])|(/?)([A-Za-z][^\t\n\f\r />]*))")
# One attribute (or the end of the tag) of a start tag; a quoted value records whether
# its closing quote was found.
_ATTR = re.compile(
    rb"[\t\n\f\r /]*+(?:(>)|([^\t\n\f\r />][^\t\n\f\r />=]*+)"
    rb"(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+"
    rb"(?:\"([^\"]*+)(\"?)|'([^']*+)('?)|([^\t\n\f\r >]*+)))?)")
# The rest of any other start tag, up to and including its ">".
_TAG_REST_SOURCE = (
    rb"(?:[\t\n\f\r /]|[^\t\n\f\r />][^\t\n\f\r />=]*+"
    rb"(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+(?:\"[^\"]*+\"|'[^']*+'|[^\t\n\f\r >]*+))?+)*+>")
_TAG_REST = re.compile(_TAG_REST_SOURCE)
# What the scan has nothing to do with, skipped in one C-level match: text, whole start
# tags other than <a>, <area> and the raw-text elements, end tags other than </body>, and
# a "<" that opens no tag. It stops at anything else (and at a tag it cannot finish), which
# the loop then reads one token at a time.
_SKIP = re.compile(
    rb"(?:[^<]++"
    rb"|<(?!(?i:a|area|script|style|title|textarea|xmp|iframe|noembed|noframes)"
    rb"[\t\n\f\r />])[A-Za-z][^\t\n\f\r />]*+" + _TAG_REST_SOURCE +
    rb"|</(?!(?i:body)[\t\n\f\r />])[A-Za-z][^>]*+>"
    rb"|<(?![A-Za-z!?/])"
    rb")*+")
_RAW_TEXT = {name: re.compile(rb"</" + name + rb"[\t\n\f\r />]", re.I) for name in (
    b"script", b"style", b"title", b"textarea", b"xmp", b"iframe", b"noembed",
    b"noframes")}
_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[A-Za-z][A-Za-z0-9]*;?)")
_TRACKABLE = re.compile(r"https?://", re.I)
_C0_AND_SPACE = "".join(map(chr, range(0x21)))
_TAB_NEWLINE = dict.fromkeys(map(ord, "\t\n\r"))
_LONG_LINE = re.compile(rb"[^\n]{%d}" % (LINE_LIMIT + 1))


def _unescape_attribute(text: str) -> str:
    """HTML character references in an attribute value, as a browser decodes them: a
    named reference without ";" followed by "=" or a letter or digit stays as it is
    ("?a=1&copy=2" keeps its "&copy")."""
    if "&" not in text:
        return text
    if "&" not in text.replace("&amp;", ""):  # the usual case: query strings
        return text.replace("&amp;", "&")

    def one(m: re.Match[str]) -> str:
        ref = m.group(1)
        if ref[0] == "#":
            return html.unescape(m.group(0))
        if ref.endswith(";"):
            return _HTML5.get(ref, m.group(0))
        if ref in _HTML5 and text[m.end():m.end() + 1] != "=":
            return _HTML5[ref]
        return m.group(0)

    return _CHARREF.sub(one, text)


def _text(value: bytes, codec: str) -> str:
    try:
        return value.decode(codec, "replace")
    except (UnicodeError, LookupError):  # a codec without "replace": read it as Latin-1
        return value.decode("latin-1")


def _url_of(value: bytes, codec: str) -> str:
    """An href value as the URL a browser follows: references decoded, C0 controls and
    spaces trimmed, tabs and line breaks removed."""
    text = _unescape_attribute(_text(value, codec))
    return text.strip(_C0_AND_SPACE).translate(_TAB_NEWLINE)


def _tags_of(value: bytes, codec: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for item in _unescape_attribute(_text(value, codec)).split(";"):
        name, _, val = item.partition(":")
        name, val = name.strip()[:256], val.strip()[:256]
        if name and len(pairs) < MAX_TAGS_PER_LINK:
            pairs.append((name, val))
    return tuple(pairs)


def _attr_escape(url: str) -> bytes:
    return html.escape(url, quote=True).encode("ascii", "xmlcharrefreplace")


class _Attr(NamedTuple):
    name: bytes      # lower-case
    value: bytes | None
    start: int       # the attribute with the separators before it
    end: int
    name_start: int


def _attributes(data: bytes, pos: int) -> tuple[list[_Attr], int]:
    """The attributes of the start tag whose name ends at `pos` and the position after
    its ">"; -1 when the tag does not end (or a quote does not close) within MAX_TAG."""
    limit = min(len(data), pos + MAX_TAG)
    attrs: list[_Attr] = []
    match = _ATTR.match
    while True:
        m = match(data, pos, limit)
        if m is None:
            return attrs, -1
        end_tag, name, dq, dq_end, sq, sq_end, bare = m.groups()
        if end_tag:
            return attrs, m.end()
        if dq is not None:
            if not dq_end:
                return attrs, -1
            value: bytes | None = dq
        elif sq is not None:
            if not sq_end:
                return attrs, -1
            value = sq
        else:
            value = bare
        pos = m.end()
        attrs.append(_Attr(name.lower(), value, m.start(), pos, m.start(2)))


class _Budget:
    def __init__(self) -> None:
        self.tags = MAX_TAGS
        self.links = MAX_LINKS


class _TooBig(Exception):
    """A bound was reached: the part is left as it is."""


def _scan(data: bytes, codec: str, links: list[Link], budget: _Budget, *,
          click_url: Callable[[int], str] | None, open_url: str | None,
          nl: bytes, fold: bool) -> bytes | None:
    """Number the links of one decoded HTML body (appended to `links`) and, when there is
    something to write, return the rewritten body; None when nothing changes. Raises
    _TooBig past a bound (the caller drops this part's links)."""
    # (start, end, replacement, a line may break at start): spans of `data` to replace
    edits: list[tuple[int, int, bytes, bool]] = []
    body_close = -1
    pos = 0
    n = len(data)
    while pos < n:
        skipped = _SKIP.match(data, pos)
        m = _TAG.search(data, skipped.end() if skipped is not None else pos)
        if m is None:
            break
        budget.tags -= 1
        if budget.tags < 0:
            raise _TooBig
        if m.group(1):   # a comment: nothing in it is a tag ("<!-->" is an empty one)
            if data.startswith(b">", m.end()) or data.startswith(b"->", m.end()):
                pos = data.find(b">", m.end()) + 1
                continue
            k = data.find(b"-->", m.end())
            if k < 0:
                break
            pos = k + 3
            continue
        if m.group(2):   # <!DOCTYPE>, <![CDATA[...]]>, <?xml ...?>
            k = data.find(b">", m.end())
            if k < 0:
                break
            pos = k + 1
            continue
        name = m.group(4).lower()
        if m.group(3):   # an end tag
            if name == b"body":
                body_close = m.start()
            k = data.find(b">", m.end())
            if k < 0:
                break
            pos = k + 1
            continue
        if name not in (b"a", b"area"):
            rest = _TAG_REST.match(data, m.end(), min(n, m.end() + MAX_TAG))
            if rest is None:  # unterminated within the bound: skip past it
                k = data.find(b">", min(n, m.end() + MAX_TAG))
                if k < 0:
                    break
                pos = k + 1
                continue
            pos = rest.end()
            raw_text = _RAW_TEXT.get(name)
            if raw_text is not None:
                close = raw_text.search(data, pos)
                if close is None:
                    break
                pos = close.start()
            continue
        attrs, end = _attributes(data, m.end())
        if end < 0:
            k = data.find(b">", min(n, m.end() + MAX_TAG))
            if k < 0:
                break
            pos = k + 1
            continue
        pos = end
        found = _link(attrs, codec, len(links), budget)
        if found is None:
            continue
        link, href, tags = found
        links.append(link)
        if click_url is not None:
            edits.extend(_link_edits(data, href, tags, click_url(link.index)))
    if open_url is not None:
        at = body_close if body_close >= 0 else len(data.rstrip(b"\r\n"))
        edits.append((at, at, b"<img src=\"" + _attr_escape(open_url)
                      + b"\" width=\"1\" height=\"1\" alt=\"\" style=\"display:none\">", True))
    if not edits:
        return None
    edits.sort(key=lambda e: (e[0], e[1]))
    out: list[bytes] = []
    breaks: list[int] = []   # offsets in the output where a line may be broken
    written = size = 0
    for start, stop, replacement, may_break in edits:
        chunk = data[written:start]
        if may_break:
            breaks.append(size + len(chunk))
        out.append(chunk)
        out.append(replacement)
        size += len(chunk) + len(replacement)
        written = stop
    out.append(data[written:])
    result = b"".join(out)
    if fold and _LONG_LINE.search(result):
        result = _fold(result, breaks, nl)
    return result


def _link(attrs: list[_Attr], codec: str, index: int,
          budget: _Budget) -> tuple[Link, _Attr, _Attr | None] | None:
    """The trackable link of an <a> or <area>'s attributes (with its href and ses:tags
    attributes), or None."""
    href = tags = None
    for a in attrs:
        if a.name == b"href":
            href = href or a
        elif a.name == b"ses:tags":
            tags = tags or a
        elif a.name == b"ses:no-track":
            return None
    if href is None or href.value is None or budget.links <= 0:
        return None
    url = _url_of(href.value, codec)
    if not _TRACKABLE.match(url):
        return None
    budget.links -= 1
    pairs = _tags_of(tags.value, codec) if tags is not None and tags.value is not None else ()
    return Link(index, url, pairs), href, tags


def _link_edits(data: bytes, href: _Attr, tags: _Attr | None,
                target: str) -> list[tuple[int, int, bytes, bool]]:
    """The href pointed at `target` and the ses:tags attribute removed."""
    edits = [(href.name_start, href.end, b'href="' + _attr_escape(target) + b'"', True)]
    if tags is not None:
        # "<a ses:tags=x href=y>" loses " ses:tags=x"; "<a ses:tags="x"href=y>" keeps a space
        follows = data[tags.end:tags.end + 1]
        gap = b"" if follows in (b"", b">", b"/", b" ", b"\t", b"\n", b"\r", b"\f") else b" "
        edits.append((tags.start, tags.end, gap, False))
    return edits


def _fold(data: bytes, breaks: list[int], nl: bytes) -> bytes:
    """Break lines over LINE_LIMIT at the given offsets (each the start of a rewritten
    href or of the pixel), as late in each line as they allow."""
    pieces: list[bytes] = []
    line_start = 0
    n = len(data)
    while line_start < n:
        end = data.find(b"\n", line_start)
        end = n if end < 0 else end
        content_end = end - 1 if end > line_start and data[end - 1] == 0x0D else end
        while content_end - line_start > LINE_LIMIT:
            i = bisect_right(breaks, line_start + LINE_LIMIT) - 1
            if i < 0 or breaks[i] <= line_start:
                i = bisect_right(breaks, line_start)  # none early enough: the first one
                if i >= len(breaks) or breaks[i] >= content_end:
                    break
            cut = breaks[i]
            pieces.append(data[line_start:cut])
            pieces.append(nl)
            line_start = cut
        pieces.append(data[line_start:end + 1])
        line_start = end + 1
    return b"".join(pieces)


# --- the message ------------------------------------------------------------------------

def _walk(raw: bytes, open_url: str | None,
          click_url: Callable[[int], str] | None) -> Rewritten:
    parts = _html_parts(raw)
    links: list[Link] = []
    if not parts:
        return Rewritten(raw, links)
    writing = open_url is not None or click_url is not None
    nl = b"\n" if raw.find(b"\r\n", 0, MAX_HEADER) < 0 <= raw.find(b"\n", 0, MAX_HEADER) \
        else b"\r\n"
    budget = _Budget()
    edits: list[tuple[int, int, bytes]] = []
    for part in parts:
        codec = _codec(part.charset)
        if codec is None or part.end - part.start > MAX_HTML:
            continue
        body = raw[part.start:part.end]
        decoded = _decode(body, part.encoding)
        if decoded is None:
            continue
        mark = len(links)
        try:
            new = _scan(decoded, codec, links, budget,
                        click_url=click_url if writing else None,
                        open_url=open_url if writing else None,
                        nl=nl, fold=part.encoding in _IDENTITY)
        except _TooBig:
            del links[mark:]  # this part and every later one are sent as they are
            break
        if new is not None:
            edits.append((part.start, part.end, _encode(new, part.encoding, nl, body)))
    if not edits:
        return Rewritten(raw, links)
    out: list[bytes] = []
    prev = 0
    for start, end, new in edits:
        out.append(raw[prev:start])
        out.append(new)
        prev = end
    out.append(raw[prev:])
    return Rewritten(b"".join(out), links)


def rewrite(raw: bytes, *, open_url: str | None,
            click_url: Callable[[int], str] | None) -> Rewritten:
    """The message with its HTML links pointing at `click_url(index)` (None: links left
    as they are) and the open pixel at `open_url` (None: no pixel), and its trackable
    links in order. Never raises on any input; see the module docstring."""
    return _walk(raw, open_url, click_url)


def links_of(raw: bytes) -> list[Link]:
    """The trackable links of a message, numbered as `rewrite()` numbers them."""
    return _walk(raw, None, None).links


def link_at(raw: bytes, index: int) -> Link | None:
    """The link a click token's index names, or None when the message has no such link."""
    links = links_of(raw)
    return links[index] if 0 <= index < len(links) else None
