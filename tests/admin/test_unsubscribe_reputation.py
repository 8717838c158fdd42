"""RFC 8058 one-click unsubscribe and a reputation refusal reaching the warm-up gate.

One real relay process (adminkit) with a feedback listener and three configuration sets:
"news" (list_unsubscribe), "strict" (list_unsubscribe and unsubscribe_suppresses) and
"plain". What the sink receives is DKIM-verified by dkimpy against the loopback DNS
server; the unsubscribe URL's token is POSTed to the admin server (no bearer token).
"""

from __future__ import annotations

import json
import re
import smtplib
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage, Message
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.parser import HeaderParser
from email.policy import compat32
from typing import Any

import pytest
from adminkit import Admin, make_admin_relay

from relay.clock import SystemClock
from relay.dkim.keys import KeyStore
from relay.testing.dkimcheck import dkimpy_verify
from relay.testing.dnsserver import DnsServer
from relay.testing.process import free_port, run_cli
from relay.testing.sink import Sink
from relay.testing.wait import wait_until

UNSUB = re.compile(rb"List-Unsubscribe: <https://([^/>]+)/unsubscribe/([a-z2-7]+)>", re.I)


@pytest.fixture(scope="module")
def unsub_admin(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer,
                sinks: tuple[Sink, Sink]) -> Iterator[tuple[Admin, int, DnsServer]]:
    submit_port, feedback_port = free_port(), free_port()
    a = make_admin_relay(
        tmp_path_factory.mktemp("unsubscribe"), dns, sinks,
        listener=[{"address": f"127.0.0.1:{submit_port}", "tls": "starttls",
                   "auth": "required"},
                  {"address": f"127.0.0.1:{feedback_port}", "tls": "none", "auth": "none",
                   "role": "feedback"}],
        configuration_set=[{"name": "news", "list_unsubscribe": True},
                           {"name": "strict", "list_unsubscribe": True,
                            "unsubscribe_suppresses": True},
                           {"name": "plain"}])
    a.submit_port = submit_port
    try:
        made = run_cli("dkim", "keygen", "example.com", config=a.config)
        assert made.returncode == 0, made.stderr
        state = KeyStore.in_state_dir(a.state, SystemClock()).get("example.com")
        assert state is not None
        for gen in state.generations:
            for key in gen.keys:
                dns.set(f"{key.selector}._domainkey.example.com", "TXT", [key.record])
        yield a, feedback_port, dns
    finally:
        a.relay.stop()


def send(admin: Admin, to: str, subject: str, configuration_set: str = "") -> str:
    msg = EmailMessage()
    msg["From"] = "app@example.com"
    msg["To"] = to
    msg["Subject"] = subject
    if configuration_set:
        msg["X-SES-CONFIGURATION-SET"] = configuration_set
    msg.set_content(f"unsubscribe test: {subject}\n")
    return admin.submit(msg, to)



def post(admin: Admin, path: str, body: bytes | None = b"List-Unsubscribe=One-Click",
         method: str = "POST") -> tuple[int, str]:
    req = urllib.request.Request(admin.base + path, data=body, method=method, headers={
        "Content-Type": "application/x-www-form-urlencoded"} if body is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def subscription_events(admin: Admin) -> list[dict[str, Any]]:
    path = admin.state / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [ev for ev in map(json.loads, lines) if ev["eventType"] == "Subscription"]


def suppressed(admin: Admin, address: str) -> bool:
    status, body = admin.call("GET", f"/api/suppression?prefix={address}")
    assert status == 200
    return any(e["address"] == address for e in body["entries"])


def test_one_click_unsubscribe(unsub_admin: tuple[Admin, int, DnsServer]) -> None:
    admin, _, server = unsub_admin
    mid = send(admin, "reader@ok.test", "news one", "news")
    send(admin, "other@ok.test", "plain one", "plain")
    send(admin, "other@ok.test", "no set")
    msg = admin.received("news one")
    head = msg.data.split(b"\r\n\r\n", 1)[0]
    found = UNSUB.search(head)
    assert found is not None, head
    assert found.group(1).decode() == admin.data["server"]["hostname"]
    token = found.group(2).decode()
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in head
    unfolded = re.sub(rb"\r\n[ \t]+", b" ", head).lower()
    signed = re.findall(rb"\bh=([^;]*)", unfolded)
    assert signed and all(b"list-unsubscribe-post" in h and
                          re.search(rb"list-unsubscribe\s*:", h) for h in signed), signed
    verified = dkimpy_verify(msg.data, server)
    assert verified and all(verified), verified
    # A changed List-Unsubscribe URL breaks the signature.
    other_last = b"b" if token.endswith("a") else b"a"  # a token ending in "a" is 1 in 32
    forged_url = msg.data.replace(token.encode(), token[:-1].encode() + other_last, 1)
    assert forged_url != msg.data and not any(dkimpy_verify(forged_url, server))
    for subject in ("plain one", "no set"):
        other = admin.received(subject).data.split(b"\r\n\r\n", 1)[0].lower()
        assert not re.search(rb"^list-unsubscribe", other, re.M)

    # Forged tokens: 404, no event.
    bad = token[:-2] + ("aa" if not token.endswith("aa") else "bb")
    assert post(admin, f"/unsubscribe/{bad}")[0] == 404
    assert post(admin, "/unsubscribe/b-nothing")[0] == 404
    assert subscription_events(admin) == []
    # GET never unsubscribes: a short page.
    status, page = post(admin, f"/unsubscribe/{token}", None, "GET")
    assert status == 200 and "unsubscribe" in page.lower()
    assert subscription_events(admin) == []
    # The one-click POST (no bearer token): a Subscription event, no suppression.
    status, text = post(admin, f"/unsubscribe/{token}")
    assert status == 200, text
    (ev,) = wait_until(lambda: subscription_events(admin), 5, "the Subscription event")
    assert ev["mail"]["messageId"] == mid
    assert ev["mail"]["destination"] == ["reader@ok.test"]
    assert ev["mail"]["tags"]["ses:configuration-set"] == ["news"]
    sub = ev["subscription"]
    assert sub["contactList"] == "news" and sub["source"] == "UnsubscribeHeader"
    assert sub["newTopicPreferences"]["unsubscribeAll"] is True
    assert sub["oldTopicPreferences"]["unsubscribeAll"] is False
    assert sub["timestamp"].endswith("Z")
    assert not suppressed(admin, "reader@ok.test")
    status, body = admin.call("GET", f"/api/events?message_id={mid}&type=Subscription")
    assert status == 200 and body["count"] == 1


def test_unsubscribe_suppresses_when_the_set_says_so(
        unsub_admin: tuple[Admin, int, DnsServer]) -> None:
    admin, _, _ = unsub_admin
    send(admin, "quitter@ok.test", "strict one", "strict")
    head = admin.received("strict one").data.split(b"\r\n\r\n", 1)[0]
    found = UNSUB.search(head)
    assert found is not None, head
    before = len(subscription_events(admin))
    assert post(admin, f"/unsubscribe/{found.group(2).decode()}")[0] == 200
    wait_until(lambda: len(subscription_events(admin)) == before + 1, 5, "the event")
    assert suppressed(admin, "quitter@ok.test")


def low_reputation_dsn(rcpt: str, return_path: str) -> bytes:
    """Gmail's DSN for a refusal of the sending IP (RFC 3464)."""
    msg = MIMEMultipart("report", report_type="delivery-status")
    msg["From"] = "Mail Delivery Subsystem <mailer-daemon@googlemail.com>"
    msg["To"] = return_path
    msg["Subject"] = "Delivery Status Notification (Failure)"
    msg.attach(MIMEText("Message blocked\r\n"))
    status = Message()
    status["Content-Type"] = "message/delivery-status"
    parser = HeaderParser(policy=compat32)
    status.set_payload([
        parser.parsestr("Reporting-MTA: dns; mx.google.com\n"),
        parser.parsestr(
            f"Final-Recipient: rfc822; {rcpt}\nAction: failed\nStatus: 5.7.1\n"
            "Diagnostic-Code: smtp; 550-5.7.1 Our system has detected that this message "
            "is likely unsolicited mail. This message has been blocked because of the "
            "very low reputation of the sending IP address.\n")])
    msg.attach(status)
    original = MIMEText("the original\r\n")
    original["Return-Path"] = f"<{return_path}>"
    msg.attach(MIMEMessage(original))
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def gmail_state(admin: Admin, ip: str) -> dict[str, Any] | None:
    out = run_cli("warmup", "status", "--json", config=admin.config)
    assert out.returncode == 0, out.stderr
    (row,) = [r for r in json.loads(out.stdout) if r["ip"] == ip]
    gmail: dict[str, Any] | None = row["providers"].get("gmail")
    if gmail is not None and gmail.get("paused_until"):
        return {**gmail, "frozen": row["frozen"]}
    return None


def test_reputation_dsn_backs_off_the_sending_ip(
        unsub_admin: tuple[Admin, int, DnsServer]) -> None:
    admin, feedback_port, _ = unsub_admin
    send(admin, "friend@gmail.test", "to gmail")
    delivered = admin.received("to gmail")
    source_ip = delivered.peer
    assert gmail_state(admin, source_ip) is None
    with smtplib.SMTP("127.0.0.1", feedback_port, timeout=10) as s:
        s.sendmail("", [delivered.mail_from],
                   low_reputation_dsn("friend@gmail.test", delivered.mail_from))
    state = wait_until(lambda: gmail_state(admin, source_ip), 15,
                       "the gmail backoff of the sending IP")
    assert "reputation" in state["pause_reason"], state
    # Not the recipient's fault: not suppressed.
    assert not suppressed(admin, "friend@gmail.test")
