"""relay.smtp.policy as tables: session facts and a command argument in, the reply out.

Each row names the case; the facts not given are those of an ordinary client (EHLO
given, may send, no transaction open, nothing counted yet). The first fault in the
order a client meets them decides.
"""

from __future__ import annotations

from typing import Any

import pytest

from relay.smtp import replies as R
from relay.smtp.policy import (
    Mailbox,
    decide_auth,
    decide_auth_attempt,
    decide_data,
    decide_helo,
    decide_mail,
    decide_rcpt,
    without_auth_parameter,
)


def rows(table: list[tuple[Any, ...]]) -> Any:
    return pytest.mark.parametrize(("facts", "arg", "expected"), [r[1:] for r in table],
                                   ids=[r[0] for r in table])


# --- MAIL -------------------------------------------------------------------------------

MAIL_FACTS: dict[str, Any] = dict(
    helo=True, extended=True, may_send=True, refusal=R.AUTH_REQUIRED, authenticated=False,
    in_transaction=False, shutting_down=False, message_count=0, max_messages=10,
    size_limit=1000)

OK_FROM = Mailbox("a@b.test", [], False)

MAIL = [
    ("a plain sender", {}, "FROM:<a@b.test>", OK_FROM),
    ("keyword in any case, blanks around the path", {}, "from:  <a@b.test> ", OK_FROM),
    ("the null sender", {}, "FROM:<>", Mailbox("<>", [], False)),
    ("a bare address", {}, "FROM:a@b.test", OK_FROM),
    ("a quoted local part", {}, 'FROM:<"a b"@b.test>', Mailbox('"a b"@b.test', [], False)),
    ("parameters upper-cased and kept", {}, "FROM:<a@b.test> body=8bitmime SMTPUTF8 SIZE=999",
     Mailbox("a@b.test", ["BODY=8BITMIME", "SMTPUTF8", "SIZE=999"], True)),
    ("shutting down comes first", dict(shutting_down=True, helo=False), None, R.SHUTTING_DOWN),
    ("too many messages in the connection", dict(message_count=10), "FROM:<a@b.test>",
     R.TOO_MANY_MESSAGES),
    ("neither authenticated nor trusted", dict(may_send=False), "FROM:<a@b.test>",
     R.AUTH_REQUIRED),
    ("refused with the reason given (STARTTLS first)",
     dict(may_send=False, refusal=R.STARTTLS_FIRST), "FROM:<a@b.test>", R.STARTTLS_FIRST),
    ("before HELO the sender check waits for HELO", dict(may_send=False, helo=False),
     "FROM:<a@b.test>", R.NEED_HELO),
    ("a control character", {}, "FROM:<a\x00@b.test>", R.BAD_SENDER),
    ("a control character before HELO", dict(helo=False), "FROM:<a\x7f@b.test>", R.BAD_SENDER),
    ("a source route", {}, "FROM:<@relay.test:a@b.test>", R.SOURCE_ROUTE),
    ("no argument", {}, None, R.MAIL_SYNTAX_EXTENDED),
    ("no argument after HELO", dict(extended=False), None, R.MAIL_SYNTAX),
    ("no FROM: keyword", {}, "<a@b.test>", R.MAIL_SYNTAX_EXTENDED),
    ("an empty path", {}, "FROM:", R.MAIL_SYNTAX_EXTENDED),
    ("a path that does not parse", {}, "FROM:(comment)<a@b.test>", R.MALFORMED_SENDER),
    ("parameters after HELO", dict(extended=False), "FROM:<a@b.test> SIZE=1", R.MAIL_SYNTAX),
    ("a second MAIL", dict(in_transaction=True), "FROM:<a@b.test>", R.NESTED_MAIL),
    ("a second MAIL with a bad parameter", dict(in_transaction=True), "FROM:<a@b.test> X=",
     R.NESTED_MAIL),
    ("a parameter with an empty value", {}, "FROM:<a@b.test> X=", R.MAIL_SYNTAX_EXTENDED),
    ("a parameter name that is not alphanumeric", {}, "FROM:<a@b.test> A-B=1",
     R.MAIL_SYNTAX_EXTENDED),
    ("an unknown BODY", {}, "FROM:<a@b.test> BODY=BINARYMIME", R.BODY_UNKNOWN),
    ("BODY without a value", {}, "FROM:<a@b.test> BODY", R.BODY_UNKNOWN),
    ("SMTPUTF8 with a value", {}, "FROM:<a@b.test> SMTPUTF8=1", R.SMTPUTF8_ARGUMENT),
    ("SIZE not a number", {}, "FROM:<a@b.test> SIZE=ten", R.MAIL_SYNTAX_EXTENDED),
    ("SIZE without a value", {}, "FROM:<a@b.test> SIZE", R.MAIL_SYNTAX_EXTENDED),
    ("SIZE at the limit", {}, "FROM:<a@b.test> SIZE=1000",
     Mailbox("a@b.test", ["SIZE=1000"], False)),
    ("SIZE over the limit", {}, "FROM:<a@b.test> SIZE=1001", R.MESSAGE_TOO_BIG),
    ("SIZE with no limit", dict(size_limit=0), "FROM:<a@b.test> SIZE=99999999",
     Mailbox("a@b.test", ["SIZE=99999999"], False)),
    ("an unknown parameter", {}, "FROM:<a@b.test> RET=HDRS", R.MAIL_PARAMETERS_UNKNOWN),
    ("AUTH= is unknown without AUTH", {}, "FROM:<a@b.test> AUTH=<>",
     R.MAIL_PARAMETERS_UNKNOWN),
    ("AUTH= accepted and dropped after AUTH", dict(authenticated=True),
     "FROM:<a@b.test> AUTH=<> BODY=8BITMIME", Mailbox("a@b.test", ["BODY=8BITMIME"], False)),
]


@rows(MAIL)
def test_mail(facts: dict[str, Any], arg: str | None, expected: object) -> None:
    assert decide_mail(arg, **{**MAIL_FACTS, **facts}) == expected


def test_the_auth_parameter_is_removed_only_after_the_path() -> None:
    assert without_auth_parameter("FROM:<a@b.test> AUTH=x@y SIZE=1") == "FROM:<a@b.test> SIZE=1"
    assert without_auth_parameter("FROM:<a AUTH=x@b.test>") == "FROM:<a AUTH=x@b.test>"
    assert without_auth_parameter("FROM:a@b.test AUTH=x") == "FROM:a@b.test AUTH=x"


# --- RCPT -------------------------------------------------------------------------------

RCPT_FACTS: dict[str, Any] = dict(
    helo=True, extended=True, may_send=True, refusal=R.AUTH_REQUIRED, in_transaction=True,
    recipients=0, max_recipients=3, session_recipients=0, max_session_recipients=5)

OK_TO = Mailbox("c@d.test", [])
NO_DOMAIN = R.BAD_RECIPIENT.with_text(
    f"{R.BAD_RECIPIENT.text} (no domain (an address is local-part@domain))")

RCPT = [
    ("a plain recipient", {}, "TO:<c@d.test>", OK_TO),
    ("keyword in any case", {}, "to: <c@d.test>", OK_TO),
    ("neither authenticated nor trusted", dict(may_send=False), "TO:<c@d.test>",
     R.AUTH_REQUIRED),
    ("a control character", {}, "TO:<c\x01@d.test>", R.BAD_RECIPIENT),
    ("a source route", {}, "TO:<@hop.test:c@d.test>", R.SOURCE_ROUTE),
    ("before HELO", dict(helo=False, may_send=False), "TO:<c@d.test>", R.NEED_HELO),
    ("before MAIL", dict(in_transaction=False), "TO:<c@d.test>", R.NEED_MAIL),
    ("no argument", {}, None, R.RCPT_SYNTAX_EXTENDED),
    ("no argument after HELO", dict(extended=False), None, R.RCPT_SYNTAX),
    ("no TO: keyword", {}, "<c@d.test>", R.RCPT_SYNTAX_EXTENDED),
    ("an empty path", {}, "TO:", R.RCPT_SYNTAX_EXTENDED),
    ("a path that does not parse", {}, "TO:(x)<c@d.test>", R.BAD_RECIPIENT),
    ("parameters after HELO", dict(extended=False), "TO:<c@d.test> NOTIFY=NEVER",
     R.RCPT_SYNTAX),
    ("a malformed parameter", {}, "TO:<c@d.test> =x", R.RCPT_SYNTAX_EXTENDED),
    ("any parameter", {}, "TO:<c@d.test> NOTIFY=NEVER", R.RCPT_PARAMETERS_UNKNOWN),
    ("no domain", {}, "TO:<c>", NO_DOMAIN),
    ("the null path is no recipient", {}, "TO:<>", NO_DOMAIN),
    ("a numeric top-level label", {}, "TO:<c@192.0.2.1>", R.BAD_RECIPIENT.with_text(
        f"{R.BAD_RECIPIENT.text} (domain name with a numeric top-level label "
        "(an IP address needs [brackets]))")),
    ("the last recipient the message may have", dict(recipients=2), "TO:<c@d.test>", OK_TO),
    ("one recipient too many for the message", dict(recipients=3), "TO:<c@d.test>",
     R.TOO_MANY_RECIPIENTS),
    ("one recipient too many for the connection", dict(session_recipients=5),
     "TO:<c@d.test>", R.TOO_MANY_SESSION_RECIPIENTS),
    ("a bad address is refused before the count", dict(recipients=3), "TO:<c>", NO_DOMAIN),
]


@rows(RCPT)
def test_rcpt(facts: dict[str, Any], arg: str | None, expected: object) -> None:
    assert decide_rcpt(arg, **{**RCPT_FACTS, **facts}) == expected


# --- DATA, HELO, AUTH -------------------------------------------------------------------

DATA_FACTS: dict[str, Any] = dict(helo=True, may_send=True, refusal=R.AUTH_REQUIRED,
                                  recipients=1)

DATA = [
    ("the message may follow", {}, None, None),
    ("before HELO", dict(helo=False, may_send=False), None, R.NEED_HELO),
    ("neither authenticated nor trusted", dict(may_send=False, refusal=R.STARTTLS_FIRST),
     None, R.STARTTLS_FIRST),
    ("no recipient", dict(recipients=0), None, R.NEED_RCPT),
    ("no recipient beats an argument", dict(recipients=0), "x", R.NEED_RCPT),
    ("an argument", {}, "x", R.DATA_SYNTAX),
]


@rows(DATA)
def test_data(facts: dict[str, Any], arg: str | None, expected: object) -> None:
    assert decide_data(arg, **{**DATA_FACTS, **facts}) == expected


HELO = [
    ("EHLO with a name", dict(extended=True), "client.test", None),
    ("EHLO without a name", dict(extended=True), None, R.BAD_HELO),
    ("EHLO with a control character", dict(extended=True), "a\tb", R.BAD_HELO),
    ("HELO with a name", dict(extended=False), "client.test", None),
    ("HELO without a name", dict(extended=False), None, R.HELO_SYNTAX),
    ("HELO with a control character", dict(extended=False), "a\x00b",
     R.BAD_HELO.with_text("Syntax: HELO hostname (printable characters only)")),
]


@rows(HELO)
def test_helo(facts: dict[str, Any], arg: str | None, expected: object) -> None:
    assert decide_helo(arg, **facts) == expected


AUTH_FACTS: dict[str, Any] = dict(helo=True, extended=True, offered=True, tls_active=True,
                                  authenticated=False)

AUTH = [
    ("PLAIN with an initial response", {}, "plain AGIAYw==", ["PLAIN", "AGIAYw=="]),
    ("LOGIN", {}, "LOGIN", ["LOGIN"]),
    ("before any HELO", dict(helo=False, extended=False), "PLAIN", R.NEED_EHLO),
    ("after HELO, not EHLO", dict(extended=False), "PLAIN", R.NEED_EHLO),
    ("on a listener without AUTH", dict(offered=False, tls_active=False), "PLAIN",
     R.AUTH_UNAVAILABLE),
    ("before TLS", dict(tls_active=False), "PLAIN", R.ENCRYPTION_REQUIRED),
    ("twice", dict(authenticated=True), "PLAIN", R.ALREADY_AUTHENTICATED),
    ("no mechanism", {}, None, R.AUTH_SYNTAX),
    ("too many values", {}, "PLAIN a b", R.AUTH_SYNTAX),
    ("an unknown mechanism", {}, "CRAM-MD5", R.AUTH_MECHANISM_UNKNOWN),
]


@rows(AUTH)
def test_auth(facts: dict[str, Any], arg: str | None, expected: object) -> None:
    assert decide_auth(arg, **{**AUTH_FACTS, **facts}) == expected


@pytest.mark.parametrize(("attempts", "locked", "expected"), [
    (1, False, None),
    (10, False, None),
    (11, False, R.TOO_MANY_AUTH_ATTEMPTS),  # the cap closes the connection (421)
    (11, True, R.TOO_MANY_AUTH_ATTEMPTS),
    (1, True, R.AUTH_LOCKED),
])
def test_auth_attempt(attempts: int, locked: bool, expected: R.Reply | None) -> None:
    assert decide_auth_attempt(attempts, max_attempts=10, locked=locked) == expected


def test_closing_replies_are_421() -> None:
    # The session closes after a 421 and only then.
    for reply in (R.SHUTTING_DOWN, R.TOO_MANY_MESSAGES, R.TOO_MANY_AUTH_ATTEMPTS,
                  R.TOO_MANY_COMMANDS):
        assert reply.code == 421
    for reply in (R.AUTH_LOCKED, R.TOO_MANY_RECIPIENTS, R.NESTED_MAIL):
        assert reply.code != 421
