"""Did it get there? The history and the statistics of a running relay, end to end.

One real `relay serve` (adminkit) delivers through the loopback DNS to real sinks: one
that accepts (ok.test, gmail.test), one that answers 451 to every recipient (busy.test)
and a refusal (550 for nobody@); a real ARF complaint reaches its feedback listener.
Then each message's history, read through the admin API and through `relay message
show`, lists exactly its attempts and events in order, the search finds each message
by what an operator knows of it, and the statistics' buckets sum to the events the
relay published."""

from __future__ import annotations

import json
import smtplib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from adminkit import Admin, complaint, make_admin_relay

from relay.events.log import read_events
from relay.testing.dnsserver import DnsServer
from relay.testing.process import free_port, run_cli
from relay.testing.sink import Sink
from relay.testing.wait import wait_until


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer,
            sinks: tuple[Sink, Sink]) -> Iterator[tuple[Admin, dict[str, str]]]:
    submit_port, feedback_port = free_port(), free_port()
    admin = make_admin_relay(
        tmp_path_factory.mktemp("history"), dns, sinks,
        listener=[{"address": f"127.0.0.1:{submit_port}", "tls": "starttls",
                   "auth": "required"},
                  {"address": f"127.0.0.1:{feedback_port}", "tls": "none", "auth": "none",
                   "role": "feedback"}])
    admin.submit_port = submit_port
    try:
        before = admin.sinks[0].message_count
        ids = {
            "delivered": admin.send("ann@ok.test", "Quarterly invoice 2291"),
            "refused": admin.send("nobody@ok.test", "Welcome aboard"),
            "deferred": admin.send("late@busy.test", "Your parcel is delayed"),
            "complained": admin.send("friend@gmail.test", "Weekly digest"),
        }
        got = admin.sinks[0].wait_for(before + 2, timeout=20)
        digest = [m for m in got if b"Weekly digest" in m.data][-1]
        wait_until(lambda: _statuses(admin, ids["deferred"]) == {"deferred"}, 20,
                   "the first deferral in the history")
        # A second attempt of the deferred one, as an operator's "retry now".
        status, _ = admin.call("POST", f"/api/queue/{ids['deferred']}/retry")
        assert status == 200
        wait_until(lambda: _attempts(admin, ids["deferred"]) == 2, 20,
                   "the second attempt in the history")
        with smtplib.SMTP("127.0.0.1", feedback_port, timeout=10) as s:
            s.sendmail("", [digest.mail_from], complaint("friend@gmail.test",
                                                         digest.mail_from))
        wait_until(lambda: _statuses(admin, ids["complained"]) == {"complained"}, 20,
                   "the complaint in the history")
        wait_until(lambda: _statuses(admin, ids["refused"]) == {"bounced"}, 20,
                   "the refusal in the history")
        wait_until(lambda: _statuses(admin, ids["delivered"]) == {"delivered"}, 20,
                   "the delivery in the history")
        yield admin, ids
    finally:
        admin.relay.stop()


def _message(admin: Admin, mid: str) -> dict[str, Any]:
    status, body = admin.call("GET", f"/api/messages/{mid}")
    return body if status == 200 else {}


def _statuses(admin: Admin, mid: str) -> set[str]:
    return {r["status"] for r in _message(admin, mid).get("recipients", [])}


def _attempts(admin: Admin, mid: str) -> int:
    return sum(1 for e in _message(admin, mid).get("timeline", []) if e["kind"] == "attempt")


def _kinds(timeline: list[dict[str, Any]]) -> list[str]:
    return [e["kind"] + (f":{e['result']}" if e["kind"] == "attempt" else "")
            for e in timeline]


EXPECTED = {
    "delivered": ["accepted", "attempt:delivered", "delivered"],
    "refused": ["accepted", "attempt:bounced", "bounced"],
    "deferred": ["accepted", "attempt:deferred", "deferred", "attempt:deferred", "deferred"],
    "complained": ["accepted", "attempt:delivered", "delivered", "complained"],
}


def test_each_history_lists_exactly_its_attempts_and_events_in_order(
        traffic: tuple[Admin, dict[str, str]]) -> None:
    admin, ids = traffic
    for name, mid in ids.items():
        msg = _message(admin, mid)
        assert _kinds(msg["timeline"]) == EXPECTED[name], (name, msg["timeline"])
        times = [e["ts"] for e in msg["timeline"]]
        assert times == sorted(times)
        assert msg["sender"] == "app@example.com" and msg["tenant"] == "default"
    deferred = _message(admin, ids["deferred"])
    attempts = [e for e in deferred["timeline"] if e["kind"] == "attempt"]
    for a in attempts:
        # what an operator needs to answer "why not": where from, to whom, the reply
        assert a["source_ip"] in ("127.0.0.10", "127.0.0.11")
        assert a["mx_host"] == "mx.busy.test"
        assert a["remote_ip"] == "127.0.0.3"
        assert a["response"] == "451 4.2.0 mailbox busy, try again later"
        assert a["tls"] is False  # these sinks offer no STARTTLS: shown, not left out
    delivered = _message(admin, ids["delivered"])
    attempt = next(e for e in delivered["timeline"] if e["kind"] == "attempt")
    assert attempt["mx_host"] == "mx.ok.test" and attempt["response"].startswith("250")
    assert delivered["subject"] == "Quarterly invoice 2291"
    assert delivered["size"] > 200  # from the queue's record: SES events carry no size
    event = next(e for e in delivered["timeline"] if e["kind"] == "delivered")["event"]
    assert event["eventType"] == "Delivery" and event["mail"]["messageId"] == ids["delivered"]
    insights = delivered["Insights"]
    assert [i["Destination"] for i in insights] == ["ann@ok.test"]
    assert [e["Type"] for e in insights[0]["Events"]] == ["SEND", "DELIVERY"]


def test_the_cli_shows_the_same_history(traffic: tuple[Admin, dict[str, str]]) -> None:
    admin, ids = traffic
    shown = run_cli("message", "show", ids["deferred"], "--json", config=admin.config)
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert _kinds(body["timeline"]) == EXPECTED["deferred"]
    table = run_cli("message", "show", ids["refused"], config=admin.config)
    assert table.returncode == 0, table.stderr
    assert "550 5.1.1 no such user" in table.stdout
    found = run_cli("message", "search", "--recipient", "friend@gmail.test", "--json",
                    config=admin.config)
    assert found.returncode == 0, found.stderr
    assert ids["complained"] in found.stdout


def test_the_search_finds_each_message_by_what_the_operator_knows(
        traffic: tuple[Admin, dict[str, str]]) -> None:
    admin, ids = traffic

    def search(query: str) -> list[str]:
        status, body = admin.call("GET", f"/api/messages?{query}")
        assert status == 200, body
        return [m["id"] for m in body["messages"]]

    assert search("recipient=late@busy.test") == [ids["deferred"]]
    assert search("status=deferred") == [ids["deferred"]]
    assert search("subject=invoice") == [ids["delivered"]]
    assert search("status=complained") == [ids["complained"]]
    assert set(search("sender=app@example.com")) >= set(ids.values())
    assert search("recipient=nobody@ok.test&status=delivered") == []
    status, body = admin.call("GET", "/api/messages?since=yesterday")
    assert status == 400 and "since" in json.dumps(body)


def test_the_statistics_sum_to_the_events(traffic: tuple[Admin, dict[str, str]]) -> None:
    admin, _ = traffic
    events = read_events(admin.state / "events.jsonl")
    by_type = Counter(str(e["eventType"]) for e in events)
    status, stats = admin.call("GET", "/api/stats")
    assert status == 200, stats
    totals = stats["totals"]
    assert totals["sent"] == by_type["Send"] == 4
    assert totals["delivered"] == by_type["Delivery"] == 2
    assert totals["bounced"] == by_type["Bounce"] == 1
    assert totals["complained"] == by_type["Complaint"] == 1
    assert totals["deferred"] == by_type["DeliveryDelay"] == 2
    assert totals["attempts"] == 5
    series = stats["series"]
    for metric in ("sent", "delivered", "bounced", "complained", "deferred", "attempts"):
        assert sum(p[metric] for s in series for p in s["points"]) == totals[metric]
    points = stats["SendDataPoints"]
    assert sum(p["DeliveryAttempts"] for p in points) == 4
    assert sum(p["Bounces"] for p in points) == 1
    assert sum(p["Complaints"] for p in points) == 1
    status, by_provider = admin.call("GET", "/api/stats?by=provider")
    assert status == 200
    per = {s["key"]: s for s in by_provider["series"]}
    gmail = sum(p["delivered"] for p in per["gmail"]["points"])
    assert gmail == 1
    cli = run_cli("stats", "--json", config=admin.config)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["totals"]["delivered"] == 2


def test_a_bounce_by_the_cli_is_in_the_history(traffic: tuple[Admin, dict[str, str]]) -> None:
    # `relay queue bounce` publishes its Bounce event from its own process, which the
    # server's recorder never sees: the command records it itself. (Last in this module:
    # it adds to the statistics counted above.)
    admin, _ = traffic
    mid = admin.send("stuck@busy.test", "Never arrives")
    wait_until(lambda: _statuses(admin, mid) == {"deferred"}, 20, "the deferral")
    done = run_cli("queue", "bounce", mid, config=admin.config)
    assert done.returncode == 0, done.stderr
    msg = _message(admin, mid)
    assert _kinds(msg["timeline"]) == ["accepted", "attempt:deferred", "deferred", "bounced"]
    assert msg["recipients"][0]["status"] == "bounced"
    assert msg["timeline"][-1]["event"]["bounce"]["bouncedRecipients"][0]["emailAddress"] \
        == "stuck@busy.test"
