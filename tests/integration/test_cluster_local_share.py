"""The quota's local share while Redis is unreachable (a real redis-server, killed), on an
injected clock: a per-second rate's share is per second (not once for the whole outage);
a recipient given back (RSET) during the outage returns to the share and is not added to
Redis later; a node adds what it owes before it takes more once Redis is back, in a few
pipelined round trips, once however many recipients ask at the same time."""

from __future__ import annotations

import asyncio

from relay.clock import FakeClock
from relay.cluster.client import ClusterClient
from relay.cluster.limits import RECONCILE_CHUNK, SharedLimits
from relay.cluster.quota import SharedQuota
from relay.config.cluster import Cluster
from relay.tenants.quota import Cap, Limits
from relay.tenants.refusals import DAILY_QUOTA_EXCEEDED, RATE_EXCEEDED
from relay.testing.redisserver import RedisServer


def _quota(server: RedisServer, clock: FakeClock, live: int = 2) -> SharedQuota:
    client = ClusterClient(Cluster(redis_url=server.url, node_id="node-a"), clock)
    return SharedQuota(SharedLimits(client, clock, lambda: live))


async def test_a_rate_share_is_per_second_during_an_outage(redis_server: RedisServer) -> None:
    """4 a second over 2 live nodes: 2 a second for this node, each second of the gap."""
    clock = FakeClock()
    quota = _quota(redis_server, clock)
    limits = Limits(Cap(max_send_rate=4))
    try:
        assert not isinstance(await quota.reserve("acme", "", limits), type(RATE_EXCEEDED))
        redis_server.stop()
        clock.advance(5)
        per_second = []
        for _ in range(4):
            got = [await quota.reserve("acme", "", limits) for _ in range(5)]
            per_second.append(sum(1 for g in got if g is not RATE_EXCEEDED))
            clock.advance(1.1)  # a count leaves once its whole 100 ms bucket is 1 s old
        assert per_second == [2, 2, 2, 2]
    finally:
        await quota.limits.client.close()


async def test_a_recipient_given_back_during_an_outage_returns_to_the_share(
        redis_server: RedisServer) -> None:
    clock = FakeClock()
    quota = _quota(redis_server, clock)
    limits = Limits(Cap(max_24h_send=10))
    try:
        first = await quota.reserve("acme", "", limits)
        assert not isinstance(first, type(DAILY_QUOTA_EXCEEDED))
        first.commit()
        redis_server.stop()
        clock.advance(2)
        # (10 - 1) // 2 = 4 for this node
        held = [await quota.reserve("acme", "", limits) for _ in range(4)]
        assert await quota.reserve("acme", "", limits) == DAILY_QUOTA_EXCEEDED
        for r in held[:3]:  # RSET: three given back, one accepted
            assert not isinstance(r, type(DAILY_QUOTA_EXCEEDED))
            r.release()
        await quota.drain()
        assert not isinstance(held[3], type(DAILY_QUOTA_EXCEEDED))
        held[3].commit()
        again = [await quota.reserve("acme", "", limits) for _ in range(4)]
        assert sum(1 for r in again if r != DAILY_QUOTA_EXCEEDED) == 3
        for r in again:
            if r != DAILY_QUOTA_EXCEEDED:
                r.commit()  # type: ignore[union-attr]

        # Redis back (empty: no persistence): the next reservation adds the 4 accepted
        # during the gap first, and only those (the 3 given back are not owed)
        redis_server.start()
        clock.advance(2)
        assert not isinstance(await quota.reserve("acme", "", limits), type(DAILY_QUOTA_EXCEEDED))
        assert await quota.sent_last_24h("acme") == (5, True)
    finally:
        await quota.limits.client.close()


async def test_a_long_outage_is_reconciled_in_a_few_round_trips_once(
        redis_server: RedisServer) -> None:
    """1,200 recipients a second apart while Redis is away (1,200 buckets owed): when it
    is back, 20 recipients at once find one reconciliation running and wait for it; it
    sends the buckets 500 per pipelined round trip."""
    clock = FakeClock()
    quota = _quota(redis_server, clock, live=1)
    limits = Limits(Cap(max_24h_send=100_000))
    client = quota.limits.client
    try:
        assert not isinstance(await quota.reserve("acme", "", limits), type(RATE_EXCEEDED))
        redis_server.stop()
        for _ in range(1200):
            clock.advance(1)
            got = await quota.reserve("acme", "", limits)
            assert got != DAILY_QUOTA_EXCEEDED
        redis_server.start()
        clock.advance(2)
        calls = client.calls
        got_all = await asyncio.gather(*[quota.reserve("acme", "", limits) for _ in range(20)])
        assert all(g != DAILY_QUOTA_EXCEEDED and all(r.shared for r in g.held)  # type: ignore[union-attr]
                   for g in got_all)
        assert client.calls - calls == -(-1200 // RECONCILE_CHUNK) + 20
        assert await quota.sent_last_24h("acme") == (1220, True)  # 1 before was lost
    finally:
        await client.close()
