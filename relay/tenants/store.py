"""Tenants and reputation status records in the spool: sub-databases "tenants" and
"status" of the queue's LMDB environment.

"tenants": key = the tenant's name, value = its `Tenant` (msgpack). "status": key = a
scope ("tenant:NAME", "configuration-set:NAME"), value = its `StatusRecord`. The key
GENERATION_KEY of "tenants" (no tenant name can be it) counts the writes to either; every
op here adds one to it.

Writes are ops for the store's group commit (`await queue.write(op)` in the server,
`queue.write_now(op)` in the CLI, which opens the same spool from another process), so an
automatic status change can commit with whatever caused it (`set_status_op`).

Reads on the hot path (a tenant per RCPT) are dict lookups in `TenantStore`'s in-memory
view; it looks at the generation (one LMDB get) at most every `recheck` seconds of the
clock's monotonic time and reads both sub-databases again when it changed, so an edit by
`relay tenant` in another process shows within `recheck`. This process's own writes
through the TenantStore's helpers show at once.

The `default` tenant always exists (returned when not stored) and cannot be removed;
any other tenant starts in the sandbox (SES) unless told otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

import msgspec

from relay.clock import Clock
from relay.queue.store import QueueStore
from relay.tenants import quotastore, repstore
from relay.tenants.model import (
    DEFAULT_TENANT,
    SUPPRESSION_SCOPES,
    Quota,
    StatusRecord,
    SuppressionScope,
    Tenant,
    configuration_set_scope,
    tenant_scope,
    valid_tenant_name,
)

TENANTS_DB = "tenants"
STATUS_DB = "status"
QUOTA_DB = "quota"  # the quota book's counters (kept by relay's quota code, not here)
GENERATION_KEY = b"\x00generation"
# How often (monotonic seconds) the server's view looks at the generation.
RECHECK_SECONDS = 0.5

T = TypeVar("T")
_NO_QUOTA = Quota()

_enc = msgspec.msgpack.Encoder()
_tenant_dec = msgspec.msgpack.Decoder(Tenant)
_status_dec = msgspec.msgpack.Decoder(StatusRecord)


class TenantError(ValueError):
    """A refused tenant operation; one line naming the tenant, the value and what was
    expected."""


class NoSuchTenant(TenantError):
    """The named tenant does not exist (the admin API answers 404)."""


class TenantExists(TenantError):
    """The named tenant exists already (the admin API answers 409)."""


# ------------------------------------------------------------------ checks


def check_name(name: str) -> str:
    if not valid_tenant_name(name):
        raise TenantError(f"tenant name {name!r}: expected 1-64 letters, digits, '-' or '_'")
    return name


def check_quota(max_24h_send: int | None, max_send_rate: float | None) -> Quota:
    """A Quota from operator input (None: not set here), or TenantError naming the key."""
    if max_24h_send is not None and (isinstance(max_24h_send, bool)
                                     or not isinstance(max_24h_send, int)
                                     or max_24h_send < 0):
        raise TenantError(f"max_24h_send: expected a whole number >= 0 (0 = unlimited), "
                          f"got {max_24h_send!r}")
    if max_send_rate is not None and (isinstance(max_send_rate, bool)
                                      or not isinstance(max_send_rate, int | float)
                                      or not math.isfinite(max_send_rate)
                                      or max_send_rate < 0):
        raise TenantError(f"max_send_rate: expected a number >= 0 (recipients per second, "
                          f"0 = unlimited), got {max_send_rate!r}")
    return Quota(max_24h_send=max_24h_send,
                 max_send_rate=None if max_send_rate is None else float(max_send_rate))


def check_suppression_scope(scope: str) -> SuppressionScope:
    if scope not in SUPPRESSION_SCOPES:
        raise TenantError(f"suppression_scope: expected one of "
                          f"{', '.join(SUPPRESSION_SCOPES)}, got {scope!r}")
    return cast(SuppressionScope, scope)


def parse_scope(scope: str) -> tuple[str, str]:
    """("tenant" | "configuration-set", NAME) of a status scope key, or TenantError."""
    kind, sep, name = scope.partition(":")
    if sep and kind == "tenant" and valid_tenant_name(name):
        return kind, name
    if sep and kind == "configuration-set" and name and name.strip() == name:
        return kind, name
    raise TenantError(f"scope {scope!r}: expected \"tenant:NAME\" or "
                      "\"configuration-set:NAME\"")


def credentials_of(tenant: str, credentials: Mapping[str, Iterable[str]]) -> list[str]:
    """The credentials (name -> the tenants each may use) that may use `tenant`."""
    return sorted(name for name, tenants in credentials.items() if tenant in set(tenants))


# ------------------------------------------------------------------ ops (any write txn)


def _bump(txn: Any, db: Any) -> int:
    raw = txn.get(GENERATION_KEY, db=db)
    gen = (int.from_bytes(raw, "big") if raw is not None else 0) + 1
    txn.put(GENERATION_KEY, gen.to_bytes(8, "big"), db=db)
    return gen


def _get_tenant(txn: Any, db: Any, name: str) -> Tenant | None:
    raw = txn.get(name.encode("ascii"), db=db)
    if raw is not None:
        return _tenant_dec.decode(raw)
    return Tenant(DEFAULT_TENANT) if name == DEFAULT_TENANT else None


def set_status(dbs: Mapping[str, Any], scope: str, record: StatusRecord
               ) -> Callable[[Any], StatusRecord]:
    """An op storing `record` as the status of `scope`, for an automatic change (the
    reputation engine) inside the caller's own write transaction: `op(txn)`.
    `dbs`: the queue store's sub-database handles (`QueueStore.dbs`)."""
    parse_scope(scope)
    status_db, tenants_db = dbs[STATUS_DB], dbs[TENANTS_DB]

    def op(txn: Any) -> StatusRecord:
        txn.put(scope.encode("utf-8"), _enc.encode(record), db=status_db)
        _bump(txn, tenants_db)
        return record
    return op


def _status_in(txn: Any, db: Any, scope: str) -> StatusRecord:
    raw = txn.get(scope.encode("utf-8"), db=db)
    return _status_dec.decode(raw) if raw is not None else StatusRecord()


# ------------------------------------------------------------------ the store


class TenantStore:
    """Tenants and status records of one spool (see the module docstring).

    `recheck`: seconds between looks at the generation (0: every read, for the CLI;
    RECHECK_SECONDS in the server)."""

    def __init__(self, queue: QueueStore, clock: Clock, *, recheck: float = 0.0,
                 shared_status: Callable[[str], StatusRecord | None] | None = None) -> None:
        self.queue = queue
        self.clock = clock
        self.recheck = recheck
        # [cluster]: the status an operator last set on any node (relay.cluster.node's
        # shared_status, kept current by pub/sub); the newer of it and this node's own
        # record decides (a pause on one node holds on all, and so does a resume).
        self.shared_status = shared_status
        self._checked_at: float | None = None
        self._generation: int = -1
        self._tenants: dict[str, Tenant] = {}
        self._statuses: dict[str, StatusRecord] = {}

    # -------------------------------------------------------------- the view

    def _dbs(self) -> tuple[Any, Any]:
        return self.queue.named_db(TENANTS_DB), self.queue.named_db(STATUS_DB)

    def _fresh(self) -> None:
        now = self.clock.monotonic()
        checked = self._checked_at
        if checked is not None and 0 <= now - checked < self.recheck:
            return
        self._checked_at = now
        tenants_db, status_db = self._dbs()
        raw = self.queue.read(lambda txn: txn.get(GENERATION_KEY, db=tenants_db))
        gen = int.from_bytes(raw, "big") if raw is not None else 0
        if gen != self._generation:
            self._load(tenants_db, status_db)

    def _load(self, tenants_db: Any, status_db: Any) -> None:
        def read(txn: Any) -> tuple[int, dict[str, Tenant], dict[str, StatusRecord]]:
            raw = txn.get(GENERATION_KEY, db=tenants_db)
            tenants: dict[str, Tenant] = {}
            with txn.cursor(db=tenants_db) as cur:
                for k, v in cur.iternext():
                    if bytes(k) != GENERATION_KEY:
                        tenants[bytes(k).decode("ascii")] = _tenant_dec.decode(v)
            statuses: dict[str, StatusRecord] = {}
            with txn.cursor(db=status_db) as cur:
                for k, v in cur.iternext():
                    statuses[bytes(k).decode("utf-8")] = _status_dec.decode(v)
            return (int.from_bytes(raw, "big") if raw is not None else 0), tenants, statuses
        gen, tenants, statuses = self.queue.read(read)
        tenants.setdefault(DEFAULT_TENANT, Tenant(DEFAULT_TENANT))
        # Replaced whole, never changed in place: a reader on another thread sees one
        # version or the next.
        self._tenants, self._statuses, self._generation = tenants, statuses, gen

    def invalidate(self) -> None:
        """Look at the generation at the next read (call after committing an op of
        this module run inside another transaction, e.g. `set_status_op`)."""
        self._checked_at = None

    def refresh(self) -> None:
        """Read both sub-databases now (SIGHUP, tests)."""
        self._load(*self._dbs())
        self._checked_at = self.clock.monotonic()

    def get(self, name: str) -> Tenant | None:
        """The tenant named `name` (`default` always), or None. The hot path: a dict
        lookup, with at most one LMDB get every `recheck` seconds."""
        self._fresh()
        return self._tenants.get(name)

    def tenants(self) -> dict[str, Tenant]:
        """Every tenant by name, `default` included, sorted by name."""
        self._fresh()
        return dict(sorted(self._tenants.items()))

    def status(self, scope: str) -> StatusRecord:
        """The reputation status of `scope` (Healthy when none is stored)."""
        self._fresh()
        return self._statuses.get(scope) or _HEALTHY

    def tenant_status(self, name: str) -> StatusRecord:
        return self.status(tenant_scope(name))

    def configuration_set_status(self, name: str) -> StatusRecord:
        return self.status(configuration_set_scope(name))

    def statuses(self) -> dict[str, StatusRecord]:
        """Every stored status record by scope."""
        self._fresh()
        return dict(self._statuses)

    def paused(self, tenant: str, configuration_set: str = "") -> StatusRecord | None:
        """The Paused record that stops a message of `tenant` (its own first, then its
        configuration set's), or None. For the RCPT check and the scheduler's hold."""
        self._fresh()
        scopes = [tenant_scope(tenant)]
        if configuration_set:
            scopes.append(configuration_set_scope(configuration_set))
        for scope in scopes:
            rec = self._statuses.get(scope)
            if self.shared_status is not None:
                # The newer of this node's record and the one an operator published to
                # the cluster (a pause on node B, a resume on node A: the resume).
                shared = self.shared_status(scope)
                if shared is not None and (rec is None or shared.changed_at >= rec.changed_at):
                    rec = shared
            if rec is not None and rec.paused:
                return rec
        return None

    # -------------------------------------------------------------- ops

    def add_op(self, name: str, *, sandbox: bool | None = None, quota: Quota = _NO_QUOTA,
               suppression_scope: str = "account") -> Callable[[Any], Tenant]:
        """Create a tenant. `sandbox` None: in the sandbox unless it is `default`."""
        check_name(name)
        check_quota(quota.max_24h_send, quota.max_send_rate)
        scope = check_suppression_scope(suppression_scope)
        now = self.clock.now()
        tenants_db, _ = self._dbs()
        in_sandbox = name != DEFAULT_TENANT if sandbox is None else sandbox

        def op(txn: Any) -> Tenant:
            key = name.encode("ascii")
            if name == DEFAULT_TENANT or txn.get(key, db=tenants_db) is not None:
                raise TenantExists(f"tenant {name!r} already exists")
            tenant = Tenant(name, created_at=now, sandbox=in_sandbox, quota=quota,
                            suppression_scope=scope)
            txn.put(key, _enc.encode(tenant), db=tenants_db)
            _bump(txn, tenants_db)
            return tenant
        return op

    def update_op(self, name: str, change: Callable[[Tenant], Tenant]
                  ) -> Callable[[Any], Tenant]:
        """Replace tenant `name` with `change(tenant)` (NoSuchTenant when absent)."""
        tenants_db, _ = self._dbs()

        def op(txn: Any) -> Tenant:
            old = _get_tenant(txn, tenants_db, name)
            if old is None:
                raise NoSuchTenant(f"no tenant {name!r}")
            new = msgspec.structs.replace(change(old), name=old.name)
            txn.put(name.encode("ascii"), _enc.encode(new), db=tenants_db)
            _bump(txn, tenants_db)
            return new
        return op

    def set_quota_op(self, name: str, quota: Quota) -> Callable[[Any], Tenant]:
        check_quota(quota.max_24h_send, quota.max_send_rate)
        return self.update_op(name, lambda t: msgspec.structs.replace(t, quota=quota))

    def production_op(self, name: str) -> Callable[[Any], Tenant]:
        """Take tenant `name` out of the sandbox (records production_at)."""
        now = self.clock.now()

        def change(t: Tenant) -> Tenant:
            if not t.sandbox:
                return t
            return msgspec.structs.replace(t, sandbox=False, production_at=now)
        return self.update_op(name, change)

    def remove_op(self, name: str, credentials: Mapping[str, Iterable[str]]
                  ) -> Callable[[Any], Tenant]:
        """Remove tenant `name` and its status record. Refused for `default` and while
        credentials (name -> the tenants each may use) still belong to it."""
        if name == DEFAULT_TENANT:
            raise TenantError(f"tenant {DEFAULT_TENANT!r} cannot be removed (every "
                              "credential without a tenant belongs to it)")
        owners = credentials_of(name, credentials)
        if owners:
            raise TenantError(
                f"tenant {name!r} still has credentials: {', '.join(owners)} (move them "
                "with `relay user tenant NAME TENANT` or remove them first)")
        tenants_db, status_db = self._dbs()

        def op(txn: Any) -> Tenant:
            old = _get_tenant(txn, tenants_db, name)
            if old is None:
                raise NoSuchTenant(f"no tenant {name!r}")
            txn.delete(name.encode("ascii"), db=tenants_db)
            txn.delete(tenant_scope(name).encode("utf-8"), db=status_db)
            _bump(txn, tenants_db)
            return old
        return op

    def _scope_op(self, scope: str, change: Callable[[StatusRecord], StatusRecord]
                  ) -> Callable[[Any], StatusRecord]:
        kind, name = parse_scope(scope)
        tenants_db, status_db = self._dbs()

        def op(txn: Any) -> StatusRecord:
            if kind == "tenant" and _get_tenant(txn, tenants_db, name) is None:
                raise NoSuchTenant(f"no tenant {name!r}")
            rec = change(_status_in(txn, status_db, scope))
            return set_status({TENANTS_DB: tenants_db, STATUS_DB: status_db},
                              scope, rec)(txn)
        return op

    def pause_op(self, scope: str, *, who: str, reason: str = ""
                 ) -> Callable[[Any], StatusRecord]:
        """An operator's pause of `scope`: Paused, not automatic, who and when and why;
        the reputation figures of the record are kept."""
        now = self.clock.now()
        return self._scope_op(scope, lambda old: msgspec.structs.replace(
            old, status="Paused", reason=reason or "paused by the operator",
            automatic=False, changed_at=now, changed_by=who))

    def resume_op(self, scope: str, *, who: str, reason: str = ""
                  ) -> Callable[[Any], StatusRecord]:
        """An operator's resume of `scope`: Healthy, who and when, and a fresh
        reputation window from now (last_fresh_start)."""
        now = self.clock.now()
        change = self._scope_op(scope, lambda old: msgspec.structs.replace(
            old, status="Healthy", reason=reason or "resumed by the operator",
            automatic=False, changed_at=now, changed_by=who, last_fresh_start=now))
        # The fresh start: the counts that caused a pause are forgotten with it.
        forget = repstore.reset_op(self.queue, scope) if "reputation" in self.queue.dbs \
            else None

        def op(txn: Any) -> StatusRecord:
            rec = change(txn)
            if forget is not None:
                forget(txn)
            return rec
        return op

    def set_status_op(self, scope: str, record: StatusRecord
                      ) -> Callable[[Any], StatusRecord]:
        """`set_status` bound to this store's spool."""
        tenants_db, status_db = self._dbs()
        return set_status({TENANTS_DB: tenants_db, STATUS_DB: status_db}, scope, record)

    # -------------------------------------------------------------- run an op

    def write_now(self, op: Callable[[Any], T]) -> T:
        """Commit `op` synchronously (the CLI) and show it in this view at once."""
        try:
            return self.queue.write_now(op)
        finally:
            self.invalidate()

    async def write(self, op: Callable[[Any], T]) -> T:
        """Commit `op` with the store's group commit (the server) and show it at once."""
        try:
            return await self.queue.write(op)
        finally:
            self.invalidate()


_HEALTHY = StatusRecord()


def sent_last_24_hours(queue: QueueStore, tenant: str) -> int:
    """SentLast24Hours of `tenant` for `relay tenant show` and the admin API: the
    recipients committed in the last 24 hours as stored (sub-database QUOTA_DB, the sum of
    every process on the spool; the simulator's never counted)."""
    if QUOTA_DB not in queue.dbs:
        return 0
    return quotastore.sent_last_24h(queue, tenant_scope(tenant), queue.clock.now())
