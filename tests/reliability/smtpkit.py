"""Raw-SMTP helpers shared by the reliability tests (imported as a plain module), and
`record_peers`, which lists every client of an in-process relay's own listener."""

from __future__ import annotations

import base64

from relay.app import RelayApp
from relay.smtp import replies as R
from relay.testing.submission import RawClient, Reply, Tls, expect

USER, PASSWORD = "app", "s3cret-pw"


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


async def connect(port: int, host: str = "127.0.0.1") -> RawClient:
    client = await RawClient.connect(port, host=host)
    greeting = await client.read_reply()
    assert greeting.code == 220, greeting
    return client


async def tls_session(port: int, tls: Tls, *, login: bool = True) -> RawClient:
    client = await connect(port)
    assert (await client.cmd("EHLO client.test")).code == 250
    assert (await client.starttls(tls.client)).code == 220
    assert (await client.cmd("EHLO client.test")).code == 250
    if login:
        expect(await client.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}"), R.AUTH_OK)
    return client


async def open_data(client: RawClient, sender: str = "u@tenant.example",
                    rcpt: str = "r@sink.test") -> None:
    expect(await client.cmd(f"MAIL FROM:<{sender}>"), R.SENDER_OK)
    expect(await client.cmd(f"RCPT TO:<{rcpt}>"), R.RECIPIENT_OK)
    assert (await client.cmd("DATA")).code == 354


async def send_ok(client: RawClient) -> Reply:
    """A normal transaction, proving the session still serves."""
    await open_data(client)
    await client.send(b"From: u@tenant.example\r\nSubject: ok\r\n\r\nfine\r\n.\r\n")
    reply = await client.read_reply()
    expect(reply, R.QUEUED)
    return reply


def record_peers(app: RelayApp) -> list[str]:
    """The client address of every connection the app's one listener admits from now on
    (a copy relay delivers back to itself shows up here)."""
    peers: list[str] = []
    (server,) = app.listeners
    admit = server.context.admit

    def counting(ip: str) -> object:
        peers.append(ip)
        return admit(ip)

    server.context.admit = counting  # type: ignore[assignment]
    return peers
