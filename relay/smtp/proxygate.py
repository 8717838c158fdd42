"""`ProxyHeaderGate`: the protocol a `proxy_protocol = true` listener accepts with.

Before anything else happens on the connection (no greeting; on an implicit-TLS listener
no handshake), the gate:
- closes it at once, with a log line, unless the peer is in the listener's
  `proxy_trusted` (a proxy listener serves its load balancers only, like Postfix's
  smtpd_upstream_proxy_protocol: a stranger can neither forge a client address nor
  talk SMTP around the balancer);
- reads the PROXY v1/v2 header (parsed by the PURE relay/smtp/proxyproto.py, which
  bounds its size), within `limits.proxy_header_timeout`; a refused or late header
  closes the connection with a log line;
- hands the connection, and any bytes that came after the header, to the protocol that
  would have taken it without a proxy (`hand_over(transport, client)`), with the
  header's client address, which from then on is the connection's address everywhere
  (admission caps, the AUTH lockout, trusted_networks, Received:, events, logs).

Connections in this phase hold a slot of the listener's total connection cap
(`limits.max_connections`, `hold`/`unhold`), so idle connections from a balancer cannot
take the listener past it: over the cap a new one is answered 421 4.7.0 (on an
implicit-TLS listener closed, as its TLS gate does) before its header is read. They are
not counted per IP (the peer is the balancer; the real client is not known yet): at the
hand-over the slot is given back and the session admits the header's client against both
caps at once, so no other connection can take the slot in between. They are also
bounded by the time limit and by coming from trusted proxies only, and the listener
aborts them when it stops (`pending`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Sequence
from typing import cast

from relay.smtp import replies as R
from relay.smtp.admission import peer_ip
from relay.smtp.proxyproto import ProxyRefused, parse

log = logging.getLogger("relay.smtp.proxy")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
HandOver = Callable[[asyncio.Transport, tuple[str, int] | None], asyncio.BaseProtocol]


def in_networks(ip: str, networks: Sequence[IPNetwork]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


class ProxyHeaderGate(asyncio.Protocol):
    """One connection to a proxy listener, from accept() to the end of its PROXY header."""

    def __init__(self, *, trusted: Sequence[IPNetwork], timeout: float, hand_over: HandOver,
                 listener: str, pending: set[ProxyHeaderGate] | None = None,
                 on_refused: Callable[[str], None] | None = None,
                 hold: Callable[[], bool] | None = None,
                 unhold: Callable[[], None] | None = None,
                 full: R.Reply | None = None) -> None:
        self.trusted = trusted
        self.timeout = timeout
        self.hand_over = hand_over
        self.listener = listener
        self.pending = pending if pending is not None else set()
        # Metrics hook: "untrusted", "malformed", "timeout", "limit".
        self.on_refused = on_refused
        # A slot of the connection cap while the header is awaited (None: not counted),
        # and the reply for a connection over the cap (None: closed without one).
        self.hold, self.unhold, self.full = hold, unhold, full
        self._holding = False
        self.ip = ""
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's transports are duck-typed
        self.ip = peer_ip(transport)
        if not in_networks(self.ip, self.trusted):
            log.warning("%s: connection to PROXY protocol listener %s refused: not in "
                        "proxy_trusted", self.ip, self.listener)
            self._refused("untrusted")
            transport.abort()
            return
        if self.hold is not None:
            if not self.hold():
                log.warning("%s: connection to PROXY protocol listener %s refused: "
                            "max_connections reached", self.ip, self.listener)
                self._refused("limit")
                if self.full is None:
                    transport.abort()
                else:
                    transport.write(f"{self.full}\r\n".encode("ascii"))
                    transport.close()
                return
            self._holding = True
        self._transport = transport
        self.pending.add(self)
        self._timer = asyncio.get_running_loop().call_later(self.timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        self._buffer += data
        try:
            header = parse(self._buffer)
        except ProxyRefused as e:
            log.warning("%s: PROXY header refused on %s: %s", self.ip, self.listener, e)
            self._refused("malformed")
            self.abort()
            return
        if header is None:
            return
        rest = self._buffer[header.length:]
        self._buffer = b""
        self._settle()
        client = header.source
        if client is not None:
            log.debug("%s: PROXY v%d header: client %s port %d", self.ip, header.version,
                      client[0], client[1])
        protocol = self.hand_over(transport, client)
        if rest and not transport.is_closing():
            # What the client sent after the header (early pipelining, a ClientHello).
            cast(asyncio.Protocol, protocol).data_received(rest)

    def _timed_out(self) -> None:
        self._timer = None
        log.warning("%s: no complete PROXY header on %s within %.0f s, closing", self.ip,
                    self.listener, self.timeout)
        self._refused("timeout")
        self.abort()

    def _refused(self, kind: str) -> None:
        if self.on_refused is not None:
            self.on_refused(kind)

    def _settle(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._holding:  # the session (after a hand-over) admits the client itself
            self._holding = False
            if self.unhold is not None:
                self.unhold()
        self.pending.discard(self)
        self._transport = None

    def abort(self) -> None:
        """A refusal, the time limit, or the listener stopping: end the connection."""
        transport = self._transport
        self._settle()
        if transport is not None:
            transport.abort()

    def eof_received(self) -> bool | None:
        self.abort()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        # Only before the hand-over (after it, the next protocol is the transport's).
        self._settle()
