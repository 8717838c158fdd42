"""Test tools for the submission server: a recording submitter, TLS material, a raw client.

`RecordingSubmitter` is a real in-memory implementation of relay.smtp.Submitter (not a
mock of the server under test). `RawClient` speaks SMTP byte-for-byte over a real socket so
tests can send exactly the bytes of an attack and read every reply.
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiosmtplib
import trustme

from relay.clock import Clock, FakeClock
from relay.config import Address, Duration, Limits, Listener
from relay.identity.store import IdentityStore
from relay.queue.ops import NewMessage
from relay.smtp import replies as R
from relay.smtp.server import SubmissionServer
from relay.smtp.session import Submitter
from relay.users import UserStore

USER, PASSWORD = "app", "s3cret-pw"  # the one account of `app_users`


class RecordingSubmitter:
    """Keeps submitted messages in a list; `fail` makes the next submits raise it."""

    def __init__(self) -> None:
        self.messages: list[NewMessage] = []
        self.fail: BaseException | None = None
        self._count = 0

    async def submit(self, msg: NewMessage,
                     on_durable: Callable[[str], None] | None = None,
                     account: object = None) -> str:
        # on_durable is left uncalled: the session then replies after submit() returns.
        if self.fail is not None:
            raise self.fail
        self._count += 1
        self.messages.append(msg)
        return f"Q{self._count:06d}TEST"


class DiscardSubmitter:
    """Answers as the queue does (on_durable, then the id), keeping nothing: the
    submission side measured alone (bench/conncost.py, bench/conncycles.py)."""

    count = 0

    async def submit(self, msg: NewMessage,
                     on_durable: Callable[[str], None] | None = None,
                     account: object = None) -> str:
        self.count += 1
        qid = f"Q{self.count:08d}BENCH"
        if on_durable is not None:
            on_durable(qid)
        return qid


class Tls:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and both SSL contexts."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.server)
        self.client = ssl.create_default_context()
        self.ca.configure_trust(self.client)

    def write_files(self, directory: Path) -> tuple[Path, Path]:
        """Write cert chain and key PEM files (for config-driven tests)."""
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        cert_path, key_path = directory / "cert.pem", directory / "key.pem"
        cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        key_path.write_bytes(cert.private_key_pem.bytes())
        return cert_path, key_path


class Reply:
    def __init__(self, code: int, lines: list[str]) -> None:
        self.code = code
        self.lines = lines

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def last(self) -> str:
        """The last line, as '<code> <text>'."""
        return f"{self.code} {self.lines[-1]}"

    def __repr__(self) -> str:
        return f"Reply({self.code}, {self.lines!r})"


def expect(reply: Reply, want: R.Reply) -> None:
    """The reply has want's code and enhanced status code."""
    assert reply.code == want.code, reply
    assert reply.lines[-1].split(" ", 1)[0] == want.enhanced, reply


def header_section(body: bytes) -> list[tuple[str, str]]:
    """(name, value) of the fields before the first empty line, names as written."""
    head = body.split(b"\r\n\r\n", 1)[0].decode()
    fields: list[tuple[str, str]] = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t"):
            fields[-1] = (fields[-1][0], fields[-1][1] + line)
        else:
            name, _, value = line.partition(":")
            fields.append((name, value.strip()))
    return fields


def named(fields: list[tuple[str, str]], name: str) -> list[str]:
    """The values of the fields called `name` (any letter case, "From :" too), in order."""
    return [v for n, v in fields if n.strip().lower() == name.lower()]


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1",
                      ssl_context: ssl.SSLContext | None = None,
                      local_addr: tuple[str, int] | None = None) -> RawClient:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl_context, local_addr=local_addr,
            server_hostname=host if ssl_context else None)
        return cls(reader, writer)

    async def read_reply(self, timeout: float = 5.0) -> Reply:
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), timeout)
            if not raw:
                raise ConnectionError(f"connection closed; got so far {lines!r}")
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(text[4:])
            if text[3:4] != "-":
                return Reply(int(text[:3]), lines)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, line: str | bytes) -> Reply:
        data = line.encode() if isinstance(line, str) else line
        await self.send(data + b"\r\n")
        return await self.read_reply()

    async def starttls(self, ssl_context: ssl.SSLContext) -> Reply:
        reply = await self.cmd("STARTTLS")
        if reply.code == 220:
            await self.writer.start_tls(ssl_context, server_hostname="127.0.0.1")
        return reply

    async def at_eof(self, timeout: float = 5.0) -> bool:
        """True when the server closed the connection (after any pending data)."""
        try:
            data = await asyncio.wait_for(self.reader.read(), timeout)
        except (ConnectionError, ssl.SSLError):
            return True
        return data == b"" or self.reader.at_eof()

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


def make_listener(tls: str = "starttls", auth: str = "required",
                  trusted_networks: list[str] | None = None) -> Listener:
    return Listener(address=Address("127.0.0.1", 0), tls=tls,  # type: ignore[arg-type]
                    auth=auth, trusted_networks=trusted_networks or [])  # type: ignore[arg-type]


def make_users(directory: Path | None = None, **credentials: str) -> UserStore:
    path = (directory or Path(tempfile.mkdtemp(prefix="relay-users-"))) / "users.json"
    store = UserStore(path)
    for name, password in credentials.items():
        store.add(name, password)
    return store


def count_scrypt(monkeypatch: Any) -> list[bytes]:
    """From now on, record the password of every scrypt run (relay.users._derive stays
    real); `monkeypatch` is pytest's fixture, which undoes it after the test."""
    import relay.users
    calls: list[bytes] = []
    real = relay.users._derive

    def counting(password: bytes, *args: Any, **kw: Any) -> bytes:
        calls.append(password)
        return real(password, *args, **kw)

    monkeypatch.setattr(relay.users, "_derive", counting)
    return calls


def fast_limits(**kw: object) -> Limits:
    """Limits as given, with no delay after a failed AUTH unless `auth_failure_delay` is."""
    kw.setdefault("auth_failure_delay", Duration(0.0))
    return Limits(**kw)  # type: ignore[arg-type]


def app_users(directory: Path) -> UserStore:
    """A user store in `directory` with the one account USER / PASSWORD."""
    return make_users(directory, **{USER: PASSWORD})


def verified_sender(state_dir: Path, password: str, **user: Any) -> None:
    """A whole relay's state for submitting as app@example.com: example.com a verified
    identity, and the SMTP user "app" with `password` (and `user`'s options of
    UserStore.add, e.g. configuration_set)."""
    identities = IdentityStore.in_state_dir(state_dir)
    identities.add("example.com")
    identities.set_verified("example.com", True)
    UserStore(state_dir / "users.json").add("app", password, **user)


async def send_starttls(port: int, password: str, rcpt: str, data: str) -> str:
    """Submit `data` from app@example.com to `rcpt` on a whole relay's listener (STARTTLS,
    certificate unchecked, AUTH as "app"); the reply to the message."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True,
                               validate_certs=False, timeout=10) as client:
        await client.login("app", password)
        _, reply = await client.sendmail("app@example.com", [rcpt], data)
    return reply


@asynccontextmanager
async def running_server(*, tls: Tls | None, listener: Listener | None = None,
                         limits: Limits | None = None, users: UserStore | None = None,
                         submitter: Submitter | None = None,
                         clock: Clock | None = None,
                         hostname: str = "relay.test", **kwargs: Any,
                         ) -> AsyncIterator[SubmissionServer]:
    server = SubmissionServer(
        listener or make_listener(), limits or Limits(auth_failure_delay=Duration(0.0)), hostname,
        submitter or RecordingSubmitter(), users or make_users(), clock or FakeClock(),
        tls.server if tls else None, **kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
