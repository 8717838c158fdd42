"""Warm-up delivery at real sinks, in one process (tests/integration/test_warmup_*.py).

Two mailbox providers: `provider_dns()` serves a.test and a2.test (MX mx.prova.test,
127.0.0.2) and b.test (MX mx.provb.test, 127.0.0.3); `provider_sinks()` runs a sink on
each address, on one port. `DeliveryHarness` is relay/app.py's graph (built by
relay/wiring.py: queue → scheduler → shaper → client, journal and suppression included)
on a FakeClock; `Started` starts harnesses and closes the ones still open at the end of a
test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Generic, TypeVar

import msgspec

from relay.clock import FakeClock
from relay.config import Config
from relay.delivery.shaper import ShapedSender
from relay.testing.dnsserver import DnsServer
from relay.testing.harness import Harness
from relay.testing.sink import Sink

ZONE = {
    "a.test": [("MX", "10 mx.prova.test")],
    "a2.test": [("MX", "10 mx.prova.test")],
    "mx.prova.test": [("A", "127.0.0.2")],
    "b.test": [("MX", "10 mx.provb.test")],
    "mx.provb.test": [("A", "127.0.0.3")],
}


@contextmanager
def provider_dns() -> Iterator[DnsServer]:
    """A DNS server for the two providers' domains and MX hosts."""
    with DnsServer(ZONE) as server:
        yield server


@contextmanager
def provider_sinks() -> Iterator[tuple[Sink, Sink]]:
    """Sinks on 127.0.0.2 (prova) and 127.0.0.3 (provb), the same port."""
    with Sink("127.0.0.2", 0) as a, Sink("127.0.0.3", a.port) as b:
        yield a, b


class DeliveryHarness(Harness):
    """relay/app.py's graph (relay/testing/harness.py) for a warm-up config on `clock`:
    queue in `tmp`/queue, events in `events`; scheduler → shaper → client."""

    def __init__(self, tmp: Path, cfg: Config, clock: FakeClock, events: Path) -> None:
        if cfg.state_path != tmp:
            raise ValueError(f"the config's state directory {cfg.state_path} is not {tmp}")
        cfg = msgspec.structs.replace(
            cfg, events=msgspec.structs.replace(cfg.events, log=str(events)))
        super().__init__(cfg, clock)
        if self.parts.shaped is None:
            raise ValueError("a warm-up harness needs delivery.pool or a [[pool]]")
        self.shaped: ShapedSender = self.parts.shaped

    async def run_until(self, until: float) -> None:
        """Deliver what is due, jumping the clock to the next due time, up to `until`."""
        await self.deliver_until(until)


H = TypeVar("H", bound=DeliveryHarness)


class Started(Generic[H]):
    """The harnesses a test made: `await start(h)` starts one; `close()` closes those whose
    store is still open."""

    def __init__(self) -> None:
        self.made: list[H] = []

    async def start(self, h: H) -> H:
        await h.start()
        self.made.append(h)
        return h

    async def close(self) -> None:
        for h in self.made:
            if h.store.running:
                await h.close()
