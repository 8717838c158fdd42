"""DKIM signing and VERP return paths through the real delivery path.

Real LMDB queue, real scheduler and client, a real sink on 127.0.0.2 and a real DNS
server on loopback publishing the DKIM keys. What the sink receives is verified by
dkimpy (DNS through dnspython at the loopback server) and by Node's mailauth (an
independent implementation, RSA and Ed25519, resolving through the same server).
"""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import Envelope

from relay.clock import FakeClock
from relay.config import from_dict
from relay.dkim.keys import KeyStore
from relay.events.log import read_events
from relay.queue.ops import NewMessage
from relay.queue.records import State
from relay.testing.dkimcheck import dkimpy_verify
from relay.testing.dnsserver import DnsServer
from relay.testing.factories import DnsServers
from relay.testing.harness import Harness as AppGraph
from relay.testing.require import require_path, require_program
from relay.testing.sink import Received, Sink
from relay.wiring import Overrides

NODE_DIR = Path(__file__).resolve().parents[1] / "node"

SEVEN_BIT = (b"From: App <app@example.com>\r\nTo: user@dest.test\r\nSubject: seven bit\r\n"
             b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <m1@example.com>\r\n"
             b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
             b"Hello,\r\n\r\nplain text.\r\n")
EIGHT_BIT = ("From: App <app@example.com>\r\nTo: user@dest.test\r\nSubject: =?utf-8?q?h=C3=A9?=\r\n"
             "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
             "Content-Transfer-Encoding: 8bit\r\n\r\nGrüße, café, 日本語\r\n").encode()
LONG_LINE = (b"From: app@example.com\r\nTo: user@dest.test\r\nSubject: long line\r\n\r\n"
             + b"x" * 990 + b"\r\n" + b"  trailing spaces and\ttabs   \r\n\r\n\r\n")
MULTIPART = (b"From: App <app@example.com>\r\nTo: user@dest.test\r\nSubject: multipart\r\n"
             b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n"
             b"--b1\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
             b"--b1\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--b1--\r\n")
# Over the size whose canonicalisation runs on the event loop (the signing thread then
# signs it whole): both paths sign what verifiers accept.
LARGE = (b"From: App <app@example.com>\r\nTo: user@dest.test\r\nSubject: large\r\n\r\n"
         + b"A line of a large message, long enough to be folded by nobody.\r\n" * 1500)
MESSAGES = {"7bit": SEVEN_BIT, "8bit": EIGHT_BIT, "long-line": LONG_LINE,
            "multipart": MULTIPART, "large": LARGE}


@pytest.fixture
def dns_server(dns_server: DnsServers) -> DnsServer:
    zone = {
        "dest.test": [("MX", "10 mx.dest.test")],
        "mx.dest.test": [("A", "127.0.0.2")],
        "bounce.example.com": [("MX", "10 relay.test")],
    }
    return dns_server(zone)


def publish(server: DnsServer, keys: KeyStore, domain: str) -> None:
    state = keys.get(domain)
    assert state is not None
    for gen in state.generations:
        for key in gen.keys:
            server.set(f"{key.selector}._domainkey.{domain}", "TXT", [key.record])


class Harness(AppGraph):
    def __init__(self, tmp: Path, dns: DnsServer, sink: Sink, identities: list[Any]) -> None:
        super().__init__(from_dict({
            "server": {"hostname": "relay.test", "state_dir": str(tmp),
                       "return_path_domain": "rp.relay.test"},
            "dns": {"nameservers": [dns.nameserver], "timeout": "2s"},
            "delivery": {"port": sink.port, "retry_jitter": 0.0},
            "identity": identities,
        }), FakeClock(), Overrides(rng=random.Random(2)))
        self.dns = dns
        self.sink = sink

    async def submit(self, body: bytes, rcpts: list[str], sender: str = "app@example.com",
                     from_: str = "app@example.com") -> str:
        record = await self.store.submit_record(NewMessage(
            sender=sender, recipients=rcpts, body=body, headers={"From": from_}))
        return record.id

    async def run(self) -> None:
        for _ in range(20):
            await self.scheduler.run_until_idle()
            nd = self.store.next_due_at()
            if nd is None:
                return
            self.clock.set(max(nd, self.clock.now()))



@pytest.fixture
async def harness(tmp_path: Path, dns_server: DnsServer) -> AsyncIterator[Harness]:
    with Sink("127.0.0.2", 0) as sink:
        h = Harness(tmp_path, dns_server, sink, [
            {"domain": "example.com", "mail_from": "bounce.example.com"},
            {"domain": "nomx.test", "mail_from": "bounce.nomx.test"},
            {"domain": "strict.test", "mail_from": "bounce.strict.test",
             "on_mx_failure": "reject"},
        ])
        h.keys.keygen("example.com", "s1", "both")
        publish(dns_server, h.keys, "example.com")
        await h.start()
        yield h
        await h.close()


def mailauth_verify(data: bytes, server: DnsServer) -> list[dict[str, Any]]:
    require_program("node")
    require_path(NODE_DIR / "node_modules" / "mailauth", "npm ci --prefix tests/node")
    out = subprocess.run(["node", str(NODE_DIR / "verify.js"), server.nameserver],
                         input=data, capture_output=True, check=True, timeout=30)
    results: list[dict[str, Any]] = json.loads(out.stdout)
    return results


def signatures(msg: Received) -> list[bytes]:
    head = msg.data.split(b"\r\n\r\n", 1)[0]
    return [line for line in head.split(b"\r\n") if line.lower().startswith(b"dkim-signature:")]


@pytest.mark.parametrize("kind", sorted(MESSAGES))
async def test_signed_on_delivery_verifies_with_dkimpy_and_mailauth(
        harness: Harness, kind: str) -> None:
    mid = await harness.submit(MESSAGES[kind], ["user@dest.test"])
    await harness.run()
    (msg,) = harness.sink.messages
    assert len(signatures(msg)) == 2  # RSA + Ed25519
    head = msg.data.split(b"\r\n\r\n", 1)[0]
    assert b" l=" not in head and b";l=" not in head
    assert b"c=relaxed/relaxed" in head
    assert dkimpy_verify(msg.data, harness.dns) == [True, True]
    results = mailauth_verify(msg.data, harness.dns)
    assert sorted(r["algo"] for r in results) == ["ed25519-sha256", "rsa-sha256"]
    assert all(r["status"] == "pass" and r["signingDomain"] == "example.com"
               for r in results), results
    assert harness.verp.decode(msg.mail_from) == (mid, 0)
    assert msg.mail_from.endswith("@bounce.example.com")


async def test_from_is_oversigned_so_a_prepended_from_breaks_the_signature(
        harness: Harness) -> None:
    await harness.submit(SEVEN_BIT, ["user@dest.test"])
    await harness.run()
    (msg,) = harness.sink.messages
    assert b"h=from : from" in msg.data.replace(b"\r\n ", b" ")
    forged = msg.data.replace(b"From: App", b"From: evil@attacker.test\r\nFrom: App", 1)
    assert dkimpy_verify(forged, harness.dns) == [False, False]


async def test_one_signature_per_message_for_all_recipients_and_retries(
        harness: Harness) -> None:
    calls = {"n": 0}

    def flaky(stage: str, arg: str, envelope: Envelope) -> str | None:
        if stage == "data":
            calls["n"] += 1
            if calls["n"] <= 2:
                return "451 4.3.0 try later"
        return None

    harness.sink.policy = flaky
    mid = await harness.submit(SEVEN_BIT, ["a@dest.test", "b@dest.test"])
    await harness.run()
    msgs = harness.sink.messages
    assert len(msgs) == 2
    assert harness.signer.signed == 1  # two recipients, two attempts each: signed once
    assert signatures(msgs[0]) == signatures(msgs[1])
    decoded = sorted(harness.verp.decode(m.mail_from) or ("", -1) for m in msgs)
    assert decoded == [(mid, 0), (mid, 1)]  # one VERP address per recipient
    assert {tuple(m.rcpt_tos) for m in msgs} == {("a@dest.test",), ("b@dest.test",)}


async def test_signature_is_reused_after_a_restart(
        tmp_path: Path, dns_server: DnsServer, harness: Harness) -> None:
    def b_busy(stage: str, arg: str, envelope: Envelope) -> str | None:
        return "451 4.2.0 busy" if stage == "rcpt" and arg.startswith("b@") else None

    harness.sink.policy = b_busy
    mid = await harness.submit(SEVEN_BIT, ["a@dest.test", "b@dest.test"])
    await harness.scheduler.run_until_idle()
    (first,) = harness.sink.messages  # a delivered, b deferred
    assert harness.signer.signed == 1
    await harness.close()
    # "Restart": a new store, signer and scheduler on the same state; empty memory cache.
    again = Harness(tmp_path, dns_server, harness.sink, [{"domain": "example.com",
                                                          "mail_from": "bounce.example.com"}])
    harness.sink.policy = None
    await again.start()
    try:
        await again.run()
        second = harness.sink.messages[-1]
        assert second.rcpt_tos == ["b@dest.test"]
        assert signatures(second) == signatures(first)  # the bytes sent before the restart
        assert again.signer.signed == 0
        assert dkimpy_verify(second.data, dns_server) == [True, True]
        # Removed with the message: nothing is left in the "dkim" sub-database.
        assert again.store.message(mid) is None
        assert again.store.read_db("dkim") == []
    finally:
        await again.close()


async def test_already_signed_message_is_not_signed_twice(harness: Harness) -> None:
    pre = harness.signer.signature("earlier", SEVEN_BIT) + SEVEN_BIT
    await harness.submit(pre, ["user@dest.test"])
    await harness.run()
    (msg,) = harness.sink.messages
    assert len(signatures(msg)) == 2
    assert dkimpy_verify(msg.data, harness.dns) == [True, True]


async def test_unknown_from_domain_is_sent_unsigned_with_default_return_path(
        harness: Harness) -> None:
    body = SEVEN_BIT.replace(b"app@example.com", b"app@unsigned.test")
    mid = await harness.submit(body, ["user@dest.test"], sender="app@unsigned.test",
                               from_="app@unsigned.test")
    await harness.run()
    (msg,) = harness.sink.messages
    assert signatures(msg) == []
    assert msg.mail_from.endswith("@rp.relay.test")
    assert harness.verp.decode(msg.mail_from) == (mid, 0)


async def test_mail_from_without_mx_uses_the_default_domain(harness: Harness) -> None:
    await harness.submit(SEVEN_BIT, ["user@dest.test"], sender="a@nomx.test",
                         from_="a@nomx.test")
    await harness.run()
    (msg,) = harness.sink.messages
    assert msg.mail_from.endswith("@rp.relay.test")
    harness.dns.set("bounce.nomx.test", "MX", ["10 relay.test"])
    harness.clock.advance(hours=1)  # past the negative cache TTL
    await harness.submit(SEVEN_BIT, ["user@dest.test"], sender="a@nomx.test",
                         from_="a@nomx.test")
    await harness.run()
    assert harness.sink.messages[-1].mail_from.endswith("@bounce.nomx.test")


async def test_mail_from_without_mx_rejects_when_configured(harness: Harness) -> None:
    mid = await harness.submit(SEVEN_BIT, ["user@dest.test"], sender="a@strict.test",
                               from_="a@strict.test")
    await harness.run()
    assert harness.sink.messages == []
    (rcpt,) = harness.store.recipients(mid) or [None]
    events = [e for e in read_events(harness.events.path) if e["eventType"] == "Bounce"]
    assert events, "a Bounce event names the refusal"
    text = json.dumps(events[0])
    assert "bounce.strict.test" in text and "on_mx_failure" in text
    assert rcpt is None or rcpt.state is State.BOUNCED


async def test_null_sender_is_never_rewritten(harness: Harness) -> None:
    await harness.submit(SEVEN_BIT, ["user@dest.test"], sender="")
    await harness.run()
    (msg,) = harness.sink.messages
    assert msg.mail_from in ("", "<>")
