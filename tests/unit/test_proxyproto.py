"""The PROXY protocol v1/v2 parser: valid headers, partial ones, and hostile input."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.smtp.proxyproto import (
    V1_MAX,
    V2_MAX_PAYLOAD,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyRefused,
    parse,
)


def v2(command: int = 1, family: int = 1, proto: int = 1, payload: bytes = b"",
       version: int = 2, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return V2_SIGNATURE + bytes([(version << 4) | command, (family << 4) | proto]) + \
        struct.pack("!H", size) + payload


def inet4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
            + struct.pack("!HH", sport, dport))


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
            + struct.pack("!HH", sport, dport))


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


@pytest.mark.parametrize("data, expected", [
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 587\r\nEHLO x\r\n",
     ProxyHeader(1, ("192.0.2.7", 51000), ("10.0.0.1", 587), 41)),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n",
     ProxyHeader(1, ("2001:db8::7", 65535), ("2001:db8::1", 0), 44)),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, None, None, 15)),
    (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
     ProxyHeader(1, None, None, 59)),
])
def test_v1_valid(data: bytes, expected: ProxyHeader) -> None:
    assert parse(data) == expected


def test_v1_longest_line_is_accepted_and_one_more_byte_refused() -> None:
    line = b"PROXY UNKNOWN " + b"f" * (V1_MAX - 16) + b"\r\n"
    assert len(line) == V1_MAX
    header = parse(line)
    assert header is not None and header.length == V1_MAX
    with pytest.raises(ProxyRefused, match="longer than 107"):
        parse(b"PROXY UNKNOWN " + b"f" * (V1_MAX - 15) + b"\r\n")


@pytest.mark.parametrize("data", [
    b"", b"P", b"PROXY", b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 587", b"PROXY TCP4 1.2.3.4\r",
])
def test_v1_incomplete_waits_for_more(data: bytes) -> None:
    assert parse(data) is None


@pytest.mark.parametrize("data, reason", [
    (b"EHLO client\r\n", "not a PROXY"),
    (b"PROXX TCP4", "not a PROXY"),
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 51000\r\n", "expected 'PROXY TCPx"),
    (b"PROXY TCP4  192.0.2.7 10.0.0.1 51000 587\r\n", "expected 'PROXY TCPx"),
    (b"PROXY UDP4 192.0.2.7 10.0.0.1 51000 587\r\n", "expected TCP4, TCP6 or UNKNOWN"),
    (b"PROXY TCP4 2001:db8::1 10.0.0.1 51000 587\r\n", "is not IPv4"),
    (b"PROXY TCP6 192.0.2.7 2001:db8::1 51000 587\r\n", "is not IPv6"),
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 587\r\n", "expected 0-65535"),
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 0587 587\r\n", "expected 0-65535"),
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 -1 587\r\n", "expected 0-65535"),
    (b"PROXY TCP4 192.0.2.07 10.0.0.1 1 587\r\n", "is not IPv4"),
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 1 587\n", "not ended by CRLF"),
    (b"PROXY TCP4 \xff.0.2.7 10.0.0.1 1 587\r\n", "not ASCII"),
    (b"PROXY " + b"A" * 200, "longer than 107"),
    (b"PROXY TCP6 " + b"1" * 100 + b"\r\n", "longer than 107"),
])
def test_v1_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyRefused, match=reason):
        parse(data)


def test_v2_inet_with_tlvs_and_following_bytes() -> None:
    payload = inet4("127.0.0.77", "127.0.0.1", 40000, 587) + tlv(0x01, b"smtp") + \
        tlv(0xE0, b"x" * 300)
    data = v2(payload=payload) + b"EHLO x\r\n"
    assert parse(data) == ProxyHeader(2, ("127.0.0.77", 40000), ("127.0.0.1", 587),
                                      16 + len(payload))


def test_v2_inet6() -> None:
    data = v2(family=2, payload=inet6("2001:db8::77", "::1", 1, 465))
    assert parse(data) == ProxyHeader(2, ("2001:db8::77", 1), ("::1", 465), 52)


@pytest.mark.parametrize("data", [
    v2(command=0, family=0, proto=0),  # LOCAL: a health check of the proxy itself
    v2(command=0, payload=inet4("1.2.3.4", "5.6.7.8", 1, 2)),  # LOCAL ignores addresses
    v2(family=0, proto=0, payload=b"whatever"),  # PROXY with AF_UNSPEC
])
def test_v2_no_client_address(data: bytes) -> None:
    header = parse(data)
    assert header is not None and header.source is None and header.length == len(data)


@pytest.mark.parametrize("cut", [1, 5, 12, 15, 16, 20, 27])
def test_v2_truncated_waits(cut: int) -> None:
    data = v2(payload=inet4("192.0.2.1", "192.0.2.2", 1, 2))
    assert parse(data[:cut]) is None


@pytest.mark.parametrize("data, reason", [
    (b"\r\n\r\n\x00\r\nQUIX\n" + b"\x21\x11\x00\x0c", "bad v2 signature"),
    (b"\r\nX", "bad v2 signature"),
    (v2(version=1, payload=inet4("1.2.3.4", "1.2.3.5", 1, 2)), "version 1: expected 2"),
    (v2(command=2, payload=inet4("1.2.3.4", "1.2.3.5", 1, 2)), "command 2"),
    (v2(length=V2_MAX_PAYLOAD + 1), "at most"),
    (v2(payload=b"\x01\x02\x03"), "AF_INET addresses need 12 bytes"),
    (v2(family=2, payload=inet4("1.2.3.4", "1.2.3.5", 1, 2)), "AF_INET6 addresses need 36"),
    (v2(family=3, payload=b"\x00" * 216), "AF_UNIX"),
    (v2(family=7, payload=b"\x00" * 12), "address family 7"),
    (v2(proto=2, payload=inet4("1.2.3.4", "1.2.3.5", 1, 2)), "STREAM"),
    (v2(payload=inet4("1.2.3.4", "1.2.3.5", 1, 2) + b"\x01\x00"), "TLV truncated"),
    (v2(payload=inet4("1.2.3.4", "1.2.3.5", 1, 2) + b"\x01\x00\x09abc"), "runs past"),
])
def test_v2_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyRefused, match=reason):
        parse(data)


def test_oversize_v2_is_refused_before_its_payload_arrives() -> None:
    # A stranger announcing 65535 bytes is refused at the 16th byte, not buffered.
    with pytest.raises(ProxyRefused, match="65535 bytes"):
        parse(v2(length=65535))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    try:
        header = parse(data)
    except ProxyRefused as e:
        assert str(e) and "\n" not in str(e)
        return
    if header is not None:
        assert 0 < header.length <= min(len(data), 16 + V2_MAX_PAYLOAD)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"PROXY ", V2_SIGNATURE + b"\x21\x11", V2_SIGNATURE + b"\x20\x00"]),
       st.binary(max_size=200))
def test_random_tails_after_a_valid_prefix(prefix: bytes, tail: bytes) -> None:
    data = prefix + tail
    try:
        header = parse(data)
    except ProxyRefused:
        return
    if header is None:  # waiting for more only while a header can still fit its bound
        assert len(data) < V1_MAX or data.startswith(V2_SIGNATURE)
    else:
        assert header.length <= len(data)
