"""Where mail for a domain goes: the pure decision from DNS answers to a Route.

Owns: RFC 5321 §5.1 (MX preference order, random among equal preference, implicit MX),
RFC 7505 (null MX), transport-map style fixed next hops, targets that loop back to this
host (554 5.4.6: see `loops_to_self`) or lie in delivery.deny_networks (451 4.4.4), the
bound on the addresses one attempt may try (delivery.mx_address_limit), and the SMTP
reply for each failure. Must not do I/O or import dnspython/asyncio:
relay/delivery/routing.py asks the Resolver and hands the answers to these functions.
Randomness comes in as random.Random.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from relay.dns.answers import Lookup, MxRecord, Status, normalize_name


@dataclass(frozen=True, slots=True)
class Target:
    host_name: str   # the MX host (or next hop) name, for logs, TLS SNI and Received lines
    address: str     # an IP address to connect to
    port: int
    preference: int
    # TLS this host must give, beyond delivery.tls: "" = none; "verify" = STARTTLS with a
    # certificate valid for host_name (an MTA-STS enforce policy, relay/delivery/mtasts.py).
    tls: str = ""


@dataclass(frozen=True, slots=True)
class Targets:
    """Addresses in the order to try them."""

    hosts: list[Target]


@dataclass(frozen=True, slots=True)
class RouteFailure:
    """No place to deliver to, with the reply to record (RFC 3463 enhanced code)."""

    permanent: bool
    code: int
    enhanced: str
    text: str


Route = Targets | RouteFailure


@dataclass(frozen=True, slots=True)
class MxHost:
    name: str
    preference: int


class HostPort(Protocol):
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...


# ---------------------------------------------------------------------------
# Failures


def null_mx(domain: str) -> RouteFailure:
    # RFC 7505 §4.2: "556 5.1.10 Recipient address has null MX".
    return RouteFailure(True, 556, "5.1.10", f"Recipient address has null MX ({domain})")


def no_such_domain(domain: str) -> RouteFailure:
    return RouteFailure(True, 550, "5.1.2", f"Recipient domain {domain} does not exist")


def invalid_domain(domain: str, why: str = "") -> RouteFailure:
    detail = f": {why}" if why else ""
    return RouteFailure(True, 550, "5.1.2", f"Recipient domain {domain!r} is not valid{detail}")


def no_mail_host(domain: str) -> RouteFailure:
    return RouteFailure(True, 550, "5.1.2",
                        f"Recipient domain {domain} has no MX and no address records")


def unroutable(domain: str, detail: str) -> RouteFailure:
    return RouteFailure(False, 451, "4.4.4", f"Unable to route mail for {domain}: {detail}")


def dns_tempfail(name: str, reason: str) -> RouteFailure:
    why = f": {reason}" if reason else ""
    return RouteFailure(False, 451, "4.4.3", f"DNS temporary failure looking up {name}{why}")


def loops_back(domain: str) -> RouteFailure:
    # RFC 5321 §5.1: a host that finds itself as the best MX must not deliver to itself
    # (Postfix: "mail for X loops back to myself").
    return RouteFailure(True, 554, "5.4.6", f"mail for {domain} loops back to myself")


def denied_network(domain: str, detail: str) -> RouteFailure:
    # Temporary: the DNS answer may be fixed, or the operator may change deny_networks.
    return RouteFailure(False, 451, "4.4.4",
                        f"Unable to route mail for {domain}: MX points to a denied network "
                        f"({detail})")


# ---------------------------------------------------------------------------
# Decisions


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def address_literal(domain: str) -> str | RouteFailure | None:
    """RFC 5321 §4.1.3: "[192.0.2.1]" or "[IPv6:2001:db8::1]" → the address; else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
        if ":" not in inner:
            return invalid_domain(domain, "not an IPv6 address literal")
    elif ":" in inner:
        return invalid_domain(domain, "an IPv6 literal must be written [IPv6:...]")
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return invalid_domain(domain, "not an address literal")


def select_next_hop(domain: str, routes: Mapping[str, HostPort]) -> HostPort | None:
    """The fixed next hop for `domain` from delivery.routes, like a Postfix transport map.

    Precedence: the exact domain, then the closest ".parent" entry (which matches
    subdomains only, as in Postfix), then "*" (smarthost mode).
    """
    if not routes:
        return None
    wanted = normalize_name(domain)
    table = {normalize_name(k): v for k, v in routes.items()}
    if wanted in table:
        return table[wanted]
    labels = wanted.split(".")
    for i in range(1, len(labels)):
        parent = "." + ".".join(labels[i:])
        if parent in table:
            return table[parent]
    return table.get("*")


def plan_mx(domain: str, mx: Lookup[MxRecord], rng: random.Random) -> list[MxHost] | RouteFailure:
    """From the MX answer to the MX hosts in the order to try (RFC 5321 §5.1).

    Preference ascending, random order among equal preference (load spreading the
    domain owner asked for). No MX records → the domain itself at preference 0
    (implicit MX). A lone MX with the root as exchange is a null MX (RFC 7505); root
    entries mixed with real ones are a misconfiguration and are skipped.
    """
    if mx.status is Status.NXDOMAIN:
        return no_such_domain(domain)
    if mx.status is Status.TEMPFAIL:
        return dns_tempfail(f"MX {domain}", mx.reason)
    if not mx.records:
        return [MxHost(domain, 0)]
    real = [r for r in mx.records if not r.is_null]
    if not real:
        return null_mx(domain)
    by_pref: dict[int, list[str]] = {}
    for r in real:
        names = by_pref.setdefault(r.preference, [])
        if r.exchange not in names:
            names.append(r.exchange)
    hosts: list[MxHost] = []
    for pref in sorted(by_pref):
        names = sorted(by_pref[pref])  # a stable base, so a seeded rng gives a stable order
        rng.shuffle(names)
        hosts.extend(MxHost(n, pref) for n in names)
    return hosts


def expand(domain: str, hosts: Sequence[MxHost], addresses: Mapping[str, Lookup[str]],
           port: int, *, implicit: bool = False) -> Route:
    """Each MX host replaced by its addresses, keeping the order; unresolvable hosts skipped.

    `implicit` is true when `hosts` is the implicit MX (the domain itself): then a
    domain without addresses is a permanent failure, not a routing problem.
    """
    targets: list[Target] = []
    seen: set[str] = set()
    temp_reasons: list[str] = []
    for h in hosts:
        found = addresses.get(h.name)
        if found is None:
            continue
        if found.status is Status.TEMPFAIL:
            temp_reasons.append(f"{h.name}: {found.reason}" if found.reason else h.name)
            continue
        for addr in found.records:
            if addr not in seen:
                seen.add(addr)
                targets.append(Target(h.name, addr, port, h.preference))
    if targets:
        return Targets(targets)
    if temp_reasons:
        return dns_tempfail(", ".join(h.name for h in hosts), "; ".join(temp_reasons))
    if implicit:
        only = addresses.get(domain)
        if only is not None and only.status is Status.NXDOMAIN:
            return no_such_domain(domain)
        return no_mail_host(domain)
    names = ", ".join(h.name for h in hosts)
    return unroutable(domain, f"no MX host has an address ({names})")


def next_hop(domain: str, host: str, port: int, addresses: Lookup[str] | None) -> Route:
    """A fixed next hop from delivery.routes: an IP literal is used as is, a name by its
    A/AAAA addresses (never MX). A next hop that does not resolve is our configuration's
    fault, so mail waits (4.4.4) instead of bouncing."""
    if is_ip_literal(host):
        return Targets([Target(host, host, port, 0)])
    if addresses is None or addresses.status is Status.NXDOMAIN or (
            addresses.ok and not addresses.records):
        return unroutable(domain, f"next hop {host} has no address")
    if addresses.status is Status.TEMPFAIL:
        return dns_tempfail(host, addresses.reason)
    targets: list[Target] = []
    for addr in addresses.records:
        if all(t.address != addr for t in targets):
            targets.append(Target(host, addr, port, 0))
    return Targets(targets)


# ---------------------------------------------------------------------------
# Where a route may point: loops back to relay itself, denied networks


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ip(text: str) -> IpAddress | None:
    """The address, an IPv4-mapped IPv6 address as its IPv4 (the host it reaches)."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# The SMTP port: where a host's MTA listens (Postfix checks for loops only on it).
SMTP_PORT = 25

# "This host on this network" (RFC 1122 §3.2.1.3, RFC 6890) and the IPv6 unspecified
# address: never a destination. Linux connects 0.0.0.0 (and ::) to the host itself.
_THIS_HOST = (ipaddress.ip_network("0.0.0.0/8"), ipaddress.ip_network("::/128"))


def is_unspecified(address: str) -> bool:
    """0.0.0.0/8 or :: (an IPv4-mapped one too): an address that reaches this host."""
    ip = _ip(address)
    return ip is not None and any(ip.version == n.version and ip in n for n in _THIS_HOST)


def is_own(address: str, port: int, own: Collection[tuple[str, int]],
           local: Collection[str] = ()) -> bool:
    """Whether (address, port) reaches one of relay's own listening sockets.

    `own` holds the bound (ip, port) of each listener; a wildcard listener (0.0.0.0 or
    ::) matches any local address of its family on that port: a loopback address or one
    in `local` (the host's own addresses, found by the caller).
    """
    ip = _ip(address)
    if ip is None:
        return False
    for own_host, own_port in own:
        if own_port != port:
            continue
        mine = _ip(own_host)
        if mine is None:
            continue
        if mine == ip:
            return True
        if mine.is_unspecified and mine.version == ip.version and (
                ip.is_loopback or any(_ip(a) == ip for a in local)):
            return True
    return False


def is_host_address(address: str, local: Collection[str] = ()) -> bool:
    """Whether `address` is one of this host's: unspecified, loopback (all of 127.0.0.0/8,
    ::1) or in `local` (the interface addresses the caller found)."""
    ip = _ip(address)
    if ip is None:
        return False
    return is_unspecified(address) or ip.is_loopback or any(_ip(a) == ip for a in local)


def loops_to_self(address: str, port: int, own: Collection[tuple[str, int]],
                  local: Collection[str] = (), *, host_on_smtp_port: bool = False) -> bool:
    """Whether delivering to (address, port) would reach this host's own mail service.

    Always: an unspecified address (0.0.0.0/8, ::), whatever the port, since the kernel
    connects it to this host; and any address that reaches one of relay's listeners
    (`is_own`). With `host_on_smtp_port` (routes relay did not choose: MX, implicit MX,
    address literals): also any address of this host on port 25, as Postfix does (its
    loop check is on for port 25 and matches every address it receives mail on): there
    the host's mail service is relay, a proxy in front of it, or a local MTA that may
    hand the mail back. Other ports are left to the listener check, so a content filter
    or a test sink on a loopback port is not a loop.
    """
    if is_unspecified(address) or is_own(address, port, own, local):
        return True
    return host_on_smtp_port and port == SMTP_PORT and is_host_address(address, local)


def parse_networks(cidrs: Sequence[str]) -> list[IpNetwork]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def denied_by(address: str, networks: Sequence[IpNetwork]) -> IpNetwork | None:
    """The first of `networks` holding `address` (IPv4-mapped IPv6 as IPv4), or None."""
    ip = _ip(address)
    if ip is None:
        return None
    for net in networks:
        if ip.version == net.version and ip in net:
            return net
    return None


def without_loops(domain: str, route: Route, own: Collection[tuple[str, int]],
                  local: Collection[str] = (), *, host_on_smtp_port: bool = False) -> Route:
    """`route` without the targets that loop back to this host (see `loops_to_self`);
    none left → 554 5.4.6 "mail for <domain> loops back to myself"."""
    if not isinstance(route, Targets):
        return route
    kept = [t for t in route.hosts
            if not loops_to_self(t.address, t.port, own, local,
                                 host_on_smtp_port=host_on_smtp_port)]
    if len(kept) == len(route.hosts):
        return route
    return Targets(kept) if kept else loops_back(domain)


def limited(route: Route, limit: int) -> Route:
    """At most `limit` addresses, the first in order (Postfix's smtp_mx_address_limit): a
    domain with a hundred MX hosts gets no more connections than one with five."""
    if not isinstance(route, Targets) or len(route.hosts) <= limit:
        return route
    return Targets(route.hosts[:limit])


def without_denied(domain: str, route: Route, networks: Sequence[IpNetwork]) -> Route:
    """`route` without the targets in `networks` (delivery.deny_networks); none left →
    451 4.4.4 "MX points to a denied network", so no connection is ever attempted."""
    if not isinstance(route, Targets) or not networks:
        return route
    kept: list[Target] = []
    denied: list[str] = []
    for t in route.hosts:
        net = denied_by(t.address, networks)
        if net is None:
            kept.append(t)
        else:
            denied.append(f"{t.host_name} {t.address} in {net}")
    if kept:
        return route if not denied else Targets(kept)
    return denied_network(domain, "; ".join(denied))
