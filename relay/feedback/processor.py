"""From a parsed report to events, suppression and warm-up reputation.

Theory of operation: the envelope recipient of a bounce is the VERP return path relay
put on the message (relay/verp.py), which names the queue id and recipient index under
an HMAC. A complaint (ARF) usually reaches a fixed feedback address, so the original
message's Return-Path / Original-Mail-From inside the report is tried as well. Only a
token that verifies is acted on: a forged or unknown one is logged and
dropped, so nobody can poison the suppression list by mailing our bounce domain.

The message record comes from the store's "sent" sub-database (kept for
suppression.feedback_window after the queue forgets the message).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from relay.clock import Clock
from relay.config import Config
from relay.events.log import EventLog
from relay.events.model import complaint_event, feedback_bounce_event
from relay.feedback.parse import RecipientStatus, Report, parse
from relay.feedback.unparsed import UnparsedStore
from relay.queue.records import MessageRecord
from relay.queue.store import QueueStore
from relay.suppression.guard import SIMULATOR_DOMAIN, account_scope
from relay.suppression.policy import FailureClass, Reason, auto_adds, classify_failure
from relay.suppression.store import Entry, SuppressionList
from relay.tenants.model import DEFAULT_TENANT
from relay.verp import Verp

log = logging.getLogger("relay.feedback")

# (message, recipient address, diagnostic) of a reputation/policy refusal; (message,
# recipient address) of a complaint: relay/app.py feeds both to the warm-up gate.
ReputationHook = Callable[[MessageRecord, str, str], None]
ComplaintHook = Callable[[MessageRecord, str], None]


@dataclass(frozen=True)
class Handled:
    outcome: str   # bounce | transient | complaint | autoreply | delivered | forged |
                   # unknown-message | unparsed
    message_id: str = ""
    recipient: str = ""
    suppressed: bool = False


def bounce_kind(rs: RecipientStatus) -> tuple[str, str]:
    """(bounceType, bounceSubType) of a DSN recipient, from its status and diagnostic."""
    status, diag = rs.status, rs.diagnostic
    text = f"{status} {diag}"
    if "suppress" in diag.lower():
        sub = "Suppressed"
    elif status.startswith("5.1.") or classify_failure(text) is FailureClass.RECIPIENT:
        sub = "NoEmail"
    elif status in ("5.2.2", "4.2.2") or "mailbox full" in diag.lower() \
            or "quota" in diag.lower():
        sub = "MailboxFull"
    elif status in ("5.3.4", "5.2.3"):
        sub = "MessageTooLarge"
    elif status.startswith("5.7.") or classify_failure(text) is FailureClass.REPUTATION:
        sub = "ContentRejected"
    else:
        sub = "General"
    if rs.action == "delayed" or status.startswith("4."):
        return "Transient", "MailboxFull" if sub == "MailboxFull" else "General"
    if status.startswith("5.") or rs.action == "failed":
        return "Permanent", sub
    return "Undetermined", "Undetermined"


class FeedbackProcessor:
    def __init__(self, store: QueueStore, verp: Verp, events: EventLog, clock: Clock,
                 config: Callable[[], Config], state_dir: Path, *,
                 on_reputation: ReputationHook | None = None,
                 on_complaint: ComplaintHook | None = None,
                 on_unparsed_kept: Callable[[int], None] | None = None,
                 on_unparsed_dropped: Callable[[str, int], None] | None = None,
                 suppression_scope: Callable[[str], str] = account_scope,
                 on_suppressed: Callable[[str, list[Entry]], None] | None = None) -> None:
        # on_suppressed(tenant, entries): told what a complaint or bounce report put on a
        # list ("" the account's), e.g. to share it with the other nodes of a cluster.
        self.on_suppressed = on_suppressed
        self.store = store
        self.verp = verp
        self.events = events
        self.clock = clock
        self.config = config
        self.unparsed_dir = state_dir / "feedback" / "unparsed"
        # Bounded in size and age (feedback.unparsed_max_size / unparsed_max_age).
        self.unparsed = UnparsedStore(self.unparsed_dir, clock, bounds=lambda: (
            int(self.config().feedback.unparsed_max_size),
            float(self.config().feedback.unparsed_max_age)),
            on_kept=on_unparsed_kept, on_dropped=on_unparsed_dropped)
        self.suppression = SuppressionList(store)
        # A tenant's own list ("" = the account list; relay/suppression/guard.py).
        self.suppression_scope = suppression_scope
        self.on_reputation = on_reputation
        self.on_complaint = on_complaint
        self.handled: list[Handled] = []   # the last results, for tests and the admin API

    def keep_unparsed(self, data: bytes, reason: str) -> Path | None:
        """Keep a report that could not be parsed (bounded store; blocking file I/O)."""
        return self.unparsed.keep(data, reason)

    def _locate(self, addresses: list[str]) -> tuple[MessageRecord, int] | str | None:
        """The message and recipient index of the first genuine VERP token, "forged" if
        none verifies, None if it verifies but the message is unknown (forgotten)."""
        for address in addresses:
            found = self.verp.decode(address)
            if found is None:
                continue
            mid, index = found
            msg = self.store.sent_message(mid) or self.store.message(mid)
            if msg is None or index >= len(msg.recipients):
                return None
            return msg, index
        return "forged"

    async def handle(self, rcpt_tos: list[str], data: bytes,
                     report: Report | None = None) -> Handled:
        """Process one report; never raises for bad input (StoreFull/Unavailable do).
        `report`: `data` already parsed (the listener parses off the event loop); None:
        parsed here (trusted input, such as the mailbox simulator's)."""
        if report is None:
            report = parse(data)
        if report.kind == "autoreply":
            log.info("feedback: auto-reply to %s ignored", ", ".join(rcpt_tos))
            return self._done(Handled("autoreply"))
        if report.kind == "unknown":
            await asyncio.to_thread(self.keep_unparsed, data, report.reason)
            return self._done(Handled("unparsed"))
        located = self._locate([*rcpt_tos, *report.candidates])
        if located == "forged":
            log.warning("feedback: %s report to %s has no valid VERP token; ignored",
                        report.kind, ", ".join(rcpt_tos))
            return self._done(Handled("forged"))
        if located is None or isinstance(located, str):
            log.info("feedback: %s report for a message relay no longer remembers", report.kind)
            return self._done(Handled("unknown-message"))
        msg, index = located
        address = msg.recipients[index]
        if report.kind == "arf":
            return self._done(await self._complaint(msg, address, report))
        return self._done(await self._bounce(msg, address, report))

    def _done(self, h: Handled) -> Handled:
        self.handled.append(h)
        del self.handled[:-100]
        return h

    async def _bounce(self, msg: MessageRecord, address: str, report: Report) -> Handled:
        now = self.clock.now()
        rs = next((r for r in report.recipients if r.address.lower() == address.lower()),
                  None) or next((r for r in report.recipients
                                 if r.action in ("failed", "delayed")), None)
        if rs is None or rs.action in ("delivered", "relayed", "expanded"):
            return Handled("delivered", msg.id, address)
        bounce_type, sub = bounce_kind(rs)
        diagnostic = rs.diagnostic or f"smtp; {rs.status}"
        reporting = f"dns; {report.reporting_mta}" if report.reporting_mta else ""
        event = feedback_bounce_event(
            msg, [(address, rs.action or "failed", rs.status, diagnostic)], now, reporting,
            bounce_type=bounce_type, subtype=sub)
        self.events.emit([event])
        feedback_id = event.bounce.feedbackId if event.bounce is not None else ""
        suppressed = False
        if bounce_type == "Permanent":
            text = f"{rs.status} {diagnostic}"
            klass = classify_failure(text if not rs.status.startswith("5.1.") else rs.status)
            if klass is FailureClass.RECIPIENT:
                suppressed = await self._suppress(msg, address, Reason.BOUNCE, diagnostic,
                                                  feedback_id)
            elif klass is FailureClass.REPUTATION and self.on_reputation is not None:
                self.on_reputation(msg, address, diagnostic)
        return Handled("bounce" if bounce_type == "Permanent" else "transient", msg.id,
                       address, suppressed)

    async def _complaint(self, msg: MessageRecord, address: str, report: Report) -> Handled:
        now = self.clock.now()
        event = complaint_event(
            msg, [address], now, feedback_type=report.feedback_type,
            user_agent=report.user_agent, arrival=report.arrival_date)
        self.events.emit([event])
        if self.on_complaint is not None:
            self.on_complaint(msg, address)
        suppressed = False
        if report.feedback_type != "not-spam":
            suppressed = await self._suppress(
                msg, address, Reason.COMPLAINT, f"complaint; {report.feedback_type}",
                event.complaint.feedbackId if event.complaint is not None else "")
        return Handled("complaint", msg.id, address, suppressed)

    async def _suppress(self, msg: MessageRecord, address: str, reason: Reason,
                        why: str, feedback_id: str = "") -> bool:
        """Put `address` on the list that applies to `msg`'s tenant."""
        if address.rpartition("@")[2].lower() == SIMULATOR_DOMAIN:
            return False
        if not auto_adds(self.config().suppression, reason):
            return False
        entry = Entry(address, reason.value, self.clock.now(), msg.id, why[:300],
                      feedback_id)
        scope = self.suppression_scope(msg.tenant or DEFAULT_TENANT)
        lst = SuppressionList(self.store, scope) if scope else self.suppression
        added = await self.store.write(lst.add_op([entry], replace=False))
        if self.on_suppressed is not None:
            self.on_suppressed(scope, [entry])
        if added:
            log.info("suppression: added %s (%s, message %s%s)", address, reason.value,
                     msg.id, f", tenant {scope}" if scope else "")
        return True
