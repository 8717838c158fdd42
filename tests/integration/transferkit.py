"""What the queue-transfer tests share: a spool filled with messages before relay starts,
and the states its recipients are in afterwards."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relay.clock import SystemClock
from relay.queue.ops import NewMessage
from relay.queue.records import State
from relay.queue.store import QueueStore


async def fill(state: Path, recipients: list[list[str]],
               tags: dict[str, list[str]] | None = None) -> list[str]:
    """One message per recipient list in `state`'s spool (Subject m0, m1, ...); its ids."""
    store = QueueStore(state / "queue", SystemClock())
    await store.start()
    try:
        return [await store.submit(NewMessage(
            sender="app@example.com", recipients=rcpts,
            body=f"From: app@example.com\r\nSubject: m{i}\r\n\r\nbody {i}\r\n".encode(),
            tags=dict(tags or {})))
            for i, rcpts in enumerate(recipients)]
    finally:
        await store.close()


def queue(state: Path, recipients: list[list[str]],
          tags: dict[str, list[str]] | None = None) -> list[str]:
    """`fill()` from synchronous code (no loop running)."""
    return asyncio.run(fill(state, recipients, tags))


def one_each(n: int) -> list[list[str]]:
    """n messages of one recipient each."""
    return [[f"r{i}@plain.test"] for i in range(n)]


def states(state: Path) -> dict[str, list[State]]:
    """Every message left in `state`'s spool: its recipients' states."""
    store = QueueStore(state / "queue", SystemClock())
    try:
        return {m.id: [r.state for r in rcpts] for m, rcpts in store.messages()}
    finally:
        store.close_sync()
