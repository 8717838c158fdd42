"""`relay message show|search`, `relay stats` and `relay queue retry|bounce|delete --domain`
as an operator runs them (subprocess `python -m relay`), over a spool whose history was
filled through HistoryStore.record_op with events from relay/events/model.py's builders.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from relay.clock import SystemClock
from relay.events.log import read_events
from relay.events.model import bounce_event, delivery_event, send_event
from relay.queue.ops import NewMessage
from relay.queue.records import State
from relay.queue.store import QueueStore
from relay.testing.historydata import Attempt, message, record
from relay.testing.process import run_cli

CONFIG = """
[server]
state_dir = "{state}"
"""


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("history_cli")
    config = tmp / "relay.toml"
    config.write_text(CONFIG.format(state=tmp / "state"), encoding="utf-8")
    store = QueueStore(tmp / "state" / "queue", SystemClock())
    now = time.time()
    invoice = message(now - 7200, ["alice@gmail.test", "bob@ok.test"], "Invoice for March",
                      msgid="inv-7@acme.test", tenant="acme")
    others = [message(now - 600 + i, [f"r{i}@ok.test"], f"Newsletter {i}",
                      sender="news@news.test", from_="news@news.test") for i in range(4)]
    events = [send_event(invoice),
              delivery_event(invoice, ["alice@gmail.test"], "250 2.0.0 OK", now - 7190,
                             "gmail-smtp-in.l.gmail.test"),
              bounce_event(invoice, ["bob@ok.test"], "550 5.1.1 no such user", now - 7180,
                           "relay.test")]
    for m in others:
        events += [send_event(m), delivery_event(m, m.recipients, "250 ok", now - 500,
                                                 "mx.ok.test")]
    record(store, events, [Attempt(invoice.id, "alice@gmail.test", "delivered",
                                   "250 2.0.0 OK", now - 7191, now - 7200)])
    store.close_sync()
    return config, {"invoice": invoice.id, "newest": others[-1].id}


def test_message_search_table_json_and_paging(spool: tuple[Path, dict[str, str]]) -> None:
    config, ids = spool
    out = run_cli("message", "search", "--recipient", "alice@gmail.test", config=config)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ID", "RECEIVED", "STATUS", "FROM", "TO", "SUBJECT"]
    assert len(lines) == 2 and lines[1].startswith(ids["invoice"]) and " bounced " in lines[1]
    assert "-- 1 message(s)" in out.stderr
    page = json.loads(run_cli("message", "search", "--limit", "3", "--json",
                              config=config).stdout)
    assert page["count"] == 3 and page["messages"][0]["id"] == ids["newest"]
    rest = run_cli("message", "search", "--limit", "3", "--cursor", page["next_cursor"],
                   config=config)
    assert "--cursor" not in rest.stderr and rest.stdout.count("\n") == 3   # header + 2
    seen = [m["id"] for m in page["messages"]] + [x.split()[0]
                                                   for x in rest.stdout.splitlines()[1:]]
    assert len(set(seen)) == 5 and ids["invoice"] in seen
    recent = json.loads(run_cli("message", "search", "--since", "1h", "--status",
                                "delivered", "--json", config=config).stdout)
    assert recent["count"] == 4 and ids["invoice"] not in [m["id"] for m in recent["messages"]]


def test_message_show_text_and_json(spool: tuple[Path, dict[str, str]]) -> None:
    config, ids = spool
    text = run_cli("message", "show", "<inv-7@acme.test>", config=config)
    assert text.returncode == 0, text.stderr
    assert ids["invoice"] in text.stdout and "Invoice for March" in text.stdout
    assert "550 5.1.1 no such user" in text.stdout           # the bounce, with its reply
    assert "gmail-smtp-in.l.gmail.test" in text.stdout       # the attempt's MX
    shown = json.loads(run_cli("message", "show", ids["invoice"], "--json",
                               config=config).stdout)
    assert shown["message_id"] == "inv-7@acme.test" and shown["tenant"] == "acme"
    insights = {i["Destination"]: [e["Type"] for e in i["Events"]] for i in shown["Insights"]}
    assert insights == {"alice@gmail.test": ["SEND", "DELIVERY"],
                        "bob@ok.test": ["SEND", "PERMANENT_BOUNCE"]}
    missing = run_cli("message", "show", "0123456789abcdef0123", config=config)
    assert missing.returncode == 1 and "no message with id" in missing.stderr


@pytest.mark.parametrize(("args", "option"), [
    (["message", "search", "--status", "lost"], "--status"),
    (["message", "search", "--since", "yesterday"], "--since"),
    (["message", "search", "--limit", "0"], "--limit"),
    (["message", "search", "--limit", "many"], "--limit"),
    (["stats", "--by", "isp"], "--by"),
    (["stats", "--bucket", "5m"], "--bucket"),
    (["stats", "--until", "2026-99-01"], "--until"),
    (["stats", "--tenant", "acme", "--by", "provider"], "--tenant"),
    (["queue", "bounce", "--domain", "user@example.com"], "--domain"),
])
def test_bad_option_values_are_one_line(spool: tuple[Path, dict[str, str]],
                                        args: list[str], option: str) -> None:
    config, _ = spool
    out = run_cli(*args, config=config)
    assert out.returncode == 1, out
    assert out.stderr.count("\n") == 1 and option in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_stats_table_and_json(spool: tuple[Path, dict[str, str]]) -> None:
    config, _ = spool
    out = run_cli("stats", config=config)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["BUCKET", "SENT", "DELIVERED"]
    total = lines[-1].split()
    assert total[0] == "total" and total[1:3] == ["6", "5"]   # 2 + 4 sent, 1 + 4 delivered
    by = json.loads(run_cli("stats", "--by", "configuration-set", "--bucket", "1h",
                            "--json", config=config).stdout)
    assert by["bucket_seconds"] == 3600
    per_tenant = json.loads(run_cli("stats", "--by", "tenant", "--json",
                                    config=config).stdout)
    sent = {s["key"]: sum(p["sent"] for p in s["points"]) for s in per_tenant["series"]}
    assert sent["acme"] == 2 and per_tenant["totals"]["bounced"] == 1
    assert sum(p["DeliveryAttempts"] for p in per_tenant["SendDataPoints"]) == 6
    short = json.loads(run_cli("stats", "--since", "1h", "--json", config=config).stdout)
    assert short["totals"]["sent"] == 4


def test_queue_actions_per_destination(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(CONFIG.format(state=tmp_path / "state"), encoding="utf-8")

    async def fill() -> list[str]:
        store = QueueStore(tmp_path / "state" / "queue", SystemClock())
        await store.start()
        ids = []
        for rcpts in (["a@slow.test", "b@fine.test"], ["c@slow.test"], ["d@fine.test"]):
            rec = await store.submit_record(NewMessage(
                sender="app@example.com", recipients=rcpts,
                body=b"Subject: hi\r\n\r\nhello\r\n", headers={"Subject": "hi"}))
            ids.append(rec.id)
        await store.close()
        return ids

    mixed, only, _other = asyncio.run(fill())
    both = run_cli("queue", "retry", mixed, "--domain", "slow.test", config=config)
    assert both.returncode == 1 and "one of them" in both.stderr
    retried = run_cli("queue", "retry", "--domain", "SLOW.test", config=config)
    assert retried.returncode == 0, retried.stderr
    assert "retry: 2 recipient(s) at slow.test in 2 message(s)" in retried.stdout
    bounced = run_cli("queue", "bounce", "--domain", "slow.test", config=config)
    assert "bounce: 2 recipient(s) at slow.test in 2 message(s)" in bounced.stdout
    events = read_events(tmp_path / "state" / "events.jsonl")
    assert sorted(r["emailAddress"] for e in events if e["eventType"] == "Bounce"
                  for r in e["bounce"]["bouncedRecipients"]) == [  # type: ignore[index]
        "a@slow.test", "c@slow.test"]
    deleted = run_cli("queue", "delete", "--domain", "fine.test", config=config)
    assert "delete: 2 recipient(s) at fine.test in 2 message(s)" in deleted.stdout
    store = QueueStore(tmp_path / "state" / "queue", SystemClock())
    try:
        assert store.message_count() == 0      # nothing left to deliver anywhere
        assert store.message(mixed) is None and store.message(only) is None
        assert not [r for r in store.recipients(mixed) if r.state is not State.BOUNCED]
    finally:
        store.close_sync()
    listed = run_cli("queue", "list", config=config)
    assert "-- 0 message(s)" in listed.stderr
