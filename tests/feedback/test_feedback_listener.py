"""Real DSNs and ARF reports, sent over SMTP to the real feedback listener.

Each report is built with the email package in the shape a big provider uses, addressed
to the VERP return path relay put on a queued message; the test asserts the events and
the suppression entries that result. Forged tokens change nothing (no suppression poisoning).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosmtplib
import feedback_reports as R
import pytest

from relay.clock import FakeClock
from relay.config import Address, Config, Listener, from_dict
from relay.events.log import EventLog, read_events
from relay.feedback.listener import FeedbackServer, owned_domains
from relay.feedback.processor import FeedbackProcessor
from relay.queue.ops import NewMessage
from relay.queue.records import MessageRecord
from relay.queue.store import QueueStore
from relay.suppression.store import SuppressionList
from relay.verp import Verp

RETURN_DOMAIN = "bounce.example.com"


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.clock = FakeClock()
        self.cfg: Config = from_dict({
            "server": {"hostname": "relay.test", "state_dir": str(tmp),
                       "return_path_domain": "rp.relay.test"},
            "identity": [{"domain": "example.com", "mail_from": RETURN_DOMAIN}],
        })
        listener = Listener(Address("127.0.0.1", 0), tls="none", auth="none", role="feedback")
        self.store = QueueStore(tmp / "queue", self.clock)
        self.events = EventLog(tmp / "events.jsonl")
        self.verp = Verp(b"k" * 32)
        self.reputation: list[tuple[str, str, str]] = []
        self.processor = FeedbackProcessor(
            self.store, self.verp, self.events, self.clock, lambda: self.cfg, tmp,
            on_reputation=lambda m, a, d: self.reputation.append((m.id, a, d)))
        self.server = FeedbackServer(listener, "relay.test", self.processor,
                                     lambda: owned_domains(self.cfg), None)
        self.suppression = SuppressionList(self.store)

    async def sent(self, rcpt: str) -> tuple[MessageRecord, str]:
        record = await self.store.submit_record(NewMessage(
            sender="app@example.com", recipients=["other@example.org", rcpt],
            body=b"Subject: Your receipt\r\n\r\nhello\r\n",
            headers={"Subject": "Your receipt", "From": "app@example.com"}))
        return record, self.verp.address(record.id, 1, RETURN_DOMAIN)

    async def send(self, rcpt: str, data: bytes, sender: str = "") -> Any:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.server.port, timeout=5,
                                 start_tls=False)
        async with client:
            return await client.sendmail(sender, [rcpt], data)

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in read_events(self.events.path) if e["eventType"] == kind]


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    await harness.store.start()
    await harness.server.start()
    try:
        yield harness
    finally:
        await harness.server.stop()
        await harness.store.close()
        harness.events.close()


async def test_gmail_unknown_user_bounces_and_suppresses(h: Harness) -> None:
    msg, rp = await h.sent("gone@gmail.com")
    await h.send(rp, R.gmail_no_such_user("gone@gmail.com", rp))
    (ev,) = h.events_of("Bounce")
    assert ev["mail"]["messageId"] == msg.id
    assert ev["bounce"]["bounceType"] == "Permanent"
    assert ev["bounce"]["bounceSubType"] == "NoEmail"
    (br,) = ev["bounce"]["bouncedRecipients"]
    assert br["emailAddress"] == "gone@gmail.com" and br["status"] == "5.1.1"
    assert "NoSuchUser" in br["diagnosticCode"]
    entry = h.suppression.get("GONE@gmail.com")
    assert entry is not None and entry.reason == "BOUNCE" and entry.message_id == msg.id


async def test_microsoft_headers_only_dsn_suppresses(h: Harness) -> None:
    _, rp = await h.sent("nobody@outlook.com")
    await h.send(rp, R.microsoft_recipient_not_found("nobody@outlook.com", rp))
    (ev,) = h.events_of("Bounce")
    assert ev["bounce"]["bounceSubType"] == "NoEmail"
    assert h.suppression.get("nobody@outlook.com") is not None


async def test_low_reputation_is_reported_not_suppressed(h: Harness) -> None:
    msg, rp = await h.sent("user@gmail.com")
    await h.send(rp, R.gmail_low_reputation("user@gmail.com", rp))
    (ev,) = h.events_of("Bounce")
    assert ev["bounce"]["bounceType"] == "Permanent"
    assert ev["bounce"]["bounceSubType"] == "ContentRejected"
    assert h.suppression.get("user@gmail.com") is None
    assert [(m, a) for m, a, _ in h.reputation] == [(msg.id, "user@gmail.com")]
    assert "low reputation" in h.reputation[0][2]


async def test_delayed_dsn_is_transient(h: Harness) -> None:
    _, rp = await h.sent("full@example.net")
    await h.send(rp, R.mailbox_full_delayed("full@example.net", rp))
    (ev,) = h.events_of("Bounce")
    assert (ev["bounce"]["bounceType"], ev["bounce"]["bounceSubType"]) == \
        ("Transient", "MailboxFull")
    assert h.suppression.get("full@example.net") is None


async def test_yahoo_text_bounce_is_classified(h: Harness) -> None:
    _, rp = await h.sent("missing@yahoo.com")
    await h.send(rp, R.yahoo_text_bounce("missing@yahoo.com", rp))
    (ev,) = h.events_of("Bounce")
    assert ev["bounce"]["bounceType"] == "Permanent"
    assert ev["bounce"]["bounceSubType"] == "NoEmail"
    entry = h.suppression.get("missing@yahoo.com")
    assert entry is not None and entry.feedback_id == ev["bounce"]["feedbackId"]


async def test_yahoo_arf_complaint(h: Harness) -> None:
    msg, rp = await h.sent("angry@yahoo.com")
    await h.send(rp, R.yahoo_complaint("angry@yahoo.com", rp))
    (ev,) = h.events_of("Complaint")
    c = ev["complaint"]
    assert c["complainedRecipients"] == [{"emailAddress": "angry@yahoo.com"}]
    assert c["complaintFeedbackType"] == "abuse"
    assert c["userAgent"] == "Yahoo!-Mail-Feedback/2.0"
    entry = h.suppression.get("angry@yahoo.com")
    assert entry is not None and entry.reason == "COMPLAINT" and entry.message_id == msg.id
    assert entry.feedback_id == c["feedbackId"]      # the event that put it there


async def test_microsoft_jmrp_found_through_attached_return_path(h: Harness) -> None:
    _, rp = await h.sent("angry@hotmail.com")
    fbl = f"fbl@{RETURN_DOMAIN}"
    await h.send(fbl, R.microsoft_jmrp("angry@hotmail.com", rp, fbl))
    (ev,) = h.events_of("Complaint")
    assert ev["complaint"]["complainedRecipients"][0]["emailAddress"] == "angry@hotmail.com"
    assert h.suppression.get("angry@hotmail.com") is not None


async def test_forged_tokens_change_nothing(h: Harness) -> None:
    msg, rp = await h.sent("victim@gmail.com")
    local, _, domain = rp.partition("@")
    forged = local[:-2] + ("aa" if not local.endswith("aa") else "bb") + "@" + domain
    other_key = Verp(b"x" * 32).address(msg.id, 1, RETURN_DOMAIN)
    for addr in (forged, other_key, f"b-notatoken@{RETURN_DOMAIN}"):
        await h.send(addr, R.gmail_no_such_user("victim@gmail.com", addr))
        await h.send(addr, R.yahoo_complaint("victim@gmail.com", addr))
    assert h.events_of("Bounce") == [] and h.events_of("Complaint") == []
    assert h.suppression.get("victim@gmail.com") is None
    assert {x.outcome for x in h.processor.handled} == {"forged"}


async def test_out_of_office_is_ignored(h: Harness) -> None:
    _, rp = await h.sent("away@example.org")
    await h.send(rp, R.out_of_office("away@example.org", rp), sender="away@example.org")
    assert read_events(h.events.path) == []
    assert h.processor.handled[-1].outcome == "autoreply"


async def test_unparseable_is_kept_and_listener_survives(h: Harness) -> None:
    _, rp = await h.sent("x@example.org")
    for junk in (b"\x00\xff garbage without headers\r\n",
                 b"Content-Type: multipart/report; report-type=delivery-status; "
                 b"boundary=\"zz\"\r\n\r\n--zz\r\nContent-Type: message/delivery-status\r\n"
                 b"\r\n\r\n--zz--\r\n"):
        await h.send(rp, junk)
    kept = sorted((h.tmp / "feedback" / "unparsed").iterdir())
    assert len(kept) == 2
    _, rp2 = await h.sent("gone2@gmail.com")
    await h.send(rp2, R.gmail_no_such_user("gone2@gmail.com", rp2))
    assert len(h.events_of("Bounce")) == 1


async def test_only_return_path_domains_and_no_auth(h: Harness) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=h.server.port, timeout=5,
                             start_tls=False)
    async with client:
        await client.ehlo(hostname="mx.remote.test")
        assert not client.supports_extension("auth")
        code, _ = await client.execute_command(b"AUTH", b"PLAIN", b"AGZvbwBiYXI=")
        assert code == 502
        await client.mail("")
        for rcpt in ("someone@gmail.com", "x@example.com", "b-x@evil.test"):
            resp = await client.execute_command(b"RCPT", f"TO:<{rcpt}>".encode())
            assert resp.code == 550 and "5.7.1" in resp.message
        for rcpt in (f"b-anything@{RETURN_DOMAIN}", "b-y@rp.relay.test"):
            resp = await client.execute_command(b"RCPT", f"TO:<{rcpt}>".encode())
            assert resp.code == 250
