"""Mail routing: from a recipient domain to the addresses to try, or a reason not to.

Owns: the I/O order of lookups (delivery.routes first, then MX, then each MX host's
A/AAAA, concurrently). Every decision (preference order, null MX, implicit MX, which
failure is permanent) is made by the pure functions in relay.dns.route; this module only
asks the Resolver and never sees a dnspython exception. With an MTA-STS source (RFC 8461),
MX routes go through relay.delivery.mtasts.apply: enforce keeps only the policy's MX hosts
and marks them tls="verify"; next hops (delivery.routes) and address literals are ours to
choose, so no policy applies to them.

Targets that loop back to this host are dropped on every kind of route, 554 5.4.6 when
none is left (relay.dns.route `loops_to_self`): an unspecified address, or one of relay's
own listeners (`own_addresses`, the bound sockets app.py fills in as listeners start);
and, on routes relay did not choose (MX, implicit MX, address literals), any address of
this host on port 25. Then MX and address-literal targets in delivery.deny_networks are
dropped, 451 4.4.4 when none is left (next hops are the operator's choice, so exempt).
An MX route keeps at most delivery.mx_address_limit addresses: MX host names are looked
up in preference order, a batch at a time, only until that many usable addresses are
known, so a domain with a hundred MX hosts costs no more lookups than it needs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from collections.abc import Collection
from typing import Protocol

from relay.clock import Clock, SystemClock
from relay.config import Delivery
from relay.delivery import mtasts
from relay.dns.answers import Lookup, Resolver, normalize_name
from relay.dns.route import (
    SMTP_PORT,
    Route,
    RouteFailure,
    Target,
    Targets,
    address_literal,
    expand,
    invalid_domain,
    is_host_address,
    is_ip_literal,
    is_unspecified,
    limited,
    next_hop,
    parse_networks,
    plan_mx,
    select_next_hop,
    without_denied,
    without_loops,
)

__all__ = ["Route", "RouteFailure", "Router", "Target", "Targets"]

log = logging.getLogger("relay.routing")


class PolicySource(Protocol):
    """relay/delivery/mtasts_fetch.py `MtaSts`: the MTA-STS policy of a domain, or None."""

    async def policy(self, domain: str) -> mtasts.Policy | None: ...


def is_local_address(address: str) -> bool:
    """Whether `address` is one of this host's interface addresses.

    A UDP socket connected to it (no packet is sent) gets it as its own source address:
    the kernel routes an address of this host through its local table, whose preferred
    source is the address itself. Unlike a bind() test this holds with
    net.ipv4.ip_nonlocal_bind = 1, where every bind succeeds. Loopback and unspecified
    addresses are recognised without it (relay.dns.route). About 40 µs: Router caches
    the answers for LOCAL_ADDRESS_TTL."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((str(ip), 9))
            source = sock.getsockname()[0]
    except OSError:
        return False
    return bool(ipaddress.ip_address(source) == ip)


# How long an is_local_address answer is reused: an interface address added or removed
# is noticed within this long (on port 25 every MX address is asked about).
LOCAL_ADDRESS_TTL = 60.0
_LOCAL_CACHE_MAX = 4096


class Router:
    def __init__(self, delivery_cfg: Delivery, resolver: Resolver, rng: random.Random, *,
                 mta_sts: PolicySource | None = None,
                 own_addresses: Collection[tuple[str, int]] = (),
                 clock: Clock | None = None) -> None:
        self._cfg = delivery_cfg
        self._resolver = resolver
        self._rng = rng
        self.mta_sts = mta_sts
        # relay's own listening sockets (ip, port); read at each route, so the caller may
        # pass a set it fills as listeners bind.
        self.own_addresses = own_addresses
        self._deny = parse_networks(delivery_cfg.deny_networks)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._local: dict[str, tuple[bool, float]] = {}  # address -> (local, checked at)

    async def route(self, domain: str) -> Route:
        name = normalize_name(domain)
        if not name or len(name) > 253:
            return invalid_domain(domain)
        hop = select_next_hop(name, self._cfg.routes)
        if hop is not None:
            found = None if is_ip_literal(hop.host) else await self._resolver.addresses(hop.host)
            return self._usable(name, next_hop(name, hop.host, hop.port, found), chosen=True)
        literal = address_literal(name)
        if isinstance(literal, RouteFailure):
            return literal
        if literal is not None:
            return self._usable(name, Targets([Target(literal, literal, self._cfg.port, 0)]))
        return await self._mx_route(name)

    async def _mx_route(self, name: str) -> Route:
        mx = await self._resolver.mx(name)
        plan = plan_mx(name, mx, self._rng)
        if isinstance(plan, RouteFailure):
            return plan
        implicit = mx.ok and not mx.records
        limit = self._cfg.mx_address_limit
        names = list(dict.fromkeys(h.name for h in plan))
        found: dict[str, Lookup[str]] = {}
        route: Route
        while True:
            # The next MX host names, `limit` at a time (each has at least one address or
            # none): enough for `limit` usable addresses unless some are not usable.
            batch = names[len(found):len(found) + limit]
            results: list[Lookup[str]]
            if len(batch) == 1:  # the usual case: no task per lookup (gather makes one each)
                results = [await self._resolver.addresses(batch[0])]
            else:
                results = await asyncio.gather(*(self._resolver.addresses(n) for n in batch))
            found.update(zip(batch, results, strict=True))
            hosts = [h for h in plan if h.name in found]
            route = self._usable(name, expand(name, hosts, found, self._cfg.port,
                                              implicit=implicit))
            if len(found) == len(names) or (
                    isinstance(route, Targets) and len(route.hosts) >= limit):
                break
        if self.mta_sts is not None and isinstance(route, Targets):
            route, notes = mtasts.apply(name, await self.mta_sts.policy(name), route)
            for note in notes:
                log.warning("%s", note)
        return limited(route, limit)

    def _usable(self, name: str, route: Route, *, chosen: bool = False) -> Route:
        """`route` without the targets that loop back to this host, then (unless `chosen`:
        a next hop from delivery.routes) without those in delivery.deny_networks."""
        if not isinstance(route, Targets):
            return route
        wild = {port for host, port in self.own_addresses if is_unspecified(host)}
        local = [t.address for t in route.hosts
                 if (t.port in wild or (not chosen and t.port == SMTP_PORT))
                 and self._is_local(t.address)]
        route = without_loops(name, route, self.own_addresses, local,
                              host_on_smtp_port=not chosen)
        return route if chosen else without_denied(name, route, self._deny)

    def _is_local(self, address: str) -> bool:
        """is_local_address, remembered for LOCAL_ADDRESS_TTL (loopback and unspecified
        addresses are decided in relay.dns.route without asking)."""
        if is_host_address(address):
            return True
        now = self._clock.monotonic()
        known = self._local.get(address)
        if known is not None and now - known[1] < LOCAL_ADDRESS_TTL:
            return known[0]
        if len(self._local) >= _LOCAL_CACHE_MAX:
            self._local.clear()
        local = is_local_address(address)
        self._local[address] = (local, now)
        return local
