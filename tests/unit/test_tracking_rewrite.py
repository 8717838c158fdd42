"""Open and click tracking in real messages (built with the stdlib email package).

Each case is a message a mail client parses: after rewrite() the same parser must find
the same structure, the same text parts and headers, and HTML that differs from the
original only by the rewritten URLs and the pixel.
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
from collections.abc import Iterator
from email.message import EmailMessage, Message

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.tracking.rewrite import LINE_LIMIT, MAX_LINKS, Link, link_at, links_of, rewrite

OPEN = "https://t.example/t/o/OPENTOKEN"
PIXEL = (f'<img src="{OPEN}" width="1" height="1" alt="" style="display:none">')


def click(i: int) -> str:
    return f"https://t.example/t/c/CLICK{i}"


def track(raw: bytes) -> tuple[bytes, list[Link]]:
    r = rewrite(raw, open_url=OPEN, click_url=click)
    return r.data, r.links


# An HTML newsletter with {0}, {1}... where its tracked links go, and links that stay.
TEMPLATE = """<!DOCTYPE html>
<html><head><title>Weekly &amp; news</title>
<style>a {{ color: red }} /* <a href="http://css.example/"> */</style>
<script>var s = '<a href="http://script.example/">';</script></head>
<body>
<p>Grüße &mdash; <a href="{0}" ses:tags="campaign:spring;variant:b">Spring sale</a></p>
<P><A HREF={1}>SHOUTING</A> and <a class="btn"
   href='{2}'>single quoted, across lines</a></P>
<p><a href="mailto:help@example.com">mail us</a> <a href="tel:+15551234">call</a>
<a href="#top">top</a> <a href="javascript:void(0)">js</a> <a href="/relative/path">rel</a>
<a ses:no-track href="https://no-track.example/">not tracked</a>
<img alt="<a href='http://in-attribute.example/'>" src="https://img.example/logo.png"></p>
<!-- <a href="http://commented.example/">old</a> -->
<map><area shape="rect" coords="0,0,1,1" href="{3}"></map>
</body>
</html>
"""
ORIGINAL = ["https://shop.example/sale?a=1&b=2&copy=3", "http://EXAMPLE.org/x",
            "https://example.net/%C3%BC?q=\u00fc", "https://map.example/area"]
IN_HTML = ["https://shop.example/sale?a=1&amp;b=2&copy=3", "http://EXAMPLE.org/x",
           "https://example.net/%C3%BC?q=\u00fc", "https://map.example/area"]
TEXT = "Grüße\nThe sale: https://shop.example/sale?a=1 (text parts are never rewritten)\n"


def html_source(urls: list[str]) -> str:
    return TEMPLATE.format(*urls)


def expected_html() -> str:
    out = html_source([click(i) for i in range(4)])
    out = out.replace(' ses:tags="campaign:spring;variant:b"', "")
    out = out.replace(f"<A HREF={click(1)}>", f'<A href="{click(1)}">')
    out = out.replace(f"href='{click(2)}'", f'href="{click(2)}"')
    return out.replace("</body>", PIXEL + "</body>")


EXPECTED_LINKS = [Link(0, ORIGINAL[0], (("campaign", "spring"), ("variant", "b"))),
                  Link(1, ORIGINAL[1]), Link(2, ORIGINAL[2]), Link(3, ORIGINAL[3])]


def base_message() -> EmailMessage:
    m = EmailMessage(policy=email.policy.SMTP)
    m["From"] = "News <news@sender.example>"
    m["To"] = "reader@dest.example"
    m["Subject"] = "Weekly news"
    m["Message-ID"] = "<n1@sender.example>"
    return m


def alternative(cte: str, charset: str = "utf-8") -> bytes:
    m = base_message()
    m.set_content(TEXT, cte="quoted-printable")
    m.add_alternative(html_source(IN_HTML), subtype="html", cte=cte, charset=charset)
    return m.as_bytes()


def single_html(cte: str) -> bytes:
    m = base_message()
    m.set_content(html_source(IN_HTML), subtype="html", cte=cte)
    return m.as_bytes()


def nested() -> bytes:
    """mixed > (alternative > (text, related > (html, image)), pdf, HTML attachment)."""
    m = base_message()
    m.set_content(TEXT)
    m.add_alternative(html_source(IN_HTML), subtype="html", cte="base64")
    html_part = m.get_payload()[1]
    html_part.add_related(b"\x89PNG fake", maintype="image", subtype="png", cid="<logo>")
    m.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf",
                     filename="a.pdf")
    m.add_attachment('<a href="https://attached.example/">attached</a>', subtype="html",
                     filename="page.html")
    return m.as_bytes()


def with_attached_message() -> bytes:
    inner = base_message()
    inner.set_content('<a href="https://forwarded.example/">fwd</a>', subtype="html")
    m = base_message()
    m.set_content(TEXT)
    m.add_alternative(html_source(IN_HTML), subtype="html", cte="8bit")
    m.make_mixed()
    m.attach(_rfc822(inner))
    return m.as_bytes()


def _rfc822(inner: EmailMessage) -> EmailMessage:
    part = EmailMessage(policy=email.policy.SMTP)
    part.set_content(inner)
    return part


MESSAGES = {
    "alternative, quoted-printable": alternative("quoted-printable"),
    "alternative, base64": alternative("base64"),
    "alternative, 8bit": alternative("8bit"),
    "alternative, latin-1 quoted-printable": alternative("quoted-printable", "iso-8859-1"),
    "single part html, base64": single_html("base64"),
    "single part html, quoted-printable": single_html("quoted-printable"),
    "nested mixed > alternative > related": nested(),
    "html with an attached message": with_attached_message(),
}


def parse(data: bytes) -> Message:
    return email.message_from_bytes(data, policy=email.policy.default)


def html_bodies(data: bytes) -> list[str]:
    root = parse(data)
    return [p.get_content().replace("\r\n", "\n") for p in root.walk()
            if p.get_content_type() == "text/html" and not p.is_attachment()
            and not _inside_rfc822(root, p)]


def _inside_rfc822(root: Message, target: Message) -> bool:
    return any(part.get_content_type() == "message/rfc822"
               and any(p is target for p in part.walk()) for part in root.walk())


def leaves(data: bytes) -> Iterator[tuple[str, bool, bytes]]:
    for p in parse(data).walk():
        if not p.is_multipart():
            yield p.get_content_type(), p.is_attachment(), p.get_payload(decode=True) or b""


def header_section(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


@pytest.mark.parametrize("name", list(MESSAGES))
def test_links_are_rewritten_only_in_html_and_the_pixel_added(name: str) -> None:
    raw = MESSAGES[name]
    data, links = track(raw)
    assert links == EXPECTED_LINKS
    assert html_bodies(raw) == [html_source(IN_HTML)]
    assert html_bodies(data) == [expected_html()]
    assert header_section(data) == header_section(raw)
    before, after = list(leaves(raw)), list(leaves(data))
    assert [(t, a) for t, a, _ in before] == [(t, a) for t, a, _ in after]
    for (ctype, attached, body), (_, _, new) in zip(before, after, strict=True):
        if ctype != "text/html" or attached:
            assert new == body, ctype
    assert max(len(line) for line in data.split(b"\r\n")) <= LINE_LIMIT
    assert re.search(rb"(?<!\r)\n", data) is None  # CRLF line ends only


@pytest.mark.parametrize("name", list(MESSAGES))
def test_links_of_numbers_links_as_the_rewriter_did(name: str) -> None:
    raw = MESSAGES[name]
    _, links = track(raw)
    assert links_of(raw) == links
    assert [link_at(raw, i) for i in range(len(links))] == links
    assert link_at(raw, len(links)) is None and link_at(raw, -1) is None


def test_text_parts_and_everything_outside_the_html_body_are_byte_identical() -> None:
    raw = MESSAGES["alternative, quoted-printable"]
    data, _ = track(raw)
    text_part = raw[:raw.index(b"Content-Type: text/html")]
    assert data.startswith(text_part)
    closing = raw[raw.rindex(b"\r\n--"):]
    assert data.endswith(closing)


def test_a_message_without_html_is_returned_as_the_same_object() -> None:
    m = base_message()
    m.set_content(TEXT)
    m.add_attachment(b"data", maintype="application", subtype="octet-stream")
    raw = m.as_bytes()
    result = rewrite(raw, open_url=OPEN, click_url=click)
    assert result.data is raw and result.links == []


def test_nothing_to_write_returns_the_same_object_with_the_links() -> None:
    raw = MESSAGES["alternative, base64"]
    result = rewrite(raw, open_url=None, click_url=None)
    assert result.data is raw and result.links == EXPECTED_LINKS


def test_open_only_adds_the_pixel_and_click_only_leaves_it_out() -> None:
    raw = MESSAGES["alternative, quoted-printable"]
    opened = rewrite(raw, open_url=OPEN, click_url=None).data
    assert html_bodies(opened) == [html_source(IN_HTML).replace("</body>", PIXEL + "</body>")]
    clicked = rewrite(raw, open_url=None, click_url=click).data
    assert html_bodies(clicked) == [expected_html().replace(PIXEL, "")]


def test_every_html_body_part_gets_the_pixel_once() -> None:
    m = base_message()
    m.set_content("<p>first <a href='https://a.example/'>a</a></p>", subtype="html")
    m.make_mixed()
    second = EmailMessage(policy=email.policy.SMTP)
    second.set_content("<html><body>second</body></html>", subtype="html")
    m.attach(second)
    data, links = track(m.as_bytes())
    bodies = html_bodies(data)
    assert len(bodies) == 2 and all(b.count(PIXEL) == 1 for b in bodies)
    assert bodies[1] == f"<html><body>second{PIXEL}</body></html>\n"
    assert bodies[0] == f"<p>first <a href=\"{click(0)}\">a</a></p>{PIXEL}\n"
    assert links == [Link(0, "https://a.example/")]


def test_a_long_7bit_line_is_broken_before_the_rewritten_href() -> None:
    filler = "x" * 960
    src = f'<p>{filler}<a href="https://l.example/">l</a> <a href="https://m.example/">m</a></p>'
    m = base_message()
    m.set_content(src, subtype="html", cte="7bit")
    raw = m.as_bytes()
    data, links = track(raw)
    assert max(len(line) for line in data.split(b"\r\n")) <= LINE_LIMIT
    body = html_bodies(data)[0]
    assert "\nhref=" in body  # the break is whitespace inside the tag
    assert body.replace("\nhref=", "href=").replace("\n<img", "<img") == (
        f'<p>{filler}<a href="{click(0)}">l</a> <a href="{click(1)}">m</a></p>{PIXEL}\n')
    assert len(links) == 2


ATTRIBUTE_CASES = [
    # (href as written, URL the link opens, tracked)
    ('"https://a.example/?x=1&amp;y=2"', "https://a.example/?x=1&y=2", True),
    ('"https://a.example/?x=1&copy=2"', "https://a.example/?x=1&copy=2", True),
    ('"https://a.example/&copy;"', "https://a.example/\u00a9", True),
    ('"&#104;ttps://a.example/"', "https://a.example/", True),
    ('"  https://a.example/ \n"', "https://a.example/", True),
    ('"HTTPS://A.EXAMPLE/"', "HTTPS://A.EXAMPLE/", True),
    ("https://a.example/unquoted", "https://a.example/unquoted", True),
    ('"mailto:x@a.example"', "", False),
    ('"tel:+1555"', "", False),
    ('"#section"', "", False),
    ('"javascript:alert(1)"', "", False),
    ('"/local"', "", False),
    ('"//cdn.example/x"', "", False),
    ('"ftp://a.example/"', "", False),
    ('""', "", False),
]


@pytest.mark.parametrize("href,url,tracked", ATTRIBUTE_CASES)
def test_hrefs_as_a_browser_reads_them(href: str, url: str, tracked: bool) -> None:
    m = base_message()
    m.set_content(f"<a href={href}>x</a>", subtype="html", cte="quoted-printable")
    raw = m.as_bytes()
    _, links = track(raw)
    assert links == ([Link(0, url)] if tracked else [])


@pytest.mark.parametrize("html,urls", [
    ('<a href="https://x.example/">', ["https://x.example/"]),                  # no </a>
    ('<a href="https://x.example/', []),                                        # EOF in value
    ("<a href=https://x.example/", []),                                         # EOF in tag
    ('<a href="https://x.example/" href="https://y.example/">', ["https://x.example/"]),
    ('<ABBR href="https://x.example/">', []),                                   # not <a>
    ('<a\thref="https://x.example/"/>', ["https://x.example/"]),
    ('<a ses:tags="k:v"href="https://x.example/">', ["https://x.example/"]),
    ("<!--><a href='https://x.example/'>", ["https://x.example/"]),            # empty comment
    ('<!-- <a href="https://x.example/">', []),                                 # open comment
    ('<script><a href="https://x.example/"></script >', []),
    ('<textarea><a href="https://x.example/"></textarea>', []),
    ('<p title="a>b"><a href="https://x.example/">', ["https://x.example/"]),
])
def test_odd_html_is_read_as_a_browser_reads_it(html: str, urls: list[str]) -> None:
    m = base_message()
    m.set_content(html, subtype="html", cte="8bit")
    raw = m.as_bytes()
    data, links = track(raw)
    assert [link.url for link in links] == urls
    assert links_of(raw) == links
    assert html_bodies(data)[0].count(PIXEL) == 1


def test_ses_tags_are_parsed_and_removed_without_joining_attributes() -> None:
    m = base_message()
    m.set_content('<a ses:tags="a:1; b : 2 ;;c"href="https://x.example/">x</a>',
                  subtype="html", cte="8bit")
    data, links = track(m.as_bytes())
    assert links == [Link(0, "https://x.example/", (("a", "1"), ("b", "2"), ("c", "")))]
    assert html_bodies(data)[0].startswith(f'<a href="{click(0)}">x</a>')


@pytest.mark.parametrize("charset", [b"base64", b"rot13", b"idna", b"utf-7", b"cp500",
                                     b"x-no-such-charset", b"utf-8\x00"])
def test_charsets_the_scan_cannot_read_are_left_alone(charset: bytes) -> None:
    raw = raw_html("<a href='https://x.example/é'>x</a>".encode()).replace(
        b"charset=utf-8", b"charset=" + charset)
    assert rewrite(raw, open_url=OPEN, click_url=click).data is raw


def test_utf16_html_is_left_alone() -> None:
    m = base_message()
    m.set_content('<a href="https://x.example/">x</a>'.encode("utf-16"), maintype="text",
                  subtype="html", cte="base64", params={"charset": "utf-16"})
    raw = m.as_bytes()
    assert rewrite(raw, open_url=OPEN, click_url=click).data is raw


# --- hostile input: bounded, never raises ------------------------------------------------

def raw_html(body: bytes, cte: bytes = b"8bit") -> bytes:
    return (b"From: a@x.example\r\nTo: b@y.example\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: " + cte
            + b"\r\n\r\n" + body)


def test_a_10mb_single_line_html_is_bounded() -> None:
    raw = raw_html(b'<a href="https://x.example/">' * 350_000)
    assert len(raw) > 10_000_000
    result = rewrite(raw, open_url=OPEN, click_url=click)
    assert result.data is raw and result.links == []   # over the size bound: as it is


def test_many_links_are_numbered_up_to_the_bound() -> None:
    raw = raw_html(b'<a href="https://x.example/">x</a>' * (MAX_LINKS + 50) + b"\r\n")
    data, links = track(raw)
    assert len(links) == MAX_LINKS
    assert data.count(b"https://x.example/") == 50


def test_a_million_tags_are_bounded() -> None:
    raw = raw_html(b"<b>" * 1_000_000 + b'<a href="https://x.example/">')
    assert [link.url for link in links_of(raw)] == ["https://x.example/"]
    raw = raw_html(b"<a>" * 1_000_000 + b'<a href="https://x.example/">')
    result = rewrite(raw, open_url=OPEN, click_url=click)
    assert result.data is raw and result.links == []  # tag budget spent: as it is


def test_unterminated_constructs_over_megabytes_are_bounded() -> None:
    for body in (b"<a href=\"" + b"x" * 3_000_000, b"<a " + b"x=\" " * 700_000,
                 b"<!--" * 700_000, b"<script>" + b"<a href=x>" * 200_000,
                 b"<p " * 1_000_000, b"<a href=https://x.example/ " * 100_000):
        raw = raw_html(body)
        result = rewrite(raw, open_url=OPEN, click_url=click)
        assert links_of(raw) == result.links
        assert len(result.links) <= 1


def nest(depth: int) -> bytes:
    head = b"From: a@x.example\r\nMIME-Version: 1.0\r\n"
    body = b"Content-Type: text/html\r\n\r\n<a href='https://deep.example/'>d</a>\r\n"
    for i in range(depth):
        b = b"b%d" % i
        body = (b"Content-Type: multipart/mixed; boundary=" + b + b"\r\n\r\n--" + b
                + b"\r\n" + body + b"\r\n--" + b + b"--\r\n")
    return head + body


def test_10k_nested_parts_are_bounded() -> None:
    raw = nest(10_000)
    result = rewrite(raw, open_url=OPEN, click_url=click)
    assert result.data is raw and result.links == []
    shallow = nest(3)
    assert links_of(shallow) == [Link(0, "https://deep.example/")]


def test_10k_sibling_parts_are_bounded() -> None:
    part = b"--s\r\nContent-Type: text/html\r\n\r\n<a href='https://s.example/'>s</a>\r\n"
    raw = (b"From: a@x.example\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=s\r\n\r\n" + part * 10_000 + b"--s--\r\n")
    data, links = track(raw)
    assert 0 < len(links) <= 500
    assert data.count(PIXEL.encode()) == len(links)


def test_broken_base64_is_left_alone() -> None:
    raw = raw_html(b"PGEgaHJlZj0naHR0cHM6Ly94LmV4YW1wbGUvJz4=!!*\r\nnot base64 at all\r\n",
                   b"base64")
    assert rewrite(raw, open_url=OPEN, click_url=click).data is raw


def test_an_unknown_transfer_encoding_is_left_alone() -> None:
    raw = raw_html(b"<a href='https://x.example/'>x</a>", b"x-uuencode")
    assert rewrite(raw, open_url=OPEN, click_url=click).data is raw


def test_base64_is_refolded_to_76_columns() -> None:
    body = base64.b64encode(b'<a href="https://x.example/">x</a>' * 100)  # one long line
    raw = raw_html(body + b"\r\n", b"base64")
    data, links = track(raw)
    encoded = data.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in encoded.split(b"\r\n")) <= 76
    assert len(links) == 100
    assert html_bodies(data)[0].count(click(99)) == 1


# --- fuzz ---------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4000))
def test_rewrite_never_raises_on_any_bytes(raw: bytes) -> None:
    result = rewrite(raw, open_url=OPEN, click_url=click)
    assert links_of(raw) == result.links
    if b"html" not in raw.lower():
        assert result.data is raw


_HTMLISH = st.text(alphabet=st.sampled_from(list("<>/=\"' \n\t&;#-!abehfrtps:.xAHREF")),
                   max_size=300)


@settings(max_examples=200, deadline=None)
@given(_HTMLISH, st.sampled_from(["8bit", "quoted-printable", "base64"]))
def test_rewrite_never_raises_on_odd_html(html: str, cte: str) -> None:
    m = base_message()
    m.set_content(html + "\n", subtype="html", cte=cte)
    raw = m.as_bytes()
    result = rewrite(raw, open_url=OPEN, click_url=click)
    assert links_of(raw) == result.links
    assert parse(result.data).get_content_type() == "text/html"
    assert all(len(line) <= LINE_LIMIT for line in result.data.split(b"\r\n"))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=200), min_size=1, max_size=4),
       st.sampled_from(["8bit", "quoted-printable", "base64"]))
def test_a_message_without_text_html_is_never_changed(texts: list[str], cte: str) -> None:
    m = base_message()
    m.set_content(texts[0] + "<a href='https://x.example/'>x</a>", cte=cte)
    for extra in texts[1:]:
        m.add_attachment(extra.encode(), maintype="application", subtype="octet-stream")
    raw = m.as_bytes()
    result = rewrite(raw, open_url=OPEN, click_url=click)
    assert result.data is raw and result.links == []
