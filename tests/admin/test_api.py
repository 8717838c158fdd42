"""The admin API of a running relay: every endpoint with good input, bad input and no token;
the OpenAPI document; Prometheus metrics; `relay admin token` and `relay status`.

One relay process serves the whole module (fixture `admin` in conftest.py): a message to
busy.test stays deferred (its MX answers 451), one to ok.test is delivered, one to
nobody@ok.test bounces, so the queue, events and metrics have something to show.
"""

from __future__ import annotations

import json
import re
import smtplib
from typing import Any

import pytest
from adminkit import Admin

from relay.admin.api import ROUTES
from relay.testing.process import run_cli
from relay.testing.wait import wait_until

# Every /api/ route of the table, its path parameters filled in: none answers without a
# token (a route added later is covered without being listed here).
_SAMPLE = {"{id}": "0123456789abcdef0123", "{address}": "a@b.test", "{name}": "app"}


def _filled(path: str) -> str:
    for key, value in _SAMPLE.items():
        path = path.replace(key, value)
    return path


ENDPOINTS = [(method, _filled(path)) for method, path, _ in ROUTES
             if path.startswith("/api/")]

SECRET_WORDS = ("hash", "salt", "sha256", "password", "private")


def _no_secrets(admin: Admin, payload: Any) -> None:
    text = json.dumps(payload)
    assert admin.token not in text
    for word in SECRET_WORDS:
        assert f'"{word}"' not in text.lower(), (word, text[:500])


@pytest.fixture(scope="module")
def traffic(admin: Admin) -> dict[str, str]:
    ids = {"deferred": admin.send("someone@busy.test", "stuck"),
           "delivered": admin.send("user@ok.test", "fine"),
           "bounced": admin.send("nobody@ok.test", "unknown user"),
           "gmail": admin.send("friend@gmail.test", "to the big provider")}
    wait_until(lambda: admin.call("GET", f"/api/queue/{ids['deferred']}")[1]
               .get("recipients", [{}])[0].get("state") == "deferred", 15, "a deferral")
    wait_until(lambda: admin.sinks[0].message_count >= 2, 15, "deliveries")
    return ids


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_no_token_is_401(admin: Admin, method: str, path: str) -> None:
    for token in (None, "rly_wrong", "not even bearer"):
        status, body = admin.call(method, path, token=token)
        assert status == 401, (token, body)
        assert "token" in body["error"]


def test_openapi_describes_every_route(admin: Admin) -> None:
    status, doc = admin.call("GET", "/openapi.json", token=None)
    assert status == 200
    assert doc["openapi"].startswith("3.")
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    routed = {(m.lower(), p) for m, p, _ in ROUTES}
    described = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert routed == described
    for path, ops in doc["paths"].items():
        for op in ops.values():
            if path.startswith("/api/"):
                assert "401" in op["responses"], path


def test_queue_list_filter_show(admin: Admin, traffic: dict[str, str]) -> None:
    status, body = admin.call("GET", "/api/queue")
    assert status == 200
    ids = [m["id"] for m in body["messages"]]
    assert traffic["deferred"] in ids and traffic["delivered"] not in ids
    _no_secrets(admin, body)
    status, body = admin.call("GET", "/api/queue?domain=busy.test&state=deferred&limit=5")
    assert status == 200 and [m["id"] for m in body["messages"]] == [traffic["deferred"]]
    status, body = admin.call("GET", "/api/queue?domain=ok.test")
    assert status == 200 and body["messages"] == []
    status, body = admin.call("GET", f"/api/queue/{traffic['deferred']}")
    assert status == 200
    rcpt = body["recipients"][0]
    assert rcpt["address"] == "someone@busy.test" and rcpt["attempts"] >= 1
    assert rcpt["last_response"].startswith("451")
    assert "body" not in body


@pytest.mark.parametrize(("query", "field"), [
    ("state=lost", "state"), ("limit=0", "limit"), ("limit=ten", "limit"),
    ("domain=a@b", "domain"), ("colour=red", "colour"),
])
def test_queue_list_bad_input(admin: Admin, query: str, field: str) -> None:
    status, body = admin.call("GET", f"/api/queue?{query}")
    assert status == 400 and body["field"] == field, body
    assert field in body["error"]


def test_queue_bad_and_unknown_ids(admin: Admin) -> None:
    for method, suffix in (("GET", ""), ("POST", "/retry"), ("POST", "/bounce"),
                           ("DELETE", "")):
        status, body = admin.call(method, f"/api/queue/NOT-AN-ID{suffix}")
        assert status == 400 and body["field"] == "id", body
        status, body = admin.call(method, f"/api/queue/ffffffffffffffffffff{suffix}")
        assert status == 404 and body["field"] == "id", body


def test_queue_retry_bounce_delete(admin: Admin, traffic: dict[str, str]) -> None:
    a = admin.send("second@busy.test", "to bounce")
    b = admin.send("third@busy.test", "to delete")
    status, body = admin.call("POST", f"/api/queue/{traffic['deferred']}/retry")
    assert status == 200 and body["retried"] == 1
    wait_until(lambda: admin.call("GET", f"/api/queue/{a}")[1]["recipients"][0]["state"]
               == "deferred", 15, "the second deferral")
    status, body = admin.call("POST", f"/api/queue/{a}/bounce")
    assert status == 200 and body["bounced"] == 1
    assert admin.call("GET", f"/api/queue/{a}")[0] == 404
    status, events = admin.call("GET", f"/api/events?message_id={a}&type=Bounce")
    assert status == 200 and events["count"] == 1
    assert "bounced by the operator" in json.dumps(events)
    status, body = admin.call("DELETE", f"/api/queue/{b}")
    assert status == 200 and body["deleted"] is True
    assert admin.call("GET", f"/api/queue/{b}")[0] == 404


def test_suppression_add_list_remove(admin: Admin) -> None:
    status, body = admin.call("POST", "/api/suppression",
                              {"address": "Gone@OK.test", "reason": "complaint"})
    assert status == 201, body
    assert body == {"address": "gone@ok.test", "reason": "COMPLAINT", "added": True}
    status, body = admin.call("POST", "/api/suppression", {"address": "gone@ok.test"})
    assert status == 200 and body["added"] is False and body["reason"] == "BOUNCE"
    for i in range(5):
        assert admin.call("POST", "/api/suppression", {"address": f"page{i}@ok.test"})[0] == 201
    status, body = admin.call("GET", "/api/suppression?prefix=page&limit=2")
    assert status == 200 and body["matched"] == 5 and body["next_offset"] == 2
    assert [e["address"] for e in body["entries"]] == ["page0@ok.test", "page1@ok.test"]
    status, body = admin.call("GET", "/api/suppression?prefix=page&limit=2&offset=4")
    assert [e["address"] for e in body["entries"]] == ["page4@ok.test"]
    assert body["next_offset"] is None
    status, body = admin.call("GET", "/api/suppression?reason=BOUNCE&prefix=gone")
    assert [e["address"] for e in body["entries"]] == ["gone@ok.test"]
    assert body["entries"][0]["diagnostic"] == "added through the admin API"
    listed = run_cli("suppression", "list", "--json", config=admin.config)
    assert "page3@ok.test" in listed.stdout, listed.stderr
    status, body = admin.call("DELETE", "/api/suppression/Gone@ok.test")
    assert status == 200 and body == {"address": "gone@ok.test", "removed": True}
    status, body = admin.call("DELETE", "/api/suppression/gone@ok.test")
    assert status == 404 and body["field"] == "address"
    status, body = admin.call("DELETE", "/api/suppression/nobody")  # any text: not listed
    assert status == 404 and body["field"] == "address"
    for i in range(5):
        assert admin.call("DELETE", f"/api/suppression/page{i}@ok.test")[0] == 200


@pytest.mark.parametrize(("method", "path", "payload", "field"), [
    ("POST", "/api/suppression", {"address": "not-an-address"}, "address"),
    ("POST", "/api/suppression", {"address": 5}, "address"),
    ("POST", "/api/suppression", {}, "address"),
    ("POST", "/api/suppression", {"address": "a@b.test", "reason": "SPAM"}, "reason"),
    ("POST", "/api/suppression", {"address": "a@b.test", "extra": 1}, "extra"),
    ("GET", "/api/suppression?reason=SPAM", None, "reason"),
    ("GET", "/api/suppression?limit=0", None, "limit"),
    ("GET", "/api/suppression?offset=-1", None, "offset"),
    ("GET", "/api/suppression?colour=red", None, "colour"),
])
def test_suppression_bad_input(admin: Admin, method: str, path: str, payload: Any,
                               field: str) -> None:
    status, body = admin.call(method, path, payload)
    assert status == 400, body
    assert body["field"] == field


def test_identities_and_warmup(admin: Admin, traffic: dict[str, str]) -> None:
    added = run_cli("identity", "add", "example.com", config=admin.config)
    assert added.returncode == 0, added.stderr
    status, body = admin.call("GET", "/api/identities")
    assert status == 200
    row = next(r for r in body["identities"] if r["name"] == "example.com")
    assert row["verified"] is False
    _no_secrets(admin, body)
    status, body = admin.call("GET", "/api/warmup")
    assert status == 200 and body["enabled"] is True
    ips = {r["ip"]: r for r in body["ips"]}
    assert set(ips) == {"127.0.0.10", "127.0.0.11"}
    row = ips["127.0.0.10"]
    assert row["plan"] == "ses-standard" and row["day"] >= 1
    assert row["cap_today"] == row["plan_caps"][row["day"] - 1]
    assert sum(r["sent_today"] for r in ips.values()) >= 3


def test_users_list_add_remove(admin: Admin) -> None:
    status, body = admin.call("GET", "/api/users")
    assert status == 200 and [u["name"] for u in body["users"]] == ["app"]
    _no_secrets(admin, body)
    status, body = admin.call("POST", "/api/users",
                              {"name": "billing", "password": "s3cret-enough",
                               "allow": ["example.com"]})
    assert status == 201 and body == {"name": "billing", "allow": ["example.com"]}
    status, body = admin.call("POST", "/api/users",
                              {"name": "billing", "password": "another-long-one"})
    assert status == 409 and body["field"] == "name"
    assert sorted(u["name"] for u in admin.call("GET", "/api/users")[1]["users"]) == [
        "app", "billing"]
    users_file = (admin.state / "users.json").read_text()
    assert "s3cret-enough" not in users_file
    status, body = admin.call("DELETE", "/api/users/billing")
    assert status == 200 and body["removed"] is True
    status, body = admin.call("DELETE", "/api/users/billing")
    assert status == 404 and body["field"] == "name"


@pytest.mark.parametrize(("payload", "field"), [
    ({"password": "pw"}, "name"),
    ({"name": "x", "password": "x" * 11}, "password"),
    ({"name": 7, "password": "pw"}, "name"),
    ({"name": "x", "password": ""}, "password"),
    ({"name": "bad name!", "password": "pw"}, "name"),
    ({"name": "x", "password": "pw", "allow": "example.com"}, "allow"),
    ({"name": "x", "password": "pw", "allow": ["not a pattern"]}, "allow"),
    ({"name": "x", "password": "pw", "admin": True}, "admin"),
    ([1, 2], "body"),
])
def test_users_add_bad_input(admin: Admin, payload: Any, field: str) -> None:
    status, body = admin.call("POST", "/api/users", payload)
    assert status == 400 and body["field"] == field, body


def test_users_add_refuses_a_short_password_and_generates_one_when_none_is_given(
        admin: Admin) -> None:
    status, body = admin.call("POST", "/api/users", {"name": "shorty", "password": "p"})
    assert status == 400 and body["field"] == "password", body
    assert "at least 12" in body["error"] and "'p'" not in body["error"]
    assert "shorty" not in [u["name"] for u in admin.call("GET", "/api/users")[1]["users"]]

    status, body = admin.call("POST", "/api/users", {"name": "generated"})
    assert status == 201, body
    password = body.pop("generated_password")
    assert body == {"name": "generated", "allow": []} and len(password) >= 24
    assert password not in (admin.state / "users.json").read_text()
    # The answered password is the one stored: it logs in to the running relay.
    with smtplib.SMTP("127.0.0.1", admin.submit_port, timeout=10) as client:
        client.starttls(context=admin.tls.client)
        assert client.login("generated", password)[0] == 235
    _no_secrets(admin, admin.call("GET", "/api/users")[1])
    assert admin.call("DELETE", "/api/users/generated")[0] == 200


def test_users_add_not_json(admin: Admin) -> None:
    status, body = admin.call("POST", "/api/users", raw=b"{name")
    assert status == 400 and body["field"] == "body"


def test_events_recent_and_filter(admin: Admin, traffic: dict[str, str]) -> None:
    status, body = admin.call("GET", "/api/events?limit=500")
    assert status == 200 and body["count"] >= 4
    types = {e["eventType"] for e in body["events"]}
    assert {"Send", "Delivery", "Bounce"} <= types
    status, body = admin.call("GET", "/api/events?type=Delivery&recipient=user@ok.test")
    assert status == 200 and body["count"] == 1
    assert body["events"][0]["mail"]["messageId"] == traffic["delivered"]
    status, body = admin.call("GET", f"/api/events?message_id={traffic['deferred']}&limit=1")
    assert status == 200 and body["count"] == 1  # newest first: the last event of it
    for query, field in (("type=Opened", "type"), ("limit=-1", "limit"),
                         ("recipient=nobody", "recipient"), ("since=1", "since")):
        status, body = admin.call("GET", f"/api/events?{query}")
        assert status == 400 and body["field"] == field, body


def test_status_and_dashboard_data(admin: Admin, traffic: dict[str, str]) -> None:
    status, body = admin.call("GET", "/api/status")
    assert status == 200 and body["hostname"] == "relay.test"
    assert body["queue"]["depth"]["deferred"] >= 1
    assert body["listeners"][0]["port"] == admin.submit_port
    # The provider panel reads the sending statistics, written once per [history] flush.
    def shown(providers: dict[str, dict[str, int]]) -> bool:
        return (providers.get("other", {}).get("bounced", 0) >= 1
                and providers.get("gmail", {}).get("delivered", 0) >= 1)

    wait_until(lambda: shown(admin.call("GET", "/api/dashboard")[1]["providers"]), 10,
               "the delivery and the bounce on the panel")
    status, body = admin.call("GET", "/api/dashboard")
    assert status == 200
    assert body["providers"]["gmail"]["delivered"] == 1
    assert body["providers"]["other"]["bounced"] >= 1
    assert any(m["id"] == traffic["deferred"] for m in body["oldest_deferred"])
    assert len(body["history"]) >= 1


def test_metrics(admin: Admin, traffic: dict[str, str]) -> None:
    with smtplib.SMTP("127.0.0.1", admin.submit_port, timeout=10) as s:
        s.ehlo("metrics.test")
        code, _ = s.mail("app@example.com")  # no AUTH: refused
    assert code == 530
    status, text = admin.call("GET", "/metrics", token=None)
    assert status == 200
    for name in ("relay_messages_accepted_total", "relay_smtp_rejections_total",
                 "relay_deliveries_total", "relay_bounces_total", "relay_deferrals_total",
                 "relay_queue_depth", "relay_queue_oldest_message_age_seconds",
                 "relay_warmup_cap", "relay_warmup_sent_today",
                 "relay_queue_commit_batch_size_bucket", "relay_queue_commit_seconds_bucket",
                 "relay_smtp_sessions_total", "relay_smtp_sessions_open",
                 "relay_event_loop_lag_seconds", "relay_delivery_held_seconds_total"):
        assert f"\n{name}" in text, name
    assert re.search(r'relay_deliveries_total\{provider="gmail",source_ip="127\.0\.0\.1[01]"\}'
                     r" 1\.0", text), text
    assert re.search(r'relay_queue_depth\{state="deferred"\} [1-9]', text)
    assert re.search(r'relay_smtp_rejections_total\{code="530",reason="5\.7\.0"\} [1-9]', text)
    assert re.search(r'relay_smtp_sessions_total\{listener="127\.0\.0\.1:\d+",'
                     r'result="accepted"\} [1-9]', text)
    accepted = float(re.search(r"\nrelay_messages_accepted_total (\S+)", text).group(1))  # type: ignore[union-attr]
    assert accepted >= 4


def test_admin_token_cli_and_status(admin: Admin, traffic: dict[str, str]) -> None:
    made = run_cli("admin", "token", "add", "ops", "--json", config=admin.config)
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)["token"]
    assert admin.call("GET", "/api/status", token=token)[0] == 200
    assert token not in (admin.state / "admin_tokens.json").read_text()
    dup = run_cli("admin", "token", "add", "ops", config=admin.config)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    listed = run_cli("admin", "token", "list", "--json", config=admin.config)
    assert [t["name"] for t in json.loads(listed.stdout)] == ["tests", "ops"]
    assert token not in listed.stdout
    token_file = admin.tmp / "ops.token"
    token_file.write_text(token + "\n")
    st = run_cli("status", "--token-file", str(token_file), config=admin.config)
    assert st.returncode == 0, st.stderr
    assert "relay on relay.test" in st.stdout and "deferred" in st.stdout
    assert "127.0.0.10" in st.stdout
    assert re.search(r"history: \d+ message\(s\), [\d.]+ MB, oldest ", st.stdout), st.stdout
    st_json = run_cli("status", "--json", "--token-file", str(token_file), config=admin.config)
    assert json.loads(st_json.stdout)["hostname"] == "relay.test"
    removed = run_cli("admin", "token", "remove", "ops", config=admin.config)
    assert removed.returncode == 0
    assert admin.call("GET", "/api/status", token=token)[0] == 401
    st = run_cli("status", "--token-file", str(token_file), config=admin.config)
    assert st.returncode == 1 and "refused the token" in st.stderr
    again = run_cli("admin", "token", "remove", "ops", config=admin.config)
    assert again.returncode == 1 and "no token" in again.stderr
