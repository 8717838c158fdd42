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

Routes are kept (`_RouteCache`, ROUTE_CACHE_ENTRIES destinations, least recently used
dropped first) for as long as every DNS answer they were built from (Lookup.expires_at:
the answer's TTL as the resolver caches it, so a route goes when the resolver would ask
again) and at most LOCAL_ADDRESS_TTL (the loop check's interface addresses); an answer
of unknown lifetime (a temporary failure, a resolver that does not say) is never kept.
A hit costs a dict lookup instead of the resolver's cache, `ipaddress` parsing of every
target and the loop and deny checks. Kept whole only where nothing is random: with MX
hosts of equal preference (shuffled per message, RFC 5321 §5.1) only the DNS answers are
kept and the order is drawn again. MTA-STS applies on every hit (the policy source keeps
its own answer for its TXT record's TTL). A change of listeners or `configure()` (new
delivery settings: routes, deny_networks, port) drops what was kept.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from relay.clock import Clock, SystemClock
from relay.config import Delivery
from relay.delivery import mtasts
from relay.dns.answers import Lookup, MxRecord, Resolver, normalize_name
from relay.dns.cache import TtlCache
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
# Destinations whose route is kept (about 1 KB each with a few targets).
ROUTE_CACHE_ENTRIES = 4096


@dataclass(frozen=True, slots=True)
class _Kept:
    """A destination's route as built, or (MX hosts of equal preference) its DNS answers.

    `route`: the route before MTA-STS and the address limit; None when the MX order is
    drawn per message, then `mx` and `found` rebuild it without asking the resolver.
    `own`: relay's listeners when it was built (a loop check depends on them)."""

    route: Route | None
    mx_route: bool
    own: frozenset[tuple[str, int]]
    mx: Lookup[MxRecord] | None = None
    found: dict[str, Lookup[str]] | None = None
    # Addresses that passed the loop and deny checks (with the MX port): a new order of
    # only these needs no checks again.
    clean: frozenset[str] = frozenset()


def _valid_until(lookups: Collection[Lookup[MxRecord] | Lookup[str] | None]) -> float:
    """When the first of `lookups` expires (0.0 if one has no known lifetime)."""
    until = float("inf")
    for found in lookups:
        if found is not None:
            until = min(until, found.expires_at)
    return until


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
        # The resolver's clock: a Lookup's expires_at is on its monotonic time.
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._local: dict[str, tuple[bool, float]] = {}  # address -> (local, checked at)
        self._kept: TtlCache[str, _Kept] = TtlCache(self._clock, ROUTE_CACHE_ENTRIES)

    @property
    def config(self) -> Delivery:
        return self._cfg

    def configure(self, delivery_cfg: Delivery) -> None:
        """Route with new delivery settings (a reload) from the next route on."""
        self._cfg = delivery_cfg
        self._deny = parse_networks(delivery_cfg.deny_networks)
        self._kept.clear()

    async def route(self, domain: str) -> Route:
        name = normalize_name(domain)
        if not name or len(name) > 253:
            return invalid_domain(domain)
        own = frozenset(self.own_addresses)
        kept = self._kept.get(name)
        if kept is not None and kept.own == own:
            route = kept.route
            if route is None:  # MX hosts of equal preference: a new order, no DNS asked
                assert kept.mx is not None and kept.found is not None
                route = (await self._mx_targets(name, kept.mx, dict(kept.found),
                                                kept.clean))[0]
            return await self._finish(name, route, kept.mx_route)
        route, built, until = await self._build(name, own)
        # Not kept (put drops it) when an answer's lifetime is unknown or already over.
        self._kept.put(name, built, min(until - self._clock.monotonic(), LOCAL_ADDRESS_TTL))
        return await self._finish(name, route, built.mx_route)

    async def _build(self, name: str,
                     own: frozenset[tuple[str, int]]) -> tuple[Route, _Kept, float]:
        """The route of `name` before MTA-STS and the address limit, what to keep of it,
        and until when (the clock's monotonic time) it may be kept."""
        hop = select_next_hop(name, self._cfg.routes)
        if hop is not None:
            hop_found = None if is_ip_literal(hop.host) else await self._resolver.addresses(
                hop.host)
            route = self._usable(name, next_hop(name, hop.host, hop.port, hop_found),
                                 chosen=True)
            return route, _Kept(route, False, own), _valid_until([hop_found])
        literal = address_literal(name)
        if isinstance(literal, RouteFailure):
            return literal, _Kept(literal, False, own), float("inf")
        if literal is not None:
            route = self._usable(name, Targets([Target(literal, literal, self._cfg.port, 0)]))
            return route, _Kept(route, False, own), float("inf")
        mx = await self._resolver.mx(name)
        route, found, drawn = await self._mx_targets(name, mx, {})
        until = _valid_until([mx, *found.values()])
        if drawn:
            clean = frozenset(t.address for t in route.hosts) if isinstance(
                route, Targets) else frozenset[str]()
            return route, _Kept(None, True, own, mx, found, clean), until
        return route, _Kept(route, True, own), until

    async def _mx_targets(self, name: str, mx: Lookup[MxRecord], found: dict[str, Lookup[str]],
                          clean: frozenset[str] = frozenset(),
                          ) -> tuple[Route, dict[str, Lookup[str]], bool]:
        """The MX route from the MX answer, asking for the MX hosts' addresses not in
        `found` (which it fills); and whether its order was drawn at random. Targets all
        in `clean` are known to pass the loop and deny checks."""
        plan = plan_mx(name, mx, self._rng)
        if isinstance(plan, RouteFailure):
            return plan, found, False
        drawn = len({h.preference for h in plan}) < len(plan)
        implicit = mx.ok and not mx.records
        limit = self._cfg.mx_address_limit
        names = list(dict.fromkeys(h.name for h in plan))
        route: Route
        asked = 0
        while True:
            # The next MX host names, `limit` at a time (each has at least one address or
            # none): enough for `limit` usable addresses unless some are not usable.
            batch = names[asked:asked + limit]
            asked += len(batch)
            wanted = [n for n in batch if n not in found]
            results: list[Lookup[str]]
            if len(wanted) <= 1:  # the usual case: no task per lookup (gather makes one each)
                results = [await self._resolver.addresses(n) for n in wanted]
            else:
                results = await asyncio.gather(*(self._resolver.addresses(n) for n in wanted))
            found.update(zip(wanted, results, strict=True))
            looked = set(names[:asked])
            hosts = [h for h in plan if h.name in looked]
            route = expand(name, hosts, found, self._cfg.port, implicit=implicit)
            if not (isinstance(route, Targets) and clean.issuperset(
                    t.address for t in route.hosts)):
                route = self._usable(name, route)
            if asked == len(names) or (
                    isinstance(route, Targets) and len(route.hosts) >= limit):
                break
        return route, found, drawn

    async def _finish(self, name: str, route: Route, mx_route: bool) -> Route:
        """MTA-STS (MX routes), then at most delivery.mx_address_limit addresses."""
        if mx_route and self.mta_sts is not None and isinstance(route, Targets):
            route, notes = mtasts.apply(name, await self.mta_sts.policy(name), route)
            for note in notes:
                log.warning("%s", note)
        return limited(route, self._cfg.mx_address_limit)

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
