"""The `role = "feedback"` listener: where remote MTAs send bounces and complaints.

Port 25 in production. No AUTH (remote MTAs do not authenticate), STARTTLS offered when
relay has a certificate, and mail accepted only for the return-path domains relay owns
(identities' mail_from domains and server.return_path_domain / hostname): anything else
is `550 5.7.1`, so this is never an open relay. Each message goes to the
FeedbackProcessor; a report that cannot be parsed is kept and still answered 250 (a
retry would not make it parseable); only a storage failure answers 451.
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

from relay.config import Config, Listener
from relay.feedback.processor import FeedbackProcessor
from relay.queue.store import StoreFull, StoreUnavailable

log = logging.getLogger("relay.feedback")

NOT_OURS = "550 5.7.1 Relaying denied: relay accepts mail here only for its return-path domains"
NO_AUTH = "502 5.5.1 AUTH not available on this listener"
ACCEPTED = "250 2.0.0 OK: feedback received"
TRY_LATER = "451 4.3.0 Temporary local problem, try again later"
SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"


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
        try:
            await self.server.processor.handle(list(envelope.rcpt_tos), data)
        except (StoreFull, StoreUnavailable):
            log.warning("feedback: storage unavailable, answering 451")
            return TRY_LATER
        except Exception:  # never let one report take the listener down
            log.exception("feedback: processing failed; keeping the report")
            self.server.processor.keep_unparsed(data, "processing error")
        return ACCEPTED


class _FeedbackSMTP(SMTP):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per-instance limits (aiosmtpd's class-level dict grows on every EHLO).
        self.command_size_limits: defaultdict[str, int] = defaultdict(
            lambda: SMTP.command_size_limit, {"MAIL": SMTP.command_size_limit + 36})

    async def smtp_AUTH(self, arg: str) -> None:
        await self.push(NO_AUTH)


class FeedbackServer:
    def __init__(self, listener: Listener, hostname: str, processor: FeedbackProcessor,
                 domains: Callable[[], Iterable[str]], ssl_context: ssl.SSLContext | None, *,
                 max_message_size: int = 10 * 1000 * 1000, idle_timeout: float = 300.0) -> None:
        if listener.role != "feedback":
            raise ValueError(f"listener {listener.address} has role {listener.role!r}, "
                             "FeedbackServer serves role \"feedback\" only")
        self.listener = listener
        self.hostname = hostname
        self.processor = processor
        self._domains = domains
        self.ssl_context = ssl_context
        self.max_message_size = max_message_size
        self.idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None

    def domains(self) -> set[str]:
        return {d.lower().rstrip(".") for d in self._domains()}

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def port(self) -> int:
        for sock in self.sockets:
            return int(sock.getsockname()[1])
        raise RuntimeError("the server is not started")

    def _factory(self) -> SMTP:
        implicit = self.listener.tls == "implicit"
        starttls = self.listener.tls == "starttls" and self.ssl_context is not None
        return _FeedbackSMTP(
            _Handler(self), data_size_limit=self.max_message_size, enable_SMTPUTF8=True,
            decode_data=False, hostname=self.hostname, ident="ESMTP relay feedback",
            tls_context=self.ssl_context if starttls and not implicit else None,
            require_starttls=False, timeout=self.idle_timeout, auth_require_tls=True)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        implicit = self.listener.tls == "implicit"
        self._server = await loop.create_server(
            self._factory, host=self.listener.address.host, port=self.listener.address.port,
            ssl=self.ssl_context if implicit else None, reuse_address=True, backlog=128)
        log.info("feedback listener on %s for %s", self.listener.address,
                 ", ".join(sorted(self.domains())))

    async def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        try:
            await asyncio.wait_for(server.wait_closed(), timeout=2.0)
        except TimeoutError:
            log.warning("feedback listener %s: sessions still closing", self.listener.address)
