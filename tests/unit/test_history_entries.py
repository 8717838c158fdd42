"""What each SES event and each delivery attempt adds to a message's history, the message
an event's mail object describes, and the statistics each entry counts."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
import pytest

from relay.events import model as M
from relay.history import keys as K
from relay.history.entries import (
    entries_from_event,
    entry_from_attempt,
    insight_type,
    message_from_event,
    parse_time,
    stat_deltas,
)
from relay.history.model import HistoryMessage, RecipientHistory, TimelineEntry
from relay.queue.records import MessageRecord

T = 1_790_035_200.0
QID = f"{int(T * 1000):012x}0000abcd"


def _record(**kw: object) -> MessageRecord:
    base: dict[str, object] = {
        "id": QID, "sender": "bounce@acme.com", "recipients": ["a@gmail.com", "b@yahoo.com"],
        "received_at": T, "size": 1234, "client_ip": "127.0.0.5", "auth_user": "smtp-user",
        "headers": {"From": "Acme <news@Acme.com>", "To": "a@gmail.com, b@yahoo.com",
                    "Subject": "=?utf-8?q?Caf=C3=A9_news?=", "Message-ID": "<m1@acme.com>"},
        "tenant": "acme", "configuration_set": "news", "tags": {"campaign": ["spring"]}}
    base.update(kw)
    return MessageRecord(**base)  # type: ignore[arg-type]


MSG = _record()
A, B = "a@gmail.com", "b@yahoo.com"

# (event, [(recipient, kind, detail, response)])
EVENTS: list[tuple[M.Event, list[tuple[str, str, str, str]]]] = [
    (M.send_event(MSG), [(A, "accepted", "", ""), (B, "accepted", "", "")]),
    (M.delivery_event(MSG, [A], "250 2.0.0 ok", T + 5, "mx.gmail.com", "127.0.0.9"),
     [(A, "delivered", "", "250 2.0.0 ok")]),
    (M.bounce_event(MSG, [B], "550 5.1.1 user unknown", T + 5, "relay.test"),
     [(B, "bounced", "Permanent/NoEmail", "550 5.1.1 user unknown")]),
    (M.bounce_event(MSG, [A, B], "451 4.4.1 timeout", T + 5, "relay.test", expired=True),
     [(A, "expired", "Transient/General", "451 4.4.1 timeout"),
      (B, "expired", "Transient/General", "451 4.4.1 timeout")]),
    (M.bounce_event(MSG, [A], M.SUPPRESSED_RESPONSE, T + 5, "relay.test"),
     [(A, "suppressed", "Permanent/OnAccountSuppressionList", M.SUPPRESSED_RESPONSE)]),
    (M.feedback_bounce_event(MSG, [(B, "delayed", "4.2.2", "smtp; 452 4.2.2 full")], T + 9,
                             "dns; mx", bounce_type="Transient", subtype="MailboxFull"),
     [(B, "deferred", "Transient/MailboxFull", "452 4.2.2 full")]),
    (M.feedback_bounce_event(MSG, [(B, "failed", "5.1.1", "smtp; 550 5.1.1 gone")], T + 9,
                             "dns; mx", bounce_type="Permanent", subtype="NoEmail"),
     [(B, "bounced", "Permanent/NoEmail", "550 5.1.1 gone")]),
    (M.delay_event(MSG, [A], "421 4.4.2 busy", T + 5, T + 86400, "relay.test"),
     [(A, "deferred", "TransientCommunicationFailure", "421 4.4.2 busy")]),
    (M.complaint_event(MSG, [A], T + 50, feedback_type="abuse"),
     [(A, "complained", "abuse", "")]),
    (M.reject_event(MSG, "Bad content"),
     [(A, "rejected", "", "Bad content"), (B, "rejected", "", "Bad content")]),
    (M.subscription_event(MSG, B, T + 70), [(B, "unsubscribed", "UnsubscribeHeader", "")]),
    (M.rendering_failure_event(MSG, "welcome", "Attribute 'name' is not present"),
     [("", "rendering_failure", "welcome", "Attribute 'name' is not present")]),
]


@pytest.mark.parametrize(("event", "expect"), EVENTS,
                         ids=[f"{e.eventType}-{i}" for i, (e, _) in enumerate(EVENTS)])
def test_entries_of_each_event(event: M.Event,
                               expect: list[tuple[str, str, str, str]]) -> None:
    raw = msgspec.json.encode(event)
    got = entries_from_event(event, raw)
    assert {q for q, _ in got} == {QID}
    assert [(e.recipient, e.kind, e.detail, e.response) for _, e in got] == expect
    assert all(e.event_type == event.eventType for _, e in got)
    # the event JSON once per event, on its first entry
    assert [e.event for _, e in got] == [raw] + [b""] * (len(got) - 1)


def test_entry_times_come_from_the_event() -> None:
    [(_, send)] = entries_from_event(M.send_event(_record(recipients=[A])), b"{}")
    assert send.ts == pytest.approx(T)
    [(_, d)] = entries_from_event(M.delivery_event(MSG, [A], "250", T + 5.5, "mx", "1.2.3.4"),
                                  b"{}")
    assert d.ts == pytest.approx(T + 5.5) and d.remote_ip == "1.2.3.4"
    assert parse_time("garbage", 7.0) == 7.0 and parse_time("", 3.0) == 3.0


def test_events_about_no_message_add_nothing() -> None:
    ev = M.warmup_event("WarmupFreeze", "127.0.0.1", "", "why", None, "freeze", T)
    assert entries_from_event(ev, b"{}") == [] and message_from_event(ev) is None


def test_the_message_from_a_send() -> None:
    m = message_from_event(M.send_event(MSG))
    assert m == HistoryMessage(
        id=QID, received_at=T, sender="bounce@acme.com", tenant="acme",
        configuration_set="news",
        tags={"campaign": ["spring"], "ses:tenant": ["acme"],
              "ses:operation": ["SendSmtpEmail"], "ses:configuration-set": ["news"]},
        subject="Café news", from_=["Acme <news@Acme.com>"], to=[A, B],
        message_id="m1@acme.com", client_ip="127.0.0.5", auth_user="smtp-user",
        identity="acme.com", recipients=[RecipientHistory(A), RecipientHistory(B)],
        source="smtp", partial=False)


def test_other_events_give_a_partial_message_and_the_api_source() -> None:
    api = _record(tags={"ses:operation": ["SendEmail"]}, headers={})
    m = message_from_event(M.delivery_event(api, [A], "250", T + 1, "mx"))
    assert m is not None and m.partial and m.source == "api"
    assert m.identity == "acme.com"          # no From: the envelope sender's domain


@dataclass
class Attempt:
    queue_id: str = QID
    recipient: str = A
    source_ip: str = "127.0.0.10"
    provider: str = "gmail"
    kind: str = "deferred"
    response: str = "451 4.7.1 greylisted"
    mx_host: str = "gmail-smtp-in.l.google.com"
    remote_ip: str = "127.0.0.20"
    tls: bool = True
    reused: bool = True
    started_at: float = T + 10
    duration_ms: int = 250
    dkim: list[str] = field(default_factory=lambda: ["d=acme.com s=s1"])
    received_at: float = T


def test_entry_of_an_attempt() -> None:
    qid, e = entry_from_attempt(Attempt())
    assert qid == QID
    assert e == TimelineEntry(
        ts=T + 10, recipient=A, kind="attempt", result="deferred", source_ip="127.0.0.10",
        mx_host="gmail-smtp-in.l.google.com", remote_ip="127.0.0.20", tls=True, reused=True,
        response="451 4.7.1 greylisted", delay_ms=10_250, duration_ms=250, provider="gmail",
        dkim=["d=acme.com s=s1"])


_HM = HistoryMessage(id=QID, tenant="acme", identity="acme.com", configuration_set="news",
                     recipients=[RecipientHistory(A, provider="gmail")])
_PLAIN = HistoryMessage(id=QID, tenant="zeta", identity="zeta.io",
                        recipients=[RecipientHistory(A, provider="gmail")])
B0 = K.bucket_of(T + 1000)


def _e(kind: str, **kw: object) -> TimelineEntry:
    return TimelineEntry(ts=T + 1000, recipient=A, kind=kind, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("entry", "msg", "expect"), [
    (_e("accepted"), _HM, [("s", "a", ""), ("s", "t", "acme"), ("s", "i", "acme.com"),
                           ("s", "c", "news")]),
    (_e("accepted"), _PLAIN, [("s", "a", ""), ("s", "t", "zeta"), ("s", "i", "zeta.io")]),
    (_e("delivered"), _PLAIN, [("d", "a", ""), ("d", "t", "zeta"), ("d", "i", "zeta.io"),
                               ("d", "p", "gmail")]),
    (_e("attempt", result="deferred", provider="yahoo"), _PLAIN,
     [("a", "a", ""), ("a", "t", "zeta"), ("a", "i", "zeta.io"), ("a", "p", "yahoo"),
      ("f", "a", ""), ("f", "t", "zeta"), ("f", "i", "zeta.io"), ("f", "p", "yahoo")]),
    (_e("suppressed"), _PLAIN,
     [("b", "a", ""), ("b", "t", "zeta"), ("b", "i", "zeta.io"), ("b", "p", "gmail"),
      ("u", "a", ""), ("u", "t", "zeta"), ("u", "i", "zeta.io"), ("u", "p", "gmail")]),
    (_e("expired"), _PLAIN, [("b", "a", ""), ("b", "t", "zeta"), ("b", "i", "zeta.io"),
                             ("b", "p", "gmail")]),
    (_e("rejected"), _PLAIN, [("r", "a", ""), ("r", "t", "zeta"), ("r", "i", "zeta.io")]),
    (_e("complained"), _PLAIN, [("c", "a", ""), ("c", "t", "zeta"), ("c", "i", "zeta.io"),
                                ("c", "p", "gmail")]),
    (_e("deferred"), _PLAIN, []),          # a DeliveryDelay: its attempt counted already
    (_e("unsubscribed"), _PLAIN, []),
    (_e("rendering_failure"), _PLAIN, []),
])
def test_stat_deltas(entry: TimelineEntry, msg: HistoryMessage,
                     expect: list[tuple[str, str, str]]) -> None:
    got = stat_deltas(entry, msg)
    assert all(b == B0 and n == 1 for b, _, _, _, n in got)
    assert [(m.decode(), d.decode(), v) for _, d, v, m, _ in got] == expect


@pytest.mark.parametrize(("n", "types"), [
    (0, ["SEND", "SEND"]), (1, ["DELIVERY"]), (2, ["PERMANENT_BOUNCE"]),
    (3, ["TRANSIENT_BOUNCE"] * 2), (4, ["PERMANENT_BOUNCE"]), (5, ["TRANSIENT_BOUNCE"]),
    (7, ["DELIVERY_DELAY"]), (8, ["COMPLAINT"]), (9, ["REJECT"] * 2),
    (10, ["SUBSCRIPTION"]), (11, ["RENDERING_FAILURE"]),
])
def test_insight_types(n: int, types: list[str]) -> None:
    event = EVENTS[n][0]
    assert [insight_type(e) for _, e in entries_from_event(event, b"{}")] == types
    assert insight_type(entry_from_attempt(Attempt())[1]) == ""
