"""What a DNS lookup tells relay, as plain data, and the Resolver protocol.

Owns: the result types every DNS consumer sees (Lookup, MxRecord, Status) and the
`Resolver` protocol that the dnspython adapter (resolver.py) and any test fake implement.
Must not import dnspython, asyncio or sockets: routing and identity checks are decided
from these values alone (house rule 1), and DNS exceptions never cross this boundary.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


class Status(enum.Enum):
    OK = "ok"              # the name exists; `records` may be empty (NODATA / NoAnswer)
    NXDOMAIN = "nxdomain"  # the name does not exist: a permanent answer (RFC 8020)
    TEMPFAIL = "tempfail"  # SERVFAIL, REFUSED, timeout, network error: try again later


@dataclass(frozen=True, slots=True)
class Lookup(Generic[T]):
    """The outcome of one lookup. Never an exception: callers branch on `status`."""

    status: Status
    records: tuple[T, ...] = ()
    # Human reason for NXDOMAIN/TEMPFAIL ("SERVFAIL from 127.0.0.1:5353", "timed out").
    reason: str = ""
    # When the answer stops being valid, on the resolver clock's `monotonic()` (its TTL,
    # as cached); 0.0 = unknown or not to be kept (temporary failures, fakes). Not part of
    # equality: two answers with the same records are the same answer.
    expires_at: float = field(default=0.0, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def permanent(self) -> bool:
        return self.status is Status.NXDOMAIN

    @property
    def temporary(self) -> bool:
        return self.status is Status.TEMPFAIL

    @property
    def empty(self) -> bool:
        return not self.records


@dataclass(frozen=True, slots=True, order=True)
class MxRecord:
    preference: int
    # Lower-case host name without the trailing dot; "" is the root ("."), i.e. null MX.
    exchange: str

    @property
    def is_null(self) -> bool:
        return self.exchange == ""


def found(records: tuple[T, ...] | list[T]) -> Lookup[T]:
    return Lookup(Status.OK, tuple(records))


def nxdomain(reason: str = "domain does not exist") -> Lookup[T]:
    return Lookup(Status.NXDOMAIN, (), reason)


def tempfail(reason: str) -> Lookup[T]:
    return Lookup(Status.TEMPFAIL, (), reason)


def normalize_name(name: str) -> str:
    """Lower-case, no trailing dot: the form used in cache keys, routes and results."""
    return name.strip().rstrip(".").lower()


class Resolver(Protocol):
    """What relay asks of DNS. `DnsResolver` is the real one; fakes implement this too."""

    async def mx(self, domain: str) -> Lookup[MxRecord]:
        """MX records of `domain`, in no particular order."""

    async def addresses(self, host: str) -> Lookup[str]:
        """IPv4 then IPv6 addresses (A, then AAAA) of `host`, as text."""

    async def txt(self, name: str) -> Lookup[str]:
        """TXT records of `name`, each record's strings concatenated (RFC 7208 §3.3)."""
