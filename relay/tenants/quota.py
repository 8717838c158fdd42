"""PURE sending quotas: SES's Max24HourSend and MaxSendRate, per tenant and per credential.

Theory of operation
-------------------
Rule 1 (effective limits): a credential with a quota override (either figure set) is
limited by it, counted in its own scope ("credential:NAME"); any other credential by its
tenant's quota, else the [tenants] defaults, counted in the tenant's scope. A figure of
0 means unlimited. (A credential allowed several tenants counts all its mail in its own
scope, whichever tenant it names.) A sandbox tenant's limits are at most the sandbox's
(200 a day, 1 a second by default), and those also hold for the tenant as a whole,
whatever its credentials' overrides say. `effective_limits()` works this out; the caller passes the
result to `reserve()`.

Rule 2 (one recipient at RCPT): `reserve()` checks the send rate first, then the daily
quota, for one recipient, and answers SES's 454 when either is spent, so a message is
never half accepted: the recipient that crosses a limit is refused, nothing else. A
refused recipient uses nothing.

Rule 3 (reserve, then commit or release): a reservation counts in the daily window at
once, so two sessions cannot both take the last unit; `commit()` when its message is
accepted (its counts are then written with the message: relay/tenants/quotastore.py),
`release()` on RSET, a refused DATA or a disconnect gives the daily unit back. Rate
tokens are never given back: the rate is the pace of recipients asked for.

Rule 3b (at DATA): a message whose tenant is known only at DATA (X-SES-TENANT of a
credential allowed several tenants) reserves all its recipients at once or none
(`reserve_many()`); its rate may go into debt so the average still holds.

Rule 4 (the mailbox simulator): as in SES, its recipients count toward the send rate and
not toward the daily quota.

Rule 5 (several workers): with server.workers = N each process keeps its own book, so
worker i of N enforces its share of every limit (`worker_share()`): the daily figures split
so the shares add up to the limit exactly (a worker whose share is nothing refuses every
counted recipient), the rate divided by N. A tenant whose sessions all land on one worker
may be refused before its whole quota is used; the workers together never accept more.
At start every worker loads every stored count, so after a restart each may refuse early.

The tenant's scope always counts its recipients (SentLast24Hours of the tenant), also
those sent under a credential's override. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from relay.tenants.bucket import TokenBucket
from relay.tenants.model import Quota, Tenant, tenant_scope
from relay.tenants.refusals import DAILY_QUOTA_EXCEEDED, RATE_EXCEEDED, Refusal
from relay.tenants.window import RollingWindow


def credential_scope(name: str) -> str:
    """The quota scope of a credential with its own quota override."""
    return f"credential:{name}"


class TenantDefaults(Protocol):
    """The [tenants] section of relay.config (read by attribute)."""

    @property
    def max_24h_send(self) -> int: ...
    @property
    def max_send_rate(self) -> float: ...
    @property
    def sandbox_max_24h_send(self) -> int: ...
    @property
    def sandbox_max_send_rate(self) -> float: ...


@dataclass(frozen=True)
class Cap:
    """One scope's limits; 0: unlimited; a negative daily figure: nothing (a worker's
    share of a limit smaller than the number of workers, Rule 5)."""

    max_24h_send: int = 0
    max_send_rate: float = 0.0


@dataclass(frozen=True)
class Limits:
    """What reserve() checks: the tenant's cap, and the credential's when it has its own."""

    tenant: Cap
    credential: Cap | None = None


def _lower(a: float, b: float) -> float:
    """The lower of two limits where 0 is unlimited."""
    if a <= 0:
        return b
    if b <= 0:
        return a
    return min(a, b)


def effective_limits(defaults: TenantDefaults, tenant: Tenant,
                     override: Quota | None = None) -> Limits:
    """Rule 1: the limits a credential of `tenant` with quota `override` sends under."""
    base = Cap(
        tenant.quota.max_24h_send if tenant.quota.max_24h_send is not None
        else defaults.max_24h_send,
        tenant.quota.max_send_rate if tenant.quota.max_send_rate is not None
        else defaults.max_send_rate)
    sandbox = (Cap(defaults.sandbox_max_24h_send, defaults.sandbox_max_send_rate)
               if tenant.sandbox else Cap())

    def capped(cap: Cap) -> Cap:
        return Cap(int(_lower(cap.max_24h_send, sandbox.max_24h_send)),
                   _lower(cap.max_send_rate, sandbox.max_send_rate))

    if override is None or (override.max_24h_send is None and override.max_send_rate is None):
        return Limits(capped(base))
    own = Cap(override.max_24h_send if override.max_24h_send is not None
              else base.max_24h_send,
              override.max_send_rate if override.max_send_rate is not None
              else base.max_send_rate)
    return Limits(sandbox, capped(own))


def _split(total: int, worker: tuple[int, int]) -> int:
    """Worker i's share of a daily limit (the shares add up to `total`); -1 for a share of
    nothing, as 0 means unlimited."""
    if total <= 0:
        return total
    i, n = worker
    part = total // n + (1 if i < total % n else 0)
    return part if part > 0 else -1


def worker_share(limits: Limits, worker: tuple[int, int] | None) -> Limits:
    """Rule 5: the part of `limits` worker (i, N) enforces (None or N = 1: all of it)."""
    if worker is None or worker[1] <= 1:
        return limits
    n = worker[1]

    def part(cap: Cap) -> Cap:
        return Cap(_split(cap.max_24h_send, worker), cap.max_send_rate / n)
    return Limits(part(limits.tenant),
                  part(limits.credential) if limits.credential is not None else None)


def _full(cap: int, total: int, adding: int = 1) -> bool:
    """Would `adding` more recipients pass the daily figure `cap` (0: unlimited)?"""
    return cap != 0 and total + adding > max(cap, 0)


class Reservation:
    """One recipient's place in the daily windows (Rule 3). `entries`: (scope, second,
    count) it added, written by quotastore.commit_op() when its message is accepted."""

    __slots__ = ("book", "entries", "state")

    def __init__(self, book: QuotaBook, entries: list[tuple[str, int, int]]) -> None:
        self.book = book
        self.entries = entries
        self.state: Literal["held", "committed", "released"] = "held"

    def commit(self) -> None:
        """Its message was accepted: the counts stay."""
        if self.state == "held":
            self.state = "committed"

    def release(self) -> None:
        """Its message was not accepted: give the daily units back (idempotent)."""
        if self.state != "held":
            return
        self.state = "released"
        for scope, second, n in self.entries:
            window = self.book.windows.get(scope)
            if window is not None:
                window.remove(second, n)


class QuotaBook:
    """The daily windows and rate buckets of every scope, in one process."""

    def __init__(self) -> None:
        self.windows: dict[str, RollingWindow] = {}
        self.buckets: dict[str, TokenBucket] = {}

    def _window(self, scope: str) -> RollingWindow:
        w = self.windows.get(scope)
        if w is None:
            w = self.windows[scope] = RollingWindow()
        return w

    def _bucket(self, scope: str, rate: float, now: float) -> TokenBucket:
        b = self.buckets.get(scope)
        if b is None:
            b = self.buckets[scope] = TokenBucket(rate, now)
        elif b.rate != rate:
            b.set_rate(rate)
        return b

    def reserve(self, tenant: str, credential: str, limits: Limits, now: float,
                simulator: bool = False) -> Reservation | Refusal:
        """Rule 2: one recipient of `credential` in `tenant` at `now` (epoch seconds):
        a Reservation, or the 454 Refusal of the first limit it crosses (rate first)."""
        t_scope = tenant_scope(tenant)
        t_cap, c_cap = limits.tenant, limits.credential
        c_scope = credential_scope(credential) if c_cap is not None else ""
        t_bucket = (self._bucket(t_scope, t_cap.max_send_rate, now)
                    if t_cap.max_send_rate > 0 else None)
        c_bucket = (self._bucket(c_scope, c_cap.max_send_rate, now)
                    if c_cap is not None and c_cap.max_send_rate > 0 else None)
        if (t_bucket is not None and not t_bucket.ready(now)) or \
                (c_bucket is not None and not c_bucket.ready(now)):
            return RATE_EXCEEDED
        t_window = self._window(t_scope)
        c_window = self._window(c_scope) if c_cap is not None else None
        if not simulator and (
                _full(t_cap.max_24h_send, t_window.total(now))
                or (c_cap is not None and c_window is not None
                    and _full(c_cap.max_24h_send, c_window.total(now)))):
            return DAILY_QUOTA_EXCEEDED
        if t_bucket is not None:
            t_bucket.take(now)
        if c_bucket is not None:
            c_bucket.take(now)
        if simulator:
            return Reservation(self, [])
        entries = [(t_scope, t_window.add(now), 1)]
        if c_window is not None:
            entries.append((c_scope, c_window.add(now), 1))
        return Reservation(self, entries)

    def reserve_many(self, tenant: str, credential: str, limits: Limits, now: float,
                     simulator: Sequence[bool]) -> list[Reservation] | Refusal:
        """All of a message's recipients at once (one flag per recipient: to the mailbox
        simulator?), or none: for a message whose tenant is known only at DATA (the
        X-SES-TENANT header of a credential allowed several tenants). The rate needs one
        token and takes one per recipient, going into debt (bucket.take_many); the daily
        quota needs room for every recipient not to the simulator."""
        t_scope = tenant_scope(tenant)
        checked = [(t_scope, limits.tenant)]
        if limits.credential is not None:
            checked.append((credential_scope(credential), limits.credential))
        buckets = [self._bucket(scope, cap.max_send_rate, now)
                   for scope, cap in checked if cap.max_send_rate > 0]
        if not all(b.ready(now) for b in buckets):
            return RATE_EXCEEDED
        counted = sum(1 for sim in simulator if not sim)
        for scope, cap in checked:
            if counted and _full(cap.max_24h_send, self._window(scope).total(now),
                                 counted):
                return DAILY_QUOTA_EXCEEDED
        for b in buckets:
            b.take_many(now, len(simulator))
        out = []
        for sim in simulator:
            entries = [] if sim else [(scope, self._window(scope).add(now), 1)
                                      for scope, _ in checked]
            out.append(Reservation(self, entries))
        return out

    def sent_last_24h(self, scope: str, now: float) -> int:
        """Recipients counted in `scope` over the 24 hours up to `now` (SES's
        SentLast24Hours), with reservations not yet committed or released."""
        w = self.windows.get(scope)
        return w.total(now) if w is not None else 0

    def load(self, entries: Iterable[tuple[str, int, int]], now: float) -> None:
        """Add stored (scope, second, count) counts (quotastore.load() at start)."""
        for scope, second, n in entries:
            self._window(scope).add_at(second, n)
        for w in self.windows.values():
            w.expire(now)

    def sweep(self, now: float) -> None:
        """Forget the scopes with nothing in their window and a full rate bucket (bounded
        memory with many idle tenants); call now and then."""
        for scope in [s for s, w in self.windows.items() if w.total(now) == 0]:
            del self.windows[scope]
        for scope in [s for s, b in self.buckets.items() if b.tokens(now) >= b.capacity]:
            del self.buckets[scope]
