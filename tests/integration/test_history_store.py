"""The message history and statistics in a real LMDB spool: entries recorded in batches in
any order build the same history, statuses only move forward, the inverted index finds
messages by every field and follows status changes, pages never repeat or skip, the
statistics add up to the entries, and retention removes exactly what is old (with its
timeline and index keys)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from relay.clock import FakeClock
from relay.events import model as M
from relay.history import keys as K
from relay.history import store as history_store
from relay.history.entries import entries_from_event, entry_from_attempt, message_from_event
from relay.history.model import HistoryMessage, MessageQuery, TimelineEntry
from relay.history.recorder import HistoryRecorder
from relay.history.retention import HistoryPruner
from relay.history.stats import StatsStore, totals
from relay.history.store import HistoryStore
from relay.queue.records import MessageRecord
from relay.queue.store import QueueStore

T0 = 1_790_035_200.0   # a bucket boundary
DAY = 86400.0

Batch = tuple[list[HistoryMessage], list[tuple[str, TimelineEntry]]]


@dataclass
class Attempt:
    queue_id: str
    recipient: str
    kind: str
    started_at: float
    received_at: float
    source_ip: str = "127.0.0.10"
    provider: str = "gmail"
    response: str = "250 2.0.0 ok"
    mx_host: str = "mx.example.net"
    remote_ip: str = "127.0.0.20"
    tls: bool = True
    reused: bool = False
    duration_ms: int = 120
    dkim: list[str] = field(default_factory=lambda: ["d=example.com s=sel1"])


_seq = iter(range(1, 10**9))


def record(ts: float, recipients: list[str], *, subject: str = "Your invoice 42",
           tenant: str = "acme", configuration_set: str = "", sender: str = "b@example.com",
           from_: str = "Billing <billing@example.com>") -> MessageRecord:
    qid = f"{int(ts * 1000):012x}{next(_seq):08x}"
    headers = {"From": from_, "To": ", ".join(recipients), "Subject": subject,
               "Message-ID": f"<{qid}@example.com>"}
    return MessageRecord(id=qid, sender=sender, recipients=recipients, received_at=ts,
                         size=100, headers=headers, tenant=tenant,
                         configuration_set=configuration_set)


def from_events(*events: M.Event) -> Batch:
    msgs: list[HistoryMessage] = []
    entries: list[tuple[str, TimelineEntry]] = []
    for ev in events:
        m = message_from_event(ev)
        assert m is not None
        msgs.append(m)
        entries += entries_from_event(ev, msgspec.json.encode(ev))
    return msgs, entries


def from_attempts(*attempts: Attempt) -> Batch:
    return [], [entry_from_attempt(a) for a in attempts]


def put(h: HistoryStore, *batches: Batch) -> None:
    for msgs, entries in batches:
        h.store.write_now(h.record_op(msgs, entries))


def ids(h: HistoryStore, **q: object) -> list[str]:
    page = h.search(MessageQuery(**q))  # type: ignore[arg-type]
    return [m.id for m in page.messages]


def delivered_story(msg: MessageRecord, provider: str = "gmail") -> tuple[Batch, Batch]:
    """(the Send, then the attempts and Delivery of every recipient: the first deferred
    once)."""
    t = msg.received_at
    send = from_events(M.send_event(msg))
    atts = [Attempt(msg.id, msg.recipients[0], "deferred", t + 1, t, provider=provider,
                    response="451 4.7.1 try later")]
    atts += [Attempt(msg.id, r, "delivered", t + 60, t, provider=provider)
             for r in msg.recipients]
    later = from_attempts(*atts)
    deliv = from_events(M.delivery_event(msg, msg.recipients, "250 2.0.0 ok", t + 61, "mx"))
    return send, (later[0] + deliv[0], later[1] + deliv[1])


@pytest.fixture
def h(tmp_path: Path) -> HistoryStore:
    store = QueueStore(tmp_path / "q", FakeClock(T0))
    yield HistoryStore(store)  # type: ignore[misc]
    store.close_sync()


def test_attempts_before_the_send_give_the_same_history(h: HistoryStore) -> None:
    msg = record(T0 + 5, ["a@gmail.com", "b@gmail.com"], subject="Spring sale!")
    send, (_, rest) = delivered_story(msg)
    attempts = [(q, e) for q, e in rest if e.kind == "attempt"]
    put(h, ([], attempts))                        # the delivering worker's batch first
    stub = h.get(msg.id)
    assert stub is not None and stub.message.partial
    assert stub.message.received_at == msg.received_at    # from the queue id
    assert ids(h, subject="spring") == []          # nothing but the recipients known yet
    assert ids(h, recipient="a@gmail.com") == [msg.id]
    put(h, from_events(M.delivery_event(msg, msg.recipients, "250 2.0.0 ok", T0 + 66, "mx")))
    partial = h.get(msg.id)
    assert partial is not None and partial.message.partial      # an event's mail object
    assert ids(h, subject="spring") == [msg.id]
    put(h, send)
    view = h.get(msg.id)
    assert view is not None
    m = view.message
    assert not m.partial and m.subject == "Spring sale!" and m.tenant == "acme"
    assert m.message_id == f"{msg.id}@example.com" and m.identity == "example.com"
    assert m.sender == "b@example.com" and m.from_ == ["Billing <billing@example.com>"]
    assert m.dkim == ["d=example.com s=sel1"] and m.source == "smtp"
    by = {r.address: r for r in m.recipients}
    assert by["a@gmail.com"].status == "delivered" and by["a@gmail.com"].attempts == 2
    assert by["b@gmail.com"].attempts == 1 and by["b@gmail.com"].provider == "gmail"
    assert by["a@gmail.com"].last_response == "250 2.0.0 ok"
    kinds = [(e.recipient, e.kind) for e in view.timeline]
    assert kinds == [("a@gmail.com", "accepted"), ("b@gmail.com", "accepted"),
                     ("a@gmail.com", "attempt"), ("a@gmail.com", "attempt"),
                     ("b@gmail.com", "attempt"), ("a@gmail.com", "delivered"),
                     ("b@gmail.com", "delivered")]
    # Each entry has its event back (one Delivery event for both recipients).
    events = [msgspec.json.decode(e.event) for e in view.timeline if e.event_type]
    assert [ev["eventType"] for ev in events] == ["Send", "Send", "Delivery", "Delivery"]
    assert ids(h, subject="spring sale", status="delivered") == [msg.id]
    assert h.get(f"<{msg.id}@example.com>") is not None     # by Message-ID header
    assert set(view.by_recipient()) == {"a@gmail.com", "b@gmail.com"}


def test_statuses_only_move_forward(h: HistoryStore) -> None:
    msg = record(T0, ["a@yahoo.com"])
    send, rest = delivered_story(msg)
    put(h, send, rest)
    late = from_events(M.delay_event(msg, ["a@yahoo.com"], "451 4.4.1 later", T0 + 90,
                                     T0 + 3 * DAY, "mx"),
                       M.bounce_event(msg, ["a@yahoo.com"], "550 5.1.1 no", T0 + 95, "mx"))
    put(h, late)
    view = h.get(msg.id)
    assert view is not None
    r = view.message.recipients[0]
    assert r.status == "delivered" and r.last_response == "250 2.0.0 ok"
    assert ids(h, status="deferred") == [] and ids(h, status="bounced") == []
    # A complaint follows the delivery: found under both.
    put(h, from_events(M.complaint_event(msg, ["a@yahoo.com"], T0 + 200)))
    assert ids(h, status="complained") == [msg.id] == ids(h, status="delivered")


def test_a_replayed_batch_changes_nothing(h: HistoryStore) -> None:
    msg = record(T0, ["a@gmail.com", "b@gmail.com"])
    send, rest = delivered_story(msg)
    put(h, send, rest)
    before = h.get(msg.id)
    stats = StatsStore(h.store)
    counted = totals(stats.query(T0, T0 + DAY))
    put(h, send, rest)                               # the journal publishes them again
    assert h.get(msg.id) == before
    assert totals(stats.query(T0, T0 + DAY)) == counted
    assert counted["sent"] == 2 and counted["attempts"] == 3


def test_the_index_follows_status_changes(h: HistoryStore) -> None:
    msg = record(T0, ["a@example.net"])
    put(h, from_events(M.send_event(msg)))
    assert ids(h, status="queued") == [msg.id]
    queued = h.get(msg.id)
    assert queued is not None and queued.message.recipients[0].updated_at == T0
    put(h, from_attempts(Attempt(msg.id, "a@example.net", "deferred", T0 + 1, T0,
                                 response="421 busy")))
    assert ids(h, status="queued") == [] and ids(h, status="deferred") == [msg.id]
    put(h, from_events(M.bounce_event(msg, ["a@example.net"], "550 5.1.1 unknown user",
                                      T0 + 9, "mx")))
    assert ids(h, status="deferred") == [] and ids(h, status="bounced") == [msg.id]
    # Every key of the index is one the message has now.
    view = h.get(msg.id)
    assert view is not None
    stored = {k for k, _ in h.store.read_db(K.INDEX_DB)}
    assert stored == K.index_keys(view.message)


def test_the_index_follows_changes_another_worker_made(h: HistoryStore) -> None:
    """Two worker processes record one spool (two HistoryStores): a message whose record
    the other one changed since this one wrote it still loses its replaced index keys
    (what this store remembers of the keys it wrote is only used for the same record)."""
    other = HistoryStore(h.store)
    msg = record(T0, ["a@example.net"])
    put(h, from_events(M.send_event(msg)))        # this worker: queued
    put(other, from_attempts(Attempt(msg.id, "a@example.net", "deferred", T0 + 1, T0,
                                     response="421 busy")))  # the other: deferred
    put(h, from_events(M.bounce_event(msg, ["a@example.net"], "550 5.1.1 unknown user",
                                      T0 + 9, "mx")))        # this one again: bounced
    assert ids(h, status="queued") == [] and ids(h, status="deferred") == []
    assert ids(h, status="bounced") == [msg.id]
    view = h.get(msg.id)
    assert view is not None
    assert {k for k, _ in h.store.read_db(K.INDEX_DB)} == K.index_keys(view.message)


def test_search_by_every_field_and_combinations(h: HistoryStore) -> None:
    m1 = record(T0, ["ann@gmail.com"], subject="Invoice March", tenant="acme",
                configuration_set="billing", sender="bounce@acme.com",
                from_="Acme <billing@acme.com>")
    m2 = record(T0 + 10, ["bob@yahoo.com", "ann@gmail.com"], subject="Newsletter March",
                tenant="zeta", configuration_set="news", sender="news@zeta.io",
                from_="news@zeta.io")
    m3 = record(T0 + 20, ["cid@gmail.com"], subject="Invoice April", tenant="acme",
                configuration_set="billing", sender="bounce@acme.com",
                from_="billing@acme.com")
    for m in (m1, m2, m3):
        put(h, from_events(M.send_event(m)))
    put(h, delivered_story(m3)[1])
    assert ids(h, recipient="ANN@gmail.com") == [m2.id, m1.id]
    assert ids(h, recipient="Ann <ann@gmail.com>") == [m2.id, m1.id]
    assert ids(h, sender="bounce@acme.com") == [m3.id, m1.id]
    assert ids(h, sender="billing@acme.com") == [m3.id, m1.id]        # a From address
    assert ids(h, subject="march") == [m2.id, m1.id]
    assert ids(h, subject="invoice march") == [m1.id]
    assert ids(h, subject="!!") == []
    assert ids(h, message_id=m2.id) == [m2.id]                       # the queue id
    assert ids(h, message_id=f"<{m1.id}@example.com>") == [m1.id]    # the header
    assert ids(h, tenant="acme") == [m3.id, m1.id]
    assert ids(h, configuration_set="news") == [m2.id]
    assert ids(h, identity="zeta.io") == [m2.id]
    assert ids(h, status="delivered") == [m3.id]
    assert ids(h, status="queued", tenant="acme") == [m1.id]
    assert ids(h, recipient="ann@gmail.com", tenant="zeta") == [m2.id]
    assert ids(h, recipient="ann@gmail.com", subject="invoice", status="queued") == [m1.id]
    assert ids(h, message_id=m2.id, tenant="acme") == []
    assert ids(h) == [m3.id, m2.id, m1.id]
    assert ids(h, since=T0 + 5) == [m3.id, m2.id]
    assert ids(h, until=T0 + 15) == [m2.id, m1.id]
    assert ids(h, tenant="acme", since=T0 + 5, until=T0 + 30) == [m3.id]
    assert ids(h, recipient="nobody@example.org") == []


@pytest.mark.parametrize("query", [{}, {"tenant": "t1"}, {"recipient": "r@gmail.com"},
                                   {"subject": "weekly", "status": "queued"}])
def test_pages_never_repeat_or_skip(h: HistoryStore, query: dict[str, object]) -> None:
    msgs = [record(T0 + i, ["r@gmail.com"], tenant=f"t{i % 2}",
                   subject="weekly digest" if i % 3 else "other")
            for i in range(130)]
    put(h, from_events(*(M.send_event(m) for m in msgs)))
    expect = sorted((m.id for m in msgs
                     if all(_matches(m, k, v) for k, v in query.items())), reverse=True)
    seen: list[str] = []
    cursor = ""
    for _ in range(100):
        page = h.search(MessageQuery(limit=17, cursor=cursor, **query))  # type: ignore[arg-type]
        seen += [m.id for m in page.messages]
        cursor = page.next_cursor
        if not cursor:
            break
    assert seen == expect


def _matches(m: MessageRecord, k: str, v: object) -> bool:
    if k == "tenant":
        return m.tenant == v
    if k == "subject":
        return "weekly" in m.headers["Subject"]
    return True


def test_a_long_scan_stops_and_pages_on(h: HistoryStore,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history_store, "MAX_SCAN", 10)
    msgs = [record(T0 + i, ["r@gmail.com"], tenant="rare" if i in (3, 27) else "common")
            for i in range(40)]
    put(h, from_events(*(M.send_event(m) for m in msgs)))
    found: list[str] = []
    cursor = ""
    calls = 0
    while True:
        page = h.search(MessageQuery(recipient="r@gmail.com", tenant="rare", cursor=cursor))
        calls += 1
        assert page.scanned <= 10
        found += [m.id for m in page.messages]
        cursor = page.next_cursor
        if not cursor:
            break
    assert found == [msgs[27].id, msgs[3].id] and calls == 5   # 4 × 10 scanned, then none


def test_statistics_add_up_to_the_entries(h: HistoryStore) -> None:
    stats = StatsStore(h.store)
    sent = 0
    for i in range(12):
        ts = T0 + i * 400                                   # spread over 5 buckets
        msg = record(ts, ["a@gmail.com", "b@yahoo.com"], tenant=f"t{i % 3}",
                     configuration_set="cs" if i % 2 else "")
        put(h, *delivered_story(msg, provider="gmail" if i % 2 else "yahoo"))
        sent += 2
    bounced = record(T0 + 100, ["x@gmail.com"], tenant="t0")
    put(h, from_events(M.send_event(bounced)),
        from_attempts(Attempt(bounced.id, "x@gmail.com", "bounced", T0 + 101, T0 + 100,
                              response="550 5.1.1 no")),
        from_events(M.bounce_event(bounced, ["x@gmail.com"], "550 5.1.1 no", T0 + 102, "mx"),
                    M.complaint_event(bounced, ["x@gmail.com"], T0 + 200)))
    sent += 1
    all_ = stats.query(T0, T0 + DAY)
    assert [s.key for s in all_] == [""]
    tot = totals(all_)
    assert tot["sent"] == sent == 25
    assert tot["delivered"] == 24 and tot["deferred"] == 12 and tot["attempts"] == 37
    assert tot["bounced"] == 1 and tot["complained"] == 1
    assert [p.t for p in all_[0].points] == [T0 + k * 900 for k in range(5)]
    by_tenant = stats.query(T0, T0 + DAY, by="tenant")
    assert [s.key for s in by_tenant] == ["t0", "t1", "t2"]
    assert sum(totals([s])["sent"] for s in by_tenant) == 25
    assert totals(stats.query(T0, T0 + DAY, tenant="t0"))["sent"] == 9
    by_provider = stats.query(T0, T0 + DAY, by="provider")
    assert {s.key: totals([s])["delivered"] for s in by_provider} == {"gmail": 12,
                                                                        "yahoo": 12}
    assert totals(stats.query(T0, T0 + DAY, configuration_set="cs"))["sent"] == 12
    hourly = stats.query(T0, T0 + DAY, bucket=3600)
    assert [p.t for p in hourly[0].points] == [T0, T0 + 3600]
    assert totals(hourly) == tot
    points = stats.send_statistics(T0, T0 + DAY)
    assert sum(int(p["DeliveryAttempts"]) for p in points) == 25   # type: ignore[call-overload]
    assert points[0]["Timestamp"] == M.iso(T0) and points[0]["Bounces"] == 1
    assert stats.query(T0 + 900, T0 + 1800)[0].points[0].t == T0 + 900
    with pytest.raises(ValueError, match="by="):
        stats.query(T0, T0 + DAY, by="color")
    with pytest.raises(ValueError, match="per dimension"):
        stats.query(T0, T0 + DAY, by="provider", tenant="t0")


def _keys_of(h: HistoryStore, qid: str) -> list[bytes]:
    out = []
    for name in (K.HISTORY_DB, K.TIMELINE_DB):
        out += [k for k, _ in h.store.read_db(name, qid.encode())]
    out += [k for k, _ in h.store.read_db(K.INDEX_DB) if k.endswith(qid.encode())]
    return out


async def test_retention_removes_exactly_the_old_messages(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = QueueStore(tmp_path / "q", clock)
    h, stats = HistoryStore(store), StatsStore(store)
    # Enough old messages that removing them frees whole pages (the stored forms are
    # compact: a few messages share one page of each sub-database).
    old = [record(T0 + i * 600, ["a@gmail.com"], tenant="acme") for i in range(40)]
    new = [record(T0 + 10 * DAY + i, ["a@gmail.com"], tenant="acme") for i in range(3)]
    for m in old + new:
        put(h, *delivered_story(m))
    await store.start()
    try:
        grown = h.usage()
        assert grown["messages"] == 43 and grown["oldest"] == int(T0)
        clock.set(T0 + 10 * DAY + 100)
        pruner = HistoryPruner(h, stats, clock, retention=8 * DAY, stats_retention=9 * DAY,
                               chunk=2)
        done = await pruner.run_once()
        assert done["expired"] == 40
        for m in old:
            assert _keys_of(h, m.id) == [] and h.get(m.id) is None
        for m in new:
            assert _keys_of(h, m.id) and h.get(m.id) is not None
        assert ids(h, recipient="a@gmail.com") == [m.id for m in reversed(new)]
        assert stats.query(T0, T0 + DAY) == []
        assert totals(stats.query(T0, T0 + 11 * DAY))["sent"] == 3
        shrunk = h.usage()
        assert shrunk["messages"] == 3 and shrunk["bytes"] < grown["bytes"]
        assert (await pruner.run_once()) == {"expired": 0, "over_cap": 0, "stats": 0}
        # A disk cap removes the oldest messages until the history fits.
        capped = HistoryPruner(h, stats, clock, retention=30 * DAY, stats_retention=30 * DAY,
                               max_bytes=1, chunk=1)
        assert (await capped.run_once())["over_cap"] == 3
        assert h.usage()["messages"] == 0
        assert [k for name in (K.HISTORY_DB, K.TIMELINE_DB, K.INDEX_DB)
                for k, _ in store.read_db(name)] == []
    finally:
        await store.close()


async def test_recorder_writes_a_batch_per_flush(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = QueueStore(tmp_path / "q", clock)
    await store.start()
    h = HistoryStore(store)
    rec = HistoryRecorder(store, h, clock, flush=0.5, max_pending=4, max_op=2)
    rec.start()
    try:
        msg = record(T0, ["a@gmail.com", "b@gmail.com"])
        rec(M.send_event(msg))
        rec.observe_attempt(Attempt(msg.id, "a@gmail.com", "delivered", T0 + 1, T0))
        rec(M.warmup_event("WarmupFreeze", "127.0.0.10", "", "x", None, "freeze", T0))
        assert rec.pending == 3 and h.get(msg.id) is None      # nothing written yet
        rec(M.delivery_event(msg, ["a@gmail.com", "b@gmail.com"], "250 ok", T0 + 2, "mx"))
        assert rec.dropped == 2 and rec.pending == 3            # full: counted, not kept
        await asyncio.sleep(0)                                  # the task sleeps
        clock.advance(0.5)
        for _ in range(500):  # two ops of at most max_op entries, one after the other
            if rec.recorded >= 3:
                break
            await asyncio.sleep(0.01)
        assert rec.recorded == 3 and rec.pending == 0
        view = h.get(msg.id)
        assert view is not None and not view.message.partial
        assert [r.status for r in view.message.recipients] == ["delivered", "queued"]
        rec(M.bounce_event(msg, ["b@gmail.com"], "550 5.1.1 no", T0 + 3, "mx"))
    finally:
        await rec.stop()                                        # the last batch
        await store.close()
    reopened = QueueStore(tmp_path / "q", clock)
    view = HistoryStore(reopened).get(msg.id)
    assert view is not None
    assert [r.status for r in view.message.recipients] == ["delivered", "bounced"]
    reopened.close_sync()


# A recipient's story: (deferred attempts before the end, the end).
_ENDS = ("delivered", "delivered+complaint", "delivered+unsubscribe", "bounced", "expired",
         "suppressed", "pending")


def _story(msg: MessageRecord, plan: list[tuple[int, str]]) -> list[M.Event | Attempt]:
    """A message's Send, attempts and events in time order, each recipient as `plan`
    says (its deferred attempts each followed by a DeliveryDelay, then its end)."""
    t = msg.received_at
    out: list[M.Event | Attempt] = [M.send_event(msg)]
    for n, (rcpt, (deferrals, end)) in enumerate(zip(msg.recipients, plan, strict=True)):
        at = t + 10 * (n + 1)
        for _ in range(deferrals):
            out.append(Attempt(msg.id, rcpt, "deferred", at, t, response="451 later"))
            out.append(M.delay_event(msg, [rcpt], "451 4.4.1 later", at + 1, t + DAY, "mx"))
            at += 100
        if end.startswith("delivered"):
            out.append(Attempt(msg.id, rcpt, "delivered", at, t))
            out.append(M.delivery_event(msg, [rcpt], "250 ok", at + 1, "mx"))
            if end.endswith("complaint"):
                out.append(M.complaint_event(msg, [rcpt], at + 500))
            elif end.endswith("unsubscribe"):
                out.append(M.subscription_event(msg, rcpt, at + 400))
        elif end == "bounced":
            out.append(Attempt(msg.id, rcpt, "bounced", at, t, response="550 5.1.1 no"))
            out.append(M.bounce_event(msg, [rcpt], "550 5.1.1 no", at + 1, "mx"))
        elif end == "expired":
            out.append(M.bounce_event(msg, [rcpt], "451 4.4.1 later", at + 1, "mx",
                                      expired=True))
        elif end == "suppressed":
            out.append(M.bounce_event(msg, [rcpt], M.SUPPRESSED_RESPONSE, at, "mx"))
    return out


def _batch(items: list[M.Event | Attempt]) -> Batch:
    events = [i for i in items if isinstance(i, M.Event)]
    msgs, entries = from_events(*events)
    return msgs, entries + from_attempts(*(i for i in items if isinstance(i, Attempt)))[1]


def test_any_order_of_a_messages_entries_gives_the_same_history(tmp_path: Path) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    store = QueueStore(tmp_path / "q", FakeClock(T0))
    h = HistoryStore(store)
    plans = st.lists(st.tuples(st.integers(0, 2), st.sampled_from(_ENDS)),
                     min_size=1, max_size=3)

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(plan=plans, data=st.data())
    def check(plan: list[tuple[int, str]], data: st.DataObject) -> None:
        rcpts = [f"r{i}@gmail.com" for i in range(len(plan))]
        in_order, shuffled = record(T0, rcpts), record(T0, rcpts)
        story = _story(in_order, plan)
        put(h, _batch(story))
        other = _story(shuffled, plan)
        order = data.draw(st.permutations(range(len(other))))
        cuts = sorted(data.draw(st.sets(st.integers(1, len(other)), max_size=4)))
        items = [other[i] for i in order]
        for lo, hi in zip([0, *cuts], [*cuts, len(items)], strict=True):
            if hi > lo:
                put(h, _batch(items[lo:hi]))
        a, b = h.get(in_order.id), h.get(shuffled.id)
        assert a is not None and b is not None
        assert not b.message.partial
        assert [(r.address, r.status, r.attempts, r.provider) for r in a.message.recipients] \
            == [(r.address, r.status, r.attempts, r.provider) for r in b.message.recipients]
        assert [(e.recipient, e.kind, e.ts) for e in a.timeline] == \
            [(e.recipient, e.kind, e.ts) for e in b.timeline]
        assert {k[:-20] for k in K.index_keys(a.message) if k[:1] != K.F_MESSAGE_ID} == \
            {k[:-20] for k in K.index_keys(b.message) if k[:1] != K.F_MESSAGE_ID}

    try:
        check()
    finally:
        store.close_sync()


def test_a_batch_is_cut_into_ops_of_bounded_size() -> None:
    from relay.history.recorder import _chunks

    m1, m2 = record(T0, ["a@x.com"]), record(T0 + 1, ["b@x.com"])
    b1, b2 = from_events(M.send_event(m1)), from_events(M.send_event(m2))
    lone = HistoryMessage(id="f" * 20)
    cut = _chunks(b1[0] + b2[0] + [lone], b1[1] + b2[1], 1)
    assert [([m.id for m in ms], [q for q, _ in es]) for ms, es in cut] == [
        ([m1.id], [m1.id]), ([m2.id, lone.id], [m2.id])]
    assert _chunks([], [], 5) == []
    assert _chunks([lone], [], 5) == [([lone], [])]


def test_what_record_op_remembers_is_bounded_in_bytes_not_in_messages(h: HistoryStore) -> None:
    """A spool draining for minutes records thousands of deliveries no later op looks up
    again: the index keys record_op keeps of the messages it wrote last (so a delivery
    need not work them out again from its Send's record) stay within a memory budget,
    measured with tracemalloc, whatever the count; the newest are the ones kept, and a
    message recorded again still finds its keys (the index stays exact)."""
    import gc
    import tracemalloc

    budget = history_store.STORED_KEYS_BYTES
    msgs = [record(T0 + i, [f"user{i}-{n}@example.net" for n in range(6)],
                   subject=f"Your invoice {i} for the month of November, account {i * 7}")
            for i in range(3000)]
    tracemalloc.start()
    try:
        for first in range(0, len(msgs), 100):
            put(h, from_events(*(M.send_event(m) for m in msgs[first:first + 100])))
        kept = len(h._stored_keys)
        newest_kept = msgs[-1].id in h._stored_keys
        oldest_kept = msgs[0].id in h._stored_keys
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        h._stored_keys.clear()
        gc.collect()
        held = before - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert 0 < kept < len(msgs)
    assert held <= budget * 1.1, f"{held / 2**20:.1f} MiB held for {budget / 2**20:.1f}"
    assert newest_kept and not oldest_kept
    last = msgs[-1]
    put(h, delivered_story(last)[1])
    assert ids(h, status="delivered") == [last.id]
    view = h.get(last.id)
    assert view is not None
    assert ids(h, status="queued", limit=500) and last.id not in ids(h, status="queued",
                                                                     limit=500)
