"""What an `Attempt` says beyond its outcome (relay/delivery/attempts.py): the recipient,
the MX host and address that answered, TLS, a pooled connection, when it started and how
long it took, the DKIM signatures of the data sent, the message's received time and
configuration set; and the delivery log line that carries them, the same for the mailbox
simulator as for the network."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest

from relay.clock import FakeClock
from relay.delivery.attempts import (
    Attempt,
    RecordingSender,
    current_message,
    current_message_id,
    dkim_selectors,
)
from relay.delivery.client import TransactionResult
from relay.delivery.outcome import Outcome
from relay.queue.records import MessageRecord
from relay.simulator import Simulator
from relay.warmup.providers import ProviderMap, ProviderRule

PROVIDERS = ProviderMap([ProviderRule("gmail", ("*.gmail.test",))])

OK = Outcome("delivered", 250, "2.0.0", "queued as 42", remote_mta="mx1.gmail.test")
NO = Outcome("bounced", 550, "5.1.1", "no such user", remote_mta="mx1.gmail.test")

SIGNED = (b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n"
          b" d=Example.COM; s=relay2026b; t=1790000000; h=from:to:subject;\r\n"
          b"\tbh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=abc;def\r\n"
          b"dkim-signature:v=1;a=rsa-sha256;d=example.com;s=relay2026a;b=xyz\r\n"
          b"From: a@example.com\r\nTo: r@gmail.test\r\nSubject: hi\r\n\r\n"
          b"DKIM-Signature: v=1; d=body.test; s=not-a-header\r\n")


# --------------------------------------------------------------------------- DKIM
def test_dkim_selectors_of_folded_fields_any_case() -> None:
    assert dkim_selectors(SIGNED) == ["d=example.com s=relay2026b",
                                      "d=example.com s=relay2026a"]


def test_dkim_signature_in_the_body_is_not_a_header() -> None:
    assert dkim_selectors(b"Subject: x\n\nDKIM-Signature: d=a.test; s=s1\n") == []
    assert dkim_selectors(b"\r\nDKIM-Signature: d=a.test; s=s1\r\n") == []
    assert dkim_selectors(b"Subject: unsigned\r\n\r\nbody\r\n") == []


def test_a_field_named_like_it_is_not_one() -> None:
    data = b"X-DKIM-Signature: d=x.test; s=s1\r\nDKIM-Signatures: d=y.test; s=s2\r\n\r\n"
    assert dkim_selectors(data) == []


def test_dkim_parse_is_bounded_in_signatures_and_bytes() -> None:
    many = b"".join(b"DKIM-Signature: d=d%d.test; s=s\r\n" % i for i in range(50))
    assert len(dkim_selectors(many + b"\r\nbody")) == 8
    # A header section far past the scan bound: fields past it are not read.
    late = b"X-Pad: " + b"a" * 300_000 + b"\r\nDKIM-Signature: d=late.test; s=s\r\n\r\n"
    assert dkim_selectors(late) == []


# --------------------------------------------------------------------------- network
class _Answering:
    """The SMTP client's place below the recorder: answers `result` after `seconds` of
    the fake clock (the transaction's duration)."""

    def __init__(self, clock: FakeClock, result: Any, seconds: float) -> None:
        self.clock, self.result, self.seconds = clock, result, seconds
        self.sent: list[bytes] = []

    async def send(self, destination: str, targets: Sequence[Any], sender: str,
                   recipients: Sequence[str], data: bytes, **kwargs: Any) -> Any:
        self.sent.append(data)
        self.clock.advance(self.seconds)
        return self.result


class _Target:
    host_name = "mx1.gmail.test"
    address = "127.0.0.2"


def _message(clock: FakeClock) -> MessageRecord:
    return MessageRecord("0190abcdef0112345678", "bounce@example.com",
                         ["r@gmail.test", "nobody@gmail.test"], clock.now() - 90.0, 100,
                         configuration_set="news", tenant="acme")


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "relay.delivery" and r.getMessage().startswith("attempt ")]


async def test_network_attempt_carries_the_transaction(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    start = clock.now()
    result = TransactionResult(["r@gmail.test", "nobody@gmail.test"], [OK, NO],
                               remote_mta="mx1.gmail.test", address="127.0.0.2", tls=True,
                               reused=True)
    inner = _Answering(clock, result, 1.25)
    seen: list[Attempt] = []
    rec = RecordingSender(inner, PROVIDERS, clock=clock, observers=[seen.append])
    msg = _message(clock)
    current_message_id.set(msg.id)
    current_message.set(msg)
    with caplog.at_level(logging.INFO, logger="relay.delivery"):
        got = await rec.send("gmail.test", [_Target()], "bounce@example.com",
                             msg.recipients, SIGNED, source_address="192.0.2.7")
    assert got is result and inner.sent == [SIGNED]  # nothing changed on the way
    a, b = seen
    assert (a.recipient, a.recipient_domain, a.kind, b.recipient, b.kind) == \
        ("r@gmail.test", "gmail.test", "delivered", "nobody@gmail.test", "bounced")
    assert (a.queue_id, a.tenant, a.configuration_set, a.source_ip, a.provider) == \
        (msg.id, "acme", "news", "192.0.2.7", "gmail")
    assert (a.mx_host, a.remote_ip, a.tls, a.reused) == ("mx1.gmail.test", "127.0.0.2",
                                                         True, True)
    assert (a.started_at, a.duration_ms, a.received_at) == (start, 1250, msg.received_at)
    assert a.delay_ms == 91_250  # accepted 90 s before the start, then 1.25 s on the wire
    assert a.dkim == ["d=example.com s=relay2026b", "d=example.com s=relay2026a"]
    assert a.response == "250 2.0.0 queued as 42" and b.response == "550 5.1.1 no such user"

    first, second = _lines(caplog)
    text = first.getMessage()
    assert text.startswith(f"attempt {msg.id} tenant=acme domain=gmail.test "
                           "source_ip=192.0.2.7 provider=gmail mx_host=mx1.gmail.test "
                           "remote_ip=127.0.0.2 tls=yes delay=91.250 duration=1.250 "
                           "result=delivered response="), text
    fields = first.__dict__
    assert {k: fields[k] for k in ("queue_id", "tenant", "recipient_domain", "source_ip",
                                   "provider", "result", "response", "remote_mta",
                                   "mx_host", "remote_ip", "tls", "delay", "duration")} == {
        "queue_id": msg.id, "tenant": "acme", "recipient_domain": "gmail.test",
        "source_ip": "192.0.2.7", "provider": "gmail", "result": "delivered",
        "response": "250 2.0.0 queued as 42", "remote_mta": "mx1.gmail.test",
        "mx_host": "mx1.gmail.test", "remote_ip": "127.0.0.2", "tls": True,
        "delay": 91.25, "duration": 1.25}
    assert second.__dict__["result"] == "bounced"


async def test_a_plain_list_result_has_no_connection_details() -> None:
    clock = FakeClock(1_790_000_000.1239)
    seen: list[Attempt] = []
    rec = RecordingSender(_Answering(clock, [OK], 0.0), ProviderMap(), clock=clock,
                          default_source="", observers=[seen.append])
    current_message_id.set("")
    current_message.set(None)
    await rec.send("gmail.test", [_Target()], "s@example.com", ["r@gmail.test"],
                   b"Subject: x\r\n\r\n")
    (a,) = seen
    # The outcome names the MX that answered; nothing says its address or TLS.
    assert (a.mx_host, a.remote_ip, a.tls, a.reused) == ("mx1.gmail.test", "", False, False)
    assert (a.source_ip, a.dkim, a.received_at, a.delay_ms, a.configuration_set) == \
        ("default", [], 0.0, 0, "")
    # Cut to the millisecond, as the events' timestamps are: never after them.
    assert a.started_at == 1_790_000_000.123


async def test_a_failing_observer_never_changes_the_outcome() -> None:
    clock = FakeClock()

    def broken(_: Attempt) -> None:
        raise RuntimeError("observer down")

    rec = RecordingSender(_Answering(clock, [OK], 0.0), ProviderMap(), clock=clock,
                          observers=[broken])
    assert await rec.send("gmail.test", [_Target()], "s@x.test", ["r@gmail.test"],
                          b"") == [OK]


# --------------------------------------------------------------------------- simulator
def test_simulator_attempt_has_the_same_fields(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    seen: list[Attempt] = []
    sim = Simulator(clock=clock, observers=[seen.append])
    msg = MessageRecord("0190abcdef01aaaabbbb", "bounce@example.com",
                        ["success@simulator.relay.test", "bounce@simulator.relay.test"],
                        clock.now() - 2.5, 100, configuration_set="tx", tenant="acme")
    with caplog.at_level(logging.INFO, logger="relay.delivery"):
        sim.outcomes(msg, msg.recipients)
    ok, bad = seen
    assert (ok.recipient, ok.kind, bad.recipient, bad.kind) == (
        "success@simulator.relay.test", "delivered", "bounce@simulator.relay.test", "bounced")
    assert (ok.mx_host, ok.remote_ip, ok.tls, ok.reused, ok.source_ip, ok.provider) == \
        ("simulator", "", False, False, "simulator", "simulator")
    assert (ok.started_at, ok.received_at, ok.delay_ms, ok.duration_ms) == \
        (clock.now(), msg.received_at, 2500, 0)
    assert (ok.configuration_set, ok.tenant, ok.dkim) == ("tx", "acme", [])
    line = _lines(caplog)[0]
    assert "mx_host=simulator remote_ip=- tls=no delay=2.500 duration=0.000" in \
        line.getMessage()
    assert (line.__dict__["mx_host"], line.__dict__["remote_ip"], line.__dict__["tls"],
            line.__dict__["delay"]) == ("simulator", "", False, 2.5)
