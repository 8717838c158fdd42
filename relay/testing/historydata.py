"""Message history for tests: messages built as relay records them, and `record()`, which
puts events (built by relay/events/model.py's builders) and delivery attempts into a
spool's history the way the recorder does (relay/history/recorder.py: every event's
message and entries, every attempt's entry), through HistoryStore.record_op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from relay.events.model import Event
from relay.history.entries import entries_from_event, entry_from_attempt, message_from_event
from relay.history.store import HistoryStore
from relay.queue.keys import new_message_id
from relay.queue.records import MessageRecord
from relay.queue.store import QueueStore


@dataclass(frozen=True)
class Attempt:
    """A delivery attempt as relay/delivery/attempts.py reports it (AttemptLike)."""

    queue_id: str
    recipient: str
    kind: str
    response: str
    started_at: float
    received_at: float
    provider: str = "gmail"
    source_ip: str = "127.0.0.10"
    mx_host: str = "gmail-smtp-in.l.gmail.test"
    remote_ip: str = "127.0.0.2"
    tls: bool = True
    reused: bool = False
    duration_ms: int = 120
    dkim: list[str] = field(default_factory=lambda: ["d=acme.test s=sel1"])


def history_op(store: QueueStore, events: Sequence[Event],
               attempts: Sequence[Attempt] = ()) -> Callable[[Any], int]:
    """The op recording published events and attempts as the recorder does (for
    `await store.write(op)` on a started store)."""
    messages = [m for m in (message_from_event(e) for e in events) if m is not None]
    entries = [k for e in events for k in entries_from_event(e, msgspec.json.encode(e))]
    entries += [entry_from_attempt(a) for a in attempts]
    return HistoryStore(store).record_op(messages, entries)


def record(store: QueueStore, events: Sequence[Event],
           attempts: Sequence[Attempt] = ()) -> None:
    """`history_op` written at once, on a store that is not started (as the CLI's)."""
    store.write_now(history_op(store, events, attempts))


def message(ts: float, recipients: list[str], subject: str, *, sender: str = "app@acme.test",
            from_: str = "Billing <billing@acme.test>", msgid: str = "",
            tenant: str = "", configuration_set: str = "") -> MessageRecord:
    headers = {"From": from_, "To": ", ".join(recipients), "Subject": subject}
    if msgid:
        headers["Message-ID"] = f"<{msgid}>"
    tags = {"ses:configuration-set": [configuration_set]} if configuration_set else {}
    return MessageRecord(id=new_message_id(ts), sender=sender, recipients=recipients,
                         received_at=ts, size=1234, headers=headers, tags=tags,
                         configuration_set=configuration_set, tenant=tenant,
                         client_ip="192.0.2.7", auth_user="app")
