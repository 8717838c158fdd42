"""Open and click tracking end to end: one real relay process (adminkit), a message with
text and HTML parts submitted over SMTP and delivered to a sink, then its pixel and links
fetched over HTTP from the admin server's public routes.

What the sink receives is DKIM-verified by dkimpy against the loopback DNS server. The
events are read from the relay's events.jsonl, the history from /api/messages/{id} and
the statistics from /api/stats. The admin server trusts X-Forwarded-For from 127.0.0.1
(admin.trusted_proxies), as behind a TLS proxy on the same host.
"""

from __future__ import annotations

import email
import email.policy
import http.client
import json
import re
import time
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from adminkit import Admin, make_admin_relay

from relay.admin.api.tracking import PIXEL
from relay.clock import SystemClock
from relay.dkim.keys import KeyStore
from relay.queue.store import QueueStore
from relay.testing.dkimcheck import dkimpy_verify
from relay.testing.dnsserver import DnsServer
from relay.testing.process import run_cli
from relay.testing.sink import Sink
from relay.testing.wait import wait_until
from relay.tracking.automated import BUILTIN_RULES
from relay.tracking.token import KEY_LABEL, Tokens
from relay.verp import Verp

TEXT = "Hello,\n\nthe sale: https://shop.example/sale (text is never rewritten)\n"
HTML = ('<html><body><p>Sale! <a href="https://shop.example/sale?a=1&amp;b=2" '
        'ses:tags="campaign:spring;campaign:may;audience:all">Sale</a> '
        '<a href="http://blog.example/post">Blog</a> '
        '<a href="mailto:help@example.com">help</a></p></body></html>\n')
SALE = "https://shop.example/sale?a=1&b=2"
BROWSER = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
           "Gecko) Chrome/131.0.0.0 Safari/537.36")
SCANNER = "Mozilla/5.0 (compatible; Barracuda Sentinel link protection)"
CLICK = re.compile(r"https://track\.example\.com/t/c/([A-Za-z0-9_-]{36})")
OPEN = re.compile(r"https://track\.example\.com/t/o/([A-Za-z0-9_-]{36})")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer,
            sinks: tuple[Sink, Sink]) -> Iterator[tuple[Admin, DnsServer]]:
    a = make_admin_relay(
        tmp_path_factory.mktemp("tracking"), dns, sinks,
        admin_extra={"trusted_proxies": ["127.0.0.1/32"]},
        configuration_set=[{"name": "news", "tracking": {
            "open": True, "click": True, "domain": "track.example.com"}}])
    try:
        made = run_cli("dkim", "keygen", "example.com", config=a.config)
        assert made.returncode == 0, made.stderr
        state = KeyStore.in_state_dir(a.state, SystemClock()).get("example.com")
        assert state is not None
        for gen in state.generations:
            for key in gen.keys:
                dns.set(f"{key.selector}._domainkey.example.com", "TXT", [key.record])
        yield a, dns
    finally:
        a.relay.stop()


def submit(admin: Admin, to: str, subject: str, tracking: str | None = None) -> str:
    """Submit the text+HTML message; its queue id."""
    msg = EmailMessage()
    msg["From"] = "app@example.com"
    msg["To"] = to
    msg["Subject"] = subject
    msg["X-SES-CONFIGURATION-SET"] = "news"
    if tracking is not None:
        msg["X-SES-TRACKING"] = tracking
    msg.set_content(TEXT)
    msg.add_alternative(HTML, subtype="html", cte="quoted-printable")
    return admin.submit(msg, to)



def parts(data: bytes) -> dict[str, str]:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    return {p.get_content_type(): p.get_content().replace("\r\n", "\n")
            for p in msg.walk() if not p.is_multipart()}


def hit(admin: Admin, path: str, agent: str = BROWSER, method: str = "GET",
        forwarded: str | None = None) -> http.client.HTTPResponse:
    """One request, redirects not followed; the response with its body read."""
    conn = http.client.HTTPConnection("127.0.0.1", admin.admin_port, timeout=10)
    headers = {"User-Agent": agent}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    conn.request(method, path, headers=headers)
    resp = conn.getresponse()
    resp.body = resp.read()  # type: ignore[attr-defined]
    conn.close()
    return resp


def events(admin: Admin, kind: str) -> list[dict[str, Any]]:
    path = admin.state / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [ev for ev in map(json.loads, lines) if ev["eventType"] == kind]


def test_tracked_message_opens_and_clicks(tracked: tuple[Admin, DnsServer]) -> None:
    admin, server = tracked
    mid = submit(admin, "reader@ok.test", "tracked one")
    got = admin.received("tracked one")
    delivered = time.time()
    # The sink's copy: links rewritten in the HTML part only, the pixel there once, the
    # text part as written, and DKIM over the rewritten copy verifies.
    body = parts(got.data)
    assert body["text/plain"] == TEXT
    html = body["text/html"]
    clicks = CLICK.findall(html)
    opens = OPEN.findall(html)
    assert len(clicks) == 2 and len(opens) == 1, html
    assert "shop.example" not in html and "blog.example" not in html
    assert "mailto:help@example.com" in html and "ses:tags" not in html
    verified = dkimpy_verify(got.data, server)
    assert verified and all(verified), verified

    # Forged, altered and malformed tokens: 404, nothing published.
    flipped = clicks[0][:-1] + ("A" if clicks[0][-1] != "A" else "B")
    for path in (f"/t/c/{flipped}", f"/t/o/{clicks[0]}", f"/t/c/{opens[0]}",
                 f"/t/c/{'A' * 36}", f"/t/o/{'x' * 5000}", "/t/c/%00%0d%0a"):
        assert hit(admin, path).status == 404, path
    # Genuine MACs (relay's own key) naming what the message does not have: a link
    # index past its links, another recipient, a message relay never tracked.
    tokens = Tokens(Verp.from_state_dir(admin.state).derived_key(KEY_LABEL))
    for path in (f"/t/c/{tokens.click_token(mid, 0, 2)}", f"/t/o/{tokens.open_token(mid, 1)}",
                 f"/t/o/{tokens.open_token('0' * 20, 0)}"):
        assert hit(admin, path).status == 404, path
    # HEAD (a link checker's probe) answers like GET but publishes nothing.
    head = hit(admin, f"/t/c/{clicks[0]}", method="HEAD")
    assert head.status == 302 and head.getheader("Location") == SALE

    # Past the "right after delivery" window of the bot rules, a reader opens and clicks
    # (through the trusted proxy on 127.0.0.1, which names the reader's address).
    time.sleep(max(0.0, delivered + BUILTIN_RULES.any_hit_within + 0.5 - time.time()))
    pixel = hit(admin, f"/t/o/{opens[0]}", forwarded="198.51.100.9, 127.0.0.1")
    assert pixel.status == 200 and pixel.body == PIXEL  # type: ignore[attr-defined]
    assert pixel.getheader("Content-Type") == "image/gif"
    assert "no-store" in pixel.getheader("Cache-Control", "")
    # The client loads it again at once: answered, not published twice.
    again = hit(admin, f"/t/o/{opens[0]}", forwarded="198.51.100.9, 127.0.0.1")
    assert again.status == 200 and again.body == PIXEL  # type: ignore[attr-defined]
    click = hit(admin, f"/t/c/{clicks[0]}", forwarded="198.51.100.9")
    assert click.status == 302 and click.getheader("Location") == SALE
    # A security scanner follows the other link: published, flagged, not engagement.
    scan = hit(admin, f"/t/c/{clicks[1]}", agent=SCANNER)
    assert scan.status == 302 and scan.getheader("Location") == "http://blog.example/post"

    (opened,) = wait_until(lambda: events(admin, "Open"), 5, "the Open event")
    found = wait_until(lambda: (lambda c: c if len(c) == 2 else None)(
        events(admin, "Click")), 5, "the Click events")
    assert opened["mail"]["messageId"] == mid
    assert opened["mail"]["destination"] == ["reader@ok.test"]
    o = opened["open"]
    assert o["ipAddress"] == "198.51.100.9" and o["userAgent"] == BROWSER
    assert o["automated"] is False and o["automatedReason"] == ""
    assert o["timestamp"].endswith("Z")
    human, bot = found
    c = human["click"]
    assert c["ipAddress"] == "198.51.100.9" and c["userAgent"] == BROWSER
    assert c["link"] == SALE
    assert c["linkTags"] == {"campaign": ["spring", "may"], "audience": ["all"]}
    assert c["automated"] is False
    assert human["mail"]["tags"]["ses:configuration-set"] == ["news"]
    b = bot["click"]
    assert b["link"] == "http://blog.example/post" and b["ipAddress"] == "127.0.0.1"
    assert b["automated"] is True and "Barracuda" in b["automatedReason"]

    # The message's history has the open and both clicks; only the reader's count.
    def timeline() -> list[dict[str, Any]] | None:
        status, shown = admin.call("GET", f"/api/messages/{mid}")
        kinds = [e["kind"] for e in shown.get("timeline", [])] if status == 200 else []
        return shown["timeline"] if kinds.count("click") == 2 and "open" in kinds else None
    entries = wait_until(timeline, 5, "the open and clicks in the history")
    opens_tl = [e for e in entries if e["kind"] == "open"]
    clicks_tl = [e for e in entries if e["kind"] == "click"]
    assert len(opens_tl) == 1 and opens_tl[0]["recipient"] == "reader@ok.test"
    assert sorted(e.get("detail", "").startswith("automated") for e in clicks_tl) == \
        [False, True]
    status, stats = admin.call("GET", "/api/stats?by=provider")
    assert status == 200, stats
    assert stats["totals"]["opened"] == 1 and stats["totals"]["clicked"] == 1, stats["totals"]

    # Exactly one Open and two Clicks: the forged tokens, the HEAD and the repeated
    # pixel load published nothing.
    assert len(events(admin, "Open")) == 1 and len(events(admin, "Click")) == 2
    # `relay stats` shows the same engagement.
    shown = run_cli("stats", "--json", config=admin.config)
    assert shown.returncode == 0, shown.stderr
    totals = json.loads(shown.stdout)["totals"]
    assert totals["opened"] == 1 and totals["clicked"] == 1, totals
    table = run_cli("stats", config=admin.config)
    assert table.returncode == 0 and "OPENED" in table.stdout and "CLICKED" in table.stdout

    # Weeks later a message's record is forgotten ([suppression] feedback_window; here
    # removed from the spool by hand before any hit, as the prune does): the link in the
    # reader's mailbox still leads where it did ([admin] tracked_link_retention),
    # publishing nothing, since no event can be made without the message.
    old_mid = submit(admin, "reader@ok.test", "tracked long ago")
    old_html = parts(admin.received("tracked long ago").data)["text/html"]
    spool = QueueStore(admin.state / "queue", SystemClock())
    try:
        wait_until(lambda: spool.sent_message(old_mid), 10, "the sent record")
        spool.write_now(lambda txn: txn.delete(old_mid.encode(),
                                               db=spool.named_db("sent")))
    finally:
        spool.close_sync()
    later = hit(admin, f"/t/c/{CLICK.findall(old_html)[0]}")
    assert later.status == 302 and later.getheader("Location") == SALE
    assert hit(admin, f"/t/o/{OPEN.findall(old_html)[0]}").status == 200
    time.sleep(1.0)  # an event published by mistake would be in the log by now
    assert len(events(admin, "Open")) == 1 and len(events(admin, "Click")) == 2


def test_opted_out_message_is_untouched(tracked: tuple[Admin, DnsServer]) -> None:
    admin, _ = tracked
    submit(admin, "private@ok.test", "not tracked", tracking="none")
    body = parts(admin.received("not tracked").data)
    assert body["text/plain"] == TEXT
    assert body["text/html"] == HTML
    assert "/t/o/" not in body["text/html"] and "/t/c/" not in body["text/html"]
