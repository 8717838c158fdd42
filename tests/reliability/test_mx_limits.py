"""A domain with a hundred MX hosts: one delivery attempt considers at most
delivery.mx_address_limit addresses and opens at most delivery.mx_session_limit
sessions (Postfix's smtp_mx_address_limit = 5 and smtp_mx_session_limit = 2), so a
sender cannot make relay connect to a hundred hosts of its choice. The real loopback DNS
server serves the hundred MX records; a hundred real listeners on 127.0.0.10-109 count
every connection relay actually makes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Literal

import pytest

from relay.clock import FakeClock
from relay.config import ConfigError, Delivery, Duration, loads
from relay.delivery.client import Sender
from relay.delivery.routing import Router
from relay.dns.resolver import DnsResolver
from relay.dns.route import Targets
from relay.testing.delivery import BODY
from relay.testing.dnsserver import DnsServer

HOSTS = 100
Behaviour = Literal["drop", "busy"]


def address(i: int) -> str:
    return f"127.0.0.{10 + i}"


ZONE: dict[str, list[tuple[str, str]]] = {
    "many.test": [("MX", f"10 mx{i}.many.test") for i in range(HOSTS)],
    **{f"mx{i}.many.test": [("A", address(i))] for i in range(HOSTS)},
}


class Listeners:
    """One TCP listener per MX address, all on one port, counting connections. "drop"
    closes before any greeting (a host that is not a session); "busy" greets with
    421 (a session that refuses)."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.connections: list[str] = []
        self.servers: list[asyncio.Server] = []
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(str(writer.get_extra_info("sockname")[0]))
        try:
            if self.behaviour == "busy":
                writer.write(b"421 4.3.2 busy, try another MX\r\n")
                await writer.drain()
        finally:
            writer.close()

    async def start(self) -> Listeners:
        for i in range(HOSTS):
            server = await asyncio.start_server(self._serve, address(i), self.port)
            self.port = int(server.sockets[0].getsockname()[1])
            self.servers.append(server)
        return self

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        await asyncio.gather(*(s.wait_closed() for s in self.servers))


@pytest.fixture
async def drop() -> AsyncIterator[Listeners]:
    listeners = await Listeners("drop").start()
    yield listeners
    await listeners.close()


@pytest.fixture
async def busy() -> AsyncIterator[Listeners]:
    listeners = await Listeners("busy").start()
    yield listeners
    await listeners.close()


def delivery(port: int, **limits: int) -> Delivery:
    """Short timeouts; the limits given (mx_address_limit=..., ...), else the defaults."""
    return Delivery(port=port, connect_timeout=Duration(3), command_timeout=Duration(3),
                    data_timeout=Duration(3), **limits)


async def attempt(ns: DnsServer, cfg: Delivery) -> tuple[Targets, list[str]]:
    resolver = DnsResolver([("127.0.0.1", ns.port)], clock=FakeClock(), timeout=2.0)
    route = await Router(cfg, resolver, random.Random(7)).route("many.test")
    assert isinstance(route, Targets), route
    sender = Sender(cfg, hostname="relay.test")
    try:
        res = await asyncio.wait_for(sender.send(
            "many.test", route.hosts, "s@x.test", ["r@many.test"], BODY), timeout=15)
    finally:
        await sender.close()
    (outcome,) = res.outcomes
    assert outcome.kind == "deferred", outcome
    return route, [t.address for t in route.hosts]


async def test_hundred_mx_hosts_get_at_most_five_connections(
        ns: DnsServer, drop: Listeners) -> None:
    route, tried = await attempt(ns, delivery(drop.port))
    assert len(route.hosts) == 5
    # Every address considered was connected to once (none greeted, so none was a
    # session), and no other: five connections, not a hundred.
    assert sorted(drop.connections) == sorted(tried)
    # Only as many MX host names as needed were looked up, not all hundred.
    assert ns.query_count(rdtype="A") <= 5


async def test_hundred_refusing_mx_hosts_get_at_most_two_sessions(
        ns: DnsServer, busy: Listeners) -> None:
    _, tried = await attempt(ns, delivery(busy.port))
    assert busy.connections == tried[:2]


async def test_limits_follow_the_config(ns: DnsServer, busy: Listeners) -> None:
    route, tried = await attempt(ns, delivery(busy.port, mx_address_limit=8, mx_session_limit=6))
    assert len(route.hosts) == 8
    assert busy.connections == tried[:6]


@pytest.mark.parametrize(("key", "value"), [
    ("mx_address_limit", 0), ("mx_address_limit", 101), ("mx_session_limit", 0),
    ("mx_session_limit", -1), ("mx_session_limit", 1000)])
def test_limits_out_of_range_are_refused_with_the_key(key: str, value: int) -> None:
    with pytest.raises(ConfigError) as info:
        loads(f"[delivery]\n{key} = {value}\n")
    assert info.value.problems == [
        f"delivery.{key}: expected an integer between 1 and 100, got {value}"]


def test_defaults_are_postfix_limits() -> None:
    cfg = loads("")
    assert (cfg.delivery.mx_address_limit, cfg.delivery.mx_session_limit) == (5, 2)
