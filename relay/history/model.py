"""PURE records of the message history: one `HistoryMessage` per queue id and its
`TimelineEntry`s, and the rules that move a recipient's status as entries arrive.

A message's history is built from two feeds that reach it in any order and from any
worker process: the SES events relay publishes (Send, Delivery, Bounce, DeliveryDelay,
Complaint, Reject, Subscription, Rendering Failure) and the delivery attempts
(relay/delivery/attempts.py), which carry what no event does (source IP, MX host, TLS,
the transaction's duration, the DKIM selectors). Entries are kept in time order; a
recipient's status only moves forward (`advance`), so a late or replayed entry cannot
undo a final state. No I/O here.
"""

from __future__ import annotations

from typing import Literal

import msgspec

# What a timeline entry records. "attempt" is one delivery attempt (its outcome in
# `result`); the others are the states and reports SES events carry.
EntryKind = Literal["accepted", "attempt", "delivered", "deferred", "bounced", "expired",
                    "suppressed", "complained", "unsubscribed", "rejected",
                    "rendering_failure", "open", "click"]
ENTRY_KINDS: tuple[str, ...] = ("accepted", "attempt", "delivered", "deferred", "bounced",
                                "expired", "suppressed", "complained", "unsubscribed",
                                "rejected", "rendering_failure", "open", "click")

# A recipient's status, as searched (`status=`) and shown. Order = how far it got.
Status = Literal["queued", "deferred", "delivered", "bounced", "expired", "suppressed",
                 "rejected", "complained", "unsubscribed"]
STATUSES: tuple[str, ...] = ("queued", "deferred", "delivered", "bounced", "expired",
                             "suppressed", "rejected", "complained", "unsubscribed")
FINAL: frozenset[str] = frozenset({"delivered", "bounced", "expired", "suppressed",
                                   "rejected", "complained", "unsubscribed"})
# Reports about a delivered message: they follow delivery (a complaint can also arrive
# for a message whose Delivery event is not in the history yet).
AFTER_DELIVERY: frozenset[str] = frozenset({"complained", "unsubscribed"})


class TimelineEntry(msgspec.Struct, omit_defaults=True, frozen=True):
    ts: float                  # epoch seconds
    recipient: str             # the recipient it is about; "" = the whole message
    kind: str                  # one of ENTRY_KINDS
    # Delivery attempt fields (kind == "attempt").
    result: str = ""           # delivered | deferred | bounced: the attempt's outcome
    source_ip: str = ""
    mx_host: str = ""
    remote_ip: str = ""
    tls: bool = False
    reused: bool = False       # ran on a pooled connection
    response: str = ""         # the remote reply in full, or the local diagnostic
    delay_ms: int = 0          # since the message was accepted (Postfix's delay=)
    duration_ms: int = 0       # of this transaction
    provider: str = ""
    dkim: list[str] = []       # "d=example.com s=sel1" per DKIM-Signature sent
    # Fields of the event it came from (every kind but "attempt").
    event_type: str = ""       # the SES eventType
    detail: str = ""           # e.g. "Permanent/General", a complaint's feedback type
    event: bytes = b""         # the SES event JSON as published


class RecipientHistory(msgspec.Struct, omit_defaults=True):
    address: str
    status: str = "queued"     # one of STATUSES
    updated_at: float = 0.0
    attempts: int = 0
    provider: str = ""         # the provider of its first attempt ("" before one)
    last_response: str = ""


class HistoryMessage(msgspec.Struct, omit_defaults=True):
    id: str                                  # the queue id (SES's MessageId)
    received_at: float = 0.0
    sender: str = ""                         # envelope MAIL FROM
    tenant: str = ""
    configuration_set: str = ""
    tags: dict[str, list[str]] = {}
    subject: str = ""
    from_: list[str] = msgspec.field(default_factory=list, name="from")
    to: list[str] = []
    message_id: str = ""                     # the Message-ID header, without <>
    size: int = 0
    client_ip: str = ""
    auth_user: str = ""
    identity: str = ""                       # the sending identity: the From domain
    dkim: list[str] = []                     # DKIM selectors used ("d=... s=...")
    source: str = ""                         # how it came in: "smtp" | "api"
    recipients: list[RecipientHistory] = []
    # True while only attempts or later events are known (the Send not recorded yet:
    # another worker accepted it, or its batch is still pending).
    partial: bool = False


class MessageQuery(msgspec.Struct, omit_defaults=True, frozen=True):
    """A history search: every given condition must hold (subject: every word)."""

    recipient: str = ""
    sender: str = ""
    subject: str = ""
    message_id: str = ""       # a queue id or a Message-ID header value
    tenant: str = ""
    configuration_set: str = ""
    identity: str = ""
    status: str = ""
    since: float | None = None
    until: float | None = None
    limit: int = 50
    cursor: str = ""           # from the previous page's next_cursor


def advance(status: str, kind: str) -> str:
    """A recipient's status after an entry of `kind` (an attempt passes its `result`).
    Final states stay, except that a complaint or unsubscribe follows a delivery; a
    complaint or unsubscribe seen before the delivery (another worker's batch) counts
    as delivered-then-complained."""
    new = {"accepted": "queued", "deferred": "deferred", "delivered": "delivered",
           "bounced": "bounced", "expired": "expired", "suppressed": "suppressed",
           "rejected": "rejected", "complained": "complained",
           "unsubscribed": "unsubscribed"}.get(kind)
    if new is None or new == status:
        return status
    if new in AFTER_DELIVERY:
        # complained wins over unsubscribed (the stronger signal), both over delivered
        if status in ("queued", "deferred", "delivered", "unsubscribed"):
            return new
        return status
    if status in FINAL:
        return status
    if new == "queued":
        return status
    return new


def statuses_of(msg: HistoryMessage) -> set[str]:
    """The statuses a message is found under: each recipient's, plus "delivered" for one
    that complained or unsubscribed (it was delivered)."""
    out: set[str] = set()
    for r in msg.recipients:
        out.add(r.status)
        if r.status in AFTER_DELIVERY:
            out.add("delivered")
    return out


def summary_status(msg: HistoryMessage) -> str:
    """One word for a message in a list: the least settled recipient's status first
    (deferred, queued), then the worst outcome."""
    order = ("deferred", "queued", "bounced", "expired", "rejected", "suppressed",
             "complained", "unsubscribed", "delivered")
    have = {r.status for r in msg.recipients}
    for s in order:
        if s in have:
            return s
    return "queued"
