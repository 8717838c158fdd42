"""The only dnspython user for lookups: an async, caching stub resolver.

Owns: talking to `[dns] nameservers` (or the system resolver when the list is empty),
a TTL cache on the injected Clock (record TTL capped by dns.max_cache_ttl; NXDOMAIN and
NODATA kept for the SOA negative TTL capped by dns.negative_cache_ttl, RFC 2308), one query
in flight per (name, type), and translating every dnspython exception into a Lookup status
(house rule 9): NXDOMAIN → permanent, no answer → empty, SERVFAIL/REFUSED/timeout → temporary.
Temporary failures are never cached, so a retry asks again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdatatype
import dns.resolver

from relay.clock import Clock
from relay.config import Dns
from relay.dns.answers import (
    Lookup,
    MxRecord,
    Status,
    found,
    normalize_name,
    nxdomain,
    tempfail,
)
from relay.dns.cache import TtlCache

T = TypeVar("T")
_Key = tuple[str, str]

DEFAULT_PORT = 53


def _nameserver_address(host: str, port: int) -> str:
    """An IP for `host`; a host name is resolved once, at construction (start-up)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise ValueError(f"dns nameserver {host!r} does not resolve: {e}") from None
    return str(infos[0][4][0])


def _describe_failures(e: dns.resolver.NoNameservers) -> str:
    errors = e.kwargs.get("errors") or []
    parts: list[str] = []
    for item in errors:
        server, err = str(item[0]), item[3]  # server is "Do53:127.0.0.1@5353"
        parts.append(f"{err} from {server.removeprefix('Do53:')}")
    return "; ".join(dict.fromkeys(parts)) or "no nameserver answered"


class DnsResolver:
    """Implements relay.dns.answers.Resolver with dnspython and a TtlCache."""

    def __init__(self, nameservers: Sequence[tuple[str, int]] = (), *, clock: Clock,
                 timeout: float = 5.0, max_cache_ttl: float = 3600.0,
                 negative_cache_ttl: float = 300.0, max_entries: int = 10_000) -> None:
        """`nameservers`: (host, port) pairs; empty means the system's resolv.conf."""
        if nameservers:
            res = dns.asyncresolver.Resolver(configure=False)
            res.nameservers = [dns.nameserver.Do53Nameserver(_nameserver_address(h, p), p)
                               for h, p in nameservers]
        else:
            try:
                res = dns.asyncresolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration:
                res = dns.asyncresolver.Resolver(configure=False)
                res.nameservers = ["127.0.0.1"]
        # `lifetime` bounds the whole lookup; `timeout` one try, so a lost UDP packet is
        # retried within the lifetime.
        res.lifetime = timeout
        res.timeout = min(timeout, 2.0)
        res.cache = None  # ours is clock-driven and bounded
        self._resolver = res
        self._clock = clock
        self._max_ttl = max_cache_ttl
        self._negative_ttl = negative_cache_ttl
        self.cache: TtlCache[_Key, Lookup[Any]] = TtlCache(clock, max_entries)
        self._inflight: dict[_Key, asyncio.Task[Lookup[Any]]] = {}

    @classmethod
    def from_config(cls, cfg: Dns, clock: Clock, *, max_entries: int = 10_000) -> DnsResolver:
        return cls([(ns.host, ns.port) for ns in cfg.nameservers], clock=clock,
                   timeout=float(cfg.timeout), max_cache_ttl=float(cfg.max_cache_ttl),
                   negative_cache_ttl=float(cfg.negative_cache_ttl), max_entries=max_entries)

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        """The (address, port) pairs queried, for logs and tests."""
        out: list[tuple[str, int]] = []
        for ns in self._resolver.nameservers:
            if isinstance(ns, dns.nameserver.Nameserver):
                out.append((str(ns.answer_nameserver()), ns.answer_port()))
            else:
                out.append((str(ns), DEFAULT_PORT))
        return out

    # -- the Resolver protocol ------------------------------------------------

    async def mx(self, domain: str) -> Lookup[MxRecord]:
        return await self._lookup(domain, dns.rdatatype.MX, _mx_record)

    async def addresses(self, host: str) -> Lookup[str]:
        name = normalize_name(host)
        hit4: Lookup[str] | None = self.cache.get((name, "A"))
        hit6: Lookup[str] | None = self.cache.get((name, "AAAA")) if hit4 is not None else None
        if hit4 is not None and hit6 is not None:
            v4, v6 = hit4, hit6
        else:  # gather makes a task per lookup: only when one is due
            v4, v6 = await asyncio.gather(
                self._lookup(host, dns.rdatatype.A, _address),
                self._lookup(host, dns.rdatatype.AAAA, _address))
        records = v4.records + v6.records
        if records:
            # The combined answer holds while both do (an empty AAAA answer too).
            return Lookup(Status.OK, records, expires_at=min(v4.expires_at, v6.expires_at))
        # Unsure beats absent: a timeout on either family means "ask again later".
        for result in (v4, v6):
            if result.temporary:
                return result
        for result in (v4, v6):
            if result.permanent:
                return dataclasses.replace(
                    result, expires_at=min(v4.expires_at, v6.expires_at))
        return Lookup(Status.OK, (), expires_at=min(v4.expires_at, v6.expires_at))

    async def txt(self, name: str) -> Lookup[str]:
        return await self._lookup(name, dns.rdatatype.TXT, _txt)

    # -- internals --------------------------------------------------------------

    async def _lookup(self, name: str, rdtype: dns.rdatatype.RdataType,
                      convert: Callable[[dns.rdata.Rdata], T]) -> Lookup[T]:
        key = (normalize_name(name), dns.rdatatype.to_text(rdtype))
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch(key, rdtype, convert))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._done, key))
        # Shielded: one caller giving up must not cancel the lookup the others wait on.
        result: Lookup[T] = await asyncio.shield(task)
        return result

    def _done(self, key: _Key, _task: asyncio.Task[Lookup[Any]]) -> None:
        self._inflight.pop(key, None)

    async def _fetch(self, key: _Key, rdtype: dns.rdatatype.RdataType,
                     convert: Callable[[dns.rdata.Rdata], Any]) -> Lookup[Any]:
        result, ttl = await self._query(key[0], rdtype, convert)
        if result.status is not Status.TEMPFAIL and ttl > 0:
            # The answer carries its expiry, so what is built from it (a route) can be
            # kept exactly as long.
            result = dataclasses.replace(result, expires_at=self._clock.monotonic() + ttl)
            self.cache.put(key, result, ttl)
        return result

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType,
                     convert: Callable[[dns.rdata.Rdata], Any]) -> tuple[Lookup[Any], float]:
        try:
            qname = dns.name.from_text(name or ".")
        except (dns.exception.DNSException, UnicodeError, ValueError) as e:
            return nxdomain(f"invalid domain name {name!r}: {e}"), 0.0
        what = f"{dns.rdatatype.to_text(rdtype)} {name}"
        try:
            answer = await self._resolver.resolve(qname, rdtype, raise_on_no_answer=False,
                                                  search=False)
        except dns.resolver.NXDOMAIN as e:
            return nxdomain(f"{name} does not exist"), self._nxdomain_ttl(e)
        except dns.resolver.NoAnswer:
            return found(()), self._negative_ttl
        except dns.resolver.NoNameservers as e:
            return tempfail(_describe_failures(e)), 0.0
        except dns.exception.Timeout:
            return tempfail(f"{what}: timed out"), 0.0
        except dns.resolver.YXDOMAIN:
            return nxdomain(f"{name}: DNAME expansion too long"), 0.0
        except (dns.exception.DNSException, OSError, EOFError, ValueError) as e:
            return tempfail(f"{what}: {type(e).__name__}: {e}"), 0.0
        ttl = float(answer.chaining_result.minimum_ttl)
        if answer.rrset is None:
            return found(()), min(ttl, self._negative_ttl)
        try:
            records = tuple(convert(rd) for rd in answer.rrset)
        except (ValueError, UnicodeError) as e:  # a malformed record is the remote's fault
            return tempfail(f"{what}: unusable answer: {e}"), 0.0
        return found(records), min(ttl, self._max_ttl)

    def _nxdomain_ttl(self, e: dns.resolver.NXDOMAIN) -> float:
        ttl = self._negative_ttl
        responses: dict[dns.name.Name, dns.message.Message] = e.kwargs.get("responses") or {}
        for response in responses.values():
            for rrset in response.authority:
                if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                    ttl = min(ttl, float(rrset.ttl), float(rrset[0].minimum))
        return ttl


def _mx_record(rd: dns.rdata.Rdata) -> MxRecord:
    exchange: dns.name.Name = rd.exchange  # type: ignore[attr-defined]
    if exchange == dns.name.root:
        return MxRecord(int(rd.preference), "")  # type: ignore[attr-defined]
    return MxRecord(int(rd.preference),  # type: ignore[attr-defined]
                    normalize_name(exchange.to_text(omit_final_dot=True)))


def _address(rd: dns.rdata.Rdata) -> str:
    return str(rd.address)  # type: ignore[attr-defined]


def _txt(rd: dns.rdata.Rdata) -> str:
    strings: tuple[bytes, ...] = rd.strings  # type: ignore[attr-defined]
    return b"".join(strings).decode("utf-8", "replace")
