"""Router over a fake Resolver (the Resolver protocol): lookup order and which names it asks."""

from __future__ import annotations

import random

from relay.config import Delivery, NextHop
from relay.delivery.routing import Router
from relay.dns.answers import Lookup, MxRecord, found, nxdomain
from relay.dns.route import RouteFailure, Target, Targets


class TableResolver:
    def __init__(self, mx: dict[str, Lookup[MxRecord]], addresses: dict[str, Lookup[str]]) -> None:
        self._mx = mx
        self._addresses = addresses
        self.asked: list[tuple[str, str]] = []

    async def mx(self, domain: str) -> Lookup[MxRecord]:
        self.asked.append(("MX", domain))
        return self._mx.get(domain, nxdomain())

    async def addresses(self, host: str) -> Lookup[str]:
        self.asked.append(("ADDR", host))
        return self._addresses.get(host, nxdomain())

    async def txt(self, name: str) -> Lookup[str]:
        return nxdomain()


async def test_mx_then_addresses() -> None:
    res = TableResolver({"example.com": found([MxRecord(10, "mx.example.com")])},
                        {"mx.example.com": found(["192.0.2.1"])})
    route = await Router(Delivery(port=2525), res, random.Random(0)).route("Example.COM.")
    assert route == Targets([Target("mx.example.com", "192.0.2.1", 2525, 10)])
    assert res.asked == [("MX", "example.com"), ("ADDR", "mx.example.com")]


async def test_route_override_skips_mx() -> None:
    res = TableResolver({}, {"hop.example": found(["192.0.2.3"])})
    cfg = Delivery(routes={"example.com": NextHop("hop.example", 2526)})
    route = await Router(cfg, res, random.Random(0)).route("example.com")
    assert route == Targets([Target("hop.example", "192.0.2.3", 2526, 0)])
    assert res.asked == [("ADDR", "hop.example")]


async def test_address_literal_domain_needs_no_dns() -> None:
    res = TableResolver({}, {})
    route = await Router(Delivery(port=25), res, random.Random(0)).route("[192.0.2.4]")
    assert route == Targets([Target("192.0.2.4", "192.0.2.4", 25, 0)])
    assert res.asked == []


async def test_empty_domain_is_permanent() -> None:
    route = await Router(Delivery(), TableResolver({}, {}), random.Random(0)).route(" ")
    assert isinstance(route, RouteFailure) and route.permanent
