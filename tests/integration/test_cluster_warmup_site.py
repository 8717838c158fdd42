"""A delivery transaction's warm-up caps and provider site rates in ONE script call
(relay/cluster/warmup.py's `take_site`, with relay/cluster/shaping.py's site functions)
on a real redis-server: the parts are granted in order up to what the site allows, the
site counts exactly what they were granted (nothing to give back), a warm IP's part is
limited by the site only, both limits hold exactly for two nodes under concurrency, and
while Redis is down the site's local share cuts the warm-up's, each reconciled once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from relay.clock import FakeClock
from relay.cluster.client import ClusterClient
from relay.cluster.limits import SharedLimits
from relay.cluster.shaping import SharedShaping
from relay.cluster.warmup import Answer, Ask, SharedWarmup
from relay.config.cluster import Cluster
from relay.testing.redisserver import RedisServer
from relay.warmup.counters import DayClock
from relay.warmup.providers import SiteLimits
from relay.warmup.shaping import SiteGrant

IP1, IP2, WARM, GMAIL = "192.0.2.10", "192.0.2.11", "192.0.2.99", "gmail"
HOUR = 3600.0
START = 1_790_035_200.0 + 9 * HOUR
DAYS = DayClock()


class Node:
    def __init__(self, server: RedisServer, name: str, clock: FakeClock,
                 live: int = 2) -> None:
        self.client = ClusterClient(Cluster(redis_url=server.url, node_id=name), clock)
        self.limits = SharedLimits(self.client, clock, lambda: live)
        self.shaping = SharedShaping(self.client, clock, self.limits)
        self.warmup = SharedWarmup(self.client, clock, lambda: live)
        self.clock = clock

    async def take(self, asks: list[Ask], limits: SiteLimits
                   ) -> tuple[list[Answer], SiteGrant]:
        now = self.clock.now()
        return await self.warmup.take_site(
            asks, DAYS.day_of(now), DAYS.hour_of(now), paced=False, burst=1.0,
            shaping=self.shaping, site=GMAIL, limits=limits)


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[tuple[Node, Node, FakeClock]]:
    clock = FakeClock(START)
    a, b = Node(redis_server, "node-a", clock), Node(redis_server, "node-b", clock)
    yield a, b, clock
    for n in (a, b):
        await n.client.close()


def ask(ip: str, n: int, caps: tuple[int, ...] = ()) -> Ask:
    return Ask(ip, GMAIL, n, caps, caps[0] if caps else 0)


async def test_parts_are_granted_in_order_up_to_the_site_and_the_site_counts_what_they_got(
        nodes: tuple[Node, Node, FakeClock]) -> None:
    a, b, clock = nodes
    hourly = SiteLimits(messages_per_hour=4)
    calls = a.client.calls
    answers, site = await a.take([ask(IP1, 3, (2,)), ask(IP2, 3, (5,))], hourly)
    assert a.client.calls - calls == 1
    # IP1's cap allows 2 of 3; IP2's 3, the site's hour only 4 - 2 = 2 of them
    assert [(x.granted, x.allowed) for x in answers] == [(2, 2), (2, 3)]
    assert answers[1].counter is not None and answers[1].counter.sent == 2
    assert (site.granted, site.limited, site.shared) == (4, True, True)
    # a warm IP's part (no caps): the site only, whose hour is spent
    answers, site = await b.take([ask(WARM, 5)], hourly)
    assert [(x.granted, x.counter) for x in answers] == [(0, None)]
    assert site.next_at == START + HOUR and site.limited
    clock.advance(60)
    answers, site = await b.take([ask(WARM, 5)], SiteLimits(messages_per_hour=7))
    assert [(x.granted, x.allowed) for x in answers] == [(3, 5)]
    # the IP's cap cutting a part leaves the site's count as granted: nothing given back
    clock.set(START + HOUR)
    answers, site = await a.take([ask(IP1, 4, (2,))], hourly)
    assert answers[0].granted == 0 and (site.granted, site.limited) == (0, False)
    assert (await b.shaping.take(GMAIL, hourly, 10)).granted == 4
    # the per-second bucket as the site's take has it: 2 a second, one second deep
    fast = SiteLimits(messages_per_second=2.0)
    answers, site = await a.take([ask(IP2, 5, (50,))], fast)
    assert answers[0].granted == 2 and site.next_at == pytest.approx(clock.now() + 0.5)
    state = await a.warmup.state(IP2)
    assert state["providers"][GMAIL]["sent"] == 2 + 2   # not 2 + 5: the site cut 3


async def test_both_limits_hold_exactly_for_two_nodes_under_concurrency(
        nodes: tuple[Node, Node, FakeClock]) -> None:
    a, b, _ = nodes
    hourly = SiteLimits(messages_per_hour=40)
    results = await asyncio.gather(*[
        (a if i % 2 else b).take([ask(IP1, 2, (25,)), ask(WARM, 1)], hourly)
        for i in range(60)])
    warm = sum(answers[1].granted for answers, _ in results)
    capped = sum(answers[0].granted for answers, _ in results)
    assert capped == 25
    assert capped + warm == 40 == sum(site.granted for _, site in results)
    assert (await a.warmup.state(IP1))["providers"][GMAIL]["sent"] == 25
    assert (await a.shaping.take(GMAIL, hourly, 1)).granted == 0


async def test_redis_down_the_sites_share_cuts_the_warm_ups_and_each_reconciles_once(
        nodes: tuple[Node, Node, FakeClock], redis_server: RedisServer) -> None:
    a, _, clock = nodes
    hourly = SiteLimits(messages_per_hour=8)
    answers, site = await a.take([ask(IP1, 2, (20,))], hourly)
    assert answers[0].granted == 2 and site.granted == 2
    redis_server.stop()
    # 2 live nodes: the IP's share (20 - 2) // 2 = 9, the site's hour (8 - 2) // 2 = 3
    answers, site = await a.take([ask(IP1, 5, (20,)), ask(WARM, 5)], hourly)
    assert [(x.granted, x.shared) for x in answers] == [(3, False), (0, False)]
    assert (site.granted, site.shared, site.limited) == (3, False, True)
    assert site.next_at == START + HOUR
    # the 2 the site cut went back into the IP's share: 9 - 3 = 6 left for it
    day = DAYS.day_of(clock.now())
    assert a.warmup.ledger.used(f"{IP1}|{GMAIL}|{day}") == 3
    redis_server.start()
    clock.advance(2.0)   # past the client's fail-fast second
    assert await a.warmup.reconcile() == 1
    assert await a.limits.reconcile() == 1
    # this Redis restarted empty (no persistence): what it has is what was counted while
    # it was away, once
    assert (await a.warmup.state(IP1))["providers"][GMAIL]["sent"] == 3
    assert (await a.shaping.take(GMAIL, hourly, 10)).granted == 8 - 3
    assert await a.warmup.reconcile() == 0 and await a.limits.reconcile() == 0
