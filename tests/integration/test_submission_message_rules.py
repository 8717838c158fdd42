"""What submission checks and completes in a message and its envelope, over real SMTP.

A real submission server on loopback with real TLS (trustme); what it queues is read back
from a real in-memory submitter. Covered: the hop limit (mail loops), header spoofing by a
repeated RFC 5322 §3.6 field (any letter case, obsolete "From :" syntax), the identity
check on the one From that is delivered, Message-ID and Date added when absent (RFC 6409
§8), recipient syntax at RCPT, the reply before STARTTLS, and a credential's allow list
with sender authorization off.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.clock import FakeClock
from relay.config import Size
from relay.identity.authorize import SenderPolicy
from relay.identity.store import IdentityStore
from relay.smtp import replies as R
from relay.smtp.server import SubmissionServer
from relay.testing.submission import (
    PASSWORD,
    USER,
    RawClient,
    RecordingSubmitter,
    Reply,
    Tls,
    expect,
    header_section,
    make_listener,
    named,
    running_server,
)
from relay.testing.submission import fast_limits as limits
from relay.users import UserStore

NOW = 1_780_000_000.0  # the server's (fake) clock


@pytest.fixture
async def server(tls: Tls, users: UserStore,
                 submitter: RecordingSubmitter) -> AsyncIterator[SubmissionServer]:
    """conftest.py's server, on a fake clock at NOW."""
    async with running_server(tls=tls, users=users, submitter=submitter, limits=limits(),
                              clock=FakeClock(NOW)) as srv:
        yield srv


async def session(port: int, tls: Tls, user: str = USER, password: str = PASSWORD) -> RawClient:
    import base64
    client = await RawClient.connect(port)
    assert (await client.read_reply()).code == 220
    assert (await client.cmd("EHLO client.test")).code == 250
    assert (await client.starttls(tls.client)).code == 220
    assert (await client.cmd("EHLO client.test")).code == 250
    creds = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    assert (await client.cmd(f"AUTH PLAIN {creds}")).code == 235
    return client


async def send(client: RawClient, message: bytes, sender: str = "app@example.com",
               rcpt: str = "r@dest.test") -> Reply:
    reply = await client.cmd(f"MAIL FROM:<{sender}>")
    if reply.code != 250:
        return reply
    reply = await client.cmd(f"RCPT TO:<{rcpt}>")
    if reply.code != 250:
        return reply
    assert (await client.cmd("DATA")).code == 354
    await client.send(message + b".\r\n")
    return await client.read_reply()


# --- hop limit (mail loops) ---------------------------------------------------------------

def received_lines(n: int) -> bytes:
    return b"".join(b"Received: from hop%d.example (hop%d.example [192.0.2.1])\r\n"
                    b"\tby relay.example; Mon, 7 Dec 2026 10:00:00 +0000\r\n" % (i, i)
                    for i in range(n))


async def test_message_past_the_hop_limit_is_refused_554_5_4_6(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter) -> None:
    client = await session(server.port, tls)
    body = b"From: app@example.com\r\nSubject: loop\r\n\r\nround and round\r\n"
    reply = await send(client, received_lines(51) + body)
    assert str(reply.last) == f"{R.TOO_MANY_HOPS.code} {R.TOO_MANY_HOPS.enhanced} Too many hops"
    # Case and obsolete syntax count too: "received :" is a Received field.
    mixed = received_lines(50) + b"received : from x\r\n\tby y; Mon, 7 Dec 2026 10:00:00 +0000\r\n"
    expect(await send(client, mixed + body), R.TOO_MANY_HOPS)
    assert submitter.messages == []
    expect(await send(client, received_lines(50) + body), R.QUEUED)
    assert len(submitter.messages) == 1
    await client.close()


async def test_hop_limit_is_configurable(tls: Tls, users: UserStore) -> None:
    submitter = RecordingSubmitter()
    async with running_server(tls=tls, users=users, submitter=submitter,
                              limits=limits(max_hop_count=3)) as srv:
        client = await session(srv.port, tls)
        body = b"From: app@example.com\r\n\r\nx\r\n"
        expect(await send(client, received_lines(4) + body), R.TOO_MANY_HOPS)
        expect(await send(client, received_lines(3) + body), R.QUEUED)
        await client.close()
    assert len(submitter.messages) == 1


async def test_received_lines_in_the_body_are_not_hops(
        server: SubmissionServer, tls: Tls) -> None:
    client = await session(server.port, tls)
    message = b"From: app@example.com\r\n\r\n" + received_lines(60)  # a forwarded trace
    expect(await send(client, message), R.QUEUED)
    await client.close()


async def test_header_section_past_its_limit_is_refused_552_5_3_4(
        tls: Tls, users: UserStore) -> None:
    """The work of reading a header section is bounded: past max_header_size it is refused,
    whatever it holds (here a second From past the first 1,500 bytes)."""
    submitter = RecordingSubmitter()
    async with running_server(tls=tls, users=users, submitter=submitter,
                              limits=limits(max_header_size=Size(1500))) as srv:
        client = await session(srv.port, tls)
        pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 60) for i in range(25))
        message = b"From: app@example.com\r\n" + pad + b"From: boss@other.test\r\n\r\nhi\r\n"
        expect(await send(client, message), R.HEADER_TOO_BIG)
        expect(await send(client, b"From: app@example.com\r\n\r\n" + pad), R.QUEUED)
        await client.close()
    assert len(submitter.messages) == 1


# --- header spoofing: one of each RFC 5322 §3.6 field ---------------------------------------

@pytest.mark.parametrize("second", [
    b"From: Boss <boss@other.test>",
    b"FROM: boss@other.test",
    b"from: boss@other.test",
    b"From : boss@other.test",
    b"From\t: boss@other.test",
    b"fRoM  :\r\n boss@other.test",
])
async def test_second_from_in_any_spelling_is_refused_554_5_6_0(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter,
        second: bytes) -> None:
    client = await session(server.port, tls)
    message = (b"From: App <app@example.com>\r\nTo: r@dest.test\r\nSubject: s\r\n"
               + second + b"\r\n\r\nhi\r\n")
    reply = await send(client, message)
    expect(reply, R.HEADER_REPEATED)
    assert "'From'" in reply.text, reply
    assert submitter.messages == []
    await client.close()


@pytest.mark.parametrize("name", ["Sender", "Reply-To", "To", "Cc", "Bcc", "Message-ID",
                                  "Date", "Subject"])
async def test_every_one_of_a_kind_field_is_refused_twice(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter, name: str) -> None:
    client = await session(server.port, tls)
    value = {"Message-ID": "<a@example.com>", "Date": "Mon, 7 Dec 2026 10:00:00 +0000"}.get(
        name, "x@example.com")
    message = (f"From: app@example.com\r\n{name}: {value}\r\nX-Other: 1\r\n"
               f"{name.upper()} : {value}\r\n\r\nhi\r\n").encode()
    reply = await send(client, message)
    expect(reply, R.HEADER_REPEATED)
    assert f"'{name}'" in reply.text, reply
    assert submitter.messages == []
    await client.close()


async def test_repeatable_fields_and_body_lines_are_not_refused(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter) -> None:
    client = await session(server.port, tls)
    message = (b"From: app@example.com\r\nComments: one\r\nComments: two\r\n"
               b"Keywords: a\r\nKeywords: b\r\nResent-From: x@example.com\r\n"
               b"Resent-From: y@example.com\r\n\r\nFrom: quoted in the body\r\n"
               b"From: twice\r\n")
    expect(await send(client, message), R.QUEUED)
    assert len(submitter.messages) == 1
    await client.close()


@pytest.fixture
def policy(tmp_path: Path) -> SenderPolicy:
    users = UserStore(tmp_path / "users.json")
    users.add("app", "pw-app", ["example.com"])
    users.add("any", "pw-any")
    identities = IdentityStore.in_state_dir(tmp_path)
    for name in ("example.com", "other.test"):
        identities.add(name)
        identities.set_verified(name, True)
    return SenderPolicy(identities, users)


async def test_identity_is_checked_on_an_obsolete_syntax_from(
        tls: Tls, policy: SenderPolicy) -> None:
    """"From :" is the From a receiver shows: the credential may not use it."""
    submitter = RecordingSubmitter()
    async with running_server(tls=tls, users=policy.users, submitter=submitter,
                              sender_check=policy) as srv:
        client = await session(srv.port, tls, "app", "pw-app")
        for spelling in (b"From :", b"FROM:", b"from\t:"):
            reply = await send(client, b"Subject: s\r\n" + spelling
                               + b" Boss <boss@other.test>\r\n\r\nhi\r\n")
            expect(reply, R.MESSAGE_REJECTED)
            assert "boss@other.test" in reply.text, reply
        assert submitter.messages == []
        expect(await send(client, b"From : App <app@example.com>\r\n\r\nhi\r\n"), R.QUEUED)
        await client.close()
    # Delivered with the standard spelling, so every reader downstream sees that From.
    fields = header_section(submitter.messages[0].body)
    assert ("From", "App <app@example.com>") in fields
    assert submitter.messages[0].headers["From"] == "App <app@example.com>"


async def test_a_from_after_a_stray_line_is_body_for_everyone(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter) -> None:
    """A line that is no field ends the headers; the empty line is inserted before it, so
    a lenient reader (one that skips mbox "From " lines) cannot read the From after it."""
    client = await session(server.port, tls)
    message = (b"From: app@example.com\r\nSubject: s\r\nFrom evil@other.test Mon Dec 7\r\n"
               b"From: boss@other.test\r\n\r\nhi\r\n")
    expect(await send(client, message), R.QUEUED)
    await client.close()
    body = submitter.messages[0].body
    assert named(header_section(body), "From") == ["app@example.com"]
    assert b"\r\nSubject: s\r\n\r\nFrom evil@other.test Mon Dec 7\r\n" in body


# --- Message-ID and Date -------------------------------------------------------------------

async def test_message_id_and_date_are_added_when_absent(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter) -> None:
    client = await session(server.port, tls)
    expect(await send(client, b"From: app@example.com\r\nSubject: s\r\n\r\nhi\r\n"), R.QUEUED)
    expect(await send(client, b"From: app@example.com\r\nSubject: t\r\n\r\nhi\r\n"), R.QUEUED)
    await client.close()
    ids = []
    for msg in submitter.messages:
        fields = header_section(msg.body)
        [message_id] = named(fields, "Message-ID")
        [date] = named(fields, "Date")
        assert re.fullmatch(r"<[0-9a-f-]{36}@relay\.test>", message_id), message_id
        parsed = email.utils.parsedate_to_datetime(date)
        assert parsed.timestamp() == NOW and date.endswith("+0000"), date
        assert msg.headers["Message-ID"] == message_id and msg.headers["Date"] == date
        assert msg.body.endswith(b"\r\n\r\nhi\r\n")
        ids.append(message_id)
    assert ids[0] != ids[1]


async def test_message_id_and_date_are_kept_when_present(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter) -> None:
    client = await session(server.port, tls)
    sent = (b"From: app@example.com\r\nmessage-id: <own@example.com>\r\n"
            b"DATE: Tue, 1 Dec 2026 08:00:00 +0100\r\n\r\nhi\r\n")
    expect(await send(client, sent), R.QUEUED)
    await client.close()
    body = submitter.messages[0].body
    assert body.endswith(sent)  # after our Received line, byte for byte
    fields = header_section(body)
    assert named(fields, "Message-ID") == ["<own@example.com>"]
    assert named(fields, "Date") == ["Tue, 1 Dec 2026 08:00:00 +0100"]


async def test_a_message_with_no_headers_gets_them_and_an_empty_line(
        server: SubmissionServer, tls: Tls, submitter: RecordingSubmitter) -> None:
    client = await session(server.port, tls)
    expect(await send(client, b"just text, no header\r\n"), R.QUEUED)
    await client.close()
    body = submitter.messages[0].body
    fields = header_section(body)
    assert [n for n, _ in fields] == ["Received", "Message-ID", "Date"]
    assert body.endswith(b"\r\n\r\njust text, no header\r\n")


# --- recipient syntax ---------------------------------------------------------------------

@pytest.mark.parametrize("rcpt", [
    "not-an-address", "user@", '""@dest.test', "user@dest", "user@-dest.test",
    "user@dest..test", "user@dest.test-", "user@dest_x.test", "user@dest!x.test",
    "user@1.2.3.4", "user@[1.2.3]", "user@[IPv6:zz::1]", "x" * 65 + "@dest.test",
    "user@" + "a" * 64 + ".test", ".user@dest.test", "us..er@dest.test",
])
async def test_bad_recipient_syntax_is_refused_501_5_1_3(
        server: SubmissionServer, tls: Tls, rcpt: str) -> None:
    client = await session(server.port, tls)
    expect(await client.cmd("MAIL FROM:<app@example.com>"), R.SENDER_OK)
    reply = await client.cmd(f"RCPT TO:<{rcpt}>")
    expect(reply, R.BAD_RECIPIENT)
    assert "Bad recipient address syntax" in reply.text
    expect(await client.cmd("DATA"), R.NEED_RCPT)  # nothing was accepted
    await client.close()


@pytest.mark.parametrize("rcpt", [
    "r@dest.test", "First.Last+tag@Sub.Dest.Test", '"john doe"@dest.test',
    "r@[192.0.2.7]", "r@[IPv6:2001:db8::7]", "r@xn--bcher-kva.example",
    "o'brien@dest.test", "a/b=c@dest.test",
])
async def test_good_recipient_syntax_is_accepted(
        server: SubmissionServer, tls: Tls, rcpt: str) -> None:
    client = await session(server.port, tls)
    expect(await client.cmd("MAIL FROM:<app@example.com>"), R.SENDER_OK)
    expect(await client.cmd(f"RCPT TO:<{rcpt}>"), R.RECIPIENT_OK)
    await client.close()


async def test_utf8_recipient_is_accepted_with_smtputf8(
        server: SubmissionServer, tls: Tls) -> None:
    client = await session(server.port, tls)
    expect(await client.cmd("MAIL FROM:<app@example.com> SMTPUTF8"), R.SENDER_OK)
    expect(await client.cmd("RCPT TO:<jörg@bücher.example>"), R.RECIPIENT_OK)
    await client.close()


# --- before STARTTLS ----------------------------------------------------------------------

async def test_mail_before_starttls_is_told_to_start_tls(server: SubmissionServer) -> None:
    client = await RawClient.connect(server.port)
    await client.read_reply()
    ehlo = await client.cmd("EHLO client.test")
    assert "STARTTLS" in ehlo.lines and not any(x.startswith("AUTH") for x in ehlo.lines)
    for command in ("MAIL FROM:<app@example.com>", "RCPT TO:<r@dest.test>", "DATA"):
        reply = await client.cmd(command)
        assert reply.last == "530 5.7.0 Must issue a STARTTLS command first", reply
    await client.close()


async def test_without_tls_on_offer_auth_is_what_is_required(
        users: UserStore) -> None:
    async with running_server(tls=None, users=users,
                              listener=make_listener(tls="none", auth="required")) as srv:
        client = await RawClient.connect(srv.port)
        await client.read_reply()
        await client.cmd("EHLO client.test")
        expect(await client.cmd("MAIL FROM:<app@example.com>"), R.AUTH_REQUIRED)
        assert "Authentication required" in (await client.cmd("MAIL FROM:<a@b.test>")).text
        await client.close()


# --- sender authorization "off": an explicit allow list still holds ------------------------

@pytest.fixture
def off_policy(policy: SenderPolicy) -> SenderPolicy:
    return SenderPolicy(policy.identities, policy.users, require_verified=False)


async def test_allow_list_holds_with_sender_authorization_off(
        tls: Tls, off_policy: SenderPolicy) -> None:
    submitter = RecordingSubmitter()
    async with running_server(tls=tls, users=off_policy.users, submitter=submitter,
                              sender_check=off_policy) as srv:
        app = await session(srv.port, tls, "app", "pw-app")  # --allow example.com
        reply = await app.cmd("MAIL FROM:<ceo@other.test>")
        expect(reply, R.SENDER_NOT_AUTHORIZED)
        assert "ceo@other.test" in reply.text and "'app'" in reply.text
        await app.cmd("RSET")
        reply = await send(app, b"From: CEO <ceo@unverified.test>\r\n\r\nhi\r\n")
        expect(reply, R.MESSAGE_REJECTED)
        assert "ceo@unverified.test" in reply.text
        # Unverified, but what the allow list names: off means no verification.
        expect(await send(app, b"From: a@example.com\r\n\r\nhi\r\n", sender="b@example.com"),
               R.QUEUED)
        await app.close()
        anyone = await session(srv.port, tls, "any", "pw-any")  # no allow list: anything
        expect(await send(anyone, b"From: x@unverified.test\r\n\r\nhi\r\n",
                           sender="x@unverified.test"), R.QUEUED)
        expect(await send(anyone, b"Subject: no from\r\n\r\nhi\r\n"), R.QUEUED)
        await anyone.close()
    assert len(submitter.messages) == 3
