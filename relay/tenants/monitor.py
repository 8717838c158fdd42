"""Reputation status from what happens to each tenant's mail: an event-log subscriber.

`ReputationMonitor` sees every event relay publishes and counts, per tenant and per
configuration set: sends (a Send's recipients), hard bounces (Permanent bounces, except
those relay itself answered for a suppressed address) and complaints. The mailbox
simulator's recipients are never counted (SES's rule: the simulator never moves
reputation). The counts are written to the spool in batches (relay/tenants/repstore.py,
one group-commit op per batch at most every `flush` seconds, never a sync of their own);
a kill -9 can lose the last batch's counts, never a message.

After a batch with bounces or complaints, and every `evaluate_every` seconds for every
known scope (so UnderReview recovers and old counts age out), each scope is evaluated
(relay/tenants/reputation.py) on its counts as the spool holds them (the sum of every
process on it). A change is stored only when the stored status is still the one it was
decided from, inside the same write transaction, so two workers that decide the same
change publish it once; then a ReputationStatusChange event goes to the tenant's
destinations and `on_change` observers (metrics) are told.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from relay.clock import Clock
from relay.events.log import EventLog
from relay.events.model import Event, reputation_event
from relay.queue.store import QueueStore
from relay.tasks import cancel_and_wait
from relay.tenants import repstore
from relay.tenants.model import (
    DEFAULT_TENANT,
    StatusRecord,
    configuration_set_scope,
    tenant_scope,
)
from relay.tenants.reputation import ReputationBook
from relay.tenants.store import STATUS_DB, TenantStore, parse_scope, set_status

log = logging.getLogger("relay.tenants")

_status_dec = msgspec.msgpack.Decoder(StatusRecord)

# (scope, old status, new record)
ChangeObserver = Callable[[str, StatusRecord, StatusRecord], None]


class ReputationMonitor:
    def __init__(self, store: QueueStore, tenants: TenantStore, book: ReputationBook,
                 events: EventLog, clock: Clock, *, is_simulator: Callable[[str], bool],
                 on_change: Sequence[ChangeObserver] = (), flush: float = 1.0,
                 evaluate_every: float = 3600.0) -> None:
        self.store = store
        self.tenants = tenants
        self.book = book
        self.events = events
        self.clock = clock
        self.is_simulator = is_simulator
        self.on_change = list(on_change)
        self.flush_interval = flush
        self.evaluate_every = evaluate_every
        self._pending: list[repstore.Entry] = []
        # scope -> its tenant, for the events of a change; scopes with feedback pending
        self._tenant_of: dict[str, str] = {}
        self._to_evaluate: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._last_sweep = clock.now()

    # ------------------------------------------------------------------ counting (sync)

    def __call__(self, event: Event) -> None:
        """The EventLog subscriber: count what `event` says, nothing else (no I/O)."""
        kind = event.eventType
        if kind == "Send":
            n = sum(1 for a in event.mail.destination if not self.is_simulator(a))
            if n:
                self._count(event, sends=n)
        elif kind == "Bounce" and event.bounce is not None:
            b = event.bounce
            if b.bounceType != "Permanent" or b.bounceSubType == "OnAccountSuppressionList":
                return
            n = sum(1 for r in b.bouncedRecipients if not self.is_simulator(r.emailAddress))
            if n:
                self._count(event, bounces=n)
        elif kind == "Complaint" and event.complaint is not None:
            n = sum(1 for r in event.complaint.complainedRecipients
                    if not self.is_simulator(r.emailAddress))
            if n:
                self._count(event, complaints=n)

    def _count(self, event: Event, *, sends: int = 0, bounces: int = 0,
               complaints: int = 0) -> None:
        now = self.clock.now()
        tenant = event.tenant or DEFAULT_TENANT
        scopes = [tenant_scope(tenant)]
        configuration_set = (event.mail.tags.get("ses:configuration-set") or [""])[0]
        if configuration_set:
            scopes.append(configuration_set_scope(configuration_set))
        for scope in scopes:
            self._pending.append(self.book.record(scope, now, sends=sends, bounces=bounces,
                                                  complaints=complaints))
            self._tenant_of[scope] = tenant
            if bounces or complaints:
                self._to_evaluate.add(scope)

    # ------------------------------------------------------------------ the loop

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reputation-monitor")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self.store.running:
            await self.run_once()  # the last counts, in the final commit

    async def _run(self) -> None:
        while True:
            await self.clock.sleep(self.flush_interval)  # one batch per interval
            try:
                await self.run_once()
            except Exception:
                log.exception("reputation: counting or evaluating failed; retrying")

    async def run_once(self) -> list[tuple[str, StatusRecord, StatusRecord]]:
        """Write the pending counts, then evaluate the scopes that got feedback (and all
        known scopes every `evaluate_every`); return the changes made."""
        # The scopes to evaluate are taken with the counts: counts that arrive while this
        # batch is written wait for the next one, and so does their scope's evaluation.
        pending, self._pending = self._pending, []
        scopes, self._to_evaluate = self._to_evaluate, set()
        if pending:
            await self.store.write(repstore.record_op(self.store, pending))
        now = self.clock.now()
        if now - self._last_sweep >= self.evaluate_every:
            self._last_sweep = now
            scopes |= set(self.book.scopes()) | set(self.tenants.statuses())
        changes = []
        for scope in sorted(scopes):
            change = await self._evaluate(scope, now)
            if change is not None:
                changes.append(change)
        return changes

    async def _evaluate(self, scope: str,
                        now: float) -> tuple[str, StatusRecord, StatusRecord] | None:
        repstore.refresh(self.store, self.book, scope, now)
        old = self.tenants.status(scope)
        new = self.book.evaluate(scope, old, now)
        if new is None:
            return None
        status_db = self.store.named_db(STATUS_DB)
        key = scope.encode("utf-8")
        dbs = self.store.dbs

        def op(txn: Any) -> bool:
            raw = txn.get(key, db=status_db)
            stored = _status_dec.decode(raw) if raw is not None else StatusRecord()
            if stored.status != old.status or stored.changed_at != old.changed_at:
                return False  # changed meanwhile (an operator, another worker)
            set_status(dbs, scope, new)(txn)
            return True

        if not await self.tenants.write(op):
            return None
        self._publish(scope, old, new, now)
        return scope, old, new

    def _publish(self, scope: str, old: StatusRecord, new: StatusRecord, now: float) -> None:
        kind, name = parse_scope(scope)
        tenant = name if kind == "tenant" else self._tenant_of.get(scope, DEFAULT_TENANT)
        log.warning("reputation: %s %s is now %s (was %s): %s", kind, name, new.status,
                    old.status, new.reason)
        self.events.emit([reputation_event(
            scope="tenant" if kind == "tenant" else "configurationSet", name=name,
            tenant=tenant, old=old.status, new=new, now=now)])
        for observe in self.on_change:
            try:
                observe(scope, old, new)
            except Exception:  # observability must never stop the monitor
                log.exception("reputation change observer failed")
