"""The happy path and the operator's path through a real `relay serve` process.

- STARTTLS + AUTH (587-like) and implicit TLS + AUTH (465-like) submissions with a
  user made by `relay user add --password-stdin`, delivered via MX records from a
  loopback DNS server to a sink on 127.0.0.2; events.jsonl gets Send then Delivery
  in the SES shape, keyed by the queue id of the 250 reply.
- SIGTERM drains and exits 0; a message whose MX answers 451 stays queued across a
  restart and the `relay queue list|show|retry|bounce|delete` commands act on it
  (unknown ids: exit 1 with a clear message).
- `make run`'s path: `relay serve` with RELAY_CONFIG naming a copy of the embedded dev
  config (its fixed ports changed) prints the dev credential on first start only.
"""

from __future__ import annotations

import email.policy
import json
import os
import re
import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from relay.testing.dnsserver import DnsServer
from relay.testing.process import (
    RelayProcess,
    free_port,
    listener_config,
    relay_config,
    run_cli,
    write_config,
)
from relay.testing.require import require_all, require_program
from relay.testing.sink import Received, Sink
from relay.testing.submission import Tls
from relay.testing.wait import wait_until

PASSWORD = "correct horse battery staple"
_QUEUED_RE = re.compile(r"queued as (\S+)")


@dataclass
class Running:
    relay: RelayProcess
    config: Path
    state: Path
    tls: Tls
    starttls_port: int
    implicit_port: int
    sinks: tuple[Sink, Sink]

    @property
    def events_path(self) -> Path:
        return self.state / "events.jsonl"

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        out: list[dict[str, Any]] = []
        for line in self.events_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def events_of(self, mid: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["mail"]["messageId"] == mid]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, config=self.config)


@pytest.fixture
def running(tmp_path: Path, dns_server: DnsServer,
            sinks: tuple[Sink, Sink]) -> Iterator[Running]:
    tls = Tls()
    cert, key = tls.write_files(tmp_path)
    starttls_port, implicit_port = free_port(), free_port()
    state = tmp_path / "state"
    data = relay_config(state, dns_server.nameserver, sinks[0].port, [
        listener_config("starttls", "required", starttls_port),
        listener_config("implicit", "required", implicit_port),
    ], retry_schedule=["1h"])
    data["tls"] = {"cert": str(cert), "key": str(key)}
    config = write_config(tmp_path / "relay.toml", data)
    added = run_cli("user", "add", "app", "--password-stdin", config=config,
                    input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert PASSWORD not in added.stdout + added.stderr
    relay = RelayProcess(config, log_dir=tmp_path / "logs").start()
    try:
        yield Running(relay, config, state, tls, starttls_port, implicit_port, sinks)
    finally:
        relay.stop()


def _message(subject: str, to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@example.com"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(f"hello from the smoke test: {subject}\n")
    return msg


def _submit(client: smtplib.SMTP, subject: str, to: str) -> str:
    """One transaction; returns the queue id from the 250 reply to DATA."""
    code, reply = client.mail("app@example.com")
    assert code == 250, reply
    code, reply = client.rcpt(to)
    assert code == 250, reply
    code, reply = client.data(_message(subject, to).as_bytes(policy=email.policy.SMTP))
    text = reply.decode()
    assert code == 250, text
    m = _QUEUED_RE.search(text)
    assert m is not None, text
    return m.group(1)


def _subject_of(msg: Received) -> str:
    m = re.search(rb"^Subject: (.*?)\r?$", msg.data, re.MULTILINE)
    return m.group(1).decode() if m else ""


def _queue_rows(r: Running) -> list[dict[str, Any]]:
    out = r.cli("queue", "list", "--json")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


# ------------------------------------------------------------------------------ happy path


def test_starttls_auth_submission_is_delivered_with_ses_events(running: Running) -> None:
    with smtplib.SMTP("127.0.0.1", running.starttls_port, timeout=10) as client:
        client.ehlo("app.example.com")
        assert not client.has_extn("auth"), "AUTH offered before STARTTLS"
        code, _ = client.starttls(context=running.tls.client)
        assert code == 220
        client.ehlo("app.example.com")
        client.login("app", PASSWORD)
        mid = _submit(client, "smoke starttls", "someone@dest.test")
    got = running.sinks[0].wait_for(1, timeout=15)
    assert [_subject_of(m) for m in got] == ["smoke starttls"]
    assert got[0].rcpt_tos == ["someone@dest.test"]  # (the envelope sender may be VERP)

    def send_and_delivery() -> list[dict[str, Any]] | None:
        events = running.events_of(mid)
        return events if [e["eventType"] for e in events] == ["Send", "Delivery"] else None

    events = wait_until(send_and_delivery, 10, f"Send and Delivery events of {mid}")
    send, delivery = events
    for ev in events:
        mail = ev["mail"]
        assert mail["messageId"] == mid
        assert mail["source"] == "app@example.com"
        assert mail["destination"] == ["someone@dest.test"]
        assert mail["commonHeaders"]["subject"] == "smoke starttls"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", mail["timestamp"])
        assert any(h["name"] == "Subject" for h in mail["headers"])
    d = delivery["delivery"]
    assert d["smtpResponse"].startswith("250"), d
    assert d["recipients"] == ["someone@dest.test"]
    assert "send" in send


def test_implicit_tls_submission_is_delivered(running: Running) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", running.implicit_port, timeout=10,
                          context=running.tls.client) as client:
        client.ehlo("app.example.com")
        client.login("app", PASSWORD)
        mid = _submit(client, "smoke implicit", "other@b.test")
    got = running.sinks[1].wait_for(1, timeout=15)  # b.test's MX is on 127.0.0.3
    assert _subject_of(got[0]) == "smoke implicit"
    wait_until(lambda: [e["eventType"] for e in running.events_of(mid)] == ["Send", "Delivery"],
               10, "Delivery event")


def test_bad_password_is_refused(running: Running) -> None:
    with smtplib.SMTP("127.0.0.1", running.starttls_port, timeout=10) as client:
        client.starttls(context=running.tls.client)
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            client.login("app", "wrong")
        assert info.value.smtp_code == 535


# ------------------------------------------------------------------- stop, restart, queue CLI


def _submit_starttls(r: Running, subject: str, to: str) -> str:
    with smtplib.SMTP("127.0.0.1", r.starttls_port, timeout=10) as client:
        client.starttls(context=r.tls.client)
        client.login("app", PASSWORD)
        return _submit(client, subject, to)


def _deferred(r: Running, mid: str, attempts: int) -> dict[str, Any] | None:
    shown = r.cli("queue", "show", mid, "--json")
    if shown.returncode != 0:
        return None
    row: dict[str, Any] = json.loads(shown.stdout)
    rcpt = row["recipients"][0]
    return row if rcpt["state"] == "deferred" and rcpt["attempts"] >= attempts else None


def test_sigterm_restart_and_queue_commands(running: Running) -> None:
    r = running
    keep = _submit_starttls(r, "stays queued", "user@busy.test")
    drop = _submit_starttls(r, "to be deleted", "other@busy.test")
    row = wait_until(lambda: _deferred(r, keep, 1), 15, "the first (451) attempt")
    wait_until(lambda: _deferred(r, drop, 1), 15, "the first (451) attempt")
    assert "451" in row["recipients"][0]["last_response"]

    assert r.relay.terminate(30) == 0, r.relay.output()
    assert "relay: stopping" in r.relay.stderr()
    r.relay.start()

    rows = {row["id"]: row for row in _queue_rows(r)}
    assert set(rows) == {keep, drop}
    assert rows[keep]["subject"] == "stays queued"
    assert rows[keep]["recipients"][0]["address"] == "user@busy.test"
    assert rows[keep]["recipients"][0]["state"] == "deferred"
    shown = r.cli("queue", "show", keep, "--json")
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["id"] == keep and detail["sender"] == "app@example.com"
    assert detail["recipients"][0]["attempts"] == 1

    # retry: attempted again now (not in an hour), by the running server.
    retried = r.cli("queue", "retry", keep)
    assert retried.returncode == 0, retried.stderr
    wait_until(lambda: _deferred(r, keep, 2), 15, "the retried attempt")

    # bounce: gone from the queue, with a Bounce event.
    bounced = r.cli("queue", "bounce", keep)
    assert bounced.returncode == 0, bounced.stderr
    bounce = wait_until(lambda: [e for e in r.events_of(keep) if e["eventType"] == "Bounce"],
                        5, "the Bounce event")[0]["bounce"]
    assert bounce["bounceType"] == "Permanent"
    assert bounce["bouncedRecipients"][0]["emailAddress"] == "user@busy.test"

    deleted = r.cli("queue", "delete", drop)
    assert deleted.returncode == 0, deleted.stderr
    assert _queue_rows(r) == []
    kinds = [e["eventType"] for e in r.events_of(keep)]
    assert kinds[0] == "Send" and kinds[-1] == "Bounce" and "DeliveryDelay" in kinds

    for action in ("show", "retry", "bounce", "delete"):
        out = r.cli("queue", action, "NOSUCHID")
        assert out.returncode == 1, (action, out.stdout, out.stderr)
        assert "no queued message with id 'NOSUCHID'" in out.stderr, (action, out.stderr)
        assert "Traceback" not in out.stderr

    assert r.relay.terminate(30) == 0, r.relay.output()
    assert r.sinks[0].message_count == 0 and r.sinks[1].message_count == 0


# ------------------------------------------------------------------------------ make run


def _dev_config_copy(directory: Path) -> tuple[Path, int, int]:
    from relay.cli import default_config_path

    text = default_config_path().read_text(encoding="utf-8")
    starttls, implicit = free_port(), free_port()
    assert "127.0.0.1:2587" in text and "127.0.0.1:2465" in text
    text = text.replace("127.0.0.1:2587", f"127.0.0.1:{starttls}")
    text = text.replace("127.0.0.1:2465", f"127.0.0.1:{implicit}")
    assert "127.0.0.1:8025" in text  # the admin API and dashboard
    text = text.replace("127.0.0.1:8025", f"127.0.0.1:{free_port()}")
    path = directory / "relay.dev.toml"
    path.write_text(text, encoding="utf-8")
    return path, starttls, implicit


def test_dev_config_prints_the_credential_once(tmp_path: Path) -> None:
    config, starttls, implicit = _dev_config_copy(tmp_path)
    env = dict(os.environ, RELAY_CONFIG=str(config))
    relay = RelayProcess(None, log_dir=tmp_path / "logs", cwd=tmp_path, env=env)
    relay.start()
    try:
        first = relay.stdout()
        m = re.search(r"development credential \(shown once\): user '(\w+)' password '([^']+)'",
                      first)
        assert m is not None, first
        user, password = m.group(1), m.group(2)
        t = re.search(r"development admin token \(shown once\): '([^']+)'", first)
        assert t is not None, first
        assert relay.port(f"127.0.0.1:{starttls}") == starttls
        assert relay.port(f"127.0.0.1:{implicit}") == implicit
        assert (tmp_path / "var" / "queue").is_dir()  # state under ./var of the cwd
        assert password not in (tmp_path / "var" / "users.json").read_text()
        # The printed credential works (self-signed certificate: no verification here).
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", starttls, timeout=10) as client:
            client.starttls(context=insecure)
            code, _ = client.login(user, password)
            assert code == 235
        assert relay.terminate(30) == 0, relay.output()

        relay.start()
        second = relay.stdout()
        assert "relay: ready" in second
        assert "credential" not in second and password not in second, second
        assert "admin token" not in second and t.group(1) not in second, second
        assert relay.terminate(30) == 0, relay.output()
        assert password not in relay.stderr(1) + relay.stderr(2)
    finally:
        relay.stop()


# ------------------------------------------------------------------------------ swaks


def test_swaks_starttls_auth_submission(running: Running) -> None:
    require_program("swaks")
    support = subprocess.run(["swaks", "--support"], capture_output=True, text=True,
                             timeout=30, check=False)
    if "=== TLS supported" not in support.stdout:
        reason = ("swaks cannot do TLS here (needs Net::SSLeay: apt-get install "
                  "libnet-ssleay-perl, which --no-install-recommends leaves out)")
        if require_all():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    out = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{running.starttls_port}", "--tls",
         "--auth-user", "app", "--auth-password", PASSWORD,
         "--to", "x@dest.test", "--from", "app@example.com",
         "--header", "Subject: via swaks", "--body", "hello from swaks",
         "--timeout", "10"],
        capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    m = _QUEUED_RE.search(out.stdout)
    assert m is not None, out.stdout
    got = running.sinks[0].wait_for(1, timeout=15)
    assert _subject_of(got[0]) == "via swaks"
    wait_until(lambda: [e["eventType"] for e in running.events_of(m.group(1))]
               == ["Send", "Delivery"], 10, "Delivery event of the swaks message")
