"""A tenant's daily quota counted in Redis: two nodes (two account gates, each with its own
spool, sharing one real redis-server) taking recipients in turn accept exactly the quota,
then answer SES's 454; a released recipient (RSET) makes room again once; the send rate
holds across nodes; without a shared quota the gate keeps its local book."""

from __future__ import annotations

from relay.clock import FakeClock
from relay.cluster.client import ClusterClient
from relay.cluster.limits import SharedLimits
from relay.cluster.quota import SharedQuota
from relay.config import Tenants
from relay.config.cluster import Cluster
from relay.tenants.account import AccountGate, Transaction
from relay.tenants.quota import QuotaBook
from relay.tenants.refusals import DAILY_QUOTA_EXCEEDED, RATE_EXCEEDED
from relay.tenants.store import TenantStore
from relay.testing.factories import Stores
from relay.testing.redisserver import RedisServer


async def _gates(redis_server: RedisServer, make_store: Stores, clock: FakeClock,
                 defaults: Tenants) -> tuple[list[AccountGate], list[ClusterClient]]:
    gates, clients = [], []
    for name in ("node-a", "node-b"):
        client = ClusterClient(Cluster(redis_url=redis_server.url, node_id=name), clock)
        store = await make_store(clock, name=name)
        quota = SharedQuota(SharedLimits(client, clock, lambda: 2))
        gates.append(AccountGate(
            TenantStore(store, clock), QuotaBook(), store, credential=lambda n: None,
            defaults=lambda: defaults, verified=lambda t, i: True,
            is_simulator=lambda a: a.endswith("@simulator.amazonses.com"),
            now=clock.now, shared=quota))
        clients.append(client)
    return gates, clients


async def test_a_daily_quota_of_100_alternating_between_nodes_accepts_exactly_100(
        redis_server: RedisServer, make_store: Stores) -> None:
    clock = FakeClock()
    gates, clients = await _gates(redis_server, make_store, clock, Tenants(max_24h_send=100))
    try:
        accepted, refused = 0, []
        for i in range(130):
            gate = gates[i % 2]
            txn = gate.begin(None)
            assert isinstance(txn, Transaction)
            refusal = await gate.recipient_shared(txn, f"user{i}@example.com")
            if refusal is None:
                gate.accepted(txn)
                accepted += 1
            else:
                refused.append(refusal)
            clock.advance(1)
        assert accepted == 100
        assert refused == [DAILY_QUOTA_EXCEEDED] * 30
        assert (DAILY_QUOTA_EXCEEDED.code, DAILY_QUOTA_EXCEEDED.enhanced) == (454, "4.7.0")
        # the mailbox simulator does not count toward the daily quota (as SES)
        txn = gates[1].begin(None)
        assert isinstance(txn, Transaction)
        assert await gates[1].recipient_shared(txn, "success@simulator.amazonses.com") is None

        # a reservation given back (RSET) makes room once, on the other node
        clock.advance(86400 - 130 + 1)  # the first second's recipient leaves the window
        txn = gates[0].begin(None)
        assert isinstance(txn, Transaction)
        assert await gates[0].recipient_shared(txn, "late@example.com") is None
        other = gates[1].begin(None)
        assert isinstance(other, Transaction)
        assert await gates[1].recipient_shared(other, "x@example.com") == DAILY_QUOTA_EXCEEDED
        txn.release()
        txn.release()
        assert gates[0].shared is not None
        await gates[0].shared.drain()  # type: ignore[attr-defined]
        assert await gates[1].recipient_shared(other, "x@example.com") is None
        assert await gates[1].recipient_shared(other, "y@example.com") == DAILY_QUOTA_EXCEEDED
    finally:
        for c in clients:
            await c.close()


async def test_the_send_rate_holds_across_nodes(redis_server: RedisServer,
                                                make_store: Stores) -> None:
    clock = FakeClock()
    gates, clients = await _gates(redis_server, make_store, clock, Tenants(max_send_rate=3))
    try:
        answers = []
        for i in range(8):
            txn = gates[i % 2].begin(None)
            assert isinstance(txn, Transaction)
            answers.append(await gates[i % 2].recipient_shared(txn, f"u{i}@example.com"))
        assert answers.count(None) == 3
        assert answers[3:] == [RATE_EXCEEDED] * 5
        clock.advance(1.0)  # a count leaves once its whole 100 ms bucket is a second old
        txn = gates[1].begin(None)
        assert isinstance(txn, Transaction)
        assert await gates[1].recipient_shared(txn, "early@example.com") == RATE_EXCEEDED
        clock.advance(0.1)
        txn = gates[1].begin(None)
        assert isinstance(txn, Transaction)
        assert await gates[1].recipient_shared(txn, "later@example.com") is None
    finally:
        for c in clients:
            await c.close()
