"""The shared test factories of tests/conftest.py: what they build and that teardown
stops or closes everything they made."""

from __future__ import annotations

from collections.abc import Callable

import dns.exception
import dns.message
import dns.query
import pytest

from relay.clock import FakeClock
from relay.config import Config, ConfigError
from relay.testing.factories import DnsServers, Stores


def test_dns_server_answers_on_loopback_and_stops_at_stop_all(dns_server: DnsServers) -> None:
    server = dns_server({"dest.test": [("MX", "10 mx.dest.test", 60)]})
    reply = dns.query.udp(dns.message.make_query("dest.test", "MX"), "127.0.0.1",
                          port=server.port, timeout=2)
    assert reply.answer[0][0].to_text() == "10 mx.dest.test."
    dns_server.stop_all()
    assert dns_server.started == []
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(dns.message.make_query("dest.test", "MX"), "127.0.0.1",
                      port=server.port, timeout=0.3)


def test_make_config_merges_keys_by_section(make_config: Callable[..., Config]) -> None:
    cfg = make_config(server={"sender_authorization": "off"}, delivery={"port": 2525})
    assert cfg.server.hostname == "relay.test"          # the default kept
    assert cfg.server.sender_authorization == "off"     # the given key merged in
    assert cfg.delivery.port == 2525
    assert cfg.state_path.name == "state"


def test_make_config_rejects_an_unknown_key(make_config: Callable[..., Config]) -> None:
    with pytest.raises(ConfigError, match="no_such_key"):
        make_config(delivery={"no_such_key": 1})


async def test_make_store_is_started_on_a_fake_clock_and_closed_at_close_all(
        make_store: Stores) -> None:
    store = await make_store()
    assert store.running and isinstance(store.clock, FakeClock)
    clock = FakeClock(1_800_000_000.0)
    other = await make_store(clock, name="other")
    assert other.clock is clock and other.running
    await make_store.close_all()
    assert not store.running and not other.running
    assert make_store.opened == []
