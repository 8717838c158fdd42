"""relay.smtp.message.scan_header_section / complete_header_section against a plain
line-by-line reading of RFC 5322 §2.2 and §3.6 (the oracle below), on generated header
sections: field names in any letter case and with obsolete WSP before the colon, folded
values, repeated fields, Received trace fields."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.smtp import replies as R
from relay.smtp.message import (
    SINGLE_FIELDS,
    complete_header_section,
    header_refusal,
    random_uuid,
    scan_header_section,
)

TRACE = b"Received: from c ([127.0.0.1])\r\n\tby relay.test; Mon, 7 Dec 2026 10:00:00 -0000\r\n"
MAX_HOPS = 5
NAMES = [*SINGLE_FIELDS, "Received", "Comments", "X-Mailer", "Resent-From", "MIME-Version",
         "X-SES-MESSAGE-TAGS"]


def oracle_fields(head: bytes) -> list[tuple[str, str, str]]:
    """(lower-case name, name as written, unfolded value) of each field of a header
    section made only of fields and continuation lines."""
    out: list[tuple[str, str, str]] = []
    for line in head.decode().split("\r\n"):
        if not line:
            continue
        if line[0] in " \t":
            name, written, value = out[-1]
            out[-1] = (name, written, value + line)
        else:
            written, _, value = line.partition(":")
            out.append((written.rstrip(" \t").lower(), written, value))
    return out


spelling = st.tuples(st.sampled_from(NAMES), st.booleans(), st.sampled_from(["", " ", "\t", "  "]))
value = st.text(alphabet="abc xyz@.<>=,", min_size=0, max_size=12)
field = st.tuples(spelling, value, st.booleans())


def render(fields: list[tuple[tuple[str, bool, str], str, bool]]) -> bytes:
    lines = []
    for (name, upper, wsp), text, folded in fields:
        written = name.upper() if upper else name
        line = f"{written}{wsp}: {text}"
        if folded:
            line += "\r\n\tmore"
        lines.append(line + "\r\n")
    return "".join(lines).encode()


@settings(max_examples=300, deadline=None)
@given(st.lists(field, max_size=14))
def test_scan_agrees_with_a_line_by_line_reading(
        fields: list[tuple[tuple[str, bool, str], str, bool]]) -> None:
    head = render(fields)
    message = TRACE + head + b"\r\nbody\r\nFrom: in the body\r\n"
    section = scan_header_section(message, len(TRACE), MAX_HOPS)
    assert (section.start, section.end) == (len(TRACE), len(TRACE) + len(head))
    assert section.separated and not section.oversized
    # The same section at the very start of a message (read field by field, not by the
    # one-findall path) gives the same reading.
    alone = scan_header_section(message[len(TRACE):], 0, MAX_HOPS)
    for attribute in ("received", "repeated", "from_value", "obsolete_names", "headers",
                      "tags", "has_message_id", "has_date"):
        assert getattr(alone, attribute) == getattr(section, attribute), attribute

    seen: dict[str, int] = {}
    first_repeat = None
    received = 0
    for name, _, _ in oracle_fields(head):
        if name == "received":
            received += 1
            if received > MAX_HOPS:
                break
            continue
        single = next((n for n in SINGLE_FIELDS if n.lower() == name), None)
        if single is not None:
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                first_repeat = single
                break
    refusal = header_refusal(section, MAX_HOPS)
    if received > MAX_HOPS:
        assert refusal == R.TOO_MANY_HOPS
    elif first_repeat is not None:
        assert section.repeated == first_repeat
        assert refusal is not None and f"'{first_repeat}'" in refusal.text
    else:
        assert refusal is None
        froms = [v for n, _, v in oracle_fields(head) if n == "from"]
        assert section.from_value == (froms[0].replace("\r\n", "").strip() if froms else None)
        assert section.obsolete_names == any(
            w != w.rstrip(" \t") for _, w, _ in oracle_fields(head))


@settings(max_examples=300, deadline=None)
@given(st.lists(field, max_size=14), st.sampled_from([b"\r\nbody\r\n", b"", b"text\r\n"]))
def test_completed_message_has_one_id_one_date_and_standard_names(
        fields: list[tuple[tuple[str, bool, str], str, bool]], rest: bytes) -> None:
    head = render(fields)
    message = TRACE + head + rest
    section = scan_header_section(message, len(TRACE), 1000)
    if header_refusal(section, 1000) is not None:
        return
    out, added = complete_header_section(message, section, hostname="relay.test",
                                         now=1_790_000_000.0, unique="u-1")
    assert out.startswith(TRACE)
    new_head, sep, new_rest = out[len(TRACE):].partition(b"\r\n\r\n")
    if not sep:  # a message of headers only
        new_head, new_rest = out[len(TRACE):], b""
    got = oracle_fields(new_head + b"\r\n")
    names = [n for n, _, _ in got]
    assert names.count("message-id") == 1 and names.count("date") == 1
    assert all(w == w.rstrip(" \t") for _, w, _ in got)  # "From :" written "From:"
    before = oracle_fields(head)
    assert [(n, v) for n, _, v in got][len(added):] == [(n, v) for n, _, v in before]
    assert new_rest == rest.removeprefix(b"\r\n")
    if "message-id" not in [n for n, _, _ in before]:
        assert added["Message-ID"] == "<u-1@relay.test>"


def test_a_header_section_past_the_limit_is_oversized_and_not_read() -> None:
    head = b"X-Pad: " + b"p" * 70 + b"\r\n"
    message = TRACE + head * 20 + b"From: a@b.test\r\nFrom: c@d.test\r\n\r\nbody\r\n"
    small = scan_header_section(message, len(TRACE), MAX_HOPS, max_size=1000)
    assert small.oversized and header_refusal(small, MAX_HOPS) == R.HEADER_TOO_BIG
    large = scan_header_section(message, len(TRACE), MAX_HOPS, max_size=10_000)
    assert not large.oversized and large.repeated == "From"
    # The limit is the section's, not the message's: a big body is fine.
    body = TRACE + b"From: a@b.test\r\n\r\n" + b"x" * 5000 + b"\r\n"
    assert not scan_header_section(body, len(TRACE), MAX_HOPS, max_size=1000).oversized


def test_random_uuid_is_a_version_4_uuid() -> None:
    made = {random_uuid() for _ in range(2000)}
    assert len(made) == 2000
    for text in list(made)[:200]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
