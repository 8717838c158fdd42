"""Provider/site shaping shared across nodes on a real redis-server
(relay/cluster/shaping.py): a site's messages per second and per hour counted for all
nodes together (one script call per transaction, partial grants, the unused part given
back, the local share while Redis is down and reconciled after); connection leases per
site (renewed in one call per node, a killed node's leases expiring after the TTL,
leases taken while Redis was down registered or lost when it returns, `relay cluster
status` naming the holder); and two nodes' SMTP clients, over real sockets, never
having more connections open to a sink than the site allows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.clock import Clock, FakeClock, SystemClock
from relay.cluster.client import ClusterClient
from relay.cluster.limits import SharedLimits
from relay.cluster.nodes import Heartbeat
from relay.cluster.shaping import SharedShaping
from relay.cluster.status import cluster_status
from relay.config import Config, Duration, from_dict
from relay.config.cluster import Cluster
from relay.delivery.attempts import Attempt, RecordingSender
from relay.delivery.client import Sender
from relay.delivery.outcome import outcomes_of
from relay.queue.ops import NewMessage
from relay.testing.delivery import BODY, short_delivery
from relay.testing.delivery import StubTarget as T
from relay.testing.redisserver import RedisServer
from relay.testing.sink import Rules, Sink
from relay.testing.warmup import DeliveryHarness, Started, provider_dns, provider_sinks
from relay.warmup.providers import ProviderMap, SiteLimits
from relay.warmup.shaping import ConnectionLease

HOUR = 3600.0
# The start of a clock hour, so a test's hour does not end under it.
START = 1_790_035_200.0 + 9 * HOUR


class Node:
    """One node's Redis client, heartbeat, shared limits and site shaping."""

    def __init__(self, server: RedisServer, name: str, clock: Clock, *,
                 ttl: float = 60.0, wait: float = 0.0) -> None:
        cfg = Cluster(redis_url=server.url, node_id=name,
                      command_timeout=Duration(0.5), connect_timeout=Duration(0.5))
        self.client = ClusterClient(cfg, clock)
        self.heartbeat = Heartbeat(self.client, clock)
        self.limits = SharedLimits(self.client, clock, lambda: self.heartbeat.live_count)
        self.heartbeat.limits = self.limits
        self.shaping = SharedShaping(self.client, clock, self.limits, ttl=ttl, wait=wait)

    async def load_scripts(self) -> None:
        """Run the renewal script once (Redis then has it: EVALSHA, no NOSCRIPT retry)."""
        lease = await self.shaping.acquire("warm-up", 1)
        assert lease is not None
        await self.shaping.renew()
        self.shaping.release(lease)
        await self.shaping.drain()

    async def close(self) -> None:
        await self.shaping.stop()
        await self.client.close()


@pytest.fixture
async def two_nodes(redis_server: RedisServer) -> AsyncIterator[tuple[Node, Node, FakeClock]]:
    clock = FakeClock(START)
    a, b = Node(redis_server, "node-a", clock), Node(redis_server, "node-b", clock)
    yield a, b, clock
    await a.close()
    await b.close()


async def evalsha_calls(client: ClusterClient) -> int:
    """Script calls Redis has run so far (every shared limit is one)."""
    stats = await client.redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items()
               if k in ("cmdstat_evalsha", "cmdstat_eval"))


# ---------------------------------------------------------------------------- rates

async def test_messages_per_hour_hold_for_both_nodes_and_start_over_next_hour(
        two_nodes: tuple[Node, Node, FakeClock]) -> None:
    a, b, clock = two_nodes
    limits = SiteLimits(messages_per_hour=10)
    grants = []
    for i in range(6):  # 3 recipients a transaction, alternating between the nodes
        grants.append(await (a if i % 2 else b).shaping.take("gmail", limits, 3))
        clock.advance(60)
    assert [g.granted for g in grants] == [3, 3, 3, 1, 0, 0]  # partial, then nothing
    assert all(g.shared for g in grants)
    assert grants[-1].next_at == START + HOUR  # held until the next clock hour
    clock.set(START + HOUR)
    assert (await a.shaping.take("gmail", limits, 12)).granted == 10
    # another site has its own count
    assert (await b.shaping.take("yahoo", limits, 4)).granted == 4


async def test_messages_per_second_are_one_bucket_for_both_nodes(
        two_nodes: tuple[Node, Node, FakeClock]) -> None:
    a, b, clock = two_nodes
    limits = SiteLimits(messages_per_second=2.0)
    assert (await a.shaping.take("gmail", limits, 5)).granted == 2  # a bucket 1 s deep
    late = await b.shaping.take("gmail", limits, 1)
    assert late.granted == 0
    assert late.next_at == pytest.approx(START + 0.5)
    clock.advance(0.5)
    assert (await b.shaping.take("gmail", limits, 3)).granted == 1
    assert (await a.shaping.take("gmail", limits, 1)).granted == 0
    clock.advance(10)  # refilled to its depth, no more
    got = await asyncio.gather(*[(a if i % 2 else b).shaping.take("gmail", limits, 1)
                                 for i in range(20)])
    assert sum(g.granted for g in got) == 2
    # a rate below one a second: one every 1 / rate seconds
    slow = SiteLimits(messages_per_second=0.25)
    assert (await a.shaping.take("slow", slow, 3)).granted == 1
    assert (await b.shaping.take("slow", slow, 1)).next_at == pytest.approx(clock.now() + 4)


async def test_a_transaction_costs_one_script_call_and_the_unsent_part_is_given_back(
        two_nodes: tuple[Node, Node, FakeClock]) -> None:
    a, b, clock = two_nodes
    limits = SiteLimits(messages_per_second=5.0, messages_per_hour=8)
    await a.shaping.take("warm-up", limits, 1)  # the script loaded (the first EVALSHA's NOSCRIPT)
    before = await evalsha_calls(a.client)
    grant = await a.shaping.take("gmail", limits, 5)
    assert await evalsha_calls(a.client) - before == 1
    assert grant.granted == 5
    await a.shaping.give_back(grant, 3, limits)  # the warm-up gate took only 2 of them
    assert (await b.shaping.take("gmail", limits, 10)).granted == 3  # rate: 5 - 2
    clock.advance(1.0)
    assert (await b.shaping.take("gmail", limits, 10)).granted == 3  # hour: 8 - 2 - 3


async def test_while_redis_is_down_a_node_takes_its_share_and_adds_it_when_it_returns(
        redis_server: RedisServer) -> None:
    clock = FakeClock(START)
    a, b = Node(redis_server, "node-a", clock), Node(redis_server, "node-b", clock)
    try:
        await a.heartbeat.once()
        await b.heartbeat.once()
        await a.heartbeat.live()
        limits = SiteLimits(messages_per_hour=100, messages_per_second=50.0)
        assert (await a.shaping.take("gmail", limits, 20)).granted == 20
        redis_server.stop()
        # (100 - 20) // 2 live nodes = 40 this hour; 50 / 2 = 25 a second
        first = await a.shaping.take("gmail", limits, 60)
        assert (first.granted, first.shared) == (25, False)
        clock.advance(1.0)
        second = await a.shaping.take("gmail", limits, 60)
        assert second.granted == 15
        assert second.next_at == START + HOUR
        clock.advance(1.0)
        assert (await a.shaping.take("gmail", limits, 1)).granted == 0
        redis_server.start()
        clock.advance(1.0)  # past the client's one-second fail-fast
        assert await a.limits.reconcile() == 1
        assert await a.limits.reconcile() == 0
        # This Redis restarted empty (no persistence): the 20 counted before are gone
        # with it; the 40 counted meanwhile were added once, so b gets 60 more.
        clock.advance(1.0)
        assert (await b.shaping.take("gmail", limits, 50)).granted == 50
        clock.advance(1.0)
        assert (await b.shaping.take("gmail", limits, 50)).granted == 10
    finally:
        await a.close()
        await b.close()


# ---------------------------------------------------------------------------- leases

async def test_leases_renew_in_one_call_and_a_killed_nodes_leases_expire_after_the_ttl(
        two_nodes: tuple[Node, Node, FakeClock]) -> None:
    a, b, clock = two_nodes
    held = [await a.shaping.acquire("gmail", 2), await a.shaping.acquire("gmail", 2),
            await a.shaping.acquire("yahoo", 5)]
    assert all(x is not None for x in held)
    assert await b.shaping.acquire("gmail", 2) is None
    await b.shaping.renew()  # nothing to renew: no call
    await Node.load_scripts(a)
    for _ in range(4):  # 80 s, more than the TTL: renewed every 20 s, one call each time
        clock.advance(20)
        before = await evalsha_calls(a.client)
        assert await a.shaping.renew() == 0
        assert await evalsha_calls(a.client) - before == 1
        assert await b.shaping.acquire("gmail", 2) is None
    status = await cluster_status(b.client, clock)
    assert sorted((x["site"], x["node"]) for x in status["leases"]) == [
        ("gmail", "node-a"), ("gmail", "node-a"), ("yahoo", "node-a")]
    # node a is killed (-9): nothing renews or releases its leases
    clock.advance(59)
    assert await b.shaping.acquire("gmail", 2) is None
    clock.advance(1.5)
    got = [await b.shaping.acquire("gmail", 2) for _ in range(3)]
    assert [x is not None for x in got] == [True, True, False]
    status = await cluster_status(b.client, clock)
    assert {(x["site"], x["node"]) for x in status["leases"]} == {("gmail", "node-b")}


async def test_a_closed_connections_lease_is_released_and_taken_over_without_a_call(
        two_nodes: tuple[Node, Node, FakeClock]) -> None:
    a, b, _clock = two_nodes
    first = await a.shaping.acquire("gmail", 1)
    assert first is not None
    before = await evalsha_calls(a.client)
    a.shaping.release(first)
    again = await a.shaping.acquire("gmail", 1)  # the same step: a new connection takes it
    assert again is first
    await a.shaping.drain()
    assert await evalsha_calls(a.client) == before
    a.shaping.release(again)
    for _ in range(50):  # the release runs in the background
        await asyncio.sleep(0.01)
        if await b.shaping.acquire("gmail", 1) is not None:
            break
    else:
        pytest.fail("the released lease was never free for node b")


async def test_leases_taken_while_redis_was_down_are_registered_or_lost_when_it_returns(
        redis_server: RedisServer) -> None:
    clock = FakeClock(START)
    a, b = Node(redis_server, "node-a", clock), Node(redis_server, "node-b", clock)
    lost: list[ConnectionLease] = []
    a.shaping.on_lost(lost.append)
    try:
        await a.heartbeat.once()
        await b.heartbeat.once()
        await a.heartbeat.live()
        redis_server.stop()
        # the local share: max(1, 4 // 2 live nodes) = 2, and at least 1 of a max of 1
        local = [await a.shaping.acquire("gmail", 4) for _ in range(3)]
        assert [x is not None and not x.shared for x in local] == [True, True, False]
        assert await a.shaping.acquire("tiny", 1) is not None
        assert await a.shaping.acquire("tiny", 1) is None
        redis_server.start()  # empty: the leases taken meanwhile are not there
        clock.advance(1.0)
        assert await b.shaping.acquire("tiny", 1) is not None  # b took tiny's only one
        assert await a.shaping.renew() == 1
        assert [x.site for x in lost] == ["tiny"] and lost[0].lost
        assert all(x is not None and x.shared for x in local[:2])  # gmail's registered
        more = [await b.shaping.acquire("gmail", 4) for _ in range(3)]
        assert [x is not None for x in more] == [True, True, False]
    finally:
        await a.close()
        await b.close()


# ---------------------------------------------------------------------------- real sockets

async def test_two_nodes_never_open_more_connections_than_the_site_allows(
        redis_server: RedisServer) -> None:
    """Two nodes' SMTP clients, each sending 8 messages at once to a provider's site
    with max_connections = 2 (a sink answering each DATA after 50 ms): the sink never
    has more than 2 connections open from both together, and every message arrives."""
    clock = SystemClock()
    nodes = [Node(redis_server, f"node-{n}", clock, ttl=10.0, wait=5.0) for n in "ab"]
    sink = Sink("127.0.0.2", 0, policy=Rules(delay=0.05)).start()
    cfg = short_delivery(5.0, idle_connection_timeout=Duration(0.3),
                         max_connections_per_destination=2)
    senders = [Sender(cfg, hostname=f"relay-{i}.test", clock=clock) for i in range(2)]
    for sender, node in zip(senders, nodes, strict=True):
        sender.share_sites(node.shaping)
    mx = [T("mx.prova.test", "127.0.0.2", sink.port)]
    send = functools.partial(Sender.send, destination="a.test", targets=mx,
                             sender="s@x.test", data=BODY, site="prova", max_connections=2)
    try:
        results = await asyncio.gather(*[
            send(senders[i % 2], recipients=[f"r{i}@a.test"]) for i in range(16)])
        assert [o.kind for r in results for o in r.outcomes] == ["delivered"] * 16
        assert sink.message_count == 16
        assert sink.peak_connections <= 2
        assert sink.connections >= 2
    finally:
        for sender in senders:
            await sender.close()
        for node in nodes:
            await node.close()
        sink.stop()


async def test_a_site_without_max_connections_or_of_no_provider_takes_no_lease(
        redis_server: RedisServer) -> None:
    clock = SystemClock()
    node = Node(redis_server, "node-a", clock)
    sink = Sink("127.0.0.2", 0).start()
    sender = Sender(short_delivery(5.0), hostname="relay.test", clock=clock)
    sender.share_sites(node.shaping)
    mx = [T("mx.other.test", "127.0.0.2", sink.port)]
    try:
        for site, limit in (("mx:mx.other.test", 2), ("prova", 0)):
            r = await sender.send("a.test", mx, "s@x.test", ["r@a.test"], BODY,
                                  site=site, max_connections=limit)
            assert r.outcomes[0].kind == "delivered"
        assert node.shaping.held == {}
    finally:
        await sender.close()
        await node.close()
        sink.stop()


async def test_a_recipient_held_for_want_of_a_lease_is_not_logged_as_an_attempt(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """The site's only connection lease is node A's: node B's client (the real Sender
    under RecordingSender, as relay/wiring.py builds it) holds the recipient for the
    lease, and no attempt is logged or reported for it (it was never tried); once the
    lease is free the recipient goes, and that is the one attempt."""
    clock = SystemClock()
    a, b = (Node(redis_server, f"node-{n}", clock, wait=0.0) for n in "ab")
    sink = Sink("127.0.0.2", 0).start()
    sender = Sender(short_delivery(5.0), hostname="relay.test", clock=clock)
    sender.share_sites(b.shaping)
    seen: list[Attempt] = []
    recorder = RecordingSender(sender, ProviderMap(), clock=clock, observers=[seen.append])
    mx = [T("mx.prova.test", "127.0.0.2", sink.port)]
    try:
        lease = await a.shaping.acquire("prova", 1)
        assert lease is not None
        with caplog.at_level(logging.INFO, logger="relay.delivery"):
            r = await recorder.send("a.test", mx, "s@x.test", ["r@a.test"], BODY,
                                    site="prova", max_connections=1)
        (outcome,) = outcomes_of(r)
        assert outcome.hold_until is not None and sink.message_count == 0
        assert seen == []
        assert not [x for x in caplog.records if x.getMessage().startswith("attempt ")]
        a.shaping.release(lease)
        await a.shaping.drain()
        r = await recorder.send("a.test", mx, "s@x.test", ["r@a.test"], BODY,
                                site="prova", max_connections=1)
        assert [o.kind for o in outcomes_of(r)] == ["delivered"]
        assert [x.kind for x in seen] == ["delivered"]
    finally:
        await sender.close()
        for node in (a, b):
            await node.close()
        sink.stop()


# ---------------------------------------------------------------------------- two relays

class ClusterHarness(DeliveryHarness):
    """relay/app.py's delivery graph of one node of a cluster: a warm pool, the provider
    "prova" (a.test's MX, the sink on 127.0.0.2) at `per_hour` messages an hour (and more
    connections than both nodes open: a wait for a lease would sleep on the FakeClock)."""

    def __init__(self, tmp: Path, name: str, redis_url: str, dns_port: int, sink_port: int,
                 per_hour: int, clock: FakeClock, warmup_cap: int = 0,
                 idle: str = "10s") -> None:
        pool: dict[str, Any] = {"name": "warm", "ips": ["127.0.0.10"]}
        plans = []
        if warmup_cap:  # a warming pool: at most warmup_cap a day per provider
            day = dt.datetime.fromtimestamp(clock.now(), dt.UTC).date().isoformat()
            plans = [{"name": "tiny", "caps": [warmup_cap]}]
            pool.update(warmup_plan="tiny", warmup_start=day)
        cfg: Config = from_dict({
            "server": {"hostname": f"{name}.relay.test", "state_dir": str(tmp)},
            "dns": {"nameservers": [f"127.0.0.1:{dns_port}"], "timeout": "2s"},
            "delivery": {"port": sink_port, "pool": "warm", "retry_jitter": 0.0,
                         "idle_connection_timeout": idle},
            "provider": [{"name": "prova", "mx": ["mx.prova.test"], "max_connections": 20,
                          "messages_per_hour": per_hour}],
            "pool": [pool],
            "warmup": {"pacing": "none"},
            "warmup_plan": plans,
            "cluster": {"redis_url": redis_url, "node_id": name},
        })
        super().__init__(tmp, cfg, clock, tmp / "events.jsonl")
        assert self.parts.cluster is not None

    async def submit(self, *rcpts: str) -> None:
        for rcpt in rcpts:
            await self.store.submit_record(NewMessage(
                sender="app@example.com", recipients=[rcpt], body=b"Subject: hi\r\n\r\nhi\r\n"))

    async def close(self) -> None:
        await super().close()
        await self.parts.cluster.stop()


async def test_two_nodes_deliver_exactly_the_sites_messages_per_hour(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """messages_per_hour = 7 for a provider, two nodes with 6 messages each for it: the
    provider's sink receives exactly 7 in the hour (each node alone would send all 6);
    the other 5, held (not an attempt), go out in the next hour."""
    clock = FakeClock(START)
    with provider_dns() as dns, provider_sinks() as (sink, _):
        nodes = [ClusterHarness(tmp_path / name, name, redis_server.url, dns.port, sink.port,
                                7, clock) for name in ("node-a", "node-b")]
        started: Started[ClusterHarness] = Started()
        try:
            for i, h in enumerate(nodes):
                await started.start(h)
                await h.submit(*[f"n{i}-{k}@a.test" for k in range(6)])
            for _ in range(3):  # both nodes try (and retry) within the hour
                for h in nodes:
                    await h.run_until(START + 600)
            assert sink.message_count == 7
            assert {m.rcpt_tos[0].split("-")[0] for m in sink.messages} == {"n0", "n1"}
            held = [r for h in nodes for _, rs in h.store.messages() for r in rs]
            assert len(held) == 5
            assert {r.attempts for r in held} == {0}
            assert {r.next_attempt_at for r in held} == {START + HOUR}
            for h in nodes:
                await h.run_until(START + HOUR + 600)
            assert sink.message_count == 12
        finally:
            await started.close()


async def test_what_the_warm_up_gate_does_not_take_goes_back_to_the_sites_hour(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """A warming pool (3 a day toward the provider, shared by the two nodes) and
    messages_per_hour = 10 for the provider, 6 recipients on each node: the site counts
    only what the IP's cap granted (node A's 3; node B's gate, told by Redis that the cap
    is spent cluster-wide, nothing), so the hour then has 10 - 3 left for anyone."""
    clock = FakeClock(START)
    with provider_dns() as dns, provider_sinks() as (sink, _):
        nodes = [ClusterHarness(tmp_path / name, name, redis_server.url, dns.port, sink.port,
                                10, clock, warmup_cap=3) for name in ("node-a", "node-b")]
        started: Started[ClusterHarness] = Started()
        try:
            for i, h in enumerate(nodes):
                await started.start(h)
                await h.submit(*[f"n{i}-{k}@a.test" for k in range(6)])
                await h.run_until(START + 600)
            assert sink.message_count == 3
            shaping = nodes[0].parts.cluster.shaping
            left = await shaping.take("prova", SiteLimits(messages_per_hour=10), 10)
            assert left.granted == 7
        finally:
            await started.close()


async def _script_calls(server: RedisServer) -> int:
    """EVALSHA/EVAL commands the redis-server has run (every shared limit is one)."""
    client = ClusterClient(Cluster(redis_url=server.url, node_id="probe"), SystemClock())
    try:
        return await evalsha_calls(client)
    finally:
        await client.close()


async def test_a_rate_limited_site_from_a_warming_ip_costs_one_round_trip_a_transaction(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """A warming pool (5 a day toward the provider) and messages_per_hour = 3 for the
    provider, 6 messages (6 transactions over one connection, kept open: its lease is
    taken once, by the first): each transaction makes ONE Redis round trip (the node's
    ClusterClient.calls, and the EVALSHAs the redis-server ran), for the site's rates
    and the IP's cap together. The
    site lets 3 through; the warm-up count in Redis is those 3 (what the site cut went
    back to the IP's cap in the same call), and the 3 held wait for the next hour
    without an attempt."""
    clock = FakeClock(START)
    with provider_dns() as dns, provider_sinks() as (sink, _):
        node = ClusterHarness(tmp_path / "node-a", "node-a", redis_server.url, dns.port,
                              sink.port, 3, clock, warmup_cap=5, idle="1h")
        started: Started[ClusterHarness] = Started()
        try:
            await started.start(node)
            client = node.parts.cluster.client
            await node.submit("first@a.test")   # loads the script (NOSCRIPT, then EVALSHA)
            await node.run_until(START + 60)
            assert sink.message_count == 1
            calls, evals = client.calls, await _script_calls(redis_server)
            for k in range(5):
                await node.submit(f"r{k}@a.test")
                await node.run_until(START + 120 + k * 60)
            assert client.calls - calls == 5
            assert await _script_calls(redis_server) - evals == 5
            assert sink.message_count == 3 and sink.connections == 1
            held = [r for _, rs in node.store.messages() for r in rs]
            assert len(held) == 3
            assert {r.attempts for r in held} == {0}
            assert {r.next_attempt_at for r in held} == {START + HOUR}
            state = await node.parts.cluster.warmup.state("127.0.0.10")
            assert state["providers"]["prova"]["sent"] == 3
            left = await node.parts.cluster.shaping.take(
                "prova", SiteLimits(messages_per_hour=10), 10)
            assert left.granted == 10 - 3
        finally:
            await started.close()


async def test_a_warming_ips_spent_cap_costs_no_round_trip_and_takes_nothing_from_the_site(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """The warming IP's cap (2 a day) is smaller than the site's hour (10): 4
    transactions make 2 round trips and a lease (the gate then knows the cap is spent, and holds the
    other 2 without asking Redis, the site's count untouched by them)."""
    clock = FakeClock(START)
    with provider_dns() as dns, provider_sinks() as (sink, _):
        node = ClusterHarness(tmp_path / "node-a", "node-a", redis_server.url, dns.port,
                              sink.port, 10, clock, warmup_cap=2, idle="1h")
        started: Started[ClusterHarness] = Started()
        try:
            await started.start(node)
            client = node.parts.cluster.client
            calls = client.calls
            for k in range(4):
                await node.submit(f"r{k}@a.test")
                await node.run_until(START + 60 + k * 60)
            assert client.calls - calls == 2 + 1   # + 1: the connection's lease
            assert sink.message_count == 2 and sink.connections == 1
            left = await node.parts.cluster.shaping.take(
                "prova", SiteLimits(messages_per_hour=10), 10)
            assert left.granted == 10 - 2
        finally:
            await started.close()
