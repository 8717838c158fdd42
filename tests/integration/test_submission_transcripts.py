"""Submission replies pinned byte for byte: scripted client sessions (every refusal of
HELO/EHLO, MAIL, RCPT, DATA, STARTTLS and AUTH, parameters, bare line ends, the command
and AUTH caps, lockout) against a real listener on loopback, each reply compared with
the transcript recorded before MAIL/RCPT parsing and the HELO/AUTH/DATA decisions moved
from aiosmtpd into relay/smtp/policy.py. A step is a command line (CRLF added) or raw
bytes; "STARTTLS" also starts TLS on the client.
"""

from __future__ import annotations

import asyncio
import base64

from relay.config import Duration, Limits, Size
from relay.testing.submission import RawClient, Tls, make_listener, make_users, running_server

Step = str | bytes

PLAIN = b"\x00app\x00secret"
B64 = base64.b64encode(PLAIN)


LONG = "x" * 1200
SCRIPTS_PLAIN = [
    [
        "EHLO c.test",
        "MAIL FROM:<a@b.test>",
        "RCPT TO:<c@d.test>",
        "DATA",
        b"Subject: x\r\n\r\nhi\r\n.\r\n",
        "QUIT",
    ],
    [
        "MAIL FROM:<a@b.test>",
        "RCPT TO:<c@d.test>",
        "DATA",
        "HELO c.test",
        "HELO",
        "HELO a\x01b",
        "EHLO",
        "EHLO a\x01b",
    ],
    [
        "HELO c.test",
        "MAIL FROM:<a@b.test> SIZE=10",
        "MAIL FROM:<a@b.test>",
        "MAIL FROM:<a@b.test>",
        "RCPT TO:<c@d.test> X=1",
        "RCPT TO:<c@d.test>",
        "DATA x",
        "RSET",
        "NOOP",
        "HELP",
        "HELP MAIL",
        "VRFY x",
        "EXPN x",
        "FOO",
    ],
    [
        "EHLO c.test",
        "MAIL",
        "MAIL TO:<a@b.test>",
        "MAIL FROM:",
        "MAIL FROM:<>",
        "RSET",
        "MAIL FROM:(c)<a@b.test>",
        "MAIL FROM:<@x.test:a@b.test>",
        "MAIL FROM:<a\x7f@b.test>",
        "MAIL FROM:<a@b.test> BODY=X",
        "MAIL FROM:<a@b.test> BODY",
        "MAIL FROM:<a@b.test> SMTPUTF8=1",
        "MAIL FROM:<a@b.test> SIZE=x",
        "MAIL FROM:<a@b.test> SIZE=99999",
        "MAIL FROM:<a@b.test> FOO=bar",
        "MAIL FROM:<a@b.test> =x",
        "MAIL FROM:<a@b.test> AUTH=<>",
        "MAIL FROM:a@b.test",
        "RSET",
        'MAIL FROM: <"q x"@b.test> BODY=8BITMIME SMTPUTF8',
        "RSET",
        "MAIL FROM:<a@b.test>(comment) SIZE=5",
        "RSET",
        "mail from:<é@b.test>",
    ],
    [
        "EHLO c.test",
        "RCPT TO:<c@d.test>",
        "MAIL FROM:<a@b.test>",
        "RCPT",
        "RCPT FROM:<c@d.test>",
        "RCPT TO:",
        "RCPT TO:<>",
        "RCPT TO:(x)<c@d.test>",
        "RCPT TO:<c>",
        "RCPT TO:<c@1.2.3.4>",
        "RCPT TO:<c@d.test> NOTIFY=NEVER",
        "RCPT TO:<@h.test:c@d.test>",
        "RCPT TO:<c\x01@d.test>",
        "RCPT TO:<c1@d.test>",
        "RCPT TO:<c2@d.test>",
        "RCPT TO:<c3@d.test>",
        "RCPT TO:c4@d.test",
        "RSET",
        "MAIL FROM:<a@b.test>",
        "RCPT TO:<c5@d.test>",
        "RCPT TO:<c6@d.test>",
        "DATA",
        b".\r\n",
        "MAIL FROM:<a@b.test>",
        "MAIL FROM:<a@b.test>",
    ],
    [
        "EHLO c.test",
        b"NOOP\n",
        b"NOOP\r\r\n",
        b"\r\n",
        LONG,
        LONG[:1100] + "\n",
        "NOOP",
        b"\xff\xfe\r\n",
        "STARTTLS",
        "STARTTLS x",
        "AUTH PLAIN",
        "QUIT",
    ],
    [
        "HELO c.test",
        "MAIL FROM:<a@b.test> SIZE=1",
        "MAIL FROM:<a@b.test>",
        "RCPT TO:<c@d.test> NOTIFY=NEVER",
        "RCPT TO:<c@d.test>",
        "DATA",
        b"a\nb\r\n.\r\n",
        "MAIL FROM:<a@b.test>",
        "RCPT TO:<c@d.test>",
        "DATA",
        b"x" * 1200 + b"\r\n.\r\n",
    ],
]
SCRIPTS_PLAIN.append(["EHLO c.test"] + ["NOOP"] * 40)  # past max_commands_per_session

SCRIPTS_AUTH = [
    [
        "EHLO c.test",
        "MAIL FROM:<a@b.test>",
        "RCPT TO:<c@d.test>",
        "DATA",
        "AUTH PLAIN",
        "STARTTLS",
        "EHLO c.test",
        "MAIL FROM:<a@b.test>",
        "RCPT TO:<c@d.test>",
        "DATA",
        "AUTH",
        "AUTH PLAIN a b",
        "AUTH CRAM-MD5",
        "AUTH PLAIN " + B64.decode(),
        "AUTH PLAIN",
        "MAIL FROM:<a@b.test> AUTH=<x@y.test> SIZE=5",
        "RCPT TO:<c@d.test>",
        "DATA",
        b"Subject: s\r\n\r\n..x\r\n.\r\n",
        "STARTTLS",
    ],
    [
        "STARTTLS",
        "HELO c.test",
        "AUTH PLAIN",
        "EHLO c.test",
        "AUTH LOGIN",
        "bm9wZQ==",
        "bm9wZQ==",
        "AUTH PLAIN =",
        "AUTH PLAIN",
        "*",
        "AUTH LOGIN",
        b"abc\n",
        "AUTH PLAIN",
        "!!!",
        "AUTH LOGIN " + base64.b64encode(b"app").decode(),
        "c2VjcmV0",
        "AUTH PLAIN x",
    ],
    ["STARTTLS", "EHLO c.test"]
    + ["AUTH PLAIN " + base64.b64encode(b"\x00app\x00bad").decode()] * 12,
]

SCRIPTS_NO_TLS = [
    [
        "EHLO c.test",
        "STARTTLS x",
        "STARTTLS",
        "AUTH PLAIN",
        "MAIL FROM:<a@b.test>",
        "RCPT TO:<c@d.test>",
        "DATA",
        b"..a\r\n.\r\n",
    ],
    ["STARTTLS x", "STARTTLS", "HELO x", "STARTTLS"],
]
SCRIPT_STARTTLS_FIRST = ["EHLO c.test", "STARTTLS x", "HELO c", "STARTTLS"]

_EHLO = "250-relay.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
EHLO_STARTTLS = _EHLO + "250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n"
EHLO_AUTH = _EHLO + "250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n"
EHLO_NO_TLS = _EHLO + "250 ENHANCEDSTATUSCODES\r\n"
NO_DOMAIN = (
    "501 5.1.3 Bad recipient address syntax (no domain (an address is local-part@domain))\r\n"
)

# (the reply or replies to the step, then the connection closes)
EXPECTED: dict[str, list[tuple[str, bool]]] = {
    "plain0": [
        (EHLO_STARTTLS, False),
        ("250 2.1.0 Sender OK\r\n", False),
        ("250 2.1.5 Recipient OK\r\n", False),
        ("354 End data with <CR><LF>.<CR><LF>\r\n", False),
        ("250 2.0.0 Ok: queued as Q000001TEST\r\n", False),
        ("221 2.0.0 Bye\r\n", True),
    ],
    "plain1": [
        ("503 5.5.1 Error: send HELO first\r\n", False),
        ("503 5.5.1 Error: send HELO first\r\n", False),
        ("503 5.5.1 Error: send HELO first\r\n", False),
        ("250 relay.test\r\n", False),
        ("501 5.5.4 Syntax: HELO hostname\r\n", False),
        ("501 5.5.4 Syntax: HELO hostname (printable characters only)\r\n", False),
        ("501 5.5.4 Syntax: EHLO hostname (printable characters only)\r\n", False),
        ("501 5.5.4 Syntax: EHLO hostname (printable characters only)\r\n", False),
    ],
    "plain2": [
        ("250 relay.test\r\n", False),
        ("501 5.5.4 Syntax: MAIL FROM: <address>\r\n", False),
        ("250 2.1.0 Sender OK\r\n", False),
        ("503 5.5.1 Error: nested MAIL command\r\n", False),
        ("501 5.5.4 Syntax: RCPT TO: <address>\r\n", False),
        ("250 2.1.5 Recipient OK\r\n", False),
        ("501 5.5.4 Syntax: DATA\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 Supported commands: HELP NOOP QUIT RSET VRFY\r\n", False),
        ("501 5.5.4 Supported commands: HELP NOOP QUIT RSET VRFY\r\n", False),
        ("252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery\r\n", False),
        ("502 5.5.1 EXPN not implemented\r\n", False),
        ('500 5.5.1 Error: command "FOO" not recognized\r\n', False),
    ],
    "plain3": [
        (EHLO_STARTTLS, False),
        ("501 5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n", False),
        ("501 5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n", False),
        ("501 5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n", False),
        ("250 2.1.0 Sender OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("553 5.1.3 Error: malformed address\r\n", False),
        ("501 5.1.3 Source routes are not accepted\r\n", False),
        ("501 5.1.7 Bad sender address syntax\r\n", False),
        ("501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME\r\n", False),
        ("501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME\r\n", False),
        ("501 5.5.4 Error: SMTPUTF8 takes no arguments\r\n", False),
        ("501 5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n", False),
        ("552 5.3.4 Message size exceeds fixed maximum message size\r\n", False),
        ("555 5.5.4 MAIL FROM parameters not recognized or not implemented\r\n", False),
        ("501 5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n", False),
        ("555 5.5.4 MAIL FROM parameters not recognized or not implemented\r\n", False),
        ("250 2.1.0 Sender OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.1.0 Sender OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.1.0 Sender OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.1.0 Sender OK\r\n", False),
    ],
    "plain4": [
        (EHLO_STARTTLS, False),
        ("503 5.5.1 Error: need MAIL command\r\n", False),
        ("250 2.1.0 Sender OK\r\n", False),
        ("501 5.5.4 Syntax: RCPT TO: <address> [SP <mail-parameters>]\r\n", False),
        ("501 5.5.4 Syntax: RCPT TO: <address> [SP <mail-parameters>]\r\n", False),
        ("501 5.5.4 Syntax: RCPT TO: <address> [SP <mail-parameters>]\r\n", False),
        (NO_DOMAIN, False),
        ("501 5.1.3 Bad recipient address syntax\r\n", False),
        (NO_DOMAIN, False),
        (
            (
                "501 5.1.3 Bad recipient address syntax (domain name with a numeric "
                "top-level label (an IP address needs [brackets]))\r\n"
            ),
            False,
        ),
        ("555 5.5.4 RCPT TO parameters not recognized or not implemented\r\n", False),
        ("501 5.1.3 Source routes are not accepted\r\n", False),
        ("501 5.1.3 Bad recipient address syntax\r\n", False),
        ("250 2.1.5 Recipient OK\r\n", False),
        ("250 2.1.5 Recipient OK\r\n", False),
        ("452 4.5.3 Error: too many recipients\r\n", False),
        ("452 4.5.3 Error: too many recipients\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.1.0 Sender OK\r\n", False),
        ("250 2.1.5 Recipient OK\r\n", False),
        ("250 2.1.5 Recipient OK\r\n", False),
        ("354 End data with <CR><LF>.<CR><LF>\r\n", False),
        ("250 2.0.0 Ok: queued as Q000002TEST\r\n", False),
        ("250 2.1.0 Sender OK\r\n", False),
        ("503 5.5.1 Error: nested MAIL command\r\n", False),
    ],
    "plain5": [
        (EHLO_STARTTLS, False),
        (
            "500 5.5.2 Error: bare <CR> or <LF> in command line; lines must end with <CR><LF>\r\n",
            False,
        ),
        (
            "500 5.5.2 Error: bare <CR> or <LF> in command line; lines must end with <CR><LF>\r\n",
            False,
        ),
        ("500 5.5.2 Error: bad syntax\r\n", False),
        ("500 5.5.2 Error: command line too long\r\n", False),
        ("500 5.5.2 Error: command line too long\r\n500 5.5.2 Error: bad syntax\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("500 5.5.2 Error: bad syntax\r\n", False),
        ("220 2.0.0 Ready to start TLS\r\n", False),
        ("503 5.5.1 Error: TLS already active\r\n", False),
        ("503 5.5.1 Error: send EHLO first\r\n", False),
        ("221 2.0.0 Bye\r\n", True),
    ],
    "plain6": [
        ("250 relay.test\r\n", False),
        ("501 5.5.4 Syntax: MAIL FROM: <address>\r\n", False),
        ("250 2.1.0 Sender OK\r\n", False),
        ("501 5.5.4 Syntax: RCPT TO: <address>\r\n", False),
        ("250 2.1.5 Recipient OK\r\n", False),
        ("354 End data with <CR><LF>.<CR><LF>\r\n", False),
        ("550 5.6.11 message contains bare CR or LF\r\n", False),
        ("250 2.1.0 Sender OK\r\n", False),
        ("250 2.1.5 Recipient OK\r\n", False),
        ("354 End data with <CR><LF>.<CR><LF>\r\n", False),
        ("500 5.5.2 Line too long (see RFC 5321 4.5.3.1.6)\r\n", False),
    ],
    "plain7": [
        (EHLO_STARTTLS, False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("250 2.0.0 OK\r\n", False),
        ("421 4.7.0 Error: too many commands in this connection\r\n", True),
    ],
    "auth0": [
        (EHLO_STARTTLS, False),
        ("530 5.7.0 Must issue a STARTTLS command first\r\n", False),
        ("530 5.7.0 Must issue a STARTTLS command first\r\n", False),
        ("530 5.7.0 Must issue a STARTTLS command first\r\n", False),
        ("538 5.7.11 Encryption required for requested authentication mechanism\r\n", False),
        ("220 2.0.0 Ready to start TLS\r\n", False),
        (EHLO_AUTH, False),
        ("530 5.7.0 Authentication required\r\n", False),
        ("530 5.7.0 Authentication required\r\n", False),
        ("530 5.7.0 Authentication required\r\n", False),
        ("501 5.5.4 Syntax: AUTH <mechanism> [initial-response]\r\n", False),
        ("501 5.5.4 Syntax: AUTH <mechanism> [initial-response]\r\n", False),
        ("504 5.5.4 Unrecognized authentication type\r\n", False),
        ("235 2.7.0 Authentication successful\r\n", False),
        ("503 5.5.1 Already authenticated\r\n", False),
        ("250 2.1.0 Sender OK\r\n", False),
        ("250 2.1.5 Recipient OK\r\n", False),
        ("354 End data with <CR><LF>.<CR><LF>\r\n", False),
        ("250 2.0.0 Ok: queued as Q000001TEST\r\n", False),
        ("503 5.5.1 Error: TLS already active\r\n", False),
    ],
    "auth1": [
        ("220 2.0.0 Ready to start TLS\r\n", False),
        ("250 relay.test\r\n", False),
        ("503 5.5.1 Error: send EHLO first\r\n", False),
        (EHLO_AUTH, False),
        ("334 VXNlciBOYW1lAA==\r\n", False),
        ("334 UGFzc3dvcmQA\r\n", False),
        ("535 5.7.8 Authentication credentials invalid\r\n", False),
        ("501 5.5.2 Can't decode base64\r\n", False),
        ("334 \r\n", False),
        ("501 5.7.0 Auth aborted\r\n", False),
        ("334 VXNlciBOYW1lAA==\r\n", False),
        (
            "500 5.5.2 Error: bare <CR> or <LF> in command line; lines must end with <CR><LF>\r\n",
            False,
        ),
        ("334 \r\n", False),
        ("501 5.5.2 Can't decode base64\r\n", False),
        ("334 UGFzc3dvcmQA\r\n", False),
        ("235 2.7.0 Authentication successful\r\n", False),
        ("503 5.5.1 Already authenticated\r\n", False),
    ],
    "auth2": [
        ("220 2.0.0 Ready to start TLS\r\n", False),
        (EHLO_AUTH, False),
        ("535 5.7.8 Authentication credentials invalid\r\n", False),
        ("535 5.7.8 Authentication credentials invalid\r\n", False),
        ("535 5.7.8 Authentication credentials invalid\r\n", False),
        ("535 5.7.8 Authentication credentials invalid\r\n", False),
        ("535 5.7.8 Authentication credentials invalid\r\n", False),
        ("454 4.7.0 Temporary authentication failure, try again later\r\n", False),
        ("454 4.7.0 Temporary authentication failure, try again later\r\n", False),
        ("454 4.7.0 Temporary authentication failure, try again later\r\n", False),
        ("454 4.7.0 Temporary authentication failure, try again later\r\n", False),
        ("454 4.7.0 Temporary authentication failure, try again later\r\n", False),
        ("421 4.7.0 Error: too many AUTH attempts\r\n", True),
    ],
    "none0": [
        (EHLO_NO_TLS, False),
        ("501 5.5.4 Syntax: STARTTLS\r\n", False),
        ("454 4.7.0 TLS not available\r\n", False),
        ("502 5.5.1 Error: AUTH not available on this listener\r\n", False),
        ("250 2.1.0 Sender OK\r\n", False),
        ("250 2.1.5 Recipient OK\r\n", False),
        ("354 End data with <CR><LF>.<CR><LF>\r\n", False),
        ("250 2.0.0 Ok: queued as Q000001TEST\r\n", False),
    ],
    "none1": [
        ("501 5.5.4 Syntax: STARTTLS\r\n", False),
        ("454 4.7.0 TLS not available\r\n", False),
        ("250 relay.test\r\n", False),
        ("454 4.7.0 TLS not available\r\n", False),
    ],
    "auth_starttls": [
        (EHLO_STARTTLS, False),
        ("501 5.5.4 Syntax: STARTTLS\r\n", False),
        ("250 relay.test\r\n", False),
        ("220 2.0.0 Ready to start TLS\r\n", False),
    ],
}

LIMITS = Limits(
    auth_failure_delay=Duration(0.0),
    max_message_size=Size(1000),
    max_recipients=2,
    max_recipients_per_session=4,
    max_messages_per_connection=3,
    max_commands_per_session=30,
)


async def play(port: int, tls: Tls, script: list[Step], expected: list[tuple[str, bool]]) -> None:
    client = await RawClient.connect(port)
    try:
        assert (await client.read_reply()).code == 220
        for step, (want, closes) in zip(script, expected, strict=False):
            data = (
                step
                if isinstance(step, bytes)
                else step.encode("utf-8", "surrogateescape") + b"\r\n"
            )
            await client.send(data)
            got = await asyncio.wait_for(client.reader.readexactly(len(want)), 5)
            assert got.decode("latin-1") == want, step
            if step == "STARTTLS" and want.startswith("220"):
                await client.writer.start_tls(tls.client, server_hostname="127.0.0.1")
            if closes:
                assert await client.at_eof()
                return
    finally:
        await client.close()


async def test_trusted_listener_transcripts(tls: Tls) -> None:
    listener = make_listener(tls="starttls", auth="none", trusted_networks=["127.0.0.0/8"])
    async with running_server(tls=tls, listener=listener, limits=LIMITS) as server:
        for i, script in enumerate(SCRIPTS_PLAIN):
            await play(server.port, tls, script, EXPECTED[f"plain{i}"])


async def test_auth_listener_transcripts(tls: Tls) -> None:
    async with running_server(
        tls=tls, listener=make_listener(), limits=LIMITS, users=make_users(app="secret")
    ) as server:
        for i, script in enumerate(SCRIPTS_AUTH):
            await play(server.port, tls, script, EXPECTED[f"auth{i}"])
        await play(server.port, tls, SCRIPT_STARTTLS_FIRST, EXPECTED["auth_starttls"])


async def test_listener_without_tls_transcripts(tls: Tls) -> None:
    listener = make_listener(tls="none", auth="none", trusted_networks=["127.0.0.0/8"])
    async with running_server(tls=None, listener=listener, limits=LIMITS) as server:
        for i, script in enumerate(SCRIPTS_NO_TLS):
            await play(server.port, tls, script, EXPECTED[f"none{i}"])
