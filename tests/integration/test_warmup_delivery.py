"""Warm-up caps observed at real sinks: per-source-IP counts over loopback.

Sinks on 127.0.0.2 and 127.0.0.3 stand for two mailbox providers (recognised by
their MX host names); relay's source IPs are 127.0.0.10/.11 (a warming pool)
and 127.0.0.12 (a warm overflow pool). The sinks record the peer address of
each message, so the counts per source IP are what a provider would see.
Time is a FakeClock: the next day is one jump away.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.clock import FakeClock
from relay.config import Config, from_dict
from relay.events.log import read_events
from relay.queue.ops import NewMessage
from relay.queue.records import State
from relay.testing.dnsserver import DnsServer
from relay.testing.sink import Rules, Sink
from relay.testing.warmup import DeliveryHarness, Started, provider_dns, provider_sinks

DAY = 86400.0
START = 1_790_035_200.0 + 9 * 3600   # 2026-09-22 09:00 UTC
CAPS = [3, 5]


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with provider_dns() as server:
        yield server


@pytest.fixture
def sinks() -> Iterator[tuple[Sink, Sink]]:
    with provider_sinks() as pair:
        yield pair


class Harness(DeliveryHarness):
    def __init__(self, tmp: Path, dns_port: int, sink_port: int, overflow: str,
                 clock: FakeClock) -> None:
        start = dt.datetime.fromtimestamp(START, dt.UTC).date().isoformat()
        cfg: Config = from_dict({
            "server": {"hostname": "relay.test", "state_dir": str(tmp)},
            "dns": {"nameservers": [f"127.0.0.1:{dns_port}"], "timeout": "2s"},
            "delivery": {"port": sink_port, "pool": "dedicated", "retry_jitter": 0.0},
            "warmup": {"pacing": "none"},
            "warmup_plan": [{"name": "tiny", "caps": CAPS}],
            "provider": [{"name": "prova", "mx": ["mx.prova.test"]},
                         {"name": "provb", "mx": ["mx.provb.test"]}],
            "pool": [
                {"name": "dedicated", "warmup_plan": "tiny", "warmup_start": start,
                 "overflow": overflow,
                 "ips": [{"address": "127.0.0.10", "ehlo": "mta10.relay.test"},
                         "127.0.0.11"],
                 "ehlo": {"127.0.0.11": "mta11.relay.test"}},
                {"name": "shared", "ips": [{"address": "127.0.0.12", "ehlo": "mta12.test"}]},
            ],
        })
        super().__init__(tmp, cfg, clock, tmp / "events.jsonl")

    async def submit(self, *rcpts: str) -> None:
        for rcpt in rcpts:
            await self.store.submit_record(NewMessage(
                sender="app@example.com", recipients=[rcpt], body=b"Subject: hi\r\n\r\nhi\r\n"))


@pytest.fixture
async def make(tmp_path: Path, dns_server: DnsServer, sinks: tuple[Sink, Sink]) -> Any:
    started: Started[Harness] = Started()

    async def factory(overflow: str, clock: FakeClock | None = None) -> Harness:
        return await started.start(Harness(tmp_path, dns_server.port, sinks[0].port, overflow,
                                           clock or FakeClock(START)))

    yield factory
    await started.close()


def peers(*sinks: Sink) -> Counter[str]:
    return Counter(m.peer for s in sinks for m in s.messages)


async def test_caps_per_ip_per_provider_exact_with_overflow(make: Any,
                                                           sinks: tuple[Sink, Sink]) -> None:
    a, b = sinks
    h = await make("shared")
    await h.submit(*[f"u{i}@a.test" for i in range(6)], *[f"v{i}@a2.test" for i in range(4)],
                   *[f"w{i}@b.test" for i in range(10)])
    await h.run_until(START + 60)
    # Day 1: each dedicated IP sends exactly 3 to each provider; the rest overflows.
    assert peers(a) == {"127.0.0.10": 3, "127.0.0.11": 3, "127.0.0.12": 4}
    assert peers(b) == {"127.0.0.10": 3, "127.0.0.11": 3, "127.0.0.12": 4}
    assert h.store.message_count() == 0
    ehlo = {m.peer: m.ehlo for m in a.messages}
    assert ehlo == {"127.0.0.10": "mta10.relay.test", "127.0.0.11": "mta11.relay.test",
                    "127.0.0.12": "mta12.test"}
    # Day 2: the plan moved to 5 per IP per provider.
    a.clear()
    b.clear()
    h.clock.set(START + DAY)
    await h.submit(*[f"x{i}@a.test" for i in range(12)])
    await h.run_until(START + DAY + 60)
    assert peers(a) == {"127.0.0.10": 5, "127.0.0.11": 5, "127.0.0.12": 2}


async def test_defer_waits_for_next_day_and_survives_restart(
        make: Any, sinks: tuple[Sink, Sink], tmp_path: Path) -> None:
    a, _ = sinks
    clock = FakeClock(START)
    h = await make("defer", clock)
    await h.submit(*[f"u{i}@a.test" for i in range(4)])
    await h.run_until(START + 60)
    assert peers(a) == {"127.0.0.10": 2, "127.0.0.11": 2}
    # Restart in the middle of the day: the day's counts come back from LMDB.
    await h.close()
    h2 = await make("defer", clock)
    await h2.submit(*[f"v{i}@a.test" for i in range(6)])
    await h2.run_until(START + 3600)
    assert peers(a) == {"127.0.0.10": 3, "127.0.0.11": 3}
    held = [r for m, rs in h2.store.messages() for r in rs]
    assert len(held) == 4 and {r.state for r in held} == {State.DEFERRED}
    assert {r.attempts for r in held} == {0}          # a warm-up wait is not an attempt
    next_day = 1_790_035_200.0 + DAY
    assert {r.next_attempt_at for r in held} == {next_day}
    delays = [e for e in read_events(h2.events.path) if e["eventType"] == "DeliveryDelay"]
    assert len(delays) == 4
    assert "no capacity" in delays[0]["deliveryDelay"]["delayedRecipients"][0]["diagnosticCode"]
    # Next day: the held four go out, within day 2's cap.
    await h2.run_until(next_day + 60)
    assert peers(a) == {"127.0.0.10": 5, "127.0.0.11": 5}
    assert h2.store.message_count() == 0


async def test_max_delivery_time_still_applies_when_held(make: Any,
                                                        sinks: tuple[Sink, Sink]) -> None:
    h = await make("defer")
    h.cfg = h.cfg  # the harness config: 72h max delivery time
    # Freeze nothing; just use up the day, then a message that can never fit in 72h:
    # every IP paused toward prova for longer than max delivery time.
    for ip in ("127.0.0.10", "127.0.0.11"):
        pc = h.shaped.gate.state(ip)
        from relay.warmup import counters
        counters.counter(pc, "prova").paused_until = START + 10 * DAY
    await h.submit("late@a.test")
    await h.run_until(START + 5 * DAY)
    kinds = [e["eventType"] for e in read_events(h.events.path)]
    assert kinds.count("Bounce") == 1 and kinds[0] == "DeliveryDelay"
    bounce = next(e for e in read_events(h.events.path) if e["eventType"] == "Bounce")
    assert bounce["bounce"]["bounceType"] == "Transient"
    assert h.clock.now() - START == pytest.approx(72 * 3600, abs=1)


async def test_421_4_7_28_backs_off_and_freezes(make: Any, sinks: tuple[Sink, Sink]) -> None:
    a, _ = sinks
    h = await make("defer")
    a.policy = Rules(temp_fail_next=1,
                     temp_fail_reply="421 4.7.28 unusual rate of unsolicited mail from your IP")
    await h.submit("u0@a.test")
    await h.run_until(START + 3600)
    # The first attempt got 421 4.7.28 from one IP; the retry went out through the other.
    assert len(a.messages) == 1
    status = {s["ip"]: s for s in h.shaped.gate.status(h.clock.now())}
    paused = [ip for ip, s in status.items() if s["providers"].get("prova", {}).get(
        "paused_until")]
    assert len(paused) == 1
    (bad,) = paused
    good = "127.0.0.11" if bad == "127.0.0.10" else "127.0.0.10"
    assert a.messages[0].peer == good
    assert status[bad]["providers"]["prova"]["frozen_today"] is True
    assert status[bad]["providers"]["prova"]["sent_today"] == 0
    assert any("4.7.28" in n for n in h.shaped.notices)
    # Tomorrow the frozen IP is still on day 1 toward prova; the other moved to day 2.
    tomorrow = 1_790_035_200.0 + DAY + 60
    pool = h.shaped.gate.pools["dedicated"]
    assert h.shaped.gate.cap(pool, bad, "prova", tomorrow) == CAPS[0]
    assert h.shaped.gate.cap(pool, good, "prova", tomorrow) == CAPS[1]
