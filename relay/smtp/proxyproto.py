"""PURE parser of the PROXY protocol header (HAProxy's proxy-protocol.txt, v1 and v2).

A load balancer in TCP mode (HAProxy `send-proxy` / `send-proxy-v2`) writes this header
before the client's first byte so the server learns the client's address. `parse(data)`
looks at the bytes received so far and answers one of three things:
- None: not complete yet (read more, within the listener's time limit);
- a `ProxyHeader`: the client's claimed source (None for v1 UNKNOWN, the v2 LOCAL
  command or an AF_UNSPEC address: the connection's own address stands) and how many
  bytes the header took (the rest belongs to the protocol that follows);
- `ProxyRefused` raised, with a one-line reason, for anything else.

Bounded: a v1 line is at most 107 bytes (the specification's own limit), a v2 header at
most 16 + `V2_MAX_PAYLOAD` bytes; whatever the input, the work is linear in those bounds
and nothing but `ProxyRefused` is raised. A prefix that can no longer become either header
is refused at once, so a stranger gets no more than one read. No I/O.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX = 107  # "PROXY TCP6 " + 2 * 39 + 2 * 5 + 3 spaces + CRLF, per the specification
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = 16  # signature, version/command, family/protocol, length
V2_MAX_PAYLOAD = 4096  # addresses (at most 216 bytes) and TLVs; HAProxy sends far less

_LOCAL, _PROXY = 0x0, 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
# The v2 address families carried: (name, address width in bytes, its parser).
_V2_ADDRESSES: dict[int, tuple[str, int, type[ipaddress.IPv4Address | ipaddress.IPv6Address]]] = {
    _AF_INET: ("AF_INET", 4, ipaddress.IPv4Address),
    _AF_INET6: ("AF_INET6", 16, ipaddress.IPv6Address),
}
_UNSPEC, _STREAM = 0x0, 0x1


class ProxyRefused(ValueError):
    """The bytes are not an acceptable PROXY header; str() is the reason, one line."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: int  # 1 or 2
    # The client (address, port); None: no address given (v1 UNKNOWN, v2 LOCAL or
    # AF_UNSPEC), the connection's own peer stands.
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int  # bytes of `data` the header took


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`, None if more bytes are needed, or ProxyRefused."""
    if not data:
        return None
    if data[0] == V1_PREFIX[0]:
        return _parse_v1(data)
    if data[0] == V2_SIGNATURE[0]:
        return _parse_v2(data)
    raise ProxyRefused("not a PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    head = data[: len(V1_PREFIX)]
    if not V1_PREFIX.startswith(head):
        raise ProxyRefused("not a PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or b"\n" in data[:V1_MAX]:
            raise ProxyRefused(f"PROXY v1 line longer than {V1_MAX} bytes or not ended "
                               "by CRLF")
        return None
    line = data[len(V1_PREFIX):end]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyRefused("PROXY v1 line is not ASCII") from None
    parts = text.split(" ")
    if parts[0] == "UNKNOWN":  # anything may follow; the receiver ignores it
        return ProxyHeader(1, None, None, end + 2)
    if parts[0] not in ("TCP4", "TCP6"):
        raise ProxyRefused(f"PROXY v1 protocol {parts[0][:8]!r}: expected TCP4, TCP6 "
                           "or UNKNOWN")
    if len(parts) != 5:
        raise ProxyRefused("PROXY v1 line: expected 'PROXY TCPx SRC DST SPORT DPORT'")
    family: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address] = (
        ipaddress.IPv4Address if parts[0] == "TCP4" else ipaddress.IPv6Address)
    src = _v1_address(parts[1], family, "source")
    dst = _v1_address(parts[2], family, "destination")
    sport = _v1_port(parts[3], "source")
    dport = _v1_port(parts[4], "destination")
    return ProxyHeader(1, (src, sport), (dst, dport), end + 2)


def _v1_address(text: str, family: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address],
                which: str) -> str:
    try:
        return str(family(text))
    except ValueError:
        kind = "IPv4" if family is ipaddress.IPv4Address else "IPv6"
        raise ProxyRefused(f"PROXY v1 {which} address {text[:45]!r} is not {kind}") from None


def _v1_port(text: str, which: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or \
            (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyRefused(f"PROXY v1 {which} port {text[:8]!r}: expected 0-65535")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    head = data[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(head):
        raise ProxyRefused("not a PROXY protocol header (bad v2 signature)")
    if len(data) < V2_HEADER:
        return None
    ver_cmd, fam, length = struct.unpack_from("!BBH", data, 12)
    if ver_cmd >> 4 != 2:
        raise ProxyRefused(f"PROXY v2 version {ver_cmd >> 4}: expected 2")
    command = ver_cmd & 0x0F
    if command not in (_LOCAL, _PROXY):
        raise ProxyRefused(f"PROXY v2 command {command}: expected LOCAL (0) or PROXY (1)")
    if length > V2_MAX_PAYLOAD:
        raise ProxyRefused(f"PROXY v2 header of {length} bytes: at most {V2_MAX_PAYLOAD}")
    total = V2_HEADER + length
    if len(data) < total:
        return None
    payload = data[V2_HEADER:total]
    family, proto = fam >> 4, fam & 0x0F
    if command == _LOCAL:  # the proxy's own connection (a health check): no client
        return ProxyHeader(2, None, None, total)
    if family == _AF_UNSPEC:
        return ProxyHeader(2, None, None, total)
    if proto != _STREAM:
        raise ProxyRefused(f"PROXY v2 transport {proto}: expected STREAM (TCP)")
    if family == _AF_UNIX:
        raise ProxyRefused("PROXY v2 AF_UNIX addresses are not supported: expected "
                           "AF_INET or AF_INET6")
    if family not in _V2_ADDRESSES:
        raise ProxyRefused(f"PROXY v2 address family {family}: expected AF_INET, "
                           "AF_INET6 or AF_UNSPEC")
    name, width, address = _V2_ADDRESSES[family]
    size = 2 * width + 4  # source and destination addresses, then the two ports
    if length < size:
        raise ProxyRefused(f"PROXY v2 {name} addresses need {size} bytes, got {length}")
    src = str(address(payload[0:width]))
    dst = str(address(payload[width:2 * width]))
    sport, dport = struct.unpack_from("!HH", payload, 2 * width)
    _check_tlvs(payload, size)
    return ProxyHeader(2, (src, sport), (dst, dport), total)


def _check_tlvs(payload: bytes, at: int) -> None:
    """The TLVs after the addresses are skipped, but each must fit in the declared length
    (a header that lies about its own structure is refused, as HAProxy does)."""
    while at < len(payload):
        if len(payload) - at < 3:
            raise ProxyRefused("PROXY v2 TLV truncated: fewer than 3 bytes left")
        (size,) = struct.unpack_from("!H", payload, at + 1)
        at += 3 + size
        if at > len(payload):
            raise ProxyRefused("PROXY v2 TLV runs past the header's declared length")
