"""The history's stored forms: every field of a message and of each kind of timeline
entry reads back as written, an event's `mail` object left out of its entry comes back
byte for byte, event JSON deflated with the dictionary reads back, a value the codes do
not know is kept as text, and values in the form written before (msgpack maps) read."""

from __future__ import annotations

import msgspec
import pytest

from relay.events import model as M
from relay.history import codec
from relay.history.entries import entries_from_event
from relay.history.model import HistoryMessage, RecipientHistory, TimelineEntry
from relay.queue.records import MessageRecord

T = 1_790_035_200.25
QID = "01a0b0c0d0e0a1b2c3d4"


def _record(headers: int = 6) -> MessageRecord:
    fields = [("From", "Acme Orders <orders@acme.example>"), ("To", "ann@gmail.com"),
              ("Subject", "Ihre Bestellung #42 — versandt"), ("Message-ID", "<42@acme.example>"),
              ("Date", "Tue, 08 Dec 2026 02:46:53 +0000"), ("MIME-Version", "1.0")]
    fields += [(f"X-Extra-{n}", "v" * 40) for n in range(headers - len(fields))]
    return MessageRecord(id=QID, sender="bounce@acme.example", recipients=["ann@gmail.com"],
                         received_at=T, size=4000, client_ip="192.0.2.7", auth_user="app",
                         headers=dict(fields[:5]), header_fields=fields[:headers],
                         tags={"campaign": ["autumn"]}, configuration_set="orders",
                         tenant="acme")


def _message() -> HistoryMessage:
    return HistoryMessage(
        id=QID, received_at=T, sender="bounce@acme.example", tenant="acme",
        configuration_set="orders", tags={"campaign": ["autumn", "x"], "ses:tenant": ["acme"]},
        subject="Ihre Bestellung — versandt", from_=["Acme <orders@acme.example>"],
        to=["ann@gmail.com", "bob@yahoo.com"], message_id="42@acme.example", size=4000,
        client_ip="192.0.2.7", auth_user="app", identity="acme.example",
        dkim=["d=acme.example s=s1"], source="api",
        recipients=[RecipientHistory("ann@gmail.com", "delivered", T + 2, 1, "gmail",
                                     "250 2.0.0 OK"),
                    RecipientHistory("bob@yahoo.com")],
        partial=True)


def test_a_message_reads_back_with_every_field() -> None:
    msg = _message()
    stored = codec.encode_message(msg)
    assert codec.decode_message(QID, stored) == msg
    assert QID.encode() not in stored          # the key holds it
    bare = HistoryMessage(id=QID)
    assert codec.decode_message(QID, codec.encode_message(bare)) == bare


def test_a_message_in_the_form_written_before_reads() -> None:
    msg = _message()
    old = msgspec.msgpack.encode(msg)           # a map with the field names
    assert codec.decode_message(QID, old) == msg
    assert len(codec.encode_message(msg)) < len(old) * 0.75


@pytest.mark.parametrize("entry", [
    TimelineEntry(ts=T, recipient="ann@gmail.com", kind="attempt", result="deferred",
                  source_ip="203.0.113.5", mx_host="mx.gmail.test", remote_ip="192.0.2.9",
                  tls=True, reused=True, response="451 4.7.1 try later", delay_ms=1200,
                  duration_ms=88, provider="gmail", dkim=["d=a.example s=s1", "d=b s=s2"]),
    TimelineEntry(ts=T, recipient="", kind="rendering_failure", event_type="Rendering Failure",
                  response="no such variable", detail="welcome"),
    TimelineEntry(ts=T, recipient="ann@gmail.com", kind="bounced", event_type="Bounce",
                  response="550 5.1.1 unknown", detail="Permanent/General"),
    TimelineEntry(ts=T, recipient="a@b.c", kind="a-kind-added-later", result="x",
                  event_type="SomeNewEvent", event=b'{"eventType":"SomeNewEvent"}'),
    TimelineEntry(ts=T, recipient="a@b.c", kind="click", event_type="Click",
                  remote_ip="198.51.100.1", response="https://x.example/",
                  detail="automated: scanner", event=b'{"x":"' + b"y" * 300 + b'"}'),
])
def test_each_kind_of_entry_reads_back(entry: TimelineEntry) -> None:
    assert codec.decode_entry(codec.encode_entry(entry)) == entry
    old = msgspec.msgpack.encode(entry)         # the form written before
    assert codec.decode_entry(old) == entry
    assert len(codec.encode_entry(entry)) < len(old)


def test_an_events_mail_object_is_left_out_and_comes_back_byte_for_byte() -> None:
    rec = _record(headers=12)
    send, delivery = M.send_event(rec), M.delivery_event(rec, ["ann@gmail.com"],
                                                         "250 2.0.0 OK", T + 2, "mx.gmail.test")
    send_raw, delivery_raw = msgspec.json.encode(send), msgspec.json.encode(delivery)
    mail = codec.mail_of(send_raw)
    assert mail is not None and mail == msgspec.json.encode(send.mail)
    assert codec.mail_of(delivery_raw) == mail
    for raw, ev in ((send_raw, send), (delivery_raw, delivery)):
        entry = entries_from_event(ev, raw)[0][1]
        stored = codec.encode_entry(entry, mail)
        assert mail not in stored and len(stored) < len(raw) - len(mail) + 64
        back = codec.decode_entry(stored, codec.decode_mail(codec.encode_mail(mail)))
        assert back.event == raw and back == entry
    # An event whose mail differs from the message's is kept whole.
    other = msgspec.json.encode(M.send_event(_record(headers=7)))
    entry = TimelineEntry(ts=T, recipient="ann@gmail.com", kind="accepted",
                          event_type="Send", event=other)
    assert codec.decode_entry(codec.encode_entry(entry, mail), mail).event == other


def test_event_json_is_deflated_with_the_dictionary_and_reads_back() -> None:
    raw = msgspec.json.encode(M.send_event(_record(headers=12)))
    packed = codec.pack(raw)
    assert len(packed) < len(raw) / 2 and codec.unpack(packed) == raw
    small = b'{"a":1}'
    assert codec.pack(small) == small and codec.unpack(small) == small
    assert codec.unpack(b"") == b"" and codec.mail_of(b"not json") is None
    assert codec.mail_of(b'{"eventType":"Send"}') is None
