"""relay.delivery.client.Sender's connection pool: keyed by next hop, capped, reaped together.

Real loopback sockets: relay.testing.sink.Sink (counts connections) and `CountingMX`
below, a small server in the test's own loop that knows how many connections are open
right now and can leave QUIT unanswered.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme

from relay.clock import FakeClock
from relay.config import Duration
from relay.delivery.client import Sender
from relay.testing.delivery import BODY, MakeSink, short_delivery
from relay.testing.delivery import StubTarget as T
from relay.testing.sink import Rules, server_tls

delivery = functools.partial(short_delivery, 3.0)


# ---------------------------------------------------------------------------- CountingMX

@dataclass
class CountingMX:
    answer_quit: bool = True
    opened: int = 0
    open: int = 0          # connections open on the server side right now
    quits: int = 0
    port: int = 0
    server: asyncio.Server | None = None
    transports: list[asyncio.Transport] = field(default_factory=list)

    async def start(self) -> CountingMX:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _MX(self), "127.0.0.2", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for t in self.transports:
                t.abort()
            self.server = None

    async def until_open(self, n: int, timeout: float = 3.0) -> int:
        """Wait (bounded) until at most `n` connections are open; return how many are."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.open > n and loop.time() < end:
            await asyncio.sleep(0.02)
        return self.open


class _MX(asyncio.Protocol):
    """250 to everything, 354 to DATA, 221 to QUIT (or nothing: `answer_quit=False`)."""

    def __init__(self, mx: CountingMX) -> None:
        self.mx = mx
        self.buf = b""
        self.in_data = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.mx.transports.append(transport)
        self.mx.opened += 1
        self.mx.open += 1
        transport.write(b"220 counting ESMTP\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self.mx.open -= 1

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.buf = self.buf[end + 5:]
                self.in_data = False
                self.transport.write(b"250 2.0.0 queued\r\n")
                continue
            end = self.buf.find(b"\r\n")
            if end < 0:
                return
            verb, self.buf = self.buf[:4].upper(), self.buf[end + 2:]
            if verb in (b"EHLO", b"HELO"):
                self.transport.write(b"250-counting\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                self.in_data = True
                self.transport.write(b"354 go on\r\n")
            elif verb == b"QUIT":
                self.mx.quits += 1
                if self.mx.answer_quit:
                    self.transport.write(b"221 bye\r\n")
                    self.transport.close()
                return  # silent: never another word
            else:
                self.transport.write(b"250 2.0.0 ok\r\n")


@pytest.fixture
async def counting() -> AsyncIterator[Callable[..., Any]]:
    servers: list[CountingMX] = []

    async def make(**kw: Any) -> CountingMX:
        mx = await CountingMX(**kw).start()
        servers.append(mx)
        return mx

    yield make
    for mx in servers:
        await mx.close()


# ---------------------------------------------------------------------------- reuse by next hop

async def test_many_domains_behind_one_mx_share_one_connection(make_sink: MakeSink) -> None:
    sink = make_sink()
    sender = Sender(delivery(), hostname="relay.test")
    mx = [T("mx.shared.test", "127.0.0.2", sink.port)]
    results = [await sender.send(f"d{i}.test", mx, "s@x.test", [f"r@d{i}.test"], BODY)
               for i in range(30)]
    assert all(r.outcomes[0].kind == "delivered" for r in results)
    assert [r.reused for r in results] == [False] + [True] * 29
    assert sink.connections == 1 and sink.message_count == 30
    assert sender.idle_connections() == 1
    assert sender.idle_connections("d29.test") == 1 and sender.idle_connections("d0.test") == 0
    await sender.close()
    assert sender.idle_connections() == 0


async def test_concurrent_domains_behind_one_mx_reuse_the_pool(make_sink: MakeSink) -> None:
    sink = make_sink()
    sender = Sender(delivery(max_connections_per_destination=4), hostname="relay.test")
    mx = [T("MX.shared.test.", "127.0.0.2", sink.port)]  # the key ignores case and final dot
    for wave in range(8):
        results = await asyncio.gather(*(
            sender.send(f"d{wave}-{i}.test", mx, "s@x.test", [f"r@d{wave}-{i}.test"], BODY)
            for i in range(4)))
        assert all(r.outcomes[0].kind == "delivered" for r in results)
    await sender.close()
    assert sink.message_count == 32
    assert sink.connections == 4  # ≪ messages: the first wave's connections carried all


async def test_same_address_under_another_host_name_is_another_connection(
        make_sink: MakeSink) -> None:
    sink = make_sink()
    sender = Sender(delivery(), hostname="relay.test")
    for i in range(3):
        await sender.send(f"a{i}.test", [T("mx-a.test", "127.0.0.2", sink.port)], "s@x.test",
                          ["r@a.test"], BODY)
        await sender.send(f"b{i}.test", [T("mx-b.test", "127.0.0.2", sink.port)], "s@x.test",
                          ["r@b.test"], BODY)
    # another source address is another key too
    await sender.send("a0.test", [T("mx-a.test", "127.0.0.2", sink.port)], "s@x.test",
                      ["r@a.test"], BODY, source_address="127.0.0.11")
    await sender.close()
    assert sink.message_count == 7 and sink.connections == 3


async def test_backup_mx_connection_is_not_taken_by_another_destination(
        make_sink: MakeSink) -> None:
    backup = make_sink("127.0.0.3")
    primary_b = make_sink("127.0.0.2", backup.port)
    dead_a = make_sink("127.0.0.4", backup.port)
    dead_a.stop()  # nothing listens there any more: A's primary refuses
    bk = T("backup.mx.test", "127.0.0.3", backup.port, 20)
    sender = Sender(delivery(), hostname="relay.test")
    a_targets = [T("mx.a.test", "127.0.0.4", backup.port, 10), bk]
    r1 = await sender.send("a.test", a_targets, "s@x.test", ["r@a.test"], BODY)
    assert r1.remote_mta == "backup.mx.test" and not r1.reused
    # B's primary is up: B must not be diverted onto A's backup-MX connection.
    r2 = await sender.send("b.test", [T("mx.b.test", "127.0.0.2", backup.port, 10), bk],
                           "s@x.test", ["r@b.test"], BODY)
    assert r2.remote_mta == "mx.b.test" and not r2.reused
    # A itself reuses its backup connection (its primary was down) ...
    r3 = await sender.send("a.test", a_targets, "s@x.test", ["q@a.test"], BODY)
    assert r3.remote_mta == "backup.mx.test" and r3.reused
    # ... and so does a domain whose most preferred MX that host is.
    r4 = await sender.send("c.test", [bk], "s@x.test", ["r@c.test"], BODY)
    assert r4.reused
    await sender.close()
    assert backup.connections == 1 and backup.message_count == 3
    assert primary_b.message_count == 1


async def test_opportunistic_tls_connection_is_not_reused_for_verify(
        make_sink: MakeSink) -> None:
    ca = trustme.CA()
    sink = make_sink(tls_context=server_tls(ca, "mx.shared.test"))
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    sender = Sender(delivery(), hostname="relay.test", verify_context=trusting)
    mx = [T("mx.shared.test", "127.0.0.2", sink.port)]
    r1 = await sender.send("opp.test", mx, "s@x.test", ["r@opp.test"], BODY)
    assert r1.tls and not r1.reused  # encrypted, certificate not checked
    r2 = await sender.send("sts.test", mx, "s@x.test", ["r@sts.test"], BODY, tls="verify")
    assert r2.tls and not r2.reused and r2.outcomes[0].kind == "delivered"
    assert sink.connections == 2
    # "require" takes an encrypted one; "verify" again takes the verified one.
    r3 = await sender.send("req.test", mx, "s@x.test", ["r@req.test"], BODY, tls="require")
    r4 = await sender.send("sts2.test", mx, "s@x.test", ["r@sts2.test"], BODY, tls="verify")
    assert r3.reused and r4.reused and sink.connections == 2
    await sender.close()
    assert sink.message_count == 4


async def test_plaintext_connection_is_not_reused_when_tls_is_required(
        make_sink: MakeSink) -> None:
    plain = make_sink("127.0.0.2")
    sender = Sender(delivery(), hostname="relay.test")
    mx = [T("mx.shared.test", "127.0.0.2", plain.port)]
    await sender.send("opp.test", mx, "s@x.test", ["r@opp.test"], BODY)
    res = await sender.send("req.test", mx, "s@x.test", ["r@req.test"], BODY, tls="require")
    assert (res.outcomes[0].kind, res.outcomes[0].enhanced) == ("deferred", "4.7.5")
    assert sender.idle_connections() == 1  # the plaintext one stays for others
    await sender.close()
    assert plain.message_count == 1 and plain.connections == 2


# ---------------------------------------------------------------------------- sites

async def test_reused_connection_moves_to_the_site_using_it(make_sink: MakeSink) -> None:
    sink = make_sink()
    sender = Sender(delivery(), hostname="relay.test")
    mx = [T("mx.shared.test", "127.0.0.2", sink.port)]
    await sender.send("a.test", mx, "s@x.test", ["r@a.test"], BODY, site="A", max_connections=2)
    assert sender._site_open == {"A": 1}
    r = await sender.send("b.test", mx, "s@x.test", ["r@b.test"], BODY, site="B",
                          max_connections=2)
    assert r.reused and sender._site_open == {"A": 0, "B": 1}
    await sender.close()
    assert sender._site_open == {"A": 0, "B": 0}
    assert sink.connections == 1


async def test_cancelled_send_releases_its_connection_and_site(make_sink: MakeSink) -> None:
    sink = make_sink(policy=Rules(delay=2.0))
    sender = Sender(delivery(), hostname="relay.test")
    task = asyncio.create_task(sender.send(
        "a.test", [T("mx", "127.0.0.2", sink.port)], "s@x.test", ["r@a.test"], BODY,
        site="A", max_connections=2))
    for _ in range(100):
        await asyncio.sleep(0.02)
        if sender._site_open.get("A"):
            break
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sender._site_open == {"A": 0} and sender.idle_connections() == 0
    await sender.close()


# ---------------------------------------------------------------------------- caps and reaping

@pytest.mark.parametrize("answer_quit", [True, False], ids=["quit-answered", "quit-silent"])
async def test_reap_closes_idle_connections_concurrently(
        counting: Callable[..., Any], answer_quit: bool) -> None:
    n = 20
    server: CountingMX = await counting(answer_quit=answer_quit)
    clock = FakeClock()
    sender = Sender(delivery(command_timeout=Duration(1), max_connections_per_destination=n,
                             idle_connection_timeout=Duration(10)),
                    hostname="relay.test", clock=clock)
    mx = [T("mx.shared.test", "127.0.0.2", server.port)]
    results = await asyncio.gather(*(
        sender.send(f"d{i}.test", mx, "s@x.test", [f"r@d{i}.test"], BODY) for i in range(n)))
    assert all(r.outcomes[0].kind == "delivered" for r in results)
    assert server.opened == n and sender.idle_connections() == n
    clock.advance(11)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await sender.reap() == n
    elapsed = loop.time() - start
    # One at a time a silent server would hold this for n x 1 s.
    assert elapsed < 3.0, elapsed
    assert sender.idle_connections() == 0
    assert await server.until_open(0) == 0
    assert server.quits == n
    await sender.close()


async def test_total_idle_cap_closes_the_oldest(counting: Callable[..., Any]) -> None:
    server: CountingMX = await counting()
    sender = Sender(delivery(max_idle_connections=3), hostname="relay.test")
    for i in range(6):  # six MX host names on one address: six keys
        await sender.send(f"d{i}.test", [T(f"mx{i}.test", "127.0.0.2", server.port)],
                          "s@x.test", [f"r@d{i}.test"], BODY)
        assert sender.idle_connections() == min(i + 1, 3)
    assert server.opened == 6
    assert await server.until_open(3) == 3
    assert server.quits == 3
    newest = await sender.send("d5.test", [T("mx5.test", "127.0.0.2", server.port)],
                               "s@x.test", ["q@d5.test"], BODY)
    oldest = await sender.send("d0.test", [T("mx0.test", "127.0.0.2", server.port)],
                               "s@x.test", ["q@d0.test"], BODY)
    assert newest.reused and not oldest.reused
    assert sender.idle_connections() == 3
    await sender.close()
    assert await server.until_open(0) == 0


async def test_no_idle_connection_is_kept_when_the_cap_is_zero(
        counting: Callable[..., Any]) -> None:
    server: CountingMX = await counting()
    sender = Sender(delivery(max_idle_connections=0), hostname="relay.test")
    first = await sender.send("d.test", [T("mx.test", "127.0.0.2", server.port)],
                              "s@x.test", ["a@d.test"], BODY)
    assert sender.idle_connections() == 0
    second = await sender.send("d.test", [T("mx.test", "127.0.0.2", server.port)],
                               "s@x.test", ["b@d.test"], BODY)
    assert not first.reused and not second.reused
    assert server.opened == 2 and await server.until_open(0) == 0
    await sender.close()
