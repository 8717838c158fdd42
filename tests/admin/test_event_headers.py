"""Events carry a message's headers as SES does: `commonHeaders.subject` and the From/To
display names RFC 2047-decoded; `mail.headers` every header field of the message in order,
cut at 10 KB with `headersTruncated: true`. Messages submitted over STARTTLS + AUTH to a
real relay process (adminkit), events read back through the admin API."""

from __future__ import annotations

import re
import smtplib
from typing import Any

from adminkit import PASSWORD, Admin

from relay.testing.wait import wait_until

SIM = "simulator.relay.test"


def _submit(admin: Admin, header_lines: list[str], to: str) -> str:
    data = ("\r\n".join(header_lines) + "\r\n\r\nbody\r\n").encode()
    with smtplib.SMTP("127.0.0.1", admin.submit_port, timeout=10) as s:
        s.starttls(context=admin.tls.client)
        s.login("app", PASSWORD)
        s.mail("app@example.com")
        s.rcpt(to)
        code, reply = s.data(data)
    assert code == 250, reply
    m = re.search(r"queued as (\S+)", reply.decode())
    assert m is not None, reply
    return m.group(1)


def _send_event(admin: Admin, mid: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        _, body = admin.call("GET", f"/api/events?message_id={mid}&type=Send")
        return body["events"][0]["mail"] if body.get("count") else None
    mail: dict[str, Any] = wait_until(found, 15, "the Send event")
    return mail


def test_encoded_subject_and_display_names_are_decoded(admin: Admin) -> None:
    mid = _submit(admin, [
        "From: =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <app@example.com>",
        f"To: =?utf-8?b?w4lsb2RpZQ==?= <success@{SIM}>, \"Doe, John\" <success+2@{SIM}>",
        "Subject: =?UTF-8?Q?Caf=C3=A9_au_lait?= and =?UTF-8?B?8J+Ygg==?=",
        "Date: Mon, 07 Dec 2026 10:00:00 +0000",
        "Message-ID: <encoded.1@example.com>",
    ], f"success@{SIM}")
    mail = _send_event(admin, mid)
    common = mail["commonHeaders"]
    assert common["subject"] == "Café au lait and 😂"
    assert common["from"] == ["Jörg Müller <app@example.com>"]
    assert common["to"] == [f"Élodie <success@{SIM}>", f'"Doe, John" <success+2@{SIM}>']
    # mail.headers stays as sent (SES shows the raw values there).
    raw = {h["name"]: h["value"] for h in mail["headers"]}
    assert raw["Subject"] == "=?UTF-8?Q?Caf=C3=A9_au_lait?= and =?UTF-8?B?8J+Ygg==?="


def test_every_header_is_in_the_event_in_order(admin: Admin) -> None:
    extra = [f"X-Custom-{i:02d}: value {i}" for i in range(40)]
    mid = _submit(admin, ["From: app@example.com", f"To: success@{SIM}",
                          "Subject: many headers", *extra, "List-Id: <news.example.com>",
                          "X-Folded: first part\r\n\tsecond part"], f"success@{SIM}")
    mail = _send_event(admin, mid)
    names = [h["name"] for h in mail["headers"]]
    assert mail["headersTruncated"] is False
    assert [n for n in names if n.startswith("X-Custom-")] == \
        [f"X-Custom-{i:02d}" for i in range(40)]
    assert {"From", "To", "Subject", "List-Id", "Received"} <= set(names)
    values = {h["name"]: h["value"] for h in mail["headers"]}
    assert values["X-Custom-07"] == "value 7"
    assert values["X-Folded"] == "first part\tsecond part"


def test_headers_past_10_kb_are_cut_and_flagged(admin: Admin) -> None:
    filler = [f"X-Filler-{i:03d}: {'y' * 200}" for i in range(80)]  # about 17 KB
    mid = _submit(admin, ["From: app@example.com", f"To: success@{SIM}",
                          "Subject: big headers", *filler], f"success@{SIM}")
    mail = _send_event(admin, mid)
    assert mail["headersTruncated"] is True
    total = sum(len(h["name"]) + 2 + len(h["value"]) for h in mail["headers"])
    assert 9 * 1024 < total <= 10 * 1024
    kept = [h["name"] for h in mail["headers"] if h["name"].startswith("X-Filler-")]
    assert kept == [f"X-Filler-{i:03d}" for i in range(len(kept))]  # a prefix, in order
    assert mail["commonHeaders"]["subject"] == "big headers"
