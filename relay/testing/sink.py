"""A real SMTP sink for tests and benchmarks.

Owns: an aiosmtpd server on a chosen loopback address (127.0.0.x) and port,
running in its own thread with its own event loop, so a test's event loop (or
a relay subprocess) can deliver to it over real sockets. It records every
accepted message (envelope, raw bytes, peer IP, TLS, EHLO name) and counts
connections (and the most open at once: `peak_connections`), and answers as a
programmable MX would (`Rules` or any `Policy`).

Must not: import relay internals, or do per-message work beyond one append
under a lock (it doubles as the benchmark sink).

Several sinks can share one port number on different addresses (relay
delivers to every MX on one configured port): start the first with port=0 and
pass its `.port` to the others.

`pipelining=True` advertises PIPELINING (RFC 2920; aiosmtpd reads commands one
line at a time, so it already copes with them arriving together), and
`record_wire=True` keeps every inbound chunk (`.wire`), so a test can see which
commands arrived in one write and count them (`.commands()`).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from aiosmtpd.smtp import SMTP, Envelope, Session

if TYPE_CHECKING:
    import trustme

Stage = Literal["ehlo", "mail", "rcpt", "data"]


# policy(stage, argument, envelope) -> a reply line ("550 5.1.1 no such user")
# or None to accept. argument: the EHLO/HELO name (stage "ehlo"), the MAIL/RCPT
# address, or "" at DATA.
# It runs in the sink's thread, one call at a time per connection.
Policy = Callable[[Stage, str, Envelope], str | None]


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    peer: str
    tls: bool
    ehlo: str
    received_at: float


@dataclass(frozen=True)
class Chunk:
    """What one read on the server side returned (`Sink(record_wire=True)`)."""
    connection: int   # 0 for the sink's first connection, then 1, 2, ...
    data: bytes       # plaintext (after STARTTLS, what TLS decrypted)


def _local_part(address: str) -> str:
    return address.rsplit("@", 1)[0].lower()


@dataclass
class Rules:
    """A simple programmable policy.

    rcpt: local-part (or full address) → reply at RCPT, e.g. {"nouser": "550 5.1.1 no such user"}.
    data_for: local-part → reply at end of DATA when that recipient is in the message.
    data: reply at end of DATA for every message.
    mail: reply at MAIL FROM for every transaction; ehlo: reply to EHLO and HELO.
    temp_fail_next: the next N DATA attempts get `temp_fail_reply`.
    delay: seconds to wait before answering end of DATA.
    """

    rcpt: dict[str, str] = field(default_factory=dict)
    data_for: dict[str, str] = field(default_factory=dict)
    data: str | None = None
    mail: str | None = None
    ehlo: str | None = None
    temp_fail_next: int = 0
    temp_fail_reply: str = "451 4.3.0 try again later"
    delay: float = 0.0

    def __call__(self, stage: Stage, arg: str, envelope: Envelope) -> str | None:
        if stage == "rcpt":
            return self.rcpt.get(arg.lower()) or self.rcpt.get(_local_part(arg))
        if stage == "data":
            if self.temp_fail_next > 0:
                self.temp_fail_next -= 1
                return self.temp_fail_reply
            for rcpt in envelope.rcpt_tos:
                reply = self.data_for.get(rcpt.lower()) or self.data_for.get(_local_part(rcpt))
                if reply:
                    return reply
            return self.data
        if stage == "mail":
            return self.mail
        return self.ehlo


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        reply = self._sink._ask("ehlo", hostname, envelope)
        if reply:
            return [reply]
        session.host_name = hostname
        if self._sink.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_HELO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str) -> str:
        reply = self._sink._ask("ehlo", hostname, envelope)
        if reply:
            return reply
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        reply = self._sink._ask("mail", address, envelope)
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        reply = self._sink._ask("rcpt", address, envelope)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        sink = self._sink
        delay = getattr(sink.policy, "delay", 0.0)
        if delay:
            await asyncio.sleep(delay)
        reply = sink._ask("data", "", envelope)
        if reply:
            return reply
        peer = session.peer
        content = envelope.original_content if envelope.original_content is not None \
            else envelope.content
        data = content if isinstance(content, bytes) else str(content or "").encode()
        record = Received(
            mail_from=str(envelope.mail_from),
            rcpt_tos=list(envelope.rcpt_tos),
            data=data,
            peer=peer[0] if isinstance(peer, tuple) else str(peer),
            tls=session.ssl is not None,
            ehlo=session.host_name or "",
            received_at=time.time(),
        )
        n = sink._record(record)
        return f"250 2.0.0 Ok: queued as sink-{n}"


class _CountingSMTP(SMTP):
    def __init__(self, sink: Sink, *args: Any, **kwargs: Any) -> None:
        self._relay_sink = sink
        super().__init__(*args, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if getattr(self, "_original_transport", None) is None:  # not the STARTTLS re-entry
            peer = transport.get_extra_info("peername")
            self._relay_connection = self._relay_sink._count_connection(peer[0] if peer else "")
            self._relay_open = True
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if getattr(self, "_relay_open", False):
            self._relay_open = False
            self._relay_sink._count_close()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        sink = self._relay_sink
        if sink.record_wire:
            sink._record_chunk(Chunk(getattr(self, "_relay_connection", -1), bytes(data)))
        super().data_received(data)


class Sink:
    """`Sink(host="127.0.0.2", port=0, tls_context=None, policy=None)`; start()/stop() or `with`."""

    def __init__(self, host: str = "127.0.0.2", port: int = 0, *,
                 tls_context: ssl.SSLContext | None = None,
                 policy: Policy | None = None, hostname: str = "sink.test",
                 data_size_limit: int = 50 * 1024 * 1024, fast: bool = True,
                 pipelining: bool = False, record_wire: bool = False) -> None:
        self.host = host
        self.port = port
        self.tls_context = tls_context
        self.policy: Policy | None = policy
        self.hostname = hostname
        self.data_size_limit = data_size_limit
        self.fast = fast
        self.pipelining = pipelining
        self.record_wire = record_wire
        self._wire: list[Chunk] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._messages: list[Received] = []
        self._connection_peers: list[str] = []
        self._open = 0   # connections open now
        self._peak = 0   # the most open at once
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- thread-safe accessors

    @property
    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    @property
    def message_count(self) -> int:
        with self._lock:
            return len(self._messages)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._connection_peers)

    @property
    def open_connections(self) -> int:
        """Connections open now."""
        with self._lock:
            return self._open

    @property
    def peak_connections(self) -> int:
        """The most connections that were open at once (since start or clear())."""
        with self._lock:
            return self._peak

    @property
    def connection_peers(self) -> list[str]:
        with self._lock:
            return list(self._connection_peers)

    @property
    def wire(self) -> list[Chunk]:
        """Every inbound chunk, in order (only with record_wire=True)."""
        with self._lock:
            return list(self._wire)

    def commands(self, verb: str) -> list[bytes]:
        """The inbound lines (from `.wire`) that start with `verb` ("RSET", "MAIL", ...).

        Raw lines, message bodies included: a test picks bodies that do not look
        like its commands.
        """
        want = verb.upper().encode()
        return [line for chunk in self.wire for line in chunk.data.splitlines(keepends=True)
                if line[:len(want)].upper() == want]

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()
            self._connection_peers.clear()
            self._wire.clear()
            self._peak = self._open

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Block until at least `count` messages were received; raise TimeoutError if not."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self._messages) >= count, timeout)
            if not ok:
                raise TimeoutError(
                    f"sink {self.host}:{self.port}: {len(self._messages)} of {count} messages "
                    f"after {timeout}s")
            return list(self._messages)

    async def await_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """`wait_for` for async tests: does not block the caller's event loop."""
        return await asyncio.to_thread(self.wait_for, count, timeout)

    # -- called from the sink thread

    def _ask(self, stage: Stage, arg: str, envelope: Envelope) -> str | None:
        policy = self.policy
        return policy(stage, arg, envelope) if policy is not None else None

    def _record(self, record: Received) -> int:
        with self._cond:
            self._messages.append(record)
            self._cond.notify_all()
            return len(self._messages)

    def _count_connection(self, peer: str) -> int:
        with self._lock:
            self._connection_peers.append(peer)
            self._open += 1
            self._peak = max(self._peak, self._open)
            return len(self._connection_peers) - 1

    def _count_close(self) -> None:
        with self._lock:
            self._open -= 1

    def _record_chunk(self, chunk: Chunk) -> None:
        with self._lock:
            self._wire.append(chunk)

    # -- lifecycle

    def _factory(self) -> SMTP:
        return _CountingSMTP(
            self, _Handler(self), hostname=self.hostname, tls_context=self.tls_context,
            require_starttls=False, data_size_limit=self.data_size_limit,
            decode_data=False, enable_SMTPUTF8=True, timeout=60)

    def _new_loop(self) -> asyncio.AbstractEventLoop:
        # uvloop roughly halves the per-command cost; aiosmtpd's STARTTLS drives
        # asyncio.sslproto directly, so a TLS sink stays on the stdlib loop.
        if self.tls_context is None and self.fast:
            try:
                import uvloop
            except ImportError:  # pragma: no cover - uvloop is a dependency
                pass
            else:
                return uvloop.new_event_loop()
        return asyncio.new_event_loop()

    def _run(self) -> None:
        loop = self._new_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                loop.create_server(self._factory, host=self.host, port=self.port,
                                   reuse_address=True))
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as e:
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            loop.run_until_complete(self._server.wait_closed())
            tasks = asyncio.all_tasks(loop)
            for t in tasks:
                t.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    def start(self) -> Sink:
        if self._thread is not None:
            return self
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.host}",
                                        daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def server_tls(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    """A sink's `tls_context`: a certificate for `names` issued by the test CA `ca`."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx
