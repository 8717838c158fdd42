"""Fuzzing: Hypothesis properties of the pure parts (VERP round trip, retry schedule,
warm-up arithmetic, address syntax at the client boundary, config parsing, DSN/ARF
parsing) and a Hypothesis-driven SMTP session fuzzer against a live listener: random
command sequences cut at random TCP boundaries. The server never dies, never sends a
traceback, and still serves a normal session afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smtpkit import PASSWORD, USER, expect, plain, send_ok, tls_session

from relay.config import ConfigError, loads
from relay.delivery.retry import delay_for_attempt, next_attempt_at
from relay.delivery.transaction import valid_address as _valid_address
from relay.smtp import replies as R
from relay.testing.submission import RawClient, Tls, running_server
from relay.users import UserStore
from relay.verp import Verp
from relay.warmup.pacing import allowed, hourly_budget
from relay.warmup.plans import Plan

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

# --- pure properties -----------------------------------------------------------------------

queue_ids = st.text(string.ascii_letters + string.digits, min_size=1, max_size=40)


@FAST
@given(queue_ids, st.integers(0, 10_000), st.binary(min_size=16, max_size=64))
def test_verp_round_trip_and_tamper(queue_id: str, index: int, secret: bytes) -> None:
    verp = Verp(secret)
    addr = verp.address(queue_id, index, "bounce.example.com")
    assert verp.decode(addr) == (queue_id, index)
    assert "\r" not in addr and "\n" not in addr and " " not in addr
    local = addr.split("@", 1)[0]
    flipped = local[:-1] + ("a" if local[-1] != "a" else "b")
    assert verp.decode(flipped + "@bounce.example.com") in (None, (queue_id, index))
    assert Verp(bytes(reversed(secret)) + b"x").decode(addr) is None


@FAST
@given(st.text(max_size=200))
def test_verp_decode_never_raises(text: str) -> None:
    Verp(b"k" * 32).decode(text)


schedules = st.lists(st.floats(1, 1e6, allow_nan=False), min_size=1, max_size=8)


@FAST
@given(schedules, st.integers(-3, 100), st.floats(0, 1e9), st.floats(0, 1e7),
       st.floats(1, 1e7), st.floats(0, 0.5), st.integers(0, 2**32))
def test_retry_never_past_deadline_never_in_past(schedule: list[float], attempts: int,
                                                 received_at: float, elapsed: float,
                                                 max_time: float, jitter: float,
                                                 seed: int) -> None:
    now = received_at + elapsed
    at = next_attempt_at(received_at=received_at, attempts=attempts, now=now,
                         schedule=schedule, max_delivery_time=max_time, jitter=jitter,
                         rng=random.Random(seed))
    if now >= received_at + max_time:
        assert at is None
    else:
        assert at is not None and now <= at <= received_at + max_time
    assert delay_for_attempt(attempts, schedule) in [0.0, *schedule]


@FAST
@given(st.lists(st.integers(1, 10**7), min_size=1, max_size=60), st.integers(-5, 200))
def test_warmup_plan_cap_is_one_of_the_caps(caps: list[int], day: int) -> None:
    plan = Plan("p", tuple(sorted(caps)))
    assert plan.cap(day) in plan.caps
    step = plan.next_step(day)
    if step is not None:
        assert step[0] > day and step[1] > plan.cap(day)


@FAST
@given(st.integers(1, 10**7), st.integers(0, 10**7), st.integers(0, 10**6),
       st.sampled_from(["none", "even", "hourly"]), st.floats(1.0, 5.0))
def test_warmup_allowed_never_exceeds_cap(cap: int, sent: int, hour_sent: int, mode: str,
                                          burst: float) -> None:
    n = allowed(cap, sent, hour_sent, mode=mode, burst=burst)
    assert 0 <= n <= max(0, cap - sent)
    if mode != "none":
        assert n <= max(0, hourly_budget(cap, burst) - hour_sent)


@FAST
@given(st.text(max_size=80))
def test_client_address_check_refuses_every_control_character(text: str) -> None:
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        assert not _valid_address(text)


@FAST
@given(st.text(max_size=300))
def test_config_parse_only_raises_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        loads(text)


@FAST
@given(st.sampled_from(["max_recipients", "idle_timeout", "session_timeout",
                        "max_message_size", "line_length_limit"]),
       st.one_of(st.integers(-10, 10), st.text(max_size=12)))
def test_config_limits_bad_values_are_config_errors(key: str, value: int | str) -> None:
    rendered = f'"{value}"' if isinstance(value, str) else str(value)
    if isinstance(value, str) and ('"' in value or "\\" in value or "\n" in value):
        return
    with contextlib.suppress(ConfigError):
        loads(f"[limits]\n{key} = {rendered}\n")


try:
    from relay.feedback.parse import parse as parse_feedback
except ImportError:  # the feedback issue has not landed
    parse_feedback = None  # type: ignore[assignment]

DSN = (b"From: MAILER-DAEMON@mx.example\r\nTo: b@bounce.example\r\n"
       b"Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"
       b"--B\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--B\r\n"
       b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\n"
       b"Final-Recipient: rfc822; r@dest.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
       b"Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n--B--\r\n")


@pytest.mark.skipif(parse_feedback is None, reason="relay.feedback.parse not present")
@FAST
@given(st.binary(max_size=2000), st.integers(0, len(DSN)), st.integers(0, 255))
def test_feedback_parser_never_raises(noise: bytes, cut: int, byte: int) -> None:
    assert parse_feedback is not None
    parse_feedback(noise)
    mutated = bytearray(DSN)
    if cut < len(mutated):
        mutated[cut] = byte
    parse_feedback(bytes(mutated))
    parse_feedback(DSN[:cut])


# --- live session fuzzer ------------------------------------------------------------------

COMMANDS = [b"EHLO c", b"HELO c", b"MAIL FROM:<u@tenant.example>", b"RCPT TO:<r@sink.test>",
            b"DATA", b"RSET", b"NOOP", b"VRFY x", b"HELP", b"STARTTLS", b"AUTH PLAIN",
            b"AUTH LOGIN", b"AUTH PLAIN " + plain(USER, PASSWORD).encode(), b"AUTH CRAM-MD5",
            b"MAIL FROM:<>", b"MAIL FROM:<a@b> SIZE=99999999999", b"RCPT TO:<@a:b@c>",
            b"BDAT 10", b"XYZZY", b".", b"", b"*", b"From: x\r\n\r\nhi\r\n."]
ENDINGS = [b"\r\n", b"\n", b"\r", b"\r\r\n", b""]
pieces = st.one_of(
    st.tuples(st.sampled_from(COMMANDS), st.sampled_from(ENDINGS)).map(lambda t: t[0] + t[1]),
    st.binary(max_size=64))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(pieces, min_size=1, max_size=25), st.lists(st.integers(1, 40), max_size=10),
       st.booleans())
def test_session_fuzzer(tls: Tls, users: UserStore, parts: list[bytes], cuts: list[int],
                        use_tls: bool) -> None:
    asyncio.run(_fuzz_once(tls, users, b"".join(parts), cuts, use_tls))


async def _fuzz_once(tls: Tls, users: UserStore, data: bytes, cuts: list[int],
                     use_tls: bool) -> None:
    from relay.config import Duration
    from relay.testing.submission import fast_limits as limits
    lim = limits(idle_timeout=Duration(1.0), session_timeout=Duration(5.0))
    async with running_server(tls=tls, users=users, limits=lim) as srv:
        if use_tls:
            client = await tls_session(srv.port, tls, login=False)
        else:
            client = await RawClient.connect(srv.port)
        received = bytearray()
        pos = 0
        for cut in [*cuts, len(data)]:  # random TCP splits
            chunk = data[pos:pos + cut] if cut < len(data) else data[pos:]
            pos += len(chunk)
            try:
                await client.send(chunk)
            except (ConnectionError, RuntimeError):
                break
            await asyncio.sleep(0)
            if pos >= len(data):
                break
        with contextlib.suppress(ConnectionError, RuntimeError):
            await client.send(b"\r\nQUIT\r\n")
        try:
            while len(received) < 1_000_000:
                got = await asyncio.wait_for(client.reader.read(65536), 3)
                if not got:
                    break
                received += got
        except (ConnectionError, TimeoutError, OSError):
            pass
        await client.close()
        text = bytes(received)
        assert b"Traceback" not in text and b"Error: (" not in text, text[-500:]
        for line in text.split(b"\r\n"):
            if line[:1].isdigit():
                assert line[:1] in b"2345", line
                assert not line.startswith(b"451 4.3.0 Error: internal"), text[-500:]
        # The listener survived and serves a normal session.
        after = await tls_session(srv.port, tls)
        await send_ok(after)
        expect(await after.cmd("QUIT"), R.BYE)
        await after.close()
