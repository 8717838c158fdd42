"""A closed submission connection is freed by reference counting, not by the cyclic
collector.

Every connection a client ends (a whole STARTTLS + AUTH + message + QUIT, a hang-up in
the middle of a command, in the middle of DATA, at an AUTH challenge, during the scrypt
check, during the AUTH failure delay, and those cut by the idle timeout or by the
STARTTLS handshake's time limit) must leave nothing of relay's in reference cycles: with
the collector disabled, `gc.collect()` under gc.DEBUG_SAVEALL afterwards finds no object
of a relay type. Objects in cycles outlive their connection until the collector runs,
and the collector's passes over thousands of them are the event loop's longest pauses.

The server runs in-process on a real loop (uvloop, as `relay serve` runs, and the
stdlib's), with real TLS on loopback; the clients are smtplib in a thread, so their own
objects (none of relay's types) are not what is counted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import smtplib
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from relay.config import Duration
from relay.smtp.server import SubmissionServer
from relay.testing.submission import (
    PASSWORD,
    USER,
    Tls,
    make_users,
    running_server,
)
from relay.testing.submission import fast_limits as limits

SESSIONS = 5  # of each kind
IDLE = 0.3  # s: the idle timeout the "timeout" kind waits out
BODY = (b"From: <u@tenant.example>\r\nTo: <r@sink.test>\r\nSubject: x\r\n\r\n"
        + b"The quick brown fox jumps over the lazy dog\r\n" * 40)
WRONG = base64.b64encode(b"\0app\0wrong-password").decode()


def _tls_client(port: int, ctx: ssl.SSLContext, *, login: bool = True) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", port, timeout=10)
    s.ehlo("client.test")
    s.starttls(context=ctx)
    s.ehlo("client.test")
    if login:
        s.login(USER, PASSWORD)
    return s


def _hang_up(s: smtplib.SMTP) -> None:
    assert s.sock is not None
    s.sock.shutdown(socket.SHUT_RDWR)
    s.close()


def full(port: int, ctx: ssl.SSLContext) -> None:
    s = _tls_client(port, ctx)
    s.sendmail("u@tenant.example", ["r@sink.test"], BODY)
    s.quit()


def mid_command(port: int, ctx: ssl.SSLContext) -> None:
    s = _tls_client(port, ctx)
    s.send(b"MAIL FROM:<u@tenant")
    _hang_up(s)


def mid_data(port: int, ctx: ssl.SSLContext) -> None:
    s = _tls_client(port, ctx)
    s.mail("u@tenant.example")
    s.rcpt("r@sink.test")
    s.putcmd("DATA")
    assert s.getreply()[0] == 354
    s.send(BODY[:300])
    _hang_up(s)


def at_auth_challenge(port: int, ctx: ssl.SSLContext) -> None:
    s = _tls_client(port, ctx, login=False)
    s.putcmd("AUTH LOGIN")
    assert s.getreply()[0] == 334
    _hang_up(s)


def during_scrypt(port: int, ctx: ssl.SSLContext) -> None:
    s = _tls_client(port, ctx, login=False)
    s.putcmd("AUTH PLAIN", WRONG)
    _hang_up(s)


def during_failure_delay(port: int, ctx: ssl.SSLContext) -> None:
    s = _tls_client(port, ctx, login=False)
    s.putcmd("AUTH PLAIN", WRONG)
    time.sleep(0.4)  # the scrypt (~0.1 s) is over; the 5 s failure delay is not
    _hang_up(s)


def tls_handshake_cut(port: int, ctx: ssl.SSLContext) -> None:
    """STARTTLS, a ClientHello, then nothing until the handshake time limit."""
    s = smtplib.SMTP("127.0.0.1", port, timeout=10)
    s.ehlo("client.test")
    s.putcmd("STARTTLS")
    assert s.getreply()[0] == 220
    outgoing = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    assert s.sock is not None
    s.sock.sendall(outgoing.read())
    while s.sock.recv(65536):  # the server's flight, then its close
        pass
    s.close()


def idle_timeout(port: int, ctx: ssl.SSLContext) -> None:
    s = _tls_client(port, ctx)
    assert s.getreply()[0] == 421  # the idle timeout's reply, then the close
    s.close()


KINDS: dict[str, Callable[[int, ssl.SSLContext], None]] = {
    "full": full, "mid_command": mid_command, "mid_data": mid_data,
    "at_auth_challenge": at_auth_challenge, "during_scrypt": during_scrypt,
    "during_failure_delay": during_failure_delay, "idle_timeout": idle_timeout,
    "tls_handshake_cut": tls_handshake_cut,
}


def relay_garbage() -> Counter[str]:
    """Objects of relay's types that only the cyclic collector could free (then freed)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
    finally:
        gc.set_debug(0)
    found = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
                    if type(o).__module__.startswith("relay."))
    gc.garbage.clear()
    gc.collect()
    return found


async def _settle(server: SubmissionServer) -> None:
    """Until every session has ended and the loop has run their last callbacks."""
    for _ in range(500):  # at most ~10 s
        if not server.context.sessions:
            break
        await asyncio.sleep(0.02)
    assert not server.context.sessions, "sessions still open"
    for _ in range(10):
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)


async def _scenario(kind: str) -> Counter[str]:
    tls = Tls()
    client_ctx = tls.client
    client_ctx.check_hostname = False
    # Each short time limit only where its kind waits it out: one firing inside another
    # kind's dialogue on a loaded machine would end that dialogue early.
    lim = limits(idle_timeout=Duration(IDLE if kind == "idle_timeout" else 60.0),
                 tls_handshake_timeout=Duration(IDLE if kind == "tls_handshake_cut" else 10.0),
                 auth_failure_delay=Duration(5.0),
                 auth_max_failures=1000, max_connections_per_ip=100)
    async with running_server(tls=tls, users=make_users(**{USER: PASSWORD}),
                              limits=lim) as server:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, full, server.port, client_ctx)  # warm-up
        await _settle(server)
        relay_garbage()
        gc.disable()
        try:
            for _ in range(SESSIONS):
                await loop.run_in_executor(None, KINDS[kind], server.port, client_ctx)
            await _settle(server)
            return relay_garbage()
        finally:
            gc.enable()


def _run(runner: str, coro: Coroutine[Any, Any, Counter[str]]) -> Counter[str]:
    if runner == "uvloop":
        return uvloop.run(coro)
    return asyncio.run(coro)


@pytest.mark.parametrize("runner", ["uvloop", "asyncio"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_closed_connection_leaves_nothing_of_relay_in_cycles(kind: str, runner: str) -> None:
    found = _run(runner, _scenario(kind))
    # Before: the session, its SessionState, Envelope, CommandLines (and DataSection,
    # DataScanner, _CommandReader, LoginPassword) of every connection, held in cycles by
    # the cancelled step's CancelledError and its traceback.
    assert sum(found.values()) == 0, found


async def _slots_after_cut_handshakes() -> tuple[int, int]:
    tls = Tls()
    client_ctx = tls.client
    client_ctx.check_hostname = False
    lim = limits(tls_handshake_timeout=Duration(IDLE), max_connections_per_ip=2)
    async with running_server(tls=tls, users=make_users(**{USER: PASSWORD}),
                              limits=lim) as server:
        loop = asyncio.get_running_loop()
        for _ in range(3):
            await loop.run_in_executor(None, tls_handshake_cut, server.port, client_ctx)
        await loop.run_in_executor(None, full, server.port, client_ctx)  # admitted
        for _ in range(100):  # its own close, seen by the server (at most ~2 s)
            if not server.context.sessions:
                break
            await asyncio.sleep(0.02)
        return server.limiter.total, len(server.context.sessions)


@pytest.mark.parametrize("runner", ["uvloop", "asyncio"])
def test_a_starttls_handshake_cut_by_its_time_limit_gives_its_connection_slot_back(
        runner: str) -> None:
    # Resource exhaustion: handshakes left to time out must not use up the caps.
    held, sessions = _run(runner, _slots_after_cut_handshakes())
    assert (held, sessions) == (0, 0)
