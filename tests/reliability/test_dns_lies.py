"""DNS answers that point where mail must not go: relay's own listeners (RFC 5321 §5.1
loop detection, 554 5.4.6 "mail for X loops back to myself") and delivery.deny_networks
(451 4.4.4 "MX points to a denied network", never a connection). Real loopback DNS
(relay.testing.dnsserver), real sinks, and a whole in-process RelayApp for the wiring.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from smtpkit import record_peers

from relay.app import RelayApp
from relay.clock import FakeClock
from relay.config import Delivery, Duration, Network, NextHop, from_dict
from relay.delivery.client import Sender
from relay.delivery.routing import Router
from relay.dns.resolver import DnsResolver
from relay.dns.route import (
    RouteFailure,
    Target,
    Targets,
    denied_by,
    is_own,
    parse_networks,
    without_denied,
    without_loops,
)
from relay.events.log import read_events
from relay.testing.dnsserver import DnsServer
from relay.testing.process import free_port
from relay.testing.sink import Sink
from relay.testing.submission import send_starttls, verified_sender
from relay.testing.wait import wait_for

BODY = b"From: a@sender.test\r\nTo: r@dest.test\r\nSubject: hi\r\n\r\nhello\r\n"
PASSWORD = "pw-for-app"

ZONE = {
    "lying.test": [("MX", "10 mx.lying.test")],
    "mx.lying.test": [("A", "127.0.0.1")],
    "mapped.test": [("MX", "10 mx.mapped.test")],
    "mx.mapped.test": [("AAAA", "::ffff:127.0.0.1")],
    "mixed.test": [("MX", "10 inside.mixed.test"), ("MX", "20 outside.mixed.test")],
    "inside.mixed.test": [("A", "127.0.0.2")],
    "outside.mixed.test": [("A", "127.0.0.3")],
    "implicit.test": [("A", "127.0.0.1")],
    "hop.test": [("A", "127.0.0.1")],
}


def router(ns: DnsServer, port: int, *, deny: list[str] | None = None,
           routes: dict[str, NextHop] | None = None,
           own: set[tuple[str, int]] | None = None) -> Router:
    resolver = DnsResolver([("127.0.0.1", ns.port)], clock=FakeClock(), timeout=0.5,
                           max_cache_ttl=0.0, negative_cache_ttl=0.0)
    cfg = Delivery(port=port, deny_networks=[Network(d) for d in deny or []],
                   routes=routes or {}, connect_timeout=Duration(1),
                   command_timeout=Duration(1), data_timeout=Duration(1))
    return Router(cfg, resolver, random.Random(1), mta_sts=None, own_addresses=own or set())


# --- the pure decisions -------------------------------------------------------------------


def test_is_own_exact_and_wildcard_listeners() -> None:
    own = {("127.0.0.5", 2587), ("0.0.0.0", 2525), ("::", 2465)}
    assert is_own("127.0.0.5", 2587, own)
    assert not is_own("127.0.0.6", 2587, own)           # another address, same port
    assert not is_own("127.0.0.5", 25, own)             # same address, another port
    assert is_own("127.0.0.9", 2525, own)               # 0.0.0.0: any loopback address
    assert is_own("192.0.2.7", 2525, own, local=["192.0.2.7"])  # ...or a host address
    assert not is_own("192.0.2.7", 2525, own)           # a remote host on that port
    assert not is_own("::1", 2525, own)                 # 0.0.0.0 is IPv4 only
    assert is_own("::1", 2465, own) and not is_own("127.0.0.1", 2465, own)
    assert is_own("::ffff:127.0.0.5", 2587, own)        # IPv4-mapped reaches 127.0.0.5
    assert not is_own("not-an-ip", 2587, own)


def test_without_loops_keeps_others_and_fails_554_when_none_left() -> None:
    own = {("127.0.0.1", 2587)}
    me, other = Target("mx1", "127.0.0.1", 2587, 10), Target("mx2", "127.0.0.3", 2587, 20)
    assert without_loops("d.test", Targets([me, other]), own) == Targets([other])
    assert without_loops("d.test", Targets([other]), own) == Targets([other])
    failure = without_loops("d.test", Targets([me]), own)
    assert failure == RouteFailure(True, 554, "5.4.6", "mail for d.test loops back to myself")


def test_without_denied_and_mapped_addresses() -> None:
    nets = parse_networks(["127.0.0.0/8", "::1/128", "10.0.0.0/8"])
    assert denied_by("::ffff:10.1.2.3", nets) is not None
    assert denied_by("::1", nets) is not None
    assert denied_by("192.0.2.1", nets) is None and denied_by("2001:db8::1", nets) is None
    a, b = Target("mx1", "10.0.0.1", 25, 10), Target("mx2", "192.0.2.1", 25, 20)
    assert without_denied("d.test", Targets([a, b]), nets) == Targets([b])
    failure = without_denied("d.test", Targets([a]), nets)
    assert isinstance(failure, RouteFailure)
    assert (failure.permanent, failure.code, failure.enhanced) == (False, 451, "4.4.4")
    assert "MX points to a denied network (mx1 10.0.0.1 in 10.0.0.0/8)" in failure.text
    assert without_denied("d.test", Targets([a]), []) == Targets([a])  # default: allow all


# --- Router against the loopback DNS server and real sinks --------------------------------


async def test_denied_mx_is_deferred_and_sink_never_connected(ns: DnsServer) -> None:
    with Sink("127.0.0.1", 0) as sink:
        r = router(ns, sink.port, deny=["127.0.0.0/8", "::1/128"])
        for domain in ("lying.test", "mapped.test", "implicit.test", "[127.0.0.1]"):
            route = await r.route(domain)
            assert isinstance(route, RouteFailure), (domain, route)
            assert (route.permanent, route.code, route.enhanced) == (False, 451, "4.4.4")
            assert "points to a denied network" in route.text and "127.0.0.0/8" in route.text
            if domain == "lying.test":
                assert route.text == ("Unable to route mail for lying.test: MX points to a "
                                      "denied network (mx.lying.test 127.0.0.1 in 127.0.0.0/8)")
        assert sink.connections == 0
        # Without deny_networks (the default) the same answer is delivered to.
        route = await router(ns, sink.port).route("lying.test")
        assert route == Targets([Target("mx.lying.test", "127.0.0.1", sink.port, 10)])


async def test_mixed_mx_delivers_via_the_allowed_host(ns: DnsServer) -> None:
    with Sink("127.0.0.2", 0) as inside, Sink("127.0.0.3", inside.port) as outside:
        route = await router(ns, inside.port, deny=["127.0.0.2/32"]).route("mixed.test")
        assert isinstance(route, Targets)
        assert [(t.host_name, t.address) for t in route.hosts] == [
            ("outside.mixed.test", "127.0.0.3")]
        sender = Sender(Delivery(connect_timeout=Duration(2)), hostname="relay.test")
        try:
            res = await sender.send("mixed.test", route.hosts, "s@x.test", ["r@mixed.test"],
                                    BODY)
        finally:
            await sender.close()
        assert [o.kind for o in res.outcomes] == ["delivered"], res
        assert outside.message_count == 1
        assert inside.connections == 0


async def test_fixed_next_hop_is_exempt_from_deny_networks(ns: DnsServer) -> None:
    r = router(ns, 2525, deny=["127.0.0.0/8"],
               routes={"hop.test": NextHop("127.0.0.1", 2600),
                       "named.test": NextHop("hop.test", 2601)})
    assert await r.route("hop.test") == Targets([Target("127.0.0.1", "127.0.0.1", 2600, 0)])
    assert await r.route("named.test") == Targets([Target("hop.test", "127.0.0.1", 2601, 0)])


async def test_route_to_own_listener_is_554_and_other_mx_kept(ns: DnsServer) -> None:
    port = free_port()
    r = router(ns, port, own={("127.0.0.1", port)})
    for domain in ("lying.test", "mapped.test", "implicit.test", "[127.0.0.1]"):
        route = await r.route(domain)
        assert route == RouteFailure(True, 554, "5.4.6",
                                     f"mail for {domain} loops back to myself"), domain
    # A next hop pointing back at relay loops just the same.
    hop = router(ns, 25, routes={"*": NextHop("127.0.0.1", port)}, own={("127.0.0.1", port)})
    route = await hop.route("anything.test")
    assert isinstance(route, RouteFailure) and route.enhanced == "5.4.6"
    # One MX host is relay itself, the other is not: only the other is tried.
    mixed = router(ns, port, own={("127.0.0.2", port)})
    assert await mixed.route("mixed.test") == Targets(
        [Target("outside.mixed.test", "127.0.0.3", port, 20)])
    # A wildcard listener on that port: every loopback address is relay itself.
    wild = router(ns, port, own={("0.0.0.0", port)})
    route = await wild.route("mixed.test")
    assert isinstance(route, RouteFailure) and route.code == 554
    # Not a loop on another port.
    assert isinstance(await router(ns, port + 1 if port < 65535 else port - 1,
                                   own={("127.0.0.1", port)}).route("lying.test"), Targets)


# --- the whole app: own listeners are wired in, nothing connects ---------------------------


async def _run_app(tmp_path: Path, ns: DnsServer, smtp_port: int, delivery_port: int,
                   deny: list[str], rcpt: str, event_type: str,
                   ) -> tuple[RelayApp, dict[str, Any], list[str]]:
    verified_sender(tmp_path, PASSWORD)
    cfg = from_dict({
        "server": {"hostname": "relay.test", "state_dir": str(tmp_path)},
        "listener": [{"address": f"127.0.0.1:{smtp_port}"}],
        "dns": {"nameservers": [f"127.0.0.1:{ns.port}"], "timeout": "1s"},
        "delivery": {"port": delivery_port, "deny_networks": deny, "mta_sts": False,
                     "retry_schedule": ["1h"], "connect_timeout": "2s"},
    })
    app = RelayApp(cfg)
    await app.start()
    peers = record_peers(app)
    try:
        data = f"From: app@example.com\r\nTo: {rcpt}\r\nSubject: lie\r\n\r\nhello\r\n"
        await send_starttls(smtp_port, PASSWORD, rcpt, data)
        (event,) = await wait_for(event_type, lambda: [
            e for e in read_events(app.events.path) if e["eventType"] == event_type],
            timeout=8.0)
    except BaseException:
        await app.stop()
        raise
    return app, event, peers


async def test_app_loop_to_own_listener_bounces_554_without_connecting(
        tmp_path: Path, ns: DnsServer) -> None:
    smtp_port = free_port()
    # MX → 127.0.0.1, and relay delivers on the port its own listener has.
    app, event, peers = await _run_app(tmp_path, ns, smtp_port, smtp_port, [],
                                       "user@lying.test", "Bounce")
    try:
        assert ("127.0.0.1", smtp_port) in app.own_addresses
        (bounced,) = event["bounce"]["bouncedRecipients"]
        assert bounced["status"] == "5.4.6", bounced
        assert "mail for lying.test loops back to myself" in bounced["diagnosticCode"]
        assert peers == ["127.0.0.1"]  # our own submission only: no delivery to itself
    finally:
        await app.stop()


async def test_app_denied_mx_is_deferred_without_connecting(
        tmp_path: Path, ns: DnsServer) -> None:
    with Sink("127.0.0.1", 0) as sink:
        app, event, _ = await _run_app(tmp_path, ns, free_port(), sink.port,
                                       ["127.0.0.0/8", "::1/128"], "user@lying.test",
                                       "DeliveryDelay")
        try:
            (delayed,) = event["deliveryDelay"]["delayedRecipients"]
            assert delayed["status"] == "4.4.4", delayed
            assert "MX points to a denied network" in delayed["diagnosticCode"]
            assert sink.connections == 0
        finally:
            await app.stop()
