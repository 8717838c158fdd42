"""Connections waiting for their PROXY header hold a slot of the listener's connection cap
(limits.max_connections), over real loopback sockets: a trusted balancer opening idle
connections cannot take the listener past it. Over the cap a new connection is answered
421 4.7.0 (closed without a byte on an implicit-TLS listener) and counted as refused
"limit"; a header moves the slot to the session (per-IP cap of the real client applies),
and a connection that ends or times out before its header gives the slot back."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import struct

from relay.config import Address, Duration, Listener
from relay.smtp import replies as R
from relay.smtp.proxyproto import V2_SIGNATURE
from relay.smtp.server import SubmissionServer
from relay.testing.submission import RawClient, Tls, expect, fast_limits, running_server
from relay.testing.wait import wait_for
from relay.users import UserStore


def _listener(tls: str = "starttls") -> Listener:
    return Listener(address=Address("127.0.0.1", 0), tls=tls,  # type: ignore[arg-type]
                    auth="required", proxy_protocol=True,  # type: ignore[arg-type]
                    proxy_trusted=["127.0.0.1/32"])  # type: ignore[list-item]


def _v1(client: str, port: int = 40000) -> bytes:
    return f"PROXY TCP4 {client} 127.0.0.1 {port} 587\r\n".encode()


def _v2(client: str) -> bytes:
    payload = (ipaddress.IPv4Address(client).packed + ipaddress.IPv4Address("127.0.0.1").packed
               + struct.pack("!HH", 40000, 465))
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(payload)) + payload


async def _closed_silently(client: RawClient) -> bool:
    try:
        return await asyncio.wait_for(client.reader.read(), 10.0) == b""
    except ConnectionResetError:
        return True


async def _pending(server: SubmissionServer, n: int) -> list[RawClient]:
    """`n` connections that send nothing, once the server holds a slot for each."""
    before = server.limiter.total
    clients = [await RawClient.connect(server.port) for _ in range(n)]
    await wait_for(f"{n} connections waiting for their header",
                   lambda: server.limiter.total == before + n)
    return clients


async def test_idle_connections_waiting_for_a_header_count_against_max_connections(
        tls: Tls, users: UserStore) -> None:
    refused: list[str] = []
    async with running_server(tls=tls, users=users, listener=_listener(),
                              limits=fast_limits(max_connections=3),
                              on_proxy_refused=refused.append) as server:
        idle = await _pending(server, 3)
        assert len(server.context.sessions) == 0
        over = await RawClient.connect(server.port)
        expect(await over.read_reply(), R.TOO_MANY_CONNECTIONS)
        assert await _closed_silently(over)
        assert refused == ["limit"]
        assert server.limiter.total == 3
        # A header moves the slot to the session: still 3 in use, the next still refused.
        await idle[0].send(_v1("192.0.2.1"))
        assert (await idle[0].read_reply()).code == 220
        assert server.limiter.total == 3 and server.limiter.per_ip == {"192.0.2.1": 1}
        again = await RawClient.connect(server.port)
        expect(await again.read_reply(), R.TOO_MANY_CONNECTIONS)
        # A waiting connection that goes away gives its slot back.
        await idle[1].close()
        await wait_for("the slot given back", lambda: server.limiter.total == 2)
        (late,) = await _pending(server, 1)
        await late.send(_v1("192.0.2.2"))
        assert (await late.read_reply()).code == 220
        for c in (idle[0], idle[2], late, over, again):
            await c.close()
        await wait_for("every slot given back", lambda: server.limiter.total == 0)
        assert refused == ["limit", "limit"]


async def test_sessions_and_waiting_connections_share_the_cap(tls: Tls,
                                                              users: UserStore) -> None:
    async with running_server(tls=tls, users=users, listener=_listener(),
                              limits=fast_limits(max_connections=2)) as server:
        served = await RawClient.connect(server.port)
        await served.send(_v1("192.0.2.7"))
        assert (await served.read_reply()).code == 220
        waiting = await _pending(server, 1)
        over = await RawClient.connect(server.port)
        expect(await over.read_reply(), R.TOO_MANY_CONNECTIONS)
        assert server.limiter.total == 2
        for c in (served, *waiting, over):
            await c.close()


async def test_implicit_tls_listener_over_the_cap_closes_without_a_byte(
        tls: Tls, users: UserStore) -> None:
    refused: list[str] = []
    async with running_server(tls=tls, users=users, listener=_listener("implicit"),
                              limits=fast_limits(max_connections=2),
                              on_proxy_refused=refused.append) as server:
        idle = await _pending(server, 2)
        over = await RawClient.connect(server.port)
        assert await _closed_silently(over)
        assert refused == ["limit"]
        # The header, then the handshake: the slot passes to the TLS gate.
        await idle[0].send(_v2("192.0.2.3"))
        await idle[0].writer.start_tls(tls.client, server_hostname="127.0.0.1")
        assert (await idle[0].read_reply()).code == 220
        assert server.limiter.total == 2
        for c in (*idle, over):
            with contextlib.suppress(OSError):
                await c.close()
        await wait_for("every slot given back", lambda: server.limiter.total == 0)


async def test_a_header_that_never_comes_gives_its_slot_back(tls: Tls,
                                                             users: UserStore) -> None:
    async with running_server(tls=tls, users=users, listener=_listener(),
                              limits=fast_limits(max_connections=1,
                                                 proxy_header_timeout=Duration(0.3))) as server:
        (slow,) = await _pending(server, 1)
        assert await _closed_silently(slow)  # the time limit closed it
        await wait_for("the slot given back", lambda: server.limiter.total == 0)
        fresh = await RawClient.connect(server.port)
        await fresh.send(_v1("192.0.2.9"))
        assert (await fresh.read_reply()).code == 220
        await fresh.close()
