"""This process as a cluster node: its Redis client, heartbeat, shared limits and flag view,
started and stopped together by relay/app.py when [cluster] redis_url is set (the only
place that imports relay.cluster in a running server)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import msgspec

from relay.clock import Clock
from relay.cluster.client import ClusterClient, ClusterCollector, ClusterUnavailable
from relay.cluster.digests import file_digests
from relay.cluster.flags import SharedFlags
from relay.cluster.limits import SharedLimits
from relay.cluster.nodes import Heartbeat
from relay.cluster.quota import SharedQuota
from relay.cluster.shaping import SharedShaping
from relay.cluster.suppression import SuppressionReplica
from relay.cluster.warmup import SharedWarmup
from relay.config.cluster import Cluster
from relay.queue.store import QueueStore
from relay.tenants.model import StatusRecord

log = logging.getLogger("relay.cluster")


async def publish_status_once(cfg: Cluster, scope: str, record: StatusRecord | None,
                              clock: Clock) -> bool:
    """`ClusterNode.publish_status` through a short-lived connection (the CLI)."""
    client = ClusterClient(cfg, clock)
    try:
        flags = SharedFlags(client, clock)
        await flags.set_scope_status(
            scope, None if record is None else msgspec.json.encode(record).decode())
    except ClusterUnavailable:
        return False
    finally:
        await client.close()
    return True


class ClusterNode:
    def __init__(self, cfg: Cluster, clock: Clock, *, state_dir: Path,
                 queue_depth: Callable[[], int], store: QueueStore | None = None,
                 workers: int = 1, first: bool = True) -> None:
        """`store`: the node's spool, whose suppression lists follow the cluster's (None:
        no copy kept, e.g. a test of the other parts). `workers`: the processes of this
        node (server.workers), each with its own connection and local share; `first`:
        this is the node's first (or only) worker."""
        self.client = ClusterClient(cfg, clock)
        self.heartbeat = Heartbeat(self.client, clock, queue_depth=queue_depth,
                                   digests=lambda: file_digests(state_dir))
        # While Redis is away each process of each live node takes its share.
        self.limits = SharedLimits(self.client, clock,
                                   lambda: self.heartbeat.live_count * max(1, workers))
        self.heartbeat.limits = self.limits
        self.flags = SharedFlags(self.client, clock)
        self.collector = ClusterCollector(self.client)
        self.quota = SharedQuota(self.limits)
        # Warm-up counts, plan progress and restrictions per IP x provider (the shaper
        # attaches to it: relay/wiring.py).
        self.warmup = SharedWarmup(self.client, clock,
                                   lambda: self.heartbeat.live_count * max(1, workers),
                                   self.flags)
        # Provider/site rates and connection leases (relay/wiring.py hands it to the
        # shaper and the SMTP client).
        self.shaping = SharedShaping(self.client, clock, self.limits,
                                     ttl=float(cfg.lease_ttl), wait=float(cfg.lease_wait))
        # The workers of a node share one spool: the first alone copies other nodes'
        # suppression changes into it; every worker shares its own.
        self._publishing: set[asyncio.Task[None]] = set()  # automatic pauses going out
        self.suppression = (SuppressionReplica(self.flags, store, copy=workers <= 1 or first)
                            if store is not None else None)

    def shared_status(self, scope: str) -> StatusRecord | None:
        """The status an operator set for `scope` on any node (pause), from the flag
        view; None when none is set cluster-wide."""
        raw = self.flags.scope_status(scope)
        if raw is None:
            return None
        try:
            return msgspec.json.decode(raw, type=StatusRecord)
        except msgspec.DecodeError:
            return None

    async def publish_status(self, scope: str, record: StatusRecord | None) -> bool:
        """An operator's pause or resume of `scope` (its new record; None removes the
        cluster-wide record), to every node; False when Redis is unreachable (the change
        holds on this node only)."""
        try:
            await self.flags.set_scope_status(
                scope, None if record is None else msgspec.json.encode(record).decode())
        except ClusterUnavailable:
            return False
        return True

    def publish_pause(self, scope: str, old: StatusRecord, new: StatusRecord) -> None:
        """A ReputationMonitor observer: an automatic pause of `scope` (its bounce or
        complaint rate on this node's mail) stops every node within a second, as an
        operator's does. Only pauses go out: the other nodes' monitors keep their own
        records, and the newer of a node's record and the published one decides whether it
        is paused (relay.tenants.store.TenantStore.paused); a resume is the operator's,
        published by `relay tenant resume` as usual. Runs in the background (the monitor's
        observers are synchronous)."""
        if not new.paused or old.paused:
            return
        task = asyncio.get_running_loop().create_task(self._publish_pause(scope, new))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish_pause(self, scope: str, record: StatusRecord) -> None:
        if not await self.publish_status(scope, record):
            log.warning("cluster: the automatic pause of %s holds on this node only: "
                        "redis is unreachable", scope)

    async def start(self, heartbeat: bool = True) -> None:
        """Start the flag subscription and the heartbeat (`heartbeat` False: a worker
        other than a node's first only reads the live node list). Redis need not be up:
        the node runs on its local shares until it answers."""
        with contextlib.suppress(ClusterUnavailable):
            await self.heartbeat.once(write=heartbeat)
        self.heartbeat.start(write=heartbeat)
        self.flags.start()
        self.shaping.start()

    async def stop(self) -> None:
        if self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)
        await self.quota.drain()
        await self.warmup.drain()
        await self.shaping.stop()
        if self.suppression is not None:
            await self.suppression.drain()
        await self.flags.stop()
        await self.heartbeat.stop()
        await self.client.close()
