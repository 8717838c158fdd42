"""Warm-up counted in Redis (relay/cluster/warmup.py) on a real redis-server: a warming IP's
cap holds exactly across connections under concurrency, the day is the gate's DayClock
day (a non-zero boundary), the plan day advances only for days that count, refunds go
back with the next call, operator changes and restrictions reach every node by pub/sub,
and while Redis is down a node takes its local share and reconciles once."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay.clock import FakeClock
from relay.cluster.client import ClusterClient, ClusterUnavailable
from relay.cluster.flags import SharedFlags
from relay.cluster.warmup import Ask, SharedWarmup
from relay.config.cluster import Cluster
from relay.testing.redisserver import RedisServer
from relay.warmup import counters
from relay.warmup.counters import DayClock, IpState

IP, GMAIL = "192.0.2.10", "gmail"
HOUR = 3600.0


class Node:
    def __init__(self, server: RedisServer, name: str, clock: FakeClock,
                 live: int = 2) -> None:
        self.client = ClusterClient(Cluster(redis_url=server.url, node_id=name), clock)
        self.flags = SharedFlags(self.client, clock)
        self.warmup = SharedWarmup(self.client, clock, lambda: live, self.flags)


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[tuple[Node, Node, FakeClock]]:
    clock = FakeClock(1_790_035_200.0 + 9 * HOUR)
    a, b = Node(redis_server, "node-a", clock), Node(redis_server, "node-b", clock)
    yield a, b, clock
    for n in (a, b):
        await n.flags.stop()
        await n.client.close()


def ask(n: int, caps: tuple[int, ...], ip: str = IP, provider: str = GMAIL) -> Ask:
    return Ask(ip, provider, n, caps, caps[0])


async def take(node: Node, n: int, caps: tuple[int, ...], now: float,
               days: DayClock | None = None, *, paced: bool = False,
               provider: str = GMAIL) -> Any:
    days = days or DayClock()
    (answer,) = await node.warmup.take([ask(n, caps, provider=provider)], days.day_of(now),
                                       days.hour_of(now), paced=paced, burst=1.0)
    return answer


async def test_the_cap_is_exact_under_concurrency_over_two_connections(
        nodes: tuple[Node, Node, FakeClock]) -> None:
    a, b, clock = nodes
    rng = random.Random(7)
    asks = [(a if i % 2 else b, rng.randint(1, 4)) for i in range(300)]
    answers = await asyncio.gather(*(take(node, n, (500,), clock.now())
                                     for node, n in asks))
    assert sum(x.granted for x in answers) == 500
    assert max(x.counter.sent for x in answers) == 500
    # hourly pacing: a cap of 240 at burst 1 allows 10 an hour, exactly, across both
    other = await asyncio.gather(*(take(node, 1, (240,), clock.now(), paced=True,
                                        provider="yahoo") for node, _ in asks[:60]))
    assert sum(x.granted for x in other) == 10
    clock.advance(HOUR)
    assert (await take(a, 30, (240,), clock.now(), paced=True, provider="yahoo")).granted == 10


async def test_the_day_is_the_gates_day_with_a_non_zero_boundary(
        nodes: tuple[Node, Node, FakeClock]) -> None:
    a, b, _ = nodes
    days = DayClock(boundary=6 * HOUR)  # days start at 06:00 UTC
    start = 1_790_035_200.0 + 22 * HOUR  # 22:00 UTC
    assert (await take(a, 5, (3, 7), start, days)).granted == 3
    # 00:00 UTC: an epoch-aligned window would start again here; the gate's day has not
    midnight = start + 2 * HOUR
    assert days.day_of(midnight) == days.day_of(start)
    assert (await take(b, 5, (3, 7), midnight, days)).granted == 0
    assert (await take(b, 5, (3, 7), start + 8 * HOUR - 1, days)).granted == 0
    # 06:00 UTC: day 2 of the plan (yesterday was sent to), on either node
    answer = await take(b, 9, (3, 7), start + 8 * HOUR, days)
    assert answer.granted == 7 and answer.counter.advanced == 1


async def test_plan_day_advances_only_for_days_that_count(
        nodes: tuple[Node, Node, FakeClock]) -> None:
    a, b, clock = nodes
    caps = (2, 4, 6, 8, 10)
    days = DayClock()
    now = clock.now()
    today = days.day_of(now)
    # day 1: sent to -> counts
    assert (await take(a, 9, caps, now)).granted == 2
    # day 2: a backoff froze the day on node b (sent to, yet it does not count)
    now += 86400
    assert (await take(b, 9, caps, now)).granted == 4
    await b.warmup.restrict(IP, today + 1, False, "", [(GMAIL, 0.0, "", True)])
    # day 3: nothing sent -> does not count
    now += 86400
    # day 4: plan day 2 still (only day 1 counted)
    now += 86400
    answer = await take(a, 9, caps, now)
    assert (answer.granted, answer.counter.advanced) == (4, 1)
    # an operator freeze on day 4 (node a): days 4 and 5, frozen, do not count
    state = await a.warmup.operate(IP, "freeze", "by the operator", today + 3)
    assert state["frozen"] is True
    now += 86400
    assert (await take(b, 9, caps, now)).granted == 4  # still plan day 2, while frozen
    await b.warmup.operate(IP, "resume", "", today + 5)  # day 6, on node b
    now += 86400
    assert (await take(a, 99, caps, now)).granted == 4  # still plan day 2
    now += 86400
    assert (await take(a, 99, caps, now)).granted == 6  # day 6 counted: plan day 3


async def test_set_day_holds_for_every_provider_and_reaches_the_other_node(
        nodes: tuple[Node, Node, FakeClock]) -> None:
    a, b, clock = nodes
    caps = (2, 4, 6, 8)
    seen: list[dict[str, Any]] = []
    got = asyncio.Event()

    def listener(state: dict[str, Any]) -> None:
        seen.append(state)
        got.set()

    b.warmup.watch([IP], listener)
    b.flags.start()
    await asyncio.wait_for(b.flags.ready.wait(), 10)
    seen.clear()
    got.clear()
    assert (await take(a, 1, caps, clock.now())).granted == 1
    today = DayClock().day_of(clock.now())
    await a.warmup.operate(IP, "set", "3", today)
    # pub/sub: well within a second on loopback. (The state node b reads when its
    # subscription starts may reach the listener after the change: wait for the change.)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not any(x["base"] == 2 for x in seen) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    changed = [x for x in seen if x["base"] == 2]
    assert changed and changed[-1]["providers"][GMAIL]["adv"] == 2
    assert (await take(b, 99, caps, clock.now())).granted == 5  # 6 on day 3, 1 sent
    assert (await take(b, 99, caps, clock.now(), provider="yahoo")).granted == 6
    # a restriction learned on node a (a reputation freeze, a backoff pause) reaches b
    got.clear()
    until = clock.now() + HOUR
    await a.warmup.restrict(IP, today, True, "bounce rate 9.0%", [(GMAIL, until, "421", False)])
    await asyncio.wait_for(got.wait(), 5)
    assert seen[-1]["frozen"] is True and seen[-1]["providers"][GMAIL]["pu"] == until
    assert (await take(b, 1, caps, clock.now())).granted == 0  # paused in Redis too


async def test_a_refund_goes_with_the_next_call_or_alone_within_a_second(
        nodes: tuple[Node, Node, FakeClock]) -> None:
    a, b, clock = nodes
    days = DayClock()
    now = clock.now()
    assert (await take(a, 10, (10,), now)).granted == 10
    a.warmup.refund(IP, GMAIL, 3, days.day_of(now), days.hour_of(now), True)
    calls = a.warmup.calls
    answer = await take(a, 5, (10,), now)  # the refund rides on this call
    assert answer.granted == 3 and a.warmup.calls == calls + 1
    # a refund no call carries goes within a second (the clock's, not a sleep)
    a.warmup.refund(IP, GMAIL, 2, days.day_of(now), days.hour_of(now), True)
    assert (await take(b, 5, (10,), now)).granted == 0
    clock.advance(1.0)
    for _ in range(50):
        if not a.warmup.pending(IP, GMAIL):
            break
        await asyncio.sleep(0.01)
    assert (await take(b, 5, (10,), now)).granted == 2
    # a refund of another day is not taken off today's count
    a.warmup.refund(IP, GMAIL, 4, days.day_of(now) - 1, days.hour_of(now), True)
    assert (await take(a, 5, (10,), now)).granted == 0


async def test_redis_down_takes_the_local_share_and_reconciles_once(
        nodes: tuple[Node, Node, FakeClock], redis_server: RedisServer) -> None:
    a, _, clock = nodes
    days = DayClock()
    now = clock.now()
    assert (await take(a, 40, (100,), now)).granted == 40
    redis_server.stop()
    # (100 - 40 counted) // 2 live nodes = 30 for this node, no more
    local = [await take(a, 7, (100,), now) for _ in range(6)]
    assert [x.granted for x in local] == [7, 7, 7, 7, 2, 0]
    assert not any(x.shared for x in local)
    # a unit of the local share given back goes back into it
    a.warmup.refund(IP, GMAIL, 1, days.day_of(now), days.hour_of(now), False)
    assert (await take(a, 7, (100,), now)).granted == 1
    clock.advance(1.0)
    with pytest.raises(ClusterUnavailable):
        await a.warmup.reconcile()
    # Redis back (this test's keeps nothing across a restart): it then holds exactly what
    # the node counted while it was away, added once however often reconcile runs.
    redis_server.start()
    clock.advance(1.0)
    assert await a.warmup.reconcile() == 1  # one batch: sealed at the failed attempt
    assert await a.warmup.reconcile() == 0 and not len(a.warmup.ledger)
    state = await a.warmup.state(IP)
    assert state["providers"][GMAIL]["sent"] == 30
    # a batch sent again (its answer lost) adds nothing the second time
    guard = a.client.key("reconciled", "node-a:test:1")
    args = [a.client.prefix, 60_000, IP, GMAIL, 5, days.day_of(now), days.hour_of(now)]
    for added in (1, 0):
        assert await a.client.call(
            lambda r: a.warmup.scripts.add(keys=[guard], args=args)) == added
    assert (await take(a, 99, (100,), now)).granted == 65


async def test_a_node_that_starts_later_takes_the_changes_made_meanwhile(
        nodes: tuple[Node, Node, FakeClock]) -> None:
    """A restart, or a subscription lost while Redis was away: the whole state of every
    watched IP is read again when the subscription (re)starts."""
    a, b, clock = nodes
    today = DayClock().day_of(clock.now())
    await a.warmup.operate(IP, "set", "4", today)
    await a.warmup.operate(IP, "freeze", "by the operator", today)
    seen: list[dict[str, Any]] = []
    got = asyncio.Event()

    def listener(state: dict[str, Any]) -> None:
        seen.append(state)
        got.set()

    b.warmup.watch([IP], listener)
    b.flags.start()
    await asyncio.wait_for(got.wait(), 5)
    assert seen[0]["ip"] == IP and seen[0]["base"] == 3 and seen[0]["frozen"] is True


async def test_a_redis_that_lost_its_data_does_not_send_an_ip_back_to_day_1(
        nodes: tuple[Node, Node, FakeClock]) -> None:
    """Redis restarted empty (no persistence): a counter it does not have starts at the
    node's plan progress (the `advanced` of the ask), and an IP it knows nothing of keeps
    the node's freeze and base (no opinion), instead of day 1 for every IP."""
    a, b, clock = nodes
    caps = (2, 4, 6, 8)
    days = DayClock()
    now = clock.now()
    # the node's gate is on plan day 3 (2 counted days); Redis has nothing
    (answer,) = await a.warmup.take([Ask(IP, GMAIL, 9, caps, 6, 0, 2)], days.day_of(now),
                                    days.hour_of(now), paced=False, burst=1.0)
    assert answer.counter is not None
    assert (answer.granted, answer.counter.advanced) == (6, 2)  # plan day 3
    state = await b.warmup.state(IP)
    assert state["known"] is False
    st = IpState(frozen=True, frozen_reason="by the operator", base_advanced=2)
    counters.adopt_state(st, state)
    assert st.frozen and st.base_advanced == 2 and st.providers[GMAIL].advanced == 2
    # once an operator change is in Redis, its word stands
    await b.warmup.operate(IP, "resume", "", days.day_of(now))
    counters.adopt_state(st, await b.warmup.state(IP))
    assert not st.frozen
