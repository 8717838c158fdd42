"""The attempt details of real transactions: relay's SMTP client (relay/delivery/client.py)
below the attempt recorder, delivering to a STARTTLS sink on 127.0.0.2 (trustme): the MX
host and address that answered, TLS, the pooled connection of the second message, the
DKIM selectors of the data on the wire."""

from __future__ import annotations

import functools

import trustme

from relay.clock import SystemClock
from relay.delivery.attempts import Attempt, RecordingSender, current_message
from relay.delivery.client import Sender
from relay.queue.records import MessageRecord
from relay.testing.delivery import MakeSink, short_delivery
from relay.testing.delivery import StubTarget as T
from relay.testing.sink import Rules, server_tls
from relay.warmup.providers import ProviderMap

delivery = functools.partial(short_delivery, 5.0, 3.0)
DATA = (b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=sender.test;\r\n"
        b" s=relay1; h=from:to:subject; bh=x; b=y\r\n"
        b"From: a@sender.test\r\nTo: r@dest.test\r\nSubject: hi\r\n\r\nhello\r\n")


async def test_attempts_name_the_mx_its_address_tls_and_the_reused_connection(
        make_sink: MakeSink) -> None:
    ca = trustme.CA()
    sink = make_sink(tls_context=server_tls(ca, "mx.dest.test"),
                     policy=Rules(rcpt={"nobody": "550 5.1.1 no such user"}))
    clock = SystemClock()
    seen: list[Attempt] = []
    recorder = RecordingSender(Sender(delivery(), hostname="relay.test"), ProviderMap(),
                               clock=clock, observers=[seen.append])
    target = T("mx.dest.test", "127.0.0.2", sink.port)
    received = clock.now() - 5.0
    try:
        for i in range(2):
            current_message.set(MessageRecord(f"0190abcdef01000000{i:02d}", "s@sender.test",
                                              ["r@dest.test"], received, len(DATA)))
            before = clock.now()
            await recorder.send("dest.test", [target], "s@sender.test",
                                ["r@dest.test", "nobody@dest.test"], DATA)
            after = clock.now()
            assert before - 0.001 <= seen[-1].started_at <= after  # cut to the ms
            # Generous bounds: a loopback transaction on a loaded machine.
            assert 0 <= seen[-1].duration_ms <= (after - before) * 1000 + 1
            assert seen[-1].delay_ms >= 5000
    finally:
        await recorder.close()
    first, refused, second, _ = seen
    assert (first.kind, refused.kind, second.kind) == ("delivered", "bounced", "delivered")
    assert refused.response == "550 5.1.1 no such user"
    for a in seen:
        assert (a.mx_host, a.remote_ip, a.tls) == ("mx.dest.test", "127.0.0.2", True)
        assert a.dkim == ["d=sender.test s=relay1"]
    assert (first.reused, second.reused) == (False, True)
    assert sink.connections == 1 and all(m.tls for m in sink.messages)
