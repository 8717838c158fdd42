"""The admin HTTP server's unauthenticated and hostile edges, against a real relay process.

A deeply nested JSON body is a 400 with a JSON error (not a 500 from a RecursionError);
every response forbids framing and content sniffing (clickjacking of the dashboard);
replaying one List-Unsubscribe token publishes one Subscription event, also across a
restart of the process.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from adminkit import Admin, make_admin_relay

from relay.testing.dnsserver import DnsServer
from relay.testing.sink import Sink
from relay.testing.wait import wait_until

UNSUB = re.compile(rb"List-Unsubscribe: <https://[^/>]+/unsubscribe/([a-z2-7]+)>", re.I)


@pytest.fixture(scope="module")
def edges_admin(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer,
                sinks: tuple[Sink, Sink]) -> Iterator[Admin]:
    a = make_admin_relay(tmp_path_factory.mktemp("admin-edges"), dns, sinks,
                         configuration_set=[{"name": "news", "list_unsubscribe": True}])
    try:
        yield a
    finally:
        a.relay.stop()


def request(admin: Admin, method: str, path: str, data: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    """(status, headers, body) of one HTTP request, whatever the status."""
    req = urllib.request.Request(admin.base + path, data=data, method=method,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.mark.parametrize("path", ["/api/users", "/api/suppression"])
def test_deeply_nested_json_body_is_a_400_with_a_json_error(edges_admin: Admin,
                                                             path: str) -> None:
    depth = 100_000  # 200 KB, under the 1 MiB body limit
    for body in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        status, headers, raw = request(edges_admin, "POST", path, body, {
            "Authorization": f"Bearer {edges_admin.token}",
            "Content-Type": "application/json"})
        assert status == 400, raw[:300]
        assert "json" in headers["Content-Type"]
        answer = json.loads(raw)
        assert answer["field"] == "body" and "nested too deeply" in answer["error"], answer
    # The server is fine afterwards.
    assert edges_admin.call("GET", "/api/status")[0] == 200


def test_every_response_forbids_framing_and_sniffing(edges_admin: Admin) -> None:
    auth = {"Authorization": f"Bearer {edges_admin.token}"}
    cases = [("GET", "/", {}, 200), ("GET", "/api/status", auth, 200),
             ("GET", "/api/status", {}, 401), ("GET", "/metrics", {}, 200),
             ("GET", "/openapi.json", {}, 200), ("GET", "/no/such/page", {}, 404),
             ("GET", "/unsubscribe/b-nothing", {}, 404),
             ("POST", "/api/suppression", {**auth, "Content-Type": "application/json"}, 400)]
    for method, path, headers, want in cases:
        data = b"[]" if method == "POST" else None
        status, got, _ = request(edges_admin, method, path, data, headers)
        assert status == want, (method, path, status)
        assert got["X-Frame-Options"] == "DENY", (path, dict(got))
        assert got["X-Content-Type-Options"] == "nosniff", (path, dict(got))
        assert "frame-ancestors 'none'" in got["Content-Security-Policy"], (path, dict(got))
    # The dashboard keeps its own policy, with frame-ancestors added.
    _, dashboard, page = request(edges_admin, "GET", "/")
    csp = dashboard["Content-Security-Policy"]
    assert "default-src 'self'" in csp
    # Only the page's own script runs (by its hash): an event handler that slipped into
    # the page with a subject line or an address would not.
    script = re.search(rb"<script>(.*?)</script>", page, re.DOTALL)
    assert script is not None
    digest = base64.b64encode(hashlib.sha256(script.group(1)).digest()).decode()
    script_src = re.search(r"script-src ([^;]*)", csp)
    assert script_src is not None and script_src.group(1) == f"'sha256-{digest}'", csp


def subscription_events(admin: Admin) -> list[dict[str, Any]]:
    path = admin.state / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [ev for ev in map(json.loads, lines) if ev["eventType"] == "Subscription"]


def one_click(admin: Admin, token: str) -> int:
    status, _, _ = request(admin, "POST", f"/unsubscribe/{token}",
                           b"List-Unsubscribe=One-Click",
                           {"Content-Type": "application/x-www-form-urlencoded"})
    return status


def test_replayed_unsubscribe_token_publishes_one_subscription_event(
        edges_admin: Admin) -> None:
    admin = edges_admin
    admin.send("replay@ok.test", "replayed unsubscribe", "news", content="a newsletter\n")

    def token() -> str | None:
        for m in admin.sinks[0].messages:
            if b"replayed unsubscribe" in m.data:
                found = UNSUB.search(m.data.split(b"\r\n\r\n", 1)[0])
                assert found is not None, m.data[:2000]
                return found.group(1).decode()
        return None

    tok: str = wait_until(token, 15, "delivery of the newsletter")
    before = len(subscription_events(admin))
    for _ in range(5):
        assert one_click(admin, tok) == 200
    wait_until(lambda: len(subscription_events(admin)) > before, 5, "the Subscription event")
    # The mark is on disk: a restarted relay does not publish the replay either.
    admin.relay.terminate()
    admin.relay.start()
    for _ in range(3):
        assert one_click(admin, tok) == 200
    # Events of further POSTs would be written as they are answered; give them a moment.
    admin.call("GET", "/api/status")
    events = [e for e in subscription_events(admin)
              if e["mail"]["destination"] == ["replay@ok.test"]]
    assert len(events) == 1, events
