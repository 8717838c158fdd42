"""relay.delivery.client.Sender against real Sinks on 127.0.0.x (real sockets, trustme TLS)."""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl

import pytest
import trustme

from relay.clock import FakeClock
from relay.config import Duration
from relay.delivery.client import Sender
from relay.delivery.client import Target as ClientTarget
from relay.delivery.scheduler import SenderLike
from relay.dns.route import Target as RouteTarget
from relay.testing.delivery import BODY, MakeSink, short_delivery
from relay.testing.delivery import StubTarget as T
from relay.testing.sink import Rules, server_tls

delivery = functools.partial(short_delivery, 5.0, 3.0)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def free_port(host: str) -> int:
    """A port with nothing listening on `host` (bound then released)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def test_delivered_250(make_sink: MakeSink) -> None:
    sink = make_sink()
    sender = Sender(delivery(), hostname="relay.example.test")
    try:
        res = await sender.send("dest.test", [T("mx1.dest.test", "127.0.0.2", sink.port)],
                                "bounce@sender.test", ["r@dest.test"], BODY)
    finally:
        await sender.close()
    (out,) = res.outcomes
    assert (out.kind, out.code, out.enhanced) == ("delivered", 250, "2.0.0")
    assert out.remote_mta == res.remote_mta == "mx1.dest.test"
    assert res.address == "127.0.0.2" and res.tls is False and res.reused is False
    (m,) = sink.messages
    assert (m.mail_from, m.rcpt_tos, m.data) == ("bounce@sender.test", ["r@dest.test"], BODY)
    assert m.ehlo == "relay.example.test"


async def test_rcpt_550_for_one_recipient_others_delivered_in_one_transaction(
        make_sink: MakeSink) -> None:
    sink = make_sink(policy=Rules(rcpt={"nouser": "550 5.1.1 no such user"}))
    sender = Sender(delivery(), hostname="relay.test")
    rcpts = ["a@dest.test", "nouser@dest.test", "b@dest.test"]
    res = await sender.send("dest.test", [T("mx", "127.0.0.2", sink.port)], "s@x.test",
                            rcpts, BODY)
    await sender.close()
    by = res.by_recipient()
    assert by["a@dest.test"].kind == by["b@dest.test"].kind == "delivered"
    bad = by["nouser@dest.test"]
    assert (bad.kind, bad.code, bad.enhanced, bad.text) == (
        "bounced", 550, "5.1.1", "no such user")
    (m,) = sink.messages
    assert m.rcpt_tos == ["a@dest.test", "b@dest.test"]


async def test_451_at_data_defers_all_accepted(make_sink: MakeSink) -> None:
    sink = make_sink(policy=Rules(rcpt={"gone": "550 5.1.1 gone"},
                                  data="451 4.3.0 try again later"))
    sender = Sender(delivery(), hostname="relay.test")
    res = await sender.send("dest.test", [T("mx", "127.0.0.2", sink.port)], "s@x.test",
                            ["a@dest.test", "gone@dest.test", "b@dest.test"], BODY)
    await sender.close()
    kinds = [(o.kind, o.code, o.enhanced) for o in res.outcomes]
    assert kinds == [("deferred", 451, "4.3.0"), ("bounced", 550, "5.1.1"),
                     ("deferred", 451, "4.3.0")]
    assert sink.messages == []


async def test_all_recipients_refused_sends_rset_not_data_and_keeps_connection(
        make_sink: MakeSink) -> None:
    sink = make_sink(policy=Rules(rcpt={"x": "550 5.1.1 no", "y": "452 4.2.2 full"}))
    sender = Sender(delivery(), hostname="relay.test")
    t = [T("mx", "127.0.0.2", sink.port)]
    res = await sender.send("dest.test", t, "s@x.test", ["x@dest.test", "y@dest.test"], BODY)
    assert [(o.kind, o.code) for o in res.outcomes] == [("bounced", 550), ("deferred", 452)]
    assert sink.messages == []
    assert sender.idle_connections("dest.test") == 1
    res2 = await sender.send("dest.test", t, "s@x.test", ["ok@dest.test"], BODY)
    await sender.close()
    assert res2.reused and res2.outcomes[0].kind == "delivered"
    assert sink.connections == 1 and len(sink.messages) == 1


async def test_connection_refused_moves_to_next_target(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2")
    dead = T("mx1.dest.test", "127.0.0.3", free_port("127.0.0.3"), 10)
    live = T("mx2.dest.test", "127.0.0.2", sink.port, 20)
    sender = Sender(delivery(), hostname="relay.test")
    res = await sender.send("dest.test", [dead, live], "s@x.test", ["r@dest.test"], BODY)
    await sender.close()
    assert res.outcomes[0].kind == "delivered"
    assert res.remote_mta == "mx2.dest.test"
    assert len(sink.messages) == 1


async def test_all_targets_refused_is_deferred_441() -> None:
    sender = Sender(delivery(), hostname="relay.test")
    targets = [T("mx1", "127.0.0.3", free_port("127.0.0.3")),
               T("mx2", "127.0.0.4", free_port("127.0.0.4"))]
    res = await sender.send("dest.test", targets, "s@x.test", ["r@dest.test", "q@dest.test"],
                            BODY)
    await sender.close()
    for o in res.outcomes:
        assert (o.kind, o.code, o.enhanced) == ("deferred", 451, "4.4.1")
        assert "connection refused by mx2" in o.text
    assert res.remote_mta == ""


async def test_no_targets_is_deferred() -> None:
    sender = Sender(delivery(), hostname="relay.test")
    res = await sender.send("dest.test", [], "s@x.test", ["r@dest.test"], BODY)
    assert res.outcomes[0].kind == "deferred"


async def test_4xx_and_5xx_at_ehlo_move_to_next_target(make_sink: MakeSink) -> None:
    busy = make_sink("127.0.0.2", policy=Rules(ehlo="450 4.3.2 busy"))
    grumpy = make_sink("127.0.0.3", busy.port, policy=Rules(ehlo="554 5.7.1 go away"))
    good = make_sink("127.0.0.4", busy.port)
    # Three sessions: more than delivery.mx_session_limit's default of 2.
    sender = Sender(delivery(mx_session_limit=3), hostname="relay.test")
    res = await sender.send("d", [T("a", "127.0.0.2", busy.port), T("b", "127.0.0.3", busy.port),
                                  T("c", "127.0.0.4", busy.port)], "s@x.test", ["r@d"], BODY)
    assert res.outcomes[0].kind == "delivered" and res.remote_mta == "c"
    # Without a good host left, a 5xx greeting/EHLO defers (smtp_skip_5xx_greeting) rather
    # than bouncing the message.
    res2 = await sender.send("e", [T("b", "127.0.0.3", busy.port)], "s@x.test", ["r@e"], BODY)
    await sender.close()
    o = res2.outcomes[0]
    assert (o.kind, o.code, o.enhanced) == ("deferred", 451, "4.7.1")
    assert "554" in o.text and "go away" in o.text
    assert busy.messages == grumpy.messages == [] and len(good.messages) == 1


async def test_opportunistic_starttls_used_when_offered(make_sink: MakeSink,
                                                        ca: trustme.CA) -> None:
    sink = make_sink(tls_context=server_tls(ca, "mx.dest.test"))
    sender = Sender(delivery(), hostname="relay.test")  # self-signed-ish: not verified
    res = await sender.send("dest.test", [T("mx.dest.test", "127.0.0.2", sink.port)], "s@x.test",
                            ["r@dest.test"], BODY)
    await sender.close()
    assert res.outcomes[0].kind == "delivered" and res.tls is True
    assert sink.messages[0].tls is True


async def test_require_without_starttls_defers_475_and_sends_nothing(
        make_sink: MakeSink) -> None:
    sink = make_sink()
    sender = Sender(delivery(tls="require"), hostname="relay.test")
    res = await sender.send("dest.test", [T("mx", "127.0.0.2", sink.port)], "s@x.test",
                            ["r@dest.test"], BODY)
    await sender.close()
    o = res.outcomes[0]
    assert (o.kind, o.code, o.enhanced) == ("deferred", 451, "4.7.5")
    assert "TLS required but not available" in o.text
    assert sink.messages == []


async def test_a_configuration_sets_opportunistic_never_weakens_a_global_require(
        make_sink: MakeSink) -> None:
    """delivery.tls = "require" is the operator's floor: a configuration set saying
    "opportunistic" (a sender's choice) still gets no plain-text delivery."""
    sink = make_sink()
    sender = Sender(delivery(tls="require"), hostname="relay.test")
    res = await sender.send("dest.test", [T("mx", "127.0.0.2", sink.port)], "s@x.test",
                            ["r@dest.test"], BODY, tls="opportunistic")
    await sender.close()
    o = res.outcomes[0]
    assert (o.kind, o.code, o.enhanced) == ("deferred", 451, "4.7.5")
    assert sink.messages == []


async def test_require_with_verified_certificate(make_sink: MakeSink, ca: trustme.CA) -> None:
    plain = make_sink("127.0.0.2")
    tls = make_sink("127.0.0.3", plain.port, tls_context=server_tls(ca, "mx2.dest.test"))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    sender = Sender(delivery(tls="require", verify_certificates=True), hostname="relay.test",
                    tls_context=client_ctx)
    targets = [T("mx1.dest.test", "127.0.0.2", plain.port),
               T("mx2.dest.test", "127.0.0.3", plain.port)]
    res = await sender.send("dest.test", targets, "s@x.test", ["r@dest.test"], BODY)
    # A certificate for another name fails verification: deferred, nothing sent.
    bad = await sender.send("other.test", [T("wrong.name.test", "127.0.0.3", plain.port)],
                            "s@x.test", ["r@other.test"], BODY)
    await sender.close()
    assert res.outcomes[0].kind == "delivered" and res.tls and res.remote_mta == "mx2.dest.test"
    assert plain.messages == [] and len(tls.messages) == 1 and tls.messages[0].tls
    assert (bad.outcomes[0].kind, bad.outcomes[0].enhanced) == ("deferred", "4.7.5")
    assert len(tls.messages) == 1


def _tls13_only(ca: trustme.CA) -> ssl.SSLContext:
    ctx = server_tls(ca, "mx.dest.test")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def _tls12_client() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def test_opportunistic_handshake_failure_retries_in_plaintext(
        make_sink: MakeSink, ca: trustme.CA) -> None:
    sink = make_sink(tls_context=_tls13_only(ca))
    sender = Sender(delivery(), hostname="relay.test", tls_context=_tls12_client())
    res = await sender.send("dest.test", [T("mx.dest.test", "127.0.0.2", sink.port)], "s@x.test",
                            ["r@dest.test"], BODY)
    await sender.close()
    assert res.outcomes[0].kind == "delivered" and res.tls is False
    assert sink.connections == 2
    assert [m.tls for m in sink.messages] == [False]


async def test_require_handshake_failure_never_sends_plaintext(
        make_sink: MakeSink, ca: trustme.CA) -> None:
    sink = make_sink(tls_context=_tls13_only(ca))
    sender = Sender(delivery(tls="require"), hostname="relay.test", tls_context=_tls12_client())
    res = await sender.send("dest.test", [T("mx.dest.test", "127.0.0.2", sink.port)], "s@x.test",
                            ["r@dest.test"], BODY)
    await sender.close()
    o = res.outcomes[0]
    assert (o.kind, o.code, o.enhanced) == ("deferred", 451, "4.7.5")
    assert sink.messages == [] and sink.connections == 1


async def test_source_address_is_bound(make_sink: MakeSink) -> None:
    sink = make_sink("127.0.0.2")
    sender = Sender(delivery(source_address="127.0.0.10"), hostname="relay.test")
    t = [T("mx", "127.0.0.2", sink.port)]
    await sender.send("dest.test", t, "s@x.test", ["r@dest.test"], BODY)
    # a per-send source overrides the configured one and gets its own pooled connection
    await sender.send("dest.test", t, "s@x.test", ["r@dest.test"], BODY,
                      source_address="127.0.0.11")
    await sender.close()
    assert [m.peer for m in sink.messages] == ["127.0.0.10", "127.0.0.11"]
    assert sink.connection_peers == ["127.0.0.10", "127.0.0.11"]


async def test_connection_reuse_five_sends_one_connection(make_sink: MakeSink) -> None:
    sink = make_sink()
    sender = Sender(delivery(), hostname="relay.test")
    t = [T("mx", "127.0.0.2", sink.port)]
    results = [await sender.send("dest.test", t, "s@x.test", [f"r{i}@dest.test"], BODY)
               for i in range(5)]
    assert [r.reused for r in results] == [False, True, True, True, True]
    assert all(r.outcomes[0].kind == "delivered" for r in results)
    assert sink.connections == 1 and len(sink.messages) == 5
    assert sender.idle_connections() == 1
    await sender.close()
    assert sender.idle_connections() == 0


async def test_max_messages_per_connection(make_sink: MakeSink) -> None:
    sink = make_sink()
    sender = Sender(delivery(max_messages_per_connection=2), hostname="relay.test")
    t = [T("mx", "127.0.0.2", sink.port)]
    for i in range(5):
        await sender.send("dest.test", t, "s@x.test", [f"r{i}@dest.test"], BODY)
    await sender.close()
    assert len(sink.messages) == 5 and sink.connections == 3


async def test_idle_connection_timeout_on_clock(make_sink: MakeSink) -> None:
    sink = make_sink()
    clock = FakeClock()
    sender = Sender(delivery(idle_connection_timeout=Duration(10)), hostname="relay.test",
                    clock=clock)
    t = [T("mx", "127.0.0.2", sink.port)]
    await sender.send("dest.test", t, "s@x.test", ["a@dest.test"], BODY)
    clock.advance(5)
    r2 = await sender.send("dest.test", t, "s@x.test", ["b@dest.test"], BODY)
    assert r2.reused and sink.connections == 1
    clock.advance(11)
    assert await sender.reap() == 1 and sender.idle_connections() == 0
    r3 = await sender.send("dest.test", t, "s@x.test", ["c@dest.test"], BODY)
    await sender.close()
    assert not r3.reused and sink.connections == 2


async def test_dead_pooled_connection_is_replaced(make_sink: MakeSink) -> None:
    first = make_sink()
    port = first.port
    sender = Sender(delivery(), hostname="relay.test")
    t = [T("mx", "127.0.0.2", port)]
    await sender.send("dest.test", t, "s@x.test", ["a@dest.test"], BODY)
    first.stop()  # the server goes away under the idle connection
    second = make_sink("127.0.0.2", port)
    res = await sender.send("dest.test", t, "s@x.test", ["b@dest.test"], BODY)
    await sender.close()
    assert res.outcomes[0].kind == "delivered" and not res.reused
    assert len(second.messages) == 1


async def test_dot_stuffing_and_crlf_on_the_wire(make_sink: MakeSink) -> None:
    sink = make_sink()
    sender = Sender(delivery(), hostname="relay.test")
    body = (b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nmiddle\n.\n"
            b"bare lf\nbare cr\rend .\r\n")
    res = await sender.send("dest.test", [T("mx", "127.0.0.2", sink.port)], "s@x.test",
                            ["r@dest.test"], body)
    await sender.close()
    assert res.outcomes[0].kind == "delivered"
    got = sink.messages[0].data
    assert got == (b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nmiddle\r\n.\r\n"
                   b"bare lf\r\nbare cr\r\nend .\r\n")
    # every LF preceded by CR and every CR followed by LF (no outbound smuggling)
    assert got.count(b"\n") == got.count(b"\r\n") == got.count(b"\r")


async def test_crlf_in_address_is_bounced_501_and_never_reaches_the_wire(
        make_sink: MakeSink) -> None:
    sink = make_sink()
    sender = Sender(delivery(), hostname="relay.test")
    evil = "a@x.test>\r\nRCPT TO:<victim@y.test"
    res = await sender.send("dest.test", [T("mx", "127.0.0.2", sink.port)], "s@x.test",
                            [evil, "ok@dest.test"], BODY)
    bad_sender = await sender.send("dest.test", [T("mx", "127.0.0.2", sink.port)],
                                   "s@x.test\r\nRSET", ["ok@dest.test"], BODY)
    await sender.close()
    o = res.outcomes[0]
    assert (o.kind, o.code, o.enhanced, o.text) == ("bounced", 501, "5.1.3", "invalid address")
    assert res.outcomes[1].kind == "delivered"
    assert (bad_sender.outcomes[0].code, bad_sender.outcomes[0].enhanced) == (501, "5.1.3")
    assert [m.rcpt_tos for m in sink.messages] == [["ok@dest.test"]]


async def test_data_delay_beyond_data_timeout_is_deferred_447(make_sink: MakeSink) -> None:
    sink = make_sink(policy=Rules(delay=1.0))
    sender = Sender(delivery(data_timeout=Duration(0.3)), hostname="relay.test")
    res = await sender.send("dest.test", [T("mx", "127.0.0.2", sink.port)], "s@x.test",
                            ["r@dest.test"], BODY)
    await sender.close()
    o = res.outcomes[0]
    assert (o.kind, o.code, o.enhanced) == ("deferred", 451, "4.4.7")
    assert sender.idle_connections() == 0


async def test_routing_targets_and_scheduler_protocol(make_sink: MakeSink) -> None:
    """The routing Target and the scheduler's SenderLike fit the client (checked by mypy too)."""
    sink = make_sink()
    target: ClientTarget = RouteTarget("mx.dest.test", "127.0.0.2", sink.port, 10)
    sender: SenderLike = Sender(delivery(), hostname="relay.test")
    res = await sender.send("dest.test", [target], "s@x.test", ("a@dest.test", "b@dest.test"),
                            BODY)
    assert isinstance(sender, Sender)
    await sender.close()
    assert [o.kind for o in res.outcomes] == ["delivered", "delivered"]


async def test_concurrent_sends_use_separate_connections_then_pool(make_sink: MakeSink) -> None:
    sink = make_sink()
    sender = Sender(delivery(max_connections_per_destination=3), hostname="relay.test")
    t = [T("mx", "127.0.0.2", sink.port)]
    results = await asyncio.gather(*(
        sender.send("dest.test", t, "s@x.test", [f"r{i}@dest.test"], BODY) for i in range(5)))
    assert all(r.outcomes[0].kind == "delivered" for r in results)
    assert sink.connections == 5
    assert sender.idle_connections("dest.test") == 3  # the rest were closed, not pooled
    more = await asyncio.gather(*(
        sender.send("dest.test", t, "s@x.test", [f"q{i}@dest.test"], BODY) for i in range(3)))
    await sender.close()
    assert all(r.reused for r in more) and sink.connections == 5
    assert len(sink.messages) == 8
