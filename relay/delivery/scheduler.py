"""The delivery scheduler: from the LMDB schedule index to SMTP transactions.

Theory of operation
-------------------
Two tiers, like Postfix's incoming/deferred queues feeding the active queue:

1. *Promotion.* Due recipients are read from the two schedule lanes of the
   store, `new` (never attempted) and `retry`, each given half of the free room
   so a deferred backlog cannot starve new mail, leased in one group-committed
   write, and grouped by (message, destination domain) into tasks on bounded
   in-memory ready queues. Memory holds at most `delivery.active_limit`
   recipients whatever the spool depth; a destination whose ready queue is over
   `delivery.ready_queue_limit` gives its excess leases back for later.
   A ready queue has one FIFO per priority lane (relay/warmup/lanes.py, through
   `lane_of`): transactional, then engaged, then bulk mail is taken first, so a
   bulk campaign never holds a destination's connections while transactional
   mail waits, and a cold IP's scarce cap goes to engaged recipients first.
2. *Dispatch.* Each destination gets up to `max_connections_per_destination`
   workers; a worker takes tasks from its destination's ready queue, routes
   (MX / routes), sends all recipients of a task in one transaction through the
   pooled client, and settles the results in the store before emitting events.

Rule: a result reaches the event log only after the store has committed it, and
the store decides (through the transition table) whether it still applies.
Every path answers with a relay.delivery.outcome.Outcome per recipient; what the
queue does with it (deliver, defer to the next retry time, bounce, expire, release
a recipient held by warm-up) and which events follow is decided by the pure
relay.delivery.settle; `_settle` only does the writing and publishing.
Timing comes from the injected Clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay.clock import Clock
from relay.config import Delivery
from relay.delivery.attempts import current_message, current_message_id
from relay.delivery.classify import from_route
from relay.delivery.outcome import Outcome, Sender, outcomes_of
from relay.delivery.outcome import held as held_outcome
from relay.delivery.settle import Retry, decide, events_for
from relay.delivery.yielding import DeliveryGate
from relay.dns.route import Route, RouteFailure, Target
from relay.events.journal import EventJournal
from relay.events.log import EventLog
from relay.events.model import SUPPRESSED_RESPONSE, Event
from relay.queue.keys import DueItem
from relay.queue.ops import Leased, Result, Settled
from relay.queue.records import Action, MessageRecord, State
from relay.queue.store import QueueStore
from relay.warmup.lanes import BULK, LANES

log = logging.getLogger("relay.scheduler")

# Recipients leased per op. A lease op runs on the event loop inside a group commit; a
# promotion of a whole active_limit at once (thousands of due recipients after a burst)
# held the loop ~20 ms of CPU (60 ms of wall time on the loaded bench machine), a stall
# every submission session waited out. 256 keep an op near 2-3 ms.
LEASE_SLICE = 256


# The sender chain the scheduler calls (relay.delivery.outcome.Sender).
SenderLike = Sender


class OutboundLike(Protocol):
    async def prepare(self, msg: MessageRecord, body: bytes) -> Any: ...
    def sender_for(self, prepared: Any, msg: MessageRecord, index: int) -> str: ...
    async def data_for(self, prepared: Any, msg: MessageRecord, index: int) -> bytes: ...


class RouterLike(Protocol):
    async def route(self, domain: str) -> Route: ...


class SuppressionLike(Protocol):
    """relay/suppression/guard.py: which recipients of a message are on the list."""

    def suppressed(self, msg: MessageRecord, addresses: Sequence[str]) -> set[str]: ...


class LocalDeliveryLike(Protocol):
    """relay/simulator.py: destinations answered inside relay, with no network."""

    def handles(self, domain: str) -> bool: ...
    def outcomes(self, msg: MessageRecord, addresses: Sequence[str]) -> Sequence[Outcome]: ...
    async def after(self, msg: MessageRecord, settled: list[Settled]) -> None: ...


SettleHook = Callable[[list[Settled], float], Awaitable[None]]


@dataclass
class Task:
    """Recipients of one message at one destination: one SMTP transaction."""

    message: MessageRecord
    destination: str
    items: list[Leased] = field(default_factory=list)
    priority: int = BULK      # relay.warmup.lanes: lower goes first


class LaneQueue:
    """A destination's ready queue: a FIFO per priority lane; popleft() serves the
    highest lane (lowest number) that has a task. Iterates all tasks, lane by lane."""

    __slots__ = ("_lanes", "_len", "items")

    def __init__(self) -> None:
        self._lanes: tuple[deque[Task], ...] = tuple(deque() for _ in LANES)
        self._len = 0
        self.items = 0  # recipients held, kept in step (no O(n) sum per append)

    def append(self, task: Task) -> None:
        self._lanes[min(max(task.priority, 0), len(self._lanes) - 1)].append(task)
        self._len += 1
        self.items += len(task.items)

    def popleft(self) -> Task:
        for lane in self._lanes:
            if lane:
                self._len -= 1
                task = lane.popleft()
                self.items -= len(task.items)
                return task
        raise IndexError("pop from an empty LaneQueue")

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[Task]:
        for lane in self._lanes:
            yield from lane


class Scheduler:
    def __init__(self, store: QueueStore, router: RouterLike, sender: Sender,
                 events: EventLog, clock: Clock, cfg: Delivery, *, hostname: str,
                 rng: random.Random | None = None, poll_interval: float = 1.0,
                 max_workers: int = 200, outbound: OutboundLike | None = None,
                 suppression: SuppressionLike | None = None,
                 simulator: LocalDeliveryLike | None = None,
                 after_settle: Sequence[SettleHook] = (),
                 journal: EventJournal | None = None,
                 configuration_set: Callable[[str], Any] | None = None,
                 lane_of: Callable[[MessageRecord], int] | None = None,
                 gate: DeliveryGate | None = None,
                 paused: Callable[[MessageRecord], str | None] | None = None,
                 paused_recheck: float = 60.0) -> None:
        self.store = store
        self.router = router
        self.sender = sender
        self.events = events
        self.clock = clock
        self.cfg = cfg
        self.hostname = hostname
        self.rng = rng or random.Random()
        self.poll_interval = poll_interval
        self.max_workers = max_workers
        self.outbound = outbound  # DKIM signing + VERP return path (relay.identity.outbound)
        # Optional parts (relay/wiring.py passes them): the suppression check before an
        # attempt, the mailbox simulator, hooks run after every settle (automatic
        # suppression), and the configuration set of a message (its max_delivery_time).
        self.suppression = suppression
        self.simulator = simulator
        self.after_settle: list[SettleHook] = list(after_settle)
        # When set, events are staged in the settling transaction (crash-safe events).
        self.journal = journal
        self.configuration_set = configuration_set
        # The priority lane of a message (relay/warmup/lanes.py); None: all bulk.
        self.lane_of = lane_of
        # Why a message's tenant or configuration set is paused (relay/tenants/), or None.
        # A paused message's recipients are held, not attempted and not bounced, and
        # looked at again every `paused_recheck` seconds until the resume or their
        # max delivery time (then they expire as any other).
        self.paused = paused
        self.paused_recheck = paused_recheck
        self.ready: dict[str, LaneQueue] = {}
        # Destinations with queued work that may need another worker (an ordered set).
        self._wanting: dict[str, None] = {}
        self.active: dict[str, int] = {}
        self.held = 0
        self._workers: set[asyncio.Task[None]] = set()
        # Settles of finished transactions still committing (see `_settle_soon`).
        self._settling: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        # When set, delivery gives the loop to a burst of submissions (yielding.py).
        self.gate = gate

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self.run(), name="scheduler")

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            leased = 0
            try:
                leased = await self.tick()
            except Exception:
                log.exception("scheduler tick failed; retrying")
            wait = self.poll_interval
            nd = self.store.next_due_at()
            if nd is not None:
                ahead = nd - self.clock.now()
                # Due but nothing leased (no room, or another worker's): wait for a wake
                # (a settle frees room, a submit) or the poll, instead of spinning.
                if ahead > 0 or leased:
                    wait = min(wait, max(0.0, ahead))
            await self._sleep_or_wake(wait)

    async def _sleep_or_wake(self, seconds: float) -> None:
        if self._wake.is_set():
            self._wake.clear()
            return
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        for t in (sleeper, waker):
            t.cancel()
        self._wake.clear()

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop promoting, let transactions under way finish, give back unstarted leases."""
        self._stopping = True
        self._wake.set()
        if self.gate is not None:
            self.gate.close()
        if self._loop_task is not None:
            await self._loop_task
        if self._workers:
            _, pending = await asyncio.wait(self._workers, timeout=timeout)
            for t in pending:
                t.cancel()  # left INFLIGHT: recovered at next start
        if self._settling:
            await asyncio.wait(list(self._settling), timeout=timeout)
        now = self.clock.now()
        results = [Result(t.message.id, it.index, Action.RELEASE, next_attempt_at=now)
                   for q in self.ready.values() for t in q for it in t.items]
        self.ready.clear()
        self._wanting.clear()
        if results:
            with contextlib.suppress(Exception):
                await self.store.write(self.store.settle_op(results, now))

    async def run_until_idle(self) -> None:
        """Process everything due now and wait for it to settle (tests with a FakeClock)."""
        while True:
            leased = await self.promote()
            self.dispatch()
            if self._workers:
                await asyncio.gather(*list(self._workers))
                continue
            if self._settling:
                await asyncio.gather(*list(self._settling))
                continue
            if not leased:
                return

    # ------------------------------------------------------------------ promotion

    async def tick(self) -> int:
        if self._stopping:
            return 0
        if self.gate is not None and self.held and self.gate.holding():
            # A burst holds the loop and there is work in hand: leasing more now would
            # only add writes to the submissions' commits. The gate wakes us after.
            self.dispatch()
            return 0
        leased = await self.promote()
        self.dispatch()
        return leased

    async def promote(self) -> int:
        """Lease due recipients into the ready queues; return how many were leased."""
        room = self.cfg.active_limit - self.held
        if room <= 0:
            return 0
        now = self.clock.now()
        half = max(1, room // 2)
        new = self.store.due(now, lane="new", limit=half)
        old = self.store.due(now, lane="retry", limit=room - len(new))
        if len(old) < room - len(new) and len(new) == half:
            new += self.store.due(now, lane="new", limit=room - len(old))[len(new):]
        items: list[DueItem] = new + old
        if not items:
            return 0
        leased: list[Leased] = []
        for start in range(0, len(items), LEASE_SLICE):
            leased += await self.store.write(
                self.store.lease_op(items[start:start + LEASE_SLICE], now))
        tasks: dict[tuple[str, str], Task] = {}
        for lease in leased:
            key = (lease.message.id, lease.recipient.domain)
            task = tasks.get(key)
            if task is None:
                task = tasks[key] = Task(
                    lease.message, lease.recipient.domain,
                    priority=self.lane_of(lease.message) if self.lane_of else BULK)
            task.items.append(lease)
        give_back: list[Result] = []
        for task in tasks.values():
            for chunk in self._chunks(task):
                queue = self.ready.setdefault(chunk.destination, LaneQueue())
                if queue.items >= self.cfg.ready_queue_limit:
                    give_back += [Result(chunk.message.id, it.index, Action.RELEASE,
                                         next_attempt_at=now + self.poll_interval * 5)
                                  for it in chunk.items]
                    continue
                queue.append(chunk)
                self._wanting[chunk.destination] = None
                self.held += len(chunk.items)
        if give_back:
            await self.store.write(self.store.settle_op(give_back, now))
        return len(leased)

    def _chunks(self, task: Task) -> list[Task]:
        size = max(1, self.cfg.max_recipients_per_transaction)
        return [Task(task.message, task.destination, task.items[i:i + size], task.priority)
                for i in range(0, len(task.items), size)]

    # ------------------------------------------------------------------ dispatch

    def dispatch(self) -> None:
        """Start workers where work is waiting. Only destinations that got work since they
        last had enough workers are looked at (`_wanting`), not every ready destination:
        with 10,000 destinations a walk per tick (a tick follows every finished
        transaction) was 3-15 % of the CPU."""
        limit = self.cfg.max_connections_per_destination
        for dest in list(self._wanting):
            if len(self._workers) >= self.max_workers:
                return  # the rest wait; a finishing worker wakes the loop
            queue = self.ready.get(dest)
            active = self.active.get(dest, 0)
            while (queue and active < limit and active < len(queue)
                   and len(self._workers) < self.max_workers):
                active += 1
                self.active[dest] = active
                worker = asyncio.create_task(self._worker(dest), name=f"deliver:{dest}")
                self._workers.add(worker)
                worker.add_done_callback(self._workers.discard)
            if not queue or active >= limit or active >= len(queue):
                del self._wanting[dest]  # its workers drain the queue

    async def _worker(self, dest: str) -> None:
        queue = self.ready[dest]
        pending: asyncio.Task[Any] | None = None
        try:
            while queue and not self._stopping:
                task = queue.popleft()
                try:
                    # The previous transaction's settle commits while this one is sent;
                    # at most one is pending per worker, so commits cannot pile up.
                    settling = await self._deliver_admitted(task)
                    if pending is not None:
                        await asyncio.wait({pending})
                    pending = settling
                except Exception:
                    log.exception("delivery to %s failed unexpectedly", dest)
                    await self._settle(task, [None] * len(task.items), local_error=True)
                finally:
                    self.held -= len(task.items)
            if pending is not None:
                await asyncio.wait({pending})
        finally:
            # Several workers may serve one destination: the last one out cleans up.
            self.active[dest] = self.active.get(dest, 1) - 1
            if queue:  # work arrived while this worker was leaving (or it is stopping)
                self._wanting[dest] = None
            elif self.active[dest] <= 0:
                if self.ready.get(dest) is queue:
                    self.ready.pop(dest, None)
                self.active.pop(dest, None)
            self.wake()

    async def _deliver_admitted(self, task: Task) -> asyncio.Task[None] | None:
        gate = self.gate
        if gate is None:
            return await self.deliver(task)
        await gate.acquire()
        try:
            return await self.deliver(task)
        finally:
            gate.release()

    async def deliver(self, task: Task) -> asyncio.Task[None] | None:
        """One attempt for `task`; returns the settle still committing (`_settle_soon`),
        or None when it was settled in place."""
        current_message_id.set(task.message.id)  # for the per-attempt log line
        current_message.set(task.message)        # pool and lane, for the shaper
        if self.paused is not None:
            why = self.paused(task.message)
            if why is not None:
                hold = held_outcome(why, self.clock.now() + self.paused_recheck)
                # One DeliveryDelay when a recipient is first held; the rechecks while
                # the pause lasts publish none (its expiry still bounces).
                again = all(it.recipient.last_response == hold.response
                            for it in task.items)
                await self._settle(task, [hold] * len(task.items), quiet=again)
                return None
        if self.suppression is not None:
            listed = self.suppression.suppressed(
                task.message, [it.recipient.address for it in task.items])
            if listed:
                held = [it for it in task.items if it.recipient.address in listed]
                await self._settle(Task(task.message, task.destination, held),
                                   [_SUPPRESSED] * len(held))
                task = Task(task.message, task.destination,
                            [it for it in task.items if it.recipient.address not in listed])
                if not task.items:
                    return None
        if self.simulator is not None and self.simulator.handles(task.destination):
            outcomes = self.simulator.outcomes(
                task.message, [it.recipient.address for it in task.items])
            settled = await self._settle(task, outcomes)
            await self.simulator.after(task.message, settled)
            return None
        route = await self.router.route(task.destination)
        if isinstance(route, RouteFailure):  # same answer for every recipient
            await self._settle(task, [from_route(route)] * len(task.items))
            return None
        hosts = route.hosts
        body = self.store.body(task.message.id)
        if body is None:  # deleted by the operator meanwhile
            return None
        if self.outbound is not None:
            return await self._deliver_prepared(task, hosts, body)
        result = await self.sender.send(
            task.destination, hosts, task.message.sender,
            [it.recipient.address for it in task.items], body,
            **self._send_options(task.message))
        return self._settle_soon(task, outcomes_of(result))

    async def _deliver_prepared(self, task: Task, hosts: Sequence[Target],
                                body: bytes) -> asyncio.Task[None] | None:
        """Sign once (cached per message), then one transaction per recipient when each
        gets its own VERP return path, so a bounce maps to exactly one recipient."""
        assert self.outbound is not None
        msg = task.message
        prep = await self.outbound.prepare(msg, body)
        if prep.failure is not None:
            await self._settle(task, [prep.failure] * len(task.items))
            return None
        groups: dict[tuple[str, int], list[Leased]] = {}
        for it in task.items:  # List-Unsubscribe and tracked links differ per recipient too
            key = (self.outbound.sender_for(prep, msg, it.index),
                   it.index if prep.per_recipient else -1)
            groups.setdefault(key, []).append(it)
        by_index: dict[int, Outcome] = {}
        for (sender, _), items in groups.items():
            data = await self.outbound.data_for(prep, msg, items[0].index)
            result = await self.sender.send(task.destination, hosts, sender,
                                            [it.recipient.address for it in items], data,
                                            **self._send_options(msg))
            for it, o in zip(items, outcomes_of(result), strict=True):
                by_index[it.index] = o
        outcomes = [by_index[it.index] for it in task.items]
        return self._settle_soon(task, outcomes)

    def _send_options(self, msg: MessageRecord) -> dict[str, Any]:
        """Per-message client options: the configuration set's TLS policy (tls = require
        refuses plain-text delivery). Empty when the set does not override delivery.tls."""
        if msg.configuration_set and self.configuration_set is not None:
            cs = self.configuration_set(msg.configuration_set)
            if cs is not None and cs.tls:
                return {"tls": cs.tls}
        return {}

    def _max_delivery_time(self, msg: MessageRecord) -> float:
        limit = float(self.cfg.max_delivery_time)
        if msg.configuration_set and self.configuration_set is not None:
            cs = self.configuration_set(msg.configuration_set)
            if cs is not None and cs.max_delivery_time > 0:
                return min(limit, float(cs.max_delivery_time))
        return limit

    def _settle_soon(self, task: Task,
                     outcomes: Sequence[Outcome | None]) -> asyncio.Task[None]:
        """Settle a finished transaction in the background, so the delivery worker (and
        its pooled connection) goes on to the next message instead of waiting for the
        fsync. The recipients stay INFLIGHT in the store until it lands, so a crash
        meanwhile redelivers them (at-least-once, as before). `run_until_idle` and `stop`
        wait for every settle still committing."""
        t = asyncio.get_running_loop().create_task(self._settle_logged(task, outcomes))
        self._settling.add(t)
        t.add_done_callback(self._settling.discard)
        return t

    async def _settle_logged(self, task: Task, outcomes: Sequence[Outcome | None]) -> None:
        try:
            await self._settle(task, outcomes)
        except Exception:
            # Left INFLIGHT: recovered (and retried) at the next start.
            log.exception("settling %s to %s failed", task.message.id, task.destination)

    async def _settle(self, task: Task, outcomes: Sequence[Outcome | None], *,
                      local_error: bool = False, quiet: bool = False) -> list[Settled]:
        """Write the decisions for `task`'s recipients and publish their events;
        `quiet`: none for the recipients left DEFERRED (a held recipient rechecked)."""
        now = self.clock.now()
        msg = task.message
        policy = Retry(self.cfg.retry_schedule, self._max_delivery_time(msg),
                       self.cfg.retry_jitter)
        results: list[Result] = []
        for lease, o in zip(task.items, outcomes, strict=True):
            d = decide(msg, lease.recipient, o, now, policy, self.rng)
            results.append(Result(msg.id, lease.index, d.action, d.response, d.remote_mta,
                                  d.next_attempt_at))
        settle = self.store.settle_op(results, now)
        journal = self.journal

        def events_of(done: list[Settled]) -> list[Event]:
            if quiet:
                done = [d for d in done if d.recipient.state is not State.DEFERRED]
            return self._events_for(done, now)

        if journal is None:
            settled = await self.store.write(settle)
            self.events.emit(events_of(settled))
        else:
            # The events are committed with the state change (relay/events/journal.py):
            # a crash between the commit and the log write cannot lose them.
            def op(txn: Any) -> tuple[list[Settled], list[Event], list[bytes]]:
                done = settle(txn)
                evs = events_of(done)
                return done, evs, journal.stage(txn, evs)

            settled, events, keys = await self.store.write(op)
            journal.published(events, keys)
        for hook in self.after_settle:
            try:
                await hook(settled, now)
            except Exception:
                log.exception("after-settle hook failed")
        return settled

    def _events_for(self, settled: list[Settled], now: float) -> list[Event]:
        return events_for(settled, now, self.hostname, self._max_delivery_time)


# Not attempted: a Bounce with bounceSubType OnAccountSuppressionList.
_SUPPRESSED = Outcome("bounced", 550, "5.1.1", SUPPRESSED_RESPONSE[10:])
