"""The history's records and the rules that move a recipient's status: forward only, a
complaint or unsubscribe after (or instead of) a delivery, the statuses a message is
found under and the one word a list shows."""

from __future__ import annotations

import msgspec
import pytest

from relay.history.model import (
    STATUSES,
    HistoryMessage,
    RecipientHistory,
    TimelineEntry,
    advance,
    statuses_of,
    summary_status,
)

ADVANCE = [
    # (status, kind, new status)
    ("queued", "accepted", "queued"),
    ("queued", "deferred", "deferred"),
    ("deferred", "deferred", "deferred"),
    ("deferred", "delivered", "delivered"),
    ("queued", "bounced", "bounced"),
    ("deferred", "expired", "expired"),
    ("queued", "suppressed", "suppressed"),
    ("queued", "rejected", "rejected"),
    ("deferred", "accepted", "deferred"),        # a late Send does not undo an attempt
    ("delivered", "deferred", "delivered"),      # a late DeliveryDelay is ignored
    ("delivered", "bounced", "delivered"),       # so is a report after the delivery
    ("bounced", "delivered", "bounced"),
    ("expired", "deferred", "expired"),
    ("delivered", "complained", "complained"),
    ("queued", "complained", "complained"),      # the Delivery not recorded yet
    ("delivered", "unsubscribed", "unsubscribed"),
    ("unsubscribed", "complained", "complained"),
    ("complained", "unsubscribed", "complained"),
    ("bounced", "complained", "bounced"),
    ("delivered", "attempt", "delivered"),       # an attempt passes its result instead
    ("queued", "rendering_failure", "queued"),
    ("queued", "open", "queued"),
]


@pytest.mark.parametrize(("status", "kind", "new"), ADVANCE)
def test_advance(status: str, kind: str, new: str) -> None:
    assert advance(status, kind) == new


def _msg(*statuses: str) -> HistoryMessage:
    return HistoryMessage(id="x", recipients=[RecipientHistory(f"r{i}@x", s)
                                              for i, s in enumerate(statuses)])


@pytest.mark.parametrize(("statuses", "found", "summary"), [
    (("delivered", "deferred"), {"delivered", "deferred"}, "deferred"),
    (("complained",), {"complained", "delivered"}, "complained"),
    (("unsubscribed", "bounced"), {"unsubscribed", "delivered", "bounced"}, "bounced"),
    (("queued", "bounced"), {"queued", "bounced"}, "queued"),
    (("delivered",), {"delivered"}, "delivered"),
    ((), set(), "queued"),
])
def test_found_under_and_summary(statuses: tuple[str, ...], found: set[str],
                                 summary: str) -> None:
    m = _msg(*statuses)
    assert statuses_of(m) == found
    assert summary_status(m) == summary
    assert found <= set(STATUSES)


def test_records_round_trip_with_their_wire_names() -> None:
    m = HistoryMessage(id="0" * 20, from_=["A <a@x.com>"], source="api",
                       recipients=[RecipientHistory("b@y.com")])
    doc = msgspec.msgpack.decode(msgspec.msgpack.encode(m))
    assert doc["from"] == ["A <a@x.com>"] and "from_" not in doc
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(m), type=HistoryMessage) == m
    e = TimelineEntry(ts=1.5, recipient="b@y.com", kind="attempt", result="deferred")
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(e), type=TimelineEntry) == e
    # omitted defaults keep a stored entry small
    assert set(msgspec.msgpack.decode(msgspec.msgpack.encode(e))) == {
        "ts", "recipient", "kind", "result"}
