"""The message history fed by the production graph (relay/testing/harness.py): a message
accepted through the submitter, signed, and delivered over STARTTLS to a sink on
127.0.0.2 from source address 127.0.0.10, is found by queue id with its timeline in time
order: accepted, one attempt (source IP, MX host and address, TLS, the full reply, the DKIM
selectors sent), delivered; a refused recipient's attempt carries the 5xx reply in full.
The mailbox simulator's attempts reach the same history. With [history] off nothing is
recorded."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from relay.clock import FakeClock
from relay.config import from_dict
from relay.queue.ops import NewMessage
from relay.testing.dnsserver import DnsServer
from relay.testing.factories import DnsServers
from relay.testing.harness import Harness
from relay.testing.sink import Rules, Sink, server_tls
from relay.wiring import Overrides

BODY = (b"From: App <app@example.com>\r\nTo: user@dest.test\r\nSubject: Your receipt 42\r\n"
        b"Message-ID: <r42@example.com>\r\n\r\nthanks\r\n")


@pytest.fixture
def dns_server(dns_server: DnsServers) -> DnsServer:
    return dns_server({"dest.test": [("MX", "10 mx.dest.test")],
                       "mx.dest.test": [("A", "127.0.0.2")]})


def _harness(tmp: Path, dns: DnsServer, sink: Sink, **sections: Any) -> Harness:
    return Harness(from_dict({
        "server": {"hostname": "relay.test", "state_dir": str(tmp / "state")},
        "dns": {"nameservers": [dns.nameserver], "timeout": "2s"},
        "delivery": {"port": sink.port, "retry_jitter": 0.0, "mta_sts": False,
                     "source_address": "127.0.0.10"},
        "identity": [{"domain": "example.com"}],
        **sections,
    }), FakeClock(), Overrides(rng=random.Random(3)))


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    with Sink("127.0.0.2", 0, tls_context=server_tls(trustme.CA(), "mx.dest.test"),
              policy=Rules(rcpt={"nobody": "550 5.1.1 <nobody@dest.test>: no such user"})
              ) as s:
        yield s


async def _submit(h: Harness, rcpts: list[str]) -> str:
    mid: str = await h.submitter.submit(NewMessage(
        sender="app@example.com", recipients=rcpts, body=BODY,
        headers={"From": "App <app@example.com>", "Subject": "Your receipt 42",
                 "Message-ID": "<r42@example.com>"}))
    return mid


async def _settle(h: Harness) -> None:
    await h.deliver_until()
    await h.journal.flush(force=True)
    assert h.recorder is not None
    await h.recorder.run_once()


async def test_a_delivered_message_has_accepted_attempt_delivered(
        tmp_path: Path, dns_server: DnsServer, sink: Sink) -> None:
    h = _harness(tmp_path, dns_server, sink)
    h.keys.keygen("example.com", "sel1", "both")
    await h.start()
    try:
        mid = await _submit(h, ["user@dest.test", "nobody@dest.test"])
        await _settle(h)
        assert len(sink.messages) == 1 and sink.messages[0].tls
        assert h.history is not None
        view = h.history.get(mid)
        assert view is not None
        assert view.message.id == mid and view.message.subject == "Your receipt 42"
        by = view.by_recipient()
        good = by["user@dest.test"]
        assert [e.kind for e in good] == ["accepted", "attempt", "delivered"], good
        attempt = good[1]
        assert (attempt.result, attempt.source_ip, attempt.mx_host, attempt.remote_ip,
                attempt.tls) == ("delivered", "127.0.0.10", "mx.dest.test", "127.0.0.2", True)
        assert attempt.response.startswith("250 ")  # the sink's reply, in full
        assert attempt.dkim and all(d.startswith("d=example.com s=sel1") for d in attempt.dkim)
        assert [e.ts for e in view.timeline] == sorted(e.ts for e in view.timeline)

        bad = by["nobody@dest.test"]
        assert [e.kind for e in bad] == ["accepted", "attempt", "bounced"], bad
        assert bad[1].response == "550 5.1.1 <nobody@dest.test>: no such user"
        status = {r.address: r.status for r in view.message.recipients}
        assert status == {"user@dest.test": "delivered", "nobody@dest.test": "bounced"}
        # Found by its Message-ID header too.
        again = h.history.get("r42@example.com")
        assert again is not None and again.message.id == mid
    finally:
        await h.close()


async def test_simulator_attempts_reach_the_history(
        tmp_path: Path, dns_server: DnsServer, sink: Sink) -> None:
    h = _harness(tmp_path, dns_server, sink)
    # Half a millisecond past a whole one: the Delivery event's timestamp (cut to the
    # millisecond) is then before the attempt's own start unless that is cut too, and the
    # delivery would be counted before the attempt named its provider.
    h.clock.set(1_790_000_000.0005)
    await h.start()
    try:
        mid = await _submit(h, ["success@simulator.relay.test"])
        await _settle(h)
        assert h.history is not None
        view = h.history.get(mid)
        assert view is not None
        kinds = [e.kind for e in view.timeline]
        assert kinds == ["accepted", "attempt", "delivered"], kinds
        attempt = view.timeline[1]
        assert (attempt.mx_host, attempt.remote_ip, attempt.tls, attempt.source_ip,
                attempt.provider) == ("simulator", "", False, "simulator", "simulator")
        assert h.stats is not None
        now = h.clock.now()
        (series,) = h.stats.query(now - 3600, now + 1, by="provider")
        assert series.key == "simulator"
        assert [(p.attempts, p.delivered) for p in series.points] == [(1, 1)]
    finally:
        await h.close()


async def test_history_off_records_nothing(
        tmp_path: Path, dns_server: DnsServer, sink: Sink) -> None:
    h = _harness(tmp_path, dns_server, sink, history={"enabled": False})
    await h.start()
    try:
        await _submit(h, ["user@dest.test"])
        await h.deliver_until()
        assert len(sink.messages) == 1
        assert h.history is None and h.recorder is None
        assert all(h.store.read_db(db) == [] for db in
                   ("history", "history_tl", "history_ix", "stats"))
    finally:
        await h.close()
