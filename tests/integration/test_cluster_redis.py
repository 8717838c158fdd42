"""The shared limits of a cluster against a real redis-server: the scripts under
concurrency (many tasks, two connections as two nodes), the sliding window at its edge on
an injected clock, leases of a node that stops renewing, pub/sub pause between nodes,
Redis killed and restarted (local share, metric, reconciliation), and the heartbeat."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from relay.clock import FakeClock, SystemClock
from relay.cluster.client import ClusterClient, ClusterCollector, ClusterUnavailable
from relay.cluster.flags import SharedFlags
from relay.cluster.limits import SharedLimits
from relay.cluster.nodes import Heartbeat
from relay.cluster.status import cluster_status
from relay.config.cluster import Cluster
from relay.testing.redisserver import RedisServer


def _cfg(server: RedisServer, node: str) -> Cluster:
    # 2 s: 400 concurrent script calls on a loaded 2-core machine must not time out (a
    # stopped Redis refuses connections at once, so the outage tests do not wait on it).
    return Cluster(redis_url=server.url, node_id=node, command_timeout=2.0,  # type: ignore[arg-type]
                   connect_timeout=0.5)  # type: ignore[arg-type]


class Node:
    """One node's client, limits, flags and heartbeat on one connection pool."""

    def __init__(self, server: RedisServer, name: str, clock: FakeClock | SystemClock) -> None:
        self.client = ClusterClient(_cfg(server, name), clock)
        self.heartbeat = Heartbeat(self.client, clock)
        self.limits = SharedLimits(self.client, clock, lambda: self.heartbeat.live_count)
        self.heartbeat.limits = self.limits
        self.flags = SharedFlags(self.client, clock)

    async def close(self) -> None:
        await self.flags.stop()
        await self.client.close()


@pytest.fixture
async def two_nodes(redis_server: RedisServer) -> AsyncIterator[tuple[Node, Node, FakeClock]]:
    clock = FakeClock()
    a, b = Node(redis_server, "node-a", clock), Node(redis_server, "node-b", clock)
    yield a, b, clock
    await a.close()
    await b.close()


async def test_fixed_window_never_grants_past_the_cap_across_nodes_and_tasks(
        two_nodes: tuple[Node, Node, FakeClock]) -> None:
    a, b, _clock = two_nodes
    grants = await asyncio.gather(*[
        (a if i % 2 else b).limits.take("warmup:192.0.2.1:gmail", 1, 150, 86400)
        for i in range(400)])
    assert sum(g.granted for g in grants) == 150
    assert all(g.shared for g in grants)
    assert max(g.count for g in grants) == 150
    # a partial take gets what is left below the cap, an all-or-nothing one nothing
    c = await a.limits.take("site:x", 7, 10, 1, partial=True)
    d = await b.limits.take("site:x", 7, 10, 1, partial=True)
    e = await b.limits.take("site:x", 1, 10, 1)
    assert (c.granted, d.granted, e.granted, d.count) == (7, 3, 0, 10)


async def test_fixed_window_starts_over_in_the_next_window(
        two_nodes: tuple[Node, Node, FakeClock]) -> None:
    a, b, clock = two_nodes
    clock._now = 1_790_000_000 // 3600 * 3600 + 3599.0  # the last second of an hour
    assert (await a.limits.take("shaping:hour", 5, 5, 3600)).granted == 5
    assert (await b.limits.take("shaping:hour", 1, 5, 3600)).granted == 0
    clock.advance(1.0)
    assert (await b.limits.take("shaping:hour", 1, 5, 3600)).granted == 1


async def test_sliding_window_is_exact_at_its_edge_and_holds_under_concurrency(
        two_nodes: tuple[Node, Node, FakeClock]) -> None:
    a, b, clock = two_nodes
    start = clock.now()
    got = await asyncio.gather(*[(a if i % 2 else b).limits.reserve(
        "quota:tenant:acme", 1, 100, 86400, 1) for i in range(250)])
    assert sum(1 for r in got if r is not None) == 100
    clock.advance(86399.999)  # the first reservations are still inside the 24 h
    assert await a.limits.reserve("quota:tenant:acme", 1, 100, 86400, 1) is None
    clock._now = start + 86400 + 1  # every bucket of the first second has left the window
    assert clock.now() - start > 86400
    r = await b.limits.reserve("quota:tenant:acme", 1, 100, 86400, 1)
    assert r is not None
    # released reservations make room again, once
    await b.limits.release(r)
    await b.limits.release(r)
    got = await asyncio.gather(*[a.limits.reserve("quota:tenant:acme", 1, 100, 86400, 1)
                                 for _ in range(150)])
    assert sum(1 for x in got if x is not None) == 100


async def test_leases_cap_connections_and_expire_when_a_node_stops_renewing(
        two_nodes: tuple[Node, Node, FakeClock]) -> None:
    a, b, clock = two_nodes
    got = await asyncio.gather(*[(a if i % 2 else b).limits.acquire_lease("gmail.com", 4, 30)
                                 for i in range(20)])
    held = [x for x in got if x is not None]
    assert len(held) == 4
    b_leases = [x for x in held if x.startswith("node-b:")]
    a_leases = [x for x in held if x.startswith("node-a:")]
    clock.advance(20)
    for lease in b_leases:  # node b renews; node a has "died"
        assert await b.limits.renew_lease("gmail.com", lease, 30)
    assert await b.limits.acquire_lease("gmail.com", 4, 30) is None
    clock.advance(15)  # a's leases are 35 s old: expired; b's renewed ones are 15 s old
    for lease in a_leases:
        assert not await a.limits.renew_lease("gmail.com", lease, 30)
    fresh = [await b.limits.acquire_lease("gmail.com", 4, 30) for _ in range(len(a_leases) + 1)]
    assert sum(1 for x in fresh if x is not None) == len(a_leases)
    status = await cluster_status(b.client, clock)
    assert {x["node"] for x in status["leases"]} == {"node-b"}
    assert len(status["leases"]) == 4
    await b.limits.release_lease("gmail.com", b_leases[0] if b_leases else fresh[0] or "")
    assert await a.limits.acquire_lease("gmail.com", 4, 30) is not None


async def test_a_pause_on_one_node_reaches_the_other_within_a_second(
        redis_server: RedisServer) -> None:
    clock = SystemClock()
    a, b = Node(redis_server, "node-a", clock), Node(redis_server, "node-b", clock)
    try:
        a.flags.start()
        b.flags.start()
        await asyncio.wait_for(asyncio.gather(a.flags.ready.wait(), b.flags.ready.wait()), 5)
        seen = asyncio.Event()
        b.flags.on_change(lambda kind, name, value, node: seen.set()
                          if (kind, name, value) == ("tenant", "acme", "paused") else None)
        await a.flags.set("tenant", "acme", "paused")
        await asyncio.wait_for(seen.wait(), 1.0)
        assert b.flags.get("tenant", "acme") == "paused"
        # the suppression list: b caches "not suppressed", a's add invalidates it
        assert await b.flags.suppressed("User@Example.com") is None
        gone = asyncio.Event()
        b.flags.on_change(
            lambda kind, name, value, node: gone.set() if kind == "suppression" else None)
        await a.flags.set("suppression", "user@example.com", "BOUNCE")
        await asyncio.wait_for(gone.wait(), 1.0)
        assert await b.flags.suppressed("user@example.com") == "BOUNCE"
        # a third node starting later loads the view whole
        c = Node(redis_server, "node-c", clock)
        c.flags.start()
        await asyncio.wait_for(c.flags.ready.wait(), 5)
        assert c.flags.get("tenant", "acme") == "paused"
        await c.close()
    finally:
        await a.close()
        await b.close()


async def test_redis_down_falls_back_to_the_local_share_and_reconciles_once(
        redis_server: RedisServer) -> None:
    clock = FakeClock()
    a, b = Node(redis_server, "node-a", clock), Node(redis_server, "node-b", clock)
    registry = CollectorRegistry()
    registry.register(ClusterCollector(a.client))
    try:
        await a.heartbeat.once()
        await b.heartbeat.once()
        await a.heartbeat.live()
        assert a.heartbeat.live_count == 2
        assert (await a.limits.take("warm", 20, 100, 86400)).granted == 20
        for _ in range(10):
            assert await a.limits.reserve("quota", 1, 50, 86400, 1) is not None
        assert b"relay_cluster_redis_up 1.0" in generate_latest(registry)

        redis_server.stop()
        with pytest.raises(ClusterUnavailable):
            await a.client.ping()
        assert b"relay_cluster_redis_up 0.0" in generate_latest(registry)
        failures = a.client.failures  # within a second of a failure no call waits on Redis

        # (100 - 20 already counted) // 2 live nodes = 40 for this node, no more
        local = [await a.limits.take("warm", 1, 100, 86400) for _ in range(60)]
        assert sum(g.granted for g in local) == 40
        assert not any(g.shared for g in local)
        # (50 - 10) // 2 = 20
        res = [await a.limits.reserve("quota", 1, 50, 86400, 1) for _ in range(30)]
        assert sum(1 for r in res if r is not None) == 20
        assert a.client.failures == failures
        clock.advance(1.0)
        with pytest.raises(ClusterUnavailable):
            await a.limits.reconcile()  # still down: nothing confirmed, nothing lost
        assert a.client.failures == failures + 1  # it tried again after a second
        assert len(a.limits.ledger) == 2

        # This test's Redis keeps nothing across a restart (no persistence): what it holds
        # afterwards is exactly what the node counted while it was away, added once.
        redis_server.start()
        clock.advance(1.0)
        assert await a.limits.reconcile() == 2
        assert await a.limits.reconcile() == 0  # not doubled
        assert (await b.limits.take("warm", 0, 100, 86400)).count == 40
        assert (await b.limits.take("warm", 1000, 100, 86400, partial=True)).granted == 60
        assert await b.limits.reserve("quota", 30, 50, 86400, 1) is not None
        assert await b.limits.reserve("quota", 1, 50, 86400, 1) is None  # 20 + 30 = 50
        assert b"relay_cluster_redis_up 1.0" in generate_latest(registry)
    finally:
        await a.close()
        await b.close()


async def test_a_retried_reconciliation_batch_is_added_once(
        two_nodes: tuple[Node, Node, FakeClock]) -> None:
    """The answer of a reconciliation can be lost after Redis applied it: the same batch
    sent again adds nothing."""
    a, _b, _clock = two_nodes
    from relay.cluster.fallback import Pending
    key = a.limits.window_key("warm", 86400)
    a.limits.ledger.record(Pending("fixed", key, 5, ttl_ms=90_000_000))
    batches = a.limits.ledger.seal("t")
    (batch,) = batches
    guard = a.client.key("reconciled", batch.batch_id)
    for _ in range(2):
        await a.client.call(lambda r: a.limits.scripts.fixed_add(
            keys=[key, guard], args=[5, 90_000_000, 60_000]))
    assert await a.limits.reconcile() == 1
    assert (await a.limits.take("warm", 0, 100, 86400)).count == 5


async def test_heartbeat_lists_nodes_and_names_the_one_whose_files_differ(
        two_nodes: tuple[Node, Node, FakeClock], redis_server: RedisServer) -> None:
    a, b, clock = two_nodes
    c = Node(redis_server, "node-c", clock)
    a.heartbeat.digests = lambda: {"config": "aaaa", "users.json": "1111"}
    b.heartbeat.digests = lambda: {"config": "aaaa", "users.json": "2222"}
    c.heartbeat.digests = lambda: {"config": "aaaa", "users.json": "1111"}
    a.heartbeat.queue_depth = lambda: 7
    for node in (a, b, c):
        await node.heartbeat.beat()
    status = await cluster_status(a.client, clock)
    assert [n["node_id"] for n in status["nodes"]] == ["node-a", "node-b", "node-c"]
    assert status["nodes"][0]["queue_depth"] == 7
    assert status["differing"] == {"node-b": ["users.json"]}
    assert status["redis_up"] and status["redis_latency_ms"] >= 0
    clock.advance(21)  # past node_ttl: only the nodes that beat again are live
    await a.heartbeat.beat()
    assert [n["node_id"] for n in await b.heartbeat.live()] == ["node-a"]
    await c.close()


async def test_the_newer_of_a_nodes_own_status_and_the_cluster_s_decides(
        redis_server: RedisServer, make_store: Any) -> None:
    """A pause published by node B stops tenant acme on node A (its TenantStore's view);
    a resume published later wins over node B's own older pause record."""
    from relay.cluster.node import ClusterNode
    from relay.tenants.store import TenantStore

    clock = SystemClock()
    nodes, stores = [], []
    for name in ("node-a", "node-b"):
        node = ClusterNode(_cfg(redis_server, name), clock, state_dir=redis_server.dir,
                           queue_depth=lambda: 0)
        store = TenantStore(await make_store(clock, name=name), clock,
                            shared_status=node.shared_status)
        await store.write(store.add_op("acme"))
        node.flags.start()
        nodes.append(node)
        stores.append(store)
    try:
        await asyncio.wait_for(asyncio.gather(*(n.flags.ready.wait() for n in nodes)), 5)
        seen = asyncio.Event()
        nodes[0].flags.on_change(lambda kind, name, value, node: seen.set())
        rec = await stores[1].write(stores[1].pause_op("tenant:acme", who="test"))
        assert await nodes[1].publish_status("tenant:acme", rec)
        await asyncio.wait_for(seen.wait(), 1.0)
        assert stores[0].paused("acme") is not None
        assert stores[0].paused("other") is None
        seen_b = asyncio.Event()
        nodes[1].flags.on_change(lambda kind, name, value, node: seen_b.set())
        resumed = await stores[0].write(stores[0].resume_op("tenant:acme", who="test"))
        assert await nodes[0].publish_status("tenant:acme", resumed)
        assert stores[0].paused("acme") is None
        await asyncio.wait_for(seen_b.wait(), 1.0)
        assert stores[1].paused("acme") is None
        assert stores[1].status("tenant:acme").paused  # its own record: older
    finally:
        for node in nodes:
            await node.stop()


async def test_an_automatic_reputation_pause_on_one_node_stops_the_other(
        redis_server: RedisServer, make_store: Any, tmp_path: Path) -> None:
    """Node B's reputation monitor pauses tenant acme on its own mail's bounce rate (no
    operator): node A's view has acme paused within a second (the monitor's change is
    published like an operator's pause), while A's own record stays Healthy."""
    from relay.cluster.node import ClusterNode
    from relay.events import model as M
    from relay.events.log import EventLog
    from relay.queue.records import MessageRecord
    from relay.tenants.monitor import ReputationMonitor
    from relay.tenants.reputation import Lines, ReputationBook
    from relay.tenants.store import TenantStore

    class Thresholds:
        bounce_review = 0.05
        bounce_pause = 0.10
        complaint_review = 0.001
        complaint_pause = 0.005
        min_volume = 100
        window = 7 * 86400.0
        max_window = 30 * 86400.0

    clock = SystemClock()
    nodes, stores, queues = [], [], []
    for name in ("node-a", "node-b"):
        node = ClusterNode(_cfg(redis_server, name), clock, state_dir=redis_server.dir,
                           queue_depth=lambda: 0)
        queue = await make_store(clock, name=name)
        store = TenantStore(queue, clock, shared_status=node.shared_status)
        await store.write(store.add_op("acme"))
        node.flags.start()
        nodes.append(node)
        stores.append(store)
        queues.append(queue)
    events = EventLog(tmp_path / "events-b.jsonl", clock)
    monitor = ReputationMonitor(queues[1], stores[1], ReputationBook(Lines.of(Thresholds())),
                                events, clock, is_simulator=lambda a: False,
                                on_change=[nodes[1].publish_pause])
    events.subscribers.append(monitor)
    try:
        await asyncio.wait_for(asyncio.gather(*(n.flags.ready.wait() for n in nodes)), 5)
        seen = asyncio.Event()
        nodes[0].flags.on_change(lambda kind, name, value, node: seen.set())
        msgs = [MessageRecord(id=f"m{i}", sender="app@example.com",
                              recipients=[f"u{i}@example.net"], received_at=clock.now(),
                              size=10, tenant="acme") for i in range(200)]
        events.emit([M.send_event(m) for m in msgs])
        events.emit([M.bounce_event(m, m.recipients, "550 5.1.1 no such user", clock.now(),
                                    "mx.example.net") for m in msgs[:40]])
        changes = await monitor.run_once()
        assert [(scope, new.status) for scope, _old, new in changes] == [
            ("tenant:acme", "Paused")]
        await asyncio.wait_for(seen.wait(), 1.0)
        rec = stores[0].paused("acme")
        assert rec is not None and rec.automatic
        assert stores[0].status("tenant:acme").status == "Healthy"  # A's own record
    finally:
        await monitor.stop()
        for node in nodes:
            await node.stop()


async def test_a_hard_bounce_learned_on_one_node_suppresses_on_the_other(
        redis_server: RedisServer, make_store: Any, tmp_path: Path) -> None:
    """Node A's scheduler settles a hard bounce; node B's own copy of the list (what its
    scheduler reads before an attempt) has the address within a second; a removal on B
    reaches A; a node that subscribes later copies what it lacks."""
    from relay.cluster.node import ClusterNode
    from relay.config import from_dict
    from relay.queue.ops import NewMessage, Settled
    from relay.queue.records import RecipientRecord, State
    from relay.suppression.guard import Suppressor
    from relay.suppression.store import SuppressionList

    clock = SystemClock()
    cfg = from_dict({"server": {"hostname": "relay.test", "state_dir": str(tmp_path)}})
    nodes, stores = [], []
    for name in ("node-a", "node-b"):
        store = await make_store(clock, name=name)
        node = ClusterNode(_cfg(redis_server, name), clock, state_dir=redis_server.dir,
                           queue_depth=lambda: 0, store=store)
        node.flags.start()
        nodes.append(node)
        stores.append(store)
    late: list[ClusterNode] = []
    try:
        await asyncio.wait_for(asyncio.gather(*(n.flags.ready.wait() for n in nodes)), 5)
        assert nodes[0].suppression is not None and nodes[1].suppression is not None
        guard = Suppressor(stores[0], lambda: cfg, on_added=nodes[0].suppression.added)
        msg = NewMessage(sender="app@example.com", recipients=["gone@example.net"],
                         body=b"Subject: hi\r\n\r\nx\r\n")
        record = await stores[0].submit_record(msg)
        bounced = RecipientRecord("gone@example.net", "example.net", State.BOUNCED,
                                  last_response="550 5.1.1 no such user")
        arrived = asyncio.Event()
        nodes[1].flags.on_change(lambda kind, name, value, node: arrived.set()
                                 if node == "node-a" else None)
        await guard.after_settle([Settled(record, 0, bounced)], clock.now())
        await asyncio.wait_for(arrived.wait(), 1.0)
        await nodes[1].suppression.drain()  # its write to node B's spool
        entry = SuppressionList(stores[1]).get("gone@example.net")
        assert entry is not None and entry.reason == "BOUNCE"
        assert "5.1.1" in entry.diagnostic

        # a third node, subscribing later, copies the list from Redis
        store_c = await make_store(clock, name="node-c")
        late.append(ClusterNode(_cfg(redis_server, "node-c"), clock,
                                state_dir=redis_server.dir, queue_depth=lambda: 0,
                                store=store_c))
        late[0].flags.start()
        await asyncio.wait_for(late[0].flags.ready.wait(), 5)
        assert late[0].suppression is not None
        await late[0].suppression.drain()
        assert SuppressionList(store_c).get("gone@example.net") is not None

        # an operator's removal on node B reaches node A
        removed = asyncio.Event()
        nodes[0].flags.on_change(lambda kind, name, value, node: removed.set()
                                 if node == "node-b" and value is None else None)
        assert await stores[1].write(SuppressionList(stores[1]).remove_op(
            ["gone@example.net"])) == 1
        nodes[1].suppression.removed("", ["gone@example.net"])
        await asyncio.wait_for(removed.wait(), 1.0)
        await nodes[0].suppression.drain()
        assert SuppressionList(stores[0]).get("gone@example.net") is None
    finally:
        for node in nodes + late:
            await node.stop()
