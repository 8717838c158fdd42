"""SPF (RFC 7208) for the MAIL FROM domain: the record to publish and whether it covers us.

`recommended_record()` is PURE: the relay's sending IPs (every [[pool]] ip and
delivery.source_address) as ip4:/ip6: mechanisms ending `-all`, since those are exactly
the addresses mail leaves from; with none configured the kernel picks the source, so
`a:<server.hostname>` ending `~all` (softfail: a NAT'd egress need not lose mail).
`check_host()` evaluates a published record for one IP through the Resolver protocol
(ip4, ip6, a, mx, include, redirect, all; macros, ptr and exists never match), with the
RFC 7208 §4.6.4 limit of 10 DNS-querying terms.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from relay.config import Config
from relay.dns.answers import Resolver

PASS, FAIL, SOFTFAIL, NEUTRAL, NONE, TEMPERROR, PERMERROR = (
    "pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
_QUALIFIERS = {"+": PASS, "-": FAIL, "~": SOFTFAIL, "?": NEUTRAL}
MAX_LOOKUPS = 10


def sending_ips(cfg: Config) -> list[str]:
    """Every address relay sends from, in config order, without duplicates."""
    out: list[str] = []
    for pool in cfg.pool:
        out += [ip.address for ip in pool.ips]
    if cfg.delivery.source_address:
        out.append(cfg.delivery.source_address)
    return list(dict.fromkeys(str(ipaddress.ip_address(a)) for a in out))


def recommended_record(ips: Sequence[str], hostname: str) -> str:
    if not ips:
        return f"v=spf1 a:{hostname} ~all"
    terms = [f"ip{ipaddress.ip_address(a).version}:{ipaddress.ip_address(a)}" for a in ips]
    return "v=spf1 " + " ".join(terms) + " -all"


def spf_records(txt: Sequence[str]) -> list[str]:
    return [t for t in txt if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


def _split_cidr(spec: str, default_domain: str) -> tuple[str, int | None, int | None]:
    """"domain/24//64" -> (domain, 24, 64); the domain defaults to the current one."""
    v4: int | None = None
    v6: int | None = None
    if "//" in spec:
        spec, _, six = spec.partition("//")
        v6 = int(six)
    if "/" in spec:
        spec, _, four = spec.partition("/")
        v4 = int(four)
    return (spec or default_domain), v4, v6


def _in(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, address: str,
        v4: int | None, v6: int | None) -> bool:
    try:
        other = ipaddress.ip_address(address)
    except ValueError:
        return False
    if other.version != ip.version:
        return False
    prefix = (v4 if ip.version == 4 else v6)
    if prefix is None:
        return other == ip
    return ip in ipaddress.ip_network(f"{other}/{prefix}", strict=False)


class _Check:
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.lookups = 0

    def _count(self) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise _PermError("more than 10 DNS lookups")

    async def _addresses(self, host: str) -> list[str]:
        lookup = await self.resolver.addresses(host)
        if lookup.temporary:
            raise _TempError(lookup.reason)
        return list(lookup.records)

    async def record_of(self, domain: str) -> str | None:
        lookup = await self.resolver.txt(domain)
        if lookup.temporary:
            raise _TempError(lookup.reason)
        recs = spf_records(list(lookup.records))
        if len(recs) > 1:
            raise _PermError(f"more than one SPF record at {domain}")
        return recs[0] if recs else None

    async def evaluate(self, record: str, domain: str,
                       ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        redirect = ""
        for term in record.split()[1:]:
            low = term.lower()
            if low.startswith("redirect="):
                redirect = term.partition("=")[2]
                continue
            if "=" in low.split(":", 1)[0]:
                continue  # another modifier (exp=)
            qualifier = PASS
            if term[0] in _QUALIFIERS:
                qualifier, term = _QUALIFIERS[term[0]], term[1:]
            name, _, arg = term.partition(":")
            name = name.lower()
            if "/" in name:  # "a/24", "mx/24//64"
                name, slash, cidr = name.partition("/")
                arg = arg + slash + cidr
            if await self._matches(name, arg, domain, ip):
                return qualifier
        if redirect:
            self._count()
            target = await self.record_of(redirect)
            if target is None:
                raise _PermError(f"redirect to {redirect}: no SPF record")
            return await self.evaluate(target, redirect, ip)
        return NEUTRAL

    async def _matches(self, name: str, arg: str, domain: str,
                       ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if "%" in arg:
            return False  # macros (RFC 7208 §7): not expanded here
        if name == "all":
            return True
        if name in ("ip4", "ip6"):
            try:
                return ip in ipaddress.ip_network(arg, strict=False)
            except ValueError:
                raise _PermError(f"bad {name}:{arg}") from None
        if name == "a":
            self._count()
            host, v4, v6 = _split_cidr(arg, domain)
            return any(_in(ip, a, v4, v6) for a in await self._addresses(host))
        if name == "mx":
            self._count()
            host, v4, v6 = _split_cidr(arg, domain)
            mx = await self.resolver.mx(host)
            if mx.temporary:
                raise _TempError(mx.reason)
            for rec in mx.records:
                if not rec.is_null and any(_in(ip, a, v4, v6)
                                           for a in await self._addresses(rec.exchange)):
                    return True
            return False
        if name == "include":
            self._count()
            target = await self.record_of(arg)
            if target is None:
                raise _PermError(f"include:{arg}: no SPF record")
            return await self.evaluate(target, arg, ip) == PASS
        if name in ("ptr", "exists"):
            self._count()
            return False
        raise _PermError(f"unknown mechanism {name!r}")


async def check_host(record: str, domain: str, ip: str, resolver: Resolver) -> str:
    """The SPF result for mail from `ip` with MAIL FROM at `domain` whose published
    record is `record`: pass | fail | softfail | neutral | temperror | permerror."""
    try:
        return await _Check(resolver).evaluate(record, domain, ipaddress.ip_address(ip))
    except _TempError:
        return TEMPERROR
    except (_PermError, ValueError):
        return PERMERROR
