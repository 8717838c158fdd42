"""One submission connection: `SubmissionSession`, relay's own SMTP command loop (an
asyncio Protocol; no aiosmtpd on the submission path).

The command loop runs in `data_received`: `CommandLines` (commandlines.py, PURE) cuts
the lines, each is judged (CRLF only, RFC 5321 §2.3.8; the command-line size limits;
limits.max_commands_per_session) and dispatched to its `smtp_*` method, which runs to
its reply synchronously; the replies of one read (a pipelined batch, RFC 2920) leave in
one write. Only the steps that must wait run as a task: DATA (fed to data.py's
`DataSection` as it arrives, which finds the end and judges it; then "250 only after commit":
it awaits `Submitter.submit`), AUTH (its 334 challenges, and scrypt in a thread unless
the credential is cached), STARTTLS (the loop's own TLS) and a RCPT counted in the
cluster's Redis; meanwhile what the client sends waits in that task's `_CommandReader`,
and what is left of it goes back to the command loop when the task ends.
The session gathers the facts (HELO given, authenticated, TLS active, trusted network,
counts), asks the PURE decisions of policy.py (HELO/EHLO, AUTH, MAIL, RCPT, DATA) and
writes the `Reply` they return; a 421 closes the connection. Around them it owns what
needs the connection: admission and the session time cap, one idle timer, the
brute-force defence (authpolicy), sending authorization (`sender_check`), the Received:
line and the header section rules of message.py. Every reply carries an enhanced status
code (replies.py). This module must not read the wall clock (Clock injected) or touch
storage.
"""

from __future__ import annotations

import asyncio
import binascii
import ipaddress
import logging
import re
import traceback
from base64 import b64decode, b64encode
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from types import MethodType
from typing import Any, NamedTuple, Protocol, cast

from relay.clock import Clock
from relay.config import Limits, Listener
from relay.queue.committer import StoreFull, StoreUnavailable
from relay.queue.ops import NewMessage
from relay.smtp import policy as P
from relay.smtp import replies as R
from relay.smtp.authpolicy import AuthPolicy
from relay.smtp.commandlines import CommandLines
from relay.smtp.data import DataSection
from relay.smtp.message import (
    complete_and_list_fields,
    header_addresses,
    header_refusal,
    random_uuid,
    received_header,
    scan_header_section,
)
from relay.tenants.account import AccountGate, Transaction
from relay.tenants.refusals import Refusal
from relay.users import UserStore

log = logging.getLogger(__name__)
# Every command line at INFO (AUTH's credential masked), as aiosmtpd logged them under
# this name; relay keeps it at WARNING unless it runs at debug (logfmt.set_level).
command_log = logging.getLogger("mail.log")

IDENT = "ESMTP relay"


class Submitter(Protocol):
    """Commits a message durably and returns its queue id (raises StoreFull/StoreUnavailable,
    or MessageRefused for a policy refusal such as an unknown configuration set).

    A submitter may call `on_durable(queue_id)` on the loop the moment the message is
    durable, before submit() returns; the session then sends its 250 at once instead of a
    loop turn later, when its task resumes. Calling it is optional."""

    async def submit(self, msg: NewMessage,
                     on_durable: Callable[[str], None] | None = None,
                     account: Transaction | None = None) -> str: ...


class MessageRefused(Exception):
    """A submitter's policy refusal after DATA: `reply` is sent instead of "queued as" (a
    250 of its own for a duplicate transfer, relay/smtp/submitter.py)."""

    def __init__(self, reply: R.Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Sending authorization: (user or None for a trusted client, address) -> refusal text or
# None. The address is "" for a message with no From: address.
SenderCheck = Callable[[str | None, str], str | None]


@dataclass
class ListenerContext:
    """What every session of one listener shares; built once by SubmissionServer."""

    listener: Listener
    limits: Limits
    hostname: str
    submitter: Submitter
    users: UserStore
    clock: Clock
    ssl_context: Any  # ssl.SSLContext | None
    auth_policy: AuthPolicy
    trusted: list[IPNetwork]
    admit: Callable[[str], R.Reply | None]
    release: Callable[[str], None]
    sessions: set[SubmissionSession] = field(default_factory=set)
    shutting_down: bool = False
    # `relay node drain` (relay/drain.py): new connections and new transactions get
    # 421 4.3.2 while it answers True; deliveries go on.
    draining: Callable[[], bool] = lambda: False
    max_auth_attempts: int = 10
    sender_check: SenderCheck | None = None
    on_reply: Callable[[str], None] | None = None  # every reply sent (metrics)
    # AUTH brute-force defence at work (metrics): "failed", "lockout" (this failure locked
    # the client address), "locked" (refused while locked), "too_many" (per-connection cap).
    on_auth: Callable[[str], None] | None = None
    # A message refused for policy after DATA (a Reject event): (message, reason).
    on_reject: Callable[[NewMessage, str], None] | None = None
    # The account model (relay/tenants/account.py): a paused tenant at MAIL, the sandbox
    # and the quotas at RCPT; None: no limits (tests of the bare session).
    account: AccountGate | None = None
    # SES-style login with an API access key (relay/sesapi/keys.py): (login, password) ->
    # the credential the key belongs to when login is an access key id and password its
    # SES SMTP password, else None. Cheap (a regex, or a few HMACs): run on the loop.
    key_login: Callable[[str, bytes], str | None] | None = None

    # Client address -> trusted, asked at MAIL, RCPT and DATA of every message; parsing
    # the address each time was ~2 % of the accept path. `trusted` is fixed for the
    # listener's life (a change needs a restart), so entries never go stale.
    _trusted_memo: dict[str, bool] = field(default_factory=dict)

    def is_trusted(self, ip: str) -> bool:
        known = self._trusted_memo.get(ip)
        if known is None:
            known = self._check_trusted(ip)
            if len(self._trusted_memo) >= 4096:
                self._trusted_memo.clear()
            self._trusted_memo[ip] = known
        return known

    def _check_trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.trusted)


class CommandRefused(Exception):
    """A command line refused before it is parsed (raised by `_CommandReader` while a
    task reads AUTH continuation lines): the task answers `reply` (and closes after a
    421)."""

    def __init__(self, reply: R.Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class TlsSetupFailed(Exception):
    """The STARTTLS handshake failed: the connection closes without a reply."""


class _CommandReader(asyncio.StreamReader):
    """What the client sends while a step waits (AUTH, DATA, STARTTLS), strict about the
    AUTH continuation lines it reads as the command loop is about command lines.

    A line read with `readuntil(b"\\n")` (readline) ending in a bare LF (or in CR CR LF)
    raises CommandRefused(BARE_NEWLINE_COMMAND) instead, never used (RFC 5321 §2.3.8).
    DATA is fed to a `DataSection` as it arrives, not read through this reader.
    limits.max_commands_per_session (resource exhaustion): these lines count as commands
    (the count goes on from the command loop's); past the limit
    CommandRefused(TOO_MANY_COMMANDS) closes the session. The rest of an over-long line
    (read after LimitOverrunError) is counted but not judged for its ending.
    """

    command_count = 0
    command_limit = 0
    _draining = False  # the last line overran the limit: its rest is read next

    async def readuntil(self, separator: Any = b"\n") -> bytes:
        if separator != b"\n":
            return await super().readuntil(separator)
        try:
            line = await super().readuntil(separator)
        except asyncio.LimitOverrunError:
            self._draining = True
            raise
        if self.command_limit:
            self.command_count += 1
            if self.command_count > self.command_limit:
                raise CommandRefused(R.TOO_MANY_COMMANDS)
        if self._draining:
            self._draining = False
        elif not line.endswith(b"\r\n") or line.endswith(b"\r\r\n"):
            raise CommandRefused(R.BARE_NEWLINE_COMMAND)
        return line


# Per class: command -> function of every smtp_* method, mechanism -> function of every
# auth_* one ("auth_CRAM__MD5" -> "CRAM-MD5"), worked out once, not per connection.
_DISPATCH: dict[type, tuple[dict[str, Any], dict[str, Any]]] = {}


def _dispatch_tables(cls: type) -> tuple[dict[str, Any], dict[str, Any]]:
    tables = _DISPATCH.get(cls)
    if tables is None:
        names = sorted(n for n in dir(cls) if n.startswith(("smtp_", "auth_")))
        commands = {n[5:]: getattr(cls, n) for n in names if n.startswith("smtp_")}
        mechanisms = {n[5:].replace("__", "-"): getattr(cls, n)
                      for n in names if n.startswith("auth_")}
        tables = _DISPATCH[cls] = (commands, mechanisms)
    return tables


_SENDER_OK = str(R.SENDER_OK)
_RECIPIENT_OK = str(R.RECIPIENT_OK)
_OK = str(R.OK)
_BYE = str(R.BYE)
_GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"  # RFC 2034 exempts 354
# The replies of the command loop and of the commands that decide nothing (NOOP, RSET,
# QUIT, HELP, VRFY, EXPN), worded as aiosmtpd worded them, with enhanced codes.
_BAD_SYNTAX = R.enhance("500 Error: bad syntax")
_COMMAND_TOO_LONG = R.enhance("500 Command line too long")
_TOO_MANY_UNKNOWN = "502 5.5.1 Too many unrecognized commands, goodbye."
_EXPN = R.enhance("502 EXPN not implemented")
_VRFY = R.enhance("252 Cannot VRFY user, but will accept message and attempt delivery")
_AUTH_ABORTED = "501 5.7.0 Auth aborted"
_BAD_BASE64 = "501 5.5.2 Can't decode base64"
_BAD_PLAIN = "501 5.5.2 Can't split auth value"
_LOGIN_USER = b"334 " + b64encode(b"User Name\x00")  # RFC 4954 challenges (LOGIN)
_LOGIN_PASSWORD = b"334 " + b64encode(b"Password\x00")
# HELP's syntax lines, for the commands whose syntax is fixed.
_HELP = {"HELP": "HELP [command]", "NOOP": "NOOP [ignored]", "QUIT": "QUIT",
         "RSET": "RSET", "VRFY": "VRFY <address>"}
_HELP_LIST = " ".join(sorted(_HELP))
# Replies of one batch kept before they are written: a client that pipelines thousands
# of commands and reads nothing is stopped by the transport's high-water mark.
_BATCH_REPLIES = 64
_UNKNOWN_LIMIT = 5  # unknown commands in one connection; the next one closes it
# RFC 5321 §4.5.3.1.4: 512 octets a command line; after EHLO, MAIL's SIZE= and SMTPUTF8
# parameters add 26 + 10 (RFC 1870, 6531) and AUTH's initial response takes a line.
_COMMAND_SIZE = 512
_MAIL_SIZE = _COMMAND_SIZE + 26 + 10
# AUTH <mechanism> <initial response>: the response masked in the command log.
_AUTH_LINE = re.compile(rb"(?P<authm>\s*AUTH\s+\S+[^\S\r\n]+)(\S+)(?P<crlf>(?:\r\n)?)",
                        re.IGNORECASE)


def _masked(line: bytes) -> bytes:
    m = _AUTH_LINE.match(line)
    return m.group("authm") + b"********" + m.group("crlf") if m else line


class LoginPassword(NamedTuple):
    login: bytes
    password: bytes


class SessionState:
    """What the client said about itself: reset by STARTTLS (RFC 3207 §4.2)."""

    __slots__ = ("authenticated", "extended_smtp", "host_name", "peer", "ssl")

    def __init__(self, peer: Any = None) -> None:
        self.peer = peer
        self.host_name: str | None = None
        self.extended_smtp = False
        self.authenticated = False
        self.ssl: dict[str, Any] | None = None


class Envelope:
    """The transaction under way (MAIL to the end of DATA)."""

    __slots__ = ("mail_from", "mail_options", "rcpt_options", "rcpt_tos", "smtp_utf8")

    def __init__(self) -> None:
        self.mail_from: str | None = None
        self.mail_options: list[str] = []
        self.rcpt_tos: list[str] = []
        self.rcpt_options: list[str] = []
        self.smtp_utf8 = False


class _DataStarter(Protocol):
    envelope: Any

    async def push(self, status: str) -> None: ...


async def start_data(smtp: _DataStarter, arg: str | None) -> bool:
    """DATA's own checks (a recipient given, no argument), then 354: True when the message
    follows. For the sessions that read DATA themselves instead of a line loop (the
    feedback listener's); HELO and sender checks come before."""
    assert smtp.envelope is not None
    refusal = P.decide_data_start(arg, recipients=len(smtp.envelope.rcpt_tos))
    if refusal is not None:
        await smtp.push(str(refusal))
        return False
    await smtp.push(_GO_AHEAD)
    return True


_EHLO_REPLIES: dict[tuple[str, int, bool, bool], str] = {}


def _ehlo_reply(hostname: str, size: int, starttls: bool, auth: bool) -> str:
    """The whole multi-line EHLO reply (one write, not one per line: with TLS each write
    is a record and a send), made once per listener and TLS state."""
    key = (hostname, size, starttls, auth)
    reply = _EHLO_REPLIES.get(key)
    if reply is None:
        lines = [hostname, "PIPELINING", f"SIZE {size}", "8BITMIME", "SMTPUTF8",
                 "ENHANCEDSTATUSCODES"]
        if starttls:
            lines.append("STARTTLS")
        if auth:
            lines.append("AUTH PLAIN LOGIN")
        reply = _EHLO_REPLIES[key] = "\r\n".join(
            [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"])
    return reply


Step = Coroutine[Any, Any, None]


class SubmissionSession(asyncio.Protocol):
    preadmitted = False  # set by ImplicitTlsGate: counted against the caps already
    # Set by the PROXY protocol gate (relay/smtp/proxygate.py) before connection_made:
    # the client (address, port) its header gave, which stands for the socket's peer.
    proxied_peer: tuple[str, int] | None = None

    def __init__(self, ctx: ListenerContext, loop: asyncio.AbstractEventLoop) -> None:
        self.ctx = ctx
        self.loop = loop
        limits = ctx.limits
        self.hostname = ctx.hostname
        self.line_length_limit = limits.line_length_limit + 1  # + a transparency dot
        self.data_size_limit = int(limits.max_message_size)
        starttls = ctx.listener.tls == "starttls" and ctx.ssl_context is not None
        self.tls_context: Any = ctx.ssl_context if starttls else None
        self._timeout_duration = float(limits.idle_timeout)
        self._commands, self._mechanisms = _dispatch_tables(type(self))
        self.transport: Any = None  # asyncio or uvloop transport (duck-typed)
        self._plain_transport: Any = None  # under TLS after STARTTLS
        self._tls_transport: Any = None  # after STARTTLS
        self.session = SessionState()
        # The account state of the transaction under way (MAIL to the end of DATA).
        self._account: Transaction | None = None
        self.envelope = Envelope()
        self._lines = CommandLines(self.line_length_limit)
        self._out: list[bytes] = []  # replies of this batch, written together
        self._task: asyncio.Task[None] | None = None  # the waiting step under way
        # The step's wait ends by itself when the connection is lost, so the step is not
        # cancelled: it waits for the client (its DATA, an AUTH continuation line, the
        # drain of its replies: `_end_step` answers "nothing more") or for a scrypt check.
        # Any other wait (a commit, Redis, the AUTH failure delay) is cancelled.
        self._client_wait = False
        # What the client sends while a step waits, for a step that reads lines (AUTH's
        # continuations): made by the `_reader` property when first asked for.
        self._stream: _CommandReader | None = None
        self._section: DataSection | None = None  # the DATA section being received
        self._data_read: asyncio.Future[tuple[list[bytes] | None, R.Reply | None]] | None \
            = None  # resolved with the section's result at its end
        self._unreported = 0  # DATA bytes since the last restart of the idle timer
        self._closed = False  # close() asked: no more commands are read
        self._eof = False
        self._write_paused = False  # the transport's buffer is over its high mark
        self._read_paused = False  # we paused reading until the replies drain
        self._drained: asyncio.Future[None] | None = None
        self._close_after_reply = False  # the reply being written is a 421
        self.command_count = 0
        self._unknown_left = _UNKNOWN_LIMIT
        self.client_ip = ""
        self.admitted = False
        self._registered = False
        self._implicit_tls = False
        self._in_data = False
        self.message_count = 0
        self.recipient_count = 0  # accepted RCPTs across the session's transactions
        self.auth_attempts = 0
        self.auth_user = ""
        # The access key id of an AUTH with a key and its SES SMTP password ("": none);
        # its messages carry it as ses:caller-identity, as the SES API's do.
        self.auth_key_id = ""
        self._last_timer_reset = 0.0
        self._idle_deadline = 0.0  # loop.time() past which an idle client is closed
        self._idle_timer: asyncio.TimerHandle | None = None
        self._session_timer: asyncio.TimerHandle | None = None
        self.done: asyncio.Future[None] = loop.create_future()

    @property
    def _smtp_methods(self) -> dict[str, Any]:
        """The command table, bound (the loop calls the class's functions directly)."""
        return {name: MethodType(func, self) for name, func in self._commands.items()}

    @property
    def _auth_methods(self) -> dict[str, Any]:
        return {name: MethodType(func, self) for name, func in self._mechanisms.items()}

    # --- connection lifecycle ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = self.proxied_peer or transport.get_extra_info("peername")
        self.session.peer = peer
        self.client_ip = str(peer[0]) if peer else ""
        # An implicit-TLS connection was counted, and admitted, before its handshake
        # (relay/smtp/admission.py); it owns its slot from here on.
        self._implicit_tls = self.preadmitted or \
            transport.get_extra_info("sslcontext") is not None
        if self.ctx.draining():
            refusal: R.Reply | None = R.DRAINING
            if self.preadmitted:  # the slot the TLS gate took is given back now
                self.ctx.release(self.client_ip)
        else:
            refusal = None if self.preadmitted else self.ctx.admit(self.client_ip)
        self.admitted = refusal is None
        self._registered = self.admitted
        self.ctx.sessions.add(self)
        self._reset_timeout()
        # Absolute cap (slowloris): the idle timer restarts on every command or
        # DATA line, so a client trickling valid lines would otherwise never leave.
        self._session_timer = self.loop.call_later(
            float(self.ctx.limits.session_timeout), self._session_timeout_cb)
        if refusal is not None:
            self._send(str(refusal))
            self._close()
            return
        self._send(f"220 {self.hostname} {IDENT}")
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self._in_data:
            # RFC 5321 §4.5.3.2.6: the DATA timeout runs between what the client sends,
            # so a line end arriving in the data restarts the idle timer (at most once
            # a second), as does a line's worth of bytes. Bytes trickled without a line
            # end do not restart it (slowloris).
            if b"\n" in data or self._unreported + len(data) > self.line_length_limit:
                self._unreported = 0
                self._reset_timeout_sometimes()
            else:
                self._unreported += len(data)
            if self._section is not None:
                self._feed_data(data)
                return
        if self._closed:
            return
        if self._task is not None:  # a step is waiting: the bytes wait for it
            if self._stream is not None:
                self._stream.feed_data(data)
                return
            self._lines.feed(data)
            if len(self._lines) > 2 * self.line_length_limit and not self._read_paused:
                self._read_paused = True  # (as a StreamReader would)
                self.transport.pause_reading()
            return
        self._lines.feed(data)
        self._run_commands()

    def eof_received(self) -> bool | None:
        """The client will send no more: what it sent completely is answered, then the
        connection closes."""
        self._eof = True
        if self._section is not None:  # the message was cut short
            self._end_data((None, None))
            self._close()
            return False
        if self._task is None:
            return False  # every complete line was answered in data_received
        if self._stream is not None:
            self._stream.feed_eof()
        # (Keeping a TLS transport half-open is not possible: it closes, and the step
        # with it.)
        return not self.tls_active

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)
        if self._task is None:
            self._resume_reading()
            if self.transport is not None and not self._closed:
                self._run_commands()

    def _resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self._closed:
            self._read_paused = False
            self.transport.resume_reading()

    def connection_lost(self, error: Exception | None) -> None:
        self._closed = True
        account = self._account
        if account is not None:
            account.release()
            self._account = None
        for timer in (self._session_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._session_timer = self._idle_timer = None
        if self._registered:
            self._registered = False
            self.ctx.release(self.client_ip)
        self.ctx.sessions.discard(self)
        if self._plain_transport is not None:
            self._plain_transport.close()
            self._plain_transport = None
        self._end_step()
        self.transport = None
        if not self.done.done():
            self.done.set_result(None)

    def _end_step(self) -> None:
        """The connection is gone: end the waiting step without an exception where the
        step waits for the client, else cancel it.

        Why not always cancel: a cancelled task's CancelledError keeps its traceback,
        whose frames hold the session, the future the step awaited (which keeps the same
        exception) and the TLS objects; those reference cycles outlive the connection
        until the cyclic collector runs (~40 objects a connection, and the collector's
        passes are the event loop's longest pauses). A step woken with "the client sent
        no more" ends like any dropped dialogue and everything is freed at once by
        reference counting."""
        if self._section is not None or self._data_read is not None:
            self._end_data((None, None))  # `_read_data`: the connection ended first
        if self._stream is not None:
            self._stream.feed_eof()  # `challenge_auth`: the line never ends
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)
        task = self._task
        if task is not None and not self._client_wait:
            task.cancel()  # `_run_step` takes the CancelledError apart (see there)

    def _create_envelope(self) -> Envelope:
        """Every new transaction (RSET, HELO/EHLO, STARTTLS, the end of DATA, accepted or
        not) gives back what the last one reserved and did not commit."""
        account = self._account
        if account is not None:
            account.release()
            self._account = None
        return Envelope()

    def _close(self) -> None:
        """Write what is pending and close; no further command is read."""
        self._closed = True
        self._flush()
        if self.transport is not None:
            self.transport.close()

    # --- the command loop ------------------------------------------------------------------

    def _run_commands(self) -> None:
        """Answer every complete command line buffered, until a step must wait."""
        lines = self._lines
        logged = command_log.isEnabledFor(logging.INFO)
        while not self._closed and self._task is None:
            if self._write_paused:  # the client does not read its replies: stop reading
                if not self._read_paused and self.transport is not None:
                    self._read_paused = True
                    self.transport.pause_reading()
                break
            line = lines.next_line()
            if line is None:
                break
            if logged:
                command_log.info("%r >> %r", self.session.peer, _masked(line))
            try:
                self._command(line, lines.overlong)
            except Exception as error:
                self._send(self._exception_reply(error))
                if self._close_after_reply:
                    self._close()
            if len(self._out) >= _BATCH_REPLIES:  # a long batch: let the transport say
                self._flush()  # when it is full (pause_writing), checked above
        self._flush()
        if self._eof and self._task is None and not self._closed:
            self._close()

    def _command(self, line: bytes, overlong: bool) -> None:
        limit = self.ctx.limits.max_commands_per_session
        if limit:
            self.command_count += 1
            if self.command_count > limit:
                self._refuse_line(R.TOO_MANY_COMMANDS)
                return
        if overlong:
            self._send(_COMMAND_TOO_LONG)
            return
        if line[-2:-1] != b"\r" or line[-3:-2] == b"\r":  # RFC 5321 §2.3.8: CRLF only
            self._refuse_line(R.BARE_NEWLINE_COMMAND)
            return
        line = line[:-2]
        if not line:
            self._send(_BAD_SYNTAX)
            return
        verb, _, rest = line.partition(b" ")
        try:
            command = verb.upper().decode("ascii")
        except UnicodeDecodeError:
            self._send(_BAD_SYNTAX)
            return
        # The argument decoded so that non-UTF-8 bytes survive (surrogateescape).
        arg = str(rest.strip(), "utf-8", "surrogateescape") if rest else None
        if self.session.extended_smtp:
            size = _MAIL_SIZE if command == "MAIL" else \
                self.ctx.limits.line_length_limit if command == "AUTH" else _COMMAND_SIZE
        else:
            size = _COMMAND_SIZE
        if len(line) > size:
            self._send(_COMMAND_TOO_LONG)
            return
        method = self._commands.get(command)
        if method is None:
            log.debug("%s: unrecognised command %s", self.client_ip, command)
            self._unknown_left -= 1
            if self._unknown_left < 1:
                log.warning("%s: too many unrecognised commands, closing", self.client_ip)
                self._send(_TOO_MANY_UNKNOWN)
                self._close()
                return
            self._send(R.enhance(f'500 Error: command "{command}" not recognized'))
            return
        self._reset_timeout()  # a valid command
        step = method(self, arg)
        if step is not None:
            self._start(step)

    def _refuse_line(self, reply: R.Reply) -> None:
        if reply is R.TOO_MANY_COMMANDS:
            log.warning("%s: more than %d commands in one connection, closing",
                        self.client_ip, self.ctx.limits.max_commands_per_session)
        self._reply(reply)

    def _start(self, step: Step) -> None:
        """Run `step` as a task; the command loop resumes when it ends. What the client
        sends meanwhile waits (in `_lines`, or in the `_reader` a step asked for)."""
        self._flush()
        self._task = self.loop.create_task(self._run_step(step))

    @property
    def _reader(self) -> _CommandReader:
        """A stream reader of what the client sends from here on (buffered bytes first),
        for a step that reads lines; the command loop takes back what it leaves."""
        reader = self._stream
        if reader is None:
            reader = self._stream = _CommandReader(limit=self.line_length_limit,
                                                   loop=self.loop)
            reader.set_transport(self.transport)  # it pauses reading when it holds much
            reader.command_limit = self.ctx.limits.max_commands_per_session
            reader.command_count = self.command_count
            rest = self._lines.take()
            if rest:
                reader.feed_data(rest)
            if self._eof:
                reader.feed_eof()
        return reader

    async def _run_step(self, step: Step) -> None:
        try:
            await step
        except TlsSetupFailed as failed:
            _untangle(failed)
            self._tls_failed()
        except ConnectionResetError:
            self._close()
        except asyncio.CancelledError as cancelled:
            # Cancelled by `_end_step` (the connection is gone while the step waited on
            # scrypt, a commit, Redis...) or at shutdown: the step ends here. Its frames
            # are cleared and the exception loses its traceback, which would otherwise
            # tie the frames, the session and the awaited future (which keeps this same
            # exception) into cycles only the cyclic collector frees.
            _untangle(cancelled)
            self._task = self._stream = None
            self._close()  # (a no-op when the connection is gone, the usual case)
            return
        except Exception as error:
            await self.push(self._exception_reply(error))
        self._resume()

    def _tls_failed(self) -> None:
        """The STARTTLS handshake failed or was cut by its time limit: the loop closes the
        connection under its TLS protocol. The stdlib loop's never tells the session
        (its connection_lost goes to a TLS protocol that was not yet connected), which
        would keep the session, its timers and its admission slot for good: the session
        ends itself here. (uvloop tells it; then this finds it ended already.)"""
        self._close()
        transport = self.transport
        if transport is not None and transport.is_closing():
            self._task = None  # this step is ending: not to be cancelled
            self.connection_lost(None)

    def _resume(self) -> None:
        """After a step: the command loop takes back what its reader still holds."""
        reader, self._stream, self._task = self._stream, None, None
        if reader is not None:
            self.command_count = reader.command_count
            self._lines.feed(bytes(reader._buffer))  # type: ignore[attr-defined]
            if reader._draining:
                self._lines.draining = True
            if reader._paused and self.transport is not None:  # type: ignore[attr-defined]
                self.transport.resume_reading()
        if not self._write_paused:
            self._resume_reading()
        if self.transport is not None and not self._closed:
            self._run_commands()

    def _exception_reply(self, error: Exception) -> str:
        if isinstance(error, CommandRefused):
            if error.reply is R.TOO_MANY_COMMANDS:
                log.warning("%s: more than %d commands in one connection, closing",
                            self.client_ip, self.ctx.limits.max_commands_per_session)
            if error.reply.code == 421:
                self._close_after_reply = True
            return str(error.reply)
        log.exception("%s: session error", self.client_ip, exc_info=error)
        return str(R.INTERNAL_ERROR)

    # --- replies ---------------------------------------------------------------------------

    def _send(self, status: str) -> None:
        """Queue one reply (with its enhanced code) for this batch's write."""
        if self.ctx.on_reply is not None:
            self.ctx.on_reply(status)
        self._out.append(status.encode("utf-8", "replace") + b"\r\n")

    def _flush(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _reply(self, reply: R.Reply) -> None:
        """One of our replies; after a 421 the connection closes (RFC 5321 §3.8)."""
        self._send(str(reply))
        if reply.code == 421:
            self._close()

    async def push(self, status: str | bytes) -> None:
        """Write a reply now, from a step (a 334 challenge is bytes, counted as no reply),
        and wait while the client does not read."""
        if isinstance(status, str):
            self._send(R.enhance(status))
        else:
            self._out.append(status + b"\r\n")
        self._flush()
        if self._close_after_reply:
            self._close()
        await self._drain()

    async def _drain(self) -> None:
        if self._write_paused and self.transport is not None:
            drained = self._drained = self.loop.create_future()
            self._client_wait = True
            try:
                await drained
            finally:
                self._client_wait = False
                if self._drained is drained:
                    self._drained = None

    def _write_now(self, reply: R.Reply) -> None:
        """Write a reply outside the command loop (timeout, shutdown)."""
        self._flush()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(f"{reply}\r\n".encode())

    # --- timers ----------------------------------------------------------------------------

    def _reset_timeout_sometimes(self) -> None:
        now = self.loop.time()
        if now - self._last_timer_reset >= 1.0:
            self._last_timer_reset = now
            self._reset_timeout()

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Move the idle deadline (on every valid command).

        One timer is kept and re-armed only when it fires before the deadline, which has
        moved on meanwhile: a command costs a float store, not a TimerHandle and a heap
        entry. The connection still closes at the same moment: the last reset + the
        timeout."""
        loop = self.loop
        deadline = loop.time() + (duration or self._timeout_duration)
        self._idle_deadline = deadline
        timer = self._idle_timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()  # an earlier deadline than the armed one (never in practice)
        self._idle_timer = loop.call_at(deadline, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self.transport is None:
            return
        if self.loop.time() < self._idle_deadline:  # a command came meanwhile
            self._idle_timer = self.loop.call_at(self._idle_deadline, self._idle_check)
            return
        self._timeout_cb()

    def _timeout_cb(self) -> None:
        # RFC 5321 §4.5.3.2: tell the client why before closing.
        self._write_now(R.TIMEOUT)
        log.info("%s: idle timeout, closing", self.client_ip)
        self._close()

    def _session_timeout_cb(self) -> None:
        self._session_timer = None
        log.info("%s: session time limit reached, closing", self.client_ip)
        self._write_now(R.SESSION_TIMEOUT)
        self._close()

    def close_idle(self) -> bool:
        """On shutdown: close now if between transactions; return True if closed."""
        if self._in_data or self.envelope.mail_from:
            return False
        self.force_close()
        return True

    def force_close(self) -> None:
        self._write_now(R.SHUTTING_DOWN)
        self._close()

    # --- the session's facts ---------------------------------------------------------------

    @property
    def tls_active(self) -> bool:
        return self._implicit_tls or self._tls_transport is not None

    def may_send(self) -> bool:
        """Authenticated, or connecting from a trusted network; nobody else (no open relay)."""
        return self.session.authenticated or self.ctx.is_trusted(self.client_ip)

    def _not_allowed_reply(self) -> R.Reply:
        """Why a client that may not send is refused: on a STARTTLS listener that requires
        AUTH, before STARTTLS, AUTH is not even offered yet, so TLS is the next step."""
        if self.ctx.listener.auth == "required" and self.tls_context is not None \
                and not self.tls_active:
            return R.STARTTLS_FIRST
        return R.AUTH_REQUIRED

    # --- commands: each answers synchronously, or returns the step that must wait ----------

    def smtp_EHLO(self, hostname: str | None) -> None:
        refusal = P.decide_helo(hostname, extended=True)
        if refusal is not None:
            self._reply(refusal)
            return
        self.envelope = self._create_envelope()
        self.session.extended_smtp = True
        self.session.host_name = hostname
        tls = self.tls_active
        self._send(_ehlo_reply(
            self.hostname, self.data_size_limit, self.tls_context is not None and not tls,
            self.ctx.listener.auth == "required" and tls))

    def smtp_HELO(self, hostname: str | None) -> None:
        refusal = P.decide_helo(hostname, extended=False)
        if refusal is not None:
            self._reply(refusal)
            return
        self.envelope = self._create_envelope()
        self.session.extended_smtp = False
        self.session.host_name = hostname
        self._send(f"250 {self.hostname}")

    def smtp_NOOP(self, arg: str | None) -> None:
        self._send(_OK)

    def smtp_RSET(self, arg: str | None) -> None:
        if arg:
            self._send(R.enhance("501 Syntax: RSET"))
            return
        self.envelope = self._create_envelope()
        self._send(_OK)

    def smtp_QUIT(self, arg: str | None) -> None:
        if arg:
            self._send(R.enhance("501 Syntax: QUIT"))
            return
        self._send(_BYE)
        self._close()

    def smtp_HELP(self, arg: str | None) -> None:
        if arg:
            syntax = _HELP.get(arg.upper())
            if syntax is not None:
                self._send(R.enhance(f"250 Syntax: {syntax}"))
                return
            self._send(R.enhance(f"501 Supported commands: {_HELP_LIST}"))
            return
        self._send(R.enhance(f"250 Supported commands: {_HELP_LIST}"))

    def smtp_VRFY(self, arg: str | None) -> None:
        if not arg:
            self._send(R.enhance("501 Syntax: VRFY <address>"))
            return
        try:
            if arg.lstrip().startswith("<"):
                get_angle_addr(arg)
            else:
                get_addr_spec(arg)
        except HeaderParseError:
            self._send(R.enhance(f"502 Could not VRFY {arg}"))
            return
        self._send(_VRFY)

    def smtp_EXPN(self, arg: str | None) -> None:
        self._send(_EXPN)

    def smtp_STARTTLS(self, arg: str | None) -> Step | None:
        # One STARTTLS per session (RFC 3207 §4).
        if self.tls_active:
            self._send(str(R.TLS_ALREADY_ACTIVE))
            return None
        if arg:
            self._reply(R.STARTTLS_SYNTAX)
            return None
        if not self.tls_context:
            self._reply(R.TLS_NOT_AVAILABLE)
            return None
        self._reply(R.READY_TLS)
        # Plaintext pipelined after STARTTLS is never read as a command (CVE-2024-34083):
        # what is buffered is dropped, and nothing more is read until TLS takes over.
        self._lines.take()
        self._read_paused = False  # (start_tls resumes reading itself)
        self.transport.pause_reading()
        return self._start_tls()

    async def _start_tls(self) -> None:
        """STARTTLS through the event loop's own TLS (uvloop: native)."""
        transport, context = self.transport, self.tls_context
        assert transport is not None and context is not None
        self._lines.take()  # plaintext that came before reading was paused: dropped
        try:
            tls_transport = await self.loop.start_tls(
                cast(asyncio.WriteTransport, transport),  # uvloop's are duck-typed
                self, context, server_side=True,
                ssl_handshake_timeout=float(self.ctx.limits.tls_handshake_timeout))
        except (OSError, ValueError, TimeoutError) as e:
            # (Not chained: the loop's TLS waiter keeps `e`, whose traceback holds this
            # frame and the session; see `_untangle`.)
            _untangle(e)
            raise TlsSetupFailed() from None
        if tls_transport is None:  # the connection went away during the handshake
            self._tls_failed()
            return
        self._plain_transport = transport
        self._tls_transport = tls_transport
        self.transport = tls_transport
        # (No clear here: the client's first command over TLS may already be buffered.)
        # RFC 3207 §4.2: forget everything from before TLS.
        self.envelope = self._create_envelope()
        self.session = SessionState(self.session.peer)
        self.session.ssl = {"cipher": tls_transport.get_extra_info("cipher"),
                            "peercert": tls_transport.get_extra_info("peercert")}
        self._reset_timeout()
        self.auth_user = ""

    def smtp_AUTH(self, arg: str | None) -> Step | None:
        session = self.session
        decided = P.decide_auth(
            arg, helo=bool(session.host_name), extended=session.extended_smtp,
            offered=self.ctx.listener.auth == "required", tls_active=self.tls_active,
            authenticated=session.authenticated)
        if isinstance(decided, R.Reply):
            self._reply(decided)
            return None
        self.auth_attempts += 1
        policy, clock = self.ctx.auth_policy, self.ctx.clock
        # Only the client address is ever locked (authpolicy): failures for this user
        # name from other addresses never refuse its owner here.
        refusal = P.decide_auth_attempt(
            self.auth_attempts, max_attempts=self.ctx.max_auth_attempts,
            locked=policy.is_locked(self.client_ip, clock.monotonic()))
        if refusal is R.TOO_MANY_AUTH_ATTEMPTS:
            self._auth_event("too_many")
            log.warning("%s: too many AUTH attempts in one connection, closing", self.client_ip)
        elif refusal is R.AUTH_LOCKED:
            self._auth_event("locked")
        if refusal is not None:
            self._reply(refusal)
            return None
        mechanism, response = decided[0], decided[1] if len(decided) > 1 else None
        step: Step | None = self._mechanisms[mechanism](self, response)
        return step

    def auth_PLAIN(self, response: str | None) -> Step | None:
        """RFC 4616. The usual client sends the credential with the command: answered
        here when it is cached (or an access key); only scrypt needs a step."""
        if response is None:
            return self._plain_dialogue()
        creds = self._plain(self._decode(response))
        if creds is None or self._verify_now(creds):
            return None
        return self._verify(creds)

    def auth_LOGIN(self, response: str | None) -> Step | None:
        return self._login_dialogue(response)

    def _decode(self, response: str) -> bytes | None:
        try:
            return b64decode(response.encode(), validate=True)
        except (binascii.Error, ValueError):
            self._send(_BAD_BASE64)
            return None

    def _plain(self, blob: bytes | None) -> LoginPassword | None:
        """RFC 4616: [authzid] NUL authcid NUL passwd (authzid ignored)."""
        if blob is None:
            return None
        try:
            _, login, password = blob.split(b"\x00")
        except ValueError:
            self._send(_BAD_PLAIN)
            return None
        return LoginPassword(login, password)

    async def _plain_dialogue(self) -> None:
        creds = self._plain(await self.challenge_auth(b"334 "))
        if creds is not None and not self._verify_now(creds):
            await self._verify(creds)

    async def _login_dialogue(self, response: str | None) -> None:
        login = self._decode(response) if response is not None else \
            await self.challenge_auth(_LOGIN_USER)
        if login is None:
            return
        password = await self.challenge_auth(_LOGIN_PASSWORD)
        if password is not None:
            creds = LoginPassword(login, password)
            if not self._verify_now(creds):
                await self._verify(creds)

    async def challenge_auth(self, challenge: bytes) -> bytes | None:
        """Send a 334 challenge and read the client's base64 answer: its bytes, or None
        (answered: '*' aborts, bad base64, an over-long line closes)."""
        await self.push(challenge)
        self._client_wait = True
        try:
            # (A bare CR/LF line raises CommandRefused: see _CommandReader.)
            line = await self._reader.readline()
        except ValueError:  # StreamReader.readline: an over-long continuation line
            await self.push(str(R.LINE_TOO_LONG))
            self._close()
            return None
        finally:
            self._client_wait = False
        if not line.endswith(b"\n"):  # the connection ended
            self._close()
            return None
        blob = line.strip()
        if blob == b"*":  # RFC 4954 §4
            log.info("%s: AUTH aborted with '*'", self.client_ip)
            self._send(_AUTH_ABORTED)
            return None
        try:
            return b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            self._send(_BAD_BASE64)
            return None

    def _verify_now(self, creds: LoginPassword) -> bool:
        """A repeat credential is answered from the verified cache on the loop; an access
        key id with its SES SMTP password by a few HMACs on the loop. True: authenticated
        (and answered)."""
        user = creds.login.decode("utf-8", "replace")
        if self.ctx.users.verify_cached(user, creds.password):
            self._authenticated(user, user)
            return True
        if self.ctx.key_login is not None:
            owner = self.ctx.key_login(user, creds.password)
            if owner is not None and self.ctx.users.get(owner) is not None:
                self._authenticated(user, owner)
                return True
        return False

    async def _verify(self, creds: LoginPassword) -> None:
        """scrypt (~85 ms) in a thread. A wrong password for a key pays the scrypt of an
        unknown user like any failure, so a failure's time says nothing about which names
        exist."""
        user = creds.login.decode("utf-8", "replace")
        # Not cancelled by a lost connection (it ends within a scrypt): a client that
        # hangs up during the check still has its failure counted (AUTH brute force).
        self._client_wait = True
        try:
            ok = await self.loop.run_in_executor(
                None, self.ctx.users.verify, user, creds.password)
        finally:
            self._client_wait = False
        if ok:
            self._authenticated(user, user)
            self._flush()
            return
        policy, clock = self.ctx.auth_policy, self.ctx.clock
        delay = policy.record_failure(self.client_ip, user, clock.monotonic())
        # One line per failure, and one per lockout; never the password (AUTH brute force).
        if policy.is_locked(self.client_ip, clock.monotonic()):
            self._auth_event("lockout")
            log.warning("%s: AUTH failed for %r; client address locked out for %ds",
                        self.client_ip, user, int(policy.lockout))
        else:
            self._auth_event("failed")
            log.info("%s: AUTH failed for %r", self.client_ip, user)
        if self.transport is None:  # gone: nobody to delay or answer
            return
        await clock.sleep(delay)
        await self.push(str(R.AUTH_INVALID))

    def _authenticated(self, user: str, sender: str) -> None:
        self.ctx.auth_policy.record_success(self.client_ip, user, self.ctx.clock.monotonic())
        self.session.authenticated = True
        self.auth_user = sender
        self.auth_key_id = user if sender != user else ""
        if sender != user:
            log.info("%s: authenticated as %r with access key %s", self.client_ip,
                     sender, user)
        else:
            log.info("%s: authenticated as %r", self.client_ip, user)
        self._send(str(R.AUTH_OK))

    def _auth_event(self, kind: str) -> None:
        if self.ctx.on_auth is not None:
            self.ctx.on_auth(kind)

    def smtp_MAIL(self, arg: str | None) -> None:
        session, envelope = self.session, self.envelope
        authenticated = session.authenticated
        if self.ctx.draining():  # a session opened before the drain: no new transaction
            log.info("%s: MAIL refused: this node is draining", self.client_ip)
            self._reply(R.DRAINING)
            return
        may_send = authenticated or self.ctx.is_trusted(self.client_ip)
        decided = P.decide_mail(
            arg, helo=bool(session.host_name), extended=session.extended_smtp,
            may_send=may_send, refusal=R.AUTH_REQUIRED if may_send else self._not_allowed_reply(),
            authenticated=authenticated, in_transaction=bool(envelope.mail_from),
            shutting_down=self.ctx.shutting_down, message_count=self.message_count,
            max_messages=self.ctx.limits.max_messages_per_connection,
            size_limit=self.data_size_limit or 0)
        if isinstance(decided, R.Reply):
            self._reply(decided)
            return
        address = decided.address
        if self.ctx.sender_check is not None and address:
            reason = self.ctx.sender_check(self.auth_user or None, address)
            if reason is not None:
                log.info("%s: MAIL FROM <%s> refused: %s", self.client_ip, address, reason)
                self._reply(R.SENDER_NOT_AUTHORIZED.with_text(reason))
                return
        if self.ctx.account is not None:
            txn = self.ctx.account.begin(self.auth_user or None)
            if isinstance(txn, Refusal):
                log.info("%s: MAIL FROM <%s> refused: %s", self.client_ip, address, txn.text)
                self._reply(R.Reply(*txn))
                return
            self._account = txn
        envelope.mail_from = address
        envelope.mail_options.extend(decided.options)
        envelope.smtp_utf8 = decided.smtputf8
        self._send(_SENDER_OK)

    def smtp_RCPT(self, arg: str | None) -> Step | None:
        session, envelope = self.session, self.envelope
        may_send = session.authenticated or self.ctx.is_trusted(self.client_ip)
        limits = self.ctx.limits
        decided = P.decide_rcpt(
            arg, helo=bool(session.host_name), extended=session.extended_smtp,
            may_send=may_send, refusal=R.AUTH_REQUIRED if may_send else self._not_allowed_reply(),
            in_transaction=bool(envelope.mail_from), recipients=len(envelope.rcpt_tos),
            max_recipients=limits.max_recipients, session_recipients=self.recipient_count,
            max_session_recipients=limits.max_recipients_per_session)
        if isinstance(decided, R.Reply):
            if decided.enhanced == "5.1.3":  # an address that can never be delivered to
                log.info("%s: RCPT %s refused: %s", self.client_ip, arg, decided.text)
            self._reply(decided)
            return None
        account, txn = self.ctx.account, self._account
        if txn is not None and account is not None:
            if account.counts_in_cluster(txn):
                # The quota is counted in the cluster's Redis: a step.
                return self._rcpt_shared(account, txn, arg, decided.address,
                                         decided.options)
            limit = account.recipient(txn, decided.address)
            if limit is not None:  # nothing is queued for this recipient
                log.info("%s: RCPT %s refused: %s", self.client_ip, arg, limit.text)
                self._reply(R.Reply(*limit))
                return None
        self._accept_rcpt(decided.address, decided.options)
        return None

    async def _rcpt_shared(self, account: AccountGate, txn: Transaction, arg: str | None,
                           address: str, options: list[str]) -> None:
        limit = await account.recipient_shared(txn, address)
        if limit is not None:  # nothing is queued for this recipient
            log.info("%s: RCPT %s refused: %s", self.client_ip, arg, limit.text)
            self._reply(R.Reply(*limit))
            return
        self._accept_rcpt(address, options)

    def _accept_rcpt(self, address: str, options: list[str]) -> None:
        self.recipient_count += 1
        self.envelope.rcpt_tos.append(address)
        self.envelope.rcpt_options.extend(options)
        self._send(_RECIPIENT_OK)

    def smtp_DATA(self, arg: str | None) -> Step | None:
        may_send = self.may_send()
        refusal = P.decide_data(
            arg, helo=bool(self.session.host_name), may_send=may_send,
            refusal=R.AUTH_REQUIRED if may_send else self._not_allowed_reply(),
            recipients=len(self.envelope.rcpt_tos))
        if refusal is not None:
            self._reply(refusal)
            return None
        self._send(_GO_AHEAD)
        return self._data()

    async def _data(self) -> None:
        """The message, then its reply (sent by `_reply_when_durable` the moment its
        commit has synced, when the submitter says so)."""
        self._in_data = True
        try:
            body, fault = await self._read_data()
        finally:
            self._in_data = False
        self.message_count += 1
        if fault is not None or body is None:
            self.envelope = self._create_envelope()
            if self.transport is not None and not self._closed:
                await self.push(str(fault or R.INTERNAL_ERROR))
            return
        reply, sent = await self._submit(body)
        self.envelope = self._create_envelope()
        if sent:
            await self._drain()
        else:
            await self.push(reply)
        if self.ctx.shutting_down:
            self.close_idle()

    async def _read_data(self) -> tuple[list[bytes] | None, R.Reply | None]:
        """Receive up to the lone '.', keeping at most max_message_size bytes in memory.

        Only CRLF '.' CRLF ends the data ('.' CRLF as the first line too): the data ends
        at the first b"\\r\\n.\\r\\n" in b"\\r\\n" + stream, and what follows is
        read as the next commands (PIPELINING). A bare CR or LF anywhere marks the
        message rejected, but reading continues to the real end, so a smuggled
        "\\n.\\r\\nMAIL FROM..." is data of this one rejected message, never a second
        transaction (inbound SMTP smuggling). The bytes go to a `DataSection` as they
        come (data_received: `_feed_data`), with the replies of a line-by-line reader:
        see `DataScanner`. (None, None): the connection ended first.
        """
        if self.transport is None or self._closed:
            return None, None
        self._section = DataSection(int(self.data_size_limit or 0), self.line_length_limit)
        self._unreported = 0
        done: asyncio.Future[tuple[list[bytes] | None, R.Reply | None]] = \
            self.loop.create_future()
        self._data_read = done
        rest = self._lines.take()
        if rest:
            self._feed_data(rest)
        if self._eof and self._section is not None:
            self._end_data((None, None))
            self._close()
        self._resume_reading()
        self._client_wait = True
        try:
            return await done
        finally:
            self._client_wait = False

    def _feed_data(self, data: bytes) -> None:
        section = self._section
        assert section is not None
        end = section.feed_stream(data)
        if end < 0:
            return
        if end < len(data):
            self._lines.feed(data[end:])  # the next commands, read after the reply
        self._end_data(section.result())

    def _end_data(self, result: tuple[list[bytes] | None, R.Reply | None]) -> None:
        self._section = None
        done, self._data_read = self._data_read, None
        if done is not None and not done.done():
            done.set_result(result)

    async def _submit(self, parts: list[bytes]) -> tuple[str, bool]:
        """Queue the message: the reply after DATA, and whether it was already sent (by
        `_reply_when_durable`, the moment the commit synced)."""
        envelope = self.envelope
        recipients = list(envelope.rcpt_tos)
        trace = received_header(
            helo=self.session.host_name or "unknown", client_ip=self.client_ip,
            hostname=self.hostname, tls=self.tls_active,
            authenticated=bool(self.session.authenticated), recipients=recipients,
            now=self.ctx.clock.now())
        parts.insert(0, trace)
        body = b"".join(parts)  # the only whole copy of the message
        parts.clear()
        # The client's header section (after our trace line), read once: the hop limit,
        # RFC 5322 §3.6's one-of-each fields, the one From that will be delivered, the
        # common headers and tags, and every field for events' mail.headers.
        max_hops = self.ctx.limits.max_hop_count
        section = scan_header_section(body, len(trace), max_hops,
                                      int(self.ctx.limits.max_header_size))
        fault = header_refusal(section, max_hops)
        headers = section.headers
        fields = None
        if fault is None:
            body, added, fields = complete_and_list_fields(
                body, section, hostname=self.ctx.hostname, now=self.ctx.clock.now(),
                unique=random_uuid())
            headers.update(added)
        refusal = self._check_from(section.from_value) if fault is None else None
        if refusal is not None:
            fault = R.MESSAGE_REJECTED.with_text(f"Message rejected: {refusal}")
        msg = NewMessage(
            sender=envelope.mail_from or "", recipients=recipients, body=body,
            client_ip=self.client_ip, helo=self.session.host_name or "",
            auth_user=self.auth_user, headers=headers,
            tags={**section.tags, "ses:caller-identity": [self.auth_key_id]}
            if self.auth_key_id else section.tags,
            header_fields=fields)
        if fault is not None:
            reason = refusal or fault.text
            log.info("%s: message refused: %s", self.client_ip, reason)
            if self.ctx.on_reject is not None:
                self.ctx.on_reject(msg, reason)
            return str(fault), False
        sent: list[str] = []
        try:
            queue_id = await self.ctx.submitter.submit(
                msg, on_durable=lambda qid: self._reply_when_durable(qid, sent),
                account=self._account)
        except MessageRefused as e:  # a 250 too: a duplicate transfer, not queued again
            log.info("%s: message %s: %s", self.client_ip,
                     "refused" if e.reply.code >= 400 else "not queued", e.reply)
            return str(e.reply), False
        except StoreFull:
            log.warning("%s: store full, answering 452", self.client_ip)
            return str(R.STORE_FULL), False
        except StoreUnavailable:
            log.exception("%s: store unavailable, answering 451", self.client_ip)
            return str(R.STORE_UNAVAILABLE), False
        except Exception:
            log.exception("%s: submit failed, answering 451", self.client_ip)
            return str(R.STORE_UNAVAILABLE), False
        log.info("%s: queued %s from=<%s> rcpts=%d size=%d", self.client_ip, queue_id,
                 msg.sender, len(recipients), len(msg.body))
        return (sent[0] if sent else _queued_reply(queue_id)), bool(sent)

    def _reply_when_durable(self, queue_id: str, sent: list[str]) -> None:
        """The 250 for a message whose commit has just synced, written from the store's
        callback. Under load the session's task resumes a whole loop turn (~10 ms at 50
        sessions) after this; the client need not wait for it. Nothing else can be
        written meanwhile: the step is parked in submit(), and the command loop resumes
        only after it."""
        if self.transport is None or self.transport.is_closing():
            return
        reply = _queued_reply(queue_id)
        self._send(reply)
        self._flush()
        sent.append(reply)


    def _check_from(self, value: str | None) -> str | None:
        """Every address of the message's one From: must be an identity this client may
        send as; the check is asked about "" when there is none. A message without From:
        is refused where senders are checked (as SES: "Missing required header 'From'")
        and passed on otherwise (as Postfix does for SMTP clients; RFC 6409 §8 lets a
        submission server add Date and Message-ID, not a From naming someone)."""
        check = self.ctx.sender_check
        if check is None:
            return None
        addresses = header_addresses(value or "")
        if not addresses:
            return check(self.auth_user or None, "")
        for address in addresses:
            reason = check(self.auth_user or None, address)
            if reason is not None:
                return reason
        return None


def _untangle(error: BaseException) -> None:
    """Clear the finished frames of `error`'s traceback (their locals: the session, the
    future they awaited) and drop the traceback, so that nothing it held waits for the
    cyclic collector. The frame still running (the caller's) cannot be cleared and is
    skipped."""
    traceback.clear_frames(error.__traceback__)
    error.__traceback__ = None
    error.__context__ = None


def _queued_reply(queue_id: str) -> str:
    return str(R.QUEUED.with_text(R.QUEUED.text.format(queue_id=queue_id)))
