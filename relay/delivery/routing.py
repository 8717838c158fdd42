"""Mail routing: from a recipient domain to the addresses to try, or a reason not to.

Owns: the I/O order of lookups (delivery.routes first, then MX, then each MX host's
A/AAAA, concurrently). Every decision (preference order, null MX, implicit MX, which
failure is permanent) is made by the pure functions in relay.dns.route; this module only
asks the Resolver and never sees a dnspython exception. With an MTA-STS source (RFC 8461),
MX routes go through relay.delivery.mtasts.apply: enforce keeps only the policy's MX hosts
and marks them tls="verify"; next hops (delivery.routes) and address literals are ours to
choose, so no policy applies to them.

Targets that are relay's own listeners (`own_addresses`, the bound sockets app.py fills
in as listeners start) are dropped on every kind of route, 554 5.4.6 when none is left;
MX and address-literal targets in delivery.deny_networks are dropped, 451 4.4.4 when none
is left (next hops are the operator's choice, so exempt).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Collection
from typing import Protocol

from relay.config import Delivery
from relay.delivery import mtasts
from relay.dns.answers import Lookup, Resolver, normalize_name
from relay.dns.route import (
    Route,
    RouteFailure,
    Target,
    Targets,
    address_literal,
    expand,
    invalid_domain,
    is_ip_literal,
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
    """Whether `address` is one of this host's addresses: binding to it succeeds (the
    kernel refuses a foreign address with EADDRNOTAVAIL). No packet is sent; not
    cached, as interface addresses change. Only asked for a target on a wildcard
    listener's port."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((address, 0))
    except OSError:
        return False
    return True


class Router:
    def __init__(self, delivery_cfg: Delivery, resolver: Resolver, rng: random.Random, *,
                 mta_sts: PolicySource | None = None,
                 own_addresses: Collection[tuple[str, int]] = ()) -> None:
        self._cfg = delivery_cfg
        self._resolver = resolver
        self._rng = rng
        self.mta_sts = mta_sts
        # relay's own listening sockets (ip, port); read at each route, so the caller may
        # pass a set it fills as listeners bind.
        self.own_addresses = own_addresses
        self._deny = parse_networks(delivery_cfg.deny_networks)

    async def route(self, domain: str) -> Route:
        route = await self._route(domain)
        if self.own_addresses and isinstance(route, Targets):
            wild = {port for host, port in self.own_addresses if host in ("0.0.0.0", "::")}
            local = [t.address for t in route.hosts
                     if t.port in wild and is_local_address(t.address)]
            route = without_loops(normalize_name(domain), route, self.own_addresses, local)
        return route

    async def _route(self, domain: str) -> Route:
        name = normalize_name(domain)
        if not name or len(name) > 253:
            return invalid_domain(domain)
        hop = select_next_hop(name, self._cfg.routes)
        if hop is not None:
            found = None if is_ip_literal(hop.host) else await self._resolver.addresses(hop.host)
            return next_hop(name, hop.host, hop.port, found)
        literal = address_literal(name)
        if isinstance(literal, RouteFailure):
            return literal
        if literal is not None:
            return without_denied(name, Targets([Target(literal, literal, self._cfg.port, 0)]),
                                  self._deny)
        mx = await self._resolver.mx(name)
        plan = plan_mx(name, mx, self._rng)
        if isinstance(plan, RouteFailure):
            return plan
        names = list(dict.fromkeys(h.name for h in plan))
        results: list[Lookup[str]]
        if len(names) == 1:  # the usual case: no task per lookup (gather makes one each)
            results = [await self._resolver.addresses(names[0])]
        else:
            results = await asyncio.gather(*(self._resolver.addresses(n) for n in names))
        implicit = mx.ok and not mx.records
        route = expand(name, plan, dict(zip(names, results, strict=True)), self._cfg.port,
                       implicit=implicit)
        route = without_denied(name, route, self._deny)
        if self.mta_sts is None or not isinstance(route, Targets):
            return route
        route, notes = mtasts.apply(name, await self.mta_sts.policy(name), route)
        for note in notes:
            log.warning("%s", note)
        return route
