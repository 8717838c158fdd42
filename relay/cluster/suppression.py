"""The suppression list across the nodes of a cluster. Redis holds it (the hash
`flags:suppression`, field "TENANT\\0address", "" for the account-level list; value the
entry as JSON), every node keeps its copy in its own spool (relay/suppression/store.py),
which the scheduler reads before each attempt without a network call.

An address a node adds (a hard bounce) or removes is written to Redis and published in
one script; every other node applies the change to its copy as the message arrives
(within a second). Each time a node's subscription is (re)established it adds whatever
Redis has that its copy lacks (a removal published while it was cut off is not seen
until the address is removed again).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any

import msgspec

from relay.clock import Clock
from relay.cluster.client import ClusterClient, ClusterUnavailable
from relay.cluster.flags import SUPPRESSION, SharedFlags
from relay.config.cluster import Cluster
from relay.queue.store import QueueStore
from relay.suppression.store import Entry, SuppressionList

log = logging.getLogger("relay.cluster")
RESYNC_BATCH = 1000


async def _hscan(r: Any, key: str, cursor: int) -> tuple[int, dict[bytes, bytes]]:
    next_cursor, batch = await r.hscan(key, cursor, count=RESYNC_BATCH)
    return int(next_cursor), dict(batch)


def _field(tenant: str, address: str) -> str:
    return f"{tenant}\0{address.lower()}"


async def publish_once(cfg: Cluster, clock: Clock, tenant: str, entries: list[Entry],
                       removed: list[str]) -> bool:
    """Share an operator's suppression changes (the CLI) through a short-lived connection,
    pipelined by RESYNC_BATCH; False when Redis is unreachable."""
    client = ClusterClient(cfg, clock)
    flags = SharedFlags(client, clock)
    key = client.key("flags", SUPPRESSION)
    changes = ([(_field(tenant, e.address), json.dumps(msgspec.to_builtins(e)))
                for e in entries] + [(_field(tenant, a), "") for a in removed])
    try:
        for start in range(0, len(changes), RESYNC_BATCH):
            chunk = changes[start:start + RESYNC_BATCH]

            async def send(r: Any, chunk: list[tuple[str, str]] = chunk) -> None:
                async with r.pipeline(transaction=False) as p:
                    for name, value in chunk:
                        message = json.dumps({"kind": SUPPRESSION, "name": name,
                                              "value": value or None,
                                              "node": f"cli@{client.node_id}"})
                        await flags.scripts.flag_set(
                            keys=[key], args=[name, value, flags.channel, message], client=p)
                    await p.execute()

            await client.call(send)
    except ClusterUnavailable:
        return False
    finally:
        await client.close()
    return True


class SuppressionReplica:
    def __init__(self, flags: SharedFlags, store: QueueStore, copy: bool = True) -> None:
        """`copy` False: share this process's changes, but leave copying the others'
        into the spool to another process of the node (its first worker)."""
        self.flags = flags
        self.store = store
        self._tasks: set[asyncio.Task[Any]] = set()
        self.applied = 0  # changes from other nodes written to this node's copy
        if copy:
            flags.on_change(self._changed)
            flags.on_reload(self._reloaded)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ this node's changes

    def added(self, tenant: str, entries: list[Entry]) -> None:
        """Entries this node added to `tenant`'s list ("" the account's): to Redis and
        every node, in the background (the caller is a settle hook or a request)."""
        self._spawn(self.publish(tenant, entries, []))

    def removed(self, tenant: str, addresses: list[str]) -> None:
        self._spawn(self.publish(tenant, [], addresses))

    async def publish(self, tenant: str, entries: list[Entry], removed: list[str]) -> bool:
        """False when Redis is unreachable (the change stays on this node)."""
        try:
            for e in entries:
                await self.flags.set(SUPPRESSION, _field(tenant, e.address),
                                     json.dumps(msgspec.to_builtins(e)))
            for address in removed:
                await self.flags.set(SUPPRESSION, _field(tenant, address), None)
        except ClusterUnavailable:
            log.warning("cluster: suppression change not shared (redis unreachable)")
            return False
        return True

    # ------------------------------------------------------------ other nodes' changes

    def _changed(self, kind: str, name: str, value: str | None, node: str = "") -> None:
        if kind != SUPPRESSION or node == self.flags.client.node_id or not node:
            return
        self._spawn(self._apply(name, value))

    async def _apply(self, name: str, value: str | None) -> None:
        tenant, _, address = name.partition("\0")
        lst = SuppressionList(self.store, tenant)
        if value is None:
            await self.store.write(lst.remove_op([address]))
        else:
            try:
                entry = msgspec.convert(json.loads(value), Entry)
            except (ValueError, msgspec.ValidationError):
                log.warning("cluster: ignored a malformed suppression entry")
                return
            await self.store.write(lst.add_op([entry], replace=True))
        self.applied += 1

    def _reloaded(self) -> None:
        self._spawn(self.resync())

    async def resync(self) -> int:
        """Add what Redis lists and this node's copy lacks; the number added."""
        key = self.flags.client.key("flags", SUPPRESSION)
        cursor: int = 0
        added = 0
        try:
            while True:
                cursor, batch = await self.flags.client.call(
                    functools.partial(_hscan, key=key, cursor=cursor))
                by_tenant: dict[str, list[Entry]] = {}
                for raw_name, raw_value in batch.items():
                    tenant, _, _address = raw_name.decode().partition("\0")
                    try:
                        entry = msgspec.convert(json.loads(raw_value), Entry)
                    except (ValueError, msgspec.ValidationError):
                        continue
                    by_tenant.setdefault(tenant, []).append(entry)
                for tenant, entries in by_tenant.items():
                    added += await self.store.write(
                        SuppressionList(self.store, tenant).add_op(entries, replace=False))
                if not cursor:
                    break
        except ClusterUnavailable:
            return added
        return added

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
