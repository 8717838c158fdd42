"""SubmissionServer: binds one `role = "submission"` listener and runs its sessions.

Owns the listening socket (asyncio `loop.create_server` with the session's protocol, so
it runs on uvloop), the total/per-IP connection caps (421 4.7.0 at greeting; on an
implicit-TLS listener they are applied before the TLS handshake, see admission.py), and
graceful shutdown. Policy per connection is in
session.py. Starting a listener raises the process's soft open-file limit to the hard one
and has accept() failures logged and counted (`on_accept_failure`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable

from relay.clock import Clock
from relay.config import Limits, Listener
from relay.queue.ops import NewMessage
from relay.smtp import replies as R
from relay.smtp.admission import AcceptFailures, ImplicitTlsGate, raise_fd_limit
from relay.smtp.authpolicy import AuthPolicy
from relay.smtp.proxygate import ProxyHeaderGate
from relay.smtp.session import ListenerContext, SenderCheck, SubmissionSession, Submitter
from relay.tenants.account import AccountGate
from relay.users import UserStore

log = logging.getLogger(__name__)


class ConnectionLimiter:
    """Counts open connections in total and per client IP (pure bookkeeping)."""

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self.per_ip: Counter[str] = Counter()

    def admit(self, ip: str) -> R.Reply | None:
        if self.total >= self.max_total:
            return R.TOO_MANY_CONNECTIONS
        if self.per_ip[ip] >= self.max_per_ip:
            return R.TOO_MANY_CONNECTIONS_FROM_IP
        self.total += 1
        self.per_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]

    def hold(self) -> bool:
        """A slot of the total for a connection whose client is not known yet (waiting
        for its PROXY header); False when none is left. Not per IP: the peer is the
        balancer, which carries every client."""
        if self.total >= self.max_total:
            return False
        self.total += 1
        return True

    def unhold(self) -> None:
        self.total -= 1


def _counted(admit: Callable[[str], R.Reply | None],
             seen: Callable[[R.Reply | None], None]) -> Callable[[str], R.Reply | None]:
    """`admit` that also tells `seen` of each connection and its refusal (None: admitted)."""
    def counted(ip: str) -> R.Reply | None:
        refusal = admit(ip)
        seen(refusal)
        return refusal
    return counted


class SubmissionServer:
    def __init__(self, listener: Listener, limits: Limits, hostname: str,
                 submitter: Submitter, users: UserStore, clock: Clock,
                 ssl_context: ssl.SSLContext | None, *,
                 auth_policy: AuthPolicy | None = None, shutdown_grace: float = 10.0,
                 sender_check: SenderCheck | None = None, reuse_port: bool = False,
                 on_session: Callable[[R.Reply | None], None] | None = None,
                 on_reply: Callable[[str], None] | None = None,
                 on_auth: Callable[[str], None] | None = None,
                 on_reject: Callable[[NewMessage, str], None] | None = None,
                 on_accept_failure: Callable[[str], None] | None = None,
                 on_handshake: Callable[[str], None] | None = None,
                 account: AccountGate | None = None,
                 key_login: Callable[[str, bytes], str | None] | None = None,
                 draining: Callable[[], bool] | None = None,
                 on_proxy_refused: Callable[[str], None] | None = None,
                 limiter: ConnectionLimiter | None = None) -> None:
        if listener.role != "submission":
            raise ValueError(f"listener {listener.address} has role {listener.role!r}, "
                             "SubmissionServer serves role \"submission\" only")
        if listener.tls == "implicit" and ssl_context is None:
            raise ValueError(f"listener {listener.address}: tls = \"implicit\" needs a "
                             "certificate (ssl_context)")
        self.listener = listener
        self.limits = limits
        self.shutdown_grace = shutdown_grace
        # `limiter`: the one count every submission listener of the process shares, so
        # max_connections and max_connections_per_ip hold across 587 and 465 together.
        self.limiter = limiter or ConnectionLimiter(limits.max_connections,
                                                    limits.max_connections_per_ip)
        policy = auth_policy or AuthPolicy(float(limits.auth_failure_delay),
                                           limits.auth_max_failures, float(limits.auth_lockout))
        admit: Callable[[str], R.Reply | None] = self.limiter.admit
        if on_session is not None:  # every connection and its refusal, if any (metrics)
            admit = _counted(admit, on_session)
        self.context = ListenerContext(
            listener=listener, limits=limits, hostname=hostname, submitter=submitter,
            users=users, clock=clock, ssl_context=ssl_context, auth_policy=policy,
            trusted=[ipaddress.ip_network(n, strict=False) for n in listener.trusted_networks],
            admit=admit, release=self.limiter.release, sender_check=sender_check,
            on_reply=on_reply, on_auth=on_auth, on_reject=on_reject, account=account,
            key_login=key_login)
        if draining is not None:
            self.context.draining = draining
        self.on_proxy_refused = on_proxy_refused
        self._proxied: set[ProxyHeaderGate] = set()
        self._server: asyncio.Server | None = None
        # server.workers > 1: every worker binds the same port (SO_REUSEPORT); the kernel
        # spreads new connections across them.
        self.reuse_port = reuse_port
        # Metrics hooks: an accept() failure (errno name); an implicit-TLS connection
        # closed before its session began ("refused", "timeout", "failed").
        self.on_accept_failure = on_accept_failure
        self.on_handshake = on_handshake
        self._accept_failures: AcceptFailures | None = None
        self._handshaking: set[ImplicitTlsGate] = set()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        if self._server is None:
            return ()
        return tuple(self._server.sockets)

    @property
    def port(self) -> int:
        """The bound port (useful when the listener asked for port 0)."""
        for sock in self.sockets:
            return int(sock.getsockname()[1])
        raise RuntimeError("the server is not started")

    def _session(self, client: tuple[str, int] | None = None) -> SubmissionSession:
        session = SubmissionSession(self.context, asyncio.get_running_loop())
        session.proxied_peer = client
        return session

    def _implicit_tls_gate(self, client: tuple[str, int] | None = None) -> ImplicitTlsGate:
        ctx = self.context
        # ctx.admit also counts sessions when the server was given `on_session`.
        return ImplicitTlsGate(
            ssl_context=ctx.ssl_context, handshake_timeout=float(
                self.limits.tls_handshake_timeout),
            admit=ctx.admit, release=ctx.release,
            session=lambda: self._session(client), on_handshake=self.on_handshake,
            pending=self._handshaking, client=client)

    def _proxy_gate(self) -> ProxyHeaderGate:
        return ProxyHeaderGate(
            trusted=[ipaddress.ip_network(n, strict=False) for n in self.listener.proxy_trusted],
            timeout=float(self.limits.proxy_header_timeout), hand_over=self._hand_over,
            listener=str(self.listener.address), pending=self._proxied,
            on_refused=self.on_proxy_refused, hold=self.limiter.hold,
            unhold=self.limiter.unhold,
            full=None if self.listener.tls == "implicit" else R.TOO_MANY_CONNECTIONS)

    def _hand_over(self, transport: asyncio.Transport,
                   client: tuple[str, int] | None) -> asyncio.BaseProtocol:
        """After a PROXY header: the protocol the listener would have accepted with, made
        with the header's client address (None: the socket's peer stands)."""
        protocol: asyncio.BaseProtocol = (
            self._implicit_tls_gate(client) if self.listener.tls == "implicit"
            else self._session(client))
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        return protocol

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        raise_fd_limit()
        self._accept_failures = AcceptFailures.watching(loop, self.on_accept_failure)
        ctx = self.context
        implicit = self.listener.tls == "implicit"
        factory: Callable[[], asyncio.BaseProtocol] = (
            self._implicit_tls_gate if implicit else lambda: SubmissionSession(ctx, loop))
        if self.listener.proxy_protocol:  # the PROXY header first, then as above
            factory = self._proxy_gate
        # Implicit TLS: the gate starts the handshake itself, after admission.
        self._server = await loop.create_server(
            factory, host=self.listener.address.host, port=self.listener.address.port,
            reuse_address=True, reuse_port=self.reuse_port or None, backlog=512)
        log.info("submission listener on %s (tls=%s, auth=%s%s)", self.listener.address,
                 self.listener.tls, self.listener.auth,
                 ", PROXY protocol" if self.listener.proxy_protocol else "")

    async def stop(self) -> None:
        """Stop accepting; close idle sessions now, give busy ones `shutdown_grace` s."""
        if self._server is None:
            return
        if self._accept_failures is not None:
            self._accept_failures.unwatch()
            self._accept_failures = None
        server, self._server = self._server, None
        server.close()
        for proxied in list(self._proxied):
            proxied.abort()
        for gate in list(self._handshaking):
            gate.abort()
        ctx = self.context
        ctx.shutting_down = True
        for session in list(ctx.sessions):
            session.close_idle()
        pending = [session.done for session in ctx.sessions if not session.done.done()]
        if pending:
            await asyncio.wait(pending, timeout=self.shutdown_grace)
        for session in list(ctx.sessions):
            session.force_close()
        try:
            await asyncio.wait_for(server.wait_closed(), timeout=1.0)
        except TimeoutError:
            log.warning("submission listener %s: sessions still closing", self.listener.address)
