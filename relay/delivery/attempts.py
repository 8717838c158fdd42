"""One record, one log line and one metric per delivery attempt.

`RecordingSender` wraps the SMTP client (relay.delivery.client.Sender) below the
warm-up shaper, so it sees exactly the transactions that were attempted (held
recipients never reach it) with the source IP the shaper bound. For each
recipient it logs one line (queue id, tenant, recipient domain, source IP, provider,
response) on the "relay.delivery" logger, with the same fields as `extra` for
the JSON log format, and hands an `Attempt` to its observers (Prometheus).

The queue id comes from `current_message_id`, a context variable the scheduler
sets for the task delivering a message (asyncio copies it into child tasks).
Must not: change what is sent or its outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from relay.delivery.outcome import Outcome, Sender, SendResult, outcomes_of
from relay.tenants.model import DEFAULT_TENANT
from relay.warmup.providers import ProviderMap

log = logging.getLogger("relay.delivery")

current_message_id: ContextVar[str] = ContextVar("relay_current_message_id", default="")
# The MessageRecord being delivered (the shaper picks its pool and priority lane from it).
current_message: ContextVar[Any] = ContextVar("relay_current_message", default=None)


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


class RecordingSender:
    def __init__(self, inner: Sender, providers: ProviderMap, *, default_source: str = "",
                 observers: Sequence[Callable[[Attempt], None]] = ()) -> None:
        self.inner = inner
        self.providers = providers
        self.default_source = default_source
        self.observers = list(observers)

    async def send(self, destination: str, targets: Sequence[Any], sender: str,
                   recipients: Sequence[str], data: bytes, **kwargs: Any) -> SendResult:
        result = await self.inner.send(destination, targets, sender, recipients, data, **kwargs)
        try:
            self._record(targets, recipients, result, kwargs.get("source_address"))
        except Exception:  # observability must never break delivery
            log.exception("could not record a delivery attempt")
        return result

    def _record(self, targets: Sequence[Any], recipients: Sequence[str], result: SendResult,
                source: str | None) -> None:
        hosts = [getattr(t, "host_name", "") or getattr(t, "address", "") for t in targets]
        provider = self.providers.site(hosts).provider
        src = (source if source is not None else self.default_source) or "default"
        msg = current_message.get()
        record_attempts(current_message_id.get(), recipients, outcomes_of(result), src,
                        provider, self.observers,
                        tenant=getattr(msg, "tenant", "") or DEFAULT_TENANT)

    def __getattr__(self, name: str) -> Any:
        # close() and anything else the app or shaper calls on the client.
        return getattr(self.inner, name)


def record_attempts(queue_id: str, recipients: Sequence[str], outcomes: Sequence[Outcome],
                    source_ip: str, provider: str,
                    observers: Sequence[Callable[[Attempt], None]], *,
                    tenant: str = DEFAULT_TENANT) -> None:
    """One log line and one `Attempt` to each observer per recipient of a transaction.
    The network path (RecordingSender) and the mailbox simulator (relay/simulator.py)
    both report through here, so their log lines have the same shape."""
    for rcpt, o in zip(recipients, outcomes, strict=False):
        attempt = Attempt(queue_id, rcpt.rpartition("@")[2].lower(), source_ip, provider,
                          o.kind, o.response, o.remote_mta, tenant)
        log.info("attempt %s tenant=%s domain=%s source_ip=%s provider=%s result=%s "
                 "response=%r", attempt.queue_id or "-", tenant, attempt.recipient_domain,
                 attempt.source_ip, attempt.provider, attempt.kind, attempt.response,
                 extra={"queue_id": attempt.queue_id, "tenant": tenant,
                        "recipient_domain": attempt.recipient_domain,
                        "source_ip": attempt.source_ip, "provider": attempt.provider,
                        "result": attempt.kind, "response": attempt.response,
                        "remote_mta": attempt.remote_mta})
        for observe in observers:
            observe(attempt)
