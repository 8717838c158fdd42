"""Fast paths in front of slow ones must agree with them: plain addresses skip
aiosmtplib's parse (which returns them unchanged), From: lists are memoised, and a clean
CRLF body skips the two regex passes of the wire encoding."""

from __future__ import annotations

from aiosmtplib.email import parse_address, quote_address
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from relay.delivery.transaction import PLAIN_ADDRESS
from relay.delivery.transaction import quoted as _quoted
from relay.delivery.transaction import valid_address as _valid_address
from relay.delivery.transaction import wire_body as _wire_body
from relay.smtp.message import _memo_addresses, _parse_addresses, header_addresses


@given(st.from_regex(PLAIN_ADDRESS, fullmatch=True))
def test_plain_addresses_parse_to_themselves(address: str) -> None:
    assert parse_address(address) == address
    assert quote_address(address) == _quoted(address) == f"<{address}>"
    assert _valid_address(address)


@given(st.text(alphabet=st.sampled_from('ab.@<>"\\ ,;:()[]\r\n\x00+-=_%'), max_size=30))
def test_valid_address_is_what_the_slow_path_says(address: str) -> None:
    try:
        slow = parse_address(address) == address and not any(
            c in address for c in "\r\n\x00")
    except ValueError:
        slow = False
    assert _valid_address(address) == slow


@given(st.text(max_size=80))
def test_header_addresses_memo_is_getaddresses(value: str) -> None:
    assert header_addresses(value) == _parse_addresses(value)
    assert header_addresses(value) == header_addresses(value)


def test_long_header_values_are_not_memoised() -> None:
    """A client's 100 KB From: must not sit in the memo (2,048 entries of it would)."""
    value = "x" * 600 + " <a@b.example>"
    size = _memo_addresses.cache_info().currsize
    assert header_addresses(value) == ("a@b.example",)
    assert _memo_addresses.cache_info().currsize == size
    header_addresses("Short <s@b.example>")
    assert _memo_addresses.cache_info().currsize <= size + 1


@given(st.binary().map(lambda b: b.translate(bytes(
    b"\r\n.a"[i % 4] for i in range(256)))))
def test_wire_body_fast_path_is_the_regex_path(data: bytes) -> None:
    slow = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data)) + b".\r\n"
    assert _wire_body(data) == slow
    clean = b"Subject: x\r\n\r\nline\r\n"
    assert _wire_body(clean) == clean + b".\r\n"
