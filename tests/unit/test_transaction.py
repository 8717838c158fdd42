"""relay.delivery.transaction: the SMTP client dialogue as a pure state machine.

Scripted reply streams in, commands and outcomes out, as h11 and httpcore test theirs: no
socket, no event loop. Each dialogue is also fed split at every byte boundary and in one
chunk; hostile streams (endless continuation lines, a line over the limit, garbage, bytes
nobody asked for) end in a clear outcome with bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.delivery.outcome import Outcome
from relay.delivery.transaction import (
    CHUNKING_MAX,
    MAX_LINE_LENGTH,
    MAX_REPLY_LENGTH,
    MAX_REPLY_LINES,
    Command,
    Handshake,
    ProtocolError,
    ReplyReader,
    Transaction,
    parse_extensions,
    wire_body,
)

BODY = b"Subject: t\r\n\r\nhello\r\n"
PIPELINING = {"pipelining": "", "size": "10000000", "8bitmime": ""}
SERIAL = {"size": "10000000"}
NAME = "mx.dest.test"


def kinds(outcomes: Sequence[Outcome]) -> list[tuple[str, int, str]]:
    return [(o.kind, o.code, o.enhanced) for o in outcomes]


def feed(machine: Transaction | Handshake | Command, stream: bytes,
         chunks: Iterable[int] | None = None) -> bytes:
    """Feed `stream` (all at once, or cut at the given sizes); return what it wrote."""
    out = b""
    if chunks is None:
        return machine.receive(stream)
    pos = 0
    for size in chunks:
        out += machine.receive(stream[pos:pos + size])
        pos += size
    return out + (machine.receive(stream[pos:]) if pos < len(stream) else b"")


def splits(stream: bytes) -> list[list[int] | None]:
    """One chunk, one byte at a time, and cut once at every byte boundary."""
    return [None, [1] * len(stream), *([i] for i in range(1, len(stream)))]


def transaction(rcpts: Sequence[str], ext: dict[str, str] | None = None, *,
                sender: str = "s@x.test", body: bytes = BODY) -> Transaction:
    return Transaction(sender, rcpts, body, PIPELINING if ext is None else ext, NAME)


# ---------------------------------------------------------------------------- replies


def test_reply_reader_single_multi_line_and_bare_lf() -> None:
    r = ReplyReader()
    got = r.feed(b"250-mx.dest.test hi\r\n250-PIPELINING\n250 SIZE 100\r\n220 next\r\n")
    assert [(x.code, x.text) for x in got] == [
        (250, "mx.dest.test hi\nPIPELINING\nSIZE 100"), (220, "next")]
    assert not r.pending
    assert [(x.code, x.text) for x in r.feed(b"354\r\n")] == [(354, "")]


@pytest.mark.parametrize("stream", [
    b"250-a\r\n250-b\r\n250 c\r\n", b"550 5.1.1 no such user\r\n452 4.2.2 full\r\n"])
def test_reply_reader_same_replies_at_every_split(stream: bytes) -> None:
    whole = [(x.code, x.text) for x in ReplyReader().feed(stream)]
    for cut in splits(stream):
        r = ReplyReader()
        got = []
        pos = 0
        for size in cut or [len(stream)]:
            got += r.feed(stream[pos:pos + size])
            pos += size
        got += r.feed(stream[pos:])
        assert [(x.code, x.text) for x in got] == whole, cut


@given(st.lists(st.tuples(st.integers(200, 599), st.lists(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
    min_size=1, max_size=4)), min_size=1, max_size=5), st.data())
def test_reply_reader_any_chunking(replies: list[tuple[int, list[str]]],
                                   data: st.DataObject) -> None:
    stream = b"".join(
        b"".join(b"%d%s%s\r\n" % (code, b"-" if i < len(lines) - 1 else b" ", line.encode())
                 for i, line in enumerate(lines))
        for code, lines in replies)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10).map(sorted))
    r = ReplyReader()
    got = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        got += r.feed(stream[prev:cut])
        prev = cut
    assert [(x.code, x.text) for x in got] == [
        (code, "\n".join(line.strip(" \t") for line in lines)) for code, lines in replies]


def test_endless_continuation_lines_are_bounded() -> None:
    r = ReplyReader()
    fed = 0
    with pytest.raises(ProtocolError, match="too long"):
        while True:
            r.feed(b"250-" + b"x" * 60 + b"\r\n")
            fed += 66
            assert fed <= MAX_REPLY_LENGTH + 66
    short = ReplyReader()
    with pytest.raises(ProtocolError, match="too many lines"):
        for _ in range(MAX_REPLY_LINES):
            short.feed(b"250-\r\n")


def test_line_over_the_limit_without_lf_is_refused_early() -> None:
    r = ReplyReader()
    r.feed(b"250 " + b"x" * (MAX_LINE_LENGTH - 4))
    with pytest.raises(ProtocolError, match="too long"):
        r.feed(b"xx")
    with pytest.raises(ProtocolError, match="too long"):
        ReplyReader().feed(b"250 " + b"x" * MAX_LINE_LENGTH + b"\r\n")


def test_garbage_is_malformed() -> None:
    with pytest.raises(ProtocolError, match="Malformed SMTP response line: HELLO"):
        ReplyReader().feed(b"HELLO THERE\r\n")


@given(st.binary(max_size=300), st.integers(1, 40))
def test_any_bytes_give_replies_or_protocol_error(stream: bytes, size: int) -> None:
    r = ReplyReader()
    try:
        for i in range(0, len(stream), size):
            r.feed(stream[i:i + size])
    except ProtocolError:
        pass


def test_extensions_parse_like_ehlo() -> None:
    assert parse_extensions("mx hi\nPIPELINING\nSIZE 100\nAUTH=PLAIN LOGIN\n 8BITMIME ") == {
        "pipelining": "", "size": "100", "auth": "PLAIN LOGIN", "8bitmime": ""}


# ---------------------------------------------------------------------------- handshake


def test_handshake_ehlo_then_ready() -> None:
    hs = Handshake("relay.test", NAME)
    assert hs.timeout == "connect"
    assert hs.receive(b"220 mx ESMTP\r\n") == b"EHLO relay.test\r\n"
    assert hs.greeted and hs.timeout == "command"
    assert hs.receive(b"250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n") == b""
    assert hs.done and hs.state == "ready" and hs.outcome is None
    assert hs.extensions == {"pipelining": "", "8bitmime": ""} and not hs.tls


@pytest.mark.parametrize("cut", splits(b"220 mx\r\n502 5.5.1 what\r\n250 mx\r\n"))
def test_handshake_helo_fallback_at_every_split(cut: list[int] | None) -> None:
    hs = Handshake("relay.test", NAME)
    wrote = feed(hs, b"220 mx\r\n502 5.5.1 what\r\n250 mx\r\n", cut)
    assert wrote == b"EHLO relay.test\r\nHELO relay.test\r\n"
    assert hs.state == "ready" and hs.extensions == {}


def test_handshake_5xx_greeting_is_skipped_not_bounced() -> None:
    hs = Handshake("relay.test", NAME)
    hs.receive(b"554 5.7.1 go away\r\n")
    assert hs.done and hs.greeted and hs.outcome is not None
    assert kinds([hs.outcome]) == [("deferred", 451, "4.7.1")]
    assert hs.outcome.text == f"{NAME} refused to talk to me: 554 go away"


def test_handshake_2xx_greeting_is_unexpected() -> None:
    hs = Handshake("relay.test", NAME)
    hs.receive(b"250 hello\r\n")
    assert hs.outcome is not None and kinds([hs.outcome]) == [("deferred", 451, "4.5.0")]
    assert "unexpected greeting 250 hello" in hs.outcome.text


def test_handshake_garbage_greeting_counts_as_a_session() -> None:
    hs = Handshake("relay.test", NAME)
    hs.receive(b"\x00\xffnot smtp\r\n")
    assert hs.done and hs.greeted and hs.broken and hs.outcome is not None
    assert hs.outcome.kind == "deferred" and "Malformed" in hs.outcome.text


@pytest.mark.parametrize("event", ["timed_out", "lost"])
def test_handshake_no_greeting_is_no_session(event: str) -> None:
    hs = Handshake("relay.test", NAME)
    getattr(hs, event)()
    assert hs.done and not hs.greeted and hs.outcome is not None
    assert hs.outcome.enhanced == ("4.4.7" if event == "timed_out" else "4.4.2")


def test_starttls_discards_what_follows_220_then_ehlo_again() -> None:
    hs = Handshake("relay.test", NAME)
    hs.receive(b"220 mx\r\n")
    assert hs.receive(b"250-mx\r\n250 STARTTLS\r\n") == b"STARTTLS\r\n"
    # STARTTLS response injection: a "250" in the same read as the 220
    assert hs.receive(b"220 go ahead\r\n250 fake\r\n") == b""
    assert hs.paused and not hs.done and hs.starting_tls
    assert hs.receive(b"250 more injected\r\n") == b""
    assert hs.tls_started() == b"EHLO relay.test\r\n"
    assert not hs.paused
    hs.receive(b"250-mx\r\n250 PIPELINING\r\n")
    assert hs.state == "ready" and hs.tls and hs.extensions == {"pipelining": ""}


def test_require_without_starttls_offer() -> None:
    hs = Handshake("relay.test", NAME, require=True)
    hs.receive(b"220 mx\r\n250 mx\r\n")
    assert hs.outcome is not None and kinds([hs.outcome]) == [("deferred", 451, "4.7.5")]
    assert "TLS required but not available" in hs.outcome.text
    assert f"{NAME} does not offer STARTTLS" in hs.outcome.text


@pytest.mark.parametrize("require", [False, True])
def test_starttls_refused_or_failed(require: bool) -> None:
    hs = Handshake("relay.test", NAME, require=require)
    hs.receive(b"220 mx\r\n250-mx\r\n250 STARTTLS\r\n454 4.7.0 no TLS now\r\n")
    assert hs.outcome is not None and hs.outcome.enhanced == "4.7.5"
    assert hs.plaintext_retry is not require
    hs2 = Handshake("relay.test", NAME, require=require)
    hs2.receive(b"220 mx\r\n250-mx\r\n250 STARTTLS\r\n220 go\r\n")
    hs2.tls_failed("handshake failure")
    assert hs2.outcome is not None and "handshake failure" in hs2.outcome.text
    assert hs2.plaintext_retry is not require and hs2.broken


def test_plaintext_retry_skips_starttls() -> None:
    hs = Handshake("relay.test", NAME, plaintext=True)
    assert hs.receive(b"220 mx\r\n250-mx\r\n250 STARTTLS\r\n") == b"EHLO relay.test\r\n"
    assert hs.state == "ready" and not hs.tls


# ---------------------------------------------------------------------------- transaction

GROUP = (b"MAIL FROM:<s@x.test> SIZE=%d\r\nRCPT TO:<a@d.test>\r\nRCPT TO:<n@d.test>\r\n"
         b"RCPT TO:<b@d.test>\r\nDATA\r\n" % len(BODY))
REPLIES = (b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n250-2.1.5 ok\r\n"
           b"250 2.1.5 really\r\n354 go on\r\n")


@pytest.mark.parametrize("cut", splits(REPLIES + b"250 2.0.0 queued\r\n"))
def test_pipelined_group_at_every_split(cut: list[int] | None) -> None:
    t = transaction(["a@d.test", "n@d.test", "b@d.test"])
    assert t.start() == GROUP
    assert t.timeout == "command"
    wrote = feed(t, REPLIES + b"250 2.0.0 queued\r\n", cut)
    assert wrote == BODY + b".\r\n"
    assert t.done and t.keep and not t.rset_needed and not t.excess
    assert kinds(t.outcomes) == [("delivered", 250, "2.0.0"), ("bounced", 550, "5.1.1"),
                                 ("delivered", 250, "2.0.0")]
    assert t.outcomes[1].text == "no such user" and t.outcomes[0].remote_mta == NAME


def test_timeouts_follow_the_awaited_reply() -> None:
    t = transaction(["a@d.test"])
    t.start()
    t.receive(b"250 ok\r\n")
    assert t.timeout == "command"   # the RCPT reply
    t.receive(b"250 ok\r\n")
    assert t.timeout == "data"      # DATA's reply
    t.receive(b"354 go\r\n")
    assert t.timeout == "data"      # the final reply


def test_mail_refused_fails_every_recipient() -> None:
    t = transaction(["a@d.test", "b@d.test"])
    t.start()
    assert feed(t, b"550 5.7.1 sender blocked\r\n503 no MAIL\r\n503 no MAIL\r\n"
                   b"503 5.5.1 no valid recipients\r\n") == b""
    assert kinds(t.outcomes) == [("bounced", 550, "5.7.1")] * 2
    assert {o.text for o in t.outcomes} == {"sender blocked"}
    assert t.keep and not t.rset_needed


def test_all_recipients_refused_no_data_then_rset_next() -> None:
    t = transaction(["a@d.test", "b@d.test"])
    t.start()
    wrote = feed(t, b"250 ok\r\n550 5.1.1 unknown\r\n452 4.2.2 full\r\n"
                    b"554 5.5.1 no valid recipients\r\n")
    assert wrote == b""   # never the body
    assert kinds(t.outcomes) == [("bounced", 550, "5.1.1"), ("deferred", 452, "4.2.2")]
    assert t.keep and t.rset_needed


def test_broken_354_with_no_recipient_gets_only_the_dot() -> None:
    t = transaction(["a@d.test"])
    t.start()
    assert feed(t, b"250 ok\r\n550 5.1.1 unknown\r\n354 whatever\r\n") == b".\r\n"
    assert t.receive(b"250 ok\r\n") == b""
    assert kinds(t.outcomes) == [("bounced", 550, "5.1.1")] and t.keep


def test_data_refused_with_recipients_resets_before_next() -> None:
    t = transaction(["a@d.test", "n@d.test"])
    t.start()
    feed(t, b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n451 4.3.1 queue full\r\n")
    assert kinds(t.outcomes) == [("deferred", 451, "4.3.1"), ("bounced", 550, "5.1.1")]
    assert t.keep and t.rset_needed


def test_final_reply_refused_is_clean() -> None:
    t = transaction(["a@d.test"])
    t.start()
    feed(t, b"250 ok\r\n250 ok\r\n354 go\r\n554 5.7.1 spam\r\n")
    assert kinds(t.outcomes) == [("bounced", 554, "5.7.1")]
    assert t.keep and not t.rset_needed


GOING_DOWN = b"250 ok\r\n250 ok\r\n550 5.1.1 x\r\n421 4.3.2 going down\r\n"


@pytest.mark.parametrize("cut", splits(GOING_DOWN))
def test_421_mid_group_ends_the_dialogue(cut: list[int] | None) -> None:
    t = transaction(["a@d.test", "x@d.test", "b@d.test"])
    t.start()
    feed(t, GOING_DOWN, cut)
    assert kinds(t.outcomes) == [("deferred", 421, "4.3.2"), ("bounced", 550, "5.1.1"),
                                 ("deferred", 421, "4.3.2")]
    assert not t.keep and t.broken


def test_unexpected_2xx_refusal_is_a_protocol_error() -> None:
    t = transaction(["a@d.test"])
    t.start()
    # MAIL answered 251: no transaction; a server that still says 354 gets only the "."
    assert feed(t, b"251 odd\r\n250 ok\r\n354 go\r\n250 ok\r\n") == b".\r\n"
    assert kinds(t.outcomes) == [("deferred", 451, "4.5.0")]
    assert t.outcomes[0].text == "unexpected reply 251 odd"


@pytest.mark.parametrize("cut", splits(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n"
                                       b"250 queued\r\n"))
def test_serial_one_command_at_a_time(cut: list[int] | None) -> None:
    t = transaction(["a@d.test", "n@d.test"], SERIAL)
    assert t.start() == b"MAIL FROM:<s@x.test> SIZE=%d\r\n" % len(BODY)
    # Replies arriving together (or cut anywhere) still pair with their own commands.
    wrote = feed(t, b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n250 queued\r\n", cut)
    assert wrote == (b"RCPT TO:<a@d.test>\r\nRCPT TO:<n@d.test>\r\nDATA\r\n"
                     + BODY + b".\r\n")
    assert kinds(t.outcomes) == [("delivered", 250, "2.0.0"), ("bounced", 550, "5.1.1")]
    assert t.keep


def test_serial_mail_refused_sends_no_rcpt() -> None:
    t = transaction(["a@d.test"], SERIAL)
    t.start()
    assert t.receive(b"550 5.7.1 blocked\r\n") == b""
    assert kinds(t.outcomes) == [("bounced", 550, "5.7.1")] and t.keep


def test_serial_no_recipient_accepted_resets_instead_of_data() -> None:
    t = transaction(["a@d.test"], SERIAL)
    t.start()
    assert feed(t, b"250 ok\r\n550 5.1.1 no\r\n") == b"RCPT TO:<a@d.test>\r\nRSET\r\n"
    t.receive(b"250 ok\r\n")
    assert kinds(t.outcomes) == [("bounced", 550, "5.1.1")] and t.keep
    assert not t.rset_needed


@pytest.mark.parametrize("ext", [PIPELINING, SERIAL], ids=["pipelined", "serial"])
def test_dead_before_any_reply_may_retry_fresh(ext: dict[str, str]) -> None:
    t = transaction(["a@d.test"], ext)
    t.start()
    t.lost()
    assert t.retry_fresh and not t.keep and t.broken
    assert kinds(t.outcomes) == [("deferred", 451, "4.4.2")]
    assert "dropped" in t.outcomes[0].text
    after = transaction(["a@d.test"], ext)
    after.start()
    after.receive(b"250 ok\r\n")
    after.lost()
    assert not after.retry_fresh


def test_timeout_retry_only_on_the_serial_path() -> None:
    for ext, retry in ((SERIAL, True), (PIPELINING, False)):
        t = transaction(["a@d.test"], ext)
        t.start()
        t.timed_out()
        assert t.retry_fresh is retry
        assert kinds(t.outcomes) == [("deferred", 451, "4.4.7")]


def test_replies_nobody_asked_for_mean_no_reuse() -> None:
    t = transaction(["a@d.test"])
    t.start()
    feed(t, b"250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n250 extra\r\n")
    assert kinds(t.outcomes) == [("delivered", 250, "2.0.0")]
    assert t.excess and t.broken


@pytest.mark.parametrize("hostile", ["endless-continuation", "long-line", "garbage"])
def test_hostile_streams_end_in_a_deferral(hostile: str) -> None:
    t = transaction(["a@d.test", "b@d.test"])
    t.start()
    t.receive(b"250 ok\r\n")   # MAIL accepted, then the hostile part
    if hostile == "endless-continuation":
        fed = 0
        while not t.done:   # the continuation lines never end: bounded all the same
            t.receive(b"250-" + b"y" * 100 + b"\r\n")
            fed += 106
            assert fed <= MAX_REPLY_LENGTH + 106
    elif hostile == "long-line":
        t.receive(b"250 " + b"x" * (MAX_LINE_LENGTH + 10))
    else:
        t.receive(b"this is no SMTP\r\n")
    assert t.done and not t.keep and t.broken and not t.retry_fresh
    assert [o.kind for o in t.outcomes] == ["deferred"] * 2
    assert all(o.code == 451 and o.enhanced == "4.5.0" for o in t.outcomes)


@settings(max_examples=200)
@given(st.binary(max_size=400), st.integers(1, 64), st.booleans())
def test_any_stream_gives_one_outcome_per_recipient(stream: bytes, size: int,
                                                     pipelining: bool) -> None:
    t = transaction(["a@d.test", "b@d.test", "c@d.test"], PIPELINING if pipelining else SERIAL)
    t.start()
    for i in range(0, len(stream), size):
        t.receive(stream[i:i + size])
    t.lost()
    assert len(t.outcomes) == 3
    assert all(o.kind in ("delivered", "deferred", "bounced") for o in t.outcomes)


def test_parameters_and_invalid_addresses() -> None:
    body = "Subject: caf\u00e9\r\n\r\nd\u00e9j\u00e0\r\n".encode()
    t = Transaction("s\u00e9@x.test", ["j\u00fcrgen@d.test"], body,
                    {**PIPELINING, "smtputf8": ""}, NAME)
    assert t.start() == (f"MAIL FROM:<s\u00e9@x.test> SIZE={len(body)} BODY=8BITMIME "
                         "SMTPUTF8\r\nRCPT TO:<j\u00fcrgen@d.test>\r\nDATA\r\n").encode()
    # No SMTPUTF8: a non-ASCII recipient cannot be written; the others go.
    t = transaction(["\u00fc@d.test", "ok@d.test"])
    assert t.start() == (b"MAIL FROM:<s@x.test> SIZE=%d\r\nRCPT TO:<ok@d.test>\r\nDATA\r\n"
                         % len(BODY))
    feed(t, b"250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n")
    assert kinds(t.outcomes) == [("bounced", 501, "5.1.3"), ("delivered", 250, "2.0.0")]
    # Nothing writable: nothing goes on the wire.
    for bad in (transaction(["\u00fc@d.test"]), transaction(["a@d.test"], sender="s\u00e9@x")):
        assert bad.start() == b"" and bad.done and bad.keep
        assert kinds(bad.outcomes) == [("bounced", 501, "5.1.3")]


def test_command_rset_and_quit() -> None:
    rset = Command(b"RSET\r\n", 250)
    assert rset.start() == b"RSET\r\n"
    rset.receive(b"250 ok\r\n")
    assert rset.done and rset.ok
    quit_ = Command(b"QUIT\r\n", 221)
    quit_.receive(b"500 what\r\n")
    assert quit_.done and not quit_.ok
    lost = Command(b"RSET\r\n", 250)
    lost.lost()
    assert lost.done and not lost.ok and lost.broken


def test_wire_body_dot_stuffs_and_normalises() -> None:
    assert wire_body(b".a\nb\r.\r\n") == b"..a\r\nb\r\n..\r\n.\r\n"
    assert wire_body(b"x") == b"x\r\n.\r\n"


# ---------------------------------------------------------------------------- CHUNKING

CHUNKING = {**PIPELINING, "chunking": ""}
BDAT_REPLIES = b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n250 2.0.0 queued\r\n"


@pytest.mark.parametrize("cut", splits(BDAT_REPLIES))
def test_chunking_sends_mail_rcpt_bdat_and_body_in_one_write(cut: list[int] | None) -> None:
    """RFC 3030 with PIPELINING: one write, one round of replies, no 354 and no dot."""
    body = b"Subject: t\r\n\r\n.starts with a dot\r\nbare lf\n"
    t = transaction(["a@d.test", "n@d.test"], CHUNKING, body=body)
    chunk = b"Subject: t\r\n\r\n.starts with a dot\r\nbare lf\r\n"  # CRLF, not dot-stuffed
    assert t.start() == (b"MAIL FROM:<s@x.test> SIZE=%d\r\n" % len(body)
                         + b"RCPT TO:<a@d.test>\r\nRCPT TO:<n@d.test>\r\n"
                         + b"BDAT %d LAST\r\n" % len(chunk) + chunk)
    assert feed(t, BDAT_REPLIES, cut) == b""
    assert kinds(t.outcomes) == [("delivered", 250, "2.0.0"), ("bounced", 550, "5.1.1")]
    assert t.done and t.keep and not t.rset_needed and not t.excess


def test_chunking_reply_times_under_data_timeout() -> None:
    t = transaction(["a@d.test"], CHUNKING)
    t.start()
    t.receive(b"250 ok\r\n")
    assert t.timeout == "command"   # the RCPT reply
    t.receive(b"250 ok\r\n")
    assert t.timeout == "data"      # BDAT's reply: the server has the whole message


def test_chunking_refused_resets_before_the_next_mail() -> None:
    t = transaction(["a@d.test"], CHUNKING)
    t.start()
    feed(t, b"250 ok\r\n250 ok\r\n552 5.3.4 message too big\r\n")
    assert kinds(t.outcomes) == [("bounced", 552, "5.3.4")]
    assert t.keep and t.rset_needed


def test_chunking_with_no_recipient_accepted_keeps_the_rcpt_replies() -> None:
    t = transaction(["a@d.test", "b@d.test"], CHUNKING)
    t.start()
    feed(t, b"250 ok\r\n550 5.1.1 unknown\r\n452 4.2.2 full\r\n554 5.5.1 no valid recipients\r\n")
    assert kinds(t.outcomes) == [("bounced", 550, "5.1.1"), ("deferred", 452, "4.2.2")]
    assert t.keep and t.rset_needed


def test_chunking_mail_refused_fails_every_recipient_with_its_reply() -> None:
    t = transaction(["a@d.test", "b@d.test"], CHUNKING)
    t.start()
    feed(t, b"550 5.7.1 sender blocked\r\n503 no MAIL\r\n503 no MAIL\r\n503 5.5.1 no MAIL\r\n")
    assert kinds(t.outcomes) == [("bounced", 550, "5.7.1")] * 2


def test_no_chunking_without_pipelining() -> None:
    """A serial server gets DATA: BDAT alone would save no round trip."""
    t = transaction(["a@d.test"], {"chunking": ""})
    assert t.start() == b"MAIL FROM:<s@x.test>\r\n"
    assert t.receive(b"250 ok\r\n") == b"RCPT TO:<a@d.test>\r\n"
    assert t.receive(b"250 ok\r\n") == b"DATA\r\n"


def test_no_chunking_for_a_message_over_the_bound() -> None:
    """Its bytes would go before any recipient is accepted: it waits for 354."""
    body = BODY + b"x" * CHUNKING_MAX + b"\r\n"
    t = transaction(["a@d.test"], CHUNKING, body=body)
    assert t.start().endswith(b"RCPT TO:<a@d.test>\r\nDATA\r\n")
    assert feed(t, b"250 ok\r\n250 ok\r\n354 go\r\n") == body + b".\r\n"
