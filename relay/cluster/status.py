"""What `relay cluster status` and GET /api/cluster show: the live nodes (heartbeat), their
queue depth and version, this node's Redis round trip, which node holds which connection
leases, and the nodes whose distributed files differ from the others' copies."""

from __future__ import annotations

import functools
from typing import Any

from relay.clock import Clock, SystemClock
from relay.cluster.client import ClusterClient, ClusterUnavailable
from relay.cluster.digests import differing
from relay.cluster.nodes import Heartbeat
from relay.config.cluster import Cluster

NOT_CONFIGURED = {"configured": False,
                  "message": "cluster not configured (no [cluster] redis_url): a single node"}


async def _live_leases(r: Any, key: str, now: float) -> list[tuple[bytes, float]]:
    return list(await r.zrangebyscore(key, int(now * 1000) + 1, "+inf", withscores=True))


async def _holders(r: Any, key: str) -> dict[bytes, bytes]:
    return dict(await r.hgetall(key))


async def leases(client: ClusterClient, now: float) -> list[dict[str, Any]]:
    """[{site, node, lease, expires}] of the leases not yet expired."""
    members = await client.call(lambda r: r.smembers(client.key("lease-sites")))
    sites = sorted(s.decode() if isinstance(s, bytes) else str(s) for s in members)
    out = []
    for site in sites:
        base = client.key("lease", site)
        held = await client.call(functools.partial(_live_leases, key=base, now=now))
        holders = await client.call(functools.partial(_holders, key=base + ":holders"))
        for lease, expires in held:
            node = holders.get(lease, b"?").decode()
            out.append({"site": site, "node": node, "lease": lease.decode(),
                        "expires": round(expires / 1000, 3)})
    return out


async def cluster_status(client: ClusterClient, clock: Clock) -> dict[str, Any]:
    try:
        latency = await client.ping()
        nodes = await Heartbeat(client, clock).live()
        held = await leases(client, clock.now())
    except ClusterUnavailable as e:
        return {"configured": True, "redis_up": False, "error": str(e),
                "node_id": client.node_id}
    differ = differing({n["node_id"]: n["digests"] for n in nodes})
    for node in nodes:
        node["differs"] = differ.get(node["node_id"], [])
        node["leases"] = sum(1 for lease in held if lease["node"] == node["node_id"])
    return {"configured": True, "redis_up": True, "node_id": client.node_id,
            "redis_latency_ms": round(latency * 1000, 3), "nodes": nodes, "leases": held,
            "differing": differ}


async def status_from_config(cfg: Cluster, clock: Clock | None = None) -> dict[str, Any]:
    """The status read through a short-lived connection (the CLI; the admin API)."""
    if not cfg.enabled:
        return dict(NOT_CONFIGURED)
    client = ClusterClient(cfg, clock or SystemClock())
    try:
        return await cluster_status(client, client.clock)
    finally:
        await client.close()
