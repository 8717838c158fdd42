"""What a submission listener hands an accepted message to: the queue, then the rest.

`QueueSubmitter` is the `Submitter` of relay/smtp/session.py: it picks the message's
configuration set (its header, else the credential's default), strips relay's own
headers, commits the message durably (relay/queue/store.py) with its Send event staged
in the same transaction when an event journal is set (relay/events/journal.py), and then
wakes the scheduler. A message refused for policy after DATA gets a Reject event here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from relay import configsets
from relay.config import Config
from relay.events.headers import header_fields, without_fields
from relay.events.journal import EventJournal
from relay.events.log import EventLog
from relay.events.model import Event, reject_event, rendering_failure_event, send_event
from relay.queue.keys import new_message_id
from relay.queue.ops import NewMessage
from relay.queue.records import MessageRecord
from relay.queue.store import QueueStore
from relay.queue.transferlog import AlreadyAccepted, TransferToSelf
from relay.queue.transferlog import check as transfer_check
from relay.queue.transferlog import record as transfer_record
from relay.smtp import replies as R
from relay.smtp.session import MessageRefused
from relay.tenants.access import first_refusal
from relay.tenants.account import AccountGate, Transaction
from relay.tenants.refusals import Refusal
from relay.users import UserStore

log = logging.getLogger("relay")


class Wakeable(Protocol):
    """What is told that there is new mail (relay.delivery.scheduler.Scheduler)."""

    def wake(self) -> None: ...


class TransferDuplicate(MessageRefused):
    """A message `relay queue transfer` handed over before: answered 250 (the sender may
    remove its copy), not queued again."""


class QueueSubmitter:
    """What the SMTP server calls: durable submit, then a Send event and a scheduler nudge."""

    def __init__(self, store: QueueStore, events: EventLog, scheduler: Wakeable,
                 config: Callable[[], Config] | None = None,
                 users: UserStore | None = None, *,
                 journal: EventJournal | None = None,
                 on_accept: Iterable[Callable[[], None]] = (),
                 account: AccountGate | None = None,
                 resources: Callable[[NewMessage], list[tuple[str, str, str]]] | None = None,
                 on_duplicate_transfer: Iterable[Callable[[], None]] = ()
                 ) -> None:
        self.store = store
        self.events = events
        self.scheduler = scheduler
        self.config = config
        self.users = users  # a credential's default configuration set
        self.on_accept: list[Callable[[], None]] = list(on_accept)
        # When set, the Send event is committed with the message (relay/events/journal.py).
        self.journal = journal
        # The account model (relay/tenants/account.py): the message's tenant, a paused
        # configuration set, quota counts committed with the message. `resources(msg)`:
        # the (kind, name, owner) of the identity, set and pool the message uses, each of
        # which must be shared or its tenant's.
        self.account = account
        self.resources = resources
        # Called for each transferred message recognised as a duplicate (metrics).
        self.on_duplicate_transfer: list[Callable[[], None]] = list(on_duplicate_transfer)

    def _choose_set(self, msg: NewMessage) -> str:
        """Set msg.configuration_set from the header, else the credential's default;
        return the header's name when it names no configured set ("" otherwise)."""
        if self.config is None:
            return ""
        requested = configsets.requested_set(msg.body, msg.header_fields)
        default = ""
        if not requested and self.users is not None and msg.auth_user:
            default = self.users.default_configuration_set(msg.auth_user)
        msg.configuration_set = configsets.resolve(self.config(), requested, default)
        if default and not msg.configuration_set:
            log.warning("user %r has default configuration set %r, which is not configured; "
                        "sent without one", msg.auth_user, default)
        return requested if requested and not msg.configuration_set else ""

    def reject(self, msg: NewMessage, reason: str) -> None:
        """A Reject event (SES `reject.reason`) for a message refused for policy after DATA."""
        self.events.emit([reject_event(self._unqueued(msg), reason)])

    def rendering_failure(self, msg: NewMessage, template_name: str, error: str) -> str:
        """A Rendering Failure event for an API message whose template could not render
        (accepted, never queued, as SES); the message id the event gives it."""
        record = self._unqueued(msg)
        self.events.emit([rendering_failure_event(record, template_name, error)])
        return record.id

    def _unqueued(self, msg: NewMessage) -> MessageRecord:
        """The record an event gives a message that is not queued."""
        if self.config is not None and not msg.configuration_set:
            self._choose_set(msg)
        now = self.store.clock.now()
        fields, truncated = header_fields(msg.body, known=msg.header_fields)
        record = MessageRecord(
            id=new_message_id(now), sender=msg.sender, recipients=list(msg.recipients),
            received_at=now, size=len(msg.body), client_ip=msg.client_ip, helo=msg.helo,
            auth_user=msg.auth_user, headers=dict(msg.headers), tags=dict(msg.tags),
            configuration_set=msg.configuration_set, header_fields=fields,
            headers_truncated=truncated, tenant=msg.tenant)
        return record

    def _refuse(self, msg: NewMessage, refusal: Refusal) -> MessageRefused:
        self.reject(msg, refusal.text)
        return MessageRefused(R.Reply(*refusal))

    async def _settle_account(self, msg: NewMessage, account: Transaction) -> None:
        """The message's tenant (X-SES-TENANT), then what its set and resources allow
        (with [cluster], the quota of a tenant named here is counted in Redis)."""
        gate = self.account
        if gate is None:
            return
        header = configsets.requested_tenant(msg.body, msg.header_fields)
        refusal = await gate.settle_tenant_shared(account, header, msg.recipients)
        msg.tenant = account.tenant
        if refusal is None:
            refusal = gate.configuration_set_paused(account, msg.configuration_set)
        if refusal is None and self.resources is not None:
            refusal = first_refusal(account.tenant, self.resources(msg))
        if refusal is not None:
            raise self._refuse(msg, refusal)

    async def submit(self, msg: NewMessage,
                     on_durable: Callable[[str], None] | None = None,
                     account: Transaction | None = None) -> str:
        # Configuration set (X-SES-CONFIGURATION-SET) and tag headers never leave relay.
        unknown = self._choose_set(msg)
        if account is not None:
            msg.tenant = account.tenant
        if unknown:
            # As SES: a set that does not exist refuses the message (554), with a Reject.
            self.reject(msg, f"Configuration set {unknown} does not exist")
            raise MessageRefused(R.CONFIGURATION_SET_UNKNOWN.with_text(
                R.CONFIGURATION_SET_UNKNOWN.text.format(name=unknown)))
        if account is not None:
            await self._settle_account(msg, account)
        msg.tracking = configsets.requested_tracking(msg.body, msg.header_fields)
        transferred = None
        if msg.auth_user:  # a relay node handing over its queue (`relay queue transfer`)
            transferred = configsets.requested_transfer_id(msg.body, msg.header_fields)
            if transferred is not None:
                msg.tags = {**msg.tags, configsets.TRANSFERRED_TAG: [transferred]}
        try:
            return await self._queue(msg, on_durable, account, transferred)
        except AlreadyAccepted as e:
            log.info("transfer %s from %r: already queued as %s, answered 250 without "
                     "queueing it again (duplicate transfer)", e.transfer_id, msg.auth_user,
                     e.queue_id)
            for cb in self.on_duplicate_transfer:
                cb()
            raise TransferDuplicate(R.TRANSFER_DUPLICATE.with_text(
                R.TRANSFER_DUPLICATE.text.format(queue_id=e.queue_id,
                                                 transfer_id=e.transfer_id))) from None
        except TransferToSelf as e:
            log.warning("transfer %s from %r refused: the message is in this node's own "
                        "queue (relay queue transfer --to names this node)", e.transfer_id,
                        msg.auth_user)
            raise MessageRefused(R.TRANSFER_TO_SELF.with_text(
                R.TRANSFER_TO_SELF.text.format(transfer_id=e.transfer_id))) from None

    def _transfer_ops(self, transferred: str | None) -> tuple[
            Callable[[object], None] | None, Callable[[object, MessageRecord], None] | None]:
        """For a transferred message: the check run before anything is written (transfer
        to self, duplicate) and the write of its id with the message."""
        if transferred is None:
            return None, None
        db = self.store.dbs
        hostname = self.config().server.hostname if self.config is not None else ""
        clock = self.store.clock

        def before(txn: object) -> None:
            transfer_check(txn, db, transferred, hostname)

        def remember(txn: object, rec: MessageRecord) -> None:
            transfer_record(txn, db, transferred, rec.id, clock.now())
        return before, remember

    async def _queue(self, msg: NewMessage, on_durable: Callable[[str], None] | None,
                     account: Transaction | None, transferred: str | None) -> str:
        before, remember = self._transfer_ops(transferred)
        stripped = configsets.strip_headers(msg.body, msg.header_fields)
        if stripped is not msg.body:
            msg.header_fields = without_fields(msg.header_fields, configsets.STRIPPED)
        msg.body = stripped
        journal = self.journal
        # The quota counts of the message's recipients, in its own transaction.
        counts = (self.account.commit_op(account)
                  if self.account is not None and account is not None else None)
        if journal is None:
            def count(txn: object, rec: MessageRecord) -> None:
                if counts is not None:
                    counts(txn)
                if remember is not None:
                    remember(txn, rec)

            record = await self.store.submit_record(
                msg, also=count if counts is not None or remember is not None else None,
                on_durable=on_durable, before=before)
            self.events.emit([send_event(record)])
        else:
            staged: list[bytes] = []
            sent: list[Event] = []

            def stage(txn: object, rec: MessageRecord) -> None:
                if counts is not None:
                    counts(txn)
                if remember is not None:
                    remember(txn, rec)
                sent.append(send_event(rec))
                staged.extend(journal.stage(txn, sent))

            record = await self.store.submit_record(msg, also=stage, on_durable=on_durable,
                                                    before=before)
            journal.published(sent, staged)
        if self.account is not None and account is not None:
            self.account.accepted(account)
        for cb in self.on_accept:
            cb()
        self.scheduler.wake()
        return record.id
