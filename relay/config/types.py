"""The value types of configuration, each with its own syntax: durations ("30s"), sizes
("40MB"), "host:port" addresses, CIDRs, pool IPs, bounded numbers and name syntaxes.

Each custom type has its parser (PARSERS: raw TOML value -> the type, or ValueError with
what was expected) and its name in problems (DESCRIPTIONS), both read by the schema walk
in relay/config/load.py.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated, Any

import msgspec


class Duration(float):
    """Seconds, written in config as "30s", "5m", "72h", "90d" or a plain number of seconds."""


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: object) -> Duration:
    if isinstance(value, bool):
        raise ValueError("expected a duration like \"30s\", \"5m\", \"72h\" or \"90d\"")
    if isinstance(value, int | float):
        if value < 0 or not math.isfinite(value):
            raise ValueError("expected a finite, non-negative duration")
        return Duration(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return Duration(float(m.group(1)) * _UNIT_SECONDS[m.group(2)])
    raise ValueError("expected a duration like \"30s\", \"5m\", \"72h\" or \"90d\"")


def duration_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"\"{int(seconds // size)}{unit}\""
    return f"\"{seconds:g}s\""


class Size(int):
    """Bytes, written as 40000000, "40MB", "512KiB"."""


_SIZE_RE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_UNIT_BYTES = {None: 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2,
               "gb": 1000**3, "gib": 1024**3}


def parse_size(value: object) -> Size:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return Size(value)
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            return Size(int(m.group(1)) * _UNIT_BYTES[unit])
    raise ValueError("expected a size in bytes like 40000000 or \"40MB\"")


class HostPort(msgspec.Struct, frozen=True):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(value: object, default_port: int | None = None) -> HostPort:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected \"host:port\"")
    text = value.strip()
    m = re.match(r"^\[([^\]]*)\](?::(.*))?$", text)  # [v6] or [v6]:port
    if m:
        host, port_s = m.group(1), m.group(2)
        if not _is_ipv6(host):
            raise ValueError("expected an IPv6 address inside [brackets]")
    elif text.count(":") == 1:
        host, port_s = text.split(":")
    elif text.count(":") > 1:  # a bare IPv6 literal; a port needs [brackets]
        if not _is_ipv6(text):
            raise ValueError("expected \"host:port\", with an IPv6 address as \"[::1]:port\"")
        host, port_s = text, None
    else:
        host, port_s = text, None
    if port_s is None:
        if default_port is None:
            raise ValueError("expected \"host:port\" (the port is missing)")
        port = default_port
    else:
        if not re.fullmatch(r"[0-9]{1,5}", port_s) or not 0 < int(port_s) < 65536:
            raise ValueError("expected a port between 1 and 65535")
        port = int(port_s)
    if not host:
        raise ValueError("expected \"host:port\" (the host is missing)")
    return HostPort(host, port)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


class Address(HostPort, frozen=True):
    """A listen address "host:port"."""


class Nameserver(HostPort, frozen=True):
    """A DNS server "host" or "host:port" (default port 53)."""


class NextHop(HostPort, frozen=True):
    """A fixed next hop "host:port" (default port 25), like a Postfix transport entry."""


class Network(str):
    """A CIDR like "10.0.0.0/8" or "::1/128"."""


def parse_network(value: object) -> Network:
    if not isinstance(value, str):
        raise ValueError("expected a CIDR like \"10.0.0.0/8\"")
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError("expected a CIDR like \"10.0.0.0/8\"") from None
    return Network(value)


class PoolIp(msgspec.Struct, frozen=True):
    """A source IP of a pool, with its EHLO name ("" = server.hostname or the pool's ehlo table)."""

    address: str
    ehlo: str = ""


def parse_pool_ip(value: object) -> PoolIp:
    expected = 'expected "IP" or {address = "IP", ehlo = "name"}'
    address: object = value
    ehlo: object = ""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"address", "ehlo"})
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)} (known keys: address, ehlo)")
        address, ehlo = value.get("address"), value.get("ehlo", "")
    if not isinstance(address, str) or not isinstance(ehlo, str):
        raise ValueError(expected)
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{address!r} is not an IP address") from None
    return PoolIp(address, ehlo)


# Bounded numbers (Postfix-style min/max tables), checked by load() with the key path.
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Fraction = Annotated[float, msgspec.Meta(ge=0, lt=1)]


# A rate line: a fraction strictly between 0 and 1 (0.05 = 5 %).
RateLine = Annotated[float, msgspec.Meta(gt=0, lt=1)]


_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def valid_domain(name: str) -> bool:
    return bool(_DOMAIN_RE.match(name))


_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_HOST_LABEL}(?:\.{_HOST_LABEL})*$")


def valid_hostname(name: str) -> bool:
    """An RFC 1123 host name ("localhost" and "mail.example.com", not "a b!" or "-x.")."""
    return bool(_HOSTNAME_RE.match(name))


TENANT_PROBLEM = ("tenant {!r}: expected \"\" (shared) or a tenant name of 1-64 letters, "
                  "digits, '-' or '_'")


# The parser of each value type with its own syntax (a ValueError says what was expected).
PARSERS: dict[type, Any] = {
    Duration: parse_duration,
    Size: parse_size,
    Address: lambda v: Address(**msgspec.structs.asdict(parse_host_port(v))),
    Nameserver: lambda v: Nameserver(**msgspec.structs.asdict(parse_host_port(v, 53))),
    NextHop: lambda v: NextHop(**msgspec.structs.asdict(parse_host_port(v, 25))),
    Network: parse_network,
    PoolIp: parse_pool_ip,
}


# How a problem names what each value type expects.
DESCRIPTIONS: dict[Any, str] = {
    Duration: 'a duration like "30s"',
    Size: 'a size like "40MB"',
    Address: '"host:port"',
    Nameserver: '"host" or "host:port"',
    NextHop: '"host" or "host:port"',
    Network: 'a CIDR like "10.0.0.0/8"',
    PoolIp: '"IP" or {address = "IP", ehlo = "name"}',
}
