"""PURE: the stored forms of the history's values ("history" and "history_tl"), compact.

Every delivery writes its history once and it is read rarely (a page of a search, one
message's timeline); every page written is also a page of the spool's map the writing
process reads again while the page is filled. So the stored forms leave out what need
not be stored twice:

- a message ("history"): a msgpack array of its fields in a fixed order (no field
  names; trailing fields at their defaults left out), without its queue id (the key);
- a timeline entry ("history_tl"): the same, its kind, result and event type as a small
  number (`_CODES`; a value not in that table is stored as its text);
- an SES event's `mail` object (the message as sent: its headers, tags, destination),
  the largest part of every event and the same in every event of a message: stored
  once per message, under the key that is the queue id alone (`mail_key`), the first
  key of the message's timeline prefix (so a prune of the message removes it). An entry
  whose event carried that same object keeps the event without it and the offset to put
  it back at (`event_mail`), so the event reads back byte for byte; an event whose
  `mail` differs from the stored one is kept whole.

Values written before these forms (msgpack maps with field names) still read: a map is
the old form, an array the new one (`decode_message`, `decode_entry`).
No I/O here.
"""

from __future__ import annotations

import zlib

import msgspec

from relay.history.model import HistoryMessage, TimelineEntry

# Kinds, results and SES event types as stored: their index here. Append only (an index
# written must keep its meaning); a value not listed is stored as its text.
_CODES: tuple[str, ...] = (
    "", "accepted", "attempt", "delivered", "deferred", "bounced", "expired",
    "suppressed", "complained", "unsubscribed", "rejected", "rendering_failure", "open",
    "click",
    # SES eventType
    "Send", "Delivery", "Bounce", "DeliveryDelay", "Complaint", "Reject", "Subscription",
    "Rendering Failure", "Open", "Click")
_CODE_OF: dict[str, int] = {v: n for n, v in enumerate(_CODES)}

Code = int | str


def _code(value: str) -> Code:
    return _CODE_OF.get(value, value)


def _text(code: Code) -> str:
    if isinstance(code, str):
        return code
    return _CODES[code] if 0 <= code < len(_CODES) else ""


class _StoredRecipient(msgspec.Struct, array_like=True, omit_defaults=True):
    address: str
    status: str = "queued"
    updated_at: float = 0.0
    attempts: int = 0
    provider: str = ""
    last_response: str = ""


class _StoredMessage(msgspec.Struct, array_like=True, omit_defaults=True):
    # HistoryMessage's fields, the ones most often set first; `id` is the key.
    received_at: float = 0.0
    sender: str = ""
    recipients: list[_StoredRecipient] = []
    tenant: str = ""
    identity: str = ""
    source: str = ""
    size: int = 0
    tags: dict[str, list[str]] = {}
    subject: str = ""
    from_: list[str] = []
    to: list[str] = []
    message_id: str = ""
    client_ip: str = ""
    auth_user: str = ""
    configuration_set: str = ""
    dkim: list[str] = []
    partial: bool = False
    id: str = ""    # never stored (the key): always trailing and ""


class _StoredEntry(msgspec.Struct, array_like=True, omit_defaults=True):
    # TimelineEntry's fields; an attempt's last is `dkim`, an event's `event_mail`.
    ts: float
    recipient: str
    kind: Code
    result: Code = 0
    response: str = ""
    source_ip: str = ""
    mx_host: str = ""
    remote_ip: str = ""
    tls: bool = False
    reused: bool = False
    delay_ms: int = 0
    duration_ms: int = 0
    provider: str = ""
    dkim: list[str] = []
    event_type: Code = 0
    detail: str = ""
    event: bytes = b""
    # Where the message's stored `mail` object goes back into `event`; -1: `event` is
    # whole.
    event_mail: int = -1


# Deflate with a preset dictionary for the SES event JSON kept in the history (an event
# without its `mail`, and the `mail` object): most of their bytes are the field names and
# fixed values every event repeats, which a per-value deflate cannot find in a few
# hundred bytes and the dictionary gives it (~4 times smaller: a Delivery event's 250 B
# to ~60, a `mail` object's 300-1,200 B to ~90-330). Level 1 and a 4 KB window: ~10-20 µs
# a value. Stored with the marker byte _ZLIB_V1; a value that would not get smaller is
# stored as it is (JSON starts with "{"). FROZEN: values written with it must keep
# reading; a better dictionary is a new marker.
_ZLIB_V1 = b"\x01"
_ZDICT_V1 = b"".join((
    b'{"eventType":"Bounce","mail":,"tenant":"default","bounce":{"bounceType":"Permanent",',
    b'"bounceSubType":"General","bouncedRecipients":[{"emailAddress":"","action":"failed",',
    b'"status":"5.1.1","diagnosticCode":"smtp; 550 5.1.1 "}],"timestamp":"2026-",',
    b'"feedbackId":"","reportingMTA":"dns; "}}',
    b'{"eventType":"DeliveryDelay","mail":,"tenant":"default","deliveryDelay":{"timestamp":',
    b'"2026-","delayType":"TransientCommunicationFailure","expirationTime":"",',
    b'"delayedRecipients":[{"emailAddress":"","status":"4.0.0","diagnosticCode":',
    b'"smtp; 451 4.7.1 "}],"reportingMTA":"dns; "}}',
    b'{"eventType":"Open","mail":,"tenant":"default","open":{"ipAddress":"","timestamp":',
    b'"2026-","userAgent":"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 ',
    b'(KHTML, like Gecko) Chrome/"}}',
    b'{"eventType":"Click","mail":,"tenant":"default","click":{"ipAddress":"","timestamp":',
    b'"2026-","userAgent":"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 ',
    b'(KHTML, like Gecko) Chrome/","link":"https://","linkTags":{}}}',
    b'{"eventType":"Complaint","mail":,"tenant":"default","complaint":{"complainedRecipients"',
    b':[{"emailAddress":""}],"timestamp":"2026-","feedbackId":"","complaintFeedbackType":',
    b'"abuse"}}',
    b'{"eventType":"Send","mail":,"tenant":"default","send":{}}',
    b'{"timestamp":"2026-12-08T12:00:00.000Z","messageId":"","source":"","sourceIp":"",',
    b'"sendingAccountId":"","destination":["@gmail.com"],"headersTruncated":false,',
    b'"headers":[{"name":"Received","value":"from  ([]) by  with ESMTPSA id  for <>; ',
    b'Tue, 08 Dec 2026 "},{"name":"DKIM-Signature","value":"v=1; a=rsa-sha256; ',
    b'c=relaxed/relaxed; d=; s=; t=; h=From:To:Subject:Date:Message-ID:MIME-Version:',
    b'Content-Type; bh=; b="},{"name":"From","value":" <>"},{"name":"To","value":"<>"},',
    b'{"name":"Reply-To","value":""},{"name":"Subject","value":"Your "},{"name":"Date",',
    b'"value":"Mon, 07 Dec 2026 :00 +0000"},{"name":"Message-ID","value":"<@>"},',
    b'{"name":"MIME-Version","value":"1.0"},{"name":"Content-Type","value":',
    b'"multipart/alternative; boundary=\\""},{"name":"List-Unsubscribe","value":',
    b'"<https://>, <mailto:>"},{"name":"List-Unsubscribe-Post","value":',
    b'"List-Unsubscribe=One-Click"},{"name":"X-SES-CONFIGURATION-SET","value":""}],',
    b'"commonHeaders":{"messageId":"<@>","date":"","subject":"","from":[" <>"],"to":["<>"]},',
    b'"tags":{"ses:configuration-set":[""],"ses:tenant":["default"],"ses:operation":',
    b'["SendSmtpEmail"]}}',
    b'{"eventType":"Delivery","mail":,"tenant":"default","delivery":{"timestamp":',
    b'"2026-12-08T12:00:00.000Z","processingTimeMillis":,"recipients":["@gmail.com"],',
    b'"smtpResponse":"250 2.0.0 OK ","reportingMTA":"","remoteMtaIp":""}}'))
_ZBITS = -12                  # raw deflate, a 4 KB window (the dictionary fits)
# The compressor with the dictionary loaded, copied for each value (loading it is most
# of a fresh compressor's cost).
_deflate = zlib.compressobj(1, zlib.DEFLATED, _ZBITS, 2, zlib.Z_DEFAULT_STRATEGY, _ZDICT_V1)
_PACK_MIN = 64                # smaller values are stored as they are


def pack(json: bytes) -> bytes:
    """Event JSON (or a `mail` object) as stored: deflated with the dictionary when
    that is smaller."""
    if len(json) < _PACK_MIN:
        return json
    c = _deflate.copy()
    packed = _ZLIB_V1 + c.compress(json) + c.flush()
    return packed if len(packed) < len(json) else json


def unpack(stored: bytes) -> bytes:
    """What `pack` was given."""
    if stored[:1] != _ZLIB_V1:
        return stored
    d = zlib.decompressobj(_ZBITS, _ZDICT_V1)
    return d.decompress(stored[1:]) + d.flush()


class _MailOnly(msgspec.Struct):
    mail: msgspec.Raw = msgspec.Raw(b"")


_enc = msgspec.msgpack.Encoder()
_message_dec = msgspec.msgpack.Decoder(_StoredMessage)
_entry_dec = msgspec.msgpack.Decoder(_StoredEntry)
# The forms before these: msgpack maps of the model's structs.
_old_message_dec = msgspec.msgpack.Decoder(HistoryMessage)
_old_entry_dec = msgspec.msgpack.Decoder(TimelineEntry)
_mail_dec = msgspec.json.Decoder(_MailOnly)

_MAIL_FIELD = b'"mail":'


def _is_map(raw: bytes) -> bool:
    """A msgpack map (the old forms) rather than an array: fixmap, map 16, map 32."""
    first = raw[0] if raw else 0
    return 0x80 <= first <= 0x8F or first in (0xDE, 0xDF)


# ------------------------------------------------------------------ messages

def encode_message(msg: HistoryMessage) -> bytes:
    stored = msgspec.convert(msg, _StoredMessage, from_attributes=True)
    stored.id = ""
    return _enc.encode(stored)


def decode_message(qid: str, raw: bytes) -> HistoryMessage:
    """The message stored under `qid` (its key)."""
    if _is_map(raw):
        return _old_message_dec.decode(raw)
    stored = _message_dec.decode(raw)
    stored.id = qid
    return msgspec.convert(stored, HistoryMessage, from_attributes=True)


# ------------------------------------------------------------------ timeline entries

def mail_key(qid: str) -> bytes:
    """The key of the message's stored `mail` object in "history_tl": the queue id
    alone, before every entry's key (queue id + time + sequence)."""
    return qid.encode("ascii")


def encode_mail(mail: bytes) -> bytes:
    """The stored form of a message's `mail` object (its JSON, from `mail_of`)."""
    return pack(mail)


def decode_mail(stored: bytes) -> bytes:
    """The `mail` object's JSON."""
    return unpack(stored)


def mail_of(event: bytes) -> bytes | None:
    """The `mail` object of an SES event's JSON as it is written there; None when the
    JSON has none (or is not JSON)."""
    try:
        found = bytes(_mail_dec.decode(event).mail)
    except msgspec.DecodeError:
        return None
    return found or None


def encode_entry(entry: TimelineEntry, mail: bytes | None = None) -> bytes:
    """An entry's stored form; `mail`: the message's `mail` object (its JSON), left out
    of the entry's event when the event holds the same."""
    event, at = entry.event, -1
    if mail and event:
        i = event.find(_MAIL_FIELD + mail)
        if i >= 0:
            at = i + len(_MAIL_FIELD)
            event = event[:at] + event[at + len(mail):]
    return _enc.encode(_StoredEntry(
        ts=entry.ts, recipient=entry.recipient, kind=_code(entry.kind),
        result=_code(entry.result), response=entry.response, source_ip=entry.source_ip,
        mx_host=entry.mx_host, remote_ip=entry.remote_ip, tls=entry.tls,
        reused=entry.reused, delay_ms=entry.delay_ms, duration_ms=entry.duration_ms,
        provider=entry.provider, dkim=entry.dkim, event_type=_code(entry.event_type),
        detail=entry.detail, event=pack(event), event_mail=at))


def decode_entry(raw: bytes, mail: bytes = b"") -> TimelineEntry:
    """A stored entry; `mail`: the message's `mail` object (decode_mail: an event stored
    without it gets it back)."""
    if _is_map(raw):
        return _old_entry_dec.decode(raw)
    s = _entry_dec.decode(raw)
    event = unpack(s.event)
    if s.event_mail >= 0:
        event = event[:s.event_mail] + mail + event[s.event_mail:]
    return TimelineEntry(
        ts=s.ts, recipient=s.recipient, kind=_text(s.kind), result=_text(s.result),
        source_ip=s.source_ip, mx_host=s.mx_host, remote_ip=s.remote_ip, tls=s.tls,
        reused=s.reused, response=s.response, delay_ms=s.delay_ms,
        duration_ms=s.duration_ms, provider=s.provider, dkim=s.dkim,
        event_type=_text(s.event_type), detail=s.detail, event=event)

