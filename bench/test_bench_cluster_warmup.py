"""What [cluster] adds to a delivery transaction's warm-up decision: the real ShapedSender's
gate (relay/warmup/gate.py) alone, against the gate plus the shared count in a real
redis-server on loopback (relay/cluster/warmup.py through ShapedSender._take_shared: one
script call, the answer adopted by the gate), then the settle of a delivered recipient.
No SMTP: the figure is the decision's cost, which the transaction adds to its SMTP time.
Each round is ROUNDS transactions of one recipient from a warming IP to one provider; the
Redis round trips per transaction are counted (SharedWarmup.calls) and asserted.

`test_bench_warmup_and_site_*`: the same toward a provider site with rates (messages per
second and per hour, relay/cluster/shaping.py): the site's SITE_TAKE then the warm-up's
TAKE (two round trips, as the shaper did before they shared one script) against
ShapedSender._take_shared with the site (TAKE_SITE: one), counted by ClusterClient.calls.

    PYTHONPATH=. .venv/bin/pytest bench/test_bench_cluster_warmup.py --benchmark-enable \\
        --benchmark-only --benchmark-columns=min,median
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from relay.clock import FakeClock
from relay.cluster.client import ClusterClient
from relay.cluster.limits import SharedLimits
from relay.cluster.shaping import SharedShaping
from relay.cluster.warmup import SharedWarmup
from relay.config import Config, from_dict
from relay.config.cluster import Cluster
from relay.delivery.shaper import ShapedSender
from relay.queue.store import QueueStore
from relay.testing.redisserver import RedisServer
from relay.warmup import gate
from relay.warmup.providers import Site, SiteLimits

ROUNDS = 200
SITE = Site("gmail", "gmail", SiteLimits(messages_per_second=1e9, messages_per_hour=10**12))
T0 = 1_790_035_200.0 + 9 * 3600
IP = "192.0.2.10"


def _config(tmp: Path) -> Config:
    return from_dict({
        "server": {"hostname": "relay.test", "state_dir": str(tmp / "state")},
        "delivery": {"pool": "dedicated"},
        "warmup_plan": [{"name": "big", "caps": [10**9]}],
        "pool": [{"name": "dedicated", "warmup_plan": "big", "warmup_start": "2026-01-01",
                  "ips": [IP]}],
    })


async def _shaper(tmp: Path, clock: FakeClock) -> tuple[ShapedSender, QueueStore]:
    cfg = _config(tmp)
    store = QueueStore(cfg.state_path / "queue", clock)
    await store.start()
    return ShapedSender(cfg, None, store, clock), store  # type: ignore[arg-type]


async def _transactions(sh: ShapedSender, clock: FakeClock, shared: bool) -> None:
    for _ in range(ROUNDS):
        now = clock.now()
        decision = sh.gate.acquire("dedicated", "gmail", 1, now)
        grants: list[Any] = list(decision.grants)
        if shared:
            calls = sh.shared.calls
            taken, _, _, _ = await sh._take_shared("dedicated", "gmail", gate.BULK, decision, now)
            grants = [g for g, _ in taken]
            assert sh.shared.calls == calls + 1  # one Redis round trip per transaction
        assert [g.count for g in grants] == [1]
        sh.gate.settle(grants[0], [("delivered", "250 ok")], now)
        clock.advance(0.01)


def test_bench_warmup_decision_local(benchmark: Any, loop: asyncio.AbstractEventLoop,
                                     tmp_path: Path) -> None:
    clock = FakeClock(T0)
    sh, store = loop.run_until_complete(_shaper(tmp_path, clock))
    try:
        benchmark(lambda: loop.run_until_complete(_transactions(sh, clock, False)))
    finally:
        loop.run_until_complete(store.close())


def test_bench_warmup_decision_cluster(benchmark: Any, loop: asyncio.AbstractEventLoop,
                                       tmp_path: Path, redis_server: RedisServer) -> None:
    clock = FakeClock(T0)
    sh, store = loop.run_until_complete(_shaper(tmp_path, clock))
    client = ClusterClient(Cluster(redis_url=redis_server.url, node_id="bench"), clock)
    shared = SharedWarmup(client, clock, lambda: 1)
    sh.attach_shared(shared)
    try:
        benchmark(lambda: loop.run_until_complete(_transactions(sh, clock, True)))
        benchmark.extra_info["redis_calls"] = shared.calls
    finally:
        loop.run_until_complete(client.close())
        loop.run_until_complete(store.close())


def _cluster(sh: ShapedSender, url: str, clock: FakeClock) -> ClusterClient:
    client = ClusterClient(Cluster(redis_url=url, node_id="bench"), clock)
    sh.attach_shared(SharedWarmup(client, clock, lambda: 1))
    sh.share_sites(SharedShaping(client, clock, SharedLimits(client, clock, lambda: 1)))
    return client


async def _site_transactions(sh: ShapedSender, client: ClusterClient, clock: FakeClock,
                             one_call: bool) -> None:
    for _ in range(ROUNDS):
        now = clock.now()
        calls = client.calls
        decision = sh.gate.acquire("dedicated", "gmail", 1, now)
        if one_call:
            taken, _, _, site = await sh._take_shared("dedicated", "gmail", gate.BULK,
                                                      decision, now, SITE)
            assert site is not None and site.granted == 1
        else:
            assert sh.rates is not None
            site = await sh.rates.take(SITE.key, SITE.limits, 1)
            assert site.granted == 1
            taken, _, _, _ = await sh._take_shared("dedicated", "gmail", gate.BULK,
                                                   decision, now)
        assert client.calls == calls + (1 if one_call else 2)
        grants = [g for g, _ in taken]
        assert [g.count for g in grants] == [1]
        sh.gate.settle(grants[0], [("delivered", "250 ok")], now)
        clock.advance(0.01)


@pytest.mark.parametrize("one_call", [False, True], ids=["two_calls", "one_call"])
def test_bench_warmup_and_site(benchmark: Any, loop: asyncio.AbstractEventLoop,
                               tmp_path: Path, redis_server: RedisServer,
                               one_call: bool) -> None:
    clock = FakeClock(T0)
    sh, store = loop.run_until_complete(_shaper(tmp_path, clock))
    client = _cluster(sh, redis_server.url, clock)
    try:
        loop.run_until_complete(_site_transactions(sh, client, clock, one_call))  # loaded
        benchmark(lambda: loop.run_until_complete(
            _site_transactions(sh, client, clock, one_call)))
        benchmark.extra_info["transactions_per_round"] = ROUNDS
    finally:
        loop.run_until_complete(client.close())
        loop.run_until_complete(store.close())
