"""One record, one log line and one metric per delivery attempt.

`RecordingSender` wraps the SMTP client (relay.delivery.client.Sender) below the
warm-up shaper, so it sees exactly the transactions that were attempted (held
recipients never reach it) with the source IP the shaper bound. For each
recipient it logs one line (queue id, tenant, recipient domain, source IP, provider,
MX host and IP, TLS, delay, duration, response) on the "relay.delivery" logger, with
the same fields as `extra` for the JSON log format, and hands an `Attempt` to its
observers (Prometheus, the message history).

An `Attempt` carries what no event does: the MX host and address that answered, TLS,
whether the connection was pooled, when the transaction started and how long it took,
and the DKIM signatures of the data actually sent ("d=DOMAIN s=SELECTOR" each, read from
the header section only: `dkim_selectors`).

The queue id comes from `current_message_id`, a context variable the scheduler
sets for the task delivering a message (asyncio copies it into child tasks); the
message itself (tenant, configuration set, received time) from `current_message`.
Must not: change what is sent or its outcome.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from relay.clock import Clock
from relay.delivery.outcome import Outcome, Sender, SendResult, outcomes_of
from relay.tenants.model import DEFAULT_TENANT
from relay.warmup.providers import ProviderMap

log = logging.getLogger("relay.delivery")

current_message_id: ContextVar[str] = ContextVar("relay_current_message_id", default="")
# The MessageRecord being delivered (the shaper picks its pool and priority lane from it).
current_message: ContextVar[Any] = ContextVar("relay_current_message", default=None)

# The header section is read at most this far for DKIM-Signature fields (relay's own
# signatures come first; the whole section is bounded by limits.max_header_size anyway).
_HEADER_SCAN = 256 * 1024
# At most this many signatures are reported per attempt (relay adds one per algorithm).
_MAX_SIGNATURES = 8


@dataclass(frozen=True)
class Attempt:
    queue_id: str
    recipient_domain: str
    source_ip: str
    provider: str
    kind: str        # delivered | deferred | bounced
    response: str
    remote_mta: str
    tenant: str = DEFAULT_TENANT
    recipient: str = ""             # the full address
    mx_host: str = ""               # the MX host name that answered ("" if none did)
    remote_ip: str = ""             # its IP address
    tls: bool = False
    reused: bool = False            # the transaction ran on a pooled connection
    started_at: float = 0.0         # clock time before the transaction
    duration_ms: int = 0            # of the transaction
    dkim: list[str] = field(default_factory=list)  # "d=DOMAIN s=SELECTOR" per signature
    received_at: float = 0.0        # when the message was accepted (0: not known)
    configuration_set: str = ""

    @property
    def delay_ms(self) -> int:
        """Since the message was accepted until this attempt ended (Postfix's delay=)."""
        if not self.received_at:
            return 0
        return max(0, round((self.started_at - self.received_at) * 1000) + self.duration_ms)


@dataclass(frozen=True)
class TransactionInfo:
    """What one transaction (or simulator answer) says beyond its outcomes: who answered,
    how, when and for which message; the same for each of its recipients."""

    mx_host: str = ""
    remote_ip: str = ""
    tls: bool = False
    reused: bool = False
    started_at: float = 0.0
    duration_ms: int = 0
    dkim: tuple[str, ...] = ()
    received_at: float = 0.0
    configuration_set: str = ""


def dkim_selectors(data: bytes) -> list[str]:
    """ "d=DOMAIN s=SELECTOR" for each DKIM-Signature field of a message's header section
    (only before its first blank line, at most _HEADER_SCAN bytes, _MAX_SIGNATURES)."""
    if data.startswith((b"\r\n", b"\n")):
        return []  # no header section at all
    end = min(len(data), _HEADER_SCAN)
    for sep in (b"\r\n\r\n", b"\n\n"):  # each search stops where the last one found
        at = data.find(sep, 0, end)
        if at >= 0:
            end = at
    head = data[:end]  # the header section only: a copy of a few KB, not of the body
    low = b"\n" + head.lower()  # so every field starts after a b"\n"
    out: list[str] = []
    at = low.find(_FIELD)
    while at >= 0 and len(out) < _MAX_SIGNATURES:
        colon = at + len(_FIELD)
        while colon < len(low) and low[colon] in b" \t":
            colon += 1
        nxt = low.find(_FIELD, colon)
        if colon >= len(low) or low[colon] != ord(":"):
            at = nxt  # another field whose name starts the same ("DKIM-Signatures:")
            continue
        # The field runs to the first line end not followed by whitespace (folding);
        # positions in `low` are one past those in `head`.
        stop = _FIELD_END.search(low, colon)
        value = head[colon:stop.start() - 1 if stop is not None else len(head)]
        tags: dict[bytes, bytes] = {}
        for name, tag in _DS_TAGS.findall(b";" + value):  # a regex pass, not a loop a tag
            tags.setdefault(name, tag)
        if tags:
            out.append(f"d={tags.get(b'd', b'').strip().decode('ascii', 'replace').lower()} "
                       f"s={tags.get(b's', b'').strip().decode('ascii', 'replace')}")
        at = nxt
    return out


_FIELD = b"\ndkim-signature"
_FIELD_END = re.compile(rb"\n(?![ \t])")
# The d= and s= tags of a field's value that starts with ";" (names in lower case, as
# RFC 6376 §3.2 spells them; folding whitespace around a name); a value runs to the next ";".
_DS_TAGS = re.compile(rb";\s*([ds])\s*=([^;]*)")


def started(clock: Clock) -> float:
    """Now, to the millisecond below: an attempt's start is then never after the time of
    the events that report its outcome (SES timestamps are cut to milliseconds), so the
    history orders an attempt before its Delivery or Bounce."""
    return math.floor(clock.now() * 1000) / 1000


class RecordingSender:
    def __init__(self, inner: Sender, providers: ProviderMap, *, clock: Clock,
                 default_source: str = "",
                 observers: Sequence[Callable[[Attempt], None]] = ()) -> None:
        self.inner = inner
        self.providers = providers
        self.clock = clock
        self.default_source = default_source
        self.observers = list(observers)

    async def send(self, destination: str, targets: Sequence[Any], sender: str,
                   recipients: Sequence[str], data: bytes, **kwargs: Any) -> SendResult:
        started_at, began = started(self.clock), self.clock.monotonic()
        result = await self.inner.send(destination, targets, sender, recipients, data, **kwargs)
        duration_ms = max(0, round((self.clock.monotonic() - began) * 1000))
        try:
            self._record(targets, recipients, data, result, kwargs.get("source_address"),
                         started_at, duration_ms)
        except Exception:  # observability must never break delivery
            log.exception("could not record a delivery attempt")
        return result

    def _record(self, targets: Sequence[Any], recipients: Sequence[str], data: bytes,
                result: SendResult, source: str | None, started_at: float,
                duration_ms: int) -> None:
        hosts = [getattr(t, "host_name", "") or getattr(t, "address", "") for t in targets]
        provider = self.providers.site(hosts).provider
        src = (source if source is not None else self.default_source) or "default"
        msg = current_message.get()
        # A plain list of outcomes (a test's sender) says nothing of the connection.
        tx = TransactionInfo(
            mx_host=str(getattr(result, "remote_mta", "") or ""),
            remote_ip=str(getattr(result, "address", "") or ""),
            tls=bool(getattr(result, "tls", False)),
            reused=bool(getattr(result, "reused", False)),
            started_at=started_at, duration_ms=duration_ms,
            dkim=tuple(dkim_selectors(data)),
            received_at=float(getattr(msg, "received_at", 0.0) or 0.0),
            configuration_set=str(getattr(msg, "configuration_set", "") or ""))
        record_attempts(current_message_id.get(), recipients, outcomes_of(result), src,
                        provider, self.observers,
                        tenant=getattr(msg, "tenant", "") or DEFAULT_TENANT, transaction=tx)

    def __getattr__(self, name: str) -> Any:
        # close() and anything else the app or shaper calls on the client.
        return getattr(self.inner, name)


def _seconds(ms: int) -> float:
    return round(ms / 1000, 3)


def record_attempts(queue_id: str, recipients: Sequence[str], outcomes: Sequence[Outcome],
                    source_ip: str, provider: str,
                    observers: Sequence[Callable[[Attempt], None]], *,
                    tenant: str = DEFAULT_TENANT,
                    transaction: TransactionInfo | None = None) -> None:
    """One log line and one `Attempt` to each observer per recipient of a transaction.
    The network path (RecordingSender) and the mailbox simulator (relay/simulator.py)
    both report through here, so their log lines have the same shape."""
    tx = transaction if transaction is not None else TransactionInfo()
    for rcpt, o in zip(recipients, outcomes, strict=False):
        if o.hold_until is not None:   # held (no connection lease, a cap): never tried
            continue
        attempt = Attempt(queue_id, rcpt.rpartition("@")[2].lower(), source_ip, provider,
                          o.kind, o.response, o.remote_mta, tenant, recipient=rcpt,
                          mx_host=tx.mx_host or o.remote_mta, remote_ip=tx.remote_ip,
                          tls=tx.tls, reused=tx.reused, started_at=tx.started_at,
                          duration_ms=tx.duration_ms, dkim=list(tx.dkim),
                          received_at=tx.received_at,
                          configuration_set=tx.configuration_set)
        if log.isEnabledFor(logging.INFO):  # the line's 12-key extra is not free
            _log_attempt(attempt, tenant)
        for observe in observers:
            observe(attempt)


def _log_attempt(attempt: Attempt, tenant: str) -> None:
    delay, duration = _seconds(attempt.delay_ms), _seconds(attempt.duration_ms)
    log.info("attempt %s tenant=%s domain=%s source_ip=%s provider=%s mx_host=%s "
             "remote_ip=%s tls=%s delay=%.3f duration=%.3f result=%s response=%r",
             attempt.queue_id or "-", tenant, attempt.recipient_domain,
             attempt.source_ip, attempt.provider, attempt.mx_host or "-",
             attempt.remote_ip or "-", "yes" if attempt.tls else "no", delay, duration,
             attempt.kind, attempt.response,
             extra={"queue_id": attempt.queue_id, "tenant": tenant,
                    "recipient_domain": attempt.recipient_domain,
                    "source_ip": attempt.source_ip, "provider": attempt.provider,
                    "result": attempt.kind, "response": attempt.response,
                    "remote_mta": attempt.remote_mta, "mx_host": attempt.mx_host,
                    "remote_ip": attempt.remote_ip, "tls": attempt.tls,
                    "delay": delay, "duration": duration})
