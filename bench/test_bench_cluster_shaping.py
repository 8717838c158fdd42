"""What provider/site shaping costs with [cluster] (relay/cluster/shaping.py) against the
node-local throttle, on a real redis-server on loopback (same machine):

- `test_site_rates_*`: one transaction's site decision: the node's SiteThrottle
  (allowed + take, pure) against SharedShaping.take (one script call: SITE_TAKE);
- `test_lease_per_connection`: what a new connection to a provider's site adds: one
  acquire and one release (two script calls);
- `test_renew_all_leases`: one renewal call for 100 leases over 4 sites.

    PYTHONPATH=. .venv/bin/pytest bench/test_bench_cluster_shaping.py --benchmark-enable \\
        --benchmark-only --benchmark-columns=min,median
"""

from __future__ import annotations

import asyncio
from typing import Any

from relay.clock import SystemClock
from relay.config import Duration
from relay.config.cluster import Cluster
from relay.testing.redisserver import RedisServer
from relay.warmup.providers import SiteLimits
from relay.warmup.shaping import SiteThrottle

LIMITS = SiteLimits(messages_per_second=1e9, messages_per_hour=10**12)
ROUNDS = 100


class _Node:
    def __init__(self, url: str) -> None:
        from relay.cluster.client import ClusterClient
        from relay.cluster.limits import SharedLimits
        from relay.cluster.shaping import SharedShaping

        clock = SystemClock()
        self.client = ClusterClient(Cluster(redis_url=url, node_id="bench",
                                            command_timeout=Duration(2)), clock)
        self.shaping = SharedShaping(self.client, clock, SharedLimits(self.client, clock,
                                                                       lambda: 1))


def test_site_rates_local_throttle(benchmark: Any) -> None:
    throttle = SiteThrottle()
    clock = SystemClock()

    def run() -> int:
        n = 0
        for _ in range(ROUNDS):
            now = clock.now()
            got = throttle.allowed("gmail", LIMITS, now, 1)
            throttle.take("gmail", LIMITS, now, got)
            n += got
        return n

    assert benchmark(run) == ROUNDS
    benchmark.extra_info["transactions_per_round"] = ROUNDS


def test_site_rates_in_redis(benchmark: Any, redis_server: RedisServer,
                             loop: asyncio.AbstractEventLoop) -> None:
    node = _Node(redis_server.url)

    async def rounds() -> int:
        n = 0
        for _ in range(ROUNDS):
            n += (await node.shaping.take("gmail", LIMITS, 1)).granted
        return n

    loop.run_until_complete(node.shaping.take("gmail", LIMITS, 1))  # the script loaded
    assert benchmark(lambda: loop.run_until_complete(rounds())) == ROUNDS
    benchmark.extra_info["transactions_per_round"] = ROUNDS
    loop.run_until_complete(node.client.close())


def test_lease_per_connection(benchmark: Any, redis_server: RedisServer,
                              loop: asyncio.AbstractEventLoop) -> None:
    node = _Node(redis_server.url)

    async def rounds() -> int:
        n = 0
        for _ in range(ROUNDS):
            lease = await node.shaping.acquire("gmail", 10)
            assert lease is not None
            node.shaping.release(lease)
            await node.shaping.drain()   # the release's call, not taken over
            n += 1
        return n

    assert benchmark(lambda: loop.run_until_complete(rounds())) == ROUNDS
    benchmark.extra_info["connections_per_round"] = ROUNDS
    loop.run_until_complete(node.client.close())


def test_renew_all_leases(benchmark: Any, redis_server: RedisServer,
                          loop: asyncio.AbstractEventLoop) -> None:
    node = _Node(redis_server.url)

    async def take_leases() -> None:
        for i in range(100):
            assert await node.shaping.acquire(f"site{i % 4}", 100) is not None

    loop.run_until_complete(take_leases())
    assert benchmark(lambda: loop.run_until_complete(node.shaping.renew())) == 0
    benchmark.extra_info["leases"] = 100
    loop.run_until_complete(node.client.close())
