"""Submission → mailbox simulator → events → a webhook that is down, then up.

A whole RelayApp in-process on loopback with a FakeClock: mail to every simulator
address is submitted over SMTP; the webhook receiver (real aiohttp server) is down at
first, so events wait in the LMDB outbox with backoff on the FakeClock, then all arrive,
in order per message, each signed.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiosmtplib

from relay.app import RelayApp
from relay.clock import FakeClock
from relay.config import from_dict
from relay.events.log import read_events
from relay.suppression.store import Entry, SuppressionList
from relay.testing.webhook import WebhookReceiver

SECRET = "s3cret"
SIM = "simulator.relay.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(tmp: Path, smtp_port: int, hook_port: int) -> Any:
    return from_dict({
        "server": {"hostname": "relay.test", "state_dir": str(tmp),
                   "sender_authorization": "off"},
        "listener": [{"address": f"127.0.0.1:{smtp_port}", "tls": "none", "auth": "none",
                      "trusted_networks": ["127.0.0.0/8"]}],
        "delivery": {"max_delivery_time": "6h"},
        "events": {"webhook_retry_min": "10s", "webhook_retry_max": "5m"},
        "configuration_set": [{"name": "app", "max_delivery_time": "2h"}],
        "event_destination": [{"name": "hook", "configuration_set": "app", "type": "webhook",
                               "url": f"http://127.0.0.1:{hook_port}/hook",
                               "secret": SECRET}],
    })


async def submit(port: int, rcpt: str, subject: str) -> None:
    data = (f"From: app@example.com\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
            "X-SES-CONFIGURATION-SET: app\r\nX-SES-MESSAGE-TAGS: campaign=welcome, tier=gold\r\n"
            "\r\nhello\r\n")
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False,
                               timeout=5) as client:
        await client.sendmail("app@example.com", [rcpt], data)


async def settle(app: RelayApp, clock: FakeClock, until: Any, step: float = 60.0,
                 rounds: int = 400) -> None:
    for _ in range(rounds):
        if until():
            return
        clock.advance(step)
        app.scheduler.wake()
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_every_simulator_address_reaches_the_webhook(tmp_path: Path) -> None:
    smtp_port, hook_port = free_port(), free_port()
    clock = FakeClock()
    app = RelayApp(config(tmp_path, smtp_port, hook_port), clock=clock)
    receiver = WebhookReceiver(hook_port, SECRET)
    await app.start()
    try:
        await app.store.write(SuppressionList(app.store).add_op(
            [Entry(f"success+listed@{SIM}", "BOUNCE", clock.now())]))
        names = ["success", "bounce", "ooto", "complaint", "suppressionlist", "softbounce",
                 "success+listed"]
        for name in names:
            await submit(smtp_port, f"{name}@{SIM}", name)
        # The softbounce message is still queued: its headers were stripped at submission.
        await settle(app, clock, lambda: app.store.message_count() == 1, step=0.0)
        (queued,) = [m for m, _ in app.store.messages()]
        body = app.store.body(queued.id) or b""
        assert b"X-SES-" not in body.upper() and b"hello" in body
        log_of = lambda: read_events(app.events.path)  # noqa: E731
        # Receiver down: events pile up in the outbox, retried with backoff.
        await settle(app, clock, lambda: any(e["eventType"] == "Bounce"
                                             and e["bounce"]["bounceType"] == "Transient"
                                             for e in log_of()), step=600.0)
        assert app.event_router.delivered.get("hook", 0) == 0
        assert app.event_router.pending("hook")
        await receiver.start()
        total = len([e for e in log_of()])
        await settle(app, clock, lambda: len(receiver.events) >= total, step=30.0)
        await asyncio.sleep(0.2)
        assert len(receiver.events) == total  # every event, none twice
        assert len(set(receiver.ids)) == len(receiver.ids)
        by_rcpt: dict[str, list[str]] = {}
        for e in receiver.events:
            assert e["mail"]["tags"]["ses:configuration-set"] == ["app"]
            assert e["mail"]["tags"]["campaign"] == ["welcome"]
            by_rcpt.setdefault(e["mail"]["destination"][0].split("@")[0], []).append(
                e["eventType"] + ":" + (e.get("bounce") or {}).get("bounceSubType", ""))
        assert by_rcpt["success"] == ["Send:", "Delivery:"]
        assert by_rcpt["bounce"] == ["Send:", "Bounce:NoEmail"]
        assert by_rcpt["ooto"] == ["Send:", "Delivery:"]
        assert by_rcpt["complaint"] == ["Send:", "Delivery:", "Complaint:"]
        assert by_rcpt["suppressionlist"] == ["Send:", "Bounce:OnAccountSuppressionList"]
        assert by_rcpt["success+listed"] == ["Send:", "Bounce:OnAccountSuppressionList"]
        soft = by_rcpt["softbounce"]
        assert soft[0] == "Send:" and soft[-1] == "Bounce:General"
        assert len(soft) >= 4 and set(soft[1:-1]) == {"DeliveryDelay:"}
        expired = [e for e in receiver.events if e["eventType"] == "Bounce"
                   and e["bounce"]["bounceType"] == "Transient"]
        assert len(expired) == 1
        # Simulator addresses never reach the suppression list by themselves.
        assert SuppressionList(app.store).get(f"bounce@{SIM}") is None
        assert SuppressionList(app.store).get(f"complaint@{SIM}") is None
        assert app.feedback.handled and {h.outcome for h in app.feedback.handled} == \
            {"complaint", "autoreply"}
    finally:
        await app.stop()
        await receiver.stop()
