"""Durable event staging: an event is committed in the same LMDB transaction as the
state change it reports, so a crash between the commit and the log write cannot lose it.

Theory of operation
-------------------
Rule 1: an operation that changes queue state and wants to report it calls
`stage(txn, events)` inside its transaction; the encoded events land in the store's
`event_outbox` sub-database together with the state change (one fsync for both).
Rule 2: after the commit, `published(events, keys)` writes them to the event log (and so
to its subscribers: webhook outbox, metrics) and remembers the keys.
Rule 3: staged keys are deleted a grace period after publication (so subscribers that
buffer for a few milliseconds have committed their own copies), in one batched write,
and only once the event log has written them: while its disk is full the log keeps them
in memory (relay/events/log.py), and an event it had to drop stays staged until the
next start publishes it again.
Rule 4: at start, anything still staged is published again before new work begins.
Delivery of events is therefore at least once: a crash may repeat the events of the last
grace period, never drop one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections.abc import Sequence
from typing import Any

import msgspec

from relay.clock import Clock
from relay.events.log import EventLog
from relay.events.model import Event
from relay.queue.committer import StoreFull, StoreUnavailable
from relay.queue.store import QueueStore
from relay.tasks import cancel_and_wait

log = logging.getLogger(__name__)

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Event)
_KEY = struct.Struct(">QII")  # milliseconds, pid, per-process counter: unique across workers


class EventJournal:
    DB = "event_outbox"

    def __init__(self, store: QueueStore, log_: EventLog, clock: Clock, *,
                 grace: float = 2.0) -> None:
        self.store = store
        self.log = log_
        self.clock = clock
        self.grace = grace
        self._counter = 0
        self._pid = os.getpid() & 0xFFFFFFFF
        # (monotonic time of publication, staged keys, the log's sequence number of the
        # last of their events)
        self._published: list[tuple[float, list[bytes], int]] = []
        self._task: asyncio.Task[None] | None = None

    def stage(self, txn: Any, events: Sequence[Event]) -> list[bytes]:
        """Inside a write transaction: keep `events` with the state change."""
        db = self.store.named_db(self.DB)
        keys: list[bytes] = []
        ms = int(self.clock.now() * 1000)
        for ev in events:
            self._counter = (self._counter + 1) & 0xFFFFFFFF
            key = _KEY.pack(ms, self._pid, self._counter)
            txn.put(key, _enc.encode(ev), db=db)
            keys.append(key)
        return keys

    def published(self, events: Sequence[Event], keys: list[bytes]) -> None:
        """After the commit: write to the log and subscribers; forget the keys later."""
        last = self.log.emit(events)
        if keys and last is not None:
            self._published.append((self.clock.monotonic(), keys, last))
        # last is None: the log had no room for one of them, so they stay staged.

    def replay(self) -> int:
        """Publish whatever a crash left staged (call once at start, before new work)."""
        pending = self.store.read_db(self.DB)
        events: list[Event] = []
        for _, blob in pending:
            try:
                events.append(_dec.decode(blob))
            except msgspec.DecodeError:
                log.error("dropping an unreadable staged event (%d bytes)", len(blob))
        last: int | None = self.log.seq
        if events:
            last = self.log.emit(events)
            self.log.flush()  # in the file before new work starts
        if pending:
            keys = [bytes(k) for k, _ in pending]
            if last is None:
                pass  # dropped by the log (its disk is full): staged for the next start
            elif self.log.written_seq < last:
                # Not in the file yet: deleted once the log has written them (Rule 3).
                self._published.append((self.clock.monotonic(), keys, last))
            elif self.store.running:
                # Queued, not awaited: a crash before it commits only replays them again.
                self.store.write_soon(self._delete_op(keys)).add_done_callback(_log_failure)
            else:
                self.store.write_now(self._delete_op(keys))
            log.warning("published %d events staged before the last stop", len(events))
        return len(events)

    def _delete_op(self, keys: list[bytes]) -> Any:
        db = self.store.named_db(self.DB)

        def op(txn: Any) -> None:
            for key in keys:
                txn.delete(key, db=db)
        return op

    def _due_keys(self, force: bool = False) -> list[bytes]:
        """Keys of events past the grace period (all with `force`) that are in the log."""
        self.log.flush()
        horizon = self.clock.monotonic() - self.grace
        written = self.log.written_seq
        keys: list[bytes] = []
        while self._published and (force or self._published[0][0] <= horizon) \
                and self._published[0][2] <= written:
            keys += self._published.pop(0)[1]
        return keys

    async def flush(self, force: bool = False) -> None:
        keys = self._due_keys(force)
        if keys:
            await self.store.write(self._delete_op(keys))

    async def _run(self) -> None:
        while True:
            await self.clock.sleep(self.grace)
            try:
                await self.flush()
            except (StoreFull, StoreUnavailable) as e:
                log.warning("could not prune published events (%s); will retry", e)
            except Exception:
                log.exception("could not prune published events; will retry")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-journal")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        with contextlib.suppress(Exception):
            await self.flush(force=True)


def _log_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("could not clear replayed events: %s", fut.exception())
