"""Reputation feedback: what the warm-up gate learns after a message has gone.

A delivery attempt, a late bounce and a complaint each say something about the IP that
sent: a reputation or policy refusal (5.7.x, blocklists; relay.suppression.policy's
FailureClass.REPUTATION), reported at once by the remote or later in a DSN, pauses and
freezes the IP toward that provider (relay.warmup.reputation.note_refusal); a complaint
counts toward the IP's complaint rate. Which IP sent a message is what `SentFrom`
remembers (relay/delivery/sentfrom.py: in memory, and in the spool for deliveries the
remote accepted, so a report that arrives in another worker or after a restart still
finds it).

Pure like the rest of relay.warmup: the attribution store and the shell that holds the
gate (relay.delivery.shaper.ShapedSender: publishes the gate's notices as events and
persists its state) come in as the two protocols below; time comes from `now`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from relay.suppression.policy import FailureClass, classify_failure
from relay.warmup.gate import WarmupGate
from relay.warmup.reputation import note_refusal

log = logging.getLogger("relay")


class Attribution(Protocol):
    """Which source IP and provider delivered a message to a domain (SentFrom)."""

    def remember(self, queue_id: str, domain: str, source_ip: str, provider: str, *,
                 durable: bool) -> None: ...

    def lookup(self, queue_id: str, domain: str) -> tuple[str, str] | None: ...


class GateShell(Protocol):
    """The shell that owns the live warm-up gate (ShapedSender)."""

    @property
    def gate(self) -> WarmupGate: ...

    def publish(self) -> None: ...

    def flush_soon(self) -> None: ...


class Attempt(Protocol):
    """One delivery transaction as relay.delivery.attempts reports it."""

    @property
    def queue_id(self) -> str: ...
    @property
    def recipient_domain(self) -> str: ...
    @property
    def source_ip(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def response(self) -> str: ...


class ReputationFeedback:
    """`shell()`: the gate's shell, None when no pool is configured (then refusals are
    only logged). `fixed`: recipient domain -> (source IP, provider) of deliveries that
    never left the process (the mailbox simulator's)."""

    def __init__(self, sent_from: Attribution, shell: Callable[[], GateShell | None],
                 now: Callable[[], float],
                 fixed: Mapping[str, tuple[str, str]] | None = None) -> None:
        self.sent_from = sent_from
        self.shell = shell
        self.now = now
        self.fixed = {d.lower(): v for d, v in (fixed or {}).items()}

    def remember_attempt(self, attempt: Attempt) -> None:
        """An attempt observer (relay.delivery.attempts.RecordingSender)."""
        # Feedback follows only a delivery the remote accepted; a refusal is handled below.
        self.sent_from.remember(attempt.queue_id, attempt.recipient_domain,
                                attempt.source_ip, attempt.provider,
                                durable=attempt.kind == "delivered")
        if attempt.kind == "bounced" and \
                classify_failure(attempt.response) is FailureClass.REPUTATION:
            self.refusal(attempt.source_ip, attempt.provider, attempt.response)

    def refusal(self, ip: str, provider: str, response: str) -> None:
        """A reputation/policy refusal: the warm-up backoff of the IP that got it."""
        shell = self.shell()
        if shell is None or not ip:
            log.warning("reputation refusal (%s): %s", ip or "default source", response)
            return
        for notice in note_refusal(shell.gate, ip, provider, response, self.now()):
            log.warning("%s", notice)
        shell.publish()
        # Persist now (a late DSN is not followed by a send that would): `relay warmup
        # status` and a restart see the backoff.
        shell.flush_soon()

    def reputation_bounce(self, msg: Any, address: str, diagnostic: str) -> None:
        """A late bounce for reputation (relay.feedback.processor's on_reputation)."""
        found = self.sent_from.lookup(msg.id, address.rpartition("@")[2])
        if found is None:
            log.warning("reputation bounce for %s (message %s), sending IP unknown: %s",
                        address, msg.id, diagnostic)
            return
        self.refusal(found[0], found[1], diagnostic)

    def complaint_source(self, event: Any) -> tuple[str, str] | None:
        """(source IP, provider) of the delivery a Complaint event is about, if recent."""
        for r in getattr(event.complaint, "complainedRecipients", None) or []:
            domain = r.emailAddress.rpartition("@")[2]
            if domain.lower() in self.fixed:
                return self.fixed[domain.lower()]
            found = self.sent_from.lookup(event.mail.messageId, domain)
            if found is not None:
                return found
        return None

    def complaint(self, msg: Any, address: str) -> None:
        """A complaint (relay.feedback.processor's on_complaint): the sending IP's rate."""
        found = self.sent_from.lookup(msg.id, address.rpartition("@")[2])
        shell = self.shell()
        if found is not None and shell is not None:
            notice = shell.gate.note_complaint(found[0], self.now())
            if notice:
                log.warning("%s", notice)
            shell.publish()
