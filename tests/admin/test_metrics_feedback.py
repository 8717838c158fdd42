"""Metrics that need feedback and event destinations: a complaint is counted under the
provider and source IP of the delivery it is about, and the webhook outbox backlog is a
gauge. One real relay process (adminkit) with a feedback listener and a webhook event
destination whose receiver is down, so its events wait in the outbox."""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.parser import BytesParser
from pathlib import Path

import pytest
from adminkit import Admin, make_admin_relay

from relay.queue.keys import shard_of
from relay.testing.dnsserver import DnsServer
from relay.testing.process import free_port
from relay.testing.sink import Received, Sink
from relay.testing.wait import wait_until


def complaint(rcpt: str, return_path: str) -> bytes:
    """An ARF report (RFC 5965) as a mailbox provider's feedback loop sends it."""
    msg = MIMEMultipart("report", report_type="feedback-report")
    msg["From"] = "fbl@feedback.gmail.test"
    msg["To"] = return_path
    msg["Subject"] = "complaint"
    msg.attach(MIMEText("This is an email abuse report.\r\n"))
    fields = MIMEText("", "plain")
    fields.set_payload("Feedback-Type: abuse\r\nUser-Agent: test-fbl/1.0\r\nVersion: 1\r\n"
                       f"Original-Mail-From: <{return_path}>\r\n"
                       f"Original-Rcpt-To: <{rcpt}>\r\n")
    fields.replace_header("Content-Type", "message/feedback-report")
    msg.attach(fields)
    original = MIMEText("the original\r\n")
    original["Return-Path"] = f"<{return_path}>"
    original["Subject"] = "to the big provider"
    msg.attach(MIMEMessage(original))
    return msg.as_bytes()


def _feedback_relay(tmp: Path, dns: DnsServer, sinks: tuple[Sink, Sink],
                    workers: int = 1) -> tuple[Admin, int]:
    submit_port, feedback_port, dead_port = free_port(), free_port(), free_port()
    a = make_admin_relay(
        tmp, dns, sinks, workers=workers,
        listener=[{"address": f"127.0.0.1:{submit_port}", "tls": "starttls",
                   "auth": "required"},
                  {"address": f"127.0.0.1:{feedback_port}", "tls": "none", "auth": "none",
                   "role": "feedback"}],
        event_destination=[{"name": "hook", "type": "webhook",
                            "url": f"http://127.0.0.1:{dead_port}/down", "secret": "x"}])
    a.submit_port = submit_port
    return a, feedback_port


@pytest.fixture(scope="module")
def fb_admin(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer,
             sinks: tuple[Sink, Sink]) -> Iterator[tuple[Admin, int]]:
    a, feedback_port = _feedback_relay(tmp_path_factory.mktemp("fbmetrics"), dns, sinks)
    try:
        yield a, feedback_port
    finally:
        a.relay.stop()


def test_complaint_by_provider_and_outbox_backlog(fb_admin: tuple[Admin, int]) -> None:
    admin, feedback_port = fb_admin
    before = admin.sinks[0].message_count
    mid = admin.send("friend@gmail.test", "to the big provider")
    got = admin.sinks[0].wait_for(before + 1, timeout=15)
    delivered = [m for m in got if b"to the big provider" in m.data][-1]
    source_ip = delivered.peer
    return_path = delivered.mail_from
    assert BytesParser().parsebytes(delivered.data)["Subject"] == "to the big provider"
    with smtplib.SMTP("127.0.0.1", feedback_port, timeout=10) as s:
        s.sendmail("", [return_path], complaint("friend@gmail.test", return_path))
    status, _ = wait_until(
        lambda: (r := admin.call("GET", f"/api/events?message_id={mid}&type=Complaint"))[1]
        .get("count") and r, 15, "the Complaint event")
    assert status == 200
    status, text = admin.call("GET", "/metrics", token=None)
    assert re.search(r'relay_complaints_total\{provider="gmail",source_ip="'
                     + re.escape(source_ip) + r'"\} 1\.0', text), text
    # Send, Delivery and Complaint of that message (and any earlier) wait for the webhook.

    def backlog() -> int:
        found = re.search(r'relay_event_outbox_backlog\{destination="hook"\} (\S+)',
                          admin.call("GET", "/metrics", token=None)[1])
        return int(float(found.group(1))) if found else -1

    wait_until(lambda: backlog() >= 3, 10, "three events in the webhook outbox")
    # The panel reads the sending statistics, written once per [history] flush.
    wait_until(lambda: admin.call("GET", "/api/dashboard")[1]["providers"]
               .get("gmail", {}).get("complained") == 1, 10, "the complaint on the panel")
    status, dash = admin.call("GET", "/api/dashboard")
    assert dash["providers"]["gmail"]["complained"] == 1
    assert "other" not in dash["providers"] or not dash["providers"]["other"]["complained"]


def complain_and_expect_it_counted_under(admin: Admin, feedback_port: int, mid: str,
                                         delivered: Received) -> None:
    """A feedback loop's report about `delivered` (message `mid`); the complaint must be
    counted under the source IP that delivered it."""
    with smtplib.SMTP("127.0.0.1", feedback_port, timeout=10) as s:
        s.sendmail("", [delivered.mail_from],
                   complaint("reader@gmail.test", delivered.mail_from))
    wait_until(lambda: admin.call("GET", f"/api/events?message_id={mid}&type=Complaint"
                                  )[1].get("count"), 15, "the Complaint event")
    _, text = admin.call("GET", "/metrics", token=None)
    assert re.search(r'relay_complaints_total\{provider="gmail",source_ip="'
                     + re.escape(delivered.peer) + r'"\} 1\.0', text), text


def test_a_complaint_after_a_restart_still_names_the_ip_that_delivered(
        tmp_path: Path, dns: DnsServer, sinks: tuple[Sink, Sink]) -> None:
    # Feedback loops report hours or days after the delivery. The source IP of a delivery
    # used to live only in the delivering process's memory, so after a restart (or in
    # another worker of server.workers = N) a complaint counted under no IP and never
    # reached the warm-up gate of the IP that sent. It is now in the spool.
    admin, feedback_port = _feedback_relay(tmp_path, dns, sinks)
    try:
        before = admin.sinks[0].message_count
        mid = admin.send("reader@gmail.test", "before the restart")
        got = admin.sinks[0].wait_for(before + 1, timeout=15)
        delivered = [m for m in got if b"before the restart" in m.data][-1]
        admin.relay.stop()
        admin.relay.start(timeout=30)
        complain_and_expect_it_counted_under(admin, feedback_port, mid, delivered)
    finally:
        admin.relay.stop()


def test_a_complaint_in_worker_0_names_the_ip_of_a_delivery_by_worker_1(
        tmp_path: Path, dns: DnsServer, sinks: tuple[Sink, Sink]) -> None:
    # server.workers = 2: the feedback listener runs in worker 0, and each worker delivers
    # what it accepted. A message accepted by worker 1 (its id is in shard 1) is
    # delivered from worker 1; its complaint is read in worker 0.
    admin, feedback_port = _feedback_relay(tmp_path, dns, sinks, workers=2)
    try:
        mid = ""
        for i in range(40):  # each send is a new connection; the kernel picks the worker
            candidate = admin.send("reader@gmail.test", f"worker probe {i}")
            if shard_of(candidate, 2) == 1:
                mid, subject = candidate, f"worker probe {i}"
                break
        assert mid, "40 connections, none accepted by worker 1"
        marker = f"Subject: {subject}\r\n".encode()
        delivered = wait_until(lambda: [m for m in admin.sinks[0].messages
                                        if marker in m.data], 15, "the message at the sink")[-1]
        complain_and_expect_it_counted_under(admin, feedback_port, mid, delivered)
    finally:
        admin.relay.stop()
