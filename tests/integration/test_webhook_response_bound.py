"""A webhook receiver that answers with a huge body cannot make relay hold it in memory.

The receiver is a real aiohttp server in its own process, streaming a 50 MB body after
its 200; it counts the bytes the kernel took from it before relay hung up. relay's side
(a real EventRouter on a real LMDB outbox) is measured with tracemalloc: the peak of
Python allocations while it POSTs the event.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import tracemalloc
from pathlib import Path
from typing import Any

from relay.clock import SystemClock
from relay.config import from_dict
from relay.events.destinations import EventRouter
from relay.events.model import send_event
from relay.queue.records import MessageRecord
from relay.queue.store import QueueStore

BODY = 50 * 1000 * 1000
CHUNK = 64 * 1024


def _receiver(port: int, ready: Any, sent: Any, posts: Any) -> None:
    from aiohttp import web

    async def hook(request: web.Request) -> web.StreamResponse:
        await request.read()
        with posts.get_lock():
            posts.value += 1
        resp = web.StreamResponse(status=200, headers={"Content-Length": str(BODY)})
        await resp.prepare(request)
        chunk = b"x" * CHUNK
        try:
            for _ in range(BODY // CHUNK + 1):
                await resp.write(chunk)
                with sent.get_lock():
                    sent.value += len(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up: what we want
        return resp

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.sleep(60)

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_huge_webhook_answer_is_not_read_into_memory(tmp_path: Path) -> None:
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    ready, sent, posts = ctx.Event(), ctx.Value("q", 0), ctx.Value("i", 0)
    proc = ctx.Process(target=_receiver, args=(port, ready, sent, posts), daemon=True)
    proc.start()
    store = QueueStore(tmp_path / "queue", SystemClock())
    router: EventRouter | None = None
    try:
        assert await asyncio.to_thread(ready.wait, 20)
        cfg = from_dict({
            "server": {"hostname": "relay.test", "state_dir": str(tmp_path)},
            "events": {"webhook_timeout": "10s"},
            "event_destination": [{"name": "hook", "type": "webhook",
                                   "url": f"http://127.0.0.1:{port}/hook"}],
        })
        await store.start()
        router = EventRouter(lambda: cfg, store, SystemClock(), tmp_path)
        tracemalloc.start()
        await router.start()
        router(send_event(MessageRecord(id="m-1", sender="app@example.com",
                                        recipients=["r@example.net"],
                                        received_at=1_800_000_000.0, size=10)))
        for _ in range(300):  # bounded: 15 s
            if router.delivered.get("hook") == 1:
                break
            await asyncio.sleep(0.05)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert router.delivered.get("hook") == 1, router.pending("hook")
        assert router.backlog() == {"hook": 0}
        assert posts.value == 1  # a 2xx is a delivery: never POSTed again
        # relay hung up early: the kernel buffers (a few MB on loopback) hold what the
        # receiver managed to write; today's code read all 50 MB into memory.
        await asyncio.sleep(0.5)
        print(f"receiver wrote {sent.value / 1e6:.1f} MB of {BODY / 1e6:.0f} MB; "
              f"relay's allocation peak {peak / 1e6:.1f} MB")
        assert sent.value < BODY // 4
        assert peak < 8 * 1000 * 1000
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        if router is not None:
            await router.stop()
        await store.close()
        proc.terminate()
        proc.join(10)
