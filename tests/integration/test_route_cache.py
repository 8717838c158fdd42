"""Routes kept per destination (Router's route cache) against the real loopback DnsServer:
kept only while every DNS answer they were built from is, and never past a change of
delivery settings or listeners; the routes themselves are the ones built afresh."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from relay.clock import FakeClock
from relay.config import Delivery, NextHop
from relay.delivery.mtasts_fetch import MtaSts
from relay.delivery.routing import LOCAL_ADDRESS_TTL, Router
from relay.dns.resolver import DnsResolver
from relay.dns.route import RouteFailure, Target, Targets
from relay.testing.dnsserver import DnsServer
from relay.testing.factories import DnsServers

ZONE = {
    "kept.test": [("MX", "10 mx.kept.test", 300)],
    "mx.kept.test": [("A", "127.0.0.2", 30)],
    "balanced.test": [("MX", "10 a.balanced.test", 300), ("MX", "10 b.balanced.test", 300),
                      ("MX", "20 c.balanced.test", 300)],
    "a.balanced.test": [("A", "127.0.0.11", 300)],
    "b.balanced.test": [("A", "127.0.0.12", 300)],
    "c.balanced.test": [("A", "127.0.0.13", 300)],
    "hop.example.net": [("A", "127.0.0.40", 300)],
}


@pytest.fixture
def ns(dns_server: DnsServers) -> DnsServer:
    return dns_server(ZONE)


def make(ns: DnsServer, clock: FakeClock, *, seed: int = 0,
         own: set[tuple[str, int]] | None = None) -> tuple[Router, DnsResolver]:
    resolver = DnsResolver([("127.0.0.1", ns.port)], clock=clock, timeout=0.5)
    router = Router(Delivery(port=2525), resolver, random.Random(seed),
                    own_addresses=own if own is not None else set(), clock=clock)
    return router, resolver


async def test_kept_route_asks_neither_dns_nor_the_resolver_cache(ns: DnsServer) -> None:
    clock = FakeClock()
    router, resolver = make(ns, clock)
    first = await router.route("kept.test")
    assert first == Targets([Target("mx.kept.test", "127.0.0.2", 2525, 10)])
    hits = resolver.cache.hit_count
    assert await router.route("Kept.Test.") == first
    assert resolver.cache.hit_count == hits
    assert ns.query_count("kept.test", "MX") == 1


async def test_address_ttl_expiry_is_seen(ns: DnsServer) -> None:
    """The route goes with its shortest-lived answer (the A record's 30 s, not the MX's)."""
    clock = FakeClock()
    router, _ = make(ns, clock)
    await router.route("kept.test")
    ns.set("mx.kept.test", "A", "127.0.0.3", ttl=30)
    clock.advance(29)
    assert await router.route("kept.test") == Targets(
        [Target("mx.kept.test", "127.0.0.2", 2525, 10)])
    clock.advance(1)
    assert await router.route("kept.test") == Targets(
        [Target("mx.kept.test", "127.0.0.3", 2525, 10)])


async def test_mx_change_to_null_mx_is_seen_after_its_ttl(ns: DnsServer) -> None:
    clock = FakeClock()
    router, _ = make(ns, clock)
    ns.set("mx.kept.test", "A", "127.0.0.2", ttl=3600)
    await router.route("kept.test")
    ns.set("kept.test", "MX", "0 .", ttl=300)
    clock.advance(299)
    assert isinstance(await router.route("kept.test"), Targets)
    clock.advance(1)
    route = await router.route("kept.test")
    assert isinstance(route, RouteFailure) and (route.code, route.enhanced) == (556, "5.1.10")


async def test_route_is_rebuilt_at_least_every_local_address_ttl(ns: DnsServer) -> None:
    clock = FakeClock()
    router, _ = make(ns, clock)
    ns.set("kept.test", "MX", "10 mx.kept.test", ttl=3600)
    ns.set("mx.kept.test", "A", "127.0.0.2", ttl=3600)
    await router.route("kept.test")
    clock.advance(LOCAL_ADDRESS_TTL)
    await router.route("kept.test")
    assert ns.query_count("kept.test", "MX") == 1  # the resolver's answer still holds
    assert router._kept.miss_count == 2  # but the route was built again


async def test_temporary_failure_is_not_kept(ns: DnsServer) -> None:
    clock = FakeClock()
    router, _ = make(ns, clock)
    ns.fail("kept.test", "SERVFAIL")
    route = await router.route("kept.test")
    assert isinstance(route, RouteFailure) and route.enhanced == "4.4.3"
    ns.heal()
    assert await router.route("kept.test") == Targets(
        [Target("mx.kept.test", "127.0.0.2", 2525, 10)])


async def test_override_change_is_seen_at_once(ns: DnsServer) -> None:
    clock = FakeClock()
    router, _ = make(ns, clock)
    await router.route("kept.test")
    router.configure(Delivery(port=2525, routes={"kept.test": NextHop("hop.example.net", 2600)}))
    assert await router.route("kept.test") == Targets(
        [Target("hop.example.net", "127.0.0.40", 2600, 0)])
    router.configure(Delivery(port=2525, deny_networks=["127.0.0.0/24"]))
    route = await router.route("kept.test")
    assert isinstance(route, RouteFailure) and route.enhanced == "4.4.4"


async def test_a_new_listener_makes_a_kept_route_a_loop(ns: DnsServer) -> None:
    clock = FakeClock()
    own: set[tuple[str, int]] = set()
    router, _ = make(ns, clock, own=own)
    assert isinstance(await router.route("kept.test"), Targets)
    own.add(("127.0.0.2", 2525))
    route = await router.route("kept.test")
    assert isinstance(route, RouteFailure) and (route.code, route.enhanced) == (554, "5.4.6")


async def test_equal_preference_order_is_drawn_per_message_as_without_cache(
        ns: DnsServer) -> None:
    """Kept answers, same draws: the order of each route is the one a router that keeps
    nothing gives with the same seed (it is dropped before every route there)."""
    clock = FakeClock()
    kept, resolver = make(ns, clock, seed=7)
    fresh, _ = make(ns, clock, seed=7)
    orders = set()
    for _ in range(24):
        fresh.configure(fresh.config)  # drops what it kept
        want = await fresh.route("balanced.test")
        got = await kept.route("balanced.test")
        assert got == want
        assert isinstance(got, Targets) and got.hosts[-1].host_name == "c.balanced.test"
        orders.add(tuple(t.host_name for t in got.hosts))
    assert len(orders) == 2
    # Every later route drew its order from the kept answers, not the resolver's cache.
    assert resolver.cache.hit_count == 0


async def test_mta_sts_answer_kept_for_the_txt_ttl_then_asked_again(
        ns: DnsServer, tmp_path: Path) -> None:
    """No policy (no TXT record) is kept as long as that negative answer; a TXT record
    published meanwhile starts a policy fetch once it has expired."""
    clock = FakeClock()
    with socket.socket() as closed:  # a port nothing listens on: the fetch fails fast
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    resolver = DnsResolver([("127.0.0.1", ns.port)], clock=clock, timeout=0.5,
                           negative_cache_ttl=60)
    sts = MtaSts(resolver, tmp_path, clock, timeout=1.0, _https_port=port)
    router = Router(Delivery(port=2525), resolver, random.Random(0), mta_sts=sts, clock=clock)
    ns.set("mta-sts.kept.test", "A", "127.0.0.1")
    await router.route("kept.test")
    ns.set("_mta-sts.kept.test", "TXT", "v=STSv1; id=1")
    clock.advance(59)
    await router.route("kept.test")
    assert (sts.fetch_count, ns.query_count("_mta-sts.kept.test", "TXT")) == (0, 1)
    clock.advance(1)
    assert isinstance(await router.route("kept.test"), Targets)  # the fetch failed: no policy
    assert sts.fetch_count == 1
