"""Router + DnsResolver against the real loopback DnsServer (RFC 5321 §5.1, RFC 7505)."""

from __future__ import annotations

import random

import pytest

from relay.clock import FakeClock
from relay.config import Delivery, NextHop, loads
from relay.delivery.routing import Router
from relay.dns.resolver import DnsResolver
from relay.dns.route import RouteFailure, Target, Targets
from relay.testing.dnsserver import DnsServer
from relay.testing.factories import DnsServers

ZONE = {
    "example.com": [("MX", "20 backup.example.com", 300), ("MX", "10 primary.example.com", 300)],
    "primary.example.com": [("A", "127.0.0.2", 300), ("AAAA", "::1", 300)],
    "backup.example.com": [("A", "127.0.0.3", 300)],
    "balanced.test": [("MX", "10 a.balanced.test", 300), ("MX", "10 b.balanced.test", 300)],
    "a.balanced.test": [("A", "127.0.0.11", 300)],
    "b.balanced.test": [("A", "127.0.0.12", 300)],
    "implicit.test": [("A", "127.0.0.20", 300), ("TXT", "no mx here", 300)],
    "nullmx.test": [("MX", "0 .", 300), ("A", "127.0.0.21", 300)],
    "txtonly.test": [("TXT", "v=spf1 -all", 300)],
    "dangling.test": [("MX", "10 gone.dangling.test", 300), ("MX", "20 empty.dangling.test", 300)],
    "empty.dangling.test": [("TXT", "no address", 300)],
    "halfbroken.test": [("MX", "10 gone.halfbroken.test", 300),
                        ("MX", "20 ok.halfbroken.test", 300)],
    "ok.halfbroken.test": [("A", "127.0.0.30", 300)],
    "smarthost.example.net": [("A", "127.0.0.40", 300)],
}


@pytest.fixture
def ns(dns_server: DnsServers) -> DnsServer:
    return dns_server(ZONE)


def router(ns: DnsServer, *, port: int = 2525, routes: dict[str, NextHop] | None = None,
           seed: int = 0, clock: FakeClock | None = None) -> Router:
    resolver = DnsResolver([("127.0.0.1", ns.port)], clock=clock or FakeClock(), timeout=0.3)
    return Router(Delivery(port=port, routes=routes or {}), resolver, random.Random(seed))


async def test_mx_preference_order_with_addresses(ns: DnsServer) -> None:
    route = await router(ns).route("example.com")
    assert route == Targets([Target("primary.example.com", "127.0.0.2", 2525, 10),
                             Target("primary.example.com", "::1", 2525, 10),
                             Target("backup.example.com", "127.0.0.3", 2525, 20)])


async def test_equal_preference_order_is_random_and_seeded(ns: DnsServer) -> None:
    r = router(ns, seed=1234)
    orders = set()
    for _ in range(30):
        route = await r.route("balanced.test")
        assert isinstance(route, Targets)
        orders.add(tuple(t.host_name for t in route.hosts))
    assert orders == {("a.balanced.test", "b.balanced.test"),
                      ("b.balanced.test", "a.balanced.test")}
    first = [await router(ns, seed=5).route("balanced.test") for _ in range(2)]
    assert first[0] == first[1]  # a fresh Router with the same seed makes the same choice


async def test_implicit_mx(ns: DnsServer) -> None:
    assert await router(ns).route("implicit.test") == Targets(
        [Target("implicit.test", "127.0.0.20", 2525, 0)])


async def test_null_mx_is_permanent_556(ns: DnsServer) -> None:
    route = await router(ns).route("nullmx.test")
    assert isinstance(route, RouteFailure)
    assert (route.permanent, route.code, route.enhanced) == (True, 556, "5.1.10")
    assert ns.query_count("nullmx.test", "A") == 0  # RFC 7505: no fallback to the A record


async def test_nxdomain_is_permanent_550(ns: DnsServer) -> None:
    route = await router(ns).route("no-such-domain.test")
    assert isinstance(route, RouteFailure)
    assert (route.permanent, route.code, route.enhanced) == (True, 550, "5.1.2")
    assert "does not exist" in route.text


async def test_no_mx_and_no_address_is_permanent(ns: DnsServer) -> None:
    route = await router(ns).route("txtonly.test")
    assert isinstance(route, RouteFailure)
    assert (route.permanent, route.enhanced) == (True, "5.1.2")


async def test_unresolvable_mx_host_is_skipped(ns: DnsServer) -> None:
    assert await router(ns).route("halfbroken.test") == Targets(
        [Target("ok.halfbroken.test", "127.0.0.30", 2525, 20)])


async def test_all_mx_hosts_unresolvable_is_temporary_4_4_4(ns: DnsServer) -> None:
    route = await router(ns).route("dangling.test")
    assert isinstance(route, RouteFailure)
    assert (route.permanent, route.code, route.enhanced) == (False, 451, "4.4.4")


@pytest.mark.parametrize("mode", ["SERVFAIL", "TIMEOUT"])
async def test_dns_failure_is_temporary_4_4_3(ns: DnsServer, mode: str) -> None:
    ns.fail("example.com", mode)  # type: ignore[arg-type]
    route = await router(ns).route("example.com")
    assert isinstance(route, RouteFailure)
    assert (route.permanent, route.code, route.enhanced) == (False, 451, "4.4.3")


async def test_mx_host_failure_is_temporary_when_nothing_else_resolves(ns: DnsServer) -> None:
    ns.fail("primary.example.com", "SERVFAIL")
    ns.fail("backup.example.com", "SERVFAIL")
    route = await router(ns).route("example.com")
    assert isinstance(route, RouteFailure)
    assert (route.permanent, route.enhanced) == (False, "4.4.3")


async def test_second_route_is_served_from_cache(ns: DnsServer) -> None:
    clock = FakeClock()
    r = router(ns, clock=clock)
    first = await r.route("example.com")
    assert await r.route("example.com") == first
    assert ns.query_count("example.com", "MX") == 1
    assert ns.query_count("primary.example.com", "A") == 1
    clock.advance(300)
    await r.route("example.com")
    assert ns.query_count("example.com", "MX") == 2


async def test_route_for_a_domain_overrides_mx(ns: DnsServer) -> None:
    routes = {"example.com": NextHop("127.0.0.50", 2526)}
    assert await router(ns, routes=routes).route("example.com") == Targets(
        [Target("127.0.0.50", "127.0.0.50", 2526, 0)])
    assert ns.queries == []


async def test_smarthost_star_route_resolves_by_address_not_mx(ns: DnsServer) -> None:
    routes = {"*": NextHop("smarthost.example.net", 587),
              "balanced.test": NextHop("127.0.0.60", 25)}
    r = router(ns, routes=routes)
    assert await r.route("anything.example") == Targets(
        [Target("smarthost.example.net", "127.0.0.40", 587, 0)])
    assert await r.route("balanced.test") == Targets([Target("127.0.0.60", "127.0.0.60", 25, 0)])
    assert ns.query_count(rdtype="MX") == 0


async def test_route_host_that_does_not_resolve_is_temporary(ns: DnsServer) -> None:
    route = await router(ns, routes={"*": NextHop("missing.example.net", 25)}).route("x.test")
    assert isinstance(route, RouteFailure) and not route.permanent


async def test_router_built_from_config(ns: DnsServer) -> None:
    cfg = loads(f'[dns]\nnameservers = ["{ns.nameserver}"]\ntimeout = "300ms"\n'
                '[delivery]\nport = 2526\n[delivery.routes]\n"special.test" = "127.0.0.70:2527"\n')
    r = Router(cfg.delivery, DnsResolver.from_config(cfg.dns, FakeClock()), random.Random(0))
    assert await r.route("implicit.test") == Targets(
        [Target("implicit.test", "127.0.0.20", 2526, 0)])
    assert await r.route("special.test") == Targets(
        [Target("127.0.0.70", "127.0.0.70", 2527, 0)])
