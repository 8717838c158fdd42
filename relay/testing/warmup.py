"""Warm-up delivery at real sinks, in one process (tests/integration/test_warmup_*.py).

Two mailbox providers: `provider_dns()` serves a.test and a2.test (MX mx.prova.test,
127.0.0.2) and b.test (MX mx.provb.test, 127.0.0.3); `provider_sinks()` runs a sink on
each address, on one port. `DeliveryHarness` wires the delivery half of relay/app.py
(queue → scheduler → shaper → client) on a FakeClock; `Started` starts harnesses and
closes the ones still open at the end of a test.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Generic, TypeVar

from relay.clock import FakeClock
from relay.config import Config
from relay.delivery.client import Sender
from relay.delivery.routing import Router
from relay.delivery.scheduler import Scheduler
from relay.delivery.shaper import ShapedSender
from relay.dns.resolver import DnsResolver
from relay.events.log import EventLog
from relay.queue.store import QueueStore
from relay.testing.dnsserver import DnsServer
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


class DeliveryHarness:
    """Queue in `tmp`/queue, events in `events`; scheduler → shaper → client, as relay/app.py
    wires them (without lanes: a subclass adds what it needs)."""

    def __init__(self, tmp: Path, cfg: Config, clock: FakeClock, events: Path) -> None:
        self.clock = clock
        self.cfg = cfg
        self.store = QueueStore(tmp / "queue", self.clock)
        self.events = EventLog(events)
        resolver = DnsResolver.from_config(self.cfg.dns, self.clock)
        self.sender = Sender(self.cfg.delivery, hostname="relay.test", clock=self.clock)
        self.shaped = ShapedSender(self.cfg, self.sender, self.store, self.clock)
        self.scheduler = Scheduler(
            self.store, Router(self.cfg.delivery, resolver, random.Random(1)), self.shaped,
            self.events, self.clock, self.cfg.delivery, hostname="relay.test",
            rng=random.Random(2))

    async def run_until(self, until: float) -> None:
        """Deliver what is due, jumping the clock to the next due time, up to `until`."""
        while True:
            await self.scheduler.run_until_idle()
            nd = self.store.next_due_at()
            if nd is None or nd > until:
                return
            self.clock.set(max(nd, self.clock.now()))

    async def close(self) -> None:
        await self.shaped.close()
        await self.sender.close()
        await self.store.close()
        self.events.close()


H = TypeVar("H", bound=DeliveryHarness)


class Started(Generic[H]):
    """The harnesses a test made: `await start(h)` starts one; `close()` closes those whose
    store is still open."""

    def __init__(self) -> None:
        self.made: list[H] = []

    async def start(self, h: H) -> H:
        await h.store.start()
        self.made.append(h)
        return h

    async def close(self) -> None:
        for h in self.made:
            if h.store.running:
                await h.close()
