"""The webhook outbox with server.workers = N: one LMDB spool, several processes.

Every worker commits its webhook events to the same outbox. Each entry's key carries a
sequence number; those must not collide between processes (a collision overwrote
another worker's event), and only one process may POST the outbox (two POSTed every
event twice). Real processes on one real LMDB spool; a real aiohttp receiver.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import socket
from pathlib import Path
from typing import Any

from relay.clock import SystemClock
from relay.config import Config, from_dict
from relay.events.destinations import EventRouter
from relay.events.model import send_event
from relay.queue.records import MessageRecord
from relay.queue.store import QueueStore
from relay.testing.webhook import WebhookReceiver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(state: Path, hook_port: int) -> Config:
    return from_dict({
        "server": {"hostname": "relay.test", "state_dir": str(state)},
        "event_destination": [{"name": "hook", "type": "webhook",
                               "url": f"http://127.0.0.1:{hook_port}/hook"}],
    })


def record(mid: str) -> MessageRecord:
    return MessageRecord(id=mid, sender="app@tenant.example", recipients=["r@sink.test"],
                         received_at=1_800_000_000.0, size=10)


def _worker_process(state: str, hook_port: int, tag: str, count: int,
                    start: Any) -> None:
    """A worker that only commits events (drain=False), in bursts of ten."""
    async def main() -> None:
        cfg = config(Path(state), hook_port)
        store = QueueStore(Path(state) / "queue", SystemClock())
        await store.start()
        router = EventRouter(lambda: cfg, store, SystemClock(), Path(state), drain=False)
        start.wait()
        for i in range(count):
            router(send_event(record(f"{tag}-{i:04d}")))
            if i % 10 == 9:
                await router.flush()
        await router.flush()
        await store.close()

    asyncio.run(main())


def outbox_message_ids(state: Path) -> list[str]:
    store = QueueStore(state / "queue", SystemClock())
    try:
        cfg = config(state, 1)
        pending = EventRouter(lambda: cfg, store, SystemClock(), state).pending("hook")
        return [json.loads(item.body)["mail"]["messageId"] for _, item in pending]
    finally:
        store.close_sync()


def test_two_processes_never_overwrite_each_others_events(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_worker_process,
                         args=(str(tmp_path), free_port(), tag, 200, start))
             for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ids = outbox_message_ids(tmp_path)
    assert len(ids) == 400 and len(set(ids)) == 400
    # Each worker's events stay in the order it committed them.
    for tag in ("a", "b"):
        mine = [i for i in ids if i.startswith(f"{tag}-")]
        assert mine == sorted(mine)


async def test_only_the_draining_worker_posts_and_it_finds_the_others_events(
        tmp_path: Path) -> None:
    port = free_port()
    receiver = WebhookReceiver(port)
    await receiver.start()
    cfg = config(tmp_path, port)
    store = QueueStore(tmp_path / "queue", SystemClock())
    await store.start()
    # Two routers on one spool stand for worker 0 (drains, polls) and worker 1 (only
    # commits): worker 1's flush wakes nothing in worker 0, so only the poll finds them.
    drainer = EventRouter(lambda: cfg, store, SystemClock(), tmp_path, drain=True, poll=0.2)
    other = EventRouter(lambda: cfg, store, SystemClock(), tmp_path, drain=False)
    await drainer.start()
    await other.start()
    try:
        for i in range(5):
            other(send_event(record(f"m-{i}")))
        await other.flush()
        for _ in range(100):
            if len(receiver.ids) >= 5:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # room for a second POST of any of them
        assert len(receiver.ids) == 5 and len(set(receiver.ids)) == 5
        assert other.backlog() == {"hook": 0} == drainer.backlog()
    finally:
        await other.stop()
        await drainer.stop()
        await store.close()
        await receiver.stop()
