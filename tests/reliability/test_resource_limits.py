"""Resource exhaustion against the submission server: slowloris at command and
DATA stage, absolute session time, endless lines, 10,000 RCPT, connection floods from one
IP, a 1 MB AUTH line, unknown-command floods. Short configured timeouts keep it fast.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from smtpkit import connect, expect, open_data, send_ok, tls_session

from relay.config import Duration
from relay.smtp import replies as R
from relay.testing.submission import RawClient, RecordingSubmitter, Tls, running_server
from relay.testing.submission import fast_limits as limits
from relay.users import UserStore


async def _send_unless_closed(client: RawClient, data: bytes) -> bool:
    """Send `data`; False when the server has already closed the connection. Its timeout
    reply and close can land between the client's check of the reply and its next write."""
    try:
        await client.send(data)
    except ConnectionError:
        return False
    return True


async def test_slowloris_command_stage_cut_by_idle_timeout(tls: Tls, users: UserStore) -> None:
    async with running_server(tls=tls, users=users,
                              limits=limits(idle_timeout=Duration(0.4))) as srv:
        client = await connect(srv.port)
        began = time.monotonic()
        reply = asyncio.create_task(client.read_reply(timeout=5))
        for byte in b"NOOP NOOP NOOP NOOP NOOP":  # one byte every 0.1 s, never a CRLF
            if reply.done():
                break
            if not await _send_unless_closed(client, bytes([byte])):
                break
            await asyncio.sleep(0.1)
        expect(await reply, R.TIMEOUT)
        assert await client.at_eof()
        assert time.monotonic() - began < 4.0


async def test_commands_within_the_idle_timeout_keep_the_session_then_idleness_closes_it(
        tls: Tls, users: UserStore) -> None:
    # The idle timer is one per connection whose deadline each command moves: it must
    # still never close an active client, and still close one that went quiet.
    async with running_server(tls=tls, users=users,
                              limits=limits(idle_timeout=Duration(0.5))) as srv:
        client = await connect(srv.port)
        for _ in range(8):  # 1.6 s in all, over three idle timeouts, a command every 0.2 s
            assert (await client.cmd("NOOP")).code == 250
            await asyncio.sleep(0.2)
        quiet = time.monotonic()
        expect(await client.read_reply(timeout=5), R.TIMEOUT)
        assert await client.at_eof()
        assert time.monotonic() - quiet < 4.0


async def test_absolute_session_timeout_despite_activity(tls: Tls, users: UserStore) -> None:
    lim = limits(idle_timeout=Duration(5.0), session_timeout=Duration(0.6))
    async with running_server(tls=tls, users=users, limits=lim) as srv:
        client = await connect(srv.port)
        got = None
        for _ in range(60):  # bounded: 60 × 0.05 s ≫ 0.6 s
            try:
                reply = await client.cmd("NOOP")
            except ConnectionError:
                break
            if reply.code != 250:
                got = reply
                break
            await asyncio.sleep(0.05)
        assert got is not None
        expect(got, R.SESSION_TIMEOUT)
        assert await client.at_eof()


async def test_slowloris_data_stage_lines_cut_by_session_timeout(
        tls: Tls, users: UserStore) -> None:
    # Each DATA line restarts the idle timer; the absolute cap still ends the session.
    submitter = RecordingSubmitter()
    lim = limits(idle_timeout=Duration(0.5), session_timeout=Duration(1.5))
    async with running_server(tls=tls, users=users, limits=lim, submitter=submitter) as srv:
        client = await tls_session(srv.port, tls)
        await open_data(client)
        began = time.monotonic()
        reply = asyncio.create_task(client.read_reply(timeout=8))
        for _ in range(40):  # a line every 0.2 s, bounded at 8 s
            if reply.done():
                break
            if not await _send_unless_closed(client, b"x\r\n"):
                break
            await asyncio.sleep(0.2)
        expect(await reply, R.SESSION_TIMEOUT)
        assert await client.at_eof()
        assert time.monotonic() - began < 8
    assert submitter.messages == []


async def test_slowloris_inside_a_data_line_cut_by_idle_timeout(
        tls: Tls, users: UserStore) -> None:
    lim = limits(idle_timeout=Duration(0.4))
    async with running_server(tls=tls, users=users, limits=lim) as srv:
        client = await tls_session(srv.port, tls)
        await open_data(client)
        reply = asyncio.create_task(client.read_reply(timeout=5))
        for _ in range(20):
            if reply.done():
                break
            if not await _send_unless_closed(client, b"y"):  # never a CRLF
                break
            await asyncio.sleep(0.1)
        expect(await reply, R.TIMEOUT)


async def test_endless_command_line_then_session_usable(tls: Tls, users: UserStore) -> None:
    async with running_server(tls=tls, users=users, limits=limits()) as srv:
        client = await tls_session(srv.port, tls)
        await client.send(b"MAIL FROM:<" + b"a" * 300_000)
        await client.send(b"@tenant.example>\r\n")
        expect(await client.read_reply(), R.Reply(500, "5.5.2", "Error: command line too long"))
        await send_ok(client)
        await client.close()


async def test_endless_data_line_then_session_usable(tls: Tls, users: UserStore) -> None:
    submitter = RecordingSubmitter()
    async with running_server(tls=tls, users=users, limits=limits(),
                              submitter=submitter) as srv:
        client = await tls_session(srv.port, tls)
        await open_data(client)
        for _ in range(10):
            await client.send(b"z" * 100_000)
        await client.send(b"\r\n.\r\n")
        expect(await client.read_reply(), R.LINE_TOO_LONG)
        await send_ok(client)
        await client.close()
    assert len(submitter.messages) == 1


async def test_one_megabyte_auth_initial_response(tls: Tls, users: UserStore) -> None:
    async with running_server(tls=tls, users=users, limits=limits()) as srv:
        client = await tls_session(srv.port, tls, login=False)
        await client.send(b"AUTH PLAIN " + b"A" * 1_000_000 + b"\r\n")
        reply = await client.read_reply()
        assert (reply.code, reply.lines[-1].split()[0]) == (500, "5.5.2"), reply
        expect(await client.cmd("NOOP"), R.OK)
        await client.close()


async def test_ten_thousand_rcpt(tls: Tls, users: UserStore) -> None:
    submitter = RecordingSubmitter()
    async with running_server(tls=tls, users=users, limits=limits(max_recipients=50),
                              submitter=submitter) as srv:
        client = await tls_session(srv.port, tls)
        expect(await client.cmd("MAIL FROM:<u@tenant.example>"), R.SENDER_OK)
        await client.send(b"".join(b"RCPT TO:<r%d@sink.test>\r\n" % i for i in range(10_000)))
        codes = [(await client.read_reply()).code for _ in range(10_000)]
        assert codes.count(250) == 50 and codes.count(452) == 9_950
        assert (await client.cmd("DATA")).code == 354
        await client.send(b"From: u@tenant.example\r\n\r\nx\r\n.\r\n")
        expect(await client.read_reply(), R.QUEUED)
        await client.close()
    (msg,) = submitter.messages
    assert len(msg.recipients) == 50


async def test_connection_flood_from_one_ip(tls: Tls, users: UserStore) -> None:
    lim = limits(max_connections_per_ip=20, max_connections=500)
    async with running_server(tls=tls, users=users, limits=lim) as srv:
        clients = await asyncio.gather(*(RawClient.connect(srv.port) for _ in range(200)))
        greetings = await asyncio.gather(*(c.read_reply() for c in clients))
        codes = [g.code for g in greetings]
        assert codes.count(220) == 20 and codes.count(421) == 180
        for g in greetings:
            if g.code == 421:
                assert g.lines[-1].startswith("4.7.0 ")
        other = await RawClient.connect(srv.port, local_addr=("127.0.0.2", 0))
        assert (await other.read_reply()).code == 220  # another IP is unaffected
        expect(await other.cmd("NOOP"), R.OK)
        await other.close()
        await asyncio.gather(*(c.close() for c in clients))
        for _ in range(100):
            if srv.limiter.total == 0:
                break
            await asyncio.sleep(0.02)
        assert srv.limiter.total == 0 and not srv.limiter.per_ip


async def test_unknown_command_flood_closes(tls: Tls, users: UserStore) -> None:
    async with running_server(tls=tls, users=users, limits=limits()) as srv:
        client = await connect(srv.port)
        await client.send(b"XYZZY\r\n" * 50)
        replies = []
        for _ in range(50):
            try:
                replies.append(await client.read_reply(timeout=2))
            except ConnectionError:
                break
        assert replies[-1].code == 502 and replies[-1].lines[-1].startswith("5.5.1")
        assert len(replies) < 10
        assert await client.at_eof()


@pytest.mark.parametrize("count", [2_000])
async def test_many_sequential_sessions_leave_no_slots(tls: Tls, users: UserStore,
                                                       count: int) -> None:
    lim = limits(max_connections_per_ip=5)
    async with running_server(tls=tls, users=users, limits=lim) as srv:
        for _ in range(count // 100):
            batch = await asyncio.gather(*(RawClient.connect(srv.port) for _ in range(5)))
            for c in batch:
                assert (await c.read_reply()).code == 220
                c.writer.close()  # abrupt close, no QUIT
        for _ in range(100):
            if srv.limiter.total == 0:
                break
            await asyncio.sleep(0.02)
        assert srv.limiter.total == 0


async def test_data_lines_trickled_within_the_idle_timeout_are_accepted(
        tls: Tls, users: UserStore) -> None:
    # RFC 5321 §4.5.3.2.6: the DATA timeout is between blocks, not for the whole message;
    # the chunked DATA reader returns only per ~1 KB, so a line end arriving restarts it.
    submitter = RecordingSubmitter()
    lim = limits(idle_timeout=Duration(1.5), session_timeout=Duration(30))
    async with running_server(tls=tls, users=users, limits=lim, submitter=submitter) as srv:
        client = await tls_session(srv.port, tls)
        await open_data(client)
        await client.send(b"Subject: slow\r\n\r\n")
        for _ in range(10):  # 4 s in all, a line every 0.4 s
            await client.send(b"x\r\n")
            await asyncio.sleep(0.4)
        await client.send(b".\r\n")
        reply = await client.read_reply(timeout=5)
        assert reply.code == 250, reply
    assert len(submitter.messages) == 1
