"""The admin API over the message history and statistics, the per-destination queue
actions, the live event stream and the suppression search.

The handlers run in the real admin server (relay.admin.server.AdminServer on a loopback
port) over a real LMDB spool; the history is filled through HistoryStore.record_op with
entries made from events built by relay/events/model.py's builders, the queue through
QueueStore.submit_record; requests are real HTTP with aiohttp's client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec
import pytest
from adminkit import Admin

from relay.admin.api import AdminContext
from relay.admin.api.livefeed import MAX_STREAMS, LiveFeed
from relay.admin.metrics import Metrics
from relay.admin.server import AdminServer
from relay.admin.tokens import TokenStore
from relay.clock import SystemClock
from relay.config import Config
from relay.config.types import Address
from relay.events.log import EventLog, read_events
from relay.events.model import (
    Event,
    bounce_event,
    complaint_event,
    delay_event,
    delivery_event,
    send_event,
)
from relay.queue.ops import NewMessage
from relay.queue.records import MessageRecord, State
from relay.queue.store import QueueStore
from relay.suppression.store import Entry, SuppressionList
from relay.testing.factories import merged_config
from relay.testing.historydata import Attempt, history_op, message
from relay.testing.process import run_cli
from relay.testing.wait import wait_until
from relay.users import UserStore


@dataclass
class Api:
    ctx: AdminContext
    server: AdminServer
    session: aiohttp.ClientSession
    token: str
    cfg: Config

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def call(self, method: str, path: str, *, token: str | None = "",
                   params: dict[str, str] | None = None) -> tuple[int, Any]:
        use = self.token if token == "" else token
        headers = {"Authorization": f"Bearer {use}"} if use is not None else {}
        async with self.session.request(method, self.base + path, headers=headers,
                                        params=params) as resp:
            return resp.status, await resp.json(content_type=None)

    @property
    def store(self) -> QueueStore:
        return self.ctx.store


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    cfg = merged_config(tmp_path / "state", {})
    clock = SystemClock()
    store = QueueStore(tmp_path / "state" / "queue", clock)
    await store.start()
    tokens = TokenStore(tmp_path / "state" / "admin_tokens.json")
    token = tokens.add("tests")
    events = EventLog(tmp_path / "state" / "events.jsonl", clock)
    ctx = AdminContext(config=lambda: cfg, store=store,
                       users=UserStore(tmp_path / "state" / "users.json"), tokens=tokens,
                       events=events, metrics=Metrics(), clock=clock)
    server = AdminServer(ctx, Address("127.0.0.1", 0))
    await server.start()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))
    try:
        yield Api(ctx, server, session, token, cfg)
    finally:
        await session.close()
        await server.stop()
        events.close()
        await store.close()


async def submit(store: QueueStore, recipients: list[str], subject: str = "hi",
                 **fields: Any) -> MessageRecord:
    return await store.submit_record(NewMessage(
        sender="app@example.com", recipients=recipients,
        body=f"Subject: {subject}\r\n\r\nhello\r\n".encode(),
        headers={"Subject": subject, "From": "app@example.com"}, **fields))


# ---------------------------------------------------------------------- per destination


async def test_domain_actions_touch_only_that_destination(api: Api) -> None:
    store = api.store
    mixed = await submit(store, ["a@slow.test", "b@fine.test"])
    only = await submit(store, ["c@slow.test", "d@slow.test"])
    other = await submit(store, ["e@fine.test"])

    status, body = await api.call("POST", "/api/queue/retry", params={"domain": "Slow.TEST"})
    assert status == 200, body
    assert body == {"domain": "slow.test", "messages": 2, "recipients": 3}

    status, body = await api.call("POST", "/api/queue/bounce", params={"domain": "slow.test"})
    assert body == {"domain": "slow.test", "messages": 2, "recipients": 3}
    # The recipients elsewhere wait on; the message of slow.test only is gone.
    states = {r.address: r.state for r in store.recipients(mixed.id)}
    assert states == {"a@slow.test": State.BOUNCED, "b@fine.test": State.QUEUED}
    assert store.message(only.id) is None
    assert store.message(other.id) is not None
    # One Bounce event per message, naming only the recipients at slow.test.
    await asyncio.sleep(0)
    api.ctx.events.flush()
    bounces = [e for e in read_events(api.ctx.events.path) if e["eventType"] == "Bounce"]
    named = sorted(r["emailAddress"] for e in bounces
                   for r in e["bounce"]["bouncedRecipients"])  # type: ignore[index]
    assert len(bounces) == 2 and named == ["a@slow.test", "c@slow.test", "d@slow.test"]

    # Nothing is left waiting at slow.test: a second action finds nothing.
    status, body = await api.call("POST", "/api/queue/bounce", params={"domain": "slow.test"})
    assert body == {"domain": "slow.test", "messages": 0, "recipients": 0}


async def test_domain_delete_keeps_other_destinations(api: Api) -> None:
    store = api.store
    mixed = await submit(store, ["a@gone.test", "b@fine.test"])
    only = await submit(store, ["c@gone.test"])
    status, body = await api.call("DELETE", "/api/queue", params={"domain": "gone.test"})
    assert status == 200, body
    assert body == {"domain": "gone.test", "messages": 2, "recipients": 2}
    assert store.message(only.id) is None
    left = {r.address: r for r in store.recipients(mixed.id)}
    assert left["b@fine.test"].state is State.QUEUED
    assert left["a@gone.test"].state is State.BOUNCED
    assert "deleted by the operator" in left["a@gone.test"].last_response
    api.ctx.events.flush()
    assert not [e for e in read_events(api.ctx.events.path) if e["eventType"] == "Bounce"]


@pytest.mark.parametrize("value", ["", "user@example.com", "nodot", "a b.test"])
async def test_domain_actions_name_a_bad_domain(api: Api, value: str) -> None:
    for method, path in (("POST", "/api/queue/retry"), ("POST", "/api/queue/bounce"),
                         ("DELETE", "/api/queue")):
        status, body = await api.call(method, path, params={"domain": value})
        assert status == 400 and body["field"] == "domain", (path, body)


async def test_domain_actions_need_the_token(api: Api) -> None:
    msg = await submit(api.store, ["a@slow.test"])
    for method, path in (("POST", "/api/queue/retry"), ("POST", "/api/queue/bounce"),
                         ("DELETE", "/api/queue")):
        for token in (None, "rly_wrong"):
            status, body = await api.call(method, path, token=token,
                                          params={"domain": "slow.test"})
            assert status == 401 and set(body) == {"error"}, (path, body)
    assert [r.state for r in api.store.recipients(msg.id)] == [State.QUEUED]


async def test_per_message_actions_still_work(api: Api) -> None:
    msg = await submit(api.store, ["a@x.test", "b@y.test"])
    status, body = await api.call("POST", f"/api/queue/{msg.id}/bounce")
    assert status == 200 and body == {"id": msg.id, "bounced": 2}
    status, _ = await api.call("DELETE", f"/api/queue/{msg.id}")
    assert status == 404


# ---------------------------------------------------------------------- suppression


async def test_suppression_search_and_cause(api: Api) -> None:
    lst = SuppressionList(api.store)
    now = time.time()
    await api.store.write(lst.add_op([
        Entry("alice@shop.test", "BOUNCE", now, "0190000000000000abcd",
              "550 5.1.1 no such user", "0190000000000000abcd-1a2b"),
        Entry("bob@shop.test", "COMPLAINT", now, "0190000000000000ef01", "complaint; abuse"),
        Entry("carol@other.test", "BOUNCE", now)]))
    status, body = await api.call("GET", "/api/suppression", params={"q": "SHOP"})
    assert status == 200, body
    rows = {r["address"]: r for r in body["entries"]}
    assert set(rows) == {"alice@shop.test", "bob@shop.test"} and body["matched"] == 2
    assert rows["alice@shop.test"]["feedback_id"] == "0190000000000000abcd-1a2b"
    assert rows["alice@shop.test"]["message_id"] == "0190000000000000abcd"
    assert rows["alice@shop.test"]["diagnostic"] == "550 5.1.1 no such user"
    assert rows["bob@shop.test"]["feedback_id"] == ""        # an entry without one
    assert rows["bob@shop.test"]["created_at"].endswith("Z")
    status, body = await api.call("GET", "/api/suppression",
                                  params={"q": "o", "reason": "BOUNCE"})
    assert {r["address"] for r in body["entries"]} == {"alice@shop.test", "carol@other.test"}


async def test_suppression_entries_written_before_the_cause_field_still_read(
        api: Api) -> None:
    """An entry stored by an older relay (five fields) lists with an empty feedback id."""

    class OldEntry(msgspec.Struct, array_like=True, tag=1):
        address: str
        reason: str
        created_at: float
        message_id: str = ""
        diagnostic: str = ""

    raw = msgspec.msgpack.encode(OldEntry("old@shop.test", "BOUNCE", 1.7e9, "m", "d"))
    db = api.store.named_db("suppression")
    await api.store.write(lambda txn: txn.put(b"old@shop.test", raw, db=db))
    status, body = await api.call("GET", "/api/suppression", params={"q": "old@"})
    assert status == 200 and body["entries"][0]["feedback_id"] == ""
    assert body["entries"][0]["message_id"] == "m"


# ---------------------------------------------------------------------- event stream


async def _read_until(resp: aiohttp.ClientResponse, needle: bytes, timeout: float) -> bytes:
    got = b""
    async with asyncio.timeout(timeout):
        while needle not in got:
            chunk = await resp.content.readany()
            if not chunk:
                break
            got += chunk
    return got


async def test_stream_gets_an_event_another_writer_appends(api: Api, tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {api.token}"}
    async with api.session.get(api.base + "/api/events/stream", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        await _read_until(resp, b"\n\n", 5)          # the opening comment: it is following
        # Another process's writer (an EventLog of its own on the same file).
        other = EventLog(api.ctx.events.path)
        msg = MessageRecord(id="0190000000000000beef", sender="app@example.com",
                            recipients=["r@x.test"], received_at=time.time(), size=10)
        other.emit([delivery_event(msg, ["r@x.test"], "250 ok", time.time(), "mx.x.test")])
        other.close()
        got = await _read_until(resp, b"0190000000000000beef", 3)
    frame = got[got.index(b"event: Delivery"):]
    data = frame.split(b"\ndata: ", 1)[1].split(b"\n", 1)[0]
    assert json.loads(data)["mail"]["messageId"] == "0190000000000000beef"


async def test_stream_sends_heartbeats_when_idle(api: Api) -> None:
    api.ctx.live = LiveFeed(api.ctx.events.path, api.ctx.clock, heartbeat=0.3)
    headers = {"Authorization": f"Bearer {api.token}"}
    async with api.session.get(api.base + "/api/events/stream", headers=headers) as resp:
        got = await _read_until(resp, b": heartbeat\n\n", 5)
    assert b": heartbeat" in got


async def test_stream_needs_the_token(api: Api) -> None:
    async with api.session.get(api.base + "/api/events/stream") as resp:
        assert resp.status == 401
        assert "token" in (await resp.json())["error"]


async def test_stream_limit_then_shutdown_ends_streams(api: Api) -> None:
    headers = {"Authorization": f"Bearer {api.token}"}
    opened = []
    try:
        for _ in range(MAX_STREAMS):
            resp = await api.session.get(api.base + "/api/events/stream", headers=headers)
            assert resp.status == 200
            opened.append(resp)
        async with api.session.get(api.base + "/api/events/stream", headers=headers) as extra:
            assert extra.status == 429
            assert "20" in (await extra.json())["error"]
        # A client that leaves frees its slot (noticed within a second or so).
        opened.pop().close()
        for _ in range(50):
            again = await api.session.get(api.base + "/api/events/stream", headers=headers)
            if again.status == 200:
                break
            again.release()
            await asyncio.sleep(0.1)
        assert again.status == 200
        opened.append(again)
        # Stopping the server ends every open stream at once (not after its timeout).
        started = time.monotonic()
        await api.server.stop()
        assert time.monotonic() - started < 1.5
        for resp in opened:
            await _read_until(resp, b"\x00never", 2)   # ends: EOF, not the timeout
    finally:
        for resp in opened:
            resp.release()


# ---------------------------------------------------------------------- history


@dataclass
class Filled:
    invoice: MessageRecord      # alice delivered, bob deferred then bounced
    welcome: MessageRecord      # carol delivered, then complained
    bulk: list[MessageRecord]   # newest last
    bulk_start: float


@pytest.fixture
async def filled(api: Api) -> Filled:
    now = time.time()
    t0 = now - 3 * 3600
    invoice = message(t0, ["alice@gmail.test", "bob@ok.test"], "Invoice for March",
                      msgid="inv-1@acme.test", tenant="acme", configuration_set="tx")
    welcome = message(t0 + 60, ["carol@ok.test"], "Welcome aboard",
                      sender="news@news.test", from_="news@news.test")
    events: list[Event] = [
        send_event(invoice),
        delivery_event(invoice, ["alice@gmail.test"], "250 2.0.0 OK queued", t0 + 5,
                       "gmail-smtp-in.l.gmail.test"),
        delay_event(invoice, ["bob@ok.test"], "451 4.2.0 mailbox busy", t0 + 6,
                    t0 + 86400, "relay.test"),
        bounce_event(invoice, ["bob@ok.test"], "550 5.1.1 no such user", t0 + 900,
                     "relay.test"),
        send_event(welcome),
        delivery_event(welcome, ["carol@ok.test"], "250 ok", t0 + 65, "mx.ok.test"),
        complaint_event(welcome, ["carol@ok.test"], t0 + 3600, feedback_type="abuse"),
    ]
    attempts = [
        Attempt(invoice.id, "alice@gmail.test", "delivered", "250 2.0.0 OK queued",
                t0 + 4, t0),
        Attempt(invoice.id, "bob@ok.test", "deferred", "451 4.2.0 mailbox busy", t0 + 5,
                t0, provider="", mx_host="mx.ok.test", tls=False),
        Attempt(invoice.id, "bob@ok.test", "bounced", "550 5.1.1 no such user", t0 + 899,
                t0, provider="", mx_host="mx.ok.test", tls=False),
    ]
    bulk_start = now - 3600
    bulk = []
    for i in range(12):
        m = message(bulk_start + i, [f"reader{i}@ok.test"], f"Newsletter {i}",
                    sender="news@news.test", from_="news@news.test")
        bulk.append(m)
        events += [send_event(m), delivery_event(m, m.recipients, "250 ok", bulk_start + i
                                                 + 1, "mx.ok.test")]
    await api.store.write(history_op(api.store, events, attempts))
    return Filled(invoice, welcome, bulk, bulk_start)


async def _ids(api: Api, **params: str) -> list[str]:
    status, body = await api.call("GET", "/api/messages", params=params)
    assert status == 200, (params, body)
    return [m["id"] for m in body["messages"]]


async def test_search_pages_newest_first_without_duplicates(api: Api, filled: Filled) -> None:
    everything = [m.id for m in reversed(filled.bulk)] + [filled.welcome.id,
                                                          filled.invoice.id]
    assert await _ids(api) == everything
    seen: list[str] = []
    cursor = ""
    for _ in range(10):
        params = {"limit": "5", **({"cursor": cursor} if cursor else {})}
        status, body = await api.call("GET", "/api/messages", params=params)
        assert status == 200 and body["count"] == len(body["messages"]) <= 5
        seen += [m["id"] for m in body["messages"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert seen == everything                   # every message once, in order


async def test_search_filters(api: Api, filled: Filled) -> None:
    inv, wel = filled.invoice.id, filled.welcome.id
    bulk = {m.id for m in filled.bulk}
    assert await _ids(api, recipient="Alice@Gmail.test") == [inv]
    assert await _ids(api, sender="app@acme.test") == [inv]
    assert await _ids(api, subject="invoice") == [inv]
    assert await _ids(api, subject="march INVOICE") == [inv]        # every word
    assert await _ids(api, subject="invoice welcome") == []
    assert await _ids(api, message_id="inv-1@acme.test") == [inv]
    assert await _ids(api, message_id="<inv-1@acme.test>") == [inv]
    assert await _ids(api, message_id=wel) == [wel]                  # a queue id
    assert await _ids(api, tenant="acme") == [inv]
    assert await _ids(api, configuration_set="tx") == [inv]
    assert await _ids(api, identity="acme.test") == [inv]
    assert await _ids(api, status="bounced") == [inv]
    assert await _ids(api, status="complained") == [wel]
    assert await _ids(api, status="deferred") == []                  # bob moved on
    assert set(await _ids(api, status="delivered")) == {inv, wel, *bulk}
    # Conditions hold for the message: a recipient has the status, another the address.
    assert await _ids(api, status="bounced", recipient="alice@gmail.test") == [inv]
    assert await _ids(api, status="complained", recipient="alice@gmail.test") == []
    # since / until: ISO 8601 or epoch seconds, on the receive time.
    since = filled.bulk_start - 1
    assert set(await _ids(api, since=str(since))) == bulk
    iso_since = dt.datetime.fromtimestamp(since, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert set(await _ids(api, since=iso_since)) == bulk
    assert await _ids(api, until=str(since)) == [wel, inv]
    assert await _ids(api, until=str(since), sender="news@news.test") == [wel]


async def test_search_row_shape(api: Api, filled: Filled) -> None:
    status, body = await api.call("GET", "/api/messages", params={"tenant": "acme"})
    assert status == 200 and body["scanned"] >= 1 and body["next_cursor"] == ""
    row = body["messages"][0]
    assert row["id"] == filled.invoice.id and row["subject"] == "Invoice for March"
    assert row["from"] == ["Billing <billing@acme.test>"]
    assert row["to"] == ["alice@gmail.test", "bob@ok.test"] and row["tenant"] == "acme"
    assert row["message_id"] == "inv-1@acme.test" and row["configuration_set"] == "tx"
    assert row["received_at"].endswith("Z") and row["status"] == "bounced"
    rcpts = {r["address"]: r for r in row["recipients"]}
    assert rcpts["alice@gmail.test"]["status"] == "delivered"
    assert rcpts["alice@gmail.test"]["provider"] == "gmail"
    assert rcpts["bob@ok.test"]["status"] == "bounced"
    assert rcpts["bob@ok.test"]["attempts"] == 2
    assert "no such user" in rcpts["bob@ok.test"]["last_response"]


async def test_message_detail_timeline_and_insights(api: Api, filled: Filled) -> None:
    inv = filled.invoice
    status, body = await api.call("GET", f"/api/messages/{inv.id}")
    assert status == 200, body
    assert body["id"] == inv.id and body["client_ip"] == "192.0.2.7"
    assert body["identity"] == "acme.test" and body["auth_user"] == "app"
    assert body["source"] == "smtp"
    assert body["tags"]["ses:configuration-set"] == ["tx"]
    kinds = [(e["recipient"], e["kind"]) for e in body["timeline"]]
    bob = [k for r, k in kinds if r == "bob@ok.test"]
    assert bob == ["accepted", "attempt", "deferred", "attempt", "bounced"]
    assert [e["ts"] for e in body["timeline"]] == sorted(e["ts"] for e in body["timeline"])
    attempt = next(e for e in body["timeline"] if e["kind"] == "attempt"
                   and e["recipient"] == "alice@gmail.test")
    assert attempt["mx_host"] == "gmail-smtp-in.l.gmail.test" and attempt["tls"] is True
    assert attempt["source_ip"] == "127.0.0.10" and attempt["duration_ms"] == 120
    assert attempt["dkim"] == ["d=acme.test s=sel1"] and attempt["result"] == "delivered"
    bounced = next(e for e in body["timeline"] if e["kind"] == "bounced")
    assert bounced["event"]["eventType"] == "Bounce"
    assert bounced["event"]["bounce"]["bouncedRecipients"][0]["emailAddress"] == "bob@ok.test"
    # SES GetMessageInsights
    assert body["MessageId"] == inv.id and body["Subject"] == "Invoice for March"
    assert "billing@acme.test" in body["FromEmailAddress"]
    assert {"Name": "ses:configuration-set", "Value": "tx"} in body["EmailTags"]
    insights = {i["Destination"]: i for i in body["Insights"]}
    assert [e["Type"] for e in insights["alice@gmail.test"]["Events"]] == ["SEND", "DELIVERY"]
    assert insights["alice@gmail.test"]["Isp"] == "gmail"
    bob_events = insights["bob@ok.test"]["Events"]
    assert [e["Type"] for e in bob_events] == ["SEND", "DELIVERY_DELAY", "PERMANENT_BOUNCE"]
    assert bob_events[-1]["Details"]["Bounce"]["BounceType"] == "PERMANENT"
    assert "5.1.1" in bob_events[-1]["Details"]["Bounce"]["DiagnosticCode"]
    # By its Message-ID header, with or without <>.
    for ident in ("inv-1@acme.test", "<inv-1@acme.test>"):
        status, same = await api.call("GET", f"/api/messages/{quote(ident, safe='')}")
        assert status == 200 and same["id"] == inv.id


async def test_complaint_insight(api: Api, filled: Filled) -> None:
    status, body = await api.call("GET", f"/api/messages/{filled.welcome.id}")
    assert status == 200
    events = body["Insights"][0]["Events"]
    assert [e["Type"] for e in events] == ["SEND", "DELIVERY", "COMPLAINT"]
    assert events[-1]["Details"]["Complaint"]["ComplaintFeedbackType"] == "abuse"
    assert body["status"] == "complained"


async def test_unknown_message_is_404(api: Api, filled: Filled) -> None:
    for ident in ("0123456789abcdef0123", "nobody-sent-this@x.test"):
        status, body = await api.call("GET", f"/api/messages/{ident}")
        assert status == 404 and body["field"] == "id", body


@pytest.mark.parametrize(("params", "field"), [
    ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"since": "yesterday"}, "since"), ({"until": "2026-13-01"}, "until"),
    ({"since": "200", "until": "100"}, "until"), ({"status": "lost"}, "status"),
    ({"colour": "red"}, "colour"), ({"since": "nan"}, "since"),
])
async def test_search_bad_input_names_the_parameter(api: Api, params: dict[str, str],
                                                    field: str) -> None:
    status, body = await api.call("GET", "/api/messages", params=params)
    assert status == 400 and body["field"] == field, body
    assert field in body["error"]


@pytest.mark.parametrize("path", ["/api/messages", "/api/messages/inv-1@acme.test",
                                  "/api/stats", "/api/events/stream"])
async def test_history_needs_the_token(api: Api, filled: Filled, path: str) -> None:
    for token in (None, "rly_wrong"):
        status, body = await api.call("GET", path, token=token)
        assert status == 401 and set(body) == {"error"}, body
        assert "inv-1" not in json.dumps(body) and filled.invoice.id not in json.dumps(body)


# ---------------------------------------------------------------------- statistics


async def test_stats_series_totals_and_send_data_points(api: Api, filled: Filled) -> None:
    status, body = await api.call("GET", "/api/stats")
    assert status == 200, body
    assert body["bucket_seconds"] == 900
    assert [s["key"] for s in body["series"]] == [""]
    points = body["series"][0]["points"]
    assert 96 <= len(points) <= 97                 # every bucket of the last 24 hours
    totals = body["totals"]
    # 2 + 1 + 12 recipients accepted; alice, carol and the 12 readers delivered.
    assert totals["sent"] == 15 and totals["delivered"] == 14
    assert totals["bounced"] == 1 and totals["complained"] == 1
    assert totals["attempts"] == 3 and totals["deferred"] == 1
    assert sum(p["sent"] for p in points) == 15
    sdp = body["SendDataPoints"]
    assert sum(p["DeliveryAttempts"] for p in sdp) == 15
    assert sum(p["Bounces"] for p in sdp) == 1 and sum(p["Complaints"] for p in sdp) == 1
    assert all(p["Timestamp"].endswith("Z") for p in sdp)


async def _stats(api: Api, params: dict[str, str]) -> Any:
    status, body = await api.call("GET", "/api/stats", params=params)
    assert status == 200, (params, body)
    return body


async def test_stats_by_dimension_and_filters(api: Api, filled: Filled) -> None:
    body = await _stats(api, {"by": "tenant"})
    by_tenant = {s["key"]: sum(p["sent"] for p in s["points"]) for s in body["series"]}
    assert by_tenant["acme"] == 2 and sum(by_tenant.values()) == 15
    assert body["totals"]["sent"] == 15
    body = await _stats(api, {"by": "provider"})
    by_provider = {s["key"]: sum(p["delivered"] for p in s["points"]) for s in body["series"]}
    assert by_provider["gmail"] == 1
    assert body["totals"]["sent"] == 15          # totals count every recipient once
    body = await _stats(api, {"tenant": "acme"})
    assert [s["key"] for s in body["series"]] == ["acme"]
    assert body["totals"]["sent"] == 2 and body["totals"]["bounced"] == 1
    body = await _stats(api, {"configuration_set": "tx", "bucket": "3600"})
    assert body["bucket_seconds"] == 3600 and body["totals"]["sent"] == 2
    assert len(body["series"][0]["points"]) in (24, 25)
    body = await _stats(api, {
        "since": str(filled.bulk_start - 1), "until": str(filled.bulk_start + 600)})
    assert body["totals"]["sent"] == 12


@pytest.mark.parametrize(("params", "field"), [
    ({"by": "isp"}, "by"), ({"bucket": "1000"}, "bucket"), ({"bucket": "x"}, "bucket"),
    ({"since": "last week"}, "since"), ({"until": "1", "since": "2"}, "until"),
    ({"tenant": "acme", "by": "provider"}, "tenant"),
    ({"tenant": "acme", "configuration_set": "tx"}, "configuration_set"),
    ({"since": "0", "until": "1700000000"}, "since"),
])
async def test_stats_bad_input_names_the_parameter(api: Api, params: dict[str, str],
                                                   field: str) -> None:
    status, body = await api.call("GET", "/api/stats", params=params)
    assert status == 400 and body["field"] == field, body


# ---------------------------------------------------------------------- a real relay


def test_a_real_relay_records_what_it_sends(admin: Admin) -> None:
    """Sent through a real `relay serve` to a sink: the message is found by recipient,
    with its attempt and delivery in the timeline; a rejected one shows its bounce; the
    CLI reads the same history from the spool beside the running server."""
    delivered = admin.send("history-reader@ok.test", "History check")
    bounced = admin.send("nobody@ok.test", "History bounce")

    def row(recipient: str, status: str) -> Any:
        code, body = admin.call("GET", f"/api/messages?recipient={recipient}")
        assert code == 200, body
        found = [m for m in body["messages"] if m["status"] == status]
        return found[0] if found else None

    first = wait_until(lambda: row("history-reader@ok.test", "delivered"), 20,
                       "the delivered message in the history")
    assert first["id"] == delivered and first["subject"] == "History check"
    code, detail = admin.call("GET", f"/api/messages/{delivered}")
    assert code == 200, detail
    kinds = [e["kind"] for e in detail["timeline"]]
    assert kinds.index("accepted") < kinds.index("attempt") < kinds.index("delivered")
    attempt = next(e for e in detail["timeline"] if e["kind"] == "attempt")
    assert attempt["result"] == "delivered" and attempt["remote_ip"] == "127.0.0.2"
    assert attempt["source_ip"] in ("127.0.0.10", "127.0.0.11")
    assert attempt["mx_host"] and attempt["response"].startswith("250")
    delivery = next(e for e in detail["timeline"] if e["kind"] == "delivered")
    assert delivery["event"]["eventType"] == "Delivery"
    assert [e["Type"] for e in detail["Insights"][0]["Events"]] == ["SEND", "DELIVERY"]

    wait_until(lambda: row("nobody@ok.test", "bounced"), 20, "the bounce in the history")
    code, detail = admin.call("GET", f"/api/messages/{bounced}")
    types = [e["Type"] for e in detail["Insights"][0]["Events"]]
    assert types[0] == "SEND" and types[-1] == "PERMANENT_BOUNCE", types

    # The hard bounce put the address on the suppression list, naming its cause: the
    # message and the Bounce event's feedbackId.
    bounce = next(e for e in detail["timeline"] if e["kind"] == "bounced")["event"]
    code, listed = admin.call("GET", "/api/suppression?q=nobody%40ok")
    assert code == 200 and listed["count"] == 1, listed
    assert listed["entries"][0]["message_id"] == bounced
    assert listed["entries"][0]["feedback_id"] == bounce["bounce"]["feedbackId"]

    shown = run_cli("message", "show", delivered, "--json", config=admin.config)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == delivered
    code, stats = admin.call("GET", "/api/stats")
    assert code == 200 and stats["totals"]["sent"] >= 2 and stats["totals"]["delivered"] >= 1


async def test_a_real_relay_streams_its_events(admin: Admin) -> None:
    """The live stream of a running relay shows the Send and Delivery of a message sent
    after it opened."""
    headers = {"Authorization": f"Bearer {admin.token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session, \
            session.get(admin.base + "/api/events/stream", headers=headers) as resp:
        assert resp.status == 200
        await _read_until(resp, b"\n\n", 5)
        qid = await asyncio.to_thread(admin.send, "live-reader@ok.test", "Live check")
        frames: list[bytes] = []
        got = b""
        async with asyncio.timeout(20):
            while not any(f.startswith(b"event: Delivery") for f in frames):
                got += await resp.content.readany()
                *whole, got = got.split(b"\n\n")
                frames += [f for f in whole if qid.encode() in f]
    assert frames[0].startswith(b"event: Send\ndata: ")
