"""The submission session's own command loop over a real loopback socket: the replies of
one pipelined batch leave in one write, commands split across reads anywhere (down to
one byte a read) are answered as whole ones, commands pipelined behind DATA wait for the
message's reply, and a client that half-closes after pipelining still gets every reply.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from unittest import mock

import relay.smtp.server
from relay.smtp import replies as R
from relay.smtp.session import SubmissionSession
from relay.testing.submission import (
    RawClient,
    RecordingSubmitter,
    expect,
    fast_limits,
    make_listener,
    running_server,
)

BODY = b"From: <a@b.test>\r\nSubject: s\r\n\r\nline one\r\n..dot\r\n"
LISTENER = make_listener(tls="none", auth="none", trusted_networks=["127.0.0.0/8"])


class _CountingTransport:
    """The session's real transport, counting its write() calls."""

    def __init__(self, transport: Any, session: _Counted) -> None:
        self._transport = transport
        self._session = session

    def write(self, data: bytes) -> None:
        self._session.writes += 1
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Counted(SubmissionSession):
    """A submission session that counts its reads (data_received) and writes."""

    last: _Counted | None = None

    def connection_made(self, transport: Any) -> None:
        self.reads = self.writes = self.most_buffered = 0
        _Counted.last = self
        super().connection_made(_CountingTransport(transport, self))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        super().data_received(data)
        if self.transport is not None:  # the replies not yet taken by the kernel
            self.most_buffered = max(self.most_buffered,
                                     self.transport.get_write_buffer_size())


@asynccontextmanager
async def _server(submitter: RecordingSubmitter) -> AsyncIterator[int]:
    with mock.patch.object(relay.smtp.server, "SubmissionSession", _Counted):
        async with running_server(tls=None, listener=LISTENER, submitter=submitter,
                                  limits=fast_limits()) as server:
            yield server.port


async def test_a_pipelined_batch_is_answered_in_one_write() -> None:
    async with _server(RecordingSubmitter()) as port:
        client = await RawClient.connect(port)
        try:
            assert (await client.read_reply()).code == 220
            assert (await client.cmd("EHLO c.test")).code == 250
            session = _Counted.last
            assert session is not None
            reads, writes = session.reads, session.writes
            await client.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@d.test>\r\n"
                              b"RCPT TO:<y@d.test>\r\nNOOP\r\nDATA\r\n")
            for want in (R.SENDER_OK, R.RECIPIENT_OK, R.RECIPIENT_OK, R.OK):
                expect(await client.read_reply(), want)
            assert (await client.read_reply()).code == 354
            # Five replies; as many writes as the batch took reads (one on loopback).
            assert session.writes - writes == session.reads - reads
            assert session.writes - writes <= 2
        finally:
            await client.close()


async def test_commands_split_across_reads_anywhere() -> None:
    submitter = RecordingSubmitter()
    async with _server(submitter) as port:
        client = await RawClient.connect(port)
        try:
            assert (await client.read_reply()).code == 220
            for piece in (b"EH", b"LO c.te", b"st\r", b"\nMAIL FROM:<a@b", b".test>\r\nRC",
                          b"PT TO:<x@d.test>\r\nDA", b"TA\r", b"\n"):
                await client.send(piece)
                await asyncio.sleep(0.02)
            assert (await client.read_reply()).code == 250
            expect(await client.read_reply(), R.SENDER_OK)
            expect(await client.read_reply(), R.RECIPIENT_OK)
            assert (await client.read_reply()).code == 354
            for piece in (BODY[:5], BODY[5:40], BODY[40:-1], BODY[-1:] + b".", b"\r", b"\n"):
                await client.send(piece)
                await asyncio.sleep(0.02)
            expect(await client.read_reply(), R.QUEUED)
            assert _Counted.last is not None and _Counted.last.reads >= 14
        finally:
            await client.close()
    assert [m.recipients for m in submitter.messages] == [["x@d.test"]]
    assert submitter.messages[0].body.endswith(b"\r\nline one\r\n.dot\r\n")


async def test_a_client_sending_one_byte_at_a_time() -> None:
    submitter = RecordingSubmitter()
    async with _server(submitter) as port:
        client = await RawClient.connect(port)
        try:
            assert (await client.read_reply()).code == 220
            stream = (b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@d.test>\r\n"
                      b"DATA\r\n" + BODY + b".\r\nQUIT\r\n")
            for i in range(len(stream)):
                await client.send(stream[i:i + 1])
                if i % 8 == 0:  # mostly one byte a read, without taking seconds
                    await asyncio.sleep(0.001)
            assert (await client.read_reply()).code == 250
            expect(await client.read_reply(), R.SENDER_OK)
            expect(await client.read_reply(), R.RECIPIENT_OK)
            assert (await client.read_reply()).code == 354
            expect(await client.read_reply(), R.QUEUED)
            expect(await client.read_reply(), R.BYE)
            assert await client.at_eof()
            assert _Counted.last is not None and _Counted.last.reads > len(stream) // 8
        finally:
            await client.close()
    assert len(submitter.messages) == 1
    assert submitter.messages[0].body.endswith(BODY.replace(b"\r\n..dot", b"\r\n.dot"))


async def test_commands_pipelined_behind_data_wait_for_its_reply() -> None:
    submitter = RecordingSubmitter()
    async with _server(submitter) as port:
        client = await RawClient.connect(port)
        try:
            assert (await client.read_reply()).code == 220
            one = b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@d.test>\r\nDATA\r\n" + BODY + b".\r\n"
            await client.send(b"EHLO c.test\r\n" + one + one.replace(b"x@", b"y@")
                              + b"NOOP\r\n")
            assert (await client.read_reply()).code == 250
            for _ in range(2):
                expect(await client.read_reply(), R.SENDER_OK)
                expect(await client.read_reply(), R.RECIPIENT_OK)
                assert (await client.read_reply()).code == 354
                expect(await client.read_reply(), R.QUEUED)
            expect(await client.read_reply(), R.OK)
        finally:
            await client.close()
    assert [m.recipients for m in submitter.messages] == [["x@d.test"], ["y@d.test"]]


async def test_a_client_that_half_closes_after_pipelining_gets_every_reply() -> None:
    submitter = RecordingSubmitter()
    async with _server(submitter) as port:
        client = await RawClient.connect(port)
        try:
            assert (await client.read_reply()).code == 220
            client.writer.write(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@d.test>\r\n"
                                b"DATA\r\n" + BODY + b".\r\nNOOP\r\n")
            client.writer.write_eof()
            assert (await client.read_reply()).code == 250
            expect(await client.read_reply(), R.SENDER_OK)
            expect(await client.read_reply(), R.RECIPIENT_OK)
            assert (await client.read_reply()).code == 354
            expect(await client.read_reply(), R.QUEUED)
            expect(await client.read_reply(), R.OK)
            assert await client.at_eof()  # then the server closes
        finally:
            await client.close()
    assert len(submitter.messages) == 1


async def test_a_client_that_does_not_read_its_replies_is_no_longer_read() -> None:
    """Pipelining without reading the replies (resource exhaustion): once the transport's
    buffer is full the session stops reading, so neither its replies nor the client's
    commands pile up in memory; when the client reads, every reply comes, in order."""
    count = 60_000
    limits = fast_limits(max_commands_per_session=1_000_000)
    with mock.patch.object(relay.smtp.server, "SubmissionSession", _Counted):
        async with running_server(tls=None, listener=LISTENER, limits=limits) as server:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
            reader, writer = await asyncio.open_connection(sock=sock)
            assert (await reader.readline()).startswith(b"220 ")
            session = _Counted.last
            assert session is not None and session.transport is not None
            # Small kernel buffers on the server's side too, and a low high-water mark,
            # so the replies back up into the session's transport within a few KB.
            server_sock = session.transport.get_extra_info("socket")
            server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            session.transport.set_write_buffer_limits(high=8192)

            async def send() -> None:
                batch = b"NOOP\r\n" * 2000
                for _ in range(count // 2000):
                    writer.write(batch)
                    await writer.drain()

            sender = asyncio.create_task(send())
            await asyncio.sleep(0.5)  # the client reads nothing meanwhile
            most = max(session.most_buffered, session.transport.get_write_buffer_size())
            data = await asyncio.wait_for(
                reader.readexactly(count * len(b"250 2.0.0 OK\r\n")), 10)
            await sender
            assert data.count(b"250 2.0.0 OK\r\n") == count
            # 840 KB of replies in all; the session stopped at the high-water mark, with at
            # most one group of replies (64) over it.
            assert most <= 8192 + 64 * len(b"250 2.0.0 OK\r\n"), most
            writer.close()
