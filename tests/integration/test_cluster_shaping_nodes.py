"""Two real relay processes sharing one real redis-server deliver to one provider's site
(the sink on 127.0.0.2, a.test's MX mx.prova.test): its max_connections and its
messages per hour hold for both nodes together.

Each node alone would keep to the limits by itself, so the two together would open
twice the connections and send twice the hour's messages; the sink counts the
connections open at once and the messages it receives. (Per-second limits are tested
exactly on a FakeClock in test_cluster_shaping.py: here only counts, no timing.)
"""

from __future__ import annotations

import json
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.testing.dnsserver import DnsServer
from relay.testing.process import (
    RelayProcess,
    listener_config,
    relay_config,
    run_cli,
    write_config,
)
from relay.testing.redisserver import RedisServer
from relay.testing.sink import Rules, Sink
from relay.testing.wait import wait_until
from relay.testing.warmup import provider_dns

PER_NODE = 12
HOUR = 3600.0


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with provider_dns() as server:
        yield server


def _node(tmp: Path, name: str, redis_url: str, dns: DnsServer, sink: Sink,
          provider: dict[str, Any], idle: str = "300ms", **cluster: str) -> Path:
    listener = listener_config("none", "none", trusted_networks=["127.0.0.0/8"])
    data: dict[str, Any] = relay_config(
        tmp / name / "state", dns.nameserver, sink.port, [listener], pool="warm",
        idle_connection_timeout=idle)
    data["server"]["hostname"] = f"{name}.relay.test"
    data["pool"] = [{"name": "warm", "ips": ["127.0.0.10"]}]
    data["provider"] = [{"name": "prova", "mx": ["mx.prova.test"], **provider}]
    data["cluster"] = {"redis_url": redis_url, "node_id": name, "heartbeat": "200ms",
                       "node_ttl": "5s", **cluster}
    return write_config(tmp / name / "relay.toml", data)


def _submit(port: int, node: str, n: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo("client.test")
        for i in range(n):
            s.sendmail("app@example.com", [f"{node}-{i}@a.test"],
                       f"From: app@example.com\r\nTo: {node}-{i}@a.test\r\n"
                       f"Subject: shaping {i}\r\n\r\nx\r\n".encode())


def _start_two(tmp: Path, redis_url: str, dns: DnsServer, sink: Sink,
               provider: dict[str, Any]) -> tuple[list[RelayProcess], list[Path]]:
    configs = [_node(tmp, name, redis_url, dns, sink, provider)
               for name in ("node-a", "node-b")]
    procs: list[RelayProcess] = []
    try:
        for config in configs:
            procs.append(RelayProcess(config, log_dir=config.parent / "logs").start())
    except BaseException:
        for p in procs:
            p.stop()
        raise
    return procs, configs


def test_two_nodes_never_open_more_connections_to_a_site_than_its_max(
        tmp_path: Path, redis_server: RedisServer, dns: DnsServer) -> None:
    """max_connections = 2 for the provider: 12 messages submitted to each node at once
    (the sink answers each DATA after 50 ms, so deliveries overlap): never more than 2
    connections open at the sink from both nodes together, and all 24 arrive."""
    with Sink("127.0.0.2", 0, policy=Rules(delay=0.05)) as sink:
        procs, _ = _start_two(tmp_path, redis_server.url, dns, sink, {"max_connections": 2})
        try:
            for proc, name in zip(procs, ("a", "b"), strict=True):
                _submit(next(iter(proc.ports.values())), name, PER_NODE)
            sink.wait_for(2 * PER_NODE, timeout=60)
            assert sink.message_count == 2 * PER_NODE
            assert {m.rcpt_tos[0].split("-")[0] for m in sink.messages} == {"a", "b"}
            assert sink.peak_connections <= 2, sink.peak_connections
        finally:
            for p in procs:
                p.stop()


def _held_for_the_hour(config: Path) -> int:
    """Recipients a node held back for the site's hourly limit (DeliveryDelay events)."""
    path = config.parent / "state" / "events.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines()
               if '"DeliveryDelay"' in line and "rate limit" in line)


def test_two_nodes_deliver_exactly_the_sites_messages_per_hour(
        tmp_path: Path, redis_server: RedisServer, dns: DnsServer) -> None:
    """messages_per_hour = 15 for the provider, 10 messages submitted to each node: the
    sink receives exactly 15 (each node alone would send its 10), the other 5 are held
    for the next hour (DeliveryDelay, no attempt). Counts only; a start in the last
    half minute of a clock hour waits for the next one, so the test stays in one hour."""
    left = HOUR - time.time() % HOUR
    if left < 30:
        time.sleep(left + 0.5)
    with Sink("127.0.0.2", 0) as sink:
        procs, configs = _start_two(tmp_path, redis_server.url, dns, sink,
                                    {"messages_per_hour": 15})
        try:
            for proc, name in zip(procs, ("a", "b"), strict=True):
                _submit(next(iter(proc.ports.values())), name, 10)
            sink.wait_for(15, timeout=60)
            wait_until(lambda: sum(_held_for_the_hour(c) for c in configs) >= 5, 30,
                       "the 5 over the hour's limit held")
        finally:
            for p in procs:
                p.stop()
        assert sink.message_count == 15
        assert sum(_held_for_the_hour(c) for c in configs) == 5


def _leases(config: Path) -> list[tuple[str, str]]:
    """(site, node) of every live lease, as `relay cluster status --json` shows them."""
    done = run_cli("cluster", "status", "--json", config=config)
    return sorted((x["site"], x["node"]) for x in json.loads(done.stdout)["leases"])


def test_a_killed_nodes_lease_expires_and_the_other_node_then_delivers(
        tmp_path: Path, redis_server: RedisServer, dns: DnsServer) -> None:
    """max_connections = 1, lease_ttl = 3 s: node A delivers and keeps its connection
    idle (its lease shows in `relay cluster status`), then is killed with -9. Node B's
    message waits for the lease (at most lease_wait = 8 s) until A's expires, then goes;
    the status then names B. The sink never has more than one connection open."""
    with Sink("127.0.0.2", 0) as sink:
        cluster = {"lease_ttl": "3s", "lease_wait": "8s"}
        a_cfg, b_cfg = (_node(tmp_path, name, redis_server.url, dns, sink,
                              {"max_connections": 1}, idle="60s", **cluster)
                        for name in ("node-a", "node-b"))
        a = RelayProcess(a_cfg, log_dir=tmp_path / "node-a" / "logs").start()
        b: RelayProcess | None = None
        try:
            _submit(next(iter(a.ports.values())), "a", 1)
            sink.wait_for(1, timeout=30)
            wait_until(lambda: _leases(a_cfg) == [("prova", "node-a")], 10,
                       "node A's lease in the status")
            a.kill()
            b = RelayProcess(b_cfg, log_dir=tmp_path / "node-b" / "logs").start()
            _submit(next(iter(b.ports.values())), "b", 1)
            sink.wait_for(2, timeout=30)
            assert _leases(b_cfg) == [("prova", "node-b")]
            assert sink.peak_connections == 1
        finally:
            a.stop()
            if b is not None:
                b.stop()
