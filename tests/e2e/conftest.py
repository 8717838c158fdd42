"""Shared fixtures of the end-to-end tests: a loopback DNS server and sinks on 127.0.0.2/.3.

Config builders for the relay subprocess live in relay.testing.process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from relay.testing.dnsserver import DnsServer
from relay.testing.factories import DnsServers
from relay.testing.sink import Sink

# Destination domains and where their MX hosts live.
ZONE: dict[str, list[tuple[str, str]]] = {
    "a.test": [("MX", "10 mx.a.test")],
    "mx.a.test": [("A", "127.0.0.2")],
    "b.test": [("MX", "10 mx.b.test")],
    "mx.b.test": [("A", "127.0.0.3")],
    # Two MX hosts of equal preference, one on each sink.
    "c.test": [("MX", "10 mx1.c.test"), ("MX", "10 mx2.c.test")],
    "mx1.c.test": [("A", "127.0.0.2")],
    "mx2.c.test": [("A", "127.0.0.3")],
    "dest.test": [("MX", "10 mx.dest.test")],
    "mx.dest.test": [("A", "127.0.0.2")],
    # Its MX answers 451 to every DATA (see the `sinks` fixture's policy).
    "busy.test": [("MX", "10 mx.busy.test")],
    "mx.busy.test": [("A", "127.0.0.3")],
}


@pytest.fixture
def dns_server(dns_server: DnsServers) -> DnsServer:
    return dns_server(ZONE)


def _busy_policy(stage: str, arg: str, envelope: Any) -> str | None:
    if stage == "rcpt" and arg.lower().endswith("@busy.test"):
        return "451 4.2.0 mailbox busy, try again later"
    return None


@pytest.fixture
def sinks() -> Iterator[tuple[Sink, Sink]]:
    """Two sinks on one port: 127.0.0.2 and 127.0.0.3 (the port relay delivers to)."""
    first = Sink("127.0.0.2", 0, policy=_busy_policy).start()
    try:
        second = Sink("127.0.0.3", first.port, policy=_busy_policy).start()
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()
