"""Submission server over real loopback sockets with real TLS (trustme).

One test per refusal, asserting the reply code AND the enhanced status code; the attack
inputs are the exact bytes of inbound smuggling, unauthorised pipelining, STARTTLS
command injection, AUTH before TLS, AUTH brute force and resource exhaustion.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from relay.clock import FakeClock
from relay.config import Duration, Size
from relay.queue.committer import StoreFull, StoreUnavailable
from relay.smtp import replies as R
from relay.smtp.message import extract_headers, parse_tags, received_header
from relay.smtp.server import SubmissionServer
from relay.testing.submission import (
    PASSWORD,
    USER,
    RawClient,
    RecordingSubmitter,
    Tls,
    app_users,
    make_listener,
    running_server,
)
from relay.testing.submission import fast_limits as limits
from relay.users import UserStore

PLAIN_OK = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def expect(reply: object, want: R.Reply) -> None:
    """The reply has want's code and enhanced code."""
    from relay.testing.submission import Reply as Got

    assert isinstance(reply, Got)
    assert reply.code == want.code, reply
    assert reply.lines[-1].split(" ", 1)[0] == want.enhanced, reply


async def connect(port: int) -> RawClient:
    client = await RawClient.connect(port)
    greeting = await client.read_reply()
    assert greeting.code == 220, greeting
    return client


async def tls_session(port: int, tls: Tls, *, login: bool = True) -> RawClient:
    client = await connect(port)
    assert (await client.cmd("EHLO client.test")).code == 250
    assert (await client.starttls(tls.client)).code == 220
    ehlo = await client.cmd("EHLO client.test")
    assert "AUTH PLAIN LOGIN" in ehlo.lines
    if login:
        expect(await client.cmd(f"AUTH PLAIN {PLAIN_OK}"), R.AUTH_OK)
    return client


async def transaction(client: RawClient, body: bytes = b"Subject: hi\r\n\r\nhello\r\n",
                      sender: str = "u@tenant.example") -> object:
    expect(await client.cmd(f"MAIL FROM:<{sender}>"), R.SENDER_OK)
    expect(await client.cmd("RCPT TO:<r@sink.test>"), R.RECIPIENT_OK)
    assert (await client.cmd("DATA")).code == 354
    await client.send(body + b".\r\n")
    return await client.read_reply()


# --- EHLO, TLS, AUTH --------------------------------------------------------------------


async def test_ehlo_before_tls_offers_starttls_not_auth(server: SubmissionServer) -> None:
    client = await connect(server.port)
    ehlo = await client.cmd("EHLO client.test")
    assert ehlo.code == 250
    for keyword in ("PIPELINING", "SIZE 40000000", "8BITMIME", "SMTPUTF8",
                    "ENHANCEDSTATUSCODES", "STARTTLS"):
        assert keyword in ehlo.lines
    assert not any(line.startswith("AUTH") for line in ehlo.lines)
    await client.close()


async def test_auth_before_tls_is_refused_and_mail_still_needs_auth(
        server: SubmissionServer) -> None:
    # AUTH before TLS: valid credentials sent in plaintext.
    client = await connect(server.port)
    await client.cmd("EHLO c")
    expect(await client.cmd(f"AUTH PLAIN {PLAIN_OK}"), R.ENCRYPTION_REQUIRED)
    expect(await client.cmd("MAIL FROM:<u@tenant.example>"), R.AUTH_REQUIRED)
    await client.close()


async def test_starttls_auth_plain_and_send_with_aiosmtplib(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, tls_context=tls.client,
                             start_tls=True)
    await client.connect()
    await client.ehlo()  # aiosmtplib does not repeat EHLO after STARTTLS by itself
    response = await client.auth_plain(USER, PASSWORD)
    assert (response.code, response.message.split()[0]) == (235, "2.7.0")
    message = (b"From: App <u@tenant.example>\r\nTo: r@sink.test\r\n"
               b"Subject: folded\r\n subject\r\nMessage-ID: <1@tenant.example>\r\n"
               b"Date: Mon, 1 Jan 2029 00:00:00 +0000\r\n"
               b"X-SES-MESSAGE-TAGS: campaign=spring, tier=gold, campaign=b\r\n\r\nhello\r\n")
    errors, reply = await client.sendmail("u@tenant.example", ["r@sink.test"], message)
    await client.quit()
    assert errors == {}
    assert reply == "2.0.0 Ok: queued as Q000001TEST"  # the id the submitter returned
    (msg,) = submitter.messages
    assert msg.sender == "u@tenant.example" and msg.recipients == ["r@sink.test"]
    assert msg.auth_user == USER and msg.client_ip == "127.0.0.1"
    assert msg.body.startswith(b"Received: from ")
    assert b"with ESMTPSA" in msg.body.split(b"\r\n\r\n")[0]
    assert msg.body.endswith(message)
    assert msg.headers == {"From": "App <u@tenant.example>", "To": "r@sink.test",
                           "Subject": "folded subject", "Message-ID": "<1@tenant.example>",
                           "Date": "Mon, 1 Jan 2029 00:00:00 +0000"}
    assert msg.tags == {"campaign": ["spring", "b"], "tier": ["gold"]}


async def test_auth_login_success(server: SubmissionServer, tls: Tls) -> None:
    client = await tls_session(server.port, tls, login=False)
    assert (await client.cmd("AUTH LOGIN")).code == 334
    assert (await client.cmd(b64(USER))).code == 334
    expect(await client.cmd(b64(PASSWORD)), R.AUTH_OK)
    await client.close()


async def test_mail_without_auth_over_tls_is_refused(server: SubmissionServer,
                                                     tls: Tls) -> None:
    client = await tls_session(server.port, tls, login=False)
    expect(await client.cmd("MAIL FROM:<u@tenant.example>"), R.AUTH_REQUIRED)
    expect(await client.cmd("RCPT TO:<r@sink.test>"), R.AUTH_REQUIRED)
    await client.close()


async def test_bad_credentials_identical_for_unknown_user_and_wrong_password(
        server: SubmissionServer, tls: Tls) -> None:
    client = await tls_session(server.port, tls, login=False)
    unknown = await client.cmd(f"AUTH PLAIN {plain('nobody', PASSWORD)}")
    wrong = await client.cmd(f"AUTH PLAIN {plain(USER, 'wrong')}")
    expect(unknown, R.AUTH_INVALID)
    assert unknown.lines == wrong.lines and unknown.code == wrong.code
    await client.close()


async def test_lockout_after_failures_then_lifted_by_clock(tls: Tls, users: UserStore) -> None:
    clock = FakeClock()
    lim = limits(auth_max_failures=3, auth_lockout=Duration(60.0))
    async with running_server(tls=tls, users=users, limits=lim, clock=clock) as srv:
        client = await tls_session(srv.port, tls, login=False)
        for _ in range(3):
            expect(await client.cmd(f"AUTH PLAIN {plain(USER, 'wrong')}"), R.AUTH_INVALID)
        # Locked: even the right password is not checked.
        expect(await client.cmd(f"AUTH PLAIN {PLAIN_OK}"), R.AUTH_LOCKED)
        other = await tls_session(srv.port, tls, login=False)  # per IP, across connections
        expect(await other.cmd(f"AUTH PLAIN {PLAIN_OK}"), R.AUTH_LOCKED)
        clock.advance(61)
        expect(await other.cmd(f"AUTH PLAIN {PLAIN_OK}"), R.AUTH_OK)
        await client.close()
        await other.close()


async def test_failures_for_a_user_across_ips_never_lock_the_user_out(
        tls: Tls, users: UserStore) -> None:
    """Only the offending client address is ever locked (anyone who knows a user name
    could otherwise lock its owner out)."""
    lim = limits(auth_max_failures=2, auth_lockout=Duration(60.0))
    async with running_server(tls=tls, users=users, limits=lim) as srv:
        for ip in ("127.0.0.2", "127.0.0.3"):
            c = await RawClient.connect(srv.port, local_addr=(ip, 0))
            await c.read_reply()
            await c.cmd("EHLO c")
            await c.starttls(tls.client)
            await c.cmd("EHLO c")
            expect(await c.cmd(f"AUTH PLAIN {plain(USER, 'guess-' + ip)}"), R.AUTH_INVALID)
            await c.close()
        fresh = await RawClient.connect(srv.port, local_addr=("127.0.0.4", 0))
        await fresh.read_reply()
        await fresh.cmd("EHLO c")
        await fresh.starttls(tls.client)
        await fresh.cmd("EHLO c")
        expect(await fresh.cmd(f"AUTH PLAIN {PLAIN_OK}"), R.AUTH_OK)
        await fresh.close()


async def test_failure_delay_waits_on_the_clock(tls: Tls, users: UserStore) -> None:
    clock = FakeClock()
    lim = limits(auth_failure_delay=Duration(5.0))
    async with running_server(tls=tls, users=users, limits=lim, clock=clock) as srv:
        client = await tls_session(srv.port, tls, login=False)
        await client.send(f"AUTH PLAIN {plain(USER, 'wrong')}\r\n".encode())
        with pytest.raises(TimeoutError):
            await client.read_reply(timeout=0.5)  # held back until the clock moves
        clock.advance(5)
        expect(await client.read_reply(), R.AUTH_INVALID)
        await client.close()


async def test_implicit_tls_listener(tls: Tls, users: UserStore,
                                     submitter: RecordingSubmitter) -> None:
    async with running_server(tls=tls, users=users, submitter=submitter,
                              listener=make_listener(tls="implicit")) as srv:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=srv.port, use_tls=True,
                                 tls_context=tls.client)
        await client.connect()
        await client.ehlo()
        assert "starttls" not in client.esmtp_extensions
        assert client.supports_extension("auth")
        await client.auth_login(USER, PASSWORD)
        _, reply = await client.sendmail("u@tenant.example", ["r@sink.test"],
                                         b"Subject: x\r\n\r\nbody\r\n")
        await client.quit()
    assert reply.startswith("2.0.0 Ok: queued as ")
    assert b"with ESMTPSA" in submitter.messages[0].body


async def test_starttls_resets_session_state(server: SubmissionServer, tls: Tls) -> None:
    client = await connect(server.port)
    await client.cmd("EHLO c")
    await client.starttls(tls.client)
    # RFC 3207 §4.2: the EHLO before STARTTLS is forgotten.
    expect(await client.cmd(f"AUTH PLAIN {PLAIN_OK}"), R.NEED_EHLO)
    await client.close()


# --- who may send ---------------------------------------------------------------------


async def test_trusted_network_sends_without_auth(tls: Tls, users: UserStore,
                                                  submitter: RecordingSubmitter) -> None:
    listener = make_listener(tls="none", auth="none", trusted_networks=["127.0.0.0/8"])
    async with running_server(tls=None, users=users, submitter=submitter,
                              listener=listener) as srv:
        client = await connect(srv.port)
        ehlo = await client.cmd("EHLO c")
        assert "STARTTLS" not in ehlo.lines and not any("AUTH" in x for x in ehlo.lines)
        expect(await transaction(client), R.QUEUED)
        await client.close()
    assert len(submitter.messages) == 1
    assert b" with ESMTP\r\n" in submitter.messages[0].body  # no TLS, no AUTH


async def test_untrusted_network_cannot_send_without_auth(tls: Tls, users: UserStore) -> None:
    listener = make_listener(tls="none", auth="none", trusted_networks=["10.0.0.0/8"])
    async with running_server(tls=None, users=users, listener=listener) as srv:
        client = await connect(srv.port)
        await client.cmd("EHLO c")
        expect(await client.cmd("MAIL FROM:<u@tenant.example>"), R.AUTH_REQUIRED)
        expect(await client.cmd(f"AUTH PLAIN {PLAIN_OK}"), R.AUTH_UNAVAILABLE)
        await client.close()


async def test_sender_with_control_characters_refused(server: SubmissionServer,
                                                      tls: Tls) -> None:
    client = await tls_session(server.port, tls)
    expect(await client.cmd(b"MAIL FROM:<a\rb@tenant.example>"), R.BAD_SENDER)
    expect(await client.cmd(b"MAIL FROM:<a\x00b@tenant.example>"), R.BAD_SENDER)
    await client.close()


async def test_source_route_refused(server: SubmissionServer, tls: Tls) -> None:
    client = await tls_session(server.port, tls)
    expect(await client.cmd("MAIL FROM:<@evil.test:u@tenant.example>"), R.SOURCE_ROUTE)
    expect(await client.cmd("MAIL FROM:<u@tenant.example>"), R.SENDER_OK)
    expect(await client.cmd("RCPT TO:<@evil.test:r@sink.test>"), R.SOURCE_ROUTE)
    await client.close()


async def test_helo_with_bare_cr_refused(server: SubmissionServer) -> None:
    client = await connect(server.port)
    expect(await client.cmd(b"EHLO a\rInjected: yes"), R.BAD_HELO)
    await client.close()


# --- limits -----------------------------------------------------------------------------


async def test_size_too_big_at_mail(server: SubmissionServer, tls: Tls) -> None:
    client = await tls_session(server.port, tls)
    expect(await client.cmd("MAIL FROM:<u@tenant.example> SIZE=40000001"), R.MESSAGE_TOO_BIG)
    await client.close()


async def test_size_too_big_at_data(tls: Tls, users: UserStore,
                                    submitter: RecordingSubmitter) -> None:
    lim = limits(max_message_size=Size(20_000))
    async with running_server(tls=tls, users=users, submitter=submitter, limits=lim) as srv:
        client = await tls_session(srv.port, tls)
        body = b"Subject: big\r\n\r\n" + b"x" * 78 + b"\r\n"
        expect(await transaction(client, body * 400), R.MESSAGE_TOO_BIG)
        expect(await client.cmd("NOOP"), R.OK)  # still in sync
        expect(await transaction(client), R.QUEUED)
        await client.close()
    assert len(submitter.messages) == 1


async def test_too_many_recipients(tls: Tls, users: UserStore) -> None:
    async with running_server(tls=tls, users=users, limits=limits(max_recipients=3)) as srv:
        client = await tls_session(srv.port, tls)
        expect(await client.cmd("MAIL FROM:<u@tenant.example>"), R.SENDER_OK)
        for i in range(3):
            expect(await client.cmd(f"RCPT TO:<r{i}@sink.test>"), R.RECIPIENT_OK)
        expect(await client.cmd("RCPT TO:<r9@sink.test>"), R.TOO_MANY_RECIPIENTS)
        await client.close()


async def test_command_line_too_long(server: SubmissionServer) -> None:
    client = await connect(server.port)
    reply = await client.cmd(b"NOOP " + b"x" * 3000)
    assert (reply.code, reply.lines[-1].split()[0]) == (500, "5.5.2")
    await client.close()


async def test_huge_auth_continuation_line(server: SubmissionServer, tls: Tls) -> None:
    # Resource exhaustion: a 1 MB AUTH continuation line is refused, the connection closed.
    client = await tls_session(server.port, tls, login=False)
    assert (await client.cmd("AUTH LOGIN")).code == 334
    await client.send(b"A" * 1_000_000 + b"\r\n")
    expect(await client.read_reply(), R.LINE_TOO_LONG)
    assert await client.at_eof()


async def test_data_line_too_long(server: SubmissionServer, tls: Tls,
                                  submitter: RecordingSubmitter) -> None:
    client = await tls_session(server.port, tls)
    expect(await transaction(client, b"Subject: x\r\n\r\n" + b"y" * 5000 + b"\r\n"),
           R.LINE_TOO_LONG)
    await client.close()
    assert submitter.messages == []


async def test_idle_timeout(tls: Tls, users: UserStore) -> None:
    lim = limits(idle_timeout=Duration(0.3))
    async with running_server(tls=tls, users=users, limits=lim) as srv:
        client = await connect(srv.port)
        expect(await client.read_reply(timeout=3), R.TIMEOUT)
        assert await client.at_eof()


async def test_messages_per_connection(tls: Tls, users: UserStore) -> None:
    lim = limits(max_messages_per_connection=1)
    async with running_server(tls=tls, users=users, limits=lim) as srv:
        client = await tls_session(srv.port, tls)
        expect(await transaction(client), R.QUEUED)
        expect(await client.cmd("MAIL FROM:<u@tenant.example>"), R.TOO_MANY_MESSAGES)
        assert await client.at_eof()


async def test_connections_per_ip(tls: Tls, users: UserStore) -> None:
    lim = limits(max_connections_per_ip=1)
    async with running_server(tls=tls, users=users, limits=lim) as srv:
        first = await connect(srv.port)
        second = await RawClient.connect(srv.port)
        expect(await second.read_reply(), R.TOO_MANY_CONNECTIONS_FROM_IP)
        assert await second.at_eof()
        other_ip = await RawClient.connect(srv.port, local_addr=("127.0.0.2", 0))
        assert (await other_ip.read_reply()).code == 220
        await first.close()
        await other_ip.close()


async def test_connections_total(tls: Tls, users: UserStore) -> None:
    async with running_server(tls=tls, users=users, limits=limits(max_connections=1)) as srv:
        first = await connect(srv.port)
        second = await RawClient.connect(srv.port, local_addr=("127.0.0.2", 0))
        expect(await second.read_reply(), R.TOO_MANY_CONNECTIONS)
        await first.close()
        # The slot is released when the first connection goes away.
        for _ in range(50):
            if srv.limiter.total == 0:
                break
            await asyncio.sleep(0.01)
        third = await connect(srv.port)
        await third.close()


# --- DATA: smuggling, pipelining, commit ------------------------------------------------

SMUGGLED = (b"MAIL FROM:<ceo@victim.example>\r\nRCPT TO:<r@sink.test>\r\nDATA\r\n"
            b"From: ceo@victim.example\r\n\r\nSMUGGLED\r\n.\r\n")
BAD_ENDINGS = [b"\n.\n", b"\r.\r", b"\r.\n", b"\n.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n",
               b"\r\n.\r", b"\r\r\n.\r\r\n"]


@pytest.mark.parametrize("ending", BAD_ENDINGS, ids=repr)
async def test_bare_cr_lf_smuggling_rejected(server: SubmissionServer, tls: Tls,
                                             submitter: RecordingSubmitter,
                                             ending: bytes) -> None:
    client = await tls_session(server.port, tls)
    await client.send(b"MAIL FROM:<u@tenant.example>\r\nRCPT TO:<r@sink.test>\r\nDATA\r\n")
    for _ in range(3):
        await client.read_reply()
    await client.send(b"From: u@tenant.example\r\n\r\nbody" + ending + SMUGGLED)
    expect(await client.read_reply(), R.BARE_NEWLINE)
    expect(await client.cmd("NOOP"), R.OK)  # exactly one reply: still in sync
    await client.close()
    assert submitter.messages == []  # neither the message nor the smuggled one


async def test_nul_before_dot_is_one_literal_message(server: SubmissionServer, tls: Tls,
                                                     submitter: RecordingSubmitter) -> None:
    client = await tls_session(server.port, tls)
    reply = await transaction(client, b"From: u@tenant.example\r\n\r\nbody\r\n\x00.\r\n"
                              + SMUGGLED[:-3])
    expect(reply, R.QUEUED)
    expect(await client.cmd("NOOP"), R.OK)
    await client.close()
    (msg,) = submitter.messages
    assert msg.sender == "u@tenant.example" and b"SMUGGLED" in msg.body


async def test_pipelined_transaction_gets_one_reply_per_command(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter) -> None:
    client = await tls_session(server.port, tls)
    await client.send(b"MAIL FROM:<u@tenant.example>\r\nRCPT TO:<r@sink.test>\r\nDATA\r\n"
                      b"From: x\r\n\r\nhi\r\n.\r\nNOOP\r\n")
    codes = [(await client.read_reply()).code for _ in range(5)]
    assert codes == [250, 250, 354, 250, 250]
    await client.close()
    assert len(submitter.messages) == 1


@pytest.mark.parametrize("tail", [b"MAIL FROM:<evil@x>\r\n", b"RSET\r\n",
                                  b"AUTH PLAIN AGV2aWwAcHc=\r\n"])
async def test_starttls_plaintext_injection_discarded(server: SubmissionServer, tls: Tls,
                                                      tail: bytes) -> None:
    # STARTTLS command injection, CVE-2024-34083: one segment, then the handshake.
    client = await connect(server.port)
    await client.cmd("EHLO c")
    await client.send(b"STARTTLS\r\n" + tail)
    assert (await client.read_reply()).code == 220
    await client.writer.start_tls(tls.client, server_hostname="127.0.0.1")
    ehlo = await client.cmd("EHLO c")  # the first reply after TLS answers our EHLO
    assert ehlo.code == 250 and ehlo.lines[0] == "relay.test"
    expect(await client.cmd("NOOP"), R.OK)
    await client.close()


async def test_store_full_answers_452(server: SubmissionServer, tls: Tls,
                                      submitter: RecordingSubmitter) -> None:
    submitter.fail = StoreFull("map full")
    client = await tls_session(server.port, tls)
    expect(await transaction(client), R.STORE_FULL)
    submitter.fail = StoreUnavailable("boom")
    expect(await transaction(client), R.STORE_UNAVAILABLE)
    submitter.fail = None
    reply = await transaction(client)
    expect(reply, R.QUEUED)
    assert reply.lines[-1] == "2.0.0 Ok: queued as Q000001TEST"  # type: ignore[attr-defined]
    await client.close()


async def test_builtin_replies_carry_enhanced_codes(server: SubmissionServer,
                                                    tls: Tls) -> None:
    client = await tls_session(server.port, tls)
    expect(await client.cmd("DATA"), R.NEED_RCPT)
    reply = await client.cmd("FROB")
    assert (reply.code, reply.lines[-1].split()[0]) == (500, "5.5.1")
    reply = await client.cmd("MAIL TO:<x@y>")
    assert (reply.code, reply.lines[-1].split()[0]) == (501, "5.5.4")
    reply = await client.cmd("RCPT TO:<x@y>")
    assert (reply.code, reply.lines[-1].split()[0]) == (503, "5.5.1")
    expect(await client.cmd("RSET"), R.OK)
    expect(await client.cmd("NOOP"), R.OK)
    reply = await client.cmd("VRFY <x@y>")
    assert (reply.code, reply.lines[-1].split()[0]) == (252, "2.0.0")
    expect(await client.cmd("QUIT"), R.BYE)
    await client.close()


async def test_stop_closes_idle_sessions(tls: Tls, users: UserStore) -> None:
    srv = SubmissionServer(make_listener(), limits(), "relay.test", RecordingSubmitter(),
                           users, FakeClock(), tls.server, shutdown_grace=2.0)
    await srv.start()
    client = await connect(srv.port)
    await srv.stop()
    expect(await client.read_reply(), R.SHUTTING_DOWN)
    assert await client.at_eof()


def test_starttls_auth_send_under_uvloop(tls: Tls, users: UserStore) -> None:
    import uvloop

    async def scenario() -> list[str]:
        submitter = RecordingSubmitter()
        async with running_server(tls=tls, users=users, submitter=submitter) as srv:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=srv.port,
                                     tls_context=tls.client, start_tls=True)
            await client.connect()
            await client.ehlo()
            await client.auth_plain(USER, PASSWORD)
            _, reply = await client.sendmail("u@tenant.example", ["r@sink.test"],
                                             b"Subject: uv\r\n\r\nhi\r\n")
            await client.quit()
            implicit = make_listener(tls="implicit")
            async with running_server(tls=tls, users=users, submitter=submitter,
                                      listener=implicit) as srv2:
                client = aiosmtplib.SMTP(hostname="127.0.0.1", port=srv2.port, use_tls=True,
                                         tls_context=tls.client)
                await client.connect()
                await client.ehlo()
                await client.auth_plain(USER, PASSWORD)
                _, reply2 = await client.sendmail("u@tenant.example", ["r@sink.test"],
                                                  b"Subject: uv\r\n\r\nhi\r\n")
                await client.quit()
        return [reply, reply2]

    replies = uvloop.run(scenario())
    assert all(r.startswith("2.0.0 Ok: queued as") for r in replies)


# --- pure helpers (no sockets) ----------------------------------------------------------


def test_enhance_adds_codes_to_aiosmtpd_literals() -> None:
    assert R.enhance("503 Error: need RCPT command") == "503 5.5.1 Error: need RCPT command"
    assert R.enhance("501 Syntax: HELO hostname") == "501 5.5.4 Syntax: HELO hostname"
    assert R.enhance('500 Error: command "X" not recognized').startswith("500 5.5.1 ")
    assert R.enhance("552 Error: Too much mail data") == str(R.MESSAGE_TOO_BIG)
    assert R.enhance("535 5.7.8 x") == "535 5.7.8 x"


def test_extract_headers_and_tags() -> None:
    headers, tags = extract_headers(b"Subject: =?utf-8?q?hi?=\r\nX-SES-MESSAGE-TAGS: a=1,"
                                    b"\r\n b=2\r\n\r\nFrom: body@not.header\r\n")
    assert headers == {"Subject": "=?utf-8?q?hi?="}
    assert tags == {"a": ["1"], "b": ["2"]}
    assert parse_tags("k=v, bad, =x, k=w") == {"k": ["v", "w"]}
    # SES's reserved prefix: a client cannot pose as another configuration set (whose
    # event destinations the tag routes to), tenant, operation or access key.
    assert parse_tags("ses:configuration-set=other, SES:caller-identity=AKIAX, k=v") == \
        {"k": ["v"]}


def test_received_header() -> None:
    line = received_header(helo="c.test", client_ip="192.0.2.1", hostname="relay.test",
                           tls=True, authenticated=True, recipients=["r@x.test"], now=0.0)
    assert line == (b"Received: from c.test ([192.0.2.1])\r\n\tby relay.test with ESMTPSA\r\n"
                    b"\tfor <r@x.test>;\r\n\tThu, 01 Jan 1970 00:00:00 -0000\r\n")


def test_users_file_is_not_the_test_tmp(users: UserStore) -> None:
    assert isinstance(users.path, Path) and users.names() == [USER]


async def test_a_repeat_login_is_answered_without_a_thread(tls: Tls, tmp_path: Path) -> None:
    """Only scrypt goes to the executor: a credential that verified before is checked on
    the loop, saving a thread round trip per connection of a repeat client."""
    import concurrent.futures

    class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
        submitted = 0

        def submit(self, *args: Any, **kw: Any) -> Any:  # type: ignore[override]
            CountingExecutor.submitted += 1
            return super().submit(*args, **kw)

    loop = asyncio.get_running_loop()
    executor = CountingExecutor(max_workers=2)
    loop.set_default_executor(executor)
    async with running_server(tls=tls, users=app_users(tmp_path), limits=limits()) as srv:
        first = await tls_session(srv.port, tls)  # scrypt: one job for the executor
        assert CountingExecutor.submitted == 1
        second = await tls_session(srv.port, tls)  # cached: answered on the loop
        wrong = await tls_session(srv.port, tls, login=False)
        expect(await wrong.cmd(f"AUTH PLAIN {plain(USER, 'not it')}"), R.AUTH_INVALID)
        for client in (first, second, wrong):
            await client.close()
    assert CountingExecutor.submitted == 2  # the wrong password paid scrypt again


async def test_aiosmtpd_command_lines_at_debug_still_mask_the_auth_credential(
        tls: Tls, users: UserStore, caplog: pytest.LogCaptureFixture) -> None:
    # aiosmtpd's per-line log work is skipped while mail.log is off; when it is on, every
    # command line is logged and an AUTH line's credential is masked, as before.
    caplog.set_level(logging.WARNING, logger="mail.log")
    async with running_server(tls=tls, users=users) as srv:
        client = await tls_session(srv.port, tls)
        await client.close()
    assert not [r for r in caplog.records if r.name == "mail.log"]
    caplog.set_level(logging.DEBUG, logger="mail.log")
    async with running_server(tls=tls, users=users) as srv:
        client = await tls_session(srv.port, tls)
        await client.close()
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "mail.log")
    assert "EHLO client.test" in text
    assert "AUTH PLAIN ********" in text
    assert PLAIN_OK not in text and PASSWORD not in text
