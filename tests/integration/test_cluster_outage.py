"""Redis dies in the middle of a load and comes back: two real relay processes share a
tenant's daily quota of 200 on one real redis-server (an append-only file synced on every
write, as in production: SIGKILL is a crash, not a wipe), messages go over SMTP to both.

- before: the shared quota counts every acceptance;
- Redis killed: each node goes on alone on its local share, what was left of the quota
  when it last heard from Redis divided by the two live nodes, and answers SES's 454
  past it (node A is sent more than its share, node B less);
- Redis started again on the same port: each node adds what it accepted meanwhile once
  (the cluster's figure equals what was accepted) and the quota holds to the last unit;
- every accepted message reaches the sink, once: none lost.
"""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from clusterkit import node_config, start_all

from relay.testing.dnsserver import DnsServer
from relay.testing.factories import DnsServers
from relay.testing.redisserver import RedisServer
from relay.testing.require import require_program
from relay.testing.sink import Sink

QUOTA = 200
ZONE = {"ok.test": [("MX", "10 mx.ok.test")], "mx.ok.test": [("A", "127.0.0.2")]}
# The default tenant's rolling 24 h window (relay/cluster/quota.py) under the default prefix.
WINDOW_KEY = "relay:sw:quota:tenant:default"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require_program("redis-server")
    server = RedisServer(tmp_path / "redis", persist=True).start()
    yield server
    server.stop()


@pytest.fixture
def dns(dns_server: DnsServers) -> DnsServer:
    return dns_server(ZONE)


def _subject(data: bytes) -> str:
    found = re.search(rb"^Subject: (load-\d+)\r?$", data, re.M)
    assert found is not None, data[:500]
    return found.group(1).decode()


def _cluster_count(server: RedisServer) -> int:
    with redis.Redis(port=server.port) as r:
        return int(r.hget(WINDOW_KEY, "t") or 0)


class Load:
    """One SMTP connection per node; one message of one recipient per send, its Subject
    unique; what each node accepted, and the cluster's count after each node's last
    recipient (what it last heard from Redis, when it was up)."""

    def __init__(self, ports: list[int]) -> None:
        self.conns = []
        for port in ports:
            s = smtplib.SMTP("127.0.0.1", port, timeout=15)
            s.ehlo("load.test")
            self.conns.append(s)
        self.accepted: list[str] = []
        self.by_node = [0, 0]
        self.refused = [0, 0]
        self.seen = [0, 0]
        self.n = 0

    def send(self, node: int) -> bool:
        s, self.n = self.conns[node], self.n + 1
        subject = f"load-{self.n}"
        s.mail("app@example.com")
        code, text = s.rcpt(f"u{self.n}@ok.test")
        if code != 250:
            assert (code, b"Daily message quota exceeded" in text) == (454, True), text
            s.rset()
            self.refused[node] += 1
            return False
        code, text = s.data(f"From: app@example.com\r\nTo: u{self.n}@ok.test\r\n"
                            f"Subject: {subject}\r\n\r\nx\r\n".encode())
        assert code == 250, text
        self.accepted.append(subject)
        self.by_node[node] += 1
        self.seen[node] = len(self.accepted)
        return True

    def close(self) -> None:
        for s in self.conns:
            s.quit()


def test_redis_killed_mid_load_holds_the_quota_and_loses_nothing(
        tmp_path: Path, redis_server: RedisServer, dns: DnsServer) -> None:
    with Sink("127.0.0.2", 0) as sink:
        configs = [node_config(tmp_path, name, redis_server.url, nameserver=dns.nameserver,
                               delivery_port=sink.port, tenants={"max_24h_send": QUOTA},
                               cluster={"heartbeat": "200ms", "node_ttl": "5s"})
                   for name in ("node-a", "node-b")]
        procs = start_all(configs)
        try:
            load = Load([next(iter(p.ports.values())) for p in procs])
            for i in range(60):  # Redis up: alternating
                assert load.send(i % 2)
            assert _cluster_count(redis_server) == 60
            seen = list(load.seen)  # each node's last figure from Redis

            redis_server.stop()
            before = list(load.by_node)
            for i in range(120):  # Redis down: three to node A for one to node B
                load.send(0 if i % 4 else 1)
            gap = [load.by_node[k] - before[k] for k in (0, 1)]
            shares = [(QUOTA - seen[k]) // 2 for k in (0, 1)]  # docs/cluster.md
            assert gap[0] == shares[0]  # sent 90, its share is 70: the rest refused
            assert gap[1] == 30 <= shares[1]  # sent 30: all within its share
            assert load.refused == [90 - shares[0], 0]

            redis_server.start()  # same port; the append-only file kept the 60
            deadline = time.monotonic() + 10  # each node's heartbeat adds its gap once
            while _cluster_count(redis_server) != len(load.accepted) \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _cluster_count(redis_server) == len(load.accepted)
            for i in range(60):  # Redis back: alternating until the quota is spent
                load.send(i % 2)
            load.close()
            assert len(load.accepted) == QUOTA  # the quota held to the last unit
            assert _cluster_count(redis_server) == QUOTA  # reconciled once, not twice

            delivered = sink.wait_for(QUOTA, timeout=30)
            subjects = [_subject(m.data) for m in delivered]
            assert sorted(subjects) == sorted(load.accepted)  # none lost, none twice
        finally:
            for p in procs:
                p.stop()
