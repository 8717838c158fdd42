"""Submission-side message rules through the real `relay` process, as a client meets them.

One `relay serve` with the development setting `sender_authorization = "off"`, DKIM keys
made with `relay dkim keygen` and published in the loopback DNS server, a credential
limited with `relay user add --allow`, and a sink on 127.0.0.2. smtplib (a real client)
submits; what the sink receives is the proof: Message-ID and Date added and covered by
the DKIM signature, and nothing of the messages refused at RCPT or DATA (a second From
in another spelling, a mail loop past the hop limit, a sender outside the allow list,
a recipient with no domain, which is never looked up in DNS either).
"""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.events.log import read_events
from relay.testing.dkimcheck import dkimpy_verify, publish_keygen_output
from relay.testing.dnsserver import DnsServer
from relay.testing.process import (
    RelayProcess,
    free_port,
    listener_config,
    relay_config,
    run_cli,
    write_config,
)
from relay.testing.sink import Sink
from relay.testing.submission import Tls, header_section, named

PASSWORD = "correct horse battery staple"


class Relay:
    def __init__(self, process: RelayProcess, port: int, tls: Tls) -> None:
        self.process = process
        self.port = port
        self.tls = tls

    def client(self, user: str = "app") -> smtplib.SMTP:
        s = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
        s.starttls(context=self.tls.client)
        s.login(user, PASSWORD)
        return s


@pytest.fixture
def relay(tmp_path: Path, dns_server: DnsServer,
          sinks: tuple[Sink, Sink]) -> Iterator[Relay]:
    tls = Tls()
    cert, key = tls.write_files(tmp_path)
    port = free_port()
    data = relay_config(tmp_path / "state", dns_server.nameserver, sinks[0].port,
                        [listener_config("starttls", "required", port)])
    assert data["server"]["sender_authorization"] == "off"  # as the development config
    data["tls"] = {"cert": str(cert), "key": str(key)}
    config = write_config(tmp_path / "relay.toml", data)
    for args in (("user", "add", "app", "--password-stdin", "--allow", "example.com"),
                 ("user", "add", "any", "--password-stdin")):
        made = run_cli(*args, config=config, input=PASSWORD + "\n")
        assert made.returncode == 0, made.stderr
    keys = run_cli("dkim", "keygen", "example.com", config=config)
    assert keys.returncode == 0, keys.stderr
    assert publish_keygen_output(keys.stdout, dns_server)
    with RelayProcess(config, log_dir=tmp_path / "logs") as process:
        yield Relay(process, port, tls)


def data_reply(s: smtplib.SMTP, sender: str, message: bytes,
               rcpt: str = "user@dest.test") -> tuple[int, str]:
    code, reply = s.mail(sender)
    if code != 250:
        s.rset()
        return code, reply.decode()
    code, reply = s.rcpt(rcpt)
    if code != 250:
        s.rset()
        return code, reply.decode()
    code, reply = s.data(message)
    return code, reply.decode()


def test_message_rules_hold_in_the_development_setup(
        relay: Relay, dns_server: DnsServer, sinks: tuple[Sink, Sink]) -> None:
    # Before STARTTLS, AUTH is not offered: the client is told what to do first.
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as plain:
        plain.ehlo("client.test")
        assert plain.mail("app@example.com") == (
            530, b"5.7.0 Must issue a STARTTLS command first")

    with relay.client("app") as s:
        # Message-ID and Date added (RFC 6409 §8), before DKIM signs the stored message.
        code, reply = data_reply(s, "app@example.com",
                                 b"From: App <app@example.com>\r\nTo: user@dest.test\r\n"
                                 b"Subject: no id, no date\r\n\r\nhello\r\n")
        assert code == 250, reply
        # A second From in any spelling names someone else: refused, never delivered.
        for second in (b"From : Boss <boss@other.test>", b"FROM: boss@other.test"):
            code, reply = data_reply(s, "app@example.com",
                                     b"From: App <app@example.com>\r\n" + second
                                     + b"\r\nSubject: spoof\r\n\r\npay the invoice\r\n")
            assert (code, reply[:5]) == (554, "5.6.0"), reply
            assert "'From'" in reply
        # A mail loop: past 50 Received lines, Postfix's hop limit.
        hops = b"".join(b"Received: from hop%d.example by relay.example; "
                        b"Mon, 7 Dec 2026 10:00:00 +0000\r\n" % i for i in range(51))
        code, reply = data_reply(s, "app@example.com",
                                 hops + b"From: app@example.com\r\nSubject: loop\r\n\r\nx\r\n")
        assert (code, reply) == (554, "5.4.6 Too many hops")
        # The credential's --allow list holds with sender_authorization = "off".
        code, reply = data_reply(s, "ceo@other.test", b"From: ceo@other.test\r\n\r\nx\r\n")
        assert (code, reply[:5]) == (550, "5.7.1") and "ceo@other.test" in reply, reply
        code, reply = data_reply(s, "app@example.com",
                                 b"From: CEO <ceo@other.test>\r\nSubject: s\r\n\r\nx\r\n")
        assert (code, reply[:5]) == (554, "5.7.1") and "ceo@other.test" in reply, reply
        # A recipient with no domain: refused at RCPT.
        code, reply = data_reply(s, "app@example.com", b"From: app@example.com\r\n\r\nx\r\n",
                                 rcpt="not-an-address")
        assert (code, reply[:5]) == (501, "5.1.3"), reply
    with relay.client("any") as s:  # no allow list: any sender, as "off" says
        code, reply = data_reply(s, "ceo@other.test",
                                 b"From: ceo@other.test\r\nSubject: last\r\n"
                                 b"Message-ID: <own@other.test>\r\n"
                                 b"Date: Mon, 7 Dec 2026 10:00:00 +0000\r\n\r\nx\r\n")
        assert code == 250, reply

    # Only the two 250s were queued: the refusals came before any commit.
    sinks[0].wait_for(2, timeout=10)
    bodies = [m.data for m in sinks[0].messages]
    assert len(bodies) == 2, [b[:200] for b in bodies]
    first = next(b for b in bodies if b"no id, no date" in b)
    head = header_section(first)
    ids = named(head, "message-id")
    dates = named(head, "date")
    assert len(ids) == 1 and re.fullmatch(r"<[0-9a-f-]{36}@relay\.test>", ids[0]), head
    assert len(dates) == 1 and dates[0].endswith("+0000"), head
    signatures = named(head, "dkim-signature")
    assert signatures, head
    verified = dkimpy_verify(first, dns_server)
    for i, signature in enumerate(signatures):
        signed = re.search(r"h=([^;]+)", signature)
        assert signed is not None
        names = {h.strip().lower() for h in re.sub(r"\s", "", signed.group(1)).split(":")}
        assert {"message-id", "date", "from"} <= names, names
        assert verified[i], (i, verified)
    last = next(b for b in bodies if b"Subject: last" in b)
    assert [v for n, v in header_section(last)
            if n.strip().lower() in ("message-id", "date")] == [
        "<own@other.test>", "Mon, 7 Dec 2026 10:00:00 +0000"]
    assert all(b"boss@other.test" not in b and b"Subject: loop" not in b for b in bodies)
    assert dns_server.query_count("not-an-address") == 0


def test_a_mail_loop_between_two_relays_ends_at_the_hop_limit(
        tmp_path: Path, dns_server: DnsServer) -> None:
    """Two relays that route loop.test to each other (a misconfiguration no loop-back
    check of one host can see): each pass adds a Received line, and the pass past
    limits.max_hop_count is refused 554 5.4.6, so the loop ends in a bounce after a
    bounded number of copies instead of going round for ever."""
    hops = 6
    ports = {"a": free_port(), "b": free_port()}
    configs = {}
    for name, other in (("a", "b"), ("b", "a")):
        data = relay_config(
            tmp_path / name, dns_server.nameserver, free_port(),
            [listener_config("none", "none", ports[name], trusted_networks=["127.0.0.0/8"])],
            routes={"loop.test": f"127.0.0.1:{ports[other]}"})
        data["limits"] = {"max_hop_count": hops}
        configs[name] = write_config(tmp_path / f"{name}.toml", data)
    with RelayProcess(configs["a"], log_dir=tmp_path / "logs-a"), \
            RelayProcess(configs["b"], log_dir=tmp_path / "logs-b"):
        with smtplib.SMTP("127.0.0.1", ports["a"], timeout=10) as s:
            s.sendmail("app@example.com", ["someone@loop.test"],
                       b"From: app@example.com\r\nSubject: round and round\r\n\r\nx\r\n")

        def events() -> list[dict[str, object]]:
            return [e for name in ("a", "b") for e in read_events(tmp_path / name / "events.jsonl")]

        deadline = time.monotonic() + 12
        while not any(e.get("eventType") == "Bounce" for e in events()):
            assert time.monotonic() < deadline, events()
            time.sleep(0.1)
        time.sleep(1.5)  # one retry interval: no copy goes on after the bounce
        seen = events()
    sends = [e for e in seen if e.get("eventType") == "Send"]
    bounces = [e for e in seen if e.get("eventType") == "Bounce"]
    # Accepted with 0, 1, ..., `hops` Received lines from before: hops + 1 copies.
    assert len(sends) == hops + 1, [e.get("eventType") for e in seen]
    assert len(bounces) == 1
    assert "5.4.6" in str(bounces[0]) and "Too many hops" in str(bounces[0])
