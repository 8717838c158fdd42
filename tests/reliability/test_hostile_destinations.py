"""The outbound client against hostile destinations (relay.testing.hostile): each fault is
a deferral with a clear last response, the call returns (worker freed) and a healthy
destination served at the same time is unaffected. Also outbound smuggling and STARTTLS
response injection checked on the wire, and DNS faults/lies through Router.
"""

from __future__ import annotations

import asyncio
import functools
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trustme

from relay.clock import FakeClock
from relay.delivery.client import Sender
from relay.delivery.routing import Router
from relay.dns.resolver import DnsResolver
from relay.dns.route import RouteFailure, Targets
from relay.testing.delivery import BODY, short_delivery
from relay.testing.delivery import StubTarget as T
from relay.testing.dnsserver import DnsServer
from relay.testing.factories import DnsServers
from relay.testing.hostile import HostileServer, Mode

delivery = functools.partial(short_delivery, 1.0)


@pytest.fixture(scope="module")
def server_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.2", "mx.dest.test").configure_cert(ctx)
    return ctx


@pytest.fixture
async def hostile(server_tls: ssl.SSLContext) -> AsyncIterator[Callable[..., Any]]:
    servers: list[HostileServer] = []

    async def make(mode: Mode, host: str = "127.0.0.2") -> HostileServer:
        s = await HostileServer(mode, host, tls_context=server_tls).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        await s.close()


@pytest.mark.parametrize("mode,words", [
    ("silent", ("timed out", "timeout")),
    ("drop_in_data", ("dropped", "disconnect", "closed", "eof", "reset")),
    ("garbage", ("malformed", "invalid", "garbage", "unexpected", "response", "reply")),
    ("tls_fail", ("tls", "ssl", "handshake", "starttls")),
])
async def test_hostile_destination_is_a_clear_deferral_others_unaffected(
        hostile: Callable[..., Any], mode: Mode, words: tuple[str, ...]) -> None:
    bad = await hostile(mode, "127.0.0.2")
    good = await hostile("raw", "127.0.0.3")
    sender = Sender(delivery(tls="require") if mode == "tls_fail" else delivery(),
                    hostname="relay.test")
    good_sender = Sender(delivery(), hostname="relay.test")
    began = time.monotonic()
    try:
        bad_res, good_res = await asyncio.wait_for(asyncio.gather(
            sender.send("bad.test", [T("mx.bad.test", "127.0.0.2", bad.port)], "s@x.test",
                        ["r1@bad.test", "r2@bad.test"], BODY),
            good_sender.send("good.test", [T("mx.good.test", "127.0.0.3", good.port)],
                             "s@x.test", ["r@good.test"], BODY)), timeout=15)
    finally:
        await sender.close()
        await good_sender.close()
    assert time.monotonic() - began < 15  # the worker came back
    for outcome in bad_res.outcomes:
        assert outcome.kind == "deferred", outcome
        assert 400 <= outcome.code < 500 and outcome.enhanced.startswith("4.")
        text = outcome.diagnostic.lower()
        assert any(w in text for w in words), outcome.diagnostic
    assert [o.kind for o in good_res.outcomes] == ["delivered"], good_res
    assert len(good.data) == 1
    assert bad.data == []


async def test_starttls_response_injection_discarded(hostile: Callable[..., Any]) -> None:
    mx = await hostile("starttls_inject")
    sender = Sender(delivery(), hostname="relay.test")
    try:
        res = await sender.send("dest.test", [T("mx.dest.test", "127.0.0.2", mx.port)],
                                "s@x.test", ["r@dest.test"], BODY)
    finally:
        await sender.close()
    (outcome,) = res.outcomes
    if outcome.kind == "delivered":
        # The fake "250" was not taken as the reply to EHLO inside TLS: the full
        # dialogue happened in TLS and each reply paired with its own command.
        assert res.tls
        verbs = [line.split()[0].upper() for line in mx.transcript]
        assert verbs[:2] == [b"EHLO", b"STARTTLS"]
        assert verbs[2:6] == [b"EHLO", b"MAIL", b"RCPT", b"DATA"]
        assert len(mx.data) == 1
    else:  # refusing the tainted session is safe too, as long as nothing was sent
        assert outcome.kind == "deferred" and mx.data == []


@pytest.mark.parametrize("body", [
    b"Subject: s\r\n\r\nbody\n.\r\nMAIL FROM:<x@evil.test>\r\n",
    b"Subject: s\r\n\r\nbody\r.\r\nRCPT TO:<v@y.test>\r\n",
    b"Subject: s\r\n\r\nbody\n.\nDATA\n",
    b"Subject: s\r\n\r\nstray\rcr and \r\r\n.\r\r\n end\r\n.\r\n",
    b"Subject: s\r\n\r\nno final newline\r\n.",
], ids=["lf-dot-crlf", "cr-dot-crlf", "lf-dot-lf", "stray-cr", "dot-no-crlf"])
async def test_outbound_smuggling_wire_is_clean(hostile: Callable[..., Any], body: bytes) -> None:
    # Whatever a trusted path hands the client, the wire carries only CRLF line endings
    # and exactly one end-of-data per transaction.
    mx = await hostile("raw")
    sender = Sender(delivery(), hostname="relay.test")
    try:
        res = await sender.send("dest.test", [T("mx", "127.0.0.2", mx.port)], "s@x.test",
                                ["r@dest.test"], body)
    finally:
        await sender.close()
    assert res.outcomes[0].kind == "delivered"
    (wire,) = mx.data
    assert wire.count(b"\n") == wire.count(b"\r\n") == wire.count(b"\r")
    assert wire.count(b"\r\n.\r\n") == 1 and wire.endswith(b"\r\n.\r\n")
    verbs = [v.split()[0] for v in mx.transcript]
    assert verbs[:4] == [b"EHLO", b"MAIL", b"RCPT", b"DATA"] and b"DATA" not in verbs[4:]


# --- DNS faults and lies ------------------------------------------------------------------

ZONE = {
    "cname-mx.test": [("MX", "10 alias.cname-mx.test")],
    "alias.cname-mx.test": [("CNAME", "real.cname-mx.test")],
    "real.cname-mx.test": [("A", "127.0.0.2")],
    "self.test": [("MX", "10 self.test"), ("A", "127.0.0.3")],
    "loop.test": [("MX", "10 mx.loop.test")],
    "mx.loop.test": [("A", "127.0.0.1")],
    "broken.test": [("MX", "10 mx.broken.test")],
    "mx.broken.test": [("A", "127.0.0.2")],
    "slow.test": [("MX", "10 mx.slow.test")],
}


@pytest.fixture
def dns_server(dns_server: DnsServers) -> DnsServer:
    return dns_server(ZONE)


def router(ns: DnsServer) -> Router:
    resolver = DnsResolver([("127.0.0.1", ns.port)], clock=FakeClock(), timeout=0.5,
                           max_cache_ttl=0.0, negative_cache_ttl=0.0)
    # Not port 25: there any address of this host is a loop (tests/reliability/
    # test_mail_loops.py); these answers point at loopback to test the route's shape.
    return Router(delivery(port=2525), resolver, random.Random(1))


async def test_dns_servfail_and_timeout_are_temporary(dns_server: DnsServer) -> None:
    dns_server.fail("broken.test", "SERVFAIL", "MX")
    dns_server.fail("slow.test", "TIMEOUT")
    dns_server.fail("mx.loop.test", "SERVFAIL", "A")
    r = router(dns_server)
    for domain in ("broken.test", "slow.test", "loop.test"):
        route = await r.route(domain)
        assert isinstance(route, RouteFailure), route
        assert not route.permanent and 400 <= route.code < 500, route


async def test_dns_mx_pointing_to_cname_is_followed(dns_server: DnsServer) -> None:
    # RFC 2181 §10.3 forbids it, but like Postfix and Exim we follow the alias rather than
    # bounce mail the receiving domain's owner expects to get.
    route = await router(dns_server).route("cname-mx.test")
    assert isinstance(route, Targets)
    assert [(t.host_name, t.address) for t in route.hosts] == [("alias.cname-mx.test",
                                                                 "127.0.0.2")]


async def test_dns_mx_pointing_to_itself_is_the_domain_host(dns_server: DnsServer) -> None:
    route = await router(dns_server).route("self.test")
    assert isinstance(route, Targets)
    assert [(t.host_name, t.address) for t in route.hosts] == [("self.test", "127.0.0.3")]
