"""Fixtures shared by the integration tests."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest

from relay.testing.delivery import MakeSink
from relay.testing.redisserver import redis_server  # noqa: F401  (a fixture: a real redis-server)
from relay.testing.sink import Policy, Sink


@pytest.fixture
def make_sink() -> Iterator[MakeSink]:
    """Loopback sinks (relay.testing.sink.Sink) started on demand, all stopped after the test."""
    sinks: list[Sink] = []

    def make(host: str = "127.0.0.2", port: int = 0, *, tls_context: ssl.SSLContext | None = None,
             policy: Policy | None = None) -> Sink:
        s = Sink(host, port, tls_context=tls_context, policy=policy).start()
        sinks.append(s)
        return s

    yield make
    for s in sinks:
        s.stop()
