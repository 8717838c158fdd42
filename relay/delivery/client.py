"""Outbound SMTP client: one transaction toward one destination, over pooled connections.

Owns: the only use of aiosmtplib in relay. `Sender.send()` tries the targets
(MX hosts, already ordered by routing) in order, speaks EHLO / STARTTLS /
MAIL / RCPT… / DATA, and returns one Outcome per recipient. Idle connections
are pooled per next hop (below) and reused across destinations.

Must not: raise. Every library exception, OSError and timeout is translated
here into an Outcome via relay.delivery.classify (STYLE §3 rule 9); only
cancellation propagates. Must not decide retry timing, warm-up or which source
IP to use — the scheduler passes those in.

Choices (RFC 5321 §5.1, RFC 3207, RFC 7435):
- A connection failure, or a 4xx/5xx greeting or EHLO, moves on to the next
  target. A 5xx greeting is skipped like Postfix's smtp_skip_5xx_greeting: if
  no target is left the result is deferred, not bounced.
- tls = "opportunistic": STARTTLS when offered, certificates not verified. If
  the STARTTLS exchange or handshake fails, that host is retried once in
  plaintext (what opportunistic TLS means in practice; Postfix does the same
  with smtp_tls_security_level = may).
- tls = "require" (delivery.tls, or a configuration set's tls passed per call):
  no STARTTLS offered, or it fails → that target is skipped with `451 4.7.5 TLS
  required but not available`; never DATA in plaintext. Certificates are
  verified (chain and MX host name) when delivery.verify_certificates is set,
  whichever of the two asked for "require".
- tls = "verify" (an MTA-STS enforce policy, RFC 8461 §4.2; set per call or on a
  target, `Target.tls`): "require", and the certificate must verify for the MX
  host name whatever delivery.verify_certificates says. The strictest of the
  config, the call and the targets applies; a pooled connection is reused only
  if it was made at least as strictly.
- Per attempt (one `send()`), at most delivery.mx_session_limit sessions are
  opened (Postfix's smtp_mx_session_limit): a session is a connection that got a
  greeting, whatever it said; connections refused, timed out or dropped before a
  greeting count only against the addresses routing gave (mx_address_limit).
- One transaction per message: RCPT for each recipient, per-recipient RCPT
  replies recorded; the DATA reply applies to every accepted recipient.
- PIPELINING (RFC 2920 §3.1) when the server offers it: MAIL, every RCPT and
  DATA go in one write and the replies are read in order. A refused MAIL fails
  every recipient with its reply. With no recipient accepted the server refuses
  DATA (503/554); a broken one that says 354 gets the lone "." and never the
  body. Without PIPELINING: one command at a time, and RSET instead of DATA
  when no recipient was accepted.
- A pooled connection goes straight to MAIL if its last transaction ended
  cleanly (Postfix's connection cache does the same); RSET only after one was
  abandoned half-way (DATA refused). A reused connection that turns out dead
  before it answered anything (so no body was sent: nothing can be delivered
  twice) is dropped and the message tried once more on a fresh connection.
- The pool key is the target, not the destination: (MX host name, IP address,
  port, source address), like Postfix's connection cache looking up by next-hop
  address. Many domains hosted behind one MX share its connections. `send()`
  walks its targets in order and takes, before opening anything, the most
  recently used idle connection under one of their keys: for a target of the
  most preferred MX level any such connection; for a less preferred one only a
  connection whose last transaction was for the same destination (made when its
  better MX failed; another domain's backup-MX connection would skip this one's
  primary). The host name is in the key because the EHLO/STARTTLS dialogue and
  a verified certificate are for that name; the source address because it fixes
  the EHLO name (its PTR). TLS as above: a connection made with weaker TLS than
  the message needs (plain for "require", unverified for "verify") stays pooled
  for others and a new one is opened.
- Caps: at most delivery.max_connections_per_destination idle connections per
  key (the scheduler's per-destination workers and the shaper's site limit bound
  the busy ones) and `delivery.max_idle_connections` in
  all; over either, the oldest idle one is closed, so fds and memory stay
  bounded whatever the number of destinations. A connection counts against the
  shaping site of the transaction using it (`_site_open`): reused by another
  site, it moves to that site's count, within that site's limit.
- Closing: QUIT, waiting at most min(command_timeout, 5 s), then the socket is
  aborted. The reaper closes the expired idle connections of a pass together
  (one pass at a time), so a pass lasts one bounded QUIT, not one per connection.
- aiosmtplib normalises bare CR/LF to CRLF and dot-stuffs on the wire
  (no outbound SMTP smuggling) and refuses control characters in addresses with
  ValueError (no CR/LF command injection), mapped to `501 5.1.3 invalid address`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import aiosmtplib
import msgspec
from aiosmtplib import (
    SMTPConnectError,
    SMTPException,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)
from aiosmtplib.email import parse_address, quote_address
from aiosmtplib.errors import SMTPReadTimeoutError
from aiosmtplib.protocol import (
    COMMAND_INJECTION_REGEX,
    MAX_RESPONSE_LENGTH,
    PERIOD_REGEX,
    SMTPProtocol,
    normalize_message_line_endings,
)
from aiosmtplib.response import SMTPResponse
from aiosmtplib.typing import SMTPStatus

from relay.clock import Clock, SystemClock
from relay.config import Delivery
from relay.delivery.classify import Failure, Outcome, from_failure, from_reply
from relay.tasks import cancel_and_wait

__all__ = ["Sender", "Target", "TransactionResult"]

# QUIT on a connection being closed waits at most this long (and command_timeout).
_QUIT_TIMEOUT = 5.0


class Target(Protocol):
    """One host to try, as routing produces it (relay/delivery/routing.py `Target`)."""

    @property
    def host_name(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def preference(self) -> int: ...


class TransactionResult(msgspec.Struct, frozen=True):
    """One Outcome per recipient, in the order the recipients were given."""

    recipients: list[str]
    outcomes: list[Outcome]
    remote_mta: str = ""   # host name of the target that answered, "" if none did
    address: str = ""      # its IP address
    tls: bool = False
    reused: bool = False   # the transaction ran on a pooled connection

    def by_recipient(self) -> dict[str, Outcome]:
        return dict(zip(self.recipients, self.outcomes, strict=True))


# (MX host name lower-cased without the final dot, IP address, port, source address)
_PoolKey = tuple[str, str, int, str]


def _pool_key(target: Target, src: str) -> _PoolKey:
    return (target.host_name.rstrip(".").lower(), target.address, target.port, src)


@dataclass(eq=False)  # identity: a _Conn is a key of Sender._idle
class _Conn:
    smtp: aiosmtplib.SMTP
    host_name: str
    address: str
    tls: bool
    key: _PoolKey = ("", "", 0, "")
    messages: int = 0
    idle_since: float = 0.0
    site: str = ""          # the shaping site it counts against ("" = none)
    verified: bool = False  # the certificate was checked against host_name
    rset_needed: bool = False  # the last transaction was abandoned half-way
    destination: str = ""   # the destination its last transaction was for


@dataclass
class _Sessions:
    """The sessions one attempt may still open (delivery.mx_session_limit)."""

    left: int


class _TargetFailed(Exception):
    def __init__(self, outcome: Outcome, plaintext_retry: bool = False) -> None:
        super().__init__(outcome.diagnostic)
        self.outcome = outcome
        self.plaintext_retry = plaintext_retry


_STRICTNESS = {"": 0, "opportunistic": 1, "require": 2, "verify": 3}


def _strictest(*levels: str) -> str:
    return max(levels, key=lambda v: _STRICTNESS.get(v, 0)) or "opportunistic"


def _failure_kind(exc: BaseException) -> Failure:
    """Map a transport-level exception (no SMTP reply) to a classify.Failure."""
    if isinstance(exc, ValueError):  # aiosmtplib: control characters in an argument
        return "invalid_address"
    if isinstance(exc, TimeoutError | SMTPTimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return "tls_failed"
    if isinstance(exc, SMTPConnectError):
        cause = exc.__cause__
        if isinstance(cause, ConnectionRefusedError):
            return "refused"
        if isinstance(cause, SMTPServerDisconnected | ConnectionError):
            return "dropped"
        return "unreachable"
    if isinstance(exc, SMTPServerDisconnected | ConnectionError):
        return "dropped"
    if isinstance(exc, OSError):
        return "unreachable"
    return "local_error"


def _abort(transport: asyncio.BaseTransport | None) -> None:
    """Close a connection's socket now, without waiting for a TLS close_notify."""
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    elif transport is not None:
        transport.close()


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# A dot-atom local part (a conservative subset of atext) @ an LDH domain: parseaddr()
# returns such an address unchanged and aiosmtplib accepts it, so it skips both (most
# addresses are like this; parseaddr was ~0.1 ms of pure Python per address).
# tests/unit/test_fast_paths.py checks the two agree.
PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9_%+=-]+(?:\.[A-Za-z0-9_%+=-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


def _valid_address(address: str) -> bool:
    """True if aiosmtplib would put exactly this address on the wire.

    aiosmtplib refuses control characters (ValueError) but first runs the
    address through email.utils.parseaddr, which silently turns
    "a@x>\r\nRCPT TO:<v@y" into "a@x". Either way the recipient is not the one
    we were given: refuse it (CR/LF command injection) instead of delivering elsewhere.
    """
    if PLAIN_ADDRESS.fullmatch(address):
        return True
    if _CONTROL_RE.search(address):
        return False
    try:
        return parse_address(address) == address
    except ValueError:
        return False


def _quoted(address: str) -> str:
    """aiosmtplib's quote_address(), without its parse for a plain address (for which
    it is the identity; send() has already refused any other that parsing changes)."""
    return f"<{address}>" if PLAIN_ADDRESS.fullmatch(address) else quote_address(address)


def _remote_name(host_name: str, address: str) -> str:
    return host_name.rstrip(".") or address


def _command(*args: bytes) -> bytes:
    """One command line, built and checked as aiosmtplib's execute_command does (no CR/LF
    injection)."""
    for arg in args:
        if COMMAND_INJECTION_REGEX.search(arg):
            raise ValueError("Command arg contains a prohibited control character")
    return b" ".join(args) + b"\r\n"


def _wire_body(data: bytes) -> bytes:
    """The message as aiosmtplib's DATA puts it on the wire: bare CR/LF → CRLF,
    dot-stuffed, ended by "." (no outbound smuggling)."""
    crlf = data.count(b"\r\n")
    if (crlf == data.count(b"\r") == data.count(b"\n") and data.endswith(b"\r\n")
            and not data.startswith(b".") and b"\r\n." not in data):
        # Already CRLF throughout and no line starts with ".": what the two regex
        # passes below would return, found by C-speed scans (most messages).
        return data + b".\r\n"
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data)) + b".\r\n"


def _failed(e: BaseException, name: str) -> Outcome:
    if isinstance(e, SMTPResponseException):
        return from_reply(e.code, e.message, name)
    return from_failure(_failure_kind(e), name, _short(e), name)


def _refused(reply: SMTPResponse, name: str) -> Outcome:
    """A reply other than the one expected; a 2xx/3xx here is a protocol error, not success."""
    if reply.code // 100 in (4, 5):
        return from_reply(reply.code, reply.message, name)
    return Outcome("deferred", 451, "4.5.0",
                   f"unexpected reply {reply.code} {reply.message.strip()}".rstrip(), name)


def _fill(out: list[Outcome | None], o: Outcome,
          indices: Sequence[int] | None = None) -> list[Outcome]:
    """Give `o` to the recipients (all, or `indices`) that have no outcome yet."""
    for i in range(len(out)) if indices is None else indices:
        if out[i] is None:
            out[i] = o
    return [x if x is not None else o for x in out]


class _PipeliningProtocol(SMTPProtocol):
    """aiosmtplib's protocol, able to read several replies to one write (RFC 2920).

    The stock protocol expects one reply per write: it parses one reply per
    data_received and drops bytes arriving while that reply waits to be picked
    up, which is exactly where a pipelining server's next replies land. Between
    start_pipeline() and stop_pipeline() every complete reply is queued instead;
    otherwise it is the stock protocol (its unsolicited-data and STARTTLS
    defences included). `adopt()` converts a connected aiosmtplib.SMTP's protocol.
    """

    _pipelining: bool
    _replies: deque[SMTPResponse]
    _failure: BaseException | None
    _wakeup: asyncio.Future[None] | None

    @classmethod
    def adopt(cls, smtp: aiosmtplib.SMTP) -> None:
        proto, transport = smtp.protocol, smtp.transport
        if proto is None or transport is None or isinstance(proto, cls):
            return
        proto.__class__ = cls
        assert isinstance(proto, cls)
        proto._pipelining = False
        proto._replies = deque()
        proto._failure = None
        proto._wakeup = None
        # uvloop binds data_received when the protocol is set: bind it again.
        transport.set_protocol(proto)

    def start_pipeline(self) -> None:
        del self._buffer[:]  # anything not yet asked for is unsolicited
        self._replies.clear()
        self._failure = None
        self._pipelining = True

    def stop_pipeline(self) -> bool:
        """Back to one reply per command; True if replies nobody asked for were left."""
        extra = bool(self._replies) or bool(self._buffer)
        self._pipelining = False
        self._replies.clear()
        del self._buffer[:]
        return extra

    async def read_reply(self, timeout: float | None) -> SMTPResponse:
        """The next reply in order; SMTPServerDisconnected / SMTPReadTimeoutError / a
        malformed reply raise as they do from aiosmtplib."""
        while not self._replies:
            if self._failure is not None:
                raise self._failure
            if self.transport is None:
                raise SMTPServerDisconnected("Connection lost")
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._wakeup = waiter
            try:
                await asyncio.wait_for(waiter, timeout)
            except TimeoutError as exc:
                raise SMTPReadTimeoutError("Timed out waiting for server response") from exc
            finally:
                self._wakeup = None
        return self._replies.popleft()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self._wake()

    def data_received(self, data: bytes) -> None:
        if not self._pipelining:
            super().data_received(data)
            return
        if self._failure is not None:
            return
        self._buffer.extend(data)
        try:
            while (reply := self._read_response_from_buffer()) is not None:
                self._replies.append(reply)
            if len(self._buffer) > MAX_RESPONSE_LENGTH:
                raise SMTPResponseException(-1, "Response too long")
        except Exception as exc:  # a malformed or endless reply
            del self._buffer[:]
            self._fail(exc)
            return
        if self._replies:
            self._wake()

    def eof_received(self) -> bool:
        if self._pipelining:
            self._fail(SMTPServerDisconnected("Unexpected EOF received"))
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._pipelining:
            lost = SMTPServerDisconnected("Connection lost")
            lost.__cause__ = exc
            self._fail(lost)


class Sender:
    """Pooled SMTP sender.

    `Sender(delivery, hostname=..., clock=SystemClock(), tls_context=None)`:
    `delivery` is the config's [delivery] section; `hostname` the EHLO name
    (config server.hostname); `tls_context` overrides the client TLS context of
    connections that need no verified certificate (default: one that verifies nothing);
    `verify_context` the one for connections that do: tls = "verify", and tls =
    "require" with delivery.verify_certificates (default: `tls_context` when one is
    given together with verify_certificates, as tests trusting a trustme CA do, else the
    system trust store);
    delivery.max_idle_connections caps the idle connections kept across all pool keys
    (the oldest idle one is closed to make room).
    """

    def __init__(self, delivery: Delivery, *, hostname: str, clock: Clock | None = None,
                 tls_context: ssl.SSLContext | None = None,
                 verify_context: ssl.SSLContext | None = None) -> None:
        self._cfg = delivery
        self._hostname = hostname
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._pool: dict[_PoolKey, list[_Conn]] = {}   # idle, per key, oldest first
        self._idle: dict[_Conn, None] = {}   # every idle connection, oldest first
        self._max_idle = delivery.max_idle_connections
        self._site_open: dict[str, int] = {}   # open connections per shaping site
        self._reaper: asyncio.Task[None] | None = None
        self._reaping = asyncio.Lock()   # one reap pass at a time
        self._closed = False
        # Whether "require" also verifies: the same meaning whether delivery.tls or a
        # configuration set asked for it.
        self._verify = delivery.verify_certificates
        if tls_context is not None:
            self._tls_context = tls_context
        else:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self._tls_context = ctx
        if verify_context is None:
            verify_context = (tls_context if tls_context is not None and self._verify
                              else ssl.create_default_context(ssl.Purpose.SERVER_AUTH))
        self._verify_context = verify_context

    # ------------------------------------------------------------------ public

    async def send(self, destination: str, targets: Sequence[Target], sender: str,
                   recipients: Sequence[str], data: bytes, *,
                   source_address: str | None = None,
                   ehlo: str | None = None,
                   tls: str | None = None, site: str = "", max_connections: int = 0,
                   messages_per_connection: int = 0) -> TransactionResult:
        """Deliver one message to `recipients` at `destination`; never raises (but on cancel).

        `source_address` overrides delivery.source_address ("" = the kernel's choice);
        `ehlo` the EHLO name for new connections (the name that source IP's PTR gives);
        `tls` raises delivery.tls for this message ("opportunistic" | "require"; a
        configuration set's TLS policy; it never lowers it): with "require" only a pooled
        connection that is already encrypted is reused and a new one must get STARTTLS.
        "verify" (or a target's `tls = "verify"`, MTA-STS) also checks the certificate
        against the MX name.
        Site shaping (relay/delivery/shaper.py): at most `max_connections` connections are
        open to `site` across all source addresses (an idle one of another address is
        closed to make room), and `messages_per_connection` overrides
        delivery.max_messages_per_connection for them.
        """
        src = self._cfg.source_address if source_address is None else source_address
        # The stricter of the two: a configuration set may raise delivery.tls, never
        # lower it (a set is the sender's choice, the global policy the operator's floor).
        policy = _strictest(self._cfg.tls, tls or "", *(getattr(t, "tls", "") for t in targets))
        invalid = from_failure("invalid_address")
        if not _valid_address(sender):
            return TransactionResult(list(recipients), [invalid] * len(recipients))
        valid = [r for r in recipients if _valid_address(r)]
        if len(valid) < len(recipients):
            if not valid:
                return TransactionResult(list(recipients), [invalid] * len(recipients))
            part = await self.send(destination, targets, sender, valid, data,
                                   source_address=source_address, ehlo=ehlo, tls=tls,
                                   site=site, max_connections=max_connections,
                                   messages_per_connection=messages_per_connection)
            got = iter(part.outcomes)
            merged = [next(got) if _valid_address(r) else invalid for r in recipients]
            return msgspec.structs.replace(part, recipients=list(recipients), outcomes=merged)
        conn: _Conn | None = None
        try:
            sessions = _Sessions(self._cfg.mx_session_limit)
            conn = await self._take(destination, targets, src,
                                    need_tls=policy in ("require", "verify"),
                                    need_verified=self._verifies(policy))
            reused = conn is not None
            if conn is not None and conn.site != site:
                # Opened for another site sharing this MX host: it counts against ours now.
                await self._claim(conn, site, max_connections)
            if conn is None:
                conn, failed = await self._open_site(site, max_connections, destination,
                                                     targets, src, ehlo, policy,
                                                     sessions)
                if conn is None:
                    return TransactionResult(list(recipients), [failed] * len(recipients))
            conn.destination = destination
            outcomes, keep, fresh_retry = await self._transact(conn, sender, recipients, data)
            if reused and fresh_retry:
                # The pooled connection was dead: it answered nothing, so no body was
                # sent and a fresh connection cannot deliver the message twice.
                dead, conn = conn, None
                await self._discard(dead)
                conn, failed = await self._open_site(site, max_connections, destination,
                                                     targets, src, ehlo, policy,
                                                     sessions)
                if conn is None:
                    return TransactionResult(list(recipients), [failed] * len(recipients))
                conn.destination = destination
                reused = False
                outcomes, keep, _ = await self._transact(conn, sender, recipients, data)
            conn.messages += 1
            per_conn = messages_per_connection or self._cfg.max_messages_per_connection
            done, conn = conn, None
            if keep and done.messages < per_conn \
                    and done.smtp.is_connected and not self._closed:
                evicted = self._put(done)
                if evicted:
                    await asyncio.gather(*(self._discard(c, polite=True) for c in evicted))
            else:
                await self._discard(done, polite=done.smtp.is_connected)
            return TransactionResult(list(recipients), outcomes,
                                     remote_mta=_remote_name(done.host_name, done.address),
                                     address=done.address, tls=done.tls, reused=reused)
        except asyncio.CancelledError:
            if conn is not None:  # neither pooled nor closed: do not leak it (or its site)
                self._drop(conn)
            raise
        except Exception as e:  # the boundary: nothing escapes as an exception
            if conn is not None:
                self._drop(conn)
            failed = from_failure("local_error", destination, _short(e))
            return TransactionResult(list(recipients), [failed] * len(recipients))

    def idle_connections(self, destination: str | None = None) -> int:
        """Idle pooled connections: all, or those whose last transaction was for `destination`."""
        if destination is None:
            return len(self._idle)
        return sum(1 for c in self._idle if c.destination == destination)

    async def reap(self) -> int:
        """Close idle connections older than delivery.idle_connection_timeout (or dead);
        return how many. They are closed concurrently, each QUIT bounded by a timeout, so
        one pass takes about one QUIT round trip however many expired; one pass at a time."""
        async with self._reaping:
            now = self._clock.monotonic()
            limit = self._cfg.idle_connection_timeout
            expired = [c for c in self._idle
                       if now - c.idle_since >= limit or not c.smtp.is_connected]
            for c in expired:
                self._unpool(c)
            await asyncio.gather(*(self._discard(c, polite=True) for c in expired))
            return len(expired)

    async def close(self) -> None:
        """QUIT and close every pooled connection; stop the reaper."""
        self._closed = True
        await cancel_and_wait(self._reaper)
        self._reaper = None
        conns = list(self._idle)
        self._pool.clear()
        self._idle.clear()
        await asyncio.gather(*(self._discard(c, polite=True) for c in conns))

    # ------------------------------------------------------------------ pool

    async def _take(self, destination: str, targets: Sequence[Target], src: str,
                    need_tls: bool = False, need_verified: bool = False) -> _Conn | None:
        """A pooled connection for one of `targets`, tried in their order: to a target of
        the most preferred MX level, any connection with its key; to a less preferred one,
        only one whose last transaction was for `destination` (made when the better ones
        failed: another destination's would skip ours). None: open a new one."""
        if not self._idle:
            return None
        best = min(t.preference for t in targets) if targets else 0
        for target in targets:
            key = _pool_key(target, src)
            if key not in self._pool:
                continue
            only = None if target.preference <= best else destination
            conn = await self._take_key(key, only, need_tls, need_verified)
            if conn is not None:
                return conn
        return None

    async def _take_key(self, key: _PoolKey, only: str | None, need_tls: bool,
                        need_verified: bool) -> _Conn | None:
        while idle := self._pool.get(key):
            # the most recently used that fits; plain (or unverified) ones stay pooled
            conn = next((c for c in reversed(idle)
                         if (only is None or c.destination == only)
                         and (c.tls or not need_tls)
                         and (c.verified or not need_verified)), None)
            if conn is None:
                return None
            self._unpool(conn)
            if (self._clock.monotonic() - conn.idle_since >= self._cfg.idle_connection_timeout
                    or not conn.smtp.is_connected):
                await self._discard(conn, polite=conn.smtp.is_connected)
                continue
            if conn.rset_needed:  # the last transaction was left half-way
                try:
                    await conn.smtp.rset(timeout=self._cfg.command_timeout)
                except Exception:
                    await self._discard(conn)
                    continue
                conn.rset_needed = False
            return conn
        return None

    def _put(self, conn: _Conn) -> list[_Conn]:
        """Pool `conn`; return the idle connections to close to keep the caps: at most
        max_connections_per_destination per key and max_idle_connections in all (the
        oldest go)."""
        idle = self._pool.setdefault(conn.key, [])
        conn.idle_since = self._clock.monotonic()
        idle.append(conn)
        self._idle[conn] = None
        evicted: list[_Conn] = []
        while len(idle) > self._cfg.max_connections_per_destination:
            evicted.append(idle[0])
            self._unpool(idle[0])
        while len(self._idle) > self._max_idle:
            oldest = next(iter(self._idle))
            evicted.append(oldest)
            self._unpool(oldest)
        for c in evicted:
            self._forget_site(c)
        if self._idle and (self._reaper is None or self._reaper.done()):
            self._reaper = asyncio.get_running_loop().create_task(self._reap_loop())
        return evicted

    def _unpool(self, conn: _Conn) -> None:
        idle = self._pool.get(conn.key)
        if idle is not None:
            with contextlib.suppress(ValueError):
                idle.remove(conn)
            if not idle:
                del self._pool[conn.key]
        self._idle.pop(conn, None)

    async def _reap_loop(self) -> None:
        period = max(self._cfg.idle_connection_timeout / 2, 0.05)
        while self._idle:
            await self._clock.sleep(period)
            with contextlib.suppress(Exception):
                await self.reap()

    def _forget_site(self, conn: _Conn) -> None:
        if conn.site:
            self._site_open[conn.site] -= 1
            conn.site = ""

    def _site_victims(self, site: str, limit: int) -> list[_Conn]:
        """Take out of the pool the idle connections of `site` (oldest first) that must close
        before one more of its connections may be open; they no longer count against it."""
        victims: list[_Conn] = []
        excess = self._site_open.get(site, 0) - limit + 1 if site and limit else 0
        if excess > 0:
            victims = [c for c in self._idle if c.site == site][:excess]
            for c in victims:
                self._unpool(c)
                self._forget_site(c)
        return victims

    async def _claim(self, conn: _Conn, site: str, limit: int) -> None:
        """Count the pooled `conn` (taken, not idle) against `site` instead of its own."""
        self._forget_site(conn)
        if not site:
            return
        victims = self._site_victims(site, limit)
        self._site_open[site] = self._site_open.get(site, 0) + 1
        conn.site = site
        if victims:
            await asyncio.gather(*(self._discard(c, polite=True) for c in victims))

    async def _open_site(self, site: str, limit: int, destination: str,
                         targets: Sequence[Target], src: str, ehlo: str | None,
                         policy: str | None,
                         sessions: _Sessions) -> tuple[_Conn | None, Outcome]:
        """_open_any, within `site`'s connection limit (the shaper keeps the transactions
        under way below it, so at the limit at least one of the site's is idle)."""
        victims = self._site_victims(site, limit)
        if site:
            # Counted before the first await, so concurrent openers see each other.
            self._site_open[site] = self._site_open.get(site, 0) + 1
        if victims:
            await asyncio.gather(*(self._discard(c, polite=True) for c in victims))
        try:
            conn, failed = await self._open_any(destination, targets, src, ehlo, policy,
                                                sessions)
        except BaseException:
            if site:
                self._site_open[site] -= 1
            raise
        if site:
            if conn is None:
                self._site_open[site] -= 1
            else:
                conn.site = site
        return conn, failed

    async def _discard(self, conn: _Conn, polite: bool = False) -> None:
        """Close `conn` (QUIT first if `polite`). A QUIT not answered in time, or none, and
        the socket is aborted: nothing lingers (a TLS close_notify waits up to 30 s)."""
        self._forget_site(conn)
        smtp = conn.smtp
        transport = smtp.transport
        clean = False
        try:
            if polite and smtp.is_connected:
                wait = min(self._cfg.command_timeout, _QUIT_TIMEOUT)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(smtp.quit(timeout=wait), wait + 1.0)
                    clean = True
        finally:
            if not clean:
                _abort(transport)
            smtp.close()

    def _drop(self, conn: _Conn) -> None:
        """Close `conn` at once, without QUIT (cancellation, an unexpected error)."""
        self._forget_site(conn)
        _abort(conn.smtp.transport)
        conn.smtp.close()

    # ------------------------------------------------------------------ connect

    async def _open_any(self, destination: str, targets: Sequence[Target],
                        src: str, ehlo: str | None = None, policy: str | None = None,
                        sessions: _Sessions | None = None) -> tuple[_Conn | None, Outcome]:
        """The first target (in order) that completes greeting, EHLO and TLS; at most
        `sessions.left` of those tried get as far as a greeting."""
        if sessions is None:
            sessions = _Sessions(self._cfg.mx_session_limit)
        last = from_failure("unreachable", destination, "no usable host")
        for target in targets:
            plaintext = False
            while sessions.left > 0:
                try:
                    return await self._open(target, src, plaintext, ehlo, policy,
                                            sessions), last
                except _TargetFailed as f:
                    last = f.outcome
                    if f.plaintext_retry and not plaintext:
                        plaintext = True
                        continue
                    break
            if sessions.left <= 0:
                break
        return None, last

    def _verifies(self, policy: str | None) -> bool:
        """Whether a connection under `policy` needs a verified certificate."""
        level = policy or self._cfg.tls
        return level == "verify" or (level == "require" and self._verify)

    async def _open(self, target: Target, src: str, plaintext: bool,
                    ehlo: str | None = None, policy: str | None = None,
                    sessions: _Sessions | None = None) -> _Conn:
        cfg = self._cfg
        level = policy or cfg.tls
        require = level in ("require", "verify")
        verify = self._verifies(level)
        name = _remote_name(target.host_name, target.address)
        smtp = aiosmtplib.SMTP(
            hostname=target.address, port=target.port, local_hostname=ehlo or self._hostname,
            source_address=(src, 0) if src else None, timeout=cfg.command_timeout,
            start_tls=False, tls_context=self._tls_context)
        stage = "connect"
        try:
            try:
                await smtp.connect(timeout=cfg.connect_timeout)
            except SMTPResponseException:  # a greeting, refusing: a session all the same
                if sessions is not None:
                    sessions.left -= 1
                raise
            if sessions is not None:
                sessions.left -= 1
            _PipeliningProtocol.adopt(smtp)
            stage = "ehlo"
            await self._hello(smtp)
            tls = False
            offered = smtp.supports_extension("starttls")
            if require and not offered:
                raise _TargetFailed(from_failure(
                    "tls_required", name, f"{name} does not offer STARTTLS", name))
            if offered and not plaintext:
                stage = "starttls"
                server_name = target.host_name.rstrip(".") or None
                await smtp.starttls(server_hostname=server_name,
                                    tls_context=self._verify_context if verify
                                    else self._tls_context,
                                    timeout=cfg.command_timeout)
                await self._hello(smtp)
                tls = True
            return _Conn(smtp, target.host_name, target.address, tls,
                         key=_pool_key(target, src), verified=tls and verify)
        except _TargetFailed:
            smtp.close()
            raise
        except asyncio.CancelledError:
            smtp.close()
            raise
        except Exception as e:
            smtp.close()
            if stage == "starttls":
                detail = (f"{e.code} {e.message}" if isinstance(e, SMTPResponseException)
                          else _short(e))
                if require:
                    raise _TargetFailed(from_failure(
                        "tls_required", name, f"STARTTLS with {name} failed: {detail}",
                        name)) from None
                raise _TargetFailed(from_failure("tls_failed", name, detail, name),
                                    plaintext_retry=True) from None
            if isinstance(e, SMTPResponseException):
                out = from_reply(e.code, e.message, name)
                if out.kind == "bounced":  # skip a 5xx greeting/EHLO; do not bounce on it
                    out = Outcome("deferred", 451, "4" + out.enhanced[1:],
                                  f"{name} refused to talk to me: {out.code} {out.text}", name)
                elif out.kind == "delivered":  # a 2xx where 220 was expected
                    out = from_reply(451, f"4.5.0 unexpected greeting {e.code} {e.message}",
                                     name)
                raise _TargetFailed(out) from None
            raise _TargetFailed(from_failure(_failure_kind(e), name, _short(e), name)) from None

    async def _hello(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.ehlo(timeout=self._cfg.command_timeout)
        except SMTPResponseException as e:
            if e.code // 100 == 5 and smtp.is_connected:  # EHLO unknown: fall back to HELO
                await smtp.helo(timeout=self._cfg.command_timeout)
            else:
                raise

    # ------------------------------------------------------------------ transaction

    async def _transact(self, conn: _Conn, sender: str, recipients: Sequence[str],
                        data: bytes) -> tuple[list[Outcome], bool, bool]:
        """Run MAIL/RCPT/DATA. Returns (outcomes, connection reusable, retry on a fresh
        connection: it failed before the server answered anything); sets conn.rset_needed."""
        smtp = conn.smtp
        # MAIL FROM, with the ESMTP parameters the server understands.
        utf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
        encoding = "utf-8" if utf8 and smtp.supports_extension("smtputf8") else "ascii"
        options: list[str] = []
        if smtp.supports_extension("size"):
            options.append(f"SIZE={len(data)}")
        if smtp.supports_extension("8bitmime") and not data.isascii():
            options.append("BODY=8BITMIME")
        if encoding == "utf-8":
            options.append("SMTPUTF8")
        conn.rset_needed = False
        proto = smtp.protocol
        if isinstance(proto, _PipeliningProtocol) and smtp.supports_extension("pipelining"):
            return await self._transact_pipelined(conn, proto, sender, recipients, data,
                                                  encoding, options)
        return await self._transact_serial(conn, sender, recipients, data, encoding, options)

    async def _transact_serial(self, conn: _Conn, sender: str, recipients: Sequence[str],
                               data: bytes, encoding: str,
                               options: list[str]) -> tuple[list[Outcome], bool, bool]:
        """One command, one round trip (servers without PIPELINING)."""
        cfg = self._cfg
        smtp = conn.smtp
        name = _remote_name(conn.host_name, conn.address)
        out: list[Outcome | None] = [None] * len(recipients)
        try:
            await smtp.mail(sender, options=options, encoding=encoding,
                            timeout=cfg.command_timeout)
        except (ValueError, SMTPResponseException) as e:
            return _fill(out, _failed(e, name)), smtp.is_connected, False
        except (SMTPException, OSError) as e:
            return _fill(out, _failed(e, name)), False, True

        accepted: list[int] = []
        for i, rcpt in enumerate(recipients):
            try:
                await smtp.rcpt(rcpt, encoding=encoding, timeout=cfg.command_timeout)
                accepted.append(i)
            except (ValueError, SMTPResponseException) as e:
                out[i] = _failed(e, name)
                if not smtp.is_connected:  # 421: the server is closing
                    return _fill(out, _failed(e, name)), False, False
            except (SMTPException, OSError) as e:
                return _fill(out, _failed(e, name)), False, False

        if not accepted:
            try:
                await smtp.rset(timeout=cfg.command_timeout)
            except Exception:
                return _fill(out, from_failure("local_error", name)), False, False
            return _fill(out, from_failure("local_error", name)), True, False

        try:
            reply = await smtp.data(data, timeout=cfg.data_timeout)
        except SMTPResponseException as e:
            # DATA itself or the message refused: aiosmtplib does not say which, so
            # RSET before the connection's next MAIL.
            conn.rset_needed = True
            return _fill(out, _failed(e, name), accepted), smtp.is_connected, False
        except (ValueError, SMTPException, OSError) as e:
            return _fill(out, _failed(e, name), accepted), False, False
        return _fill(out, from_reply(reply.code, reply.message, name), accepted), True, False

    async def _transact_pipelined(self, conn: _Conn, proto: _PipeliningProtocol, sender: str,
                                  recipients: Sequence[str], data: bytes, encoding: str,
                                  options: list[str]) -> tuple[list[Outcome], bool, bool]:
        """MAIL, RCPT… and DATA in one write, then the replies in order (RFC 2920 §3.1)."""
        cfg = self._cfg
        smtp = conn.smtp
        name = _remote_name(conn.host_name, conn.address)
        out: list[Outcome | None] = [None] * len(recipients)
        # Commands are built (and refused on CR/LF injection) exactly as aiosmtplib's
        # mail()/rcpt() do.
        try:
            group = [_command(b"MAIL", b"FROM:" + _quoted(sender).encode(encoding),
                              *(o.encode("ascii") for o in options))]
        except ValueError as e:
            return _fill(out, _failed(e, name)), smtp.is_connected, False
        sent: list[int] = []
        for i, rcpt in enumerate(recipients):
            try:
                group.append(_command(b"RCPT", b"TO:" + _quoted(rcpt).encode(encoding)))
            except ValueError as e:
                out[i] = _failed(e, name)
            else:
                sent.append(i)
        if not sent:
            return _fill(out, from_failure("local_error", name)), smtp.is_connected, False
        group.append(b"DATA\r\n")

        answered = False  # has the server replied to anything yet?
        proto.start_pipeline()
        try:
            proto.write(b"".join(group))
            mail = await proto.read_reply(cfg.command_timeout)
            answered = True
            mail_ok = mail.code == SMTPStatus.completed
            if not mail_ok:  # every recipient fails with MAIL's reply
                _fill(out, _refused(mail, name))
                if mail.code == SMTPStatus.domain_unavailable:
                    smtp.close()
                    return _fill(out, _refused(mail, name)), False, False
            accepted: list[int] = []
            for i in sent:
                reply = await proto.read_reply(cfg.command_timeout)
                if reply.code == SMTPStatus.domain_unavailable:  # 421: the server is closing
                    smtp.close()
                    return _fill(out, _refused(reply, name)), False, False
                if not mail_ok:
                    continue
                if reply.code in (SMTPStatus.completed, SMTPStatus.will_forward):
                    accepted.append(i)
                else:
                    out[i] = _refused(reply, name)
            go = await proto.read_reply(cfg.data_timeout)
            if go.code == SMTPStatus.domain_unavailable:
                smtp.close()
                return _fill(out, _refused(go, name)), False, False
            if go.code != SMTPStatus.start_input:
                # Expected when nothing was accepted (503/554); otherwise DATA refused.
                conn.rset_needed = mail_ok  # the server still holds MAIL (and RCPTs)
                keep = go.code // 100 in (4, 5) and smtp.is_connected
                return _fill(out, _refused(go, name), accepted), keep, False
            if not accepted:
                # A broken server said 354 with no recipient: end the empty message
                # at once; the body never goes out. Recipients keep their RCPT replies.
                proto.write(b".\r\n")
                end = await proto.read_reply(cfg.data_timeout)
                if end.code == SMTPStatus.domain_unavailable:
                    smtp.close()
                return _fill(out, from_failure("local_error", name)), smtp.is_connected, False
            proto.write(_wire_body(data))
            final = await proto.read_reply(cfg.data_timeout)
            if final.code == SMTPStatus.domain_unavailable:
                smtp.close()
            return _fill(out, from_reply(final.code, final.message, name), accepted), \
                smtp.is_connected, False
        except (SMTPException, OSError) as e:
            # Timed out, dropped or garbled: the dialogue is out of step, close it (as
            # aiosmtplib does). Nothing answered yet on a dead pooled connection: retry.
            smtp.close()
            return _fill(out, _failed(e, name)), False, \
                not answered and isinstance(e, ConnectionError)
        finally:
            if proto.stop_pipeline():  # more replies than commands: do not reuse
                smtp.close()
