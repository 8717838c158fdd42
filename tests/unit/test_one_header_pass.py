"""One reading of the header section at DATA gives what the readers gave separately:
`scan_header_section` (the refusal facts, the From), `extract_headers` (the common
headers and the SES tags), events' `header_fields` (every field of the stored message,
cut at 10 KB) and the submitter's configsets `requested_set` / `strip_headers`.
Checked on generated header sections: any field names (standard, odd letter case,
obsolete WSP before the colon, names the scan does not take as fields), folded values,
text that is not UTF-8, stray lines that end the section, the configuration-set and tag
fields, and sections long enough to be cut at 10 KB or to end past the 256 KB the events
reader looks at."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import configsets
from relay.events.headers import SCAN_LIMIT, header_fields, without_fields
from relay.smtp.message import (
    SINGLE_FIELDS,
    complete_and_list_fields,
    complete_header_section,
    extract_headers,
    header_refusal,
    received_header,
    scan_header_section,
)

TRACE = received_header(helo="c", client_ip="127.0.0.1", hostname="relay.test", tls=False,
                        authenticated=False, recipients=["r@dest.test"], now=1_796_000_000.0)
MAX_HOPS = 3
NAMES = [*SINGLE_FIELDS, "Received", "X-Mailer", "MIME-Version", "X-SES-MESSAGE-TAGS",
         "X-SES-CONFIGURATION-SET", "X-Relay-Configuration-Set", "List-Unsubscribe"]


def _name() -> st.SearchStrategy[bytes]:
    standard = st.tuples(st.sampled_from(NAMES), st.sampled_from(["as is", "upper", "lower"]))
    return st.one_of(
        standard.map(lambda t: (t[0] if t[1] == "as is" else getattr(t[0], t[1])()).encode()),
        st.binary(min_size=1, max_size=6).filter(lambda b: b":" not in b and b"\r" not in b
                                                 and b"\n" not in b),
        st.sampled_from([b"X-Caf\xc3\xa9", b"Two Words", b"", b"From "]))


_TEXT = st.one_of(
    st.text(alphabet="abc xyz@.<>=,;:\t\u00e9\u2028\x0b\x1c", max_size=16).map(str.encode),
    st.binary(max_size=10).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.sampled_from([b"a=1, b=2", b"<u@x.test>", b" " * 600, b"v" * 900]))

# A line of a header section: a field (perhaps folded), or something that is not one.
_FIELD_LINE = st.tuples(_name(), st.sampled_from([b"", b" ", b"\t", b" \t"]), _TEXT,
                        st.lists(_TEXT, max_size=2)).map(
    lambda t: t[0] + t[1] + b":" + t[2] + b"".join(b"\r\n\t" + c for c in t[3]) + b"\r\n")
_OTHER_LINE = st.sampled_from([b"From sender@x.test Mon Dec  7 10:00:00 2026\r\n",
                               b"no colon here\r\n", b": no name\r\n", b" stray fold\r\n"])
_LINES = st.lists(st.one_of(_FIELD_LINE, _FIELD_LINE, _FIELD_LINE, _OTHER_LINE), max_size=24)
_REST = st.sampled_from([b"\r\nbody\r\nFrom: in the body\r\n", b"", b"\r\n",
                         b"text without a colon\r\nSubject: after\r\n\r\nbody\r\n"])


def check_against_three_readers(message: bytes, max_hops: int = MAX_HOPS, *,
                                trace: int = len(TRACE), hostname: str = "relay.test",
                                ) -> bool | None:
    """The DATA handler's one reading against each reader on its own (the message's
    first `trace` bytes are the trace field). None: refused; else whether the header
    fields came from the one reading (not read again)."""
    section = scan_header_section(message, trace, max_hops)
    if header_refusal(section, max_hops) is not None:
        return None
    body, added, known = complete_and_list_fields(
        message, section, hostname=hostname, now=1_796_000_000.0, unique="u-1")
    assert (body, added) == complete_header_section(
        message, section, hostname=hostname, now=1_796_000_000.0, unique="u-1")
    if crlf_only(message):  # as DATA leaves every message
        # extract_headers reads the section from its start, hops without limit.
        alone_headers, alone_tags = extract_headers(message[trace:])
        assert (section.headers, section.tags) == (alone_headers, alone_tags)
        assert section.from_value == alone_headers.get("From")
    # Stored by a queue store alone: the message as completed.
    assert header_fields(body, known=known) == header_fields(body)
    for limit in (40, 200):
        assert header_fields(body, limit, known=known) == header_fields(body, limit)
    # Through the queue submitter: the configuration set named, the configuration-set
    # and tag fields removed.
    assert configsets.requested_set(body, known) == configsets.requested_set(body)
    stripped = configsets.strip_headers(body, known)
    assert stripped == configsets.strip_headers(body)
    kept = known if stripped is body else without_fields(known, configsets.STRIPPED)
    assert header_fields(stripped, known=kept) == header_fields(stripped)
    return known is not None


def crlf_only(data: bytes) -> bool:
    crlf = data.count(b"\r\n")
    return data.count(b"\r") == crlf == data.count(b"\n")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_LINES, _REST)
def test_one_pass_gives_what_the_three_readers_give(lines: list[bytes], rest: bytes) -> None:
    fast = check_against_three_readers(TRACE + b"".join(lines) + rest)
    assert fast is not False  # an accepted message from DATA is never read twice


_BARE = st.sampled_from([b"a\rb", b"a\nb", b"\r", b"\n", b"x\n y", b"x\r\ty", b"\r\r\n"])
_BARE_LINES = st.lists(st.one_of(_FIELD_LINE, st.tuples(_FIELD_LINE, _BARE).map(
    lambda t: t[0][:-2] + t[1] + b"\r\n"), _OTHER_LINE), max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), _BARE_LINES.map(b"".join)), _REST)
def test_one_pass_agrees_on_arbitrary_bytes(head: bytes, rest: bytes) -> None:
    """Bare CR and LF included (DATA refuses those; the one reading then leaves the
    header fields to be read from the message rather than read them differently)."""
    check_against_three_readers(TRACE + head + rest)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20).filter(lambda t: "\r" not in t and "\n" not in t),
       st.lists(st.sampled_from(["r@dest.test", "other@x.test"]), min_size=1, max_size=2),
       st.booleans(), st.sampled_from(["", "q1"]), _LINES, _REST)
def test_one_pass_agrees_whatever_the_trace_says(
        helo: str, recipients: list[str], tls: bool, queue_id: str, lines: list[bytes],
        rest: bytes) -> None:
    """The trace line as the session makes it, whatever the client's HELO."""
    trace = received_header(helo=helo, client_ip="127.0.0.1", hostname="relay.test",
                            tls=tls, authenticated=tls, recipients=recipients,
                            now=1_796_000_000.0, queue_id=queue_id)
    check_against_three_readers(trace + b"".join(lines) + rest, trace=len(trace))


@pytest.mark.parametrize("prefix", [
    b"Received: a\r\n\tmore\r\n", b"", b"Received: a\r\nReceived: b\r\n", b"X-First: a\r\n",
    b"Received: a\r\n more\r\n", b"Received: a\r\njunk\r\n\tmore\r\n",
    b"Received: a\r\n\r\n", b"Received: a", b"Received: a\r\nb", b" fold\r\nReceived: a\r\n"])
@pytest.mark.parametrize("hostname", ["relay.test", "bad\r\nX-Injected: 1", "bad\nX-Lf: 1",
                                      "odd\rX-SES-MESSAGE-TAGS: a=1", "h\u00e9te"])
@pytest.mark.parametrize("section", [b"From: a@x.test\r\nSubject: s\r\n\r\nbody\r\n",
                                     b"\r\nbody\r\n"])
def test_one_pass_defers_when_what_precedes_the_section_is_not_one_trace_field(
        prefix: bytes, hostname: str, section: bytes) -> None:
    """Or when an added field would not read back as one field (a CR or LF in the
    configured host name)."""
    check_against_three_readers(prefix + section, trace=len(prefix), hostname=hostname)


def test_the_usual_message_is_read_once() -> None:
    message = (TRACE + b"From: <a@x.test>\r\nTo: <b@y.test>\r\nSubject: hi\r\n"
               b"X-SES-MESSAGE-TAGS: a=1\r\nX-SES-CONFIGURATION-SET: news\r\n\r\nbody\r\n")
    assert check_against_three_readers(message)
    section = scan_header_section(message, len(TRACE), MAX_HOPS)
    _, _, known = complete_and_list_fields(message, section, hostname="relay.test",
                                           now=1_796_000_000.0, unique="u-1")
    assert known is not None and [name for name, _ in known] == [
        "Received", "Message-ID", "Date", "From", "To", "Subject", "X-SES-MESSAGE-TAGS",
        "X-SES-CONFIGURATION-SET"]


# Header blocks that end just inside or just past the 256 KB the events reader looks at:
# whitespace-only values (so the 10 KB cut does not come first), then a last field that
# reads differently when cut.
@pytest.mark.parametrize("over", [-9, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 9, 12])
def test_a_header_block_at_the_events_scan_limit(over: int) -> None:
    given_fields = b"Message-ID: <m@x.test>\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\n"
    last = b"X-End: last field\r\n"
    fill = SCAN_LIMIT + over - len(TRACE) - len(given_fields) - len(last)
    count, extra = divmod(fill, 1002)
    pads = [b"X-Pad:" + b" " * 994 + b"\r\n"] * (count - 1)
    pads.append(b"X-Pad:" + b" " * (994 + extra) + b"\r\n")
    head = given_fields + b"".join(pads) + last
    assert len(TRACE) + len(head) == SCAN_LIMIT + over
    for rest in (b"\r\nbody\r\n", b"", b"stray line\r\n"):
        assert check_against_three_readers(TRACE + head + rest, max_hops=100) is not None
