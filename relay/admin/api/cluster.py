"""/api/cluster: the cluster as Redis sees it (as `relay cluster status`): live nodes with
their queue depth and version, this node's Redis round trip, which node holds which
connection leases, and the nodes whose distributed files differ from the others'. With
no [cluster], {"configured": false, ...}; with Redis unreachable, "redis_up": false and
the error (HTTP 200 both: the answer describes the cluster, it is not a failure of the
API)."""

from __future__ import annotations

from aiohttp import web

from relay.admin.api.common import _json
from relay.admin.api.context import _ctx


async def cluster(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    cfg = ctx.config().cluster
    if not cfg.enabled:
        return _json({"configured": False,
                      "message": "cluster not configured (no [cluster] redis_url): "
                                 "a single node"})
    # Imported here: with no [cluster] the admin API never loads redis.
    from relay.cluster.status import cluster_status, status_from_config

    if ctx.cluster is not None:
        return _json(await cluster_status(ctx.cluster.client, ctx.clock))
    return _json(await status_from_config(cfg, ctx.clock))
