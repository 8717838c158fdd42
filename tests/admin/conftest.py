"""Fixtures of the operator-facing tests: a loopback DNS server and sinks per module, and
one relay with the admin API on shared by a module's tests (starting one costs about a
second); tests that signal or stop a relay make their own with make_admin_relay."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from adminkit import ZONE, Admin, make_admin_relay, sink_policy

from relay.testing.dnsserver import DnsServer
from relay.testing.factories import DnsServers
from relay.testing.process import free_port
from relay.testing.sink import Sink


@pytest.fixture(scope="module")
def dns(module_dns_server: DnsServers) -> DnsServer:
    return module_dns_server(ZONE)


@pytest.fixture(scope="module")
def sinks() -> Iterator[tuple[Sink, Sink]]:
    first = Sink("127.0.0.2", 0, policy=sink_policy).start()
    try:
        second = Sink("127.0.0.3", first.port, policy=sink_policy).start()
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer,
          sinks: tuple[Sink, Sink]) -> Iterator[Admin]:
    a = make_admin_relay(tmp_path_factory.mktemp("admin"), dns, sinks)
    try:
        yield a
    finally:
        a.relay.stop()



@pytest.fixture(scope="module")
def api_relay(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer,
              sinks: tuple[Sink, Sink]) -> Iterator[Admin]:
    """As `admin`, with the SES API on (its port in data["api_port"])."""
    api_port = free_port()
    a = make_admin_relay(tmp_path_factory.mktemp("sesapi"), dns, sinks,
                         api={"enabled": True, "address": f"127.0.0.1:{api_port}"})
    a.data["api_port"] = api_port
    try:
        yield a
    finally:
        a.relay.stop()
