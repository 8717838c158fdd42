"""This process as a cluster node: its Redis client, heartbeat, shared limits and flag view,
started and stopped together by relay/app.py when [cluster] redis_url is set (the only
place that imports relay.cluster in a running server)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from relay.clock import Clock
from relay.cluster.client import ClusterClient, ClusterCollector, ClusterUnavailable
from relay.cluster.digests import file_digests
from relay.cluster.flags import SharedFlags
from relay.cluster.limits import SharedLimits
from relay.cluster.nodes import Heartbeat
from relay.cluster.quota import SharedQuota
from relay.config.cluster import Cluster


class ClusterNode:
    def __init__(self, cfg: Cluster, clock: Clock, *, state_dir: Path,
                 queue_depth: Callable[[], int]) -> None:
        self.client = ClusterClient(cfg, clock)
        self.heartbeat = Heartbeat(self.client, clock, queue_depth=queue_depth,
                                   digests=lambda: file_digests(state_dir))
        self.limits = SharedLimits(self.client, clock, lambda: self.heartbeat.live_count)
        self.heartbeat.limits = self.limits
        self.flags = SharedFlags(self.client, clock)
        self.collector = ClusterCollector(self.client)
        self.quota = SharedQuota(self.limits)

    async def start(self) -> None:
        """Start the heartbeat and the flag subscription. Redis need not be up: the node
        runs on its local shares until it answers."""
        with contextlib.suppress(ClusterUnavailable):
            await self.heartbeat.once()
        self.heartbeat.start()
        self.flags.start()

    async def stop(self) -> None:
        await self.quota.drain()
        await self.flags.stop()
        await self.heartbeat.stop()
        await self.client.close()
