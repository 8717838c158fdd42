"""Each node's heartbeat in Redis and the live node list.

A heartbeat is a hash per node (node_id, pid, version, queue depth, started, last seen,
the digests of its distributed files) that expires after node_ttl, and the node's score
(last seen) in a sorted set of nodes. Live nodes: those seen within node_ttl. The count
last seen is what the local shares divide by while Redis is unreachable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from relay import __version__ as VERSION
from relay.clock import Clock
from relay.cluster.client import ClusterClient, ClusterUnavailable
from relay.cluster.limits import SharedLimits

log = logging.getLogger("relay.cluster")


class Heartbeat:
    def __init__(self, client: ClusterClient, clock: Clock, *,
                 queue_depth: Callable[[], int] = lambda: 0,
                 digests: Callable[[], dict[str, str]] = dict) -> None:
        self.client = client
        self.clock = clock
        self.queue_depth = queue_depth
        self.digests = digests
        self.started = clock.now()
        self.live_count = 1  # the live nodes last seen (this one, until Redis says)
        self.limits: SharedLimits | None = None  # reconciled on each beat when set
        self._task: asyncio.Task[None] | None = None
        self._writes = True

    def _node_key(self, node: str) -> str:
        return self.client.key("node", node)

    async def beat(self) -> None:
        """Write this node's heartbeat (ClusterUnavailable when Redis does not answer)."""
        # Both read the disk (the spool's recipients, the distributed files): off the loop.
        depth = await asyncio.to_thread(self.queue_depth)
        digests = await asyncio.to_thread(self.digests)
        now = self.clock.now()
        ttl_ms = int(self.client.cfg.node_ttl * 1000)
        fields = {"node_id": self.client.node_id, "pid": os.getpid(), "version": VERSION,
                  "queue_depth": depth, "started": round(self.started, 3),
                  "last_seen": round(now, 3),
                  "latency_ms": round((self.client.latency or 0.0) * 1000, 3),
                  "digests": json.dumps(digests, sort_keys=True)}
        node_key = self._node_key(self.client.node_id)
        nodes_key = self.client.key("nodes")

        async def write(r: Any) -> None:
            async with r.pipeline(transaction=True) as p:
                p.hset(node_key, mapping=fields)
                p.pexpire(node_key, ttl_ms)
                p.zadd(nodes_key, {self.client.node_id: now})
                p.zremrangebyscore(nodes_key, "-inf", now - 10 * self.client.cfg.node_ttl)
                await p.execute()

        await self.client.call(write)

    async def live(self) -> list[dict[str, Any]]:
        """The nodes seen within node_ttl, each its heartbeat fields, by node id."""
        now = self.clock.now()
        ids = await self.client.call(lambda r: r.zrangebyscore(
            self.client.key("nodes"), now - self.client.cfg.node_ttl, "+inf"))
        names = sorted(i.decode() if isinstance(i, bytes) else str(i) for i in ids)

        async def read(r: Any) -> list[Any]:
            async with r.pipeline(transaction=False) as p:
                for name in names:
                    p.hgetall(self._node_key(name))
                return list(await p.execute())

        rows = await self.client.call(read)
        out = []
        for name, raw in zip(names, rows, strict=True):
            if not raw:
                continue  # its hash expired between the two reads
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            row: dict[str, Any] = {"node_id": name}
            for key in ("pid", "queue_depth"):
                row[key] = int(fields.get(key, "0"))
            for key in ("started", "last_seen", "latency_ms"):
                row[key] = float(fields.get(key, "0"))
            row["version"] = fields.get("version", "")
            try:
                row["digests"] = json.loads(fields.get("digests", "{}"))
            except ValueError:
                row["digests"] = {}
            out.append(row)
        self.live_count = max(1, len(out))
        return out

    async def once(self, write: bool = True) -> None:
        """One round: heartbeat (`write`), live list, and the counts owed since Redis was
        away."""
        if write:
            await self.beat()
        await self.live()
        if self.limits is not None and len(self.limits.ledger):
            await self.limits.reconcile()

    def start(self, write: bool = True) -> None:
        """Beat every `heartbeat`; `write` False (a worker other than a node's first):
        only read the live node list and reconcile."""
        self._writes = write
        self._task = asyncio.create_task(self._loop(write), name="cluster-heartbeat")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if not self._writes:
            return  # another worker of this node writes (and removes) the heartbeat
        try:  # leave the live list now rather than after node_ttl
            await self.client.call(lambda r: r.zrem(self.client.key("nodes"),
                                                    self.client.node_id))
            await self.client.call(lambda r: r.delete(self._node_key(self.client.node_id)))
        except ClusterUnavailable:
            pass

    async def _loop(self, write: bool) -> None:
        while True:
            try:
                await self.once(write)
            except ClusterUnavailable:
                pass  # logged by the client once per outage; the local shares hold
            except Exception:
                log.exception("cluster heartbeat failed")
            await self.clock.sleep(self.client.cfg.heartbeat)
