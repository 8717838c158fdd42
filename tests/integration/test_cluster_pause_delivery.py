"""A tenant paused on one node stops the other node's deliveries, not only its acceptance:
two nodes of relay/app.py's delivery graph on one real redis-server and a real sink,
node A with mail of the tenant queued; `pause` on node B (as `relay tenant pause` does:
its own record, then published) reaches A within a second, and A's scheduler holds the
mail (no attempt, nothing at the sink) until the resume published by B."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from relay.clock import FakeClock
from relay.config import Config, from_dict
from relay.queue.ops import NewMessage
from relay.tenants.model import tenant_scope
from relay.testing.redisserver import RedisServer
from relay.testing.warmup import DeliveryHarness, Started, provider_dns, provider_sinks

START = 1_790_035_200.0 + 9 * 3600.0
SCOPE = tenant_scope("default")


class Node(DeliveryHarness):
    def __init__(self, tmp: Path, name: str, redis_url: str, dns_port: int, sink_port: int,
                 clock: FakeClock) -> None:
        cfg: Config = from_dict({
            "server": {"hostname": f"{name}.relay.test", "state_dir": str(tmp)},
            "dns": {"nameservers": [f"127.0.0.1:{dns_port}"], "timeout": "2s"},
            "delivery": {"port": sink_port, "pool": "warm", "retry_jitter": 0.0},
            "pool": [{"name": "warm", "ips": ["127.0.0.10"]}],
            "cluster": {"redis_url": redis_url, "node_id": name},
        })
        super().__init__(tmp, cfg, clock, tmp / "events.jsonl")
        assert self.parts.cluster is not None
        self.cluster: Any = self.parts.cluster

    async def start(self, *, deliver: bool = False) -> None:
        await super().start(deliver=deliver)
        await self.cluster.start()

    async def close(self) -> None:
        await super().close()
        await self.cluster.stop()

    async def changed(self, what: str) -> None:
        """Wait (at most a second) until this node's view of SCOPE is `what`."""
        async def seen() -> None:
            while (self.parts.tenants.paused("default") is not None) != (what == "paused"):
                await asyncio.sleep(0.01)
        await asyncio.wait_for(seen(), 1.0)

    async def publish(self, op: Any) -> None:
        """An operator's change of SCOPE on this node, to every node (the CLI's way)."""
        record = await self.parts.tenants.write(op)
        assert await self.cluster.publish_status(SCOPE, record)


async def test_a_pause_on_node_b_holds_node_as_deliveries_until_the_resume(
        tmp_path: Path, redis_server: RedisServer) -> None:
    clock = FakeClock(START)
    assert dt.datetime.fromtimestamp(START, dt.UTC).hour == 9
    with provider_dns() as dns, provider_sinks() as (sink, _):
        a = Node(tmp_path / "a", "node-a", redis_server.url, dns.port, sink.port, clock)
        b = Node(tmp_path / "b", "node-b", redis_server.url, dns.port, sink.port, clock)
        started: Started[Node] = Started()
        try:
            for node in (a, b):
                await started.start(node)
                await asyncio.wait_for(node.cluster.flags.ready.wait(), 5)
            for i in range(3):
                await a.store.submit_record(NewMessage(
                    sender="app@example.com", recipients=[f"u{i}@a.test"],
                    body=b"Subject: hi\r\n\r\nhi\r\n"))
            await b.publish(b.parts.tenants.pause_op(SCOPE, who="test", reason="audit"))
            await a.changed("paused")
            await a.run_until(START + 3600)
            assert sink.message_count == 0
            waiting = [r for _, rs in a.store.messages() for r in rs]
            assert len(waiting) == 3 and {r.attempts for r in waiting} == {0}
            assert a.parts.tenants.status(SCOPE).status == "Healthy"  # A's own record
            await b.publish(b.parts.tenants.resume_op(SCOPE, who="test"))
            await a.changed("resumed")
            await a.run_until(START + 2 * 3600)
            assert sink.message_count == 3
        finally:
            await started.close()
