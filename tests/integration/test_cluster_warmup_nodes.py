"""A warming IP shared by two real relay processes (listening on 127.0.0.21 and .22) that
share one real redis-server: both are given more mail for one provider than the plan's cap
for the day, and the provider's sink (127.0.0.2) receives exactly the cap from the IP
(127.0.0.10), not twice it; the rest is held for the next day (DeliveryDelay), not
bounced. `relay warmup set --day` on one node reaches the other's running gate."""

from __future__ import annotations

import datetime as dt
import json
import smtplib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from relay.events.log import read_events
from relay.testing.process import (
    RelayProcess,
    free_port,
    listener_config,
    relay_config,
    run_cli,
    write_config,
)
from relay.testing.redisserver import RedisServer
from relay.testing.sink import Sink
from relay.testing.warmup import provider_dns
from relay.warmup.counters import DayClock

CAP = 5
IP = "127.0.0.10"


@pytest.fixture
def today() -> str:
    """The real processes count by the system clock: a start in the last 30 s of a UTC day
    waits for the next one, so the test never straddles the day boundary."""
    t = time.time()
    days = DayClock()
    left = days.start_of(days.day_of(t) + 1) - t
    if left < 30:
        time.sleep(left + 0.5)
        t = time.time()
    return dt.datetime.fromtimestamp(t, dt.UTC).date().isoformat()


def _node(tmp: Path, name: str, address: str, dns_port: int, sink_port: int,
          redis_url: str, start: str) -> Path:
    listener = listener_config("none", "none", trusted_networks=["127.0.0.0/8"])
    listener["address"] = f"{address}:{free_port(address)}"
    data: dict[str, Any] = relay_config(tmp / name / "state", f"127.0.0.1:{dns_port}",
                                        sink_port, [listener], pool="dedicated")
    data["cluster"] = {"redis_url": redis_url, "node_id": name, "heartbeat": "200ms",
                       "node_ttl": "5s"}
    data["warmup"] = {"pacing": "none"}
    data["warmup_plan"] = [{"name": "tiny", "caps": [CAP, 50]}]
    data["provider"] = [{"name": "prova", "mx": ["mx.prova.test"]}]
    data["pool"] = [{"name": "dedicated", "warmup_plan": "tiny", "warmup_start": start,
                     "ips": [{"address": IP, "ehlo": "mta10.relay.test"}]}]
    return write_config(tmp / name / "relay.toml", data)


def _submit(port: int, host: str, rcpt: str) -> None:
    with smtplib.SMTP(host, port, timeout=10) as s:
        s.sendmail("app@example.com", [rcpt],
                   f"From: app@example.com\r\nTo: {rcpt}\r\nSubject: warm\r\n\r\nx\r\n")


def _events(config: Path, kind: str) -> list[dict[str, Any]]:
    path = config.parent / "state" / "events.jsonl"
    return [e for e in read_events(path) if e["eventType"] == kind] if path.exists() else []


def _wait(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_two_nodes_sharing_a_warming_ip_send_exactly_the_plans_cap(
        tmp_path: Path, redis_server: RedisServer, today: str) -> None:
    with provider_dns() as dns, Sink("127.0.0.2", 0) as sink:
        configs = [_node(tmp_path, name, address, dns.port, sink.port, redis_server.url,
                         today)
                   for name, address in (("node-a", "127.0.0.21"), ("node-b", "127.0.0.22"))]
        procs = [RelayProcess(c, log_dir=c.parent / "logs").start() for c in configs]
        try:
            addresses = [("127.0.0.21", next(iter(procs[0].ports.values()))),
                         ("127.0.0.22", next(iter(procs[1].ports.values())))]
            # 8 for the provider on each node: each alone would send its cap of 5
            for i in range(16):
                host, port = addresses[i % 2]
                _submit(port, host, f"user{i}@a.test")

            def settled() -> bool:
                delays = sum(len(_events(c, "DeliveryDelay")) for c in configs)
                return sink.message_count + delays >= 16

            assert _wait(settled), (sink.message_count, procs[0].output())
            assert sink.message_count == CAP
            assert {m.peer for m in sink.messages} == {IP}
            delays = [e for c in configs for e in _events(c, "DeliveryDelay")]
            assert len(delays) == 16 - CAP
            assert all("no capacity" in e["deliveryDelay"]["delayedRecipients"][0][
                "diagnosticCode"] for e in delays)
            assert not any(_events(c, "Bounce") for c in configs)
            # both nodes sent: the cap is the cluster's, not one node's
            assert all(_events(c, "Delivery") for c in configs)

            # `relay warmup set --day 2` on node b reaches node a's running gate
            # (pub/sub): node a sends new mail at once, under day 2's cap, though its gate
            # had found the IP full for today.
            done = run_cli("warmup", "set", IP, "--day", "2", config=configs[1])
            assert done.returncode == 0, done.stderr
            assert "every node" in done.stdout
            for i in range(2):
                _submit(addresses[0][1], addresses[0][0], f"late{i}@a.test")
            assert _wait(lambda: sink.message_count == CAP + 2, 10.0), sink.message_count
            # `relay warmup status` on a node shows the IP's sends from both nodes
            shown = run_cli("warmup", "status", "--json", config=configs[0])
            (row,) = json.loads(shown.stdout)
            assert (row["sent_today"], row["day"], row["cap_today"]) == (CAP + 2, 2, 50)
        finally:
            for p in procs:
                p.stop()


def test_with_redis_unreachable_the_cli_says_the_change_holds_on_this_node_only(
        tmp_path: Path, today: str) -> None:
    config = _node(tmp_path, "node-a", "127.0.0.21", 1, 1, f"redis://127.0.0.1:{free_port()}/0",
                   today)
    done = run_cli("warmup", "freeze", IP, config=config)
    assert done.returncode == 1
    assert "changed on this node only: redis unreachable" in done.stderr
    assert "Traceback" not in done.stderr
    shown = run_cli("warmup", "status", "--json", config=config)
    assert shown.returncode == 0, shown.stderr
    assert "redis unreachable: this node's copy" in shown.stderr
    assert json.loads(shown.stdout)[0]["frozen"] is True
