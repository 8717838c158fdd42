"""aiosmtpd glue for one submission connection: `SubmissionSession` (an aiosmtpd SMTP subclass).

Gathers the facts of the session (HELO given, authenticated, TLS active, trusted network,
counts), asks the PURE decisions of policy.py (HELO/EHLO, AUTH, MAIL, RCPT, DATA; MAIL
and RCPT arguments are parsed there, not by aiosmtpd) and writes the `Reply` they
return; a 421 closes the connection. Around them it owns what needs the connection:
admission and the session time cap, STARTTLS over the loop's own TLS, the credential
check (users.py, scrypt in a thread) and the brute-force defence (authpolicy), sending
authorization (`sender_check`), strict command lines (`_CommandReader`: a bare CR/LF
line or one past the command limit raises `CommandRefused`), reading DATA in chunks
(`read_data_section`; data.py finds the end and judges it), the Received: line and the
header section rules of message.py, and "250 only after commit" (it awaits
`Submitter.submit`). aiosmtpd's own replies (its command loop, NOOP, RSET, QUIT, HELP,
VRFY, EXPN) get enhanced codes in `push()` (replies.enhance). This module must not read
the wall clock (Clock injected) or touch storage.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MethodType
from typing import Any, AnyStr, Protocol, cast

import aiosmtpd.smtp
from aiosmtpd.smtp import (
    MISSING,
    SMTP,
    AuthResult,
    LoginPassword,
    TLSSetupException,
    _AuthMechAttr,
)

from relay.clock import Clock
from relay.config import Limits, Listener
from relay.queue.committer import StoreFull, StoreUnavailable
from relay.queue.ops import NewMessage
from relay.smtp import policy as P
from relay.smtp import replies as R
from relay.smtp.authpolicy import AuthPolicy
from relay.smtp.data import EOD, DataSection
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

IDENT = "ESMTP relay"

_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
_sanitized_log = aiosmtpd.smtp.sanitized_log


def _sanitized_log_when_enabled(func: Callable[..., None], msg: Any, *args: Any,
                                **kwargs: Any) -> None:
    """aiosmtpd's `sanitized_log`, skipped when the line would not be logged.

    aiosmtpd's command loop passes every command line, twice, through `sanitized_log`
    (a regex to mask AUTH data) for its "mail.log" debug and info lines before the logger
    looks at its level; relay keeps that logger at WARNING unless it runs at debug
    (logfmt.set_level), so that work was done for nothing on every command. When the
    level is enabled the line is sanitised and logged exactly as before."""
    logger = getattr(func, "__self__", None)
    level = _LOG_LEVELS.get(getattr(func, "__name__", ""))
    if level is not None and isinstance(logger, logging.Logger) \
            and not logger.isEnabledFor(level):
        return
    _sanitized_log(func, msg, *args, **kwargs)


# The command loop looks the name up in its module at every call.
aiosmtpd.smtp.sanitized_log = _sanitized_log_when_enabled




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
    """A command line refused before it is parsed (raised by `_CommandReader`): aiosmtpd's
    command loop hands it to `SubmissionSession.handle_exception`, which answers `reply`
    (and closes after a 421)."""

    def __init__(self, reply: R.Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class _CommandReader(asyncio.StreamReader):
    """aiosmtpd's reader, made strict about command lines (RFC 5321 §2.3.8).

    aiosmtpd reads commands (and AUTH continuations) with `readuntil(b"\\n")`, so a line
    ending in a bare LF (or in CR CR LF) would be run as a command: such a line raises
    CommandRefused(BARE_NEWLINE_COMMAND) instead, never run. DATA is read in chunks by
    `read_data_section` and checked by `DataScanner`. A CR inside a command line splits
    nothing; MAIL/RCPT/EHLO/HELO refuse it as a control character.
    limits.max_commands_per_session (resource exhaustion): command and AUTH lines are
    counted here; past the limit CommandRefused(TOO_MANY_COMMANDS) closes the session.
    The rest of an over-long line (read after LimitOverrunError, then answered "command
    line too long" by aiosmtpd) is counted but not judged for its ending.
    """

    command_count = 0
    command_limit = 0
    _draining = False  # the last line overran the limit: aiosmtpd reads its rest

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


_METHOD_NAMES: dict[type, list[str]] = {}  # SubmissionSession.__dir__, per class
# Per class: (command, function) of every smtp_* method, (mechanism, function) of every
# auth_* one: aiosmtpd's dispatch tables, unbound.
_DISPATCH: dict[type, tuple[list[tuple[str, Any]], list[tuple[str, Any]]]] = {}


def _method_names(cls: type) -> list[str]:
    names = _METHOD_NAMES.get(cls)
    if names is None:
        names = _METHOD_NAMES[cls] = sorted(
            n for n in dir(cls) if n.startswith(("smtp_", "auth_")))
    return names


def _dispatch_tables(cls: type) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """As aiosmtpd's __init__ names them: "smtp_EHLO" -> "EHLO"; "auth_CRAM__MD5" ->
    "CRAM-MD5" unless the method carries its own `__auth_mechanism_name__`."""
    tables = _DISPATCH.get(cls)
    if tables is None:
        names = _method_names(cls)
        commands = [(n.replace("smtp_", ""), getattr(cls, n))
                    for n in names if n.startswith("smtp_")]
        mechanisms = [(getattr(getattr(cls, n), "__auth_mechanism_name__",
                               n.replace("auth_", "").replace("__", "-")), getattr(cls, n))
                      for n in names if n.startswith("auth_")]
        tables = _DISPATCH[cls] = (commands, mechanisms)
    return tables
_SENDER_OK = str(R.SENDER_OK)
_RECIPIENT_OK = str(R.RECIPIENT_OK)
_GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"  # RFC 2034 exempts 354


async def start_data(smtp: SMTP, arg: str | None) -> bool:
    """DATA's own checks (a recipient given, no argument), then 354: True when the message
    follows. For the sessions that read DATA themselves instead of aiosmtpd's line loop
    (this one and the feedback listener's); HELO and sender checks come before."""
    assert smtp.envelope is not None
    refusal = P.decide_data_start(arg, recipients=len(smtp.envelope.rcpt_tos))
    if refusal is not None:
        await smtp.push(str(refusal))
        return False
    await smtp.push(_GO_AHEAD)
    return True


class SubmissionSession(SMTP):
    preadmitted = False  # set by ImplicitTlsGate: counted against the caps already
    # Set by the PROXY protocol gate (relay/smtp/proxygate.py) before connection_made:
    # the client (address, port) its header gave, which stands for the socket's peer.
    proxied_peer: tuple[str, int] | None = None

    def __init__(self, ctx: ListenerContext, loop: asyncio.AbstractEventLoop) -> None:
        self.ctx = ctx
        # The account state of the transaction under way (MAIL to the end of DATA).
        self._account: Transaction | None = None
        limits = ctx.limits
        # aiosmtpd sizes its StreamReader from this class attribute in __init__.
        self.line_length_limit = limits.line_length_limit + 1  # + a transparency dot
        starttls = ctx.listener.tls == "starttls" and ctx.ssl_context is not None
        self._dispatch_bound = False  # __dir__ lists nothing to aiosmtpd's __init__
        super().__init__(
            _NoHooks(),
            data_size_limit=int(limits.max_message_size),
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=ctx.hostname,
            ident=IDENT,
            tls_context=ctx.ssl_context if starttls else None,
            timeout=float(limits.idle_timeout),
            auth_required=False,  # enforced in smtp_MAIL (trusted networks may skip AUTH)
            auth_require_tls=True,
            loop=loop,
        )
        self._bind_dispatch_tables()
        # Per-instance limits (aiosmtpd's are a class-level dict that grows on every EHLO).
        self.command_size_limits: defaultdict[str, int] = defaultdict(
            lambda: SMTP.command_size_limit,
            {"MAIL": SMTP.command_size_limit + 26 + 10, "AUTH": limits.line_length_limit})
        self.client_ip = ""
        self.admitted = False
        self._registered = False
        self._implicit_tls = False
        self._in_data = False
        self._close_after_reply = False  # the reply being written is a 421
        self.message_count = 0
        self.recipient_count = 0  # accepted RCPTs across the session's transactions
        self.auth_attempts = 0
        self.auth_user = ""
        # The access key id of an AUTH with a key and its SES SMTP password ("": none);
        # its messages carry it as ses:caller-identity, as the SES API's do.
        self.auth_key_id = ""
        self._last_timer_reset = 0.0
        self._idle_deadline = 0.0  # loop.time() past which an idle client is closed
        self._idle_armed = False  # the timer in _timeout_handle is pending
        self._session_timer: asyncio.TimerHandle | None = None
        self.done: asyncio.Future[None] = loop.create_future()

    def __dir__(self) -> list[str]:
        """The command and AUTH methods only, and none while aiosmtpd's __init__ runs.

        aiosmtpd's __init__ builds its dispatch tables (command -> bound method, AUTH
        mechanism -> method) from dir() and inspect.getmembers() on every connection:
        ~240 µs on the full list of ~400 names, still ~45 µs on these. The tables are
        the same for every session of a class, so they are worked out once per class
        (`_dispatch_tables`) and only bound per connection. Taking the names from the
        class keeps instance attributes out (`auth_user` is no AUTH mechanism)."""
        if not self.__dict__.get("_dispatch_bound", True):
            return []
        return list(_method_names(type(self)))

    def _bind_dispatch_tables(self) -> None:
        """aiosmtpd's `_smtp_methods` and `_auth_methods`, as its __init__ would make them
        from the class's smtp_* and auth_* methods (the handler, _NoHooks, has none)."""
        commands, mechanisms = _dispatch_tables(type(self))
        self._smtp_methods = {name: MethodType(func, self) for name, func in commands}
        self._auth_methods = {name: _AuthMechAttr(MethodType(func, self), True)
                              for name, func in mechanisms}
        self._dispatch_bound = True

    def _cb_client_connected(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        reader.__class__ = _CommandReader  # same object: the protocol keeps feeding it
        assert isinstance(reader, _CommandReader)
        reader.command_limit = self.ctx.limits.max_commands_per_session
        super()._cb_client_connected(reader, writer)

    # --- connection lifecycle ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            peer = self.proxied_peer or transport.get_extra_info("peername")
            if self.proxied_peer is not None and self.session is not None:
                self.session.peer = self.proxied_peer  # type: ignore[assignment]  # aiosmtpd types it str; it is the (host, port) of peername
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
            self._refusal = refusal
            self._registered = self.admitted
            self.ctx.sessions.add(self)
            # Absolute cap (slowloris): the idle timer restarts on every command or
            # DATA line, so a client trickling valid lines would otherwise never leave.
            self._session_timer = self.loop.call_later(
                float(self.ctx.limits.session_timeout), self._session_timeout_cb)
        else:
            # STARTTLS completed: aiosmtpd made a fresh Session (AUTH state reset, RFC 3207
            # §4.2) and cleared the plaintext read buffer (CVE-2024-34083).
            self.auth_user = ""

    def _create_envelope(self) -> Any:
        """Every new transaction (RSET, HELO/EHLO, STARTTLS, the end of DATA, accepted or
        not) gives back what the last one reserved and did not commit."""
        account = self._account
        if account is not None:
            account.release()
            self._account = None
        return super()._create_envelope()

    def connection_lost(self, error: Exception | None) -> None:
        account = self._account
        if account is not None:
            account.release()
            self._account = None
        if self._session_timer is not None:
            self._session_timer.cancel()
            self._session_timer = None
        if self._registered:
            self._registered = False
            self.ctx.release(self.client_ip)
        self.ctx.sessions.discard(self)
        if not self.done.done():
            self.done.set_result(None)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if not self.admitted:
            await self.push(str(self._refusal or R.TOO_MANY_CONNECTIONS))
            self._close()
            return
        await super()._handle_client()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

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
        if self._in_data or (self.envelope is not None and self.envelope.mail_from):
            return False
        self.force_close()
        return True

    def force_close(self) -> None:
        self._write_now(R.SHUTTING_DOWN)
        self._close()

    def _write_now(self, reply: R.Reply) -> None:
        """Write a reply outside the command loop (timeout, shutdown)."""
        transport = self.transport
        write = getattr(transport, "write", None)  # uvloop's transports are duck-typed
        if transport is not None and callable(write) and not transport.is_closing():
            write(f"{reply}\r\n".encode())

    @property
    def tls_active(self) -> bool:
        return self._implicit_tls or self._tls_protocol is not None

    def may_send(self) -> bool:
        """Authenticated, or connecting from a trusted network; nobody else (no open relay)."""
        authenticated = self.session is not None and bool(self.session.authenticated)
        return authenticated or self.ctx.is_trusted(self.client_ip)

    def _not_allowed_reply(self) -> R.Reply:
        """Why a client that may not send is refused: on a STARTTLS listener that requires
        AUTH, before STARTTLS, AUTH is not even offered yet, so TLS is the next step."""
        if self.ctx.listener.auth == "required" and self.tls_context is not None \
                and not self.tls_active:
            return R.STARTTLS_FIRST
        return R.AUTH_REQUIRED

    # --- replies ---------------------------------------------------------------------------

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            # aiosmtpd's own replies (its command loop, NOOP, RSET, QUIT, HELP, VRFY,
            # EXPN, AUTH's base64 errors) get enhanced status codes; ours have them.
            status = R.enhance(status)
            if self.ctx.on_reply is not None:
                self.ctx.on_reply(status)
        await super().push(status)
        if self._close_after_reply:
            self._close()

    async def _reply(self, reply: R.Reply) -> None:
        """Write one of our replies; after a 421 the connection closes (RFC 5321 §3.8)."""
        if reply.code == 421:
            self._close_after_reply = True
        await self.push(str(reply))

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, CommandRefused):
            if error.reply is R.TOO_MANY_COMMANDS:
                log.warning("%s: more than %d commands in one connection, closing",
                            self.client_ip, self.ctx.limits.max_commands_per_session)
            if error.reply.code == 421:
                self._close_after_reply = True
            return str(error.reply)
        log.exception("%s: session error", self.client_ip, exc_info=error)
        return str(R.INTERNAL_ERROR)

    # --- commands --------------------------------------------------------------------------

    def _ehlo_keywords(self) -> list[str]:
        keywords = ["PIPELINING", f"SIZE {int(self.ctx.limits.max_message_size)}", "8BITMIME",
                    "SMTPUTF8", "ENHANCEDSTATUSCODES"]
        if self.tls_context is not None and not self.tls_active:
            keywords.append("STARTTLS")
        if self.ctx.listener.auth == "required" and self.tls_active:
            keywords.append("AUTH PLAIN LOGIN")
        return keywords

    async def smtp_EHLO(self, hostname: str | None) -> None:
        refusal = P.decide_helo(hostname, extended=True)
        if refusal is not None:
            await self._reply(refusal)
            return
        assert self.session is not None
        self.envelope = self._create_envelope()
        self.session.extended_smtp = True
        self.session.host_name = hostname
        lines = [self.hostname, *self._ehlo_keywords()]
        # One write for the whole reply, not one per line: with TLS each write is a
        # record and a send, and EHLO comes twice per STARTTLS session.
        await self.push("\r\n".join([f"250-{line}" for line in lines[:-1]]
                                     + [f"250 {lines[-1]}"]))

    async def smtp_HELO(self, hostname: str | None) -> None:
        refusal = P.decide_helo(hostname, extended=False)
        if refusal is not None:
            await self._reply(refusal)
            return
        assert self.session is not None
        self.envelope = self._create_envelope()
        self.session.extended_smtp = False
        self.session.host_name = hostname
        await self.push(f"250 {self.hostname}")

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        # aiosmtpd would answer 220 again and layer TLS inside TLS (RFC 3207 §4: one
        # STARTTLS per session).
        if self.tls_active:
            await self.push(str(R.TLS_ALREADY_ACTIVE))
            return
        if arg:
            await self._reply(R.STARTTLS_SYNTAX)
            return
        if not self.tls_context:
            await self._reply(R.TLS_NOT_AVAILABLE)
            return
        await self._start_tls()

    async def _start_tls(self) -> None:
        """STARTTLS through the event loop's own TLS (uvloop: native) rather than
        aiosmtpd's pure-Python asyncio.sslproto layer (15% of the accept profile), with
        the same effects as aiosmtpd's STARTTLS path in connection_made()."""
        await self._reply(R.READY_TLS)
        transport, context = self.transport, self.tls_context
        assert transport is not None and context is not None and self.session is not None
        # Plaintext pipelined after STARTTLS is never read as a command (CVE-2024-34083).
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        try:
            tls_transport = await self.loop.start_tls(
                cast(asyncio.WriteTransport, transport),  # uvloop's are duck-typed
                self, context, server_side=True,
                ssl_handshake_timeout=float(self.ctx.limits.tls_handshake_timeout))
        except (OSError, ValueError, TimeoutError) as e:
            raise TLSSetupException() from e
        if tls_transport is None:  # the connection went away during the handshake
            self._close()
            return
        self._original_transport = transport
        self._tls_protocol = tls_transport  # type: ignore[assignment]  # tested for None only
        self._reader._transport = tls_transport  # type: ignore[attr-defined]
        self._writer._transport = tls_transport  # type: ignore[attr-defined]
        self.transport = tls_transport
        # (No clear here: the client's first command over TLS may already be buffered.)
        # RFC 3207 §4.2: forget everything from before TLS (aiosmtpd's connection_made).
        self.envelope = self._create_envelope()
        peer = self.session.peer
        self.session = self._create_session()
        self.session.peer = peer
        self.session.ssl = {"cipher": tls_transport.get_extra_info("cipher"),
                            "peercert": tls_transport.get_extra_info("peercert")}
        self._tls_handshake_okay = True
        self._reset_timeout()
        self.auth_user = ""

    async def smtp_AUTH(self, arg: str | None) -> None:
        session = self.session
        assert session is not None
        decided = P.decide_auth(
            arg, helo=bool(session.host_name), extended=session.extended_smtp,
            offered=self.ctx.listener.auth == "required", tls_active=self.tls_active,
            authenticated=bool(session.authenticated))
        if isinstance(decided, R.Reply):
            await self._reply(decided)
            return
        mechanism = decided[0]
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
            await self._reply(refusal)
            return
        method = SMTP.auth_PLAIN if mechanism == "PLAIN" else SMTP.auth_LOGIN
        result: AuthResult = await method(self, self, decided)
        if not result.success:
            return  # aiosmtpd already answered (bad base64, '*' abort, ...)
        creds = result.auth_data
        assert isinstance(creds, LoginPassword)
        user = creds.login.decode("utf-8", "replace")
        # A repeat credential is answered from the verified cache on the loop; an access
        # key id with its SES SMTP password by a few HMACs on the loop; scrypt (~85 ms)
        # runs in a thread. A wrong password for a key pays the scrypt of an unknown user
        # like any failure, so a failure's time says nothing about which names exist.
        sender = user
        ok = self.ctx.users.verify_cached(user, creds.password)
        if not ok and self.ctx.key_login is not None:
            owner = self.ctx.key_login(user, creds.password)
            if owner is not None and self.ctx.users.get(owner) is not None:
                ok, sender = True, owner
        if not ok:
            ok = await asyncio.get_running_loop().run_in_executor(
                None, self.ctx.users.verify, user, creds.password)
        if ok:
            policy.record_success(self.client_ip, user, clock.monotonic())
            session.authenticated = True
            self.auth_user = sender
            self.auth_key_id = user if sender != user else ""
            if sender != user:
                log.info("%s: authenticated as %r with access key %s", self.client_ip,
                         sender, user)
            else:
                log.info("%s: authenticated as %r", self.client_ip, user)
            await self.push(str(R.AUTH_OK))
            return
        delay = policy.record_failure(self.client_ip, user, clock.monotonic())
        # One line per failure, and one per lockout; never the password (AUTH brute force).
        if policy.is_locked(self.client_ip, clock.monotonic()):
            self._auth_event("lockout")
            log.warning("%s: AUTH failed for %r; client address locked out for %ds",
                        self.client_ip, user, int(policy.lockout))
        else:
            self._auth_event("failed")
            log.info("%s: AUTH failed for %r", self.client_ip, user)
        await clock.sleep(delay)
        await self.push(str(R.AUTH_INVALID))

    def _auth_event(self, kind: str) -> None:
        if self.ctx.on_auth is not None:
            self.ctx.on_auth(kind)

    async def challenge_auth(self, challenge: str | bytes, encode_to_b64: bool = True,
                             log_client_response: bool = False) -> Any:
        try:
            response = await super().challenge_auth(challenge, encode_to_b64, False)
        except ValueError:  # StreamReader.readline: an over-long continuation line
            await self.push(str(R.LINE_TOO_LONG))
            self._close()
            return MISSING
        return response  # (a refused line raised CommandRefused: see _CommandReader)

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # Called by aiosmtpd's auth_PLAIN/auth_LOGIN once the credentials are decoded; the
        # (slow, scrypt) check happens asynchronously in smtp_AUTH.
        return AuthResult(success=True, auth_data=auth_data)

    async def smtp_MAIL(self, arg: str | None) -> None:
        session, envelope = self.session, self.envelope
        assert session is not None and envelope is not None
        authenticated = bool(session.authenticated)
        if self.ctx.draining():  # a session opened before the drain: no new transaction
            log.info("%s: MAIL refused: this node is draining", self.client_ip)
            await self._reply(R.DRAINING)
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
            await self._reply(decided)
            return
        address = decided.address
        if self.ctx.sender_check is not None and address:
            reason = self.ctx.sender_check(self.auth_user or None, address)
            if reason is not None:
                log.info("%s: MAIL FROM <%s> refused: %s", self.client_ip, address, reason)
                await self._reply(R.SENDER_NOT_AUTHORIZED.with_text(reason))
                return
        if self.ctx.account is not None:
            txn = self.ctx.account.begin(self.auth_user or None)
            if isinstance(txn, Refusal):
                log.info("%s: MAIL FROM <%s> refused: %s", self.client_ip, address, txn.text)
                await self._reply(R.Reply(*txn))
                return
            self._account = txn
        envelope.mail_from = address
        envelope.mail_options.extend(decided.options)
        envelope.smtp_utf8 = decided.smtputf8
        await self.push(_SENDER_OK)

    async def smtp_RCPT(self, arg: str | None) -> None:
        session, envelope = self.session, self.envelope
        assert session is not None and envelope is not None
        may_send = bool(session.authenticated) or self.ctx.is_trusted(self.client_ip)
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
            await self._reply(decided)
            return
        if self._account is not None and self.ctx.account is not None:
            limit = await self.ctx.account.recipient_shared(self._account, decided.address)
            if limit is not None:  # nothing is queued for this recipient
                log.info("%s: RCPT %s refused: %s", self.client_ip, arg, limit.text)
                await self._reply(R.Reply(*limit))
                return
        self.recipient_count += 1
        envelope.rcpt_tos.append(decided.address)
        envelope.rcpt_options.extend(decided.options)
        await self.push(_RECIPIENT_OK)

    def data_received(self, data: bytes) -> None:
        # RFC 5321 §4.5.3.2.6: the DATA timeout runs between what the client sends, so a
        # line end arriving in the data restarts the idle timer, however few bytes came
        # (the chunked reader returns only per ~1 KB or at the end). Bytes trickled
        # without a line end do not restart it (slowloris).
        if self._in_data and b"\n" in data:
            self._reset_timeout_sometimes()
        super().data_received(data)

    def _reset_timeout_sometimes(self) -> None:
        now = self.loop.time()
        if now - self._last_timer_reset >= 1.0:
            self._last_timer_reset = now
            self._reset_timeout()

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Move the idle deadline (aiosmtpd calls this on every command line).

        aiosmtpd cancels its timer and makes a new one each time; here one timer is
        kept and re-armed only when it fires before the deadline, which has moved on
        meanwhile: a command costs a float store, not a TimerHandle and a heap entry.
        The connection still closes at the same moment: the last reset + the timeout."""
        loop = self.loop
        deadline = loop.time() + (duration or self._timeout_duration)
        self._idle_deadline = deadline
        handle = self._timeout_handle
        if handle is not None and self._idle_armed:
            if handle.when() <= deadline:
                return
            handle.cancel()  # an earlier deadline than the armed one (never in practice)
        self._idle_armed = True
        self._timeout_handle = loop.call_at(deadline, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_armed = False
        if self.transport is None:
            return
        if self.loop.time() < self._idle_deadline:  # a command came meanwhile
            self._idle_armed = True
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_check)
            return
        self._timeout_cb()

    async def smtp_DATA(self, arg: str | None) -> None:
        session, envelope = self.session, self.envelope
        assert session is not None and envelope is not None
        may_send = self.may_send()
        refusal = P.decide_data(
            arg, helo=bool(session.host_name), may_send=may_send,
            refusal=R.AUTH_REQUIRED if may_send else self._not_allowed_reply(),
            recipients=len(envelope.rcpt_tos))
        if refusal is not None:
            await self._reply(refusal)
            return
        await self.push(_GO_AHEAD)
        self._in_data = True
        try:
            body, fault = await self._read_data()
        finally:
            self._in_data = False
        self.message_count += 1
        if fault is not None or body is None:
            self.envelope = self._create_envelope()
            await self.push(str(fault or R.INTERNAL_ERROR))
            return
        reply, sent = await self._submit(body)
        self.envelope = self._create_envelope()
        if sent:
            await self._writer.drain()
        else:
            await self.push(reply)
        if self.ctx.shutting_down:
            self.close_idle()

    async def _read_data(self) -> tuple[list[bytes] | None, R.Reply | None]:
        """Read up to the lone '.', keeping at most max_message_size bytes in memory.

        Only CRLF '.' CRLF ends the data ('.' CRLF as the first line too): the data ends
        at the first b"\\r\\n.\\r\\n" in b"\\r\\n" + stream, and what follows stays in the
        reader for the next command (PIPELINING). A bare CR or LF anywhere marks the
        message rejected, but reading continues to the real end, so a smuggled
        "\\n.\\r\\nMAIL FROM..." is data of this one rejected message, never a second
        transaction (inbound SMTP smuggling). Read in chunks (`read_data_section`), with the
        same replies as a line-by-line reader: see `DataScanner`.
        """
        if self.transport is None:
            return None, None

        def progress() -> bool:
            self._reset_timeout_sometimes()
            return self.transport is not None

        try:
            result = await read_data_section(
                self._reader, int(self.data_size_limit or 0), self.line_length_limit, progress)
        except asyncio.IncompleteReadError:
            self._close()
            return None, None
        return result if result is not None else (None, None)

    async def _submit(self, parts: list[bytes]) -> tuple[str, bool]:
        """Queue the message: the reply after DATA, and whether it was already sent (by
        `_reply_when_durable`, the moment the commit synced)."""
        assert self.session is not None and self.envelope is not None
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
        written meanwhile: the task is parked in submit(), and it reads the next command
        only after resuming. The command-limit and bare-LF replies stay with push()."""
        if self.transport is None or self.transport.is_closing():
            return
        reply = _queued_reply(queue_id)
        if self.ctx.on_reply is not None:
            self.ctx.on_reply(reply)
        self._writer.write(reply.encode("ascii") + b"\r\n")
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


def _queued_reply(queue_id: str) -> str:
    return str(R.QUEUED.with_text(R.QUEUED.text.format(queue_id=queue_id)))


async def read_data_section(
        reader: asyncio.StreamReader, size_limit: int, line_limit: int,
        progress: Callable[[], bool],
) -> tuple[list[bytes] | None, R.Reply | None] | None:
    """Read one DATA section from `reader` in chunks (`DataSection` finds its end and
    `DataScanner` judges it).

    The same result as reading it with `reader.readuntil(b"\\r\\n")` line by line with
    a reader limit of `line_limit`. Returns (parts, None) or (None, fault), or None if
    `progress()` (called after every chunk that ends a line or has a limit's worth of
    bytes: the idle timer restarts there) says to stop. Raises IncompleteReadError at
    EOF. Never reads past the end of data: `readuntil(EOD)` (on LimitOverrunError, no
    EOD spans the end of the `consumed` bytes: readuntil keeps the last len(EOD) - 1),
    except while what was read ends with the start of an EOD, when `readexactly` reads
    the `need`ed rest of it.
    At most the reader's buffer (about 2 x its limit + one socket read) is read at once.
    """
    section = DataSection(size_limit, line_limit)
    unreported = 0  # bytes read by readexactly since the last progress()
    while True:
        need = section.need
        if need:
            chunk = await reader.readexactly(need)
            unreported += len(chunk)
            # As a line reader would: progress at the end of a line or after a limit's worth,
            # not for a few bytes of a line that never ends (slowloris).
            report = b"\n" in chunk or unreported > line_limit
        else:
            try:
                chunk = await reader.readuntil(EOD)
            except asyncio.LimitOverrunError as e:
                chunk = await reader.read(e.consumed)
            report = True
        if report:
            unreported = 0
            if not progress():
                return None
        if section.feed(chunk):
            return section.result()


class _NoHooks:
    """aiosmtpd wants a handler object; all our hooks are methods of the session.

    It lists no attributes: aiosmtpd's __init__ looks for auth_* and handle_* members of
    the handler with inspect.getmembers() and dir() on every connection, and walking
    object's ~25 inherited names for none was ~40 % of that __init__."""

    def __dir__(self) -> list[str]:
        return []
