"""relay.delivery.client.Sender over a real loopback socket: what the byte-moving shell adds
to the state machine (relay/delivery/transaction.py) — a server that speaks while its
connection is idle, or answers garbage mid-transaction, never gets that connection reused.

`_LineMX` is a one-command-per-line server in the test's own loop (no PIPELINING, so the
client's serial path runs), with a hook to misbehave on cue.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from relay.delivery.client import Sender, TransactionResult
from relay.testing.delivery import BODY, short_delivery
from relay.testing.delivery import StubTarget as T


class _LineMX:
    def __init__(self, reply: Callable[[int, bytes], bytes | None]) -> None:
        self.reply = reply     # (connection index, line) -> reply bytes, or None: default
        self.connections = 0
        self.messages = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> _LineMX:
        self._server = await asyncio.start_server(self._serve, "127.0.0.2", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in self.writers:
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        self.writers.append(writer)
        writer.write(b"220 line ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                custom = self.reply(index, line.rstrip(b"\r\n"))
                if custom is not None:
                    writer.write(custom)
                elif verb == b"EHLO":
                    writer.write(b"250-line\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go\r\n")
                    while await reader.readline() not in (b".\r\n", b""):
                        pass
                    self.messages += 1
                    writer.write(b"250 2.0.0 queued\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 2.0.0 ok\r\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


MakeMX = Callable[..., Awaitable[_LineMX]]


@pytest.fixture
async def line_mx() -> AsyncIterator[MakeMX]:
    servers: list[_LineMX] = []

    async def make(reply: Callable[[int, bytes], bytes | None] = lambda i, line: None
                   ) -> _LineMX:
        mx = await _LineMX(reply).start()
        servers.append(mx)
        return mx

    yield make
    for mx in servers:
        await mx.close()


async def _send(sender: Sender, mx: _LineMX, rcpt: str) -> TransactionResult:
    return await sender.send("dest.test", [T("mx.dest.test", "127.0.0.2", mx.port)],
                             "s@x.test", [rcpt], BODY)


async def test_server_speaking_on_an_idle_connection_is_not_reused(line_mx: MakeMX) -> None:
    mx = await line_mx()
    sender = Sender(short_delivery(3.0), hostname="relay.test")
    try:
        first = await _send(sender, mx, "a@dest.test")
        assert sender.idle_connections() == 1
        # A reply nobody asked for: it would be taken as the answer to the next MAIL.
        mx.writers[0].write(b"250 2.1.0 unsolicited\r\n")
        await mx.writers[0].drain()
        for _ in range(200):   # until the client has read it (bounded)
            if not all(c.alive for c in sender._pool.idle):
                break
            await asyncio.sleep(0.01)
        second = await _send(sender, mx, "b@dest.test")
    finally:
        await sender.close()
    assert [o.kind for o in first.outcomes] == ["delivered"]
    assert [o.kind for o in second.outcomes] == ["delivered"]
    assert not second.reused and mx.connections == 2
    assert mx.messages == 2


async def test_garbage_mid_transaction_closes_the_connection(line_mx: MakeMX) -> None:
    mx = await line_mx(lambda i, line: b"\x00garbage\r\n" if i == 0 and line.startswith(
        b"RCPT") else None)
    sender = Sender(short_delivery(3.0), hostname="relay.test")
    try:
        bad = await _send(sender, mx, "a@dest.test")
        assert sender.idle_connections() == 0
        good = await _send(sender, mx, "b@dest.test")
    finally:
        await sender.close()
    (o,) = bad.outcomes
    assert (o.kind, o.code, o.enhanced) == ("deferred", 451, "4.5.0")
    assert "Malformed SMTP response line" in o.text
    assert [x.kind for x in good.outcomes] == ["delivered"]
    assert mx.connections == 2 and mx.messages == 1
