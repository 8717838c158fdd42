"""The mailbox simulator: `<scenario>@simulator.relay.test`, answered inside relay.

Like SES's mailbox simulator, these addresses let anyone try the whole event flow with
no network and no reputation at stake. The scheduler asks `handles(domain)` before
routing; the simulator then gives each recipient the outcome the real thing would give,
and those outcomes go through the same settle path (retries, expiry, events). Scenarios
(a "+label" after the name is allowed):

    success          Delivery
    bounce           Bounce, Permanent / General ... 550 5.1.1 (never suppressed)
    ooto             Delivery, then an out-of-office auto-reply that the feedback
                     path recognises and ignores
    complaint        Delivery, then a Complaint (an ARF report through the feedback path)
    suppressionlist  Bounce, Permanent / OnAccountSuppressionList
    softbounce       4xx on every attempt: DeliveryDelay events through the real retry
                     schedule, then a Transient Bounce at max_delivery_time

Every answer is an attempt like a network one: one "relay.delivery" log line and one
`Attempt` to the observers (Prometheus, the message history) with provider, source IP
and MX host "simulator" (no remote IP, no TLS). As with SES, the simulator never moves
reputation: it bypasses the warm-up shaper (no caps used, no sends or bounces counted
against an IP) and its attempts are not remembered as sent from any IP, so its complaints
reach no IP's warm-up state either.
"""

from __future__ import annotations

import email.utils
import logging
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.parser import BytesParser
from email.policy import compat32

from relay.clock import Clock
from relay.delivery.attempts import Attempt, TransactionInfo, record_attempts, started
from relay.delivery.outcome import Kind, Outcome
from relay.events.model import SUPPRESSED_RESPONSE
from relay.feedback.processor import FeedbackProcessor
from relay.queue.ops import Settled
from relay.queue.records import MessageRecord, State
from relay.queue.store import QueueStore
from relay.tenants.model import DEFAULT_TENANT
from relay.verp import Verp

log = logging.getLogger("relay.simulator")

DOMAIN = "simulator.relay.test"
MTA = DOMAIN
# The provider and source IP its attempts (and complaints) are counted under.
PROVIDER = SOURCE = "simulator"
# The MX host its attempts report (the message history, the delivery log line).
MX_HOST = "simulator"
SCENARIOS = ("success", "bounce", "ooto", "complaint", "suppressionlist", "softbounce")


def _answer(kind: Kind, code: int, enhanced: str, text: str) -> Outcome:
    return Outcome(kind, code, enhanced, text, remote_mta=MTA)


_OUTCOMES = {
    "success": _answer("delivered", 250, "2.0.0", "Ok: delivered by the mailbox simulator"),
    "ooto": _answer("delivered", 250, "2.0.0", "Ok: delivered by the mailbox simulator"),
    "complaint": _answer("delivered", 250, "2.0.0", "Ok: delivered by the mailbox simulator"),
    "bounce": _answer("bounced", 550, "5.1.1", "simulator: the email account does not exist"),
    "suppressionlist": _answer("bounced", 550, "5.1.1", SUPPRESSED_RESPONSE[10:]),
    "softbounce": _answer("deferred", 450, "4.2.1",
                          "simulator: mailbox temporarily unavailable, try again later"),
}
_UNKNOWN = _answer("bounced", 550, "5.1.1",
                   "simulator: no such scenario (success, bounce, ooto, complaint, "
                   "suppressionlist, softbounce)")


def scenario(address: str) -> str:
    local = address.rpartition("@")[0].lower()
    return local.split("+", 1)[0]


class Simulator:
    def __init__(self, *, clock: Clock, store: QueueStore | None = None,
                 feedback: FeedbackProcessor | None = None, verp: Verp | None = None,
                 return_domain: str = "localhost",
                 observers: Sequence[Callable[[Attempt], None]] = ()) -> None:
        self.clock = clock
        self.observers = list(observers)
        self.store = store
        self.feedback = feedback
        self.verp = verp
        self.return_domain = return_domain

    def handles(self, domain: str) -> bool:
        return domain.lower().rstrip(".") == DOMAIN

    def outcomes(self, msg: MessageRecord, addresses: Sequence[str]) -> list[Outcome]:
        """The answer for each address of one attempt, logged and counted as one."""
        answers = [_OUTCOMES.get(scenario(a), _UNKNOWN) for a in addresses]
        try:
            # The same fields as a network attempt: MX host "simulator", no address, no
            # TLS, no time on the wire.
            tx = TransactionInfo(mx_host=MX_HOST, started_at=started(self.clock),
                             received_at=msg.received_at,
                             configuration_set=msg.configuration_set)
            record_attempts(msg.id, addresses, answers, SOURCE, PROVIDER, self.observers,
                            tenant=msg.tenant or DEFAULT_TENANT, transaction=tx)
        except Exception:  # observability must never break delivery
            log.exception("could not record a simulator attempt")
        return answers

    async def after(self, msg: MessageRecord, settled: list[Settled]) -> None:
        """What comes back later: a complaint report or an auto-reply, to the VERP path."""
        if self.feedback is None or self.verp is None:
            return
        for s in settled:
            if s.recipient.state is not State.DELIVERED:
                continue
            kind = scenario(s.recipient.address)
            if kind not in ("complaint", "ooto"):
                continue
            return_path = self.verp.address(msg.id, s.index, self.return_domain)
            build = arf_report if kind == "complaint" else auto_reply
            data = build(msg, s.recipient.address, return_path, self.clock.now(),
                         self._original(msg))
            try:
                await self.feedback.handle([return_path], data)
            except Exception:
                log.exception("simulator: feedback for %s failed", s.recipient.address)

    def _original(self, msg: MessageRecord) -> bytes:
        body = self.store.body(msg.id) if self.store is not None else None
        if body is None:
            return "".join(f"{k}: {v}\r\n" for k, v in msg.headers.items()).encode() + b"\r\n"
        return body


def arf_report(msg: MessageRecord, recipient: str, return_path: str, now: float,
               original: bytes) -> bytes:
    """An RFC 5965 abuse report, as a mailbox provider's feedback loop would send it."""
    report = MIMEMultipart("report", report_type="feedback-report")
    report["From"] = f"complaints@{DOMAIN}"
    report["To"] = return_path
    report["Subject"] = "Abuse report (mailbox simulator)"
    report["Date"] = email.utils.formatdate(now)
    report["Message-ID"] = email.utils.make_msgid(domain=DOMAIN)
    report.attach(MIMEText("This is an email abuse report for a message you sent.\r\n"))
    fields = MIMEText("", "plain")
    fields.set_payload(
        "Feedback-Type: abuse\r\nUser-Agent: relay-simulator/1.0\r\nVersion: 1\r\n"
        f"Original-Mail-From: <{return_path}>\r\nOriginal-Rcpt-To: <{recipient}>\r\n"
        f"Arrival-Date: {email.utils.formatdate(now)}\r\n")
    fields.replace_header("Content-Type", "message/feedback-report")
    report.attach(fields)
    orig = BytesParser(policy=compat32).parsebytes(
        f"Return-Path: <{return_path}>\r\n".encode() + original)
    report.attach(MIMEMessage(orig))
    return report.as_bytes()


def auto_reply(msg: MessageRecord, recipient: str, return_path: str, now: float,
               original: bytes) -> bytes:
    """An RFC 3834 out-of-office reply (sent to the return path, as many responders do)."""
    reply = EmailMessage()
    reply["From"] = recipient
    reply["To"] = return_path
    reply["Subject"] = "Automatic reply: " + msg.headers.get("Subject", "your message")
    reply["Auto-Submitted"] = "auto-replied"
    reply["Date"] = email.utils.formatdate(now)
    reply["Message-ID"] = email.utils.make_msgid(domain=DOMAIN)
    reply.set_content("I am out of the office and will reply when I am back.\n")
    return reply.as_bytes()
