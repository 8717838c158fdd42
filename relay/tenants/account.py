"""The account model at submission: what the SMTP session asks about a transaction.

`AccountGate` answers, for one SMTP transaction (MAIL … DATA) of one credential:
- at MAIL FROM, `begin()`: the credential's own tenant, refused with SES's
  `554 5.7.1 Sending paused for this account` while that tenant is paused;
- at each RCPT TO, `recipient()`: a sandbox tenant may mail only its verified identities
  and the mailbox simulator; then one unit of the send rate and of the rolling 24-hour
  quota (relay/tenants/quota.py) is reserved for the recipient, or SES's 454 answers that
  exact recipient, so a multi-recipient message is never half queued past a limit and
  nothing is queued for the refused one;
- a platform credential (allowed several tenants) names the message's tenant with
  `X-SES-TENANT`, known only at the end of DATA, so for it MAIL and RCPT check nothing
  (its own tenant's pause, sandbox or quota must not stop a message for another one);
- at the end of DATA, `settle_tenant()`: naming a tenant the credential may not use is
  refused; a platform credential's message (for the named tenant, else its own) has
  every recipient reserved at once (all or none), its tenant's pause and sandbox
  checked; a message of a one-tenant credential keeps what RCPT reserved;
- `commit_op()`: the reservations' counts, written in the accepting transaction (the
  message's own group commit), then `accepted()`; `release()` on RSET, a refused or
  failed DATA, or a disconnect (idempotent).

Refusals are `Refusal`s (relay/tenants/refusals.py); the session turns one into its
reply. A submission without a credential (a trusted network) belongs to `default`. Every
refusal is told to `on_refusal(tenant, reason)` (metrics). Blocking work: none (dict
lookups and arithmetic; the tenant store re-reads the spool at most every half second).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay.queue.store import QueueStore
from relay.tenants import quotastore
from relay.tenants.access import credential_tenants, resolve_tenant
from relay.tenants.model import DEFAULT_TENANT, Quota, Tenant
from relay.tenants.quota import (
    Limits,
    QuotaBook,
    Reservation,
    TenantDefaults,
    effective_limits,
    worker_share,
)
from relay.tenants.refusals import PAUSED_ACCOUNT, Refusal, paused_configuration_set
from relay.tenants.sandbox import decide_sandbox_recipient
from relay.tenants.store import TenantStore


class SharedQuotas(Protocol):
    """The cluster's quotas (relay.cluster.quota.SharedQuota), as the gate uses them."""

    async def reserve(self, tenant: str, credential: str, limits: Limits,
                      simulator: bool = False) -> Any: ...

    async def reserve_many(self, tenant: str, credential: str, limits: Limits,
                           simulator: Sequence[bool], debt: bool = True) -> Any: ...


class CredentialRecord(Protocol):
    """What the gate reads of a credential (relay.users.UserRecord)."""

    @property
    def tenant(self) -> str: ...

    @property
    def allowed_tenants(self) -> list[str]: ...

    @property
    def max_24h_send(self) -> int | None: ...

    @property
    def max_send_rate(self) -> float | None: ...


@dataclass
class Transaction:
    """One SMTP transaction's account state, kept by the session from MAIL to the end of
    DATA (or RSET)."""

    tenant: str
    credential: str
    record: CredentialRecord | None
    reservations: list[Reservation] = field(default_factory=list)
    simulator: list[bool] = field(default_factory=list)  # per reserved recipient
    # A platform credential's: its tenant is settled at DATA, nothing checked before.
    deferred: bool = False

    def release(self) -> None:
        for r in self.reservations:
            r.release()
        self.reservations.clear()
        self.simulator.clear()


@dataclass(frozen=True)
class _Move:
    """A message settled into `tenant` at DATA: its recipients still to reserve there."""

    tenant: str
    record: Tenant
    simulator: list[bool]


class AccountGate:
    def __init__(self, tenants: TenantStore, quotas: QuotaBook, store: QueueStore, *,
                 credential: Callable[[str], CredentialRecord | None],
                 defaults: Callable[[], TenantDefaults],
                 verified: Callable[[str, str], bool],
                 is_simulator: Callable[[str], bool],
                 now: Callable[[], float],
                 on_refusal: Sequence[Callable[[str, str], None]] = (),
                 on_accepted: Sequence[Callable[[str, int], None]] = (),
                 worker: tuple[int, int] | None = None,
                 shared: SharedQuotas | None = None) -> None:
        """`credential(name)`: the credential's record; `defaults()`: the [tenants]
        settings; `verified(tenant, identity)`: is `identity` (an address or a domain) a
        verified identity `tenant` may use; `is_simulator(address)`; `worker`: (index,
        count) in multi-process mode, whose share of each limit this process enforces
        (relay/tenants/quota.py, Rule 5); `shared`: the cluster's quotas in Redis
        ([cluster] set: relay.cluster.quota.SharedQuota), reserved by the async
        `recipient_shared()` instead of this process's book."""
        self.tenants = tenants
        self.quotas = quotas
        self.store = store
        self.credential = credential
        self.defaults = defaults
        self.verified = verified
        self.is_simulator = is_simulator
        self.now = now
        self.on_refusal = list(on_refusal)
        self.on_accepted = list(on_accepted)
        self.worker = worker
        self.shared = shared

    def _refused(self, tenant: str, reason: str, refusal: Refusal) -> Refusal:
        for observe in self.on_refusal:
            observe(tenant, reason)
        return refusal

    def _tenant(self, name: str) -> Tenant:
        return self.tenants.get(name) or Tenant(name)

    # ------------------------------------------------------------------ MAIL

    def begin(self, credential: str | None) -> Transaction | Refusal:
        """A new transaction of `credential` (None: a trusted network, no credential)."""
        record = self.credential(credential) if credential else None
        tenant = (record.tenant if record is not None else "") or DEFAULT_TENANT
        if record is not None and len(credential_tenants(tenant, record.allowed_tenants)) > 1:
            return Transaction(tenant, credential or "", record, deferred=True)
        if self.tenants.paused(tenant) is not None:
            return self._refused(tenant, "paused", PAUSED_ACCOUNT)
        return Transaction(tenant, credential or "", record)

    # ------------------------------------------------------------------ RCPT

    def _cluster_limits(self, txn: Transaction, tenant: Tenant) -> Any:
        """The limits of `txn`'s credential for `tenant`: the credential's own quota over
        the tenant's and the defaults. The whole limits, as the cluster counts them."""
        rec = txn.record
        override = (Quota(rec.max_24h_send, rec.max_send_rate)
                    if rec is not None and (rec.max_24h_send is not None
                                            or rec.max_send_rate is not None) else None)
        return effective_limits(self.defaults(), tenant, override)

    def _limits(self, txn: Transaction, tenant: Tenant) -> Any:
        """This worker's share of them (relay/workers.py), for the local quota book."""
        return worker_share(self._cluster_limits(txn, tenant), self.worker)

    def _sandbox(self, txn: Transaction, tenant: Tenant, address: str,
                 simulator: bool) -> Refusal | None:
        if tenant.sandbox:
            refusal = decide_sandbox_recipient(
                address, lambda identity: self.verified(txn.tenant, identity),
                lambda a: simulator)
            if refusal is not None:
                return self._refused(txn.tenant, "sandbox", refusal)
        return None

    def _reserved(self, txn: Transaction, got: Any, simulator: bool) -> Refusal | None:
        if isinstance(got, Refusal):
            return self._refused(txn.tenant, "rate" if "rate" in got.text else "daily_quota",
                                 got)
        txn.reservations.append(got)
        txn.simulator.append(simulator)
        return None

    def recipient(self, txn: Transaction, address: str) -> Refusal | None:
        """Check and reserve one recipient of `txn`; the refusal of this recipient, or
        None (then it is counted until commit or release)."""
        if txn.deferred:
            return None  # settle_tenant() checks the whole message at DATA
        tenant = self._tenant(txn.tenant)
        simulator = self.is_simulator(address)
        refusal = self._sandbox(txn, tenant, address, simulator)
        if refusal is not None:
            return refusal
        got = self.quotas.reserve(txn.tenant, txn.credential, self._limits(txn, tenant),
                                  self.now(), simulator)
        return self._reserved(txn, got, simulator)

    def counts_in_cluster(self, txn: Transaction) -> bool:
        """Whether `txn`'s recipients are counted in the cluster's Redis, so that
        `recipient_shared()` must be awaited; otherwise it is exactly `recipient()`, which
        a caller on the loop (the SMTP session's RCPT) runs without a task."""
        return self.shared is not None and not txn.deferred

    async def recipient_shared(self, txn: Transaction, address: str) -> Refusal | None:
        """`recipient()` with the quota counted cluster-wide in Redis (`shared`; without
        it, exactly `recipient()`). The whole limit, not a worker's share: Redis is one."""
        if self.shared is None or txn.deferred:  # counts_in_cluster(), narrowed for mypy
            return self.recipient(txn, address)
        tenant = self._tenant(txn.tenant)
        simulator = self.is_simulator(address)
        refusal = self._sandbox(txn, tenant, address, simulator)
        if refusal is not None:
            return refusal
        limits = self._cluster_limits(txn, tenant)
        got = await self.shared.reserve(txn.tenant, txn.credential, limits, simulator)
        return self._reserved(txn, got, simulator)

    async def recipients_shared(self, txn: Transaction, addresses: Sequence[str]
                                ) -> Refusal | None:
        """Every recipient of one request at once (the SES API): each one's sandbox check,
        then the quota of all of them in ONE call to the cluster (`shared`), all or none;
        without `shared`, `recipient()` for each. The refusal, or None (all reserved)."""
        if self.shared is None or txn.deferred:  # counts_in_cluster(), narrowed for mypy
            for address in addresses:
                refusal = self.recipient(txn, address)
                if refusal is not None:
                    return refusal
            return None
        tenant = self._tenant(txn.tenant)
        simulator = [self.is_simulator(a) for a in addresses]
        for address, sim in zip(addresses, simulator, strict=True):
            refusal = self._sandbox(txn, tenant, address, sim)
            if refusal is not None:
                return refusal
        limits = self._cluster_limits(txn, tenant)
        got = await self.shared.reserve_many(txn.tenant, txn.credential, limits, simulator,
                                             debt=False)
        if isinstance(got, Refusal):
            return self._refused(txn.tenant, "rate" if "rate" in got.text else "daily_quota",
                                 got)
        txn.reservations.extend(got)
        txn.simulator.extend(simulator)
        return None

    # ------------------------------------------------------------------ DATA

    def settle_tenant(self, txn: Transaction, header_value: str | None,
                      recipients: Sequence[str]) -> Refusal | None:
        """The message's tenant from `X-SES-TENANT` (None: not given); when it names
        another tenant than the transaction's, or the credential is a platform's (its
        recipients not yet checked), check and reserve every recipient there at once."""
        move = self._settling(txn, header_value, recipients)
        if not isinstance(move, _Move):
            return move
        resolved, tenant, simulator = move.tenant, move.record, move.simulator
        moved = Transaction(resolved, txn.credential, txn.record)
        got = self.quotas.reserve_many(resolved, txn.credential, self._limits(moved, tenant),
                                       self.now(), simulator)
        return self._settled(txn, resolved, simulator, got)

    async def settle_tenant_shared(self, txn: Transaction, header_value: str | None,
                                   recipients: Sequence[str]) -> Refusal | None:
        """`settle_tenant()` with the quota counted cluster-wide in Redis (`shared`: one
        call for all the recipients; without it, exactly `settle_tenant()`)."""
        if self.shared is None:
            return self.settle_tenant(txn, header_value, recipients)
        move = self._settling(txn, header_value, recipients)
        if not isinstance(move, _Move):
            return move
        resolved, tenant, simulator = move.tenant, move.record, move.simulator
        got = await self.shared.reserve_many(
            resolved, txn.credential, self._cluster_limits(txn, tenant),
            simulator)
        return self._settled(txn, resolved, simulator, got)

    def _settling(self, txn: Transaction, header_value: str | None,
                  recipients: Sequence[str]
                  ) -> Refusal | _Move | None:
        """settle_tenant's checks: a refusal, None (nothing to settle), or the tenant to
        reserve the recipients in (its name, record, and which go to the simulator)."""
        named = header_value is not None and bool(header_value.strip())
        if not named and not txn.deferred:
            return None
        rec = txn.record
        allowed = credential_tenants(rec.tenant, rec.allowed_tenants) if rec is not None \
            else [DEFAULT_TENANT]
        resolved = resolve_tenant(allowed, txn.tenant, header_value)
        if isinstance(resolved, Refusal):
            return self._refused(txn.tenant, "tenant", resolved)
        if resolved == txn.tenant and not txn.deferred:
            return None
        if self.tenants.paused(resolved) is not None:
            return self._refused(resolved, "paused", PAUSED_ACCOUNT)
        tenant = self._tenant(resolved)
        simulator = [self.is_simulator(a) for a in recipients]
        if tenant.sandbox:
            for address in recipients:
                refusal = decide_sandbox_recipient(
                    address, lambda identity: self.verified(resolved, identity),
                    self.is_simulator)
                if refusal is not None:
                    return self._refused(resolved, "sandbox", refusal)
        return _Move(resolved, tenant, simulator)

    def _settled(self, txn: Transaction, resolved: str, simulator: list[bool],
                 got: Any) -> Refusal | None:
        if isinstance(got, Refusal):
            return self._refused(resolved, "rate" if "rate" in got.text else "daily_quota",
                                 got)
        txn.release()
        txn.tenant = resolved
        txn.deferred = False
        txn.reservations.extend(got)
        txn.simulator.extend(simulator)
        return None

    def configuration_set_paused(self, txn: Transaction, name: str) -> Refusal | None:
        """A message of a paused configuration set is refused (SES's wording)."""
        if name and self.tenants.paused(txn.tenant, name) is not None:
            if self.tenants.paused(txn.tenant) is None:
                return self._refused(txn.tenant, "paused", paused_configuration_set(name))
            return self._refused(txn.tenant, "paused", PAUSED_ACCOUNT)
        return None

    # ------------------------------------------------------------------ accept

    def commit_op(self, txn: Transaction) -> Callable[[Any], None]:
        """The reservations' counts, to run inside the accepting write transaction."""
        return quotastore.commit_op(self.store, list(txn.reservations))

    def accepted(self, txn: Transaction) -> None:
        """The message is durable: its reservations stay counted."""
        counted = 0
        for r, sim in zip(txn.reservations, txn.simulator, strict=True):
            r.commit()
            counted += 0 if sim else 1
        txn.reservations.clear()
        txn.simulator.clear()
        for observe in self.on_accepted:
            observe(txn.tenant, counted)
