"""Event records shaped like SES event publishing.

Field names follow the SES event JSON (eventType, mail.messageId,
mail.commonHeaders, delivery.smtpResponse, bounce.bouncedRecipients ...), so
code written against SES notifications reads relay's events unchanged. Builders
here are pure: records in, event out; time comes in as an argument.
"""

from __future__ import annotations

import datetime as dt
import re
import typing
from collections.abc import Sequence
from typing import Literal

import msgspec

from relay.events.headers import address_list, decode_words
from relay.queue.records import MessageRecord
from relay.tenants.model import DEFAULT_TENANT, StatusRecord

# The eventType of the events a message gets (the operator's Warmup* events aside), in
# the order the admin API lists them (/api/events?type=).
EVENT_TYPES: list[str] = ["Send", "Delivery", "Bounce", "Complaint", "DeliveryDelay", "Reject",
                          "Subscription", "ReputationStatusChange", "Rendering Failure",
                          "Open", "Click"]
# The same types as an event destination's event_types names them (SES's lowerCamel
# spelling there), in the order of its default.
EventTypeName = Literal["send", "reject", "delivery", "bounce", "complaint", "deliveryDelay",
                        "subscription", "reputationStatusChange", "renderingFailure",
                        "open", "click"]
EVENT_TYPE_NAMES: tuple[EventTypeName, ...] = typing.get_args(EventTypeName)


def iso(ts: float) -> str:
    """SES timestamps: ISO 8601, UTC, milliseconds, trailing Z."""
    second = int(ts)
    # An event carries the time it reports and its message's received time, seconds
    # apart, and events come in bursts: each second's "YYYY-MM-DDTHH:MM:SS." is
    # formatted once (a datetime and strftime, ~5 µs). Not within half a microsecond of
    # the next second, which datetime rounds up to (so the cache never changes an answer).
    if ts >= 0 and ts - second < 0.9999995:
        prefix = _iso_seconds.get(second)
        if prefix is None:
            if len(_iso_seconds) >= _ISO_SECONDS_MAX:
                _iso_seconds.clear()
            prefix = _iso_seconds[second] = _iso_prefix(second)
        return prefix + f"{int(ts * 1000) % 1000:03d}Z"
    return _iso_prefix(ts) + f"{int(ts * 1000) % 1000:03d}Z"


def _iso_prefix(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.")


# second -> its prefix; a plain dict (each get and set is atomic under the GIL).
_iso_seconds: dict[int, str] = {}
_ISO_SECONDS_MAX = 4096


class Header(msgspec.Struct):
    name: str
    value: str


class CommonHeaders(msgspec.Struct, omit_defaults=True):
    messageId: str = ""
    date: str = ""
    subject: str = ""
    from_: list[str] = msgspec.field(default_factory=list, name="from")
    to: list[str] = msgspec.field(default_factory=list)


class Mail(msgspec.Struct):
    timestamp: str
    messageId: str
    source: str
    sourceIp: str
    sendingAccountId: str
    destination: list[str]
    headersTruncated: bool
    headers: list[Header]
    commonHeaders: CommonHeaders
    tags: dict[str, list[str]]


class Send(msgspec.Struct):
    pass


class Delivery(msgspec.Struct):
    timestamp: str
    processingTimeMillis: int
    recipients: list[str]
    smtpResponse: str
    reportingMTA: str
    remoteMtaIp: str = ""


class BouncedRecipient(msgspec.Struct):
    emailAddress: str
    action: str
    status: str
    diagnosticCode: str


class Bounce(msgspec.Struct):
    bounceType: str          # Permanent | Transient | Undetermined
    bounceSubType: str       # General | NoEmail | MailboxFull | MessageTooLarge | ...
    bouncedRecipients: list[BouncedRecipient]
    timestamp: str
    feedbackId: str
    reportingMTA: str


class DelayedRecipient(msgspec.Struct):
    emailAddress: str
    status: str
    diagnosticCode: str


class DeliveryDelay(msgspec.Struct):
    timestamp: str
    delayType: str
    expirationTime: str
    delayedRecipients: list[DelayedRecipient]
    reportingMTA: str


class ComplainedRecipient(msgspec.Struct):
    emailAddress: str


class Complaint(msgspec.Struct, omit_defaults=True):
    complainedRecipients: list[ComplainedRecipient]
    timestamp: str
    feedbackId: str
    complaintSubType: str | None = None   # SES: null, or "OnAccountSuppressionList"
    userAgent: str = ""
    complaintFeedbackType: str = ""       # abuse | fraud | virus | not-spam | other ...
    arrivalDate: str = ""


class Reject(msgspec.Struct):
    reason: str


class Failure(msgspec.Struct):
    """SES's Rendering Failure: a template that could not render with a message's data."""

    templateName: str
    errorMessage: str


class Subscription(msgspec.Struct):
    contactList: str
    timestamp: str
    source: str
    newTopicPreferences: dict[str, object]
    oldTopicPreferences: dict[str, object]


class Open(msgspec.Struct):
    """A recipient's mail client loaded the open pixel (relay/tracking/). `automated`:
    a machine made the hit (a security scanner, a prefetching proxy ...: relay's rules,
    relay/data/tracking_bots.toml), with the rule that said so in `automatedReason`
    ("" for a person's); such hits are published but never count as engagement."""

    ipAddress: str
    timestamp: str
    userAgent: str
    automated: bool = False
    automatedReason: str = ""


class Click(msgspec.Struct):
    """A recipient followed a tracked link: the original URL and its `ses:tags` (SES's
    linkTags: each name with its values); `automated` as in Open."""

    ipAddress: str
    timestamp: str
    userAgent: str
    link: str
    linkTags: dict[str, list[str]]
    automated: bool = False
    automatedReason: str = ""


class Warmup(msgspec.Struct):
    """relay-specific (no SES counterpart): a warm-up plan froze or an IP backed off."""

    timestamp: str
    ip: str
    provider: str          # "" = every provider (a reputation freeze)
    reason: str
    until: str             # ISO time the pause/freeze ends; "" = until resumed by hand
    action: str            # pause | freeze | pause_and_freeze


class ReputationStatusChange(msgspec.Struct):
    """A tenant's or configuration set's reputation status changed (relay/tenants/)."""

    timestamp: str
    scope: str             # "tenant" | "configurationSet"
    name: str              # the tenant's or the configuration set's name
    oldStatus: str         # Healthy | UnderReview | Paused
    newStatus: str
    reason: str
    automatic: bool        # by the reputation figures (True) or by an operator
    changedBy: str         # the operator ("" when automatic)
    bounceRate: float      # the figures when it changed, over the window since
    complaintRate: float   # lastFreshStart
    volume: int
    lastFreshStart: str


class Event(msgspec.Struct, omit_defaults=True):
    eventType: str
    mail: Mail
    # The sending tenant (also mail.tags["ses:tenant"]); "" only on events about no
    # message (the operator's Warmup* events).
    tenant: str = ""
    send: Send | None = None
    delivery: Delivery | None = None
    bounce: Bounce | None = None
    deliveryDelay: DeliveryDelay | None = None
    complaint: Complaint | None = None
    reject: Reject | None = None
    subscription: Subscription | None = None
    warmup: Warmup | None = None
    reputationStatusChange: ReputationStatusChange | None = None
    failure: Failure | None = None  # a Rendering Failure (SES's field name)
    open: Open | None = None
    click: Click | None = None


# The diagnostic of a recipient that relay did not attempt because it is suppressed.
SUPPRESSED_RESPONSE = ("550 5.1.1 Recipient address is on the suppression list for this "
                       "account (OnAccountSuppressionList); relay did not send the message")


_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


def enhanced_of(response: str) -> str:
    m = _ENHANCED.search(response)
    return m.group(0) if m else ""


def bounce_subtype(response: str) -> str:
    """SES bounceSubType for a permanent failure, from its enhanced status code (RFC 3463)."""
    if "OnAccountSuppressionList" in response:
        return "OnAccountSuppressionList"
    code = enhanced_of(response)
    if code in ("5.1.1", "5.1.6", "5.1.0") or code.startswith("5.1.1"):
        return "NoEmail"
    if code in ("5.2.2", "4.2.2"):
        return "MailboxFull"
    if code in ("5.3.4", "5.2.3"):
        return "MessageTooLarge"
    if code.startswith("5.7."):
        return "ContentRejected"
    return "General"


def delay_type(response: str) -> str:
    """SES delayType for a temporary failure."""
    code = enhanced_of(response)
    if code == "4.2.2":
        return "MailboxFull"
    if code.startswith("4.4."):
        return "TransientCommunicationFailure"
    if code.startswith("4.7."):
        return "IPFailure"
    return "Undetermined"


def mail_of(msg: MessageRecord, destination: list[str] | None = None) -> Mail:
    """SES `mail`: commonHeaders with RFC 2047 encoded-words decoded (subject, display
    names), `headers` every field as sent (the common ones only for a record written
    before all were kept)."""
    h = msg.headers
    common = CommonHeaders(
        messageId=h.get("Message-ID", ""), date=h.get("Date", ""),
        subject=decode_words(h.get("Subject", "")),
        from_=address_list(h["From"]) if "From" in h else [],
        to=address_list(h["To"]) if "To" in h else [])
    fields = msg.header_fields or list(h.items())
    return Mail(
        timestamp=iso(msg.received_at), messageId=msg.id, source=msg.sender,
        sourceIp=msg.client_ip, sendingAccountId=msg.auth_user,
        destination=list(destination if destination is not None else msg.recipients),
        headersTruncated=msg.headers_truncated, headers=[Header(k, v) for k, v in fields],
        commonHeaders=common, tags=tags_of(msg))


def tenant_of(msg: MessageRecord) -> str:
    """The message's tenant; a record from before tenants belongs to the default one."""
    return msg.tenant or DEFAULT_TENANT


def tags_of(msg: MessageRecord) -> dict[str, list[str]]:
    """The message tags, plus SES's `ses:configuration-set` when the message has one,
    `ses:tenant` always, and `ses:operation`: how it was sent, SES's "SendSmtpEmail" for
    SMTP (the SES API's messages carry "SendEmail" and the key as `ses:caller-identity`,
    relay/sesapi/operations.py)."""
    tags = {**msg.tags, "ses:tenant": [tenant_of(msg)]}
    tags.setdefault("ses:operation", ["SendSmtpEmail"])
    if msg.configuration_set:
        tags["ses:configuration-set"] = [msg.configuration_set]
    return tags


def configuration_set_of(event: Event) -> str:
    values = event.mail.tags.get("ses:configuration-set") or [""]
    return values[0]


def send_event(msg: MessageRecord) -> Event:
    return Event(eventType="Send", mail=mail_of(msg),
                 tenant=tenant_of(msg), send=Send())


def delivery_event(msg: MessageRecord, recipients: list[str], response: str, now: float,
                   reporting_mta: str, remote_ip: str = "") -> Event:
    return Event(eventType="Delivery", mail=mail_of(msg),
                 tenant=tenant_of(msg), delivery=Delivery(
        timestamp=iso(now), processingTimeMillis=max(0, int((now - msg.received_at) * 1000)),
        recipients=recipients, smtpResponse=response, reportingMTA=reporting_mta,
        remoteMtaIp=remote_ip))


def bounce_feedback_id(message_id: str, now: float) -> str:
    """The feedbackId of the Bounce that `bounce_event` makes for a message at `now`."""
    return f"{message_id}-{int(now * 1000):x}"


def bounce_event(msg: MessageRecord, recipients: list[str], response: str, now: float,
                 reporting_mta: str, *, expired: bool = False,
                 subtype: str | None = None) -> Event:
    status = enhanced_of(response) or ("4.4.7" if expired else "5.0.0")
    bounce_type = "Transient" if expired else "Permanent"
    sub = subtype or ("General" if expired else bounce_subtype(response))
    return Event(eventType="Bounce", mail=mail_of(msg),
                 tenant=tenant_of(msg), bounce=Bounce(
        bounceType=bounce_type, bounceSubType=sub,
        bouncedRecipients=[BouncedRecipient(r, "failed", status, f"smtp; {response}")
                           for r in recipients],
        timestamp=iso(now), feedbackId=bounce_feedback_id(msg.id, now),
        reportingMTA=f"dns; {reporting_mta}"))


def delay_event(msg: MessageRecord, recipients: list[str], response: str, now: float,
                expires_at: float, reporting_mta: str) -> Event:
    status = enhanced_of(response) or "4.0.0"
    return Event(eventType="DeliveryDelay", mail=mail_of(msg),
                 tenant=tenant_of(msg), deliveryDelay=DeliveryDelay(
        timestamp=iso(now), delayType=delay_type(response), expirationTime=iso(expires_at),
        delayedRecipients=[DelayedRecipient(r, status, f"smtp; {response}") for r in recipients],
        reportingMTA=f"dns; {reporting_mta}"))


def complaint_event(msg: MessageRecord, recipients: list[str], now: float, *,
                    feedback_type: str = "", user_agent: str = "", arrival: float | None = None,
                    feedback_id: str = "") -> Event:
    return Event(eventType="Complaint", mail=mail_of(msg),
                 tenant=tenant_of(msg), complaint=Complaint(
        complainedRecipients=[ComplainedRecipient(r) for r in recipients],
        timestamp=iso(now), feedbackId=feedback_id or f"{msg.id}-c{int(now * 1000):x}",
        userAgent=user_agent, complaintFeedbackType=feedback_type,
        arrivalDate=iso(arrival if arrival is not None else now)))


def feedback_bounce_event(msg: MessageRecord, recipients: list[tuple[str, str, str, str]],
                          now: float, reporting_mta: str, *, bounce_type: str,
                          subtype: str, feedback_id: str = "") -> Event:
    """A Bounce from an asynchronous report: (address, action, status, diagnostic) each."""
    return Event(eventType="Bounce", mail=mail_of(msg),
                 tenant=tenant_of(msg), bounce=Bounce(
        bounceType=bounce_type, bounceSubType=subtype,
        bouncedRecipients=[BouncedRecipient(a, act, st, diag)
                           for a, act, st, diag in recipients],
        timestamp=iso(now), feedbackId=feedback_id or f"{msg.id}-b{int(now * 1000):x}",
        reportingMTA=reporting_mta))


def subscription_event(msg: MessageRecord, address: str, now: float,
                       source: str = "UnsubscribeHeader") -> Event:
    """A recipient unsubscribed (RFC 8058 one-click): SES's Subscription event, with the
    configuration set as the contact list and no topics (unsubscribeAll)."""
    return Event(eventType="Subscription", mail=mail_of(msg, [address]),
                 tenant=tenant_of(msg),
                 subscription=Subscription(
                     contactList=msg.configuration_set, timestamp=iso(now), source=source,
                     newTopicPreferences={"unsubscribeAll": True,
                                          "topicSubscriptionStatus": []},
                     oldTopicPreferences={"unsubscribeAll": False,
                                          "topicSubscriptionStatus": []}))


def open_event(msg: MessageRecord, address: str, now: float, *, ip: str, user_agent: str,
               automated: bool, reason: str) -> Event:
    """SES's Open: recipient `address` of `msg` loaded the open pixel."""
    return Event(eventType="Open", mail=mail_of(msg, [address]), tenant=tenant_of(msg),
                 open=Open(ipAddress=ip, timestamp=iso(now), userAgent=user_agent,
                           automated=automated, automatedReason=reason))


def click_event(msg: MessageRecord, address: str, now: float, *, ip: str, user_agent: str,
                link: str, tags: Sequence[tuple[str, str]], automated: bool,
                reason: str) -> Event:
    """SES's Click: recipient `address` of `msg` followed `link` (its ses:tags pairs
    become linkTags, each name with the list of its values)."""
    link_tags: dict[str, list[str]] = {}
    for name, value in tags:
        link_tags.setdefault(name, []).append(value)
    return Event(eventType="Click", mail=mail_of(msg, [address]), tenant=tenant_of(msg),
                 click=Click(ipAddress=ip, timestamp=iso(now), userAgent=user_agent,
                             link=link, linkTags=link_tags, automated=automated,
                             automatedReason=reason))


def reject_event(msg: MessageRecord, reason: str) -> Event:
    return Event(eventType="Reject", mail=mail_of(msg),
                 tenant=tenant_of(msg), reject=Reject(reason))


def rendering_failure_event(msg: MessageRecord, template_name: str, error: str) -> Event:
    return Event(eventType="Rendering Failure", mail=mail_of(msg),
                 tenant=tenant_of(msg), failure=Failure(template_name, error))


def warmup_event(kind: str, ip: str, provider: str, reason: str, until: float | None,
                 action: str, now: float) -> Event:
    """"WarmupFreeze" or "WarmupBackoff": not about one message, so `mail` is empty."""
    mail = Mail(timestamp=iso(now), messageId="", source="", sourceIp=ip,
                sendingAccountId="", destination=[], headersTruncated=False, headers=[],
                commonHeaders=CommonHeaders(), tags={})
    return Event(eventType=kind, mail=mail, warmup=Warmup(
        iso(now), ip, provider, reason, iso(until) if until is not None else "", action))


def reputation_event(*, scope: str, name: str, tenant: str, old: str, new: StatusRecord,
                     now: float) -> Event:
    """A ReputationStatusChange: not about one message, so `mail` carries only the tags
    that route it (the tenant, and the configuration set when it is the set's status)."""
    tags = {"ses:tenant": [tenant]}
    if scope == "configurationSet":
        tags["ses:configuration-set"] = [name]
    mail = Mail(timestamp=iso(now), messageId="", source="", sourceIp="",
                sendingAccountId="", destination=[], headersTruncated=False, headers=[],
                commonHeaders=CommonHeaders(), tags=tags)
    return Event(eventType="ReputationStatusChange", mail=mail, tenant=tenant,
                 reputationStatusChange=ReputationStatusChange(
                     timestamp=iso(now), scope=scope, name=name, oldStatus=old,
                     newStatus=new.status, reason=new.reason, automatic=new.automatic,
                     changedBy=new.changed_by, bounceRate=new.bounce_rate,
                     complaintRate=new.complaint_rate, volume=new.volume,
                     lastFreshStart=iso(new.last_fresh_start) if new.last_fresh_start else ""))


# ---------------------------------------------------------------------------
# An event's JSON, encoded once per event for all who write it

_encoder = msgspec.json.Encoder()
# (the event being handed to the event log's subscribers, its JSON): set by EventLog.emit
# around the subscriber calls only, so an event changed later is never answered stale.
_publishing: tuple[Event, bytes] | None = None


def encoded(event: Event) -> bytes:
    """`event` as JSON: while the event log hands it to its subscribers (the history
    recorder, the event destinations), the bytes the log wrote, not a second encoding."""
    current = _publishing
    if current is not None and current[0] is event:
        return current[1]
    return _encoder.encode(event)


def publishing(event: Event | None, data: bytes = b"") -> None:
    """Mark `event` (None: no event) as the one being published, encoded as `data`."""
    global _publishing
    _publishing = (event, data) if event is not None else None
