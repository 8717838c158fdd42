"""Helpers of the operator-facing tests: `make_admin_relay` starts one real `relay serve`
with the admin API on, resolving through a loopback DNS server (ZONE) and delivering to
sinks on 127.0.0.2/.3 from a warming pool on 127.0.0.10/.11, with an SMTP user and an
admin token made with the CLI; `Admin.call` speaks HTTP to it, `Admin.send` SMTP.
"""

from __future__ import annotations

import datetime as dt
import email.policy
import json
import re
import smtplib
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

from relay.testing.dnsserver import DnsServer
from relay.testing.process import (
    RelayProcess,
    free_port,
    listener_config,
    relay_config,
    run_cli,
    write_config,
)
from relay.testing.sink import Received, Sink
from relay.testing.submission import Tls
from relay.testing.wait import wait_until

PASSWORD = "correct horse battery staple"

ZONE: dict[str, list[tuple[str, str]]] = {
    "ok.test": [("MX", "10 mx.ok.test")],
    "mx.ok.test": [("A", "127.0.0.2")],
    "gmail.test": [("MX", "5 gmail-smtp-in.l.gmail.test")],
    "gmail-smtp-in.l.gmail.test": [("A", "127.0.0.2")],
    "busy.test": [("MX", "10 mx.busy.test")],
    "mx.busy.test": [("A", "127.0.0.3")],
}


def sink_policy(stage: str, arg: str, envelope: Any) -> str | None:
    if stage == "rcpt" and arg.lower().endswith("@busy.test"):
        return "451 4.2.0 mailbox busy, try again later"
    if stage == "rcpt" and arg.lower().startswith("nobody@"):
        return "550 5.1.1 no such user"
    return None


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


@dataclass
class Admin:
    relay: RelayProcess
    config: Path
    data: dict[str, Any]
    state: Path
    tls: Tls
    submit_port: int
    admin_port: int
    token: str
    sinks: tuple[Sink, Sink]
    tmp: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def call(self, method: str, path: str, body: Any = None, *, token: str | None = "",
             raw: bytes | None = None) -> tuple[int, Any]:
        """One HTTP request; returns (status, decoded JSON or text)."""
        headers: dict[str, str] = {}
        use = self.token if token == "" else token
        if use is not None:
            headers["Authorization"] = f"Bearer {use}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, text, ctype = resp.status, resp.read(), resp.headers["Content-Type"]
        except urllib.error.HTTPError as e:
            status, text, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
        if "json" in (ctype or ""):
            return status, json.loads(text)
        return status, text.decode("utf-8", "replace")

    def send(self, to: str, subject: str = "hello", configuration_set: str = "",
             content: str = "") -> str:
        """Submit one message as app@example.com (STARTTLS, AUTH); its queue id."""
        msg = EmailMessage()
        msg["From"] = "app@example.com"
        msg["To"] = to
        msg["Subject"] = subject
        if configuration_set:
            msg["X-SES-CONFIGURATION-SET"] = configuration_set
        msg.set_content(content or f"admin test: {subject}\n")
        return self.submit(msg, to)

    def submit(self, msg: EmailMessage, to: str) -> str:
        """Submit `msg` to `to` as app@example.com (STARTTLS, AUTH); its queue id."""
        with smtplib.SMTP("127.0.0.1", self.submit_port, timeout=10) as s:
            s.starttls(context=self.tls.client)
            s.login("app", PASSWORD)
            s.mail("app@example.com")
            s.rcpt(to)
            code, reply = s.data(msg.as_bytes(policy=email.policy.SMTP))
        assert code == 250, reply
        m = re.search(r"queued as (\S+)", reply.decode())
        assert m is not None, reply
        return m.group(1)

    def received(self, subject: str) -> Received:
        """The message with this Subject at the first sink, once it arrives (15 s)."""
        def find() -> Received | None:
            for m in self.sinks[0].messages:
                if email.message_from_bytes(m.data)["Subject"] == subject:
                    return m
            return None
        found: Received = wait_until(find, 15, f"delivery of {subject!r}")
        return found


def make_admin_relay(tmp: Path, dns: DnsServer, sinks: tuple[Sink, Sink],
                     extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                     workers: int = 1, admin_extra: dict[str, Any] | None = None,
                     **overrides: Any) -> Admin:
    tls = Tls()
    cert, key = tls.write_files(tmp)
    submit_port, admin_port = free_port(), free_port()
    state = tmp / "state"
    data = relay_config(state, dns.nameserver, sinks[0].port,
                        [listener_config("starttls", "required", submit_port)],
                        retry_schedule=["1h"], pool="dedicated")
    start = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=3)).isoformat()
    data.update({
        "tls": {"cert": str(cert), "key": str(key)},
        "admin": {"enabled": True, "address": f"127.0.0.1:{admin_port}",
                  "history_interval": "1s", **(admin_extra or {})},
        "warmup": {"pacing": "none"},
        "provider": [{"name": "gmail", "mx": ["*.gmail.test"]}],
        "pool": [{"name": "dedicated", "ips": ["127.0.0.10", "127.0.0.11"],
                  "warmup_plan": "ses-standard", "warmup_start": start}],
    })
    data.update(overrides)
    if workers != 1:
        data["server"]["workers"] = workers
    config = write_config(tmp / "relay.toml", data)
    added = run_cli("user", "add", "app", "--password-stdin", config=config,
                    input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    made = run_cli("admin", "token", "add", "tests", config=config)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    relay = RelayProcess(config, log_dir=tmp / "logs", extra_args=extra_args,
                         env=env).start()
    return Admin(relay, config, data, state, tls, submit_port, admin_port, token, sinks, tmp)
