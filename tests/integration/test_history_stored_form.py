"""The history's stored form in a real LMDB spool: what a delivered message costs stays
under a bound (the pages the history writes are pages of the spool's map the process
reads again), every event reads back byte for byte, and a history written in the form
used before (msgpack maps, events whole) reads, searches, takes new entries and prunes
like one written now."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from relay.admin.historyview import message_detail
from relay.clock import FakeClock
from relay.events import model as M
from relay.history import keys as K
from relay.history.entries import entries_from_event, entry_from_attempt, message_from_event
from relay.history.model import HistoryMessage, MessageQuery, TimelineEntry
from relay.history.store import HistoryStore
from relay.queue.records import MessageRecord
from relay.queue.store import QueueStore
from relay.testing.historydata import Attempt

T0 = 1_790_035_200.0
N = 200
# Bytes of keys and values per delivered message (one recipient): measured 1,818 (Send
# with 10 header fields, attempt, Delivery) and 1,052 (attempt and Delivery only, as the
# scale bench's spool delivers); about 4,500 and 2,000 in the form written before.
BOUND_WITH_SEND = 2_100
BOUND_DELIVERY_ONLY = 1_200

Batch = tuple[list[HistoryMessage], list[tuple[str, TimelineEntry]]]


def _record(i: int, headers: bool = True) -> MessageRecord:
    ts = T0 + i * 0.01
    rcpt = f"customer{i}@gmail.com"
    qid = f"{int(ts * 1000):012x}{i:08x}"
    fields = [("Received", f"from app1.acme.example ([192.0.2.7]) by relay.acme.example "
                           f"with ESMTPSA id {qid} for <{rcpt}>; Tue, 08 Dec 2026 02:46:53 -0000"),
              ("From", "Acme Orders <orders@acme.example>"), ("To", rcpt),
              ("Subject", f"Your order #{10000 + i} has shipped"),
              ("Date", "Tue, 08 Dec 2026 02:46:53 +0000"),
              ("Message-ID", f"<{i * 7919:08x}.{i}@app1.acme.example>"), ("MIME-Version", "1.0"),
              ("Content-Type", f'multipart/alternative; boundary="b1_{i:08x}"'),
              ("List-Unsubscribe", f"<https://acme.example/u/{i:08x}>"),
              ("X-SES-CONFIGURATION-SET", "orders")] if headers else []
    return MessageRecord(id=qid, sender="bounce@acme.example", recipients=[rcpt],
                         received_at=ts, size=14000, client_ip="192.0.2.7", auth_user="app",
                         headers=dict(fields[1:6]), header_fields=fields,
                         tags={"campaign": ["shipping"]} if headers else {},
                         configuration_set="orders" if headers else "", tenant="acme")


def _events(*events: M.Event) -> Batch:
    msgs = [m for m in (message_from_event(e) for e in events) if m is not None]
    return msgs, [k for e in events for k in entries_from_event(e, msgspec.json.encode(e))]


def _delivery(rec: MessageRecord) -> Batch:
    t = rec.received_at + 0.8
    att = Attempt(rec.id, rec.recipients[0], "delivered",
                  "250 2.0.0 OK  1733625000 a1b2c3d4e5f6si123.45 - gsmtp", t, rec.received_at,
                  source_ip="203.0.113.10", mx_host="gmail-smtp-in.l.google.com",
                  remote_ip="142.250.102.27", reused=True)
    msgs, entries = _events(M.delivery_event(rec, rec.recipients, att.response, t + 0.12,
                                             att.mx_host))
    return msgs, [*entries, entry_from_attempt(att)]


def _put(store: QueueStore, h: HistoryStore, batch: Batch) -> None:
    store.write_now(h.record_op(*batch))


def _history_bytes(store: QueueStore) -> int:
    return sum(len(k) + len(v) for name in K.DBS if name != K.STATS_DB
               for k, v in store.read_db(name))


def test_a_delivered_messages_history_stays_under_its_byte_bound(tmp_path: Path) -> None:
    """As relay records it: the Sends of a flush, then their deliveries a flush later."""
    for with_send, bound in ((True, BOUND_WITH_SEND), (False, BOUND_DELIVERY_ONLY)):
        store = QueueStore(tmp_path / f"q{with_send}", FakeClock(T0))
        h = HistoryStore(store)
        try:
            recs = [_record(i, headers=with_send) for i in range(N)]
            for first in range(0, N, 50):
                chunk = recs[first:first + 50]
                if with_send:
                    sends = [_events(M.send_event(r)) for r in chunk]
                    _put(store, h, ([m for b in sends for m in b[0]],
                                    [e for b in sends for e in b[1]]))
                deliveries = [_delivery(r) for r in chunk]
                _put(store, h, ([m for b in deliveries for m in b[0]],
                                [e for b in deliveries for e in b[1]]))
            per_message = _history_bytes(store) / N
            assert per_message <= bound, (with_send, per_message)
            view = h.get(recs[7].id)
            assert view is not None and view.message.recipients[0].status == "delivered"
            assert [e.kind for e in view.timeline] == (["accepted"] if with_send else []) + [
                "attempt", "delivered"]
        finally:
            store.close_sync()


def test_every_event_reads_back_byte_for_byte(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q", FakeClock(T0))
    h = HistoryStore(store)
    try:
        rec = _record(3)
        events = [M.send_event(rec),
                  M.delivery_event(rec, rec.recipients, "250 ok", T0 + 2, "mx"),
                  M.complaint_event(rec, rec.recipients, T0 + 60, feedback_type="abuse")]
        for e in events:
            _put(store, h, _events(e))
        view = h.get(rec.id)
        assert view is not None
        assert [e.event for e in view.timeline] == [msgspec.json.encode(e) for e in events]
    finally:
        store.close_sync()


def _write_in_the_form_before(store: QueueStore, view_of: dict[str, Any]) -> None:
    """The values the history's store wrote before the compact form: each record and
    entry a msgpack map of the model's struct, every entry with its event whole."""
    dbs = {name: store.named_db(name) for name in K.DBS}

    def op(txn: Any) -> None:
        for qid, (msg, timeline) in view_of.items():
            txn.put(K.message_key(qid), msgspec.msgpack.encode(msg), db=dbs[K.HISTORY_DB])
            for n, e in enumerate(timeline):
                txn.put(K.timeline_key(qid, e.ts, n), msgspec.msgpack.encode(e),
                        db=dbs[K.TIMELINE_DB])
            for k in K.index_keys(msg):
                txn.put(k, b"", db=dbs[K.INDEX_DB])
    store.write_now(op)


def test_a_history_in_the_form_written_before_still_reads(tmp_path: Path) -> None:
    now = QueueStore(tmp_path / "now", FakeClock(T0))
    before = QueueStore(tmp_path / "before", FakeClock(T0))
    h_now, h_before = HistoryStore(now), HistoryStore(before)
    try:
        recs = [_record(i) for i in range(5)]
        for r in recs:
            _put(now, h_now, _events(M.send_event(r)))
        _put(now, h_now, _delivery(recs[0]))
        views = {r.id: h_now.get(r.id) for r in recs}
        # A multi-entry event group (the JSON on its first entry only) as stored before.
        _write_in_the_form_before(before, {
            qid: (v.message, [msgspec.structs.replace(e, event=b"") if n and e.kind ==
                              "accepted" else e for n, e in enumerate(v.timeline)])
            for qid, v in views.items() if v is not None})

        def detail(h: HistoryStore, qid: str) -> dict[str, Any]:
            v = h.get(qid)
            assert v is not None
            return message_detail(v.message, v.timeline, v.by_recipient())

        for r in recs:
            assert detail(h_before, r.id) == detail(h_now, r.id)
        q = MessageQuery(recipient=recs[2].recipients[0])
        assert h_before.search(q).messages == h_now.search(q).messages == [
            views[recs[2].id].message]  # type: ignore[union-attr]
        # New entries on a message stored before: both forms in one timeline.
        for store, h in ((now, h_now), (before, h_before)):
            _put(store, h, _delivery(recs[1]))
            _put(store, h, _events(M.bounce_event(recs[2], recs[2].recipients,
                                                  "550 5.1.1 no such user", T0 + 5, "mx")))
        for r in recs:
            assert detail(h_before, r.id) == detail(h_now, r.id)
        assert [r.status for r in h_before.search(
            MessageQuery(status="bounced")).messages[0].recipients] == ["bounced"]
        # Pruning removes both forms.
        before.write_now(h_before.prune_op(T0 + 3600))
        assert [k for name in (K.HISTORY_DB, K.TIMELINE_DB, K.INDEX_DB)
                for k, _ in before.read_db(name)] == []
    finally:
        now.close_sync()
        before.close_sync()
