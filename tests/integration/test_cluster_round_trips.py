"""What a message costs in Redis at acceptance, counted on a real redis-server (INFO
commandstats before and after) and in the node's client: one script call per recipient
over SMTP (every window of every scope at once: the tenant's and the credential's send
rate and 24 h quota), one per message over the SES API, one to give a whole transaction
back on RSET; all or nothing when one window has no room; SentLast24Hours from Redis
whichever node accepted, and this node's own figure while Redis is unreachable."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from relay.clock import FakeClock
from relay.cluster.client import ClusterClient
from relay.cluster.limits import SharedLimits
from relay.cluster.quota import SharedQuota
from relay.config import Tenants
from relay.config.cluster import Cluster
from relay.tenants.account import AccountGate, Transaction
from relay.tenants.model import Quota
from relay.tenants.quota import QuotaBook
from relay.tenants.refusals import DAILY_QUOTA_EXCEEDED, RATE_EXCEEDED
from relay.tenants.store import TenantStore
from relay.testing.factories import Stores
from relay.testing.redisserver import RedisServer

# The commands a quota script runs inside Redis (counted in commandstats, not round trips).
INSIDE_SCRIPTS = {"hget", "hset", "hdel", "hincrby", "zadd", "zrangebyscore",
                  "zremrangebyscore", "pexpire"}


@dataclass(frozen=True)
class Credential:
    tenant: str
    allowed_tenants: list[str] = field(default_factory=list)
    max_24h_send: int | None = None
    max_send_rate: float | None = None


def _commands(server: RedisServer) -> dict[str, int]:
    """Calls per command since the server started (INFO commandstats)."""
    with redis.Redis(port=server.port) as r:
        stats = r.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    out = {k: after[k] - before.get(k, 0) for k in after}
    for own in ("info", "hello", "client|setinfo", "ping"):  # the reading's own connection
        out.pop(own, None)
    return {k: v for k, v in out.items() if v}


class Nodes:
    """Two account gates (two nodes: each its spool and Redis connection) on one Redis;
    tenant acme is in the sandbox (200 a day, 50 a second here) and credential `app` has
    its own quota: four windows per recipient."""

    def __init__(self, gates: list[AccountGate], clients: list[ClusterClient],
                 quotas: list[SharedQuota]) -> None:
        self.gates, self.clients, self.quotas = gates, clients, quotas

    def begin(self, i: int) -> Transaction:
        txn = self.gates[i % 2].begin("app")
        assert isinstance(txn, Transaction)
        return txn

    async def close(self) -> None:
        for c in self.clients:
            await c.close()


async def _nodes(server: RedisServer, make_store: Stores, clock: FakeClock,
                 credential: Credential) -> Nodes:
    defaults = Tenants(sandbox_max_24h_send=200, sandbox_max_send_rate=50)
    gates, clients, quotas = [], [], []
    for name in ("node-a", "node-b"):
        client = ClusterClient(Cluster(redis_url=server.url, node_id=name), clock)
        store = await make_store(clock, name=name)
        tenants = TenantStore(store, clock)
        await tenants.write(tenants.add_op("acme", sandbox=True))
        await tenants.write(tenants.add_op("beta", sandbox=False,
                                           quota=Quota(max_24h_send=4)))
        quota = SharedQuota(SharedLimits(client, clock, lambda: 2))
        gates.append(AccountGate(
            tenants, QuotaBook(), store, credential=lambda n: credential,
            defaults=lambda: defaults, verified=lambda t, i: True,
            is_simulator=lambda a: a.endswith("@simulator.amazonses.com"),
            now=clock.now, shared=quota))
        clients.append(client)
        quotas.append(quota)
    return Nodes(gates, clients, quotas)


async def test_one_script_call_per_recipient_and_per_ses_api_request(
        redis_server: RedisServer, make_store: Stores) -> None:
    clock = FakeClock()
    nodes = await _nodes(redis_server, make_store, clock,
                         Credential("acme", max_24h_send=150, max_send_rate=20))
    try:
        for i in range(2):  # each node loads the script once (EVALSHA, NOSCRIPT, LOAD)
            txn = nodes.begin(i)
            assert await nodes.gates[i].recipient_shared(txn, "warm@example.com") is None
            nodes.gates[i].accepted(txn)
        calls = [c.calls for c in nodes.clients]
        before = _commands(redis_server)
        # 20 SMTP transactions of 3 recipients, alternating between the nodes
        for i in range(20):
            txn = nodes.begin(i)
            for j in range(3):
                assert await nodes.gates[i % 2].recipient_shared(txn, f"u{i}.{j}@x.test") \
                    is None
            nodes.gates[i % 2].accepted(txn)
            clock.advance(1)
        smtp = _delta(before, _commands(redis_server))
        assert smtp.get("evalsha") == 60, smtp
        assert set(smtp) - {"evalsha"} <= INSIDE_SCRIPTS, smtp
        assert sum(c.calls for c in nodes.clients) - sum(calls) == 60

        # 10 SES API requests of 3 recipients: one call each
        before = _commands(redis_server)
        for i in range(10):
            txn = nodes.begin(i)
            assert await nodes.gates[i % 2].recipients_shared(
                txn, [f"api{i}.{j}@x.test" for j in range(3)]) is None
            nodes.gates[i % 2].accepted(txn)
            clock.advance(1)
        api = _delta(before, _commands(redis_server))
        assert api.get("evalsha") == 10, api
        assert set(api) - {"evalsha"} <= INSIDE_SCRIPTS, api

        # RSET of a transaction of 3 recipients: one call gives all three back
        txn = nodes.begin(0)
        for j in range(3):
            assert await nodes.gates[0].recipient_shared(txn, f"rset{j}@x.test") is None
        before, calls_a = _commands(redis_server), nodes.clients[0].calls
        txn.release()
        await nodes.quotas[0].drain()
        back = _delta(before, _commands(redis_server))
        # (the release script's first use: its NOSCRIPT answer, SCRIPT LOAD, EVALSHA again)
        assert back.get("evalsha", 0) - back.get("script|load", 0) == 1, back
        assert nodes.clients[0].calls - calls_a == 1

        # 2 + 60 + 30 recipients accepted: the cluster's figure, whichever node asks
        for quota in nodes.quotas:
            assert await quota.sent_last_24h("acme") == (92, True)
    finally:
        await nodes.close()


async def test_all_or_nothing_across_the_windows_of_both_scopes(
        redis_server: RedisServer, make_store: Stores) -> None:
    """The credential's 24 h quota (5) runs out before the tenant's: the refused recipient
    takes nothing from the tenant's windows either; the rate refuses before the quota and
    takes nothing then; an SES API request that does not fit takes nothing at all."""
    clock = FakeClock()
    nodes = await _nodes(redis_server, make_store, clock,
                         Credential("acme", max_24h_send=5, max_send_rate=3))
    try:
        answers = []
        for i in range(8):
            txn = nodes.begin(i)
            answers.append(await nodes.gates[i % 2].recipient_shared(txn, f"u{i}@x.test"))
            if answers[-1] is None:
                nodes.gates[i % 2].accepted(txn)
            clock.advance(1)
        assert answers == [None] * 5 + [DAILY_QUOTA_EXCEEDED] * 3
        assert await nodes.quotas[1].sent_last_24h("acme") == (5, True)

        clock.advance(86400)  # a new day: the rate (3 a second) refuses the 4th
        got = []
        for i in range(5):
            txn = nodes.begin(i)
            got.append(await nodes.gates[i % 2].recipient_shared(txn, f"r{i}@x.test"))
        assert got == [None] * 3 + [RATE_EXCEEDED] * 2
        clock.advance(1.2)
        # four recipients at once are more than the rate allows in a second: none taken
        txn = nodes.begin(0)
        assert await nodes.gates[0].recipients_shared(
            txn, [f"m{j}@x.test" for j in range(4)]) == RATE_EXCEEDED
        assert await nodes.quotas[0].sent_last_24h("acme") == (3, True)
        assert await nodes.gates[0].recipients_shared(
            txn, [f"m{j}@x.test" for j in range(2)]) is None
        assert await nodes.quotas[1].sent_last_24h("acme") == (5, True)
    finally:
        await nodes.close()


async def test_sent_last_24_hours_while_redis_is_unreachable_is_this_nodes_figure(
        redis_server: RedisServer, make_store: Stores) -> None:
    clock = FakeClock()
    nodes = await _nodes(redis_server, make_store, clock,
                         Credential("acme", max_24h_send=100))
    try:
        for i in range(6):
            txn = nodes.begin(i)
            assert await nodes.gates[i % 2].recipient_shared(txn, f"u{i}@x.test") is None
            nodes.gates[i % 2].accepted(txn)
        assert await nodes.quotas[0].sent_last_24h("acme") == (6, True)
        redis_server.stop()
        clock.advance(2)
        for _ in range(4):  # node a alone, on its local share
            txn = nodes.begin(0)
            assert await nodes.gates[0].recipient_shared(txn, "down@x.test") is None
            nodes.gates[0].accepted(txn)
        # what Redis last told it (6) and what it accepted since (4)
        assert await nodes.quotas[0].sent_last_24h("acme") == (10, False)
    finally:
        await nodes.close()


async def test_a_platform_credentials_message_is_counted_in_redis_at_data(
        redis_server: RedisServer, make_store: Stores) -> None:
    """A credential allowed several tenants names the message's tenant (X-SES-TENANT) at
    DATA: its recipients are reserved in that tenant's shared quota (4 a day for beta),
    all at once in one call; two nodes together accept 4, not 4 each."""
    clock = FakeClock()
    nodes = await _nodes(redis_server, make_store, clock,
                         Credential("acme", allowed_tenants=["acme", "beta"]))
    try:
        before = _commands(redis_server)
        answers = []
        for i in range(4):
            txn = nodes.begin(i)
            assert txn.deferred
            answers.append(await nodes.gates[i % 2].settle_tenant_shared(
                txn, "beta", [f"a{i}@x.test", f"b{i}@x.test"]))
            if answers[-1] is None:
                assert txn.tenant == "beta"
                nodes.gates[i % 2].accepted(txn)
        assert answers == [None, None, DAILY_QUOTA_EXCEEDED, DAILY_QUOTA_EXCEEDED]
        calls = _delta(before, _commands(redis_server))
        assert calls.get("evalsha", 0) - calls.get("script|load", 0) == 4, calls
        assert await nodes.quotas[1].sent_last_24h("beta") == (4, True)
    finally:
        await nodes.close()
