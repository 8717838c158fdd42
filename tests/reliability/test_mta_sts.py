"""RFC 8461 MTA-STS on outbound delivery (no outbound TLS downgrade under an enforce policy),
with real parts: a loopback DNS server (`_mta-sts` TXT, MX, A), an HTTPS policy server with a
trustme certificate, and real SMTP sinks (with and without STARTTLS). Router + Sender do the
work, as the scheduler calls them; the policy cache lives in a tmp state dir.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from relay.clock import FakeClock
from relay.config import Delivery, Duration
from relay.delivery.client import Sender, TransactionResult
from relay.delivery.mtasts_fetch import MtaSts
from relay.delivery.routing import Router
from relay.dns.resolver import DnsResolver
from relay.dns.route import RouteFailure, Target, Targets
from relay.testing.dnsserver import DnsServer
from relay.testing.factories import DnsServers
from relay.testing.hostile import HostileServer
from relay.testing.sink import Sink

BODY = b"From: s@sender.test\r\nTo: r@dest.test\r\nSubject: sts\r\n\r\nhello\r\n"
POLICY_IP = "127.0.0.5"


def policy(mode: str = "enforce", mx: tuple[str, ...] = ("mx.dest.test",),
           max_age: int = 86400) -> str:
    return "\r\n".join(["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx),
                        f"max_age: {max_age}", ""])


class PolicyServer:
    """https://mta-sts.<domain>/.well-known/mta-sts.txt on POLICY_IP, answers set by tests."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.status = 200
        self.body = policy()
        self.content_type = "text/plain"
        self.hits = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.status in (301, 302, 307):
            return web.Response(status=self.status, headers={
                "Location": f"https://{request.host}/other.txt"})
        return web.Response(status=self.status, text=self.body,
                            content_type=self.content_type)

    async def start(self) -> PolicyServer:
        app = web.Application()
        app.router.add_get("/.well-known/mta-sts.txt", self._handle)
        app.router.add_get("/other.txt", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, POLICY_IP, 0, ssl_context=self.ctx)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@dataclass
class World:
    dns: DnsServer
    https: PolicyServer
    tls_sink: Sink      # 127.0.0.2, STARTTLS, certificate for mx.dest.test
    plain_sink: Sink    # 127.0.0.3, no STARTTLS
    badcert_sink: Sink  # 127.0.0.4, STARTTLS, certificate for another name
    client_ctx: ssl.SSLContext
    state: Path
    clock: FakeClock

    def delivery(self) -> Delivery:
        return Delivery(port=self.tls_sink.port, connect_timeout=Duration(2),
                        command_timeout=Duration(2), data_timeout=Duration(2))

    def sts(self) -> MtaSts:
        """A fresh policy source on the same state dir (what a restart builds)."""
        resolver = DnsResolver([("127.0.0.1", self.dns.port)], clock=self.clock, timeout=1.0,
                               max_cache_ttl=0.0, negative_cache_ttl=0.0)
        return MtaSts(resolver, self.state, self.clock, timeout=3.0,
                      ssl_context=self.client_ctx, _https_port=self.https.port)

    def router(self, sts: MtaSts) -> Router:
        resolver = DnsResolver([("127.0.0.1", self.dns.port)], clock=self.clock, timeout=1.0,
                               max_cache_ttl=0.0, negative_cache_ttl=0.0)
        return Router(self.delivery(), resolver, random.Random(1), mta_sts=sts)

    async def deliver(self, sts: MtaSts | None = None) -> RouteFailure | TransactionResult:
        route = await self.router(sts or self.sts()).route("dest.test")
        if isinstance(route, RouteFailure):
            return route
        assert isinstance(route, Targets)
        sender = Sender(self.delivery(), hostname="relay.test", clock=self.clock,
                        verify_context=self.client_ctx)
        try:
            return await sender.send("dest.test", route.hosts, "s@sender.test",
                                     ["r@dest.test"], BODY)
        finally:
            await sender.close()

    def mx(self, *hosts: tuple[int, str, str]) -> None:
        self.dns.set("dest.test", "MX", [f"{pref} {name}" for pref, name, _ in hosts], ttl=1)
        for _, name, ip in hosts:
            self.dns.set(name, "A", ip, ttl=1)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def sinks(ca: trustme.CA) -> Iterator[tuple[Sink, Sink, Sink]]:
    good = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.dest.test", "evil.dest.test").configure_cert(good)
    bad = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("somewhere-else.test").configure_cert(bad)
    tls_sink = Sink("127.0.0.2", 0, tls_context=good).start()
    plain = Sink("127.0.0.3", tls_sink.port).start()
    badcert = Sink("127.0.0.4", tls_sink.port, tls_context=bad).start()
    yield tls_sink, plain, badcert
    for s in (tls_sink, plain, badcert):
        s.stop()


@pytest.fixture
async def world(ca: trustme.CA, sinks: tuple[Sink, Sink, Sink],
                tmp_path: Path, dns_server: DnsServers) -> AsyncIterator[World]:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mta-sts.dest.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client_ctx)
    https = await PolicyServer(server_ctx).start()
    for s in sinks:
        s.clear()
    zone: dict[str, Any] = {
        "dest.test": [("MX", "10 mx.dest.test", 1)],
        "mx.dest.test": [("A", "127.0.0.2", 1)],
        "_mta-sts.dest.test": [("TXT", "v=STSv1; id=20240101", 1)],
        "mta-sts.dest.test": [("A", POLICY_IP, 1)],
    }
    yield World(dns_server(zone), https, *sinks, client_ctx=client_ctx,
                state=tmp_path / "state", clock=FakeClock())
    await https.stop()


def delivered(res: RouteFailure | TransactionResult) -> bool:
    return isinstance(res, TransactionResult) and [o.kind for o in res.outcomes] == ["delivered"]


def deferred_47(res: RouteFailure | TransactionResult) -> str:
    """The reply of a 4.7.x deferral (asserted), for more checks."""
    if isinstance(res, RouteFailure):
        assert not res.permanent and res.code == 451 and res.enhanced.startswith("4.7."), res
        return f"{res.code} {res.enhanced} {res.text}"
    (o,) = res.outcomes
    assert o.kind == "deferred" and o.code == 451 and o.enhanced.startswith("4.7."), o
    return o.diagnostic


async def test_enforce_with_good_tls_is_delivered_over_verified_tls(world: World) -> None:
    res = await world.deliver()
    assert delivered(res), res
    assert isinstance(res, TransactionResult) and res.tls
    (got,) = world.tls_sink.messages
    assert got.tls and got.rcpt_tos == ["r@dest.test"]
    assert world.https.hits == 1


async def test_enforce_without_starttls_defers_and_sink_gets_nothing(world: World) -> None:
    world.mx((10, "mx.dest.test", "127.0.0.3"))  # an MX that strips STARTTLS (a downgrade)
    text = deferred_47(await world.deliver())
    assert "starttls" in text.lower() or "tls" in text.lower()
    assert world.plain_sink.message_count == 0
    # Control: the same MX without a policy gets the mail (in plain text).
    world.dns.remove("_mta-sts.dest.test")
    assert delivered(await world.deliver(MtaSts(*_no_cache(world))))
    assert world.plain_sink.message_count == 1


def _no_cache(world: World) -> tuple[Any, Path, FakeClock]:
    resolver = DnsResolver([("127.0.0.1", world.dns.port)], clock=world.clock, timeout=1.0,
                           max_cache_ttl=0.0, negative_cache_ttl=0.0)
    return resolver, world.state / "elsewhere", world.clock


async def test_enforce_certificate_not_for_the_mx_name_defers(world: World) -> None:
    world.mx((10, "mx.dest.test", "127.0.0.4"))
    deferred_47(await world.deliver())
    assert world.badcert_sink.message_count == 0


async def test_enforce_mx_not_in_policy_is_not_used(world: World) -> None:
    # The preferred MX is not in the policy: skipped, the listed one gets the mail.
    world.mx((5, "evil.other.test", "127.0.0.3"), (10, "mx.dest.test", "127.0.0.2"))
    assert delivered(await world.deliver())
    assert world.plain_sink.connections == 0 and world.tls_sink.message_count == 1
    # No MX in the policy at all: a 4.7.5 deferral before any connection.
    world.mx((5, "evil.other.test", "127.0.0.3"))
    text = deferred_47(await world.deliver())
    assert "evil.other.test" in text
    assert world.plain_sink.connections == 0


async def test_enforce_wildcard_matches_one_label(world: World) -> None:
    world.https.body = policy(mx=("*.dest.test",))
    world.mx((10, "mx.dest.test", "127.0.0.2"))
    assert delivered(await world.deliver())


async def test_testing_mode_delivers_and_reports(world: World,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    world.https.body = policy(mode="testing")
    world.mx((10, "evil.other.test", "127.0.0.3"))  # neither listed nor offering STARTTLS
    with caplog.at_level(logging.WARNING, logger="relay.routing"):
        assert delivered(await world.deliver())
    assert world.plain_sink.message_count == 1
    assert any("evil.other.test" in r.getMessage() and "testing" in r.getMessage()
               for r in caplog.records)


async def test_fetch_failure_keeps_the_cached_policy_across_a_restart(world: World) -> None:
    first = world.sts()
    got = await first.policy("dest.test")
    assert got is not None and got.mode == "enforce"
    # The policy host goes away and the TXT id changes (a refresh is due).
    await world.https.stop()
    world.dns.set("_mta-sts.dest.test", "TXT", "v=STSv1; id=20240202", ttl=1)
    world.mx((10, "mx.dest.test", "127.0.0.3"))
    restarted = world.sts()  # new process: the cache comes from the state dir
    cached = await restarted.policy("dest.test")
    assert cached is not None and cached.mode == "enforce" and cached.id == "20240101"
    assert restarted.fetch_count == 1  # it tried, failed, kept the cached one
    deferred_47(await world.deliver(restarted))
    assert world.plain_sink.message_count == 0


async def test_policy_is_cached_for_max_age_then_expires(world: World) -> None:
    world.https.body = policy(max_age=600)
    sts = world.sts()
    assert (await sts.policy("dest.test")) is not None
    world.clock.advance(599)
    assert (await sts.policy("dest.test")) is not None
    assert world.https.hits == 1  # same TXT id, valid cache: not fetched again
    world.https.status = 404
    world.clock.advance(2)  # past max_age, and the fetch fails: no policy any more
    assert (await sts.policy("dest.test")) is None
    world.mx((10, "mx.dest.test", "127.0.0.3"))
    assert delivered(await world.deliver(sts))


async def test_txt_id_change_refreshes_the_policy(world: World) -> None:
    sts = world.sts()
    assert (p := await sts.policy("dest.test")) is not None and p.mode == "enforce"
    world.https.body = policy(mode="none")
    world.dns.set("_mta-sts.dest.test", "TXT", "v=STSv1; id=2", ttl=1)
    assert (p := await sts.policy("dest.test")) is not None and p.mode == "none"
    assert world.https.hits == 2


@pytest.mark.parametrize("status,body,ctype", [
    (301, "", "text/plain"),                            # no redirects (§3.3)
    (200, policy() + "x" * 70_000, "text/plain"),       # over 64 KiB
    (200, policy(), "text/html"),                       # not text/plain
    (200, policy().replace("STSv1", "STSv2"), "text/plain"),
    (200, policy(max_age=-5).replace("-5", "soon"), "text/plain"),
], ids=["redirect", "too-big", "html", "bad-version", "bad-max-age"])
async def test_bad_policy_answers_mean_no_policy(world: World, status: int, body: str,
                                                ctype: str) -> None:
    world.https.status, world.https.body, world.https.content_type = status, body, ctype
    assert (await world.sts().policy("dest.test")) is None


async def test_untrusted_policy_certificate_means_no_policy(world: World) -> None:
    sts = MtaSts(*_no_cache(world), ssl_context=ssl.create_default_context(),
                 _https_port=world.https.port)
    assert (await sts.policy("dest.test")) is None


async def test_enforce_failed_handshake_defers_without_plaintext_retry() -> None:
    # Opportunistic TLS would reconnect in plain text after a failed handshake; a target
    # under an enforce policy (tls="verify") must not (a downgrade).
    bad = await HostileServer("tls_fail", "127.0.0.6").start()
    sender = Sender(Delivery(connect_timeout=Duration(2), command_timeout=Duration(2),
                             data_timeout=Duration(2)), hostname="relay.test")
    try:
        res = await sender.send("dest.test",
                                [Target("mx.dest.test", "127.0.0.6", bad.port, 10, tls="verify")],
                                "s@sender.test", ["r@dest.test"], BODY)
    finally:
        await sender.close()
        await bad.close()
    deferred_47(res)
    assert bad.data == [] and bad.connections == 1
