"""Protocol attacks against the submission server, each with the exact bytes of the
attack: inbound smuggling, unauthorised pipelining, STARTTLS command injection, CR/LF and
parameter injection, AUTH before TLS, open relay and spoofing, AUTH brute force, plus
commands ending in a bare LF.

Extends tests/integration/test_submission.py (which covers the single-segment basics)
with the variants a skeptical reviewer would try next: smuggling over the trusted
plaintext path, every bad ending in one TCP write with the dot-line first, bare LF
in every command position, AUTH continuation lines, STARTTLS with more tails.
"""

from __future__ import annotations

import asyncio

import pytest
from smtpkit import PASSWORD, USER, connect, expect, open_data, plain, send_ok, tls_session

from relay.smtp import replies as R
from relay.smtp.server import SubmissionServer
from relay.testing.submission import (
    RecordingSubmitter,
    Tls,
    count_scrypt,
    make_listener,
    running_server,
)
from relay.users import UserStore

SMUGGLED = (b"MAIL FROM:<ceo@victim.example>\r\nRCPT TO:<r@sink.test>\r\nDATA\r\n"
            b"From: ceo@victim.example\r\n\r\nSMUGGLED\r\n.\r\n")
# The smtpsmug list plus Postfix's late variant (inbound SMTP smuggling).
BAD_ENDINGS = [b"\n.\n", b"\r.\r", b"\r.\n", b"\n.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n",
               b"\r\n.\r", b"\r\n\x00.\r\n", b"\r\r\n.\r\r\n"]


def _no_smuggled(submitter: RecordingSubmitter) -> None:
    for msg in submitter.messages:
        assert msg.sender != "ceo@victim.example"
    assert sum(1 for m in submitter.messages if b"SMUGGLED" in m.body) <= 1


# --- inbound SMTP smuggling (a bare LF or CR around the dot) -----------------------------

@pytest.mark.parametrize("ending", BAD_ENDINGS, ids=repr)
async def test_smuggling_in_one_write_never_two_messages(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter,
        ending: bytes) -> None:
    # The whole attack, transaction included, in a single TCP segment.
    client = await tls_session(server.port, tls)
    await client.send(b"MAIL FROM:<u@tenant.example>\r\nRCPT TO:<r@sink.test>\r\nDATA\r\n"
                      b"From: u@tenant.example\r\n\r\nbody" + ending + SMUGGLED)
    codes = [(await client.read_reply()).code for _ in range(4)]
    assert codes[:3] == [250, 250, 354]
    if ending == b"\r\n\x00.\r\n":
        assert codes[3] == 250  # NUL is data: one literal message (documented policy)
    else:
        assert codes[3] == R.BARE_NEWLINE.code
    expect(await client.cmd("NOOP"), R.OK)  # exactly one reply for the whole DATA
    await send_ok(client)
    await client.close()
    _no_smuggled(submitter)
    assert len(submitter.messages) == (2 if ending == b"\r\n\x00.\r\n" else 1)


@pytest.mark.parametrize("ending", BAD_ENDINGS[:-2], ids=repr)
async def test_smuggling_over_trusted_plaintext_path(tls: Tls, users: UserStore,
                                                       ending: bytes) -> None:
    # A trusted network skips AUTH and TLS: the bare-CR/LF check must not depend on either.
    submitter = RecordingSubmitter()
    listener = make_listener(tls="none", auth="none", trusted_networks=["127.0.0.0/8"])
    async with running_server(tls=None, listener=listener, users=users,
                              submitter=submitter) as srv:
        client = await connect(srv.port)
        assert (await client.cmd("EHLO c")).code == 250
        await open_data(client)
        await client.send(b"From: u@tenant.example\r\n\r\nbody" + ending + SMUGGLED)
        expect(await client.read_reply(), R.BARE_NEWLINE)
        expect(await client.cmd("NOOP"), R.OK)
        await client.close()
    assert submitter.messages == []


async def test_smuggling_split_across_segments_still_one_message(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter) -> None:
    # "\r\n" of the real end split from "." by a segment boundary is still the real end.
    client = await tls_session(server.port, tls)
    await open_data(client)
    for chunk in (b"From: u@tenant.example\r\n\r\nline\r", b"\n", b".", b"\r", b"\n"):
        await client.send(chunk)
        await asyncio.sleep(0.01)
    expect(await client.read_reply(), R.QUEUED)
    await client.close()
    (msg,) = submitter.messages
    assert msg.body.endswith(b"\r\n\r\nline\r\n")


# --- commands ending in a bare LF ---------------------------------------------------------

@pytest.mark.parametrize("line", [b"NOOP\n", b"\n", b"RSET\r\r\n", b"QUIT\n", b"EHLO c\n",
                                  b"MAIL FROM:<u@tenant.example>\n"], ids=repr)
async def test_bare_lf_command_refused_500_552(server: SubmissionServer, tls: Tls,
                                                  line: bytes) -> None:
    client = await tls_session(server.port, tls)
    await client.send(line)
    expect(await client.read_reply(), R.BARE_NEWLINE_COMMAND)
    # Not executed: QUIT did not close, MAIL did not open a transaction.
    expect(await client.cmd("RCPT TO:<r@sink.test>"),
           R.Reply(503, "5.5.1", "Error: need MAIL command"))
    await send_ok(client)
    await client.close()


async def test_bare_lf_pipelined_transaction_is_not_run(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter) -> None:
    client = await tls_session(server.port, tls)
    await client.send(b"MAIL FROM:<u@tenant.example>\nRCPT TO:<r@sink.test>\nDATA\n"
                      b"From: u@tenant.example\n\nhi\n.\n")
    replies = [await client.read_reply() for _ in range(7)]  # one per bare-LF line
    for reply in replies:
        expect(reply, R.BARE_NEWLINE_COMMAND)
    expect(await client.cmd("NOOP"), R.OK)
    await client.close()
    assert submitter.messages == []


async def test_bare_lf_auth_continuation_refused(server: SubmissionServer, tls: Tls,
                                                    submitter: RecordingSubmitter) -> None:
    client = await tls_session(server.port, tls, login=False)
    assert (await client.cmd("AUTH LOGIN")).code == 334
    await client.send(b"YXBw\n")  # "app" ending in bare LF
    expect(await client.read_reply(), R.BARE_NEWLINE_COMMAND)
    expect(await client.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}"), R.AUTH_OK)
    await client.close()


async def test_bare_lf_command_before_tls(server: SubmissionServer) -> None:
    client = await connect(server.port)
    await client.send(b"EHLO c\nSTARTTLS\n")
    expect(await client.read_reply(), R.BARE_NEWLINE_COMMAND)
    expect(await client.read_reply(), R.BARE_NEWLINE_COMMAND)
    assert (await client.cmd("EHLO c")).code == 250
    await client.close()


# --- unauthorised pipelining --------------------------------------------------------------

async def test_unauthorised_pipelining_before_354_one_reply_each_one_message(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter) -> None:
    client = await tls_session(server.port, tls)
    await client.send(b"MAIL FROM:<u@tenant.example>\r\nRCPT TO:<r@sink.test>\r\nDATA\r\n"
                      b"From: x\r\n\r\nhi\r\n.\r\n" + SMUGGLED)
    codes = [(await client.read_reply()).code for _ in range(8)]
    assert codes == [250, 250, 354, 250, 250, 250, 354, 250]
    expect(await client.cmd("NOOP"), R.OK)
    await client.close()
    # Two transactions because two were sent; the second is a real, separate one from an
    # authenticated client and its From: is checked like any other.
    assert len(submitter.messages) == 2
    assert [m.body.count(b"\r\n.\r\n") for m in submitter.messages] == [0, 0]


async def test_unauthorised_pipelining_without_auth_gets_530_for_all(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter) -> None:
    client = await tls_session(server.port, tls, login=False)
    await client.send(b"MAIL FROM:<u@tenant.example>\r\nRCPT TO:<r@sink.test>\r\nDATA\r\n"
                      b"From: x\r\n\r\nhi\r\n.\r\n")
    first = [await client.read_reply() for _ in range(3)]
    for reply in first:
        expect(reply, R.AUTH_REQUIRED)
    # The body lines arrive as commands: each refused, none executed.
    rest = [(await client.read_reply()).code for _ in range(4)]
    assert all(code >= 500 for code in rest), rest
    await client.close()
    assert submitter.messages == []


# --- STARTTLS command injection -----------------------------------------------------------

@pytest.mark.parametrize("tail", [
    b"MAIL FROM:<evil@x>\r\n", b"RSET\r\n", b"AUTH PLAIN AGV2aWwAcHc=\r\n",
    b"EHLO evil\r\nAUTH PLAIN " + plain(USER, PASSWORD).encode() + b"\r\n",
    b"MAIL FROM:<evil@x>\n", b"NOOP\r\nNOOP\r\nNOOP\r\n" * 50,
], ids=["mail", "rset", "auth", "ehlo-auth-valid", "bare-lf", "many"])
async def test_starttls_injection_tail_discarded(server: SubmissionServer, tls: Tls,
                                          tail: bytes) -> None:
    client = await connect(server.port)
    await client.cmd("EHLO c")
    await client.send(b"STARTTLS\r\n" + tail)
    assert (await client.read_reply()).code == 220
    await client.writer.start_tls(tls.client, server_hostname="127.0.0.1")
    ehlo = await client.cmd("EHLO c")  # the first reply inside TLS answers this EHLO
    assert ehlo.code == 250 and ehlo.lines[0] == "relay.test"
    # Not authenticated by the injected AUTH, no transaction opened by the injected MAIL.
    expect(await client.cmd("MAIL FROM:<u@tenant.example>"), R.AUTH_REQUIRED)
    expect(await client.cmd("NOOP"), R.OK)
    await client.close()


async def test_auth_state_reset_by_second_starttls_refused(
        server: SubmissionServer, tls: Tls) -> None:
    client = await tls_session(server.port, tls)
    # TLS already active: refused (aiosmtpd alone would nest a second handshake).
    expect(await client.cmd("STARTTLS"), R.TLS_ALREADY_ACTIVE)
    await send_ok(client)
    await client.close()


# --- CR/LF and parameter injection --------------------------------------------------------

@pytest.mark.parametrize("line,want", [
    (b"MAIL FROM:<a@tenant.example> BODY=8BITMIME\rRCPT TO:<v@y.test>", R.BAD_SENDER),
    (b"MAIL FROM:<\"a\rDATA\"@tenant.example>", R.BAD_SENDER),
    (b"MAIL FROM:<a@tenant.example> SIZE=10\x00", R.BAD_SENDER),
], ids=["mail-param", "quoted-local", "nul-param"])
async def test_crlf_mail_injection_refused(server: SubmissionServer, tls: Tls,
                                         line: bytes, want: R.Reply) -> None:
    client = await tls_session(server.port, tls)
    expect(await client.cmd(line), want)
    await send_ok(client)
    await client.close()


@pytest.mark.parametrize("line", [
    b"RCPT TO:<a@x.test>\rRCPT TO:<victim@y.test>",
    b"RCPT TO:<\"a\rDATA\"@x.test>",
    b"RCPT TO:<a@x.test> NOTIFY=NEVER\x0bX",
], ids=["rcpt-cr", "quoted-local", "vt-param"])
async def test_crlf_rcpt_injection_refused(server: SubmissionServer, tls: Tls,
                                         submitter: RecordingSubmitter, line: bytes) -> None:
    client = await tls_session(server.port, tls)
    expect(await client.cmd("MAIL FROM:<u@tenant.example>"), R.SENDER_OK)
    expect(await client.cmd(line), R.BAD_RECIPIENT)
    await client.close()
    assert submitter.messages == []


@pytest.mark.parametrize("helo", [b"EHLO a\rReceived: forged", b"HELO a\rX: y",
                                  b"EHLO a\x00b"], ids=repr)
async def test_crlf_helo_injection_refused(server: SubmissionServer, helo: bytes) -> None:
    client = await connect(server.port)
    reply = await client.cmd(helo)
    assert (reply.code, reply.lines[-1].split()[0]) == (501, "5.5.4"), reply
    await client.close()


async def test_crlf_received_header_written_by_relay_has_no_injection(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter) -> None:
    client = await tls_session(server.port, tls)
    await open_data(client)
    await client.send(b"From: u@tenant.example\r\nX-SES-MESSAGE-TAGS: a=b\r\n\r\nx\r\n.\r\n")
    expect(await client.read_reply(), R.QUEUED)
    await client.close()
    (msg,) = submitter.messages
    head = msg.body.split(b"\r\n\r\n", 1)[0]
    # Every header line relay wrote (Received) ends in CRLF, no bare CR or LF anywhere.
    assert head.count(b"\n") == head.count(b"\r\n") == head.count(b"\r")
    assert head.startswith(b"Received: from client.test ([127.0.0.1])")
    assert msg.tags == {"a": ["b"]}


async def test_crlf_tags_header_with_bare_cr_is_refused(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter) -> None:
    client = await tls_session(server.port, tls)
    await open_data(client)
    await client.send(b"From: u@tenant.example\r\nX-SES-MESSAGE-TAGS: a=b\rBcc: v@y.test\r\n"
                      b"X-SES-CONFIGURATION-SET: cs\nBcc: v@y.test\r\n\r\nx\r\n.\r\n")
    expect(await client.read_reply(), R.BARE_NEWLINE)
    await client.close()
    assert submitter.messages == []


# --- AUTH before TLS ----------------------------------------------------------------------

async def test_auth_before_tls_with_valid_credentials_in_plaintext(server: SubmissionServer,
                                                           submitter: RecordingSubmitter,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    calls = count_scrypt(monkeypatch)
    client = await connect(server.port)
    await client.send(b"EHLO c\r\nAUTH PLAIN AHUAcHc=\r\n")
    ehlo = await client.read_reply()
    assert not any(line.startswith("AUTH") for line in ehlo.lines)
    expect(await client.read_reply(), R.ENCRYPTION_REQUIRED)
    reply = await client.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}")
    expect(reply, R.ENCRYPTION_REQUIRED)
    expect(await client.cmd("MAIL FROM:<u@tenant.example>"), R.AUTH_REQUIRED)
    expect(await client.cmd("AUTH LOGIN"), R.ENCRYPTION_REQUIRED)
    await client.close()
    assert calls == []  # the credentials were never even checked
    assert submitter.messages == []


# --- open relay and spoofing --------------------------------------------------------------

@pytest.mark.parametrize("rcpt", ["<r@sink.test>", "<@evil.test:r@sink.test>",
                                  "<r%sink.test@relay.local>", "<\"r@sink.test\"@relay.local>",
                                  "<r@sink.test@relay.local>"], ids=repr)
async def test_open_relay_unauthenticated_never_relays(server: SubmissionServer, tls: Tls,
                                               submitter: RecordingSubmitter,
                                               rcpt: str) -> None:
    for use_tls in (False, True):
        client = (await tls_session(server.port, tls, login=False) if use_tls
                  else await connect(server.port))
        if not use_tls:
            await client.cmd("EHLO c")
        expect(await client.cmd("MAIL FROM:<u@tenant.example>"), R.AUTH_REQUIRED)
        expect(await client.cmd(f"RCPT TO:{rcpt}"), R.AUTH_REQUIRED)
        expect(await client.cmd("DATA"), R.AUTH_REQUIRED)
        await client.close()
    assert submitter.messages == []


async def test_open_relay_source_route_refused_even_authenticated(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter) -> None:
    client = await tls_session(server.port, tls)
    expect(await client.cmd("MAIL FROM:<u@tenant.example>"), R.SENDER_OK)
    expect(await client.cmd("RCPT TO:<@evil.test:r@sink.test>"), R.SOURCE_ROUTE)
    expect(await client.cmd("RCPT TO:<@a.test,@evil.test:r@sink.test>"), R.SOURCE_ROUTE)
    await client.close()


async def test_spoofing_foreign_sender_domain_refused(tls: Tls, users: UserStore) -> None:
    submitter = RecordingSubmitter()

    def check(user: str | None, address: str) -> str | None:
        ok = address.lower().endswith("@tenant.example")
        return None if ok else f"{user} may not send as {address}"

    async with running_server(tls=tls, users=users, submitter=submitter,
                              sender_check=check) as srv:
        client = await tls_session(srv.port, tls)
        expect(await client.cmd("MAIL FROM:<x@tenantb.example>"), R.SENDER_NOT_AUTHORIZED)
        # Envelope OK, header From: foreign → refused at end of data.
        await open_data(client)
        await client.send(b"From: x@tenantB.example\r\n\r\nspoof\r\n.\r\n")
        expect(await client.read_reply(), R.MESSAGE_REJECTED)
        await open_data(client)
        await client.send(b"From: u@tenant.example, x@tenantB.example\r\n\r\nspoof\r\n.\r\n")
        expect(await client.read_reply(), R.MESSAGE_REJECTED)
        await client.close()
    assert submitter.messages == []


# --- brute force and enumeration ----------------------------------------------------------

async def test_brute_force_unknown_user_and_wrong_password_identical_and_same_work(
        tls: Tls, users: UserStore, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_scrypt(monkeypatch)
    lim_kw = {"auth_max_failures": 100}
    from relay.testing.submission import fast_limits as limits
    async with running_server(tls=tls, users=users, limits=limits(**lim_kw)) as srv:
        raw: dict[str, bytes] = {}
        for label, creds in (("unknown", plain("nobody", PASSWORD)),
                             ("wrong", plain(USER, "wrong-password")),
                             ("unknown-long", plain("x" * 200, "y" * 200))):
            client = await tls_session(srv.port, tls, login=False)
            await client.send(f"AUTH PLAIN {creds}\r\n".encode())
            raw[label] = await asyncio.wait_for(client.reader.readline(), 5)
            await client.close()
        assert raw["unknown"] == raw["wrong"] == raw["unknown-long"] \
            == f"{R.AUTH_INVALID}\r\n".encode()
    # One scrypt derivation per attempt, whether or not the user exists.
    assert len(calls) == 3


async def test_brute_force_per_connection_cap_421_and_close(tls: Tls, users: UserStore) -> None:
    async with running_server(tls=tls, users=users) as srv:
        srv.context.max_auth_attempts = 3
        client = await tls_session(srv.port, tls, login=False)
        for _ in range(3):
            expect(await client.cmd(f"AUTH PLAIN {plain(USER, 'bad')}"), R.AUTH_INVALID)
        expect(await client.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}"),
               R.TOO_MANY_AUTH_ATTEMPTS)
        assert await client.at_eof()


async def test_brute_force_lockout_locks_the_right_password_too(tls: Tls, users: UserStore,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    from relay.testing.submission import fast_limits as limits
    async with running_server(tls=tls, users=users,
                              limits=limits(auth_max_failures=3)) as srv:
        client = await tls_session(srv.port, tls, login=False)
        for _ in range(3):
            expect(await client.cmd(f"AUTH PLAIN {plain(USER, 'bad')}"), R.AUTH_INVALID)
        calls = count_scrypt(monkeypatch)
        expect(await client.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}"), R.AUTH_LOCKED)
        assert calls == []  # locked: no password oracle, no scrypt cost
        await client.close()
