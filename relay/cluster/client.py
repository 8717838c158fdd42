"""The Redis connection of a node: built from [cluster] redis_url (redis://, rediss://,
unix://, and redis+sentinel:// parsed here into redis-py's Sentinel), with the connect and
command timeouts. Every call goes through `ClusterClient.call`, so whatever goes wrong
(refused, reset, timeout, a failover in progress) reaches the caller as one
ClusterUnavailable, `up` turns false (logged once per change) and the metric
relay_cluster_redis_up says 0 until a call succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import redis.asyncio as aioredis
from prometheus_client.core import GaugeMetricFamily, Metric
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from relay.clock import Clock
from relay.config.cluster import Cluster, parse_sentinel_url

log = logging.getLogger("relay.cluster")
T = TypeVar("T")
# Connections to Redis per node; calls beyond it wait their turn in ClusterClient (a full
# pool is not an outage: redis-py would raise MaxConnectionsError).
MAX_CONNECTIONS = 32
# After a failed call, calls fail at once (the local share decides) for this long, then
# one tries again: a Redis that is black-holed costs one timeout per interval, not one per
# recipient.
RETRY_INTERVAL = 1.0


class ClusterUnavailable(Exception):
    """Redis did not answer (in time): the caller falls back to its local share."""


def connect(cfg: Cluster) -> aioredis.Redis:
    """A redis.asyncio client for `cfg.redis_url` (bytes replies; nothing connects yet)."""
    timeouts: dict[str, Any] = {"socket_timeout": cfg.command_timeout,
                                "socket_connect_timeout": cfg.connect_timeout}
    pool: dict[str, Any] = {"max_connections": MAX_CONNECTIONS}
    if cfg.redis_url.startswith("redis+sentinel://"):
        url = parse_sentinel_url(cfg.redis_url)
        sentinel = Sentinel(url.hosts, sentinel_kwargs=dict(timeouts), **timeouts)
        client: aioredis.Redis = sentinel.master_for(url.service, db=url.db,
                                                     password=url.password, **pool)
        return client
    return aioredis.Redis.from_url(cfg.redis_url, **timeouts, **pool)


class ClusterClient:
    """One node's Redis: `call()` every command or script through it."""

    def __init__(self, cfg: Cluster, clock: Clock,
                 redis: aioredis.Redis | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.prefix = cfg.key_prefix
        self.node_id = cfg.node_name()
        self.redis = redis if redis is not None else connect(cfg)
        self.up = False
        self.latency: float | None = None  # the last call's round trip, seconds
        self.failures = 0
        # Round trips asked of Redis (a pipeline or a script is one), answered or not: what
        # a message costs (the tests and bench/cluster_limits.py count them).
        self.calls = 0
        self._on_up: list[Callable[[], None]] = []
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._failed_at: float | None = None  # clock.monotonic() of the last failure

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def on_up(self, callback: Callable[[], None]) -> None:
        """`callback()` each time Redis answers again after being unreachable."""
        self._on_up.append(callback)

    async def call(self, make: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """`await make(redis)`, bounded by the command timeout; ClusterUnavailable when
        Redis does not answer, or at once within RETRY_INTERVAL of the last failure."""
        if (self._failed_at is not None
                and self.clock.monotonic() - self._failed_at < RETRY_INTERVAL):
            raise ClusterUnavailable("redis: unreachable (retrying within a second)")
        async with self._slots:
            self.calls += 1
            started = time.monotonic()
            try:
                result = await asyncio.wait_for(
                    make(self.redis), self.cfg.command_timeout + self.cfg.connect_timeout)
            except (RedisError, OSError, TimeoutError) as e:
                self._down(e)
                raise ClusterUnavailable(f"redis: {type(e).__name__}: {e}") from None
            # A measurement of the network, not a policy decision: the real clock.
            self.latency = max(0.0, time.monotonic() - started)
            self._failed_at = None
        if not self.up:
            self.up = True
            log.info("cluster: redis reachable (%s)", self.node_id)
            for callback in self._on_up:
                callback()
        return result

    def _down(self, error: BaseException) -> None:
        self.failures += 1
        self._failed_at = self.clock.monotonic()
        if self.up or self.failures == 1:
            log.warning("cluster: redis unreachable, using local shares: %s: %s",
                        type(error).__name__, error)
        self.up = False

    async def ping(self) -> float:
        """Round-trip seconds of a PING (ClusterUnavailable when none)."""
        await self.call(lambda r: r.ping())
        return self.latency or 0.0

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.redis.aclose()


class ClusterCollector:
    """relay_cluster_redis_up and relay_cluster_redis_latency_seconds, read at scrape time
    (registered in the node's metrics registry when [cluster] is set)."""

    def __init__(self, client: ClusterClient) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("relay_cluster_redis_up",
                               "1 when this node's last Redis call succeeded, else 0")
        up.add_metric([], 1.0 if self.client.up else 0.0)
        yield up
        latency = GaugeMetricFamily("relay_cluster_redis_latency_seconds",
                                    "Round trip of this node's last successful Redis call")
        latency.add_metric([], self.client.latency or 0.0)
        yield latency
