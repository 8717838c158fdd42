"""PROXY protocol listeners over real loopback sockets: the header's client address is the
connection's address everywhere (Received:, the message's client_ip, per-IP caps,
trusted_networks, the AUTH lockout), on STARTTLS and implicit-TLS listeners; a peer not in
proxy_trusted, a malformed header and a header that never completes are all closed
without a greeting. Also the drain: 421 4.3.2 to new connections and transactions."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import struct

from relay.config import Address, Duration, Listener
from relay.smtp import replies as R
from relay.smtp.proxyproto import V2_SIGNATURE
from relay.testing.submission import (
    PASSWORD,
    USER,
    RawClient,
    RecordingSubmitter,
    Tls,
    expect,
    fast_limits,
    running_server,
)
from relay.users import UserStore

PLAIN_OK = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
BODY = b"From: u@tenant.example\r\nSubject: hi\r\n\r\nhello\r\n"


def proxy_listener(tls: str = "starttls", trusted: str = "127.0.0.1/32",
                   auth: str = "required", trusted_networks: list[str] | None = None
                   ) -> Listener:
    return Listener(address=Address("127.0.0.1", 0), tls=tls,  # type: ignore[arg-type]
                    auth=auth, trusted_networks=trusted_networks or [],  # type: ignore[arg-type]
                    proxy_protocol=True, proxy_trusted=[trusted])  # type: ignore[list-item]


def v1(client: str, port: int = 40000) -> bytes:
    family = "TCP6" if ":" in client else "TCP4"
    dst = "::1" if family == "TCP6" else "127.0.0.1"
    return f"PROXY {family} {client} {dst} {port} 587\r\n".encode()


def v2(client: str | None, port: int = 40000) -> bytes:
    if client is None:  # LOCAL: the proxy's own connection
        return V2_SIGNATURE + b"\x20\x00\x00\x00"
    payload = (ipaddress.IPv4Address(client).packed + ipaddress.IPv4Address("127.0.0.1").packed
               + struct.pack("!HH", port, 465))
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(payload)) + payload


async def proxied(port: int, header: bytes) -> RawClient:
    client = await RawClient.connect(port)
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):  # refused at once
        await client.send(header)
    return client


async def closed_silently(client: RawClient, timeout: float = 10.0) -> bool:
    """The server closed the connection (an abort resets it) without sending a byte."""
    try:
        return await asyncio.wait_for(client.reader.read(), timeout) == b""
    except ConnectionResetError:
        return True


async def send_message(client: RawClient, tls: Tls | None) -> None:
    assert (await client.read_reply()).code == 220
    assert (await client.cmd("EHLO client.test")).code == 250
    if tls is not None:
        assert (await client.starttls(tls.client)).code == 220
        assert (await client.cmd("EHLO client.test")).code == 250
        expect(await client.cmd(f"AUTH PLAIN {PLAIN_OK}"), R.AUTH_OK)
    expect(await client.cmd("MAIL FROM:<u@tenant.example>"), R.SENDER_OK)
    expect(await client.cmd("RCPT TO:<r@sink.test>"), R.RECIPIENT_OK)
    assert (await client.cmd("DATA")).code == 354
    await client.send(BODY + b".\r\n")
    assert (await client.read_reply()).code == 250


async def test_v1_client_address_reaches_received_and_message(
        tls: Tls, users: UserStore, submitter: RecordingSubmitter) -> None:
    async with running_server(tls=tls, users=users, submitter=submitter,
                              listener=proxy_listener(), limits=fast_limits()) as server:
        client = await proxied(server.port, v1("192.0.2.77"))
        await send_message(client, tls)
        await client.close()
    (msg,) = submitter.messages
    assert msg.client_ip == "192.0.2.77"
    assert msg.body.startswith(b"Received: from client.test ([192.0.2.77])")


async def test_v1_ipv6_client(tls: Tls, users: UserStore,
                              submitter: RecordingSubmitter) -> None:
    async with running_server(tls=tls, users=users, submitter=submitter,
                              listener=proxy_listener(), limits=fast_limits()) as server:
        client = await proxied(server.port, v1("2001:db8::77"))
        await send_message(client, tls)
        await client.close()
    assert submitter.messages[0].client_ip == "2001:db8::77"


async def test_v2_on_implicit_tls_before_the_handshake(
        tls: Tls, users: UserStore, submitter: RecordingSubmitter) -> None:
    async with running_server(tls=tls, users=users, submitter=submitter,
                              listener=proxy_listener(tls="implicit"),
                              limits=fast_limits()) as server:
        client = await proxied(server.port, v2("198.51.100.9"))
        await client.writer.start_tls(tls.client, server_hostname="127.0.0.1")
        assert (await client.read_reply()).code == 220
        assert (await client.cmd("EHLO client.test")).code == 250
        expect(await client.cmd(f"AUTH PLAIN {PLAIN_OK}"), R.AUTH_OK)
        expect(await client.cmd("MAIL FROM:<u@tenant.example>"), R.SENDER_OK)
        expect(await client.cmd("RCPT TO:<r@sink.test>"), R.RECIPIENT_OK)
        assert (await client.cmd("DATA")).code == 354
        await client.send(BODY + b".\r\n")
        assert (await client.read_reply()).code == 250
        await client.close()
    (msg,) = submitter.messages
    assert msg.client_ip == "198.51.100.9"
    assert b"([198.51.100.9])" in msg.body.split(b"\r\n")[0]


async def test_header_and_commands_in_one_write(
        users: UserStore, submitter: RecordingSubmitter) -> None:
    # What a proxy forwards right behind the header belongs to the SMTP session.
    listener = proxy_listener(tls="none", auth="none", trusted_networks=["192.0.2.0/24"])
    async with running_server(tls=None, users=users, submitter=submitter, listener=listener,
                              limits=fast_limits()) as server:
        client = await proxied(server.port, v2("192.0.2.5") + b"EHLO early.test\r\n")
        assert (await client.read_reply()).code == 220
        assert (await client.read_reply()).code == 250
        await client.close()


async def test_v2_local_keeps_the_proxy_address(
        users: UserStore, submitter: RecordingSubmitter) -> None:
    listener = proxy_listener(tls="none", auth="none", trusted_networks=["127.0.0.1/32"])
    async with running_server(tls=None, users=users, submitter=submitter, listener=listener,
                              limits=fast_limits()) as server:
        client = await proxied(server.port, v2(None))
        await send_message(client, None)
        await client.close()
    assert submitter.messages[0].client_ip == "127.0.0.1"


async def test_trusted_networks_apply_to_the_claimed_address(
        users: UserStore, submitter: RecordingSubmitter) -> None:
    # The proxy itself (127.0.0.1) is NOT a trusted network: only the client counts.
    listener = proxy_listener(tls="none", auth="none", trusted_networks=["192.0.2.0/24"])
    async with running_server(tls=None, users=users, submitter=submitter, listener=listener,
                              limits=fast_limits()) as server:
        inside = await proxied(server.port, v1("192.0.2.5"))
        await send_message(inside, None)
        await inside.close()
        outside = await proxied(server.port, v1("203.0.113.5"))
        assert (await outside.read_reply()).code == 220
        await outside.cmd("EHLO c")
        reply = await outside.cmd("MAIL FROM:<u@tenant.example>")
        assert reply.code == 530, reply
        await outside.close()
    assert [m.client_ip for m in submitter.messages] == ["192.0.2.5"]


async def test_per_ip_cap_counts_the_real_client(tls: Tls, users: UserStore) -> None:
    # Every connection comes from the proxy's 127.0.0.1; the cap of one per IP is the
    # client's, so a second client is served and the same client's second is refused.
    async with running_server(tls=tls, users=users, listener=proxy_listener(),
                              limits=fast_limits(max_connections_per_ip=1)) as server:
        first = await proxied(server.port, v1("192.0.2.1"))
        assert (await first.read_reply()).code == 220
        other = await proxied(server.port, v2("192.0.2.2"))
        assert (await other.read_reply()).code == 220
        again = await proxied(server.port, v1("192.0.2.1", port=40001))
        expect(await again.read_reply(), R.TOO_MANY_CONNECTIONS_FROM_IP)
        for c in (first, other, again):
            await c.close()


async def test_auth_lockout_is_per_client_not_per_proxy(tls: Tls, users: UserStore) -> None:
    bad = base64.b64encode(f"\0{USER}\0wrong".encode()).decode()
    async with running_server(tls=tls, users=users, listener=proxy_listener(),
                              limits=fast_limits(auth_max_failures=1)) as server:
        attacker = await proxied(server.port, v1("203.0.113.66"))
        assert (await attacker.read_reply()).code == 220
        await attacker.cmd("EHLO a")
        await attacker.starttls(tls.client)
        await attacker.cmd("EHLO a")
        assert (await attacker.cmd(f"AUTH PLAIN {bad}")).code == 535
        locked = await attacker.cmd(f"AUTH PLAIN {PLAIN_OK}")
        assert locked.code != 235, locked  # the attacker's address is locked out
        await attacker.close()
        # Another client through the same proxy is not.
        honest = await proxied(server.port, v1("192.0.2.10"))
        assert (await honest.read_reply()).code == 220
        await honest.cmd("EHLO h")
        await honest.starttls(tls.client)
        await honest.cmd("EHLO h")
        expect(await honest.cmd(f"AUTH PLAIN {PLAIN_OK}"), R.AUTH_OK)
        await honest.close()


async def test_untrusted_peer_is_closed_without_greeting(tls: Tls, users: UserStore) -> None:
    async with running_server(tls=tls, users=users, limits=fast_limits(),
                              listener=proxy_listener(trusted="127.0.0.2/32")) as server:
        for header in (v1("192.0.2.1"), b"EHLO plain.test\r\n", b""):
            client = await proxied(server.port, header)
            assert await closed_silently(client)  # no greeting, no reply: closed
            await client.close()


async def test_malformed_header_is_closed(tls: Tls, users: UserStore) -> None:
    async with running_server(tls=tls, users=users, limits=fast_limits(),
                              listener=proxy_listener()) as server:
        for header in (b"EHLO client.test\r\n", b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n",
                       V2_SIGNATURE + b"\x21\x11\xff\xff", b"PROXY " + b"x" * 200):
            client = await proxied(server.port, header)
            assert await closed_silently(client)
            await client.close()


async def test_header_not_complete_in_time_is_closed(tls: Tls, users: UserStore) -> None:
    async with running_server(tls=tls, users=users, listener=proxy_listener(),
                              limits=fast_limits(proxy_header_timeout=Duration(0.3))) as server:
        client = await proxied(server.port, b"PROXY TCP4 192.0.2.1 ")
        assert await closed_silently(client)  # closed by the server, without a greeting
        await client.close()


async def test_drain_refuses_new_connections_and_transactions(tls: Tls,
                                                               users: UserStore) -> None:
    draining = [False]
    listener = proxy_listener(tls="none", auth="none", trusted_networks=["192.0.2.0/24"])
    async with running_server(tls=None, users=users, listener=listener, limits=fast_limits(),
                              draining=lambda: draining[0]) as server:
        opened = await proxied(server.port, v1("192.0.2.1"))
        assert (await opened.read_reply()).code == 220
        await opened.cmd("EHLO c")
        draining[0] = True
        expect(await opened.cmd("MAIL FROM:<u@tenant.example>"), R.DRAINING)
        assert await opened.at_eof()
        late = await proxied(server.port, v1("192.0.2.2"))
        expect(await late.read_reply(), R.DRAINING)
        assert await late.at_eof()
        draining[0] = False
        back = await proxied(server.port, v1("192.0.2.3"))
        assert (await back.read_reply()).code == 220
        assert server.limiter.total == 1  # the refused ones hold no slot
        for c in (opened, late, back):
            await c.close()
