"""Admission of connections on the unauthenticated edges, before any work is spent on them.

Owns three things every listener (submission and feedback) shares:
- `ImplicitTlsGate`: the protocol an implicit-TLS (465-style) listener accepts with. It
  counts the connection against the total and per-IP caps BEFORE the TLS handshake (a
  refused one is closed at once, with no handshake spent on it), runs the handshake
  with a time limit (`limits.tls_handshake_timeout`), and only then hands the TLS
  transport to the SMTP session, which owns the slot from there on (it releases it
  when the connection ends). Without it a client that never starts TLS held a socket
  and a file descriptor for the loop's default 60 s, uncounted.
- `raise_fd_limit()`: the soft RLIMIT_NOFILE raised to the hard limit, once per process.
- `AcceptFailures`: accept() failures (EMFILE, ENFILE, ENOBUFS, ...) are logged (at most
  once a second) and counted, per errno name, through its observers (Prometheus).
  asyncio reports them to the loop's exception handler, which it extends. uvloop
  (libuv) does not: at the open-file limit it accepts and closes new clients silently
  (its "EMFILE trick"). So the process's descriptors are also looked at every
  `FD_CHECK_INTERVAL` seconds, and a process with `FD_RESERVE` or fewer left counts
  as failing to accept (EMFILE) for that interval.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, cast

log = logging.getLogger("relay.smtp.admission")

# What the asyncio and uvloop accept loops say when accept() fails.
_ACCEPT_MESSAGE = "socket.accept() out of system resource"
EARLY_BYTES_MAX = 64 * 1024  # before the handshake starts; a ClientHello is a few KB
FD_CHECK_INTERVAL = 2.0
FD_RESERVE = 8


class HandOver(Protocol):
    """An SMTP session protocol that can take an admitted connection after its handshake."""

    preadmitted: bool

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...


def peer_ip(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if peer else ""


class ImplicitTlsGate(asyncio.Protocol):
    """One implicit-TLS connection from accept() to the end of its handshake."""

    def __init__(self, *, ssl_context: ssl.SSLContext, handshake_timeout: float,
                 admit: Callable[[str], object | None], release: Callable[[str], None],
                 session: Callable[[], HandOver],
                 on_handshake: Callable[[str], None] | None = None,
                 pending: set[ImplicitTlsGate] | None = None,
                 client: tuple[str, int] | None = None) -> None:
        self.ssl_context = ssl_context
        self.handshake_timeout = handshake_timeout
        self.admit = admit
        self.release = release
        self.session = session
        self.on_handshake = on_handshake  # "refused", "timeout", "failed" (metrics)
        self.ip = ""
        # The client address of a PROXY header (relay/smtp/proxygate.py), which stands
        # for the socket's peer in the caps; None: the peer itself.
        self.client = client
        self._holding = False  # the gate holds a connection slot (not yet handed over)
        self._task: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._early = bytearray()  # bytes that came before the TLS protocol took over
        # The listener's gates still in their handshake, aborted when it stops.
        self.pending = pending if pending is not None else set()

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's transports are duck-typed
        self.ip = self.client[0] if self.client is not None else peer_ip(transport)
        if self.admit(self.ip) is not None:
            # Over a cap: close now. A TLS alert or a 421 would first cost a handshake,
            # which is what a flood of connections is after.
            self._count("refused")
            log.debug("%s: implicit TLS connection refused (connection limit)", self.ip)
            transport.abort()
            return
        self._holding = True
        self._transport = transport
        self.pending.add(self)
        self._task = asyncio.get_running_loop().create_task(self._handshake(transport))

    def data_received(self, data: bytes) -> None:
        # The ClientHello can arrive before the task above has run start_tls: the event
        # loop starts reading once connection_made returns. Kept for the TLS protocol.
        self._early += data
        if len(self._early) > EARLY_BYTES_MAX and self._transport is not None:
            self._transport.abort()

    def _feed_early(self, transport: asyncio.Transport) -> None:
        """Give what arrived before start_tls to the TLS protocol that start_tls has just
        installed, before it reads anything itself (its connection_made and the
        resume_reading that start_tls scheduled run after this)."""
        data, self._early = bytes(self._early), bytearray()
        protocol = transport.get_protocol()
        if not data or protocol is self:
            return
        if hasattr(protocol, "get_buffer"):  # asyncio and uvloop TLS are buffered
            buffered = cast(asyncio.BufferedProtocol, protocol)
            view = memoryview(data)
            while view:
                buf = memoryview(buffered.get_buffer(len(view)))
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                buffered.buffer_updated(n)
                view = view[n:]
        else:
            cast(asyncio.Protocol, protocol).data_received(data)

    async def _handshake(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        # Runs before the callbacks start_tls schedules (call_soon keeps order).
        loop.call_soon(self._feed_early, transport)
        try:
            tls = await loop.start_tls(transport, self, self.ssl_context, server_side=True,
                                       ssl_handshake_timeout=self.handshake_timeout)
        except (OSError, ssl.SSLError, ValueError, TimeoutError) as e:
            timed_out = loop.time() - began >= self.handshake_timeout * 0.99
            self._count("timeout" if timed_out else "failed")
            log.info("%s: TLS handshake %s: %s", self.ip,
                     "timed out" if timed_out else "failed", e or type(e).__name__)
            self._give_back()
            transport.abort()
            return
        if tls is None or tls.is_closing():
            self._give_back()
            transport.abort()
            return
        session = self.session()
        session.preadmitted = True  # the session releases the slot when it ends
        self._holding = False
        self.pending.discard(self)
        tls.set_protocol(session)  # type: ignore[arg-type]
        session.connection_made(tls)

    def _give_back(self) -> None:
        self.pending.discard(self)
        if self._holding:
            self._holding = False
            self.release(self.ip)

    def abort(self) -> None:
        """The listener stops: end a connection still in its handshake."""
        if self._task is not None:
            self._task.cancel()
        self._give_back()
        if self._transport is not None:
            self._transport.abort()

    def _count(self, kind: str) -> None:
        if self.on_handshake is not None:
            self.on_handshake(kind)

    def connection_lost(self, exc: Exception | None) -> None:
        # Only before the hand-over (after it, the session is the protocol).
        self._give_back()


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (each connection is a descriptor;
    the usual soft 1024 is a few hundred clients). Returns (soft, hard) afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as e:  # e.g. hard = infinity where that is refused
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, e)
            return soft, hard
        log.info("open-file limit raised from %d to %d", soft, hard)
        soft = hard
    return soft, hard


class AcceptFailures:
    """The loop's exception handler, extended: counts and logs accept() failures and
    passes everything else to the handler that was there before."""

    _installed: ClassVar[dict[int, AcceptFailures]] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.counts: Counter[str] = Counter()
        self.observers: list[Callable[[str], None]] = []
        self._previous = loop.get_exception_handler()
        self._last_log = -1.0e9
        self._unlogged = 0
        loop.set_exception_handler(self._handle)
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._users = 0

    def watch(self) -> None:
        """One more listener relies on this watcher: look at the descriptors from now on."""
        self._users += 1
        if self._timer is None:
            self._timer = self._loop.call_later(FD_CHECK_INTERVAL, self._check_fds)

    def unwatch(self) -> None:
        self._users = max(0, self._users - 1)
        if not self._users and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_fds(self) -> None:
        self._timer = self._loop.call_later(FD_CHECK_INTERVAL, self._check_fds)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        try:
            in_use = len(os.listdir("/proc/self/fd")) - 1  # less the listing's own
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):  # not even one left to look
                self.failed(e, self._loop.time())
            return  # (no /proc: only the loop's own reports are seen)
        if soft != resource.RLIM_INFINITY and soft - in_use <= FD_RESERVE:
            self.failed(OSError(errno.EMFILE, f"open-file limit reached ({in_use} of {soft} "
                                              "descriptors in use)"), self._loop.time())

    @classmethod
    def on(cls, loop: asyncio.AbstractEventLoop) -> AcceptFailures:
        """The watcher of `loop`, installed on first use."""
        found = cls._installed.get(id(loop))
        if found is None or found._loop_gone(loop):
            found = cls._installed[id(loop)] = cls(loop)
        return found

    @classmethod
    def watching(cls, loop: asyncio.AbstractEventLoop,
                 observer: Callable[[str], None] | None) -> AcceptFailures:
        """The watcher of `loop` for one more listener (which calls unwatch() when it
        stops), with `observer` among its observers once."""
        failures = cls.on(loop)
        failures.watch()
        if observer is not None and observer not in failures.observers:
            failures.observers.append(observer)
        return failures

    def _loop_gone(self, loop: asyncio.AbstractEventLoop) -> bool:
        return loop.get_exception_handler() != self._handle

    def _handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") == _ACCEPT_MESSAGE and isinstance(exc, OSError):
            self.failed(exc, loop.time())
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def failed(self, exc: OSError, now: float) -> None:
        name = errno.errorcode.get(exc.errno or 0, "other")
        self.counts[name] += 1
        for observe in self.observers:
            observe(name)
        # The loop retries accept() at once (uvloop) or after a second (asyncio): one
        # line a second, with how many were not logged.
        if now - self._last_log >= 1.0:
            log.error("accept() failed: %s (%d more since the last report); new clients "
                      "wait in the listen backlog or are closed by the kernel", exc,
                      self._unlogged)
            self._last_log = now
            self._unlogged = 0
        else:
            self._unlogged += 1
