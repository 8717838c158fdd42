"""Table tests for relay.delivery.classify (pure: no I/O, no event loop)."""

from __future__ import annotations

import pytest

from relay.delivery.classify import (
    Outcome,
    bounce_type,
    from_failure,
    from_reply,
    split_enhanced,
)


@pytest.mark.parametrize(
    ("code", "text", "kind", "enhanced", "clean"),
    [
        (250, "2.0.0 Ok: queued as ABC", "delivered", "2.0.0", "Ok: queued as ABC"),
        (250, "Ok", "delivered", "2.0.0", "Ok"),
        (251, "2.1.5 will forward", "delivered", "2.1.5", "will forward"),
        (451, "4.3.0 try again later", "deferred", "4.3.0", "try again later"),
        (421, "4.7.0 too many connections", "deferred", "4.7.0", "too many connections"),
        (452, "too many recipients", "deferred", "4.0.0", "too many recipients"),
        (550, "5.1.1 <x@y.test>: no such user", "bounced", "5.1.1", "<x@y.test>: no such user"),
        (554, "5.7.1 rejected\n5.7.1 see https://example.test", "bounced", "5.7.1",
         "rejected see https://example.test"),
        (556, "5.1.10 null MX", "bounced", "5.1.10", "null MX"),
        # class digit disagrees with the reply code: not trusted, derived instead
        (550, "4.2.2 mailbox full", "bounced", "5.0.0", "4.2.2 mailbox full"),
        (450, "5.7.1 nope", "deferred", "4.0.0", "5.7.1 nope"),
        # something that merely looks like a code inside the text
        (550, "user 5.1.1x unknown", "bounced", "5.0.0", "user 5.1.1x unknown"),
        (500, "", "bounced", "5.0.0", ""),
    ],
)
def test_from_reply(code: int, text: str, kind: str, enhanced: str, clean: str) -> None:
    out = from_reply(code, text, "mx.example.test")
    assert out == Outcome(kind, code, enhanced, clean, "mx.example.test")  # type: ignore[arg-type]
    assert out.enhanced[0] == str(code)[0]


@pytest.mark.parametrize("code", [354, 121, 0, 999])
def test_unexpected_reply_classes_are_deferred(code: int) -> None:
    out = from_reply(code, "what", "mx")
    assert (out.kind, out.code, out.enhanced) == ("deferred", 451, "4.5.0")
    assert str(code) in out.text


@pytest.mark.parametrize(
    ("failure", "kind", "code", "enhanced", "words"),
    [
        ("refused", "deferred", 451, "4.4.1", "connection refused by mx1.test"),
        ("unreachable", "deferred", 451, "4.4.1", "cannot connect to mx1.test"),
        ("dropped", "deferred", 451, "4.4.2", "connection dropped"),
        ("timeout", "deferred", 451, "4.4.7", "timeout"),
        ("tls_failed", "deferred", 451, "4.7.5", "TLS"),
        ("tls_required", "deferred", 451, "4.7.5", "TLS required but not available"),
        ("invalid_address", "bounced", 501, "5.1.3", "invalid address"),
        ("local_error", "deferred", 451, "4.3.0", "local error"),
    ],
)
def test_from_failure(failure: str, kind: str, code: int, enhanced: str, words: str) -> None:
    out = from_failure(failure, "mx1.test")  # type: ignore[arg-type]
    assert (out.kind, out.code, out.enhanced) == (kind, code, enhanced)
    assert words in out.text


def test_from_failure_detail_and_diagnostic() -> None:
    out = from_failure("refused", "mx1.test", "[Errno 111] Connection refused", "mx1.test")
    assert out.diagnostic == (
        "451 4.4.1 connection refused by mx1.test: [Errno 111] Connection refused")
    assert str(out) == out.diagnostic
    assert out.remote_mta == "mx1.test"


def test_split_enhanced_multiline_strips_each_line() -> None:
    assert split_enhanced(250, "2.0.0 a\n2.0.0 b") == ("2.0.0", "a b")


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (from_reply(550, "5.1.1 no such user"), ("Permanent", "NoEmail")),
        (from_reply(552, "5.2.2 mailbox full"), ("Permanent", "MailboxFull")),
        (from_reply(552, "5.3.4 too big"), ("Permanent", "MessageTooLarge")),
        (from_reply(554, "5.7.1 spam"), ("Permanent", "ContentRejected")),
        (from_reply(550, "denied"), ("Permanent", "General")),
        (from_failure("invalid_address"), ("Permanent", "NoEmail")),
        (from_reply(452, "4.2.2 over quota"), ("Transient", "MailboxFull")),
        (from_reply(451, "4.3.0 later"), ("Transient", "General")),
        (from_failure("timeout"), ("Transient", "General")),
        (from_reply(250, "ok"), ("Undetermined", "Undetermined")),
    ],
)
def test_bounce_type(outcome: Outcome, expected: tuple[str, str]) -> None:
    assert bounce_type(outcome) == expected
