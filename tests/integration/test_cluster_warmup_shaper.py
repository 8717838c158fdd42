"""The warm-up shaper with [cluster] (relay/delivery/shaper.py + relay/cluster/warmup.py):
two nodes (two spools, relay/wiring.py's graph each) on one real redis-server deliver to a
real sink (127.0.0.2) from one warming IP (127.0.0.10) on a FakeClock. Redis decides,
in one call per delivery transaction; what it did not grant is held (DeliveryDelay), and
the gate then knows the IP is full, so later transactions are held without a call; a 4xx
goes back to Redis with the next call; the plan day is the cluster's on the next day."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.clock import FakeClock
from relay.config import Config, from_dict
from relay.events.log import read_events
from relay.queue.ops import NewMessage
from relay.testing.dnsserver import DnsServer
from relay.testing.redisserver import RedisServer
from relay.testing.sink import Rules, Sink
from relay.testing.warmup import DeliveryHarness, provider_dns
from relay.warmup import gate

DAY = 86400.0
START = 1_790_035_200.0 + 9 * 3600   # 09:00 UTC
CAPS = [3, 5]
IP = "127.0.0.10"


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with provider_dns() as server:
        yield server


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink("127.0.0.2", 0) as s:
        yield s


class Node(DeliveryHarness):
    def __init__(self, tmp: Path, name: str, dns_port: int, sink_port: int, redis_url: str,
                 clock: FakeClock) -> None:
        start = dt.datetime.fromtimestamp(START, dt.UTC).date().isoformat()
        cfg: Config = from_dict({
            "server": {"hostname": "relay.test", "state_dir": str(tmp / name)},
            "dns": {"nameservers": [f"127.0.0.1:{dns_port}"], "timeout": "2s"},
            "delivery": {"port": sink_port, "pool": "dedicated", "retry_jitter": 0.0,
                         "retry_schedule": ["60s"]},
            "warmup": {"pacing": "none"},
            "warmup_plan": [{"name": "tiny", "caps": CAPS}],
            "provider": [{"name": "prova", "mx": ["mx.prova.test"]}],
            "pool": [{"name": "dedicated", "warmup_plan": "tiny", "warmup_start": start,
                      "ips": [{"address": IP, "ehlo": "mta10.relay.test"}]}],
            "cluster": {"redis_url": redis_url, "node_id": name},
        })
        super().__init__(tmp / name, cfg, clock, tmp / name / "events.jsonl")
        self.shared: Any = self.parts.cluster.warmup

    async def submit(self, *rcpts: str) -> None:
        await self.store.submit_record(NewMessage(
            sender="app@example.com", recipients=list(rcpts),
            body=b"Subject: hi\r\n\r\nhi\r\n"))

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in read_events(self.events.path) if e["eventType"] == kind]

    def delayed(self) -> int:
        """Recipients held (DeliveryDelay: one event per message)."""
        return sum(len(e["deliveryDelay"]["delayedRecipients"])
                   for e in self.events_of("DeliveryDelay"))


@pytest.fixture
async def nodes(tmp_path: Path, dns_server: DnsServer, sink: Sink,
                redis_server: RedisServer) -> AsyncIterator[tuple[Node, Node]]:
    clock = FakeClock(START)
    made = [Node(tmp_path, name, dns_server.port, sink.port, redis_server.url, clock)
            for name in ("node-a", "node-b")]
    for n in made:
        await n.start()
    yield made[0], made[1]
    for n in made:
        await n.close()
        await n.parts.cluster.stop()


async def test_one_call_per_transaction_and_the_rest_held_without_one(
        nodes: tuple[Node, Node], sink: Sink) -> None:
    # (VERP: one transaction per recipient)
    a, b = nodes
    await a.submit("u0@a.test", "u1@a.test")
    await a.deliver_until(START + 10)
    assert sink.message_count == 2 and a.shared.calls == 2
    # node b: its gate sees 3 left, Redis 1: one recipient goes, one is held
    await b.submit("v0@a.test", "v1@a.test")
    await b.deliver_until(START + 20)
    # one call each, or one for the first only when its answer (the IP is full) came
    # before the second was decided
    calls = b.shared.calls
    assert calls in (1, 2)
    assert sink.message_count == 3
    delays = b.events_of("DeliveryDelay")
    assert b.delayed() == 1
    assert "no capacity left toward prova until 2026-09-23T00:00:00Z" in delays[0][
        "deliveryDelay"]["delayedRecipients"][0]["diagnosticCode"]
    # node b's gate now knows the IP is full today: held, no round trip
    await b.submit("w0@a.test", "w1@a.test")
    await b.deliver_until(START + 30)
    assert b.shared.calls == calls and b.delayed() == 3
    assert not b.events_of("Bounce")
    # the next day: plan day 2 on both nodes (the day was sent to from both): 3 held go
    await b.deliver_until(START + DAY)
    pool = b.shaped.gate.pools["dedicated"]
    for node in (a, b):
        assert node.shaped.gate.cap(pool, IP, "prova", START + DAY) == CAPS[1]
    assert sink.message_count == 6


async def test_a_4xx_is_given_back_to_redis_with_the_next_call_or_within_a_second(
        nodes: tuple[Node, Node], sink: Sink) -> None:
    a, b = nodes
    sink.policy = Rules(temp_fail_next=1)
    await a.submit("u0@a.test")
    await a.deliver_until(START + 10)
    assert sink.message_count == 0 and a.shared.calls == 1
    assert a.shared.pending(IP, "prova") == 1
    # node a's next transaction carries the refund: no call of its own
    await a.submit("u1@a.test")
    await a.deliver_until(START + 10)
    assert a.shared.calls == 2 and a.shared.pending(IP, "prova") == 0
    assert sink.message_count == 1
    # so node b may take the rest of the cap: 2, not 1
    await b.submit("v0@a.test", "v1@a.test", "v2@a.test")
    await b.deliver_until(START + 10)
    assert sink.message_count == 3 and b.delayed() == 1

    # another day, a 4xx and no transaction after it: the refund goes alone within 1 s
    a.clock.set(START + DAY)
    sink.policy = Rules(temp_fail_next=1)
    await a.submit("x0@a.test")
    await a.deliver_until(START + DAY + 0.5)
    calls = a.shared.calls
    assert a.shared.pending(IP, "prova") == 1
    a.clock.advance(1.0)
    assert a.shared._flusher is not None
    await a.shared._flusher
    assert a.shared.calls == calls + 1 and a.shared.pending(IP, "prova") == 0


async def _until(condition: Any, timeout: float = 5.0) -> bool:
    """Poll (real time: pub/sub is real I/O) until `condition()` or `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition() and loop.time() < deadline:
        await asyncio.sleep(0.02)
    return bool(condition())


async def test_a_backoff_pause_and_a_reputation_freeze_on_one_node_hold_on_the_other(
        nodes: tuple[Node, Node], sink: Sink) -> None:
    a, b = nodes
    for node in nodes:
        await node.parts.cluster.start()
        await asyncio.wait_for(node.parts.cluster.flags.ready.wait(), 10)
    sink.policy = Rules(temp_fail_next=1, temp_fail_reply=(
        "421 4.7.28 Our system has detected an unusual rate of unsolicited mail"))
    await a.submit("u0@a.test")
    await a.deliver_until(START + 10)
    assert a.shaped.gate.state(IP).providers["prova"].paused_until > START

    def paused_on_b() -> bool:
        pc = b.shaped.gate.state(IP).providers.get("prova")
        return pc is not None and pc.paused_until >= START + 3600

    loop = asyncio.get_running_loop()
    t = loop.time()
    assert await _until(paused_on_b)
    assert loop.time() - t < 5.0  # bound generous for a loaded machine; typically ms
    assert b.shaped.gate.state(IP).providers["prova"].freeze_day == b.shaped.gate.days.day_of(
        START)
    calls = b.shared.calls
    await b.submit("v0@a.test")
    await b.deliver_until(START + 20)
    assert sink.message_count == 0 and b.delayed() == 1
    assert b.shared.calls == calls  # held by b's own gate, no round trip

    # a reputation freeze (bounce rate) learned on node b reaches node a
    grant = gate.Grant(IP, "mta10.relay.test", "dedicated", "provb", 210)
    b.shaped.gate._record(IP, "provb", 210, b.clock.now())
    b.shaped.gate.settle(grant, [("delivered", "250 ok")] * 190
                         + [("bounced", "550 5.1.1 no such user")] * 20, b.clock.now())
    assert b.shaped.gate.state(IP).frozen
    b.shaped.publish()
    assert await _until(lambda: a.shaped.gate.state(IP).frozen)
    assert "bounce rate" in a.shaped.gate.state(IP).frozen_reason


async def test_redis_down_a_node_sends_its_local_share_and_reconciles_when_it_returns(
        nodes: tuple[Node, Node], sink: Sink, redis_server: RedisServer) -> None:
    a, b = nodes
    for node in nodes:  # both heartbeats: two live nodes
        await node.parts.cluster.heartbeat.once()
    await a.parts.cluster.heartbeat.live()
    assert a.parts.cluster.heartbeat.live_count == 2
    await b.submit("u0@a.test")
    await b.deliver_until(START + 10)
    assert sink.message_count == 1
    redis_server.stop()
    # (3 - 1 counted) // 2 live nodes = 1 for node a while Redis is away, no more
    await a.submit("v0@a.test", "v1@a.test", "v2@a.test")
    await a.deliver_until(START + 20)
    assert sink.message_count == 2 and a.delayed() == 2
    assert not a.events_of("Bounce")
    # Redis back (empty: no persistence here): node a's count goes in once, before it
    # takes more, so node b's next take sees it
    redis_server.start()
    a.clock.advance(2.0)
    await a.submit("w0@a.test")
    await a.deliver_until(START + 30)
    assert await a.shared.state(IP) == await b.shared.state(IP)
    state = await a.shared.state(IP)
    assert state["providers"]["prova"]["sent"] == 2  # the local 1, and w0's 1
    assert await a.shared.reconcile() == 0
