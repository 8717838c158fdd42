"""Flags every node must see at once: the status/pause of tenants, configuration sets and
source IPs (a full local view), and the suppression list (too big to mirror: a bounded
read cache). Redis holds them (one hash per kind, authoritative); a change, made on any
node through `set()`, is written and PUBLISHed in one script, and every node's
subscriber applies it to its view (the pause reaches all nodes within a second).

While the subscription is down the view may be stale: it is reloaded whole, and the
suppression cache emptied, every time the subscription is (re)established.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from relay.clock import Clock
from relay.cluster.client import ClusterClient
from relay.cluster.scripts import Scripts

log = logging.getLogger("relay.cluster")
VIEW_KINDS = ("tenant", "configset", "ip")
SUPPRESSION = "suppression"
CACHE_SIZE = 50_000
# (kind, name, value or None, node that made the change: "" when not known)
Listener = Callable[[str, str, str | None, str], None]


async def _hgetall(r: Any, key: str) -> dict[bytes, bytes]:
    return dict(await r.hgetall(key))


# Status scopes (relay.tenants.model) -> flag kinds.
SCOPE_KINDS = {"tenant:": "tenant", "configuration-set:": "configset"}


def scope_flag(scope: str) -> tuple[str, str]:
    """(kind, name) of the flag of a status scope ("tenant:acme" -> ("tenant", "acme"))."""
    for prefix, kind in SCOPE_KINDS.items():
        if scope.startswith(prefix):
            return kind, scope[len(prefix):]
    raise ValueError(f"not a status scope: {scope!r}")


class SharedFlags:
    def __init__(self, client: ClusterClient, clock: Clock) -> None:
        self.client = client
        self.clock = clock
        self.scripts = Scripts(client.redis)
        self.channel = client.key("changes")
        self.view: dict[str, dict[str, str]] = {k: {} for k in VIEW_KINDS}
        self._cache: OrderedDict[str, str | None] = OrderedDict()
        self._listeners: list[Listener] = []
        self._reload_listeners: list[Callable[[], None]] = []
        self.ready = asyncio.Event()  # set once the first view is loaded
        self._task: asyncio.Task[None] | None = None

    def _hash(self, kind: str) -> str:
        return self.client.key("flags", kind)

    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def on_reload(self, listener: Callable[[], None]) -> None:
        """`listener()` each time the view was reloaded whole (the subscription began)."""
        self._reload_listeners.append(listener)

    def get(self, kind: str, name: str) -> str | None:
        """The flag of `name` in this node's view (no Redis call)."""
        return self.view[kind].get(name)

    def scope_status(self, scope: str) -> str | None:
        """The shared status of a status scope (relay.tenants.model), or None."""
        kind, name = scope_flag(scope)
        return self.get(kind, name)

    async def set_scope_status(self, scope: str, value: str | None) -> None:
        kind, name = scope_flag(scope)
        await self.set(kind, name, value)

    async def set(self, kind: str, name: str, value: str | None) -> None:
        """Set (None: remove) a flag cluster-wide and announce it to every node."""
        if kind not in VIEW_KINDS and kind != SUPPRESSION:
            raise ValueError(f"unknown flag kind {kind!r}")
        message = json.dumps({"kind": kind, "name": name, "value": value,
                              "node": self.client.node_id})
        keys = [self._hash(kind)]
        args = [name, value or "", self.channel, message]
        await self.client.call(lambda r: self.scripts.flag_set(keys=keys, args=args))
        self._apply(kind, name, value, self.client.node_id)

    async def suppressed(self, address: str) -> str | None:
        """The suppression entry of `address` (None: not suppressed): from the cache,
        else Redis (ClusterUnavailable when it cannot say)."""
        address = address.lower()
        if address in self._cache:
            self._cache.move_to_end(address)
            return self._cache[address]
        raw = await self.client.call(lambda r: r.hget(self._hash(SUPPRESSION), address))
        value = raw.decode() if isinstance(raw, bytes) else raw
        self._cache_put(address, value)
        return value

    def _cache_put(self, address: str, value: str | None) -> None:
        self._cache[address] = value
        self._cache.move_to_end(address)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    def _apply(self, kind: str, name: str, value: str | None, node: str) -> None:
        if kind == SUPPRESSION:
            self._cache.pop(name.lower(), None)
        elif kind in self.view:
            if value is None:
                self.view[kind].pop(name, None)
            else:
                self.view[kind][name] = value
        for listener in self._listeners:
            listener(kind, name, value, node)

    async def _load(self) -> None:
        for kind in VIEW_KINDS:
            key = self._hash(kind)
            raw = await self.client.call(functools.partial(_hgetall, key=key))
            self.view[kind] = {k.decode(): v.decode() for k, v in raw.items()}
        self._cache.clear()
        for listener in self._reload_listeners:
            listener()

    def start(self) -> None:
        self._task = asyncio.create_task(self._subscribe_loop(), name="cluster-flags")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _subscribe_loop(self) -> None:
        while True:
            pubsub = self.client.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                await self._load()  # after subscribing: no change falls between the two
                self.ready.set()
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True,
                                                   timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        self._handle(msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis down, or ClusterUnavailable from _load
                if not isinstance(e, RedisError | OSError):
                    log.debug("cluster: flag subscription: %s", e)
                self._cache.clear()
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await self.clock.sleep(1.0)

    def _handle(self, data: bytes | str) -> None:
        try:
            change = json.loads(data)
            kind, name, value = change["kind"], change["name"], change["value"]
            node = change.get("node", "")
        except (ValueError, KeyError, TypeError):
            log.warning("cluster: ignored a malformed change message")
            return
        if isinstance(kind, str) and isinstance(name, str) and isinstance(node, str) and (
                value is None or isinstance(value, str)):
            self._apply(kind, name, value, node)
