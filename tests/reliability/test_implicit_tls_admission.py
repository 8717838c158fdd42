"""Implicit TLS (465-style): connections are counted and capped BEFORE the TLS handshake.

A flood of TCP connections from one address that never start TLS must not hold more than
`max_connections_per_ip` slots (nor, from many, more than `max_connections`), while a real
TLS client from another address is still served; a handshake that never completes is
closed after `limits.tls_handshake_timeout`. Real sockets on loopback, real TLS (trustme),
the real submission server in this process; the accept-failure test runs the server in
a child process whose open-file limit is small enough to reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import resource
import select
import smtplib
import socket
import ssl
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from relay.config import Duration
from relay.smtp.server import SubmissionServer
from relay.testing.dnsserver import DnsServer
from relay.testing.process import RelayProcess, free_port, relay_config, write_config
from relay.testing.submission import (
    PASSWORD,
    USER,
    RecordingSubmitter,
    Tls,
    fast_limits,
    make_listener,
    running_server,
)
from relay.users import UserStore

FLOOD = 1000


def open_raw(port: int, source: str, count: int) -> list[socket.socket]:
    """`count` TCP connections from `source` that never send a byte."""
    socks = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5,
                                                  source_address=(source, 0)))
    except BaseException:
        close_all(socks)
        raise
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()


def closed_by_server(socks: list[socket.socket], want: int, within: float) -> int:
    """How many of `socks` the server has closed (EOF or reset), waiting up to `within`
    seconds for at least `want` of them."""
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    closed: set[int] = set()
    deadline = time.monotonic() + within
    while len(closed) < want and time.monotonic() < deadline:
        for fd, _ in poller.poll(100):
            try:
                data = by_fd[fd].recv(1, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                closed.add(fd)
                poller.unregister(fd)
    return len(closed)


def send_over_implicit_tls(port: int, tls: Tls, source: str) -> tuple[int, bytes]:
    msg = EmailMessage()
    msg["From"] = "u@tenant.example"
    msg["To"] = "r@sink.test"
    msg["Subject"] = "served during a flood"
    msg.set_content("hello\n")
    with smtplib.SMTP_SSL("127.0.0.1", port, context=tls.client, timeout=10,
                          source_address=(source, 0)) as s:
        s.login(USER, PASSWORD)
        s.send_message(msg)
        return s.noop()


async def test_a_flood_that_never_starts_tls_is_capped_per_address_before_the_handshake(
        tls: Tls, users: UserStore) -> None:
    submitter = RecordingSubmitter()
    limits = fast_limits(max_connections=2000, max_connections_per_ip=100)
    async with running_server(tls=tls, users=users, submitter=submitter, limits=limits,
                              listener=make_listener(tls="implicit")) as srv:
        socks = await asyncio.to_thread(open_raw, srv.port, "127.0.0.5", FLOOD)
        try:
            # Everything over the per-address cap is closed at once, without a handshake.
            closed = await asyncio.to_thread(closed_by_server, socks, FLOOD - 100, 10.0)
            assert closed == FLOOD - 100, f"{closed} of {FLOOD} closed"
            assert srv.limiter.per_ip["127.0.0.5"] == 100
            # A real client from another address is served meanwhile.
            began = time.monotonic()
            code, _ = await asyncio.to_thread(send_over_implicit_tls, srv.port, tls,
                                              "127.0.0.6")
            print(f"real client served in {time.monotonic() - began:.2f}s during the flood")
            assert code == 250
            assert [m.sender for m in submitter.messages] == ["u@tenant.example"]
        finally:
            close_all(socks)
        await wait_for(lambda: srv.limiter.total == 0, 5.0)


async def test_a_flood_from_many_addresses_is_capped_in_total(
        tls: Tls, users: UserStore) -> None:
    limits = fast_limits(max_connections=30, max_connections_per_ip=100)
    async with running_server(tls=tls, users=users, limits=limits,
                              listener=make_listener(tls="implicit")) as srv:
        socks: list[socket.socket] = []
        try:
            for n in range(7, 12):
                socks += await asyncio.to_thread(open_raw, srv.port, f"127.0.0.{n}", 20)
            closed = await asyncio.to_thread(closed_by_server, socks, 100 - 30, 10.0)
            assert closed == 100 - 30
            assert srv.limiter.total == 30
        finally:
            close_all(socks)


async def test_a_handshake_that_never_completes_is_closed_after_the_timeout(
        tls: Tls, users: UserStore) -> None:
    limits = fast_limits(tls_handshake_timeout=Duration(1.0))
    async with running_server(tls=tls, users=users, limits=limits,
                              listener=make_listener(tls="implicit")) as srv:
        silent, = await asyncio.to_thread(open_raw, srv.port, "127.0.0.12", 1)
        # A second one starts a ClientHello and never finishes it.
        partial, = await asyncio.to_thread(open_raw, srv.port, "127.0.0.12", 1)
        partial.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        try:
            await wait_for(lambda: srv.limiter.per_ip["127.0.0.12"] == 2, 5.0)
            began = time.monotonic()
            # Generous bound: the timeout is 1 s; the loop's default would be 60 s.
            closed = await asyncio.to_thread(closed_by_server, [silent, partial], 2, 15.0)
            print(f"unfinished handshakes closed after {time.monotonic() - began:.2f}s")
            assert closed == 2
            await wait_for(lambda: srv.limiter.total == 0, 5.0)
        finally:
            close_all([silent, partial])


async def wait_for(predicate: Any, within: float) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


# --- accept() failures: logged and metered ----------------------------------------------

def _server_at_its_fd_limit(out: Any) -> None:
    """Child process: a submission server (uvloop, as `relay serve` runs) whose process
    has used up its open-file limit; a client connects (uvloop closes it silently);
    report the accept() failures metered (the errno names given to the hook)."""
    import uvloop

    from relay.clock import FakeClock
    from relay.testing.submission import make_users

    async def main() -> None:
        failures: list[str] = []
        server = SubmissionServer(make_listener(tls="none", trusted_networks=["127.0.0.0/8"],
                                                auth="none"),
                                  fast_limits(), "relay.test", RecordingSubmitter(),
                                  make_users(), FakeClock(), None)
        server.on_accept_failure = failures.append
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))  # soft = hard: no raise
        await server.start()
        hog = []
        with contextlib.suppress(OSError):
            while True:
                hog.append(socket.socket())
        client = hog.pop()
        client.close()
        client = socket.socket()
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            client.connect(("127.0.0.1", server.port))
        for _ in range(50):  # bounded: 10 s (the descriptors are looked at every 2 s)
            await asyncio.sleep(0.2)
            if failures:
                break
        out.put(failures)
        for s in hog:
            s.close()
        client.close()
        await server.stop()

    uvloop.run(main())


def test_accept_failures_at_the_fd_limit_are_metered() -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_server_at_its_fd_limit, args=(out,))
    proc.start()
    try:
        failures = out.get(timeout=30)
    finally:
        proc.join(30)
    assert proc.exitcode == 0
    assert "EMFILE" in failures, failures


# --- the same in `relay serve` (uvloop) ------------------------------------------------

def test_relay_serve_caps_a_flood_before_the_handshake_and_raises_its_fd_limit(
        tmp_path: Path) -> None:
    """A real `relay serve` (uvloop, a thread-free TLS client race included): 300 silent
    connections from one address, 200 of them closed at once, while a real TLS client
    from another address sends a message; and its soft open-file limit is the hard one
    although it was started with 512."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with DnsServer({}) as dns:
        port = free_port()
        data = relay_config(tmp_path / "state", dns.nameserver, 25, [
            {"address": f"127.0.0.1:{port}", "tls": "implicit", "auth": "none",
             "trusted_networks": ["127.0.0.0/8"]}])
        config = write_config(tmp_path / "relay.toml", data)
        # The child inherits a small soft limit (the usual 1024 of a login shell).
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(512, soft), hard))
        try:
            relay = RelayProcess(config, log_dir=tmp_path / "logs").start()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        try:
            limits = Path(f"/proc/{relay.pid}/limits").read_text()
            socks = open_raw(port, "127.0.0.5", 300)
            try:
                assert closed_by_server(socks, 200, 10.0) == 200
                client = ssl.create_default_context()
                client.check_hostname = False
                client.verify_mode = ssl.CERT_NONE  # relay's self-signed dev certificate
                msg = EmailMessage()
                msg["From"], msg["To"], msg["Subject"] = "a@example.com", "b@example.net", "x"
                msg.set_content("during a flood\n")
                with smtplib.SMTP_SSL("127.0.0.1", port, context=client, timeout=10,
                                      source_address=("127.0.0.6", 0)) as s:
                    s.send_message(msg)
                    assert s.noop()[0] == 250
            finally:
                close_all(socks)
        finally:
            relay.stop()
    line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
    child_soft, child_hard = line.split()[3:5]
    assert child_soft == child_hard, line
