"""The admin API over the message history and statistics, the per-destination queue
actions, the live event stream and the suppression search.

The handlers run in the real admin server (relay.admin.server.AdminServer on a loopback
port) over a real LMDB spool; the history is filled through HistoryStore.record_op with
entries made from events built by relay/events/model.py's builders, the queue through
QueueStore.submit_record; requests are real HTTP with aiohttp's client.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.admin.api import AdminContext
from relay.admin.api.livefeed import MAX_STREAMS
from relay.admin.metrics import Metrics
from relay.admin.server import AdminServer
from relay.admin.tokens import TokenStore
from relay.clock import SystemClock
from relay.config import Config
from relay.config.types import Address
from relay.events.log import EventLog, read_events
from relay.events.model import (
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
    import msgspec

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
        # Stopping the server ends every open stream at once (not after its timeout).
        started = time.monotonic()
        await api.server.stop()
        assert time.monotonic() - started < 1.5
        for resp in opened:
            await _read_until(resp, b"\x00never", 2)   # ends: EOF, not the timeout
    finally:
        for resp in opened:
            resp.release()
