"""PURE: the history entries an SES event or a delivery attempt makes, and the statistics
counts each entry adds.

An event gives one entry per recipient it is about (a Send: every recipient accepted; a
Bounce: each bounced recipient ...), keyed by the message's queue id (mail.messageId).
The event's JSON is kept on the first entry of its group only (`event`), the others
carry its type: they would each repeat the same bytes (the history store's view gives
every entry its event back). A delivery attempt (relay/delivery/attempts.py, duck-typed
here by `AttemptLike`: relay.history sits below relay.delivery) gives one "attempt"
entry with what no event carries: source IP, MX host, TLS, duration, DKIM selectors.
No I/O here.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from relay.events.model import Event, encoded
from relay.history.keys import DIMENSIONS, METRICS, address_of, bucket_of, domain_of
from relay.history.model import HistoryMessage, RecipientHistory, TimelineEntry

# (queue id, entry)
Keyed = tuple[str, TimelineEntry]
# (bucket start, dimension code, dimension value, metric code, count)
StatDelta = tuple[int, bytes, str, bytes, int]

# The SES operations of the SMTP interface; any other `ses:operation` came by the API.
_SMTP_OPERATIONS = frozenset({"SendSmtpEmail", ""})


class AttemptLike(Protocol):
    """One delivery attempt of one recipient, as relay/delivery/attempts.py reports it."""

    @property
    def queue_id(self) -> str: ...
    @property
    def recipient(self) -> str: ...
    @property
    def source_ip(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def kind(self) -> str: ...          # delivered | deferred | bounced
    @property
    def response(self) -> str: ...
    @property
    def mx_host(self) -> str: ...
    @property
    def remote_ip(self) -> str: ...
    @property
    def tls(self) -> bool: ...
    @property
    def reused(self) -> bool: ...
    @property
    def started_at(self) -> float: ...
    @property
    def duration_ms(self) -> int: ...
    @property
    def dkim(self) -> list[str]: ...
    @property
    def received_at(self) -> float: ...


def parse_time(text: str, default: float = 0.0) -> float:
    """An SES timestamp (ISO 8601, "Z") as epoch seconds; `default` when unreadable."""
    if not text:
        return default
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        return default
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def _strip_diag(code: str) -> str:
    """"smtp; 550 5.1.1 ..." -> "550 5.1.1 ..." (the remote reply as relay got it)."""
    head, sep, rest = code.partition(";")
    return rest.strip() if sep and head.strip().lower() in ("smtp", "x-unix", "x-postfix") \
        else code


def _group(qid: str, ts: float, event_type: str, raw: bytes, kind: str,
           items: list[tuple[str, str, str]], remote_ip: str = "") -> list[Keyed]:
    """One entry per (recipient, response, detail) of one event; the event JSON on the
    first only."""
    out: list[Keyed] = []
    for n, (rcpt, response, detail) in enumerate(items):
        out.append((qid, TimelineEntry(
            ts=ts, recipient=rcpt, kind=kind, response=response, detail=detail,
            event_type=event_type, event=raw if n == 0 else b"", remote_ip=remote_ip)))
    return out


def entries_from_event(event: Event, raw: bytes) -> list[Keyed]:
    """The entries `event` (published as the JSON `raw`) adds to its message's history;
    [] for an event about no message (Warmup*, ReputationStatusChange)."""
    qid = event.mail.messageId
    if not qid:
        return []
    kind = event.eventType
    mail_ts = parse_time(event.mail.timestamp)
    if kind == "Send":
        return _group(qid, mail_ts, kind, raw, "accepted",
                      [(a, "", "") for a in _unique(event.mail.destination)])
    if kind == "Delivery" and event.delivery is not None:
        d = event.delivery
        return _group(qid, parse_time(d.timestamp, mail_ts), kind, raw, "delivered",
                      [(a, d.smtpResponse, "") for a in _unique(d.recipients)],
                      remote_ip=d.remoteMtaIp)
    if kind == "Bounce" and event.bounce is not None:
        b = event.bounce
        detail = f"{b.bounceType}/{b.bounceSubType}"
        ts = parse_time(b.timestamp, mail_ts)
        out: list[Keyed] = []
        for r in b.bouncedRecipients:
            entry_kind = bounce_kind(b.bounceType, b.bounceSubType, r.action)
            out += _group(qid, ts, kind, raw if not out else b"", entry_kind,
                          [(r.emailAddress, _strip_diag(r.diagnosticCode), detail)])
        return out
    if kind == "DeliveryDelay" and event.deliveryDelay is not None:
        dd = event.deliveryDelay
        return _group(qid, parse_time(dd.timestamp, mail_ts), kind, raw, "deferred",
                      [(r.emailAddress, _strip_diag(r.diagnosticCode), dd.delayType)
                       for r in dd.delayedRecipients])
    if kind == "Complaint" and event.complaint is not None:
        c = event.complaint
        detail = c.complaintFeedbackType or (c.complaintSubType or "")
        return _group(qid, parse_time(c.timestamp, mail_ts), kind, raw, "complained",
                      [(r.emailAddress, "", detail) for r in c.complainedRecipients])
    if kind == "Reject" and event.reject is not None:
        return _group(qid, mail_ts, kind, raw, "rejected",
                      [(a, event.reject.reason, "") for a in _unique(event.mail.destination)])
    if kind == "Subscription" and event.subscription is not None:
        s = event.subscription
        return _group(qid, parse_time(s.timestamp, mail_ts), kind, raw, "unsubscribed",
                      [(a, "", s.source) for a in _unique(event.mail.destination)])
    if kind == "Open" and event.open is not None:
        o = event.open
        return _group(qid, parse_time(o.timestamp, mail_ts), kind, raw, "open",
                      [(a, "", _automated(o.automated, o.automatedReason))
                       for a in _unique(event.mail.destination)], remote_ip=o.ipAddress)
    if kind == "Click" and event.click is not None:
        k = event.click
        return _group(qid, parse_time(k.timestamp, mail_ts), kind, raw, "click",
                      [(a, k.link, _automated(k.automated, k.automatedReason))
                       for a in _unique(event.mail.destination)], remote_ip=k.ipAddress)
    if kind == "Rendering Failure" and event.failure is not None:
        f = event.failure
        return _group(qid, mail_ts, kind, raw, "rendering_failure",
                      [("", f.errorMessage, f.templateName)])
    return []


def batch_of(events: list[Event]) -> tuple[list[HistoryMessage], list[Keyed]]:
    """The history of `events` as one record_op's arguments: what a process without a
    recorder (the `relay queue` commands) writes for the events it publishes."""
    messages: list[HistoryMessage] = []
    entries: list[Keyed] = []
    for event in events:
        if not event.mail.messageId:
            continue
        entries.extend(entries_from_event(event, encoded(event)))
        msg = message_from_event(event)
        if msg is not None:
            messages.append(msg)
    return messages, entries


# The detail of an open or click entry a machine made (relay/tracking/automated.py): it
# is shown in the timeline but is not engagement, so it counts in no statistic.
AUTOMATED = "automated"


def _automated(automated: bool, reason: str) -> str:
    return f"{AUTOMATED}: {reason}" if automated else ""


def bounce_kind(bounce_type: str, subtype: str, action: str) -> str:
    """A bounced recipient's entry kind: relay's own answer for a suppressed address is
    "suppressed"; a Transient bounce is relay giving up after max_delivery_time
    ("expired", relay/delivery/settle.py), unless a report says the mail is only delayed
    ("deferred"); every other bounce is "bounced"."""
    if subtype == "OnAccountSuppressionList":
        return "suppressed"
    if bounce_type == "Transient":
        return "deferred" if action == "delayed" else "expired"
    return "bounced"


def _unique(addresses: list[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for a in addresses:
        if a.lower() not in seen:
            seen.add(a.lower())
            out.append(a)
    return out


def message_from_event(event: Event) -> HistoryMessage | None:
    """The message as the event's `mail` object describes it (any event of a message
    carries it; only a Send's makes it complete: `partial` is False only for a Send);
    None for an event about no message."""
    mail = event.mail
    if not mail.messageId:
        return None
    h = mail.commonHeaders
    tags = dict(mail.tags)
    operation = (tags.get("ses:operation") or [""])[0]
    sender_domain = domain_of(mail.source)
    identity = domain_of(h.from_[0]) if h.from_ else sender_domain
    return HistoryMessage(
        id=mail.messageId, received_at=parse_time(mail.timestamp), sender=mail.source,
        tenant=event.tenant or (tags.get("ses:tenant") or [""])[0],
        configuration_set=(tags.get("ses:configuration-set") or [""])[0], tags=tags,
        subject=h.subject, from_=list(h.from_), to=list(h.to),
        message_id=h.messageId.strip().strip("<>").strip(),
        client_ip=mail.sourceIp, auth_user=mail.sendingAccountId, identity=identity,
        recipients=[RecipientHistory(address=a) for a in _unique(mail.destination)],
        source="smtp" if operation in _SMTP_OPERATIONS else "api",
        partial=event.eventType != "Send")


def entry_from_attempt(attempt: AttemptLike) -> Keyed:
    """The "attempt" entry of one delivery attempt, at the time it started."""
    end = attempt.started_at + attempt.duration_ms / 1000.0
    delay = round((end - attempt.received_at) * 1000) if attempt.received_at else 0
    return attempt.queue_id, TimelineEntry(
        ts=attempt.started_at, recipient=attempt.recipient, kind="attempt",
        result=attempt.kind, source_ip=attempt.source_ip, mx_host=attempt.mx_host,
        remote_ip=attempt.remote_ip, tls=attempt.tls, reused=attempt.reused,
        response=attempt.response, delay_ms=max(0, delay),
        duration_ms=max(0, attempt.duration_ms), provider=attempt.provider,
        dkim=list(attempt.dkim))


# entry kind -> the metrics it counts (attempts are handled apart: by their result)
_METRICS_OF: dict[str, tuple[str, ...]] = {
    "accepted": ("sent",), "delivered": ("delivered",), "bounced": ("bounced",),
    "expired": ("bounced",), "suppressed": ("bounced", "suppressed"),
    "complained": ("complained",), "rejected": ("rejected",),
    "open": ("opened",), "click": ("clicked",),
}
# Metrics not counted per provider: they happen before any attempt.
_NO_PROVIDER = frozenset({"sent", "rejected"})


def metrics_of(entry: TimelineEntry) -> tuple[str, ...]:
    if entry.kind == "attempt":
        return ("attempts", "deferred") if entry.result == "deferred" else ("attempts",)
    if entry.kind in ("open", "click") and entry.detail.startswith(AUTOMATED):
        return ()  # a machine's hit: published and in the timeline, not engagement
    return _METRICS_OF.get(entry.kind, ())


def stat_deltas(entry: TimelineEntry, msg: HistoryMessage) -> list[StatDelta]:
    """What `entry` adds to the statistics: each of its metrics once per dimension (all;
    the message's tenant and identity; its configuration set when it has one; the
    recipient's provider, except for sent and rejected), in the bucket of its time. The
    message is as the history holds it when the entry is recorded."""
    metrics = metrics_of(entry)
    if not metrics:
        return []
    bucket = bucket_of(entry.ts)
    if entry.kind == "attempt":
        provider = entry.provider
    else:
        addr = address_of(entry.recipient).lower()
        provider = next((r.provider for r in msg.recipients if r.address.lower() == addr), "")
    dims: list[tuple[bytes, str]] = [(DIMENSIONS[""], ""), (DIMENSIONS["tenant"], msg.tenant),
                                     (DIMENSIONS["identity"], msg.identity)]
    if msg.configuration_set:
        dims.append((DIMENSIONS["configuration_set"], msg.configuration_set))
    out: list[StatDelta] = []
    for metric in metrics:
        code = METRICS[metric]
        for dim, value in dims:
            out.append((bucket, dim, value, code, 1))
        if metric not in _NO_PROVIDER:
            out.append((bucket, DIMENSIONS["provider"], provider, code, 1))
    return out


# SES GetMessageInsights' event types by entry kind (a Bounce's by its bounceType).
_INSIGHT = {"accepted": "SEND", "delivered": "DELIVERY", "deferred": "DELIVERY_DELAY",
            "complained": "COMPLAINT", "rejected": "REJECT",
            "rendering_failure": "RENDERING_FAILURE", "unsubscribed": "SUBSCRIPTION",
            "open": "OPEN", "click": "CLICK"}
_BOUNCE_INSIGHT = {"Permanent": "PERMANENT_BOUNCE", "Transient": "TRANSIENT_BOUNCE",
                   "Undetermined": "UNDETERMINED_BOUNCE"}


def insight_type(entry: TimelineEntry) -> str:
    """The SES GetMessageInsights `Type` of an entry; "" for a delivery attempt (no SES
    event: it is relay's own detail)."""
    if entry.event_type == "Bounce":
        return _BOUNCE_INSIGHT.get(entry.detail.partition("/")[0], "UNDETERMINED_BOUNCE")
    return _INSIGHT.get(entry.kind, "")
