"""The pure routing decision: DNS answers in, Route out (RFC 5321 §5.1, RFC 7505)."""

from __future__ import annotations

import random

import pytest

from relay.config import NextHop
from relay.dns.answers import Lookup, MxRecord, Status, found, nxdomain, tempfail
from relay.dns.route import (
    MxHost,
    RouteFailure,
    Target,
    Targets,
    address_literal,
    expand,
    next_hop,
    plan_mx,
    select_next_hop,
)


def mx(*records: tuple[int, str]) -> Lookup[MxRecord]:
    return found([MxRecord(p, h) for p, h in records])


@pytest.mark.parametrize(("answer", "expected"), [
    (mx((20, "b.example"), (10, "a.example")), [MxHost("a.example", 10), MxHost("b.example", 20)]),
    (mx(), [MxHost("example.com", 0)]),                                  # implicit MX
    (mx((0, "")), RouteFailure(True, 556, "5.1.10",
                               "Recipient address has null MX (example.com)")),
    (mx((10, ""), (20, "b.example")), [MxHost("b.example", 20)]),        # stray root skipped
    (mx((10, "a.example"), (10, "a.example")), [MxHost("a.example", 10)]),  # duplicate
    (nxdomain(), RouteFailure(True, 550, "5.1.2",
                              "Recipient domain example.com does not exist")),
])
def test_plan_mx(answer: Lookup[MxRecord], expected: object) -> None:
    assert plan_mx("example.com", answer, random.Random(1)) == expected


def test_plan_mx_tempfail_is_451_4_4_3() -> None:
    plan = plan_mx("example.com", tempfail("SERVFAIL from 127.0.0.1@53"), random.Random(1))
    assert isinstance(plan, RouteFailure)
    assert (plan.permanent, plan.code, plan.enhanced) == (False, 451, "4.4.3")
    assert "SERVFAIL" in plan.text


def test_equal_preference_is_shuffled_with_the_injected_rng() -> None:
    answer = mx((10, "a.example"), (10, "b.example"), (10, "c.example"), (5, "first.example"))
    orders = set()
    for seed in range(40):
        hosts = plan_mx("example.com", answer, random.Random(seed))
        assert isinstance(hosts, list)
        assert hosts[0] == MxHost("first.example", 5)
        orders.add(tuple(h.name for h in hosts[1:]))
    assert len(orders) == 6  # every permutation of the three equal-preference hosts
    again = [plan_mx("example.com", answer, random.Random(7)) for _ in range(3)]
    assert again[0] == again[1] == again[2]  # same seed, same order


A = MxHost("a.example", 10)
B = MxHost("b.example", 20)


@pytest.mark.parametrize(("addresses", "expected"), [
    ({"a.example": found(["192.0.2.1", "2001:db8::1"]), "b.example": found(["192.0.2.2"])},
     Targets([Target("a.example", "192.0.2.1", 25, 10), Target("a.example", "2001:db8::1", 25, 10),
              Target("b.example", "192.0.2.2", 25, 20)])),
    # a host that does not resolve is skipped
    ({"a.example": nxdomain(), "b.example": found(["192.0.2.2"])},
     Targets([Target("b.example", "192.0.2.2", 25, 20)])),
    ({"a.example": tempfail("timed out"), "b.example": found(["192.0.2.2"])},
     Targets([Target("b.example", "192.0.2.2", 25, 20)])),
    # the same address behind two names is tried once, at the better preference
    ({"a.example": found(["192.0.2.9"]), "b.example": found(["192.0.2.9"])},
     Targets([Target("a.example", "192.0.2.9", 25, 10)])),
])
def test_expand(addresses: dict[str, Lookup[str]], expected: object) -> None:
    assert expand("example.com", [A, B], addresses, 25) == expected


@pytest.mark.parametrize(("addresses", "permanent", "code", "enhanced"), [
    ({"a.example": nxdomain(), "b.example": found([])}, False, 451, "4.4.4"),
    ({"a.example": nxdomain(), "b.example": tempfail("SERVFAIL")}, False, 451, "4.4.3"),
])
def test_expand_all_hosts_skipped(addresses: dict[str, Lookup[str]], permanent: bool,
                                  code: int, enhanced: str) -> None:
    route = expand("example.com", [A, B], addresses, 25)
    assert isinstance(route, RouteFailure)
    assert (route.permanent, route.code, route.enhanced) == (permanent, code, enhanced)


@pytest.mark.parametrize(("answer", "permanent", "enhanced"), [
    (found([]), True, "5.1.2"),             # no MX, no A/AAAA
    (nxdomain(), True, "5.1.2"),
    (tempfail("timed out"), False, "4.4.3"),
])
def test_implicit_mx_without_address(answer: Lookup[str], permanent: bool, enhanced: str) -> None:
    route = expand("example.com", [MxHost("example.com", 0)], {"example.com": answer}, 25,
                   implicit=True)
    assert isinstance(route, RouteFailure)
    assert (route.permanent, route.enhanced) == (permanent, enhanced)


def test_implicit_mx_with_address() -> None:
    route = expand("example.com", [MxHost("example.com", 0)],
                   {"example.com": found(["192.0.2.5"])}, 2525, implicit=True)
    assert route == Targets([Target("example.com", "192.0.2.5", 2525, 0)])


ROUTES = {"*": NextHop("smarthost.example", 587), "special.example": NextHop("10.0.0.1", 25),
          ".corp.example": NextHop("gw.corp.example", 25)}


@pytest.mark.parametrize(("domain", "routes", "expected"), [
    ("special.example", ROUTES, NextHop("10.0.0.1", 25)),        # exact beats "*"
    ("SPECIAL.example.", ROUTES, NextHop("10.0.0.1", 25)),       # case and trailing dot
    ("other.example", ROUTES, NextHop("smarthost.example", 587)),
    ("a.corp.example", ROUTES, NextHop("gw.corp.example", 25)),  # ".parent" matches subdomains
    ("corp.example", ROUTES, NextHop("smarthost.example", 587)),  # ... but not the parent
    ("other.example", {"special.example": NextHop("10.0.0.1", 25)}, None),
    ("other.example", {}, None),
])
def test_select_next_hop(domain: str, routes: dict[str, NextHop], expected: object) -> None:
    assert select_next_hop(domain, routes) == expected


@pytest.mark.parametrize(("host", "addresses", "expected"), [
    ("192.0.2.7", None, Targets([Target("192.0.2.7", "192.0.2.7", 2525, 0)])),
    ("::1", None, Targets([Target("::1", "::1", 2525, 0)])),
    ("hop.example", found(["192.0.2.8", "192.0.2.8", "2001:db8::8"]),
     Targets([Target("hop.example", "192.0.2.8", 2525, 0),
              Target("hop.example", "2001:db8::8", 2525, 0)])),
])
def test_next_hop(host: str, addresses: Lookup[str] | None, expected: object) -> None:
    assert next_hop("example.com", host, 2525, addresses) == expected


@pytest.mark.parametrize(("addresses", "enhanced"), [
    (nxdomain(), "4.4.4"), (found([]), "4.4.4"), (tempfail("timed out"), "4.4.3")])
def test_next_hop_that_does_not_resolve_waits(addresses: Lookup[str], enhanced: str) -> None:
    route = next_hop("example.com", "hop.example", 25, addresses)
    assert isinstance(route, RouteFailure)
    assert not route.permanent and route.enhanced == enhanced


@pytest.mark.parametrize(("domain", "expected"), [
    ("example.com", None),
    ("[192.0.2.1]", "192.0.2.1"),
    ("[IPv6:2001:db8::1]", "2001:db8::1"),
    ("[ipv6:::1]", "::1"),
])
def test_address_literal(domain: str, expected: str | None) -> None:
    assert address_literal(domain) == expected


@pytest.mark.parametrize("domain", ["[2001:db8::1]", "[300.1.1.1]", "[IPv6:192.0.2.1]"])
def test_bad_address_literal_is_permanent(domain: str) -> None:
    result = address_literal(domain)
    assert isinstance(result, RouteFailure) and result.permanent


def test_lookup_flags() -> None:
    assert found(["x"]).ok and not found(["x"]).empty
    assert nxdomain().permanent and nxdomain().status is Status.NXDOMAIN
    assert tempfail("x").temporary
