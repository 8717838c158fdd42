"""The history's feed: an EventLog subscriber and a delivery-attempt observer that batch
what they see and write it with the queue's group commit, off the hot path.

`__call__(event)` and `observe_attempt(attempt)` are sync and do no I/O: they turn what
they get into messages and timeline entries (relay/history/entries.py) and append them
to a pending batch. A task writes the batch every `flush` interval as ops
(HistoryStore.record_op) riding in the queue's own synced transactions (never a sync of
their own): one op of at most `max_op` entries at a time, each after the previous one
committed. Why bounded: the group commit runs its ops on the event loop, in the same
transaction as the queue's own writes, so an op must stay short (about 20-40 µs per
entry; 250 entries held the loop 8-13 ms, a stall every submission session waited out,
so 50, about 2 ms) and small (an LMDB error, such as too many dirty pages in one transaction, would
fail the queue's writes of that commit too). `stop()` writes the last batch while the
store still runs. Memory is bounded: past
`max_pending` entries waiting, new ones are counted in `dropped` and not kept (the
history never holds delivery up). A kill -9 loses at most the last batch's history,
never a message.
"""

from __future__ import annotations

import asyncio
import logging

from relay.clock import Clock
from relay.events.model import Event
from relay.history.entries import AttemptLike, batch_of, entry_from_attempt
from relay.history.model import HistoryMessage, TimelineEntry
from relay.history.store import HistoryStore
from relay.queue.store import QueueStore
from relay.tasks import cancel_and_wait

log = logging.getLogger("relay.history")

class HistoryRecorder:
    def __init__(self, queue_store: QueueStore, history: HistoryStore, clock: Clock, *,
                 flush: float = 0.5, max_pending: int = 100_000, max_op: int = 50) -> None:
        self.store = queue_store
        self.history = history
        self.clock = clock
        self.flush_interval = flush
        self.max_pending = max_pending
        self.max_op = max_op
        self.dropped = 0          # entries not recorded: the pending batch was full
        self.recorded = 0         # entries written
        self._messages: list[HistoryMessage] = []
        self._entries: list[tuple[str, TimelineEntry]] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ feeding (sync)

    def __call__(self, event: Event) -> None:
        """The EventLog subscriber: the event's message and entries, pending."""
        messages, entries = batch_of([event])  # none for an event about no message
        if entries and self._room(len(entries)):
            self._messages.extend(messages)
            self._entries.extend(entries)

    def observe_attempt(self, attempt: AttemptLike) -> None:
        """A delivery attempt's entry, pending."""
        if self._room(1):
            self._entries.append(entry_from_attempt(attempt))

    def _room(self, n: int) -> bool:
        if len(self._entries) + n > self.max_pending:
            self.dropped += n
            return False
        return True

    # ------------------------------------------------------------------ the loop

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="history-recorder")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self.store.running:
            await self.run_once()  # the last batch, in the final commit

    async def _run(self) -> None:
        while True:
            await self.clock.sleep(self.flush_interval)  # one batch per interval
            try:
                await self.run_once()
            except Exception:
                log.exception("history: recording a batch failed; its entries are lost")

    async def run_once(self) -> int:
        """Write what is pending, `max_op` entries per op; return how many entries."""
        messages, self._messages = self._messages, []
        entries, self._entries = self._entries, []
        written = 0
        for msgs, chunk in _chunks(messages, entries, self.max_op):
            n: int = await self.store.write_soon(self.history.record_op(msgs, chunk))
            self.recorded += n
            written += n
        return written


def _chunks(messages: list[HistoryMessage], entries: list[tuple[str, TimelineEntry]],
            size: int) -> list[tuple[list[HistoryMessage], list[tuple[str, TimelineEntry]]]]:
    """The batch cut into ops of at most `size` entries, each message's data in the op
    of its first entry (or the last op, for a message without entries here)."""
    if not messages and not entries:
        return []
    cuts = [entries[i:i + size] for i in range(0, len(entries), size)] or [[]]
    first: dict[str, int] = {}
    for n, chunk in enumerate(cuts):
        for qid, _ in chunk:
            first.setdefault(qid, n)
    msgs: list[list[HistoryMessage]] = [[] for _ in cuts]
    for m in messages:
        msgs[first.get(m.id, len(cuts) - 1)].append(m)
    return list(zip(msgs, cuts, strict=True))
