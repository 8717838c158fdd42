"""SentLast24Hours in the operator's views with [cluster]: the admin API's tenant view
(`GET /api/tenants/{name}`, `GET /api/tenants`) and `relay tenant show` on node B count
the recipients node A accepted for the tenant (its rolling 24 h window in Redis, as the
SES API's GetAccount does), not node B's own book; with Redis unreachable they answer
this node's figure, and the CLI says so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
from clusterkit import node_config

from relay.admin.api import AdminContext
from relay.admin.metrics import Metrics
from relay.admin.server import AdminServer
from relay.admin.tokens import TokenStore
from relay.clock import SystemClock
from relay.cluster.node import ClusterNode
from relay.config.cluster import Cluster
from relay.config.load import load
from relay.config.types import Address
from relay.events.log import EventLog
from relay.queue.store import QueueStore
from relay.tenants.quota import Cap, Limits
from relay.tenants.store import TenantStore
from relay.testing.process import run_cli
from relay.testing.redisserver import RedisServer
from relay.users import UserStore


def _show(config: Path) -> dict[str, Any]:
    done = run_cli("tenant", "show", "acme", "--json", config=config)
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


async def test_tenant_view_and_cli_count_every_nodes_recipients(
        tmp_path: Path, redis_server: RedisServer) -> None:
    clock = SystemClock()
    config_b = node_config(tmp_path, "node-b", redis_server.url)
    cfg_b = load(config_b)
    store = QueueStore(cfg_b.state_path / "queue", clock)
    await store.start()
    await TenantStore(store, clock).write(TenantStore(store, clock).add_op(
        "acme", sandbox=False))
    node_a = ClusterNode(Cluster(redis_url=redis_server.url, node_id="node-a"), clock,
                         state_dir=tmp_path / "node-a", queue_depth=lambda: 0)
    node_b = ClusterNode(cfg_b.cluster, clock, state_dir=cfg_b.state_path,
                         queue_depth=lambda: 0)
    tokens = TokenStore(cfg_b.state_path / "admin_tokens.json")
    token = tokens.add("tests")
    events = EventLog(cfg_b.state_path / "events.jsonl", clock)
    ctx = AdminContext(config=lambda: cfg_b, store=store,
                       users=UserStore(cfg_b.state_path / "users.json"), tokens=tokens,
                       events=events, metrics=Metrics(), clock=clock, cluster=node_b)
    server = AdminServer(ctx, Address("127.0.0.1", 0))
    await server.start()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))

    async def get(path: str) -> Any:
        async with session.get(f"http://127.0.0.1:{server.port}{path}",
                               headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
            return await resp.json()

    try:
        # node A accepts 5 recipients for the tenant (its SMTP or SES API gate's call)
        got = await node_a.quota.reserve_many("acme", "", Limits(Cap()), [False] * 5)
        assert not isinstance(got, Exception) and isinstance(got, list)
        for reservation in got:
            reservation.commit()
        shown = await get("/api/tenants/acme")
        assert shown["Tenant"]["SendQuota"]["SentLast24Hours"] == 5
        listed = await get("/api/tenants")
        assert {t["TenantName"]: t["SendQuota"]["SentLast24Hours"]
                for t in listed["Tenants"]}["acme"] == 5
        cli = _show(config_b)
        assert (cli["sent_last_24_hours"], cli["sent_last_24_hours_scope"]) == (5, "cluster")

        # Redis unreachable: node B's figure (Redis last said 5), no error; the CLI, a
        # process of its own that never heard from Redis, this node's spool's count
        redis_server.stop()
        shown = await get("/api/tenants/acme")
        assert shown["Tenant"]["SendQuota"]["SentLast24Hours"] == 5
        cli = _show(config_b)
        assert (cli["sent_last_24_hours"], cli["sent_last_24_hours_scope"]) == (0, "node")
        text = run_cli("tenant", "show", "acme", config=config_b)
        assert text.returncode == 0, text.stderr
        assert "SentLast24Hours:  0 (this node only: redis unreachable)" in text.stdout
    finally:
        await session.close()
        await server.stop()
        events.close()
        await store.close()
        for node in (node_a, node_b):
            await node.client.close()
