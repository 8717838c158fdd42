"""relay.delivery.client.Sender: PIPELINING (RFC 2920) and connection reuse without RSET.

Real sockets on loopback: relay.testing.sink.Sink (aiosmtpd, one reply per write) with
`pipelining=True, record_wire=True`, and `ScriptedMX` below, a small server in the test's
own loop that answers a whole pipelined group in one write and can misbehave on cue
(421 mid-group, 354 with no recipient, hang up after MAIL, die while pooled).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from relay.config import Duration
from relay.delivery.client import Sender
from relay.testing.delivery import BODY, short_delivery
from relay.testing.delivery import StubTarget as T
from relay.testing.sink import Rules, Sink

delivery = functools.partial(short_delivery, 3.0)


MakeSink = Callable[..., Sink]


@pytest.fixture
def make_sink() -> Iterator[MakeSink]:
    sinks: list[Sink] = []

    def make(*, pipelining: bool = True, **kw: Any) -> Sink:
        s = Sink("127.0.0.2", 0, pipelining=pipelining, record_wire=True, **kw).start()
        sinks.append(s)
        return s

    yield make
    for s in sinks:
        s.stop()


def group_chunks(sink: Sink) -> list[bytes]:
    """The chunks that carried a MAIL command."""
    return [c.data for c in sink.wire if b"MAIL FROM:" in c.data]


# ---------------------------------------------------------------------------- ScriptedMX

CLOSE = b"<close>"  # a script answer: hang up (after the replies already due)
SILENT = b"<silent>"  # a script answer: say nothing


@dataclass
class Conn:
    index: int
    transactions: int = 0   # messages ended with "." on this connection
    mail: bool = False
    rcpts: int = 0


# script(conn, command line without CRLF) -> reply bytes (without CRLF), CLOSE, SILENT or None
# for the default: 250 to everything, 354 to DATA only with a recipient (else 554).
Script = Callable[[Conn, bytes], bytes | None]


@dataclass
class ScriptedMX:
    script: Script = lambda conn, line: None
    extensions: tuple[bytes, ...] = (b"PIPELINING", b"8BITMIME", b"SIZE 10000000")
    chunks: list[tuple[int, bytes]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)   # what came after each 354
    connections: int = 0
    transports: list[asyncio.Transport] = field(default_factory=list)
    port: int = 0
    server: asyncio.Server | None = None

    async def start(self) -> ScriptedMX:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _MX(self), "127.0.0.2", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def received(self, connection: int | None = None) -> bytes:
        return b"".join(d for i, d in self.chunks if connection is None or i == connection)


class _MX(asyncio.Protocol):
    def __init__(self, mx: ScriptedMX) -> None:
        self.mx = mx
        self.conn = Conn(mx.connections)
        mx.connections += 1
        self.buf = b""
        self.in_data = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.mx.transports.append(transport)
        transport.write(b"220 scripted ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.mx.chunks.append((self.conn.index, data))
        self.buf += data
        out: list[bytes] = []
        close = False
        while not close:
            if self.in_data:
                if self.buf.startswith(b".\r\n"):
                    body, self.buf = b"", self.buf[3:]
                else:
                    end = self.buf.find(b"\r\n.\r\n")
                    if end < 0:
                        break
                    body, self.buf = self.buf[:end + 2], self.buf[end + 5:]
                self.in_data = False
                self.mx.bodies.append(body)
                self.conn.transactions += 1
                self.conn.mail, self.conn.rcpts = False, 0
                out.append(b"250 2.0.0 queued")
                continue
            end = self.buf.find(b"\r\n")
            if end < 0:
                break
            line, self.buf = self.buf[:end], self.buf[end + 2:]
            verb = line[:4].upper()
            reply = self.mx.script(self.conn, line)
            if reply is None:
                reply = self.default(verb)
            if reply == CLOSE:
                close = True
                break
            if reply != SILENT:
                out.append(reply)
            if verb == b"MAIL" and reply.startswith(b"2"):
                self.conn.mail = True
            elif verb == b"RCPT" and reply.startswith(b"2"):
                self.conn.rcpts += 1
            elif verb == b"RSET":
                self.conn.mail, self.conn.rcpts = False, 0
            elif verb == b"DATA":
                self.in_data = reply.startswith(b"354")
            elif verb == b"QUIT":
                close = True
        if out:
            self.transport.write(b"".join(x + b"\r\n" for x in out))  # one write per group
        if close:
            self.transport.close()

    def default(self, verb: bytes) -> bytes:
        if verb in (b"EHLO", b"HELO"):
            lines = [b"scripted", *self.mx.extensions]
            return b"\r\n".join(
                (b"250 " if i == len(lines) - 1 else b"250-") + x for i, x in enumerate(lines))
        if verb == b"DATA":
            return b"354 go on" if self.conn.rcpts else b"554 5.5.1 no valid recipients"
        if verb == b"QUIT":
            return b"221 bye"
        return b"250 2.0.0 ok"


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Any]]:
    servers: list[ScriptedMX] = []

    async def make(script: Script = lambda conn, line: None, **kw: Any) -> ScriptedMX:
        mx = await ScriptedMX(script, **kw).start()
        servers.append(mx)
        return mx

    yield make
    for mx in servers:
        await mx.close()


async def send(sender: Sender, port: int, rcpts: list[str], body: bytes = BODY,
               mail_from: str = "s@x.test") -> Any:
    return await sender.send("dest.test", [T("mx.dest.test", "127.0.0.2", port)],
                             mail_from, rcpts, body)


def codes(res: Any) -> list[tuple[str, int, str]]:
    return [(o.kind, o.code, o.enhanced) for o in res.outcomes]


# ---------------------------------------------------------------------------- the group


async def test_group_in_one_write_and_replies_map_to_recipients(make_sink: MakeSink) -> None:
    sink = make_sink(policy=Rules(rcpt={"nouser": "550 5.1.1 no such user",
                                        "full": "452 4.2.2 mailbox full"}))
    sender = Sender(delivery(), hostname="relay.test")
    rcpts = ["a@dest.test", "nouser@dest.test", "b@dest.test", "full@dest.test"]
    try:
        res = await send(sender, sink.port, rcpts)
    finally:
        await sender.close()
    assert codes(res) == [("delivered", 250, "2.0.0"), ("bounced", 550, "5.1.1"),
                          ("delivered", 250, "2.0.0"), ("deferred", 452, "4.2.2")]
    assert res.by_recipient()["nouser@dest.test"].text == "no such user"
    (group,) = group_chunks(sink)
    assert group == (b"MAIL FROM:<s@x.test> SIZE=%d\r\n" % len(BODY)
                     + b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts)
                     + b"DATA\r\n")
    (m,) = sink.messages
    assert m.rcpt_tos == ["a@dest.test", "b@dest.test"] and m.data == BODY


async def test_replies_answered_in_one_write_too(scripted: Callable[..., Any]) -> None:
    def script(conn: Conn, line: bytes) -> bytes | None:
        return b"550 5.1.1 unknown" if line.startswith(b"RCPT TO:<x@") else None

    mx = await scripted(script)
    sender = Sender(delivery(), hostname="relay.test")
    try:
        res = await send(sender, mx.port, ["x@dest.test", "y@dest.test"])
    finally:
        await sender.close()
    assert codes(res) == [("bounced", 550, "5.1.1"), ("delivered", 250, "2.0.0")]
    assert mx.bodies == [BODY]


async def test_all_recipients_refused_data_554_no_body(scripted: Callable[..., Any]) -> None:
    mx = await scripted(lambda conn, line: b"550 5.1.1 unknown"
                        if line.startswith(b"RCPT") else None)
    sender = Sender(delivery(), hostname="relay.test")
    try:
        res = await send(sender, mx.port, ["x@dest.test", "y@dest.test"])
        assert codes(res) == [("bounced", 550, "5.1.1")] * 2
        assert mx.bodies == [] and b"hello" not in mx.received()
        assert sender.idle_connections() == 1
        mx.script = lambda conn, line: None
        again = await send(sender, mx.port, ["z@dest.test"])
    finally:
        await sender.close()
    # The server still held MAIL: the next transaction on it starts with RSET.
    assert again.reused and codes(again) == [("delivered", 250, "2.0.0")]
    assert mx.connections == 1 and mx.bodies == [BODY]
    assert mx.received().count(b"RSET\r\n") == 1


async def test_all_recipients_refused_at_aiosmtpd_503(make_sink: MakeSink) -> None:
    sink = make_sink(policy=Rules(rcpt={"x": "550 5.1.1 no", "y": "452 4.2.2 full"}))
    sender = Sender(delivery(), hostname="relay.test")
    try:
        res = await send(sender, sink.port, ["x@dest.test", "y@dest.test"])
        again = await send(sender, sink.port, ["ok@dest.test"])
    finally:
        await sender.close()
    assert codes(res) == [("bounced", 550, "5.1.1"), ("deferred", 452, "4.2.2")]
    assert again.reused and codes(again) == [("delivered", 250, "2.0.0")]
    assert sink.connections == 1 and len(sink.messages) == 1
    assert b"".join(c.data for c in sink.wire).count(b"hello") == 1  # no body the first time


async def test_broken_354_with_no_recipient_gets_only_the_dot(
        scripted: Callable[..., Any]) -> None:
    def script(conn: Conn, line: bytes) -> bytes | None:
        if line.startswith(b"RCPT"):
            return b"550 5.1.1 unknown"
        if line == b"DATA":
            return b"354 whatever"  # broken: nothing was accepted
        return None

    mx = await scripted(script)
    sender = Sender(delivery(), hostname="relay.test")
    try:
        res = await send(sender, mx.port, ["x@dest.test", "y@dest.test"])
        assert sender.idle_connections() == 1  # the transaction ended cleanly
        mx.script = lambda conn, line: None
        again = await send(sender, mx.port, ["z@dest.test"])
    finally:
        await sender.close()
    assert codes(res) == [("bounced", 550, "5.1.1")] * 2
    assert mx.bodies[0] == b""  # the lone "."
    assert mx.received(0).split(b"DATA\r\n", 1)[1].startswith(b".\r\nMAIL FROM:")
    assert again.reused and codes(again) == [("delivered", 250, "2.0.0")]
    assert mx.bodies == [b"", BODY] and b"RSET" not in mx.received()


async def test_mail_refused_fails_every_recipient(make_sink: MakeSink) -> None:
    sink = make_sink(policy=Rules(mail="550 5.7.1 sender blocked"))
    sender = Sender(delivery(), hostname="relay.test")
    try:
        res = await send(sender, sink.port, ["a@dest.test", "b@dest.test"])
        sink.policy = None
        again = await send(sender, sink.port, ["c@dest.test"])
    finally:
        await sender.close()
    assert codes(res) == [("bounced", 550, "5.7.1")] * 2
    assert {o.text for o in res.outcomes} == {"sender blocked"}
    # MAIL refused leaves nothing to reset: the next one goes straight to MAIL.
    assert again.reused and codes(again) == [("delivered", 250, "2.0.0")]
    assert sink.commands("RSET") == [] and len(sink.messages) == 1


async def test_421_mid_group(scripted: Callable[..., Any]) -> None:
    def script(conn: Conn, line: bytes) -> bytes | None:
        if line.startswith(b"RCPT TO:<b@"):
            return b"421 4.3.2 going down"
        if line.startswith(b"RCPT TO:<c@") or line == b"DATA":
            return CLOSE
        return b"550 5.1.1 unknown" if line.startswith(b"RCPT TO:<x@") else None

    mx = await scripted(script)
    sender = Sender(delivery(), hostname="relay.test")
    try:
        res = await asyncio.wait_for(
            send(sender, mx.port, ["a@dest.test", "x@dest.test", "b@dest.test", "c@dest.test"]),
            10)
        assert sender.idle_connections() == 0
    finally:
        await sender.close()
    assert codes(res) == [("deferred", 421, "4.3.2"), ("bounced", 550, "5.1.1"),
                          ("deferred", 421, "4.3.2"), ("deferred", 421, "4.3.2")]
    assert mx.bodies == [] and mx.connections == 1


async def test_disconnect_after_mail_is_dropped_not_retried(
        scripted: Callable[..., Any]) -> None:
    mx = await scripted(lambda conn, line: CLOSE if line.startswith(b"RCPT") else None)
    sender = Sender(delivery(), hostname="relay.test")
    try:
        res = await send(sender, mx.port, ["a@dest.test", "b@dest.test"])
        assert sender.idle_connections() == 0
    finally:
        await sender.close()
    assert codes(res) == [("deferred", 451, "4.4.2")] * 2
    assert "dropped" in res.outcomes[0].text
    assert mx.connections == 1 and mx.bodies == []


async def test_timeout_waiting_for_a_reply(scripted: Callable[..., Any]) -> None:
    # Answers MAIL, then says nothing: the replies never come.
    mx = await scripted(lambda conn, line: SILENT if line.startswith((b"RCPT", b"DATA"))
                        else None)
    sender = Sender(delivery(command_timeout=Duration(0.3)), hostname="relay.test")
    try:
        res = await send(sender, mx.port, ["a@dest.test"])
        assert sender.idle_connections() == 0
    finally:
        await sender.close()
    assert codes(res) == [("deferred", 451, "4.4.7")]
    assert mx.connections == 1 and mx.bodies == []


async def test_final_reply_refused_is_clean_no_rset_after(make_sink: MakeSink) -> None:
    sink = make_sink(policy=Rules(temp_fail_next=1))
    sender = Sender(delivery(), hostname="relay.test")
    try:
        first = await send(sender, sink.port, ["a@dest.test", "b@dest.test"])
        second = await send(sender, sink.port, ["a@dest.test"])
    finally:
        await sender.close()
    assert codes(first) == [("deferred", 451, "4.3.0")] * 2
    assert second.reused and codes(second) == [("delivered", 250, "2.0.0")]
    assert sink.commands("RSET") == [] and sink.connections == 1


async def test_data_refused_with_recipients_resets_before_next(
        scripted: Callable[..., Any]) -> None:
    mx = await scripted(lambda conn, line: b"451 4.3.1 queue full" if line == b"DATA" else None)
    sender = Sender(delivery(), hostname="relay.test")
    try:
        res = await send(sender, mx.port, ["a@dest.test"])
        mx.script = lambda conn, line: None
        again = await send(sender, mx.port, ["b@dest.test"])
    finally:
        await sender.close()
    assert codes(res) == [("deferred", 451, "4.3.1")]
    assert again.reused and codes(again) == [("delivered", 250, "2.0.0")]
    assert mx.received().count(b"RSET\r\n") == 1 and mx.bodies == [BODY]


# ---------------------------------------------------------------------------- serial path


async def test_server_without_pipelining_gets_one_command_at_a_time(
        make_sink: MakeSink) -> None:
    sink = make_sink(pipelining=False, policy=Rules(rcpt={"nouser": "550 5.1.1 no"}))
    sender = Sender(delivery(), hostname="relay.test")
    try:
        res = await send(sender, sink.port, ["a@dest.test", "nouser@dest.test"])
    finally:
        await sender.close()
    assert codes(res) == [("delivered", 250, "2.0.0"), ("bounced", 550, "5.1.1")]
    (mail,) = group_chunks(sink)
    assert mail == b"MAIL FROM:<s@x.test> SIZE=%d\r\n" % len(BODY)  # alone in its write
    assert [c.data for c in sink.wire if c.data.startswith(b"RCPT")] == [
        b"RCPT TO:<a@dest.test>\r\n", b"RCPT TO:<nouser@dest.test>\r\n"]
    assert [m.rcpt_tos for m in sink.messages] == [["a@dest.test"]]


@pytest.mark.parametrize("pipelining", [True, False])
async def test_reuse_sends_no_rset(make_sink: MakeSink, pipelining: bool) -> None:
    sink = make_sink(pipelining=pipelining)
    sender = Sender(delivery(), hostname="relay.test")
    try:
        results = [await send(sender, sink.port, [f"r{i}@dest.test"]) for i in range(8)]
    finally:
        await sender.close()
    assert [r.reused for r in results] == [False] + [True] * 7
    assert all(codes(r) == [("delivered", 250, "2.0.0")] for r in results)
    assert sink.connections == 1 and len(sink.messages) == 8
    assert sink.commands("RSET") == []
    assert len(sink.commands("MAIL")) == 8


# ---------------------------------------------------------------------------- content


async def test_dot_stuffing_and_bare_lf_on_the_pipelined_path(make_sink: MakeSink) -> None:
    sink = make_sink()
    sender = Sender(delivery(), hostname="relay.test")
    body = (b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nmiddle\n.\n"
            b"bare lf\nbare cr\rend .\n.\r\nRSET\r\n\n.\r\n")
    try:
        res = await send(sender, sink.port, ["r@dest.test"], body)
    finally:
        await sender.close()
    assert codes(res) == [("delivered", 250, "2.0.0")]
    (m,) = sink.messages
    assert m.data == (b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nmiddle\r\n"
                      b".\r\nbare lf\r\nbare cr\r\nend .\r\n.\r\nRSET\r\n\r\n.\r\n")
    wire = b"".join(c.data for c in sink.wire)
    sent = wire.split(b"DATA\r\n", 1)[1]
    # No outbound smuggling: only CRLF line endings, and exactly one end of data.
    assert sent.count(b"\n") == sent.count(b"\r\n") == sent.count(b"\r")
    assert sent.count(b"\r\n.\r\n") == 1
    assert len(sink.messages) == 1


async def test_esmtp_parameters_on_the_pipelined_path(make_sink: MakeSink) -> None:
    sink = make_sink()
    sender = Sender(delivery(), hostname="relay.test")
    body = "Subject: caf\u00e9\r\n\r\nd\u00e9j\u00e0 vu\r\n".encode()
    try:
        res = await send(sender, sink.port, ["j\u00fcrgen@dest.test"], body,
                         mail_from="s\u00e9@x.test")
    finally:
        await sender.close()
    assert codes(res) == [("delivered", 250, "2.0.0")]
    (group,) = group_chunks(sink)
    assert group == (f"MAIL FROM:<s\u00e9@x.test> SIZE={len(body)} BODY=8BITMIME SMTPUTF8\r\n"
                     "RCPT TO:<j\u00fcrgen@dest.test>\r\nDATA\r\n").encode()
    assert sink.messages[0].data == body


async def test_invalid_addresses_never_reach_the_wire(scripted: Callable[..., Any]) -> None:
    # No SMTPUTF8 offered: a non-ASCII recipient cannot be written (ValueError, as
    # aiosmtplib's rcpt() refuses it) and a CR/LF one is refused before anything (CR/LF injection).
    mx = await scripted()
    sender = Sender(delivery(), hostname="relay.test")
    try:
        res = await send(sender, mx.port, ["\u00fc@dest.test", "ok@dest.test",
                                           "a@x.test>\r\nRCPT TO:<victim@y.test"])
        bad_from = await send(sender, mx.port, ["ok@dest.test"], mail_from="s\u00e9@x.test")
    finally:
        await sender.close()
    assert codes(res) == [("bounced", 501, "5.1.3"), ("delivered", 250, "2.0.0"),
                          ("bounced", 501, "5.1.3")]
    assert codes(bad_from) == [("bounced", 501, "5.1.3")]
    wire = mx.received()
    assert b"victim" not in wire and "\u00fc".encode() not in wire
    assert wire.count(b"RCPT TO:") == 1 and mx.bodies == [BODY]


# ---------------------------------------------------------------------------- dead pooled


@pytest.mark.parametrize("settle", [True, False])
async def test_pooled_connection_closed_while_idle_delivered_once(
        scripted: Callable[..., Any], settle: bool) -> None:
    mx = await scripted()
    sender = Sender(delivery(), hostname="relay.test")
    try:
        await send(sender, mx.port, ["a@dest.test"])
        assert sender.idle_connections() == 1
        mx.transports[0].close()  # the server hangs up the idle connection
        if settle:  # the client has seen the FIN (else: it finds out on its first read)
            await asyncio.sleep(0.1)
        res = await send(sender, mx.port, ["b@dest.test"])
    finally:
        await sender.close()
    assert codes(res) == [("delivered", 250, "2.0.0")] and not res.reused
    assert mx.connections == 2 and mx.bodies == [BODY, BODY]


async def test_dead_pooled_connection_seen_only_on_write_is_retried_once(
        scripted: Callable[..., Any]) -> None:
    """The first read on the reused connection fails before any reply: the message goes
    out once on a fresh connection (no body was sent on the dead one)."""
    mx = await scripted()
    sender = Sender(delivery(), hostname="relay.test")
    try:
        await send(sender, mx.port, ["a@dest.test"])
        # Die on the next group, without answering anything of it.
        mx.script = lambda conn, line: CLOSE if conn.index == 0 and conn.transactions else None
        res = await send(sender, mx.port, ["b@dest.test", "c@dest.test"])
        third = await send(sender, mx.port, ["d@dest.test"])
    finally:
        await sender.close()
    assert codes(res) == [("delivered", 250, "2.0.0")] * 2 and not res.reused
    assert mx.connections == 2 and mx.bodies == [BODY, BODY, BODY]
    assert mx.received(0).count(b"MAIL FROM") == 2  # the group did reach the dead one
    assert third.reused


async def test_reused_connection_dropping_after_a_reply_is_not_retried(
        scripted: Callable[..., Any]) -> None:
    """Once the server has answered anything, a retry could deliver twice: not retried."""
    mx = await scripted()
    sender = Sender(delivery(), hostname="relay.test")
    try:
        await send(sender, mx.port, ["a@dest.test"])
        mx.script = lambda conn, line: (CLOSE if conn.transactions and line.startswith(b"RCPT")
                                        else None)
        res = await send(sender, mx.port, ["b@dest.test"])
    finally:
        await sender.close()
    assert res.reused and codes(res) == [("deferred", 451, "4.4.2")]
    assert mx.connections == 1 and mx.bodies == [BODY]


async def test_dead_pooled_connection_without_pipelining_is_retried_once(
        scripted: Callable[..., Any]) -> None:
    mx = await scripted(extensions=(b"8BITMIME",))
    sender = Sender(delivery(), hostname="relay.test")
    try:
        await send(sender, mx.port, ["a@dest.test"])
        mx.script = lambda conn, line: CLOSE if conn.index == 0 and conn.transactions else None
        res = await send(sender, mx.port, ["b@dest.test"])
    finally:
        await sender.close()
    assert codes(res) == [("delivered", 250, "2.0.0")] and not res.reused
    assert mx.connections == 2 and mx.bodies == [BODY, BODY]
    assert b"RSET" not in mx.received()
