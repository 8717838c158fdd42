"""`redis_url = "redis+sentinel://..."` against a real Sentinel (redis-server --sentinel)
watching a real redis-server: two relay processes find the master through it and share a
tenant's daily quota; and a failover (the master killed, Sentinel promotes its replica):
each node's next call goes to the new master (redis-py asks Sentinel again), the count
the replica had is kept, and the quota holds to the last unit."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from clusterkit import node_config, start_all

from relay.clock import FakeClock
from relay.cluster.client import ClusterClient
from relay.cluster.limits import SharedLimits
from relay.cluster.quota import SharedQuota
from relay.config.cluster import Cluster
from relay.tenants.quota import Cap, Limits
from relay.tenants.refusals import Refusal
from relay.testing.redisserver import RedisSentinel, RedisServer
from relay.testing.require import require_program


def _until(what: Any, timeout: float = 15.0) -> None:
    """Wait (bounded) for `what()` to be true: Sentinel's own pace, not a duration test."""
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what.__doc__}"
        time.sleep(0.05)


@pytest.fixture
def master(tmp_path: Path) -> Iterator[RedisServer]:
    require_program("redis-server")
    server = RedisServer(tmp_path / "master").start()
    yield server
    server.stop()


def test_two_nodes_share_a_quota_through_sentinel(tmp_path: Path, master: RedisServer) -> None:
    with RedisSentinel(tmp_path / "sentinel", master) as sentinel:
        configs = [node_config(tmp_path, name, sentinel.url(), tenants={"max_24h_send": 12})
                   for name in ("node-a", "node-b")]
        procs = start_all(configs)
        try:
            codes = []
            for i in range(16):
                port = next(iter(procs[i % 2].ports.values()))
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                    s.ehlo("client.test")
                    s.mail("app@example.com")
                    code, _ = s.rcpt(f"u{i}@ok.test")
                    if code == 250:
                        code, _ = s.data(b"Subject: s\r\n\r\nx\r\n")
                    codes.append(code)
            assert codes == [250] * 12 + [454] * 4
            with redis.Redis(port=master.port) as r:  # the count is in the master
                assert int(r.hget("relay:sw:quota:tenant:default", "t") or 0) == 12
        finally:
            for p in procs:
                p.stop()


def _master_port(sentinel: RedisSentinel) -> int:
    with redis.Redis(port=sentinel.port) as s:
        _host, port = s.sentinel_get_master_addr_by_name(sentinel.service)
    return int(port)


async def test_a_failover_moves_the_nodes_to_the_new_master(
        tmp_path: Path, master: RedisServer) -> None:
    replica = RedisServer(tmp_path / "replica", replica_of=master).start()
    sentinel: RedisSentinel | None = None
    quotas: list[SharedQuota] = []
    try:
        def linked() -> bool:
            """the replica is in sync with the master"""
            with redis.Redis(port=replica.port) as r:
                return bool(r.info("replication").get("master_link_status") == "up")
        _until(linked)
        sentinel = RedisSentinel(tmp_path / "sentinel", master).start()
        watched = sentinel

        def knows_replica() -> bool:
            """Sentinel has found the replica, linked to its master"""
            with redis.Redis(port=watched.port) as s:
                found = s.sentinel_slaves(watched.service)
            return len(found) == 1 and not found[0].get("is_disconnected") \
                and found[0].get("master-link-status") == "ok"
        _until(knows_replica)

        clock = FakeClock()
        for name in ("node-a", "node-b"):
            client = ClusterClient(Cluster(redis_url=sentinel.url(), node_id=name), clock)
            quotas.append(SharedQuota(SharedLimits(client, clock, lambda: 2)))
        limits = Limits(Cap(max_24h_send=20))
        accepted = local = 0

        async def send(i: int) -> None:
            nonlocal accepted, local
            got = await quotas[i % 2].reserve("acme", "", limits)
            if not isinstance(got, Refusal):
                got.commit()
                accepted += 1
                local += sum(1 for r in got.held if not r.shared)

        for i in range(6):
            await send(i)
        assert accepted == 6
        with redis.Redis(port=master.port) as r:
            assert r.wait(1, 5000) == 1  # the replica has the 6 before it takes over
        master.stop()  # the master dies; Sentinel promotes the replica

        def moved() -> bool:
            """Sentinel names the replica as the master"""
            return _master_port(watched) == replica.port
        _until(moved)

        def promoted() -> bool:
            """the replica has become a master"""
            with redis.Redis(port=replica.port) as r:
                return bool(r.info("replication")["role"] == "master")
        _until(promoted)

        def settled() -> bool:
            """Sentinel's failover is over: its master is the replica, up, no failover
            in progress (what a client asking Sentinel for the master needs)"""
            with redis.Redis(port=watched.port, decode_responses=True) as s:
                state = s.sentinel_master(watched.service)
            return (int(state["port"]), state["flags"]) == (replica.port, "master")
        _until(settled)
        for i in range(6, 30):
            await send(i)
            clock.advance(0.6)
        assert accepted == 20  # the quota held across the failover
        # At most the one call per node on its connection to the dead master fails (that
        # recipient from the local share); the next asks Sentinel and finds the new master.
        assert local <= 2
        assert all(q.limits.client.failures <= 1 for q in quotas)
        for quota in quotas:
            assert await quota.sent_last_24h("acme") == (20, True)
        with redis.Redis(port=replica.port) as r:
            assert int(r.hget("relay:sw:quota:tenant:acme", "t") or 0) == 20
    finally:
        for quota in quotas:
            await quota.limits.client.close()
        if sentinel is not None:
            sentinel.stop()
        replica.stop()
