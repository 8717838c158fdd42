"""The whole retry life of a message on a FakeClock, with a real sink, DNS and LMDB.

72 hours of retries run in well under a second: time only moves when the test
jumps the FakeClock to the store's next due time.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import Envelope

from relay.clock import FakeClock
from relay.config import from_dict
from relay.events.log import read_events
from relay.events.model import send_event
from relay.queue.ops import NewMessage
from relay.queue.records import State
from relay.testing.dnsserver import DnsServer
from relay.testing.factories import DnsServers
from relay.testing.harness import Harness as AppGraph
from relay.testing.sink import Sink
from relay.wiring import Overrides

HOUR = 3600.0


@pytest.fixture
def dns_server(dns_server: DnsServers) -> DnsServer:
    zone = {
        "dest.test": [("MX", "10 mx.dest.test")],
        "mx.dest.test": [("A", "127.0.0.2")],
        "nullmx.test": [("MX", "0 .")],
    }
    return dns_server(zone)


class Switch:
    """A sink policy: temporary failure at DATA until `accept` is set."""

    def __init__(self) -> None:
        self.accept = False
        self.calls = 0

    def __call__(self, stage: str, arg: str, envelope: Envelope) -> str | None:
        if stage == "data":
            self.calls += 1
            return None if self.accept else "451 4.3.0 mailbox busy, try later"
        return None


class Harness(AppGraph):
    def __init__(self, tmp: Path, dns_port: int, sink_port: int) -> None:
        super().__init__(from_dict({
            "server": {"hostname": "relay.test", "state_dir": str(tmp)},
            "dns": {"nameservers": [f"127.0.0.1:{dns_port}"], "timeout": "2s"},
            "delivery": {"port": sink_port, "retry_jitter": 0.1},
        }), FakeClock(), Overrides(rng=random.Random(2)))

    async def submit(self, rcpt: str) -> str:
        record = await self.store.submit_record(NewMessage(
            sender="app@example.com", recipients=[rcpt], body=b"Subject: hi\r\n\r\nhello\r\n",
            headers={"Subject": "hi", "From": "app@example.com"}))
        self.events.emit([send_event(record)])
        return record.id

    async def run_until(self, limit: float, on_time: Any = None) -> None:
        """Jump from due time to due time until nothing is due or `limit` seconds passed."""
        start = self.clock.now()
        while True:
            await self.scheduler.run_until_idle()
            nd = self.store.next_due_at()
            if nd is None or nd - start > limit:
                return
            self.clock.set(max(nd, self.clock.now()))
            if on_time is not None:
                on_time(self.clock.now() - start)

    def events_of(self, mid: str) -> list[dict[str, Any]]:
        return [e for e in read_events(self.events.path)
                if e["mail"]["messageId"] == mid]  # type: ignore[index]


@pytest.fixture
async def harness(tmp_path: Path, dns_server: DnsServer) -> Any:
    with Sink("127.0.0.2", 0) as sink:
        h = Harness(tmp_path, dns_server.port, sink.port)
        h.sink = sink  # type: ignore[attr-defined]
        await h.start()
        yield h
        await h.close()


async def test_tempfail_for_71_hours_then_delivered(harness: Any) -> None:
    switch = Switch()
    harness.sink.policy = switch
    mid = await harness.submit("user@dest.test")

    def flip(elapsed: float) -> None:
        if elapsed >= 71 * HOUR:
            switch.accept = True

    await harness.run_until(80 * HOUR, flip)
    kinds = [e["eventType"] for e in harness.events_of(mid)]
    assert kinds[0] == "Send" and kinds[-1] == "Delivery"
    assert "Bounce" not in kinds
    delays = kinds.count("DeliveryDelay")
    # 1m, 5m, 15m, 30m, 1h, then every 2h: about 37 attempts fail in 71 hours.
    assert 30 <= delays <= 45 and switch.calls == delays + 1
    assert harness.store.message(mid) is None  # removed once final
    assert len(harness.sink.messages) == 1


async def test_tempfail_for_72_hours_expires_as_bounce(harness: Any) -> None:
    harness.sink.policy = Switch()
    mid = await harness.submit("user@dest.test")
    received = harness.clock.now()
    await harness.run_until(100 * HOUR)
    events = harness.events_of(mid)
    kinds = [e["eventType"] for e in events]
    assert kinds[0] == "Send" and kinds[-1] == "Bounce"
    assert kinds.count("DeliveryDelay") >= 30
    bounce = events[-1]["bounce"]
    assert bounce["bounceType"] == "Transient"
    assert "451 4.3.0" in bounce["bouncedRecipients"][0]["diagnosticCode"]
    # The last attempt is exactly at the 72-hour deadline, never later.
    assert harness.clock.now() - received == pytest.approx(72 * HOUR, abs=1)
    delay = next(e for e in events if e["eventType"] == "DeliveryDelay")["deliveryDelay"]
    assert delay["delayedRecipients"][0]["status"] == "4.3.0"
    assert harness.sink.messages == []


async def test_permanent_failures_bounce_at_once(harness: Any) -> None:
    harness.sink.policy = lambda stage, arg, env: (
        "550 5.1.1 no such user" if stage == "rcpt" and arg.startswith("gone@") else None)
    gone = await harness.submit("gone@dest.test")
    null = await harness.submit("x@nullmx.test")
    nxd = await harness.submit("x@nonexistent.test")
    await harness.run_until(0)
    b1 = harness.events_of(gone)[-1]["bounce"]
    assert b1["bounceType"] == "Permanent" and b1["bounceSubType"] == "NoEmail"
    b2 = harness.events_of(null)[-1]["bounce"]
    assert "5.1.10" in b2["bouncedRecipients"][0]["diagnosticCode"]
    b3 = harness.events_of(nxd)[-1]["bounce"]
    assert b3["bounceType"] == "Permanent"
    assert all(harness.store.message(m) is None for m in (gone, null, nxd))


async def test_dns_servfail_is_retried(harness: Any, dns_server: DnsServer) -> None:
    dns_server.fail("flaky.test", "SERVFAIL")
    mid = await harness.submit("x@flaky.test")
    await harness.run_until(0)
    assert harness.store.recipients(mid)[0].state is State.DEFERRED
    assert harness.events_of(mid)[-1]["eventType"] == "DeliveryDelay"
