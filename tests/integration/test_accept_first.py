"""Accept first, with the real scheduler, LMDB store, SMTP client, DNS server and sink.

A burst of submissions arrives (the store's own submit, then `gate.accepted()` and a
scheduler wake: what relay.smtp.submitter.QueueSubmitter does per message). The loop's lateness
is the probe's threshold: -1 s makes every probe late, 10 s none, so the test does
not depend on how busy this machine is. What is counted is at the sink: how many
connections relay opened (one per transaction in flight; a connection is pooled and
reused, up to 1,000 messages) and how many messages arrived, during and after the
burst.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest

from relay.app import RelayApp
from relay.clock import Clock, FakeClock, SystemClock
from relay.config import from_dict
from relay.delivery.client import Sender
from relay.delivery.scheduler import LEASE_SLICE, Scheduler
from relay.delivery.yielding import DeliveryGate, LoopLag
from relay.identity.store import IdentityStore
from relay.queue.keys import DueItem
from relay.queue.ops import NewMessage
from relay.queue.store import QueueStore
from relay.testing.dnsserver import DnsServer
from relay.testing.factories import DnsServers
from relay.testing.harness import Harness
from relay.testing.process import free_port
from relay.testing.sink import Sink
from relay.wiring import Overrides

ROUNDS, PER_ROUND = 10, 25
TOTAL = ROUNDS * PER_ROUND


@pytest.fixture
def dns_server(dns_server: DnsServers) -> DnsServer:
    zone = {"dest.test": [("MX", "10 mx.dest.test")], "mx.dest.test": [("A", "127.0.0.2")]}
    return dns_server(zone)


@dataclass
class Rig:
    store: QueueStore
    scheduler: Scheduler
    gate: DeliveryGate
    lag: LoopLag
    sink: Sink
    sender: Sender

    async def burst(self) -> tuple[int, int]:
        """Submit ROUNDS × PER_ROUND messages; (connections, messages) at the sink when
        the last one is accepted."""
        for r in range(ROUNDS):
            await asyncio.gather(*(self._submit(f"u{r}-{i}@dest.test")
                                   for i in range(PER_ROUND)))
            await asyncio.sleep(0.005)  # delivery gets loop turns between rounds
        return self.sink.connections, self.sink.message_count

    async def _submit(self, rcpt: str) -> None:
        await self.store.submit_record(NewMessage(
            sender="app@example.com", recipients=[rcpt],
            body=b"Subject: hi\r\nFrom: app@example.com\r\n\r\nhello\r\n",
            headers={"Subject": "hi", "From": "app@example.com"}))
        self.gate.accepted()
        self.scheduler.wake()


MakeRig = Callable[..., Awaitable[Rig]]


async def _delivery_parts(tmp_path: Path, dns: DnsServer, sink: Sink, clock: Clock,
                          overrides: Overrides | None = None, *,
                          deliver: bool = False) -> Harness:
    """relay/app.py's graph delivering to `sink`, started (with the scheduler's own loop
    when `deliver`)."""
    h = Harness(from_dict({
        "server": {"hostname": "relay.test", "state_dir": str(tmp_path)},
        "dns": {"nameservers": [f"127.0.0.1:{dns.port}"], "timeout": "2s"},
        "delivery": {"port": sink.port, "max_messages_per_connection": 1000},
    }), clock, overrides)
    await h.start(deliver=deliver)
    return h


@pytest.fixture
async def make_rig(tmp_path: Path, dns_server: DnsServer) -> AsyncIterator[MakeRig]:
    made: list[Harness] = []
    sink = Sink("127.0.0.2", 0)
    sink.start()

    async def make(*, threshold: float, max_hold: float) -> Rig:
        lag = LoopLag(interval=0.005, threshold=threshold, hold=0.2)

        def gate(lag: LoopLag, on_open: Sequence[Callable[[], None]]) -> DeliveryGate:
            return DeliveryGate(lag, max_hold=max_hold, floor=2, hold=0.2, burst_min=1,
                                on_open=on_open)

        h = await _delivery_parts(tmp_path, dns_server, sink, SystemClock(),
                                  Overrides(loop_lag=lag, gate=gate), deliver=True)
        made.append(h)
        return Rig(h.store, h.scheduler, h.parts.gate, lag, sink, h.sender)

    try:
        yield make
    finally:
        for h in made:
            await h.close()
        sink.stop()


async def test_a_burst_on_a_late_loop_holds_delivery_to_the_floor_then_all_goes(
        make_rig: MakeRig) -> None:
    rig: Rig = await make_rig(threshold=-1.0, max_hold=60.0)
    connections, arrived = await rig.burst()
    assert connections <= 2, f"{connections} transactions at once during the burst"
    assert arrived >= 1, "delivery stopped during the burst; the floor must go on"
    await rig.sink.await_for(TOTAL, timeout=20)
    assert rig.sink.connections > 2, "the burst is over: delivery takes its full share"


async def test_a_loop_on_time_is_not_held_back(make_rig: MakeRig) -> None:
    rig: Rig = await make_rig(threshold=10.0, max_hold=60.0)
    connections, _ = await rig.burst()
    assert connections > 2
    await rig.sink.await_for(TOTAL, timeout=20)


async def test_past_max_hold_the_burst_shares_the_loop(make_rig: MakeRig) -> None:
    rig: Rig = await make_rig(threshold=-1.0, max_hold=0.02)
    connections, _ = await rig.burst()
    assert rig.gate.burst_started is not None, "the burst was not seen"
    assert connections > 2, "past max_hold, delivery must take its full share"
    await rig.sink.await_for(TOTAL, timeout=20)


async def _queue_one_recipient_messages(store: QueueStore, n: int) -> None:
    """`n` messages of one recipient each at dest.test, queued."""
    await asyncio.gather(*(store.submit_record(NewMessage(
        sender="app@example.com", recipients=[f"u{i}@dest.test"],
        body=b"Subject: hi\r\n\r\nhello\r\n", headers={"Subject": "hi"}))
        for i in range(n)))

async def test_a_burst_backlog_at_one_destination_is_not_given_back(
        tmp_path: Path, dns_server: DnsServer) -> None:
    """After a burst, 1,500 recipients wait for one destination. With the old
    ready_queue_limit of 1,000 the scheduler leased all of them and gave 500 back for
    5 poll intervals, so the destination sat idle once its 1,000 were sent (at 400
    msgs/s, half of the time). Now one promotion holds them all: everything is sent
    without the clock moving."""
    with Sink("127.0.0.2", 0) as sink:
        h = await _delivery_parts(tmp_path, dns_server, sink, FakeClock())
        store, scheduler = h.store, h.scheduler
        try:
            await _queue_one_recipient_messages(store, 1500)
            await scheduler.run_until_idle()
            assert sink.message_count == 1500
            assert store.next_due_at() is None
        finally:
            await h.close()


async def test_a_large_promotion_is_leased_in_slices(
        tmp_path: Path, dns_server: DnsServer) -> None:
    """A promotion of 600 due recipients is leased by ops of at most LEASE_SLICE (each a
    short hold of the loop in its group commit), and all 600 are leased and queued."""
    with Sink("127.0.0.2", 0) as sink:
        h = await _delivery_parts(tmp_path, dns_server, sink, FakeClock())
        store, scheduler = h.store, h.scheduler
        try:
            await _queue_one_recipient_messages(store, 600)
            sizes: list[int] = []
            lease_op = store.lease_op

            def counting_lease_op(items: list[DueItem], now: float) -> Any:
                sizes.append(len(items))
                return lease_op(items, now)

            store.lease_op = counting_lease_op  # type: ignore[method-assign]
            assert await scheduler.promote() == 600
            assert sizes == [LEASE_SLICE, LEASE_SLICE, 600 - 2 * LEASE_SLICE]
            assert scheduler.held == 600
        finally:
            await h.close()

async def test_the_app_holds_delivery_for_a_burst_through_its_listener(
        tmp_path: Path, dns_server: DnsServer) -> None:
    """The wiring in a whole in-process RelayApp: its listener's submissions reach the
    gate, its probe drives it, its scheduler waits on it and its /metrics (scraped over
    HTTP) counts the hold.
    The probe's threshold is set below zero so this machine's speed does not matter."""
    identities = IdentityStore.in_state_dir(tmp_path)
    identities.add("example.com")
    identities.set_verified("example.com", True)
    port, admin_port = free_port(), free_port()
    with Sink("127.0.0.2", 0) as sink:
        app = RelayApp(from_dict({
            "server": {"hostname": "relay.test", "state_dir": str(tmp_path)},
            "listener": [{"address": f"127.0.0.1:{port}", "tls": "none", "auth": "none",
                          "trusted_networks": ["127.0.0.0/8"]}],
            "dns": {"nameservers": [f"127.0.0.1:{dns_server.port}"], "timeout": "2s"},
            "delivery": {"port": sink.port, "mta_sts": False},
            "admin": {"enabled": True, "address": f"127.0.0.1:{admin_port}"},
        }))
        await app.start()
        try:
            app.loop_lag.threshold = -1.0  # every probe counts as late
            assert app.scheduler.gate is not None
            app.scheduler.gate.burst_min = 1  # every accept counts as a burst

            async def client(c: int) -> None:
                async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port,
                                           timeout=10) as smtp:
                    for i in range(10):
                        await smtp.sendmail(
                            "app@example.com", [f"u{c}-{i}@dest.test"],
                            f"From: app@example.com\r\nSubject: {i}\r\n\r\nhi\r\n")

            await asyncio.gather(*(client(c) for c in range(10)))
            gate = app.scheduler.gate
            assert gate is not None and gate.held_seconds > 0
            async with aiohttp.ClientSession() as http, \
                    http.get(f"http://127.0.0.1:{admin_port}/metrics") as resp:
                metrics = await resp.text()
            held = re.search(r"\nrelay_delivery_held_seconds_total (\S+)", metrics)
            assert held is not None and float(held.group(1)) > 0, metrics[-600:]
            await sink.await_for(100, timeout=20)  # and when the burst ends, all goes
        finally:
            await app.stop()
