"""Outbound SMTP client: one transaction toward one destination, over pooled connections.

Owns: the bytes of outbound SMTP. `Sender.send()` tries the targets (MX hosts,
already ordered by routing) in order, connects (source address, timeouts), and
moves bytes between the socket and the state machines of
relay/delivery/transaction.py (PURE: the dialogue, EHLO / STARTTLS / MAIL /
RCPT… / DATA, and one Outcome per recipient), upgrading to TLS with the event
loop's start_tls when the handshake asks. Idle connections are kept by
relay/delivery/pool.py per next hop (below) and reused across destinations.

Must not: raise. Every OSError, TLS error and timeout is translated here or in
the state machine into an Outcome via relay.delivery.classify (STYLE §3 rule 9); only
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
- The dialogue (one transaction per message, PIPELINING groups, what each refusal
  means for the recipients and the connection) is relay/delivery/transaction.py's.
- A pooled connection goes straight to MAIL if its last transaction ended
  cleanly (Postfix's connection cache does the same); RSET only after one was
  abandoned half-way (DATA refused). A reused connection that turns out dead
  before it answered anything (so no body was sent: nothing can be delivered
  twice) is dropped and the message tried once more on a fresh connection.
- The pool (relay/delivery/pool.py): keyed by target, not destination (MX host
  name, IP address, port, source address: the EHLO/STARTTLS dialogue and a
  verified certificate are for that name, the source address fixes the EHLO
  name), so domains behind one MX share its connections; a connection made with
  weaker TLS than the message needs stays pooled for others and a new one is
  opened; idle caps per key and in all; per-site connection counts.
- The server speaking while a connection is idle, or replying more than it was
  asked, and the connection is never reused (a reply nobody asked for would be
  taken as the answer to the next command).
- Closing: QUIT, waiting at most min(command_timeout, 5 s), then the socket is
  aborted. The reaper closes the expired idle connections of a pass together
  (one pass at a time), so a pass lasts one bounded QUIT, not one per connection.
- The wire encoding (transaction.py) normalises bare CR/LF to CRLF and dot-stuffs
  (no outbound SMTP smuggling) and refuses control characters in addresses (no
  CR/LF command injection), mapped to `501 5.1.3 invalid address`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import msgspec

from relay.clock import Clock, SystemClock
from relay.config import Delivery
from relay.delivery.classify import Outcome, from_failure
from relay.delivery.outcome import held
from relay.delivery.pool import NoLease, Pool, PoolKey, SiteLeases, Target, pool_key
from relay.delivery.transaction import (
    Command,
    Extensions,
    Handshake,
    Transaction,
    remote_name,
    short,
    valid_address,
)

__all__ = ["Sender", "Target", "TransactionResult"]

# QUIT on a connection being closed waits at most this long (and command_timeout).
_QUIT_TIMEOUT = 5.0
# Recipients for which no connection lease came ([cluster]) are due again this much later.
LEASE_HOLD = 5.0


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


_Machine = Handshake | Transaction | Command


class _Wire(asyncio.Protocol):
    """One connection's bytes: what arrives goes to the running machine, what it returns
    is written; the awaited reply is timed (`timeouts` by the machine's `timeout`). A
    machine that finishes (or pauses for TLS) wakes the task awaiting `run()`. A machine
    left broken (out of step, the server closing) has its connection aborted at once."""

    def __init__(self, timeouts: dict[str, float]) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False     # lost, or EOF from the server
        self.tainted = False    # the server spoke while the connection was idle
        self._timeouts = timeouts
        self._machine: _Machine | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def is_connected(self) -> bool:
        t = self.transport
        return not self.closed and t is not None and not t.is_closing()

    def run(self, machine: _Machine, first: bytes = b"") -> asyncio.Future[None]:
        """Drive `machine`: write `first`, then feed it until it is done or paused."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._machine = machine
        if self.closed:
            machine.lost()
            self._settle(machine)
            return waiter
        if first and self.transport is not None:
            self.transport.write(first)
        if self.transport is not None:
            self._arm(machine.timeout)
        return waiter

    def abort(self) -> None:
        """Close the socket now, without waiting for a TLS close_notify."""
        t = self.transport
        if t is not None:
            t.abort()
        self.closed = True

    # ------------------------------------------------------------------ asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # uvloop's are duck-typed
        if self._machine is not None:
            self._arm(self._machine.timeout)

    def data_received(self, data: bytes) -> None:
        m = self._machine
        if m is None:
            self.tainted = True   # nobody asked: never reuse this connection
            return
        before = m.replies
        out = m.receive(data)
        if out and self.transport is not None:
            self.transport.write(out)
        if m.done or m.paused:
            self._settle(m)
        elif m.replies != before:
            self._arm(m.timeout)

    def eof_received(self) -> bool:
        self._lost("Unexpected EOF received")
        return False   # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost("Connection lost")

    # ------------------------------------------------------------------ internals

    def _lost(self, detail: str) -> None:
        self.closed = True
        m = self._machine
        if m is not None:
            m.lost(detail)
            self._settle(m)

    def _arm(self, timeout: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._timeouts[timeout], self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        m = self._machine
        if m is not None:
            m.timed_out()
            self._settle(m)

    def _settle(self, m: _Machine) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if m.done:
            self._machine = None
            if m.broken:
                self.abort()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


@dataclass(eq=False)  # identity: a _Conn is a key of the pool's idle map
class _Conn:
    wire: _Wire
    host_name: str
    address: str
    tls: bool
    extensions: Extensions = field(default_factory=dict)
    key: PoolKey = ("", "", 0, "")
    messages: int = 0
    idle_since: float = 0.0
    site: str = ""          # the shaping site it counts against ("" = none)
    verified: bool = False  # the certificate was checked against host_name
    rset_needed: bool = False  # the last transaction was abandoned half-way
    destination: str = ""   # the destination its last transaction was for

    @property
    def alive(self) -> bool:
        return self.wire.is_connected and not self.wire.tainted


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


def _connect_failure(exc: OSError, name: str, target: Target) -> Outcome:
    """A TCP connect that failed (no greeting, so no session)."""
    detail = f"Error connecting to {target.address} on port {target.port}: {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return from_failure("refused", name, detail, name)
    if isinstance(exc, ConnectionError):
        return from_failure("dropped", name, detail, name)
    return from_failure("unreachable", name, detail, name)


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
        self._pool: Pool[_Conn] = Pool(delivery, self._clock, self._discard, self._prepare)
        self._site_open = self._pool.site_open   # open connections per shaping site
        self._timeouts = {"connect": float(delivery.connect_timeout),
                          "command": float(delivery.command_timeout),
                          "data": float(delivery.data_timeout)}
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
        if not valid_address(sender):
            return TransactionResult(list(recipients), [invalid] * len(recipients))
        valid = [r for r in recipients if valid_address(r)]
        if len(valid) < len(recipients):
            if not valid:
                return TransactionResult(list(recipients), [invalid] * len(recipients))
            part = await self.send(destination, targets, sender, valid, data,
                                   source_address=source_address, ehlo=ehlo, tls=tls,
                                   site=site, max_connections=max_connections,
                                   messages_per_connection=messages_per_connection)
            got = iter(part.outcomes)
            merged = [next(got) if valid_address(r) else invalid for r in recipients]
            return msgspec.structs.replace(part, recipients=list(recipients), outcomes=merged)
        pool = self._pool
        conn: _Conn | None = None
        try:
            sessions = _Sessions(self._cfg.mx_session_limit)
            conn = await pool.take(destination, targets, src,
                                   need_tls=policy in ("require", "verify"),
                                   need_verified=self._verifies(policy))
            reused = conn is not None
            # Opened for another site sharing this MX host: it counts against ours now
            # (False: no lease for our site, [cluster]; it was closed).
            if (conn is not None and conn.site != site
                    and not await pool.claim(conn, site, max_connections)):
                conn, reused = None, False
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
            if keep and done.messages < per_conn and done.alive and not self._closed:
                evicted = pool.put(done)
                if evicted:
                    await asyncio.gather(*(self._discard(c, polite=True) for c in evicted))
            else:
                await self._discard(done, polite=done.wire.is_connected)
            return TransactionResult(list(recipients), outcomes,
                                     remote_mta=remote_name(done.host_name, done.address),
                                     address=done.address, tls=done.tls, reused=reused)
        except asyncio.CancelledError:
            if conn is not None:  # neither pooled nor closed: do not leak it (or its site)
                self._drop(conn)
            raise
        except Exception as e:  # the boundary: nothing escapes as an exception
            if conn is not None:
                self._drop(conn)
            failed = from_failure("local_error", destination, short(e))
            return TransactionResult(list(recipients), [failed] * len(recipients))

    def share_sites(self, leases: SiteLeases) -> None:
        """[cluster]: each connection to a provider's site holds one of `leases`."""
        self._pool.use_leases(leases)

    def idle_connections(self, destination: str | None = None) -> int:
        """Idle pooled connections: all, or those whose last transaction was for `destination`."""
        if destination is None:
            return len(self._pool.idle)
        return sum(1 for c in self._pool.idle if c.destination == destination)

    async def reap(self) -> int:
        """Close idle connections older than delivery.idle_connection_timeout (or dead);
        return how many. They are closed concurrently, each QUIT bounded by a timeout, so
        one pass takes about one QUIT round trip however many expired; one pass at a time."""
        return await self._pool.reap()

    async def close(self) -> None:
        """QUIT and close every pooled connection; stop the reaper."""
        self._closed = True
        await self._pool.stop()
        await asyncio.gather(*(self._discard(c, polite=True) for c in self._pool.drain()))

    # ------------------------------------------------------------------ pool callbacks

    async def _prepare(self, conn: _Conn) -> bool:
        """RSET a pooled connection whose last transaction was left half-way. False (and
        closed): unusable."""
        rset = Command(b"RSET\r\n", 250)
        await conn.wire.run(rset, rset.start())
        if not rset.ok:
            await self._discard(conn)
            return False
        conn.rset_needed = False
        return True

    async def _discard(self, conn: _Conn, polite: bool = False) -> None:
        """Close `conn` (QUIT first if `polite`). A QUIT not answered in time, or none, and
        the socket is aborted: nothing lingers (a TLS close_notify waits up to 30 s)."""
        self._pool.forget_site(conn)
        wire = conn.wire
        clean = False
        try:
            if polite and wire.is_connected:
                wait = min(self._cfg.command_timeout, _QUIT_TIMEOUT)
                quit_ = Command(b"QUIT\r\n", 221)
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(wait):
                        await wire.run(quit_, quit_.start())
                    clean = quit_.ok
        finally:
            if clean and wire.transport is not None:
                wire.transport.close()
            else:
                wire.abort()
            self._pool.closed(conn)

    def _drop(self, conn: _Conn) -> None:
        """Close `conn` at once, without QUIT (cancellation, an unexpected error)."""
        self._pool.forget_site(conn)
        conn.wire.abort()
        self._pool.closed(conn)

    # ------------------------------------------------------------------ connect

    async def _open_site(self, site: str, limit: int, destination: str,
                         targets: Sequence[Target], src: str, ehlo: str | None,
                         policy: str | None,
                         sessions: _Sessions) -> tuple[_Conn | None, Outcome]:
        """_open_any, within `site`'s connection limit (the shaper keeps the transactions
        under way below it, so at the limit at least one of the site's is idle). [cluster]:
        no connection lease for the site in time, and the recipients are held."""
        try:
            lease = await self._pool.reserve(site, limit)
        except NoLease:
            return None, held(f"shaping: all {limit} connections to site {site} are in "
                              "use across the cluster", self._clock.now() + LEASE_HOLD)
        try:
            conn, failed = await self._open_any(destination, targets, src, ehlo, policy,
                                                sessions)
        except BaseException:
            self._pool.release(site, lease)
            raise
        if conn is None:
            self._pool.release(site, lease)
        elif site:
            self._pool.opened(conn, site, lease)
        return conn, failed

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
        """Connect, greeting, EHLO, STARTTLS (as the policy says): a connection ready for
        MAIL, or _TargetFailed."""
        cfg = self._cfg
        level = policy or cfg.tls
        verify = self._verifies(level)
        name = remote_name(target.host_name, target.address)
        hs = Handshake(ehlo or self._hostname, name,
                       require=level in ("require", "verify"), plaintext=plaintext)
        wire = _Wire(self._timeouts)
        greeted = wire.run(hs)   # armed before connecting: the greeting may come at once
        loop = asyncio.get_running_loop()
        try:
            try:
                async with asyncio.timeout(cfg.connect_timeout):
                    await loop.create_connection(
                        lambda: wire, host=target.address, port=target.port,
                        local_addr=(src, 0) if src else None)
            except TimeoutError:
                raise _TargetFailed(from_failure(
                    "timeout", name,
                    f"Timed out connecting to {target.address} on port {target.port}",
                    name)) from None
            except OSError as e:
                raise _TargetFailed(_connect_failure(e, name, target)) from None
            await greeted
            if hs.paused:   # STARTTLS answered 220: the handshake, then EHLO again
                ctx = self._verify_context if verify else self._tls_context
                await self._start_tls(wire, hs, ctx, target.host_name.rstrip(".") or None)
            if sessions is not None and hs.greeted:
                sessions.left -= 1   # a greeting, whatever it said: a session
            if hs.outcome is not None:
                raise _TargetFailed(hs.outcome, hs.plaintext_retry)
            return _Conn(wire, target.host_name, target.address, hs.tls, hs.extensions,
                         key=pool_key(target, src), verified=hs.tls and verify)
        except BaseException:
            wire.abort()
            raise

    async def _start_tls(self, wire: _Wire, hs: Handshake, ctx: ssl.SSLContext,
                         server_name: str | None) -> None:
        loop = asyncio.get_running_loop()
        transport = wire.transport
        detail = ""
        if transport is None or not wire.is_connected:
            detail = "Connection lost"
        else:
            try:
                tls = await loop.start_tls(
                    transport, wire, ctx, server_side=False, server_hostname=server_name,
                    ssl_handshake_timeout=self._cfg.command_timeout)
            except TimeoutError:
                detail = "Timed out while upgrading transport"
            except ConnectionAbortedError:   # what the handshake timeout raises
                detail = "Connection aborted while upgrading transport"
            except ConnectionError:
                detail = "Connection reset while upgrading transport"
            except (ssl.SSLError, ssl.CertificateError, OSError) as e:
                detail = short(e)
            else:
                if tls is None:
                    detail = "Connection lost"
                else:
                    wire.transport = tls
        if detail or hs.done:
            hs.tls_failed(detail or "Connection lost")
            return
        await wire.run(hs, hs.tls_started())

    # ------------------------------------------------------------------ transaction

    async def _transact(self, conn: _Conn, sender: str, recipients: Sequence[str],
                        data: bytes) -> tuple[list[Outcome], bool, bool]:
        """Run MAIL/RCPT/DATA. Returns (outcomes, connection reusable, retry on a fresh
        connection: it failed before the server answered anything); sets conn.rset_needed."""
        t = Transaction(sender, recipients, data, conn.extensions,
                        remote_name(conn.host_name, conn.address))
        first = t.start()
        if not t.done:
            await conn.wire.run(t, first)
        conn.rset_needed = t.rset_needed
        return t.outcomes, t.keep and not t.excess and conn.alive, t.retry_fresh
