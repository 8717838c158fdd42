"""The `role = "feedback"` listener: where remote MTAs send bounces and complaints.

Port 25 in production. No AUTH (remote MTAs do not authenticate), STARTTLS offered when
relay has a certificate, and mail accepted only for the return-path domains relay owns
(identities' mail_from domains and server.return_path_domain / hostname): anything else
is `550 5.7.1`, so this is never an open relay. Each message goes to the
FeedbackProcessor; a report that cannot be parsed is kept (in a store bounded in size
and age, relay/feedback/unparsed.py) and still answered 250 (a retry would not make it
parseable); only a storage failure answers 451.

Anyone on the internet can connect here, so (as on the submission listeners) connections
are capped in total and per client IP (`[limits] max_connections`,
`max_connections_per_ip`: 421 4.7.0 beyond; on an implicit-TLS listener before the
handshake, relay/smtp/admission.py), reports are bounded in size, MIME parts and
nesting (552 5.3.4 / 554 5.6.0 beyond, `[feedback]`), and parsing happens in a
separate process (relay/feedback/offload.py), never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from relay.config import Config, Feedback, Limits, Listener
from relay.feedback.bounds import ReportBounds, too_many_parts
from relay.feedback.dataread import read_report
from relay.feedback.offload import ReportParser
from relay.feedback.processor import FeedbackProcessor
from relay.queue.committer import StoreFull, StoreUnavailable
from relay.smtp import replies as R
from relay.smtp.admission import AcceptFailures, ImplicitTlsGate, peer_ip, raise_fd_limit
from relay.smtp.server import ConnectionLimiter
from relay.smtp.session import start_data
from relay.tasks import cancel_and_wait

log = logging.getLogger("relay.feedback")

NOT_OURS = "550 5.7.1 Relaying denied: relay accepts mail here only for its return-path domains"
NO_AUTH = "502 5.5.1 AUTH not available on this listener"
ACCEPTED = "250 2.0.0 OK: feedback received"
TRY_LATER = "451 4.3.0 Temporary local problem, try again later"
SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
TOO_COMPLEX = "554 5.6.0 Report refused: {reason}"
PRUNE_EVERY = 3600.0  # seconds between age checks of the unparsed store


def owned_domains(cfg: Config) -> set[str]:
    """The return-path domains relay owns: where its bounces and complaints come back."""
    domains = {i.mail_from.lower() for i in cfg.identity if i.mail_from}
    domains.add((cfg.server.return_path_domain or cfg.server.hostname).lower())
    return domains


class _Handler:
    def __init__(self, server: FeedbackServer) -> None:
        self.server = server

    async def handle_EHLO(self, smtp: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [r for r in responses if not r[4:].upper().startswith("AUTH")]

    async def handle_MAIL(self, smtp: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return SENDER_OK

    async def handle_RCPT(self, smtp: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        domain = address.rpartition("@")[2].lower().rstrip(".")
        if not domain or domain not in self.server.domains():
            log.info("feedback: refused RCPT <%s> (not a return-path domain)", address)
            return NOT_OURS
        if len(envelope.rcpt_tos) >= 100:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return RECIPIENT_OK

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or envelope.content or b""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        server = self.server
        # Cheap, on the loop: a report with thousands of parts is never parsed at all.
        refusal = too_many_parts(data, server.bounds)
        report = None
        if not refusal:
            report = await server.parser.parse(data)
            refusal = report.refused
        if refusal:
            log.warning("feedback: report from %s refused: %s",
                        getattr(smtp, "client_ip", "?"), refusal)
            server.count("refused")
            return TOO_COMPLEX.format(reason=refusal)
        try:
            await server.processor.handle(list(envelope.rcpt_tos), data, report)
        except (StoreFull, StoreUnavailable):
            log.warning("feedback: storage unavailable, answering 451")
            return TRY_LATER
        except Exception:  # never let one report take the listener down
            log.exception("feedback: processing failed; keeping the report")
            await asyncio.to_thread(server.processor.keep_unparsed, data, "processing error")
        return ACCEPTED


class _FeedbackSMTP(SMTP):
    preadmitted = False  # set by ImplicitTlsGate: counted against the caps already

    def __init__(self, server: FeedbackServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server = server
        self.client_ip = ""
        self._counted = False
        self._refusal: str | None = None
        # Per-instance limits (aiosmtpd's class-level dict grows on every EHLO).
        self.command_size_limits: defaultdict[str, int] = defaultdict(
            lambda: SMTP.command_size_limit, {"MAIL": SMTP.command_size_limit + 36})

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # (STARTTLS calls this again with the TLS transport)
        super().connection_made(transport)
        if first:
            self.client_ip = peer_ip(transport)
            if self.preadmitted:
                self._counted = True
            else:
                self._refusal = self.server.admit(self.client_ip)
                self._counted = self._refusal is None

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self.server.release(self.client_ip)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self._refusal is not None:
            await self.push(self._refusal)
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    async def smtp_AUTH(self, arg: str) -> None:
        await self.push(NO_AUTH)

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, read in chunks (relay/feedback/dataread.py), not line by line
        on the event loop."""
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not await start_data(self, arg):
            return

        def progress() -> bool:
            self._reset_timeout()
            return self.transport is not None

        try:
            data, too_big = await read_report(self._reader, int(self.data_size_limit or 0),
                                              progress)
        except asyncio.IncompleteReadError:
            if self.transport is not None:
                self.transport.close()
            return
        if data is None:
            return
        if too_big:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(str(R.MESSAGE_TOO_BIG))
            return
        self.envelope.original_content = self.envelope.content = data
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)


class FeedbackServer:
    def __init__(self, listener: Listener, hostname: str, processor: FeedbackProcessor,
                 domains: Callable[[], Iterable[str]], ssl_context: ssl.SSLContext | None, *,
                 limits: Limits | None = None, feedback: Feedback | None = None,
                 on_session: Callable[[object | None], None] | None = None,
                 on_report: Callable[[str], None] | None = None,
                 on_accept_failure: Callable[[str], None] | None = None,
                 on_handshake: Callable[[str], None] | None = None) -> None:
        if listener.role != "feedback":
            raise ValueError(f"listener {listener.address} has role {listener.role!r}, "
                             "FeedbackServer serves role \"feedback\" only")
        limits = limits or Limits()
        feedback = feedback or Feedback()
        self.listener = listener
        self.hostname = hostname
        self.processor = processor
        self._domains = domains
        self.ssl_context = ssl_context
        self.limits = limits
        self.max_message_size = int(feedback.max_message_size)
        self.idle_timeout = float(limits.idle_timeout)
        self.limiter = ConnectionLimiter(limits.max_connections, limits.max_connections_per_ip)
        self.bounds = ReportBounds(feedback.max_mime_parts, feedback.max_mime_depth)
        self.parser = ReportParser(self.bounds, float(feedback.parse_timeout))
        self._server: asyncio.Server | None = None
        self._pruner: asyncio.Task[None] | None = None
        # Metrics hooks: every connection (refusal or None), a report outcome ("refused"),
        # an accept() failure (errno name), an implicit-TLS connection closed before its
        # session ("refused", "timeout", "failed").
        self.on_session = on_session
        self.on_report = on_report
        self.on_accept_failure = on_accept_failure
        self.on_handshake = on_handshake
        self._accept_failures: AcceptFailures | None = None
        self._handshaking: set[ImplicitTlsGate] = set()

    def domains(self) -> set[str]:
        return {d.lower().rstrip(".") for d in self._domains()}

    def admit(self, ip: str) -> str | None:
        refusal = self.limiter.admit(ip)
        if self.on_session is not None:
            self.on_session(refusal)
        if refusal is not None:
            log.info("feedback: connection from %s refused: %s", ip, refusal)
        return str(refusal) if refusal is not None else None

    def release(self, ip: str) -> None:
        self.limiter.release(ip)

    def count(self, outcome: str) -> None:
        if self.on_report is not None:
            self.on_report(outcome)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def port(self) -> int:
        for sock in self.sockets:
            return int(sock.getsockname()[1])
        raise RuntimeError("the server is not started")

    def _factory(self) -> _FeedbackSMTP:
        starttls = self.listener.tls == "starttls" and self.ssl_context is not None
        return _FeedbackSMTP(
            self, _Handler(self), data_size_limit=self.max_message_size,
            enable_SMTPUTF8=True, decode_data=False, hostname=self.hostname,
            ident="ESMTP relay feedback", tls_context=self.ssl_context if starttls else None,
            require_starttls=False, timeout=self.idle_timeout, auth_require_tls=True)

    def _gate(self) -> ImplicitTlsGate:
        assert self.ssl_context is not None
        return ImplicitTlsGate(
            ssl_context=self.ssl_context,
            handshake_timeout=float(self.limits.tls_handshake_timeout),
            admit=self.admit, release=self.release, session=self._factory,
            on_handshake=self.on_handshake, pending=self._handshaking)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        raise_fd_limit()
        self._accept_failures = AcceptFailures.watching(loop, self.on_accept_failure)
        implicit = self.listener.tls == "implicit" and self.ssl_context is not None
        factory: Callable[[], asyncio.BaseProtocol] = self._gate if implicit else self._factory
        self._server = await loop.create_server(
            factory, host=self.listener.address.host, port=self.listener.address.port,
            reuse_address=True, backlog=128)
        self._pruner = asyncio.create_task(self._prune_loop(), name="feedback-unparsed-prune")
        log.info("feedback listener on %s for %s", self.listener.address,
                 ", ".join(sorted(self.domains())))

    async def _prune_loop(self) -> None:
        """Age limit of the unparsed store, also when no new junk arrives."""
        while True:
            try:
                await asyncio.to_thread(self.processor.unparsed.prune)
            except Exception:
                log.exception("feedback: pruning the unparsed store failed")
            await self.processor.clock.sleep(PRUNE_EVERY)

    async def stop(self) -> None:
        await cancel_and_wait(self._pruner)
        self._pruner = None
        await self.parser.close()
        if self._accept_failures is not None:
            self._accept_failures.unwatch()
            self._accept_failures = None
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for gate in list(self._handshaking):
            gate.abort()
        try:
            await asyncio.wait_for(server.wait_closed(), timeout=2.0)
        except TimeoutError:
            log.warning("feedback listener %s: sessions still closing", self.listener.address)
