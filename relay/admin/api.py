"""The admin HTTP API (aiohttp): JSON under /api/, /metrics, /openapi.json, the dashboard at /.

Rules: every /api/ request needs `Authorization: Bearer <token>` (401 otherwise; tokens
from relay.admin.tokens); wrong input is a 400 `{"error": ..., "field": ...}` naming the
query parameter, path part or JSON key (query strings and JSON bodies are decoded into
the Structs of relay.admin.params; path parts are checked here); unknown ids are 404.
Responses never contain a secret: no password hash, no token or token hash, no DKIM
private key, no message body.
Queue actions go through the store's group committer like the scheduler's own writes.
Suppression reads and writes relay/suppression's list, tenants relay/tenants/store.py
(both in the queue's LMDB environment).
Must not: block the event loop on slow work (scrypt runs in a thread).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from msgspec import UnsetType

from relay.admin.metrics import CONTENT_TYPE, Metrics
from relay.admin.openapi import document
from relay.admin.params import (
    BadInput,
    EventsQuery,
    Params,
    QueueQuery,
    StatusChange,
    SuppressionAdd,
    SuppressionQuery,
    TenantAdd,
    UserAdd,
    from_body,
    from_query,
)
from relay.admin.tokens import TokenStore
from relay.clock import Clock
from relay.config import Config
from relay.events.log import EventLog, tail
from relay.events.model import bounce_event, iso, subscription_event
from relay.identity.model import IdentityError, check_pattern
from relay.queue.records import PENDING_STATES, Action, MessageRecord, RecipientRecord, State
from relay.queue.store import QueueStore
from relay.suppression.policy import SUPPRESSION_REASONS, normalize, valid_address
from relay.suppression.store import Entry, SuppressionList
from relay.tenants.model import StatusRecord, Tenant, tenant_scope
from relay.tenants.quota import effective_limits
from relay.tenants.store import (
    NoSuchTenant,
    TenantError,
    TenantExists,
    TenantStore,
    check_quota,
    sent_last_24_hours,
)
from relay.users import (
    UserError,
    UserStore,
    check_name,
    check_new_password,
    generate_password,
)
from relay.warmup import gate as gate_mod
from relay.warmup.store import total_states

VERSION = "1"
HISTORY_POINTS = 360
_EVENT_TAIL_BYTES = 8 << 20   # /api/events reads at most the last 8 MiB of the log


@dataclass
class AdminContext:
    """What the API reads and acts on; built by RelayApp (or a test) from live objects."""

    config: Callable[[], Config]
    store: QueueStore
    users: UserStore
    tokens: TokenStore
    events: EventLog
    metrics: Metrics
    clock: Clock
    wake_scheduler: Callable[[], None] = lambda: None
    identities: Any = None                      # relay.identity.store.IdentityStore
    dkim_keys: Any = None                       # relay.dkim.keys.KeyStore
    warmup_gate: Any = None                     # relay.warmup.gate.WarmupGate
    listeners: Callable[[], list[dict[str, Any]]] = list
    verp: Any = None                            # relay.verp.Verp: List-Unsubscribe tokens
    # The process's tenant store (its cache is the SMTP hot path's); None: the API makes
    # its own on `store`.
    tenants: TenantStore | None = None
    # SentLast24Hours of a tenant (the quota book's reader; 0 until it is wired).
    sent_last_24_hours: Callable[[QueueStore, str], int] = sent_last_24_hours
    started_at: float = 0.0                     # clock.now() at start (0: set in __post_init__)
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))

    def __post_init__(self) -> None:
        if not self.started_at:
            self.started_at = self.clock.now()

    # -------------------------------------------------------------- shared readers

    def depth(self) -> dict[str, int]:
        counts = self.store.count_by_state()
        return {s: counts.get(s, 0) for s in PENDING_STATES}

    def oldest_age(self) -> float | None:
        gen = self.store.messages()
        try:
            first = next(gen, None)
        finally:
            close = getattr(gen, "close", None)  # a generator: end its read transaction now
            if close is not None:
                close()
        if first is None:
            return None
        return max(0.0, self.clock.now() - first[0].received_at)

    def warmup_status(self) -> list[dict[str, Any]]:
        gate = self.warmup_gate
        if gate is None:
            return []
        if gate.share is not None:
            # server.workers = N: this process counts its share only; show each IP whole
            # (every worker's counts, the full caps), as `relay warmup status` does.
            gate = gate_mod.from_config(self.config(), total_states(self.store))
        now = self.clock.now()
        rows: list[dict[str, Any]] = gate.status(now)
        for row in rows:
            pool = gate.pools.get(row["pool"])
            plan = getattr(pool, "plan", None)
            if plan is not None:
                day = int(row.get("day") or 1)
                days = max(len(plan.caps), day + 3)
                row["plan_caps"] = [plan.cap(d) for d in range(1, days + 1)]
            else:
                row["plan_caps"] = []
        return rows

    def tenant_store(self) -> TenantStore:
        if self.tenants is None:
            self.tenants = TenantStore(self.store, self.clock)
        return self.tenants

    def sample(self) -> dict[str, Any]:
        point: dict[str, Any] = {"t": self.clock.now(), **self.depth()}
        return point


# ------------------------------------------------------------------ helpers


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status,
                        content_type="application/json")


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return _json(body, status)


P = TypeVar("P", bound=Params)


def _query(request: web.Request, cls: type[P]) -> P:
    return from_query(cls, request.query.items())


async def _body(request: web.Request, cls: type[P]) -> P:
    try:
        data = await request.json(loads=msgspec.json.decode)
    except RecursionError:
        # msgspec stops at the interpreter's recursion limit: a hostile body, not a bug.
        raise BadInput("body", "body: JSON nested too deeply (expected a flat JSON "
                               "object of strings, numbers and lists)") from None
    except (msgspec.DecodeError, ValueError):
        raise BadInput("body", "body: expected a JSON object") from None
    return from_body(cls, data)


def _message_row(msg: MessageRecord, rcpts: list[RecipientRecord]) -> dict[str, Any]:
    return {
        "id": msg.id, "received_at": iso(msg.received_at), "sender": msg.sender,
        "size": msg.size, "subject": msg.headers.get("Subject", ""),
        "auth_user": msg.auth_user, "client_ip": msg.client_ip,
        "recipients": [
            {"address": r.address, "domain": r.domain, "state": r.state.value,
             "attempts": r.attempts,
             "next_attempt_at": iso(r.next_attempt_at) if not r.state.final else None,
             "last_attempt_at": iso(r.last_attempt_at) if r.last_attempt_at else None,
             "last_response": r.last_response, "remote_mta": r.remote_mta}
            for r in rcpts],
    }


def _ctx(request: web.Request) -> AdminContext:
    ctx: AdminContext = request.app[CTX]
    return ctx


CTX: web.AppKey[AdminContext] = web.AppKey("relay_admin", AdminContext)

# ------------------------------------------------------------------ queue


async def queue_list(request: web.Request) -> web.Response:
    query = _query(request, QueueQuery)
    ctx = _ctx(request)
    state = None if isinstance(query.state, UnsetType) else query.state
    limit = query.limit
    # Normalised before it is checked (" Example.COM" is a domain), so checked here.
    domain = query.domain.strip().lower() or None
    if domain is not None and ("@" in domain or " " in domain or "." not in domain):
        raise BadInput("domain", f"domain: expected a domain name like example.com, "
                                 f"got {domain!r}")
    rows: list[dict[str, Any]] = []
    total = 0
    for msg, rcpts in ctx.store.messages():
        if domain and not any(r.domain == domain for r in rcpts):
            continue
        if state and not any(r.state.value == state for r in rcpts):
            continue
        total += 1
        if len(rows) < limit:
            rows.append(_message_row(msg, rcpts))
    return _json({"messages": rows, "count": len(rows), "matched": total})


def _message_id(request: web.Request) -> str:
    mid = request.match_info["id"]
    if len(mid) != 20 or not all(c in "0123456789abcdef" for c in mid):
        raise BadInput("id", f"id: expected a 20-character queue id, got {mid!r}")
    return mid


async def queue_show(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    mid = _message_id(request)
    msg = ctx.store.message(mid)
    if msg is None:
        return _error(404, f"no queued message with id {mid!r}", "id")
    return _json(_message_row(msg, ctx.store.recipients(mid)))


async def _queue_action(request: web.Request, what: str) -> web.Response:
    ctx = _ctx(request)
    mid = _message_id(request)
    store = ctx.store
    now = ctx.clock.now()
    try:
        if what == "delete":
            await store.write(store.delete_op(mid))
            return _json({"id": mid, "deleted": True})
        if what == "retry":
            settled = await store.write(store.operator_op(mid, Action.RETRY, now))
            ctx.wake_scheduler()
            return _json({"id": mid, "retried": len(settled)})
        settled = await store.write(store.operator_op(
            mid, Action.BOUNCE, now, "554 5.0.0 bounced by the operator"))
    except KeyError:
        return _error(404, f"no queued message with id {mid!r}", "id")
    if settled:
        ctx.events.emit([bounce_event(
            settled[0].message, [s.recipient.address for s in settled],
            settled[0].recipient.last_response, now, ctx.config().server.hostname)])
    return _json({"id": mid, "bounced": len(settled)})


async def queue_retry(request: web.Request) -> web.Response:
    return await _queue_action(request, "retry")


async def queue_delete(request: web.Request) -> web.Response:
    return await _queue_action(request, "delete")


async def queue_bounce(request: web.Request) -> web.Response:
    return await _queue_action(request, "bounce")


# ------------------------------------------------------------------ suppression


def _entry_row(e: Entry) -> dict[str, Any]:
    return {"address": e.address, "reason": e.reason, "created_at": iso(e.created_at),
            "message_id": e.message_id, "diagnostic": e.diagnostic}


def _address(raw: str, field_name: str = "address") -> str:
    address = normalize(raw)
    if not valid_address(address):
        raise BadInput(field_name, f"{field_name}: expected an email address, got {raw!r}")
    return address


async def suppression_list(request: web.Request) -> web.Response:
    """Paged by offset (the list is in address order); filter by reason and prefix."""
    query = _query(request, SuppressionQuery)
    ctx = _ctx(request)
    reason = None if isinstance(query.reason, UnsetType) else query.reason
    limit, offset, prefix = query.limit, query.offset, query.prefix

    def page() -> tuple[list[dict[str, Any]], int]:
        rows: list[dict[str, Any]] = []
        matched = 0
        for e in SuppressionList(ctx.store).entries(reason=reason, prefix=prefix):
            if offset <= matched < offset + limit:
                rows.append(_entry_row(e))
            matched += 1
        return rows, matched

    rows, matched = await asyncio.to_thread(page)
    following = offset + len(rows)
    return _json({"entries": rows, "count": len(rows), "matched": matched, "offset": offset,
                  "limit": limit, "next_offset": following if following < matched else None})


async def suppression_add(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    data = await _body(request, SuppressionAdd)
    address = _address(data.address)
    reason = data.reason.upper()  # read case-insensitively, so checked here
    if reason not in SUPPRESSION_REASONS:
        raise BadInput("reason", f"reason: expected one of {', '.join(SUPPRESSION_REASONS)}, "
                                 f"got {data.reason!r}")
    lst = SuppressionList(ctx.store)
    added = await ctx.store.write(lst.add_op(
        [Entry(address, reason, ctx.clock.now(), "", "added through the admin API")]))
    return _json({"address": address, "reason": reason, "added": bool(added)},
                 201 if added else 200)


async def suppression_remove(request: web.Request) -> web.Response:
    """No syntax check (unlike add): whatever is on the list can be taken off it, an
    entry that is no valid address included."""
    ctx = _ctx(request)
    raw = request.match_info["address"]
    removed = await ctx.store.write(SuppressionList(ctx.store).remove_one_op(raw))
    if removed is None:
        return _error(404, f"{normalize(raw) or raw!r} is not on the suppression list",
                      "address")
    return _json({"address": removed, "removed": True})


# ------------------------------------------------------------------ identities, warm-up


async def identities(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    cfg = ctx.config()
    stored: dict[str, Any] = ctx.identities.all() if ctx.identities is not None else {}
    declared = {(i.address or i.domain).lower(): i for i in cfg.identity}
    rows: list[dict[str, Any]] = []
    for name in sorted(set(stored) | set(declared)):
        rec = stored.get(name)
        decl = declared.get(name)
        domain = name.rpartition("@")[2]
        dkim: dict[str, Any] | None = None
        if ctx.dkim_keys is not None:
            try:
                keys = ctx.dkim_keys.get(domain)
            except Exception:
                keys = None
            active = keys.active if keys is not None else None
            pending = keys.pending if keys is not None else None
            dkim = {"active": [k.selector for k in active.keys] if active else [],
                    "pending": [k.selector for k in pending.keys] if pending else []}
        rows.append({
            "name": name, "declared_in_config": decl is not None,
            "mail_from": getattr(decl, "mail_from", "") if decl else "",
            "verified": bool(rec.verified) if rec else False,
            "verified_at": iso(rec.verified_at) if rec and rec.verified_at else None,
            "checked_at": iso(rec.checked_at) if rec and rec.checked_at else None,
            "tenant": rec.tenant if rec else "",
            "dkim": dkim,
        })
    return _json({"identities": rows})


async def warmup(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    return _json({"enabled": ctx.warmup_gate is not None, "ips": ctx.warmup_status()})


# ------------------------------------------------------------------ users


async def users_list(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    rows = [{"name": name, "allow": list(rec.allow), "tenant": rec.tenant,
             "tenants": rec.allowed_tenants, "max_24h_send": rec.max_24h_send,
             "max_send_rate": rec.max_send_rate}
            for name, rec in sorted(ctx.users.read_all().items())]
    return _json({"users": rows})


async def users_add(request: web.Request) -> web.Response:
    """Add an SMTP user. A password given must have MIN_NEW_PASSWORD_LENGTH characters;
    with none, relay generates one and answers it once, in this response only."""
    ctx = _ctx(request)
    data = await _body(request, UserAdd)
    name = data.name
    generated = isinstance(data.password, UnsetType)
    password = generate_password() if isinstance(data.password, UnsetType) else data.password
    for pattern in data.allow:
        try:
            check_pattern(pattern)
        except IdentityError as e:
            raise BadInput("allow", f"allow: {e}") from None
    if not generated:
        try:
            check_name(name)  # a bad name is named first, whatever the password
        except UserError as e:
            raise BadInput("name", f"name: {e}") from None
        try:
            check_new_password(password)
        except UserError as e:
            raise BadInput("password", f"password: {e} (or leave it out: relay then "
                                       "generates one and answers it once)") from None
    try:
        await asyncio.to_thread(ctx.users.add, name, password, list(data.allow))
    except UserError as e:
        text = str(e)
        field_name = "password" if "password" in text.lower() else "name"
        if "already" in text:
            return _error(409, text, "name")
        raise BadInput(field_name, f"{field_name}: {text}") from None
    body: dict[str, Any] = {"name": name, "allow": list(data.allow)}
    if generated:
        body["generated_password"] = password  # shown once: only its scrypt hash is kept
    return _json(body, 201)


async def users_remove(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    name = request.match_info["name"]
    if ctx.users.get(name) is None:
        return _error(404, f"no user {name!r}", "name")
    try:
        await asyncio.to_thread(ctx.users.remove, name)
    except UserError as e:
        return _error(404, str(e), "name")
    return _json({"name": name, "removed": True})


# ------------------------------------------------------------------ tenants

# SES's SendingStatus of a tenant: DISABLED while paused, REINSTATED once resumed.
def _sending_status(st: StatusRecord) -> str:
    if st.paused:
        return "DISABLED"
    return "REINSTATED" if st.last_fresh_start else "ENABLED"


def _when(t: float | None) -> str | None:
    return iso(t) if t else None


def _tenant_json(ctx: AdminContext, t: Tenant, *, sent: bool) -> dict[str, Any]:
    """A tenant in SES's names (GetTenant, GetAccount's SendQuota and
    ProductionAccessEnabled) with relay's reputation status record."""
    st = ctx.tenant_store().tenant_status(t.name)
    limits = effective_limits(ctx.config().tenants, t).tenant
    body: dict[str, Any] = {
        "TenantName": t.name, "CreatedTimestamp": _when(t.created_at),
        "SendingStatus": _sending_status(st),
        "ProductionAccessEnabled": not t.sandbox,
        "ProductionAccessTimestamp": _when(t.production_at),
        "SuppressionScope": t.suppression_scope,
        "ReputationStatus": {
            "Status": st.status, "Reason": st.reason, "Automatic": st.automatic,
            "ChangedTimestamp": _when(st.changed_at), "ChangedBy": st.changed_by,
            "LastFreshStart": _when(st.last_fresh_start), "BounceRate": st.bounce_rate,
            "ComplaintRate": st.complaint_rate, "Volume": st.volume},
        # What the tenant sends under (SES's GetAccount SendQuota): its own quota, else
        # [tenants], capped by the sandbox's while in it; -1: unlimited (as SES says).
        "SendQuota": {"Max24HourSend": limits.max_24h_send or -1,
                      "MaxSendRate": limits.max_send_rate or -1.0},
        # The tenant's own settings (null: [tenants] decides).
        "Quota": {"Max24HourSend": t.quota.max_24h_send,
                  "MaxSendRate": t.quota.max_send_rate},
    }
    if sent:
        body["SendQuota"]["SentLast24Hours"] = ctx.sent_last_24_hours(ctx.store, t.name)
    return body


def _tenant_name(request: web.Request) -> str:
    return request.match_info["name"]


def _tenant_error(e: TenantError) -> web.Response:
    if isinstance(e, NoSuchTenant):
        return _error(404, str(e), "name")
    if isinstance(e, TenantExists):
        return _error(409, str(e), "TenantName")
    return _error(409, str(e), "name")


async def tenants_list(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    tenants = ctx.tenant_store().tenants()
    cfg = ctx.config().reputation
    return _json({
        "Tenants": [_tenant_json(ctx, t, sent=True) for t in tenants.values()],
        # The lines the statuses are decided on ([reputation]), for the dashboard.
        "ReputationLines": {"BounceReview": cfg.bounce_review, "BouncePause": cfg.bounce_pause,
                            "ComplaintReview": cfg.complaint_review,
                            "ComplaintPause": cfg.complaint_pause,
                            "MinVolume": cfg.min_volume}})


async def tenants_add(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    data = await _body(request, TenantAdd)
    ts = ctx.tenant_store()
    try:
        quota = check_quota(
            None if isinstance(data.Max24HourSend, UnsetType) else data.Max24HourSend,
            None if isinstance(data.MaxSendRate, UnsetType) else data.MaxSendRate)
        op = ts.add_op(data.TenantName, quota=quota, suppression_scope=data.SuppressionScope,
                       sandbox=None if isinstance(data.Sandbox, UnsetType) else data.Sandbox)
    except TenantError as e:
        text = str(e)
        raise BadInput(text.split(" ", 1)[0] if text.startswith("max_") else "TenantName",
                       text) from None
    try:
        tenant = await ts.write(op)
    except TenantError as e:
        return _tenant_error(e)
    return _json({"Tenant": _tenant_json(ctx, tenant, sent=True)}, 201)


async def tenants_show(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    name = _tenant_name(request)
    tenant = ctx.tenant_store().get(name)
    if tenant is None:
        return _error(404, f"no tenant {name!r}", "name")
    data = await asyncio.to_thread(_tenant_json, ctx, tenant, sent=True)
    return _json({"Tenant": data})


async def tenants_remove(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    name = _tenant_name(request)
    credentials = await asyncio.to_thread(ctx.users.tenant_map)
    ts = ctx.tenant_store()
    try:
        await ts.write(ts.remove_op(name, credentials))
    except TenantError as e:
        return _tenant_error(e)
    return _json({"TenantName": name, "removed": True})


async def _status_body(request: web.Request) -> StatusChange:
    if not request.can_read_body:
        return StatusChange()
    return await _body(request, StatusChange)


async def tenants_pause(request: web.Request) -> web.Response:
    return await _tenant_change(request, "pause")


async def tenants_resume(request: web.Request) -> web.Response:
    return await _tenant_change(request, "resume")


async def tenants_production(request: web.Request) -> web.Response:
    return await _tenant_change(request, "production")


async def _tenant_change(request: web.Request, what: str) -> web.Response:
    ctx = _ctx(request)
    name = _tenant_name(request)
    ts = ctx.tenant_store()
    who = f"admin-token:{request.get(TOKEN_NAME) or '?'}"
    op: Callable[[Any], Any]
    if what == "production":
        op = ts.production_op(name)
    else:
        reason = (await _status_body(request)).Reason
        make = ts.pause_op if what == "pause" else ts.resume_op
        op = make(tenant_scope(name), who=who, reason=reason)
    try:
        await ts.write(op)
    except TenantError as e:
        return _tenant_error(e)
    tenant = ts.get(name)
    if tenant is None:  # removed meanwhile
        return _error(404, f"no tenant {name!r}", "name")
    return _json({"Tenant": _tenant_json(ctx, tenant, sent=False)})


# ------------------------------------------------------------------ events


def _tail_events(path: Path) -> list[dict[str, Any]]:
    return tail(path, _EVENT_TAIL_BYTES)


async def events(request: web.Request) -> web.Response:
    query = _query(request, EventsQuery)
    ctx = _ctx(request)
    etype = None if isinstance(query.type, UnsetType) else query.type
    limit = query.limit
    mid = query.message_id or None
    rcpt = query.recipient.lower() or None
    if rcpt is not None and "@" not in rcpt:
        raise BadInput("recipient", f"recipient: expected an address, got {rcpt!r}")
    found = await asyncio.to_thread(_tail_events, ctx.events.path)
    out: list[dict[str, Any]] = []
    for ev in reversed(found):
        mail = ev.get("mail") or {}
        if etype and ev.get("eventType") != etype:
            continue
        if mid and mail.get("messageId") != mid:
            continue
        if rcpt and rcpt not in [d.lower() for d in mail.get("destination", [])]:
            continue
        out.append(ev)
        if len(out) >= limit:
            break
    return _json({"events": out, "count": len(out)})


# ------------------------------------------------------------------ status, dashboard data


async def status(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    cfg = ctx.config()
    depth = ctx.depth()
    warm = ctx.warmup_status()
    return _json({
        "hostname": cfg.server.hostname,
        "uptime_seconds": round(ctx.clock.now() - ctx.started_at, 1),
        "listeners": ctx.listeners(),
        "queue": {"depth": depth, "messages": ctx.store.message_count(),
                  "oldest_age_seconds": ctx.oldest_age()},
        "users": len(ctx.users.names()),
        "warmup": [{k: row.get(k) for k in ("ip", "pool", "plan", "day", "cap_today",
                                            "sent_today", "frozen")} for row in warm],
        "deliveries": {p: dict(t) for p, t in sorted(ctx.metrics.by_provider.items())},
    })


async def dashboard_data(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    now_point = ctx.sample()
    oldest: list[dict[str, Any]] = []
    for scanned, (msg, rcpts) in enumerate(ctx.store.messages(), 1):
        deferred = [r for r in rcpts if r.state is State.DEFERRED]
        if deferred:
            oldest.append({
                "id": msg.id, "received_at": iso(msg.received_at),
                "age_seconds": round(ctx.clock.now() - msg.received_at, 1),
                "sender": msg.sender, "recipients": [r.address for r in deferred],
                "attempts": max(r.attempts for r in deferred),
                "last_response": deferred[0].last_response})
        if len(oldest) >= 10 or scanned >= 50_000:
            break
    providers: dict[str, dict[str, Any]] = {}
    for name, tally in sorted(ctx.metrics.by_provider.items()):
        delivered, bounced = tally.get("delivered", 0), tally.get("bounced", 0)
        deferred_n, complained = tally.get("deferred", 0), tally.get("complained", 0)
        attempts = delivered + bounced + deferred_n
        providers[name] = {
            "delivered": delivered, "bounced": bounced, "deferred": deferred_n,
            "complained": complained, "attempts": attempts,
            "delivery_rate": delivered / attempts if attempts else 0.0,
            "bounce_rate": bounced / attempts if attempts else 0.0,
            "complaint_rate": complained / delivered if delivered else 0.0}
    return _json({
        "now": iso(ctx.clock.now()),
        "history": [*ctx.history, now_point],
        "depth": {k: v for k, v in now_point.items() if k != "t"},
        "oldest_age_seconds": ctx.oldest_age(),
        "providers": providers,
        "warmup": ctx.warmup_status(),
        "oldest_deferred": oldest,
    })


# ------------------------------------------------------------------ open endpoints


async def metrics(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(_ctx(request).metrics.render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return _json(document())


def dashboard_html() -> bytes:
    return (resources.files("relay") / "admin" / "dashboard.html").read_bytes()


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(body=dashboard_html(), content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store",
                                 "Content-Security-Policy":
                                     "default-src 'self'; script-src 'unsafe-inline'; "
                                     "style-src 'unsafe-inline'; img-src 'self' data:"})


# ------------------------------------------------------------------ one-click unsubscribe

_UNSUBSCRIBED_PAGE = (b"<!doctype html><meta charset=utf-8><title>Unsubscribe</title>"
                      b"<p>To unsubscribe, use your mail program's unsubscribe button "
                      b"(RFC 8058 one-click).</p>\n")


def _unsubscribe_target(request: web.Request) -> tuple[MessageRecord, int] | None:
    """The sent message and recipient index a genuine List-Unsubscribe token names."""
    ctx = _ctx(request)
    found = ctx.verp.decode(request.match_info["token"]) if ctx.verp is not None else None
    if found is None:
        return None
    mid, index = found
    msg = ctx.store.sent_message(mid) or ctx.store.message(mid)
    if msg is None or not 0 <= index < len(msg.recipients):
        return None
    return msg, index


def _unsubscribed_key(mid: str, index: int) -> bytes:
    # Beside the message's record in the "sent" sub-database: the id's leading 12 hex
    # digits (its time) are kept, so prune_sent_op forgets the mark with the record,
    # when the token stops being honoured anyway; "~" sorts after every message id.
    return f"{mid}~unsubscribed/{index}".encode("ascii")


def _first_unsubscribe_op(store: QueueStore, mid: str, index: int,
                          now: float) -> Callable[[Any], bool]:
    """Mark (message, recipient) unsubscribed; True only the first time. Check and mark
    run in one write transaction (the store's single writer), so two POSTs at once
    cannot both be first, and the mark is on disk: a restart does not forget it."""
    db, key = store.named_db("sent"), _unsubscribed_key(mid, index)

    def op(txn: Any) -> bool:
        return bool(txn.put(key, msgspec.json.encode(now), db=db, overwrite=False))
    return op


async def unsubscribe_page(request: web.Request) -> web.Response:
    """GET: a tiny page; only the RFC 8058 POST unsubscribes (link scanners GET URLs)."""
    if await asyncio.to_thread(_unsubscribe_target, request) is None:
        return web.Response(status=404, text="not found")
    return web.Response(body=_UNSUBSCRIBED_PAGE, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store"})


async def unsubscribe(request: web.Request) -> web.Response:
    """RFC 8058 one-click (public, no bearer token; the HMAC token is the credential):
    publishes a Subscription event; suppresses the address too only when the message's
    configuration set has unsubscribe_suppresses = true."""
    ctx = _ctx(request)
    target = await asyncio.to_thread(_unsubscribe_target, request)
    if target is None:
        return web.Response(status=404, text="not found")
    form = await request.post()
    if form.get("List-Unsubscribe") != "One-Click":
        return web.Response(status=400, text="expected List-Unsubscribe=One-Click")
    msg, index = target
    address = msg.recipients[index]
    now = ctx.clock.now()
    # Idempotent (RFC 8058 clients and link checkers may POST again): the Subscription
    # event, and the suppression, happen for the first POST of a token only.
    if not await ctx.store.write(_first_unsubscribe_op(ctx.store, msg.id, index, now)):
        return web.Response(text="unsubscribed\n")
    ctx.events.emit([subscription_event(msg, address, now)])
    cs = ctx.config().configuration_set_named(msg.configuration_set) \
        if msg.configuration_set else None
    if cs is not None and cs.unsubscribe_suppresses:
        await ctx.store.write(SuppressionList(ctx.store).add_op(
            [Entry(normalize(address), "COMPLAINT", now, msg.id,
                   "one-click unsubscribe (List-Unsubscribe-Post)")], replace=False))
    return web.Response(text="unsubscribed\n")


# ------------------------------------------------------------------ app

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The name of the bearer token of an /api/ request (who paused a tenant).
TOKEN_NAME = "relay_admin_token"
_OPEN = {"/", "/openapi.json", "/favicon.ico"}


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = _ctx(request)
    path = request.path
    needs = path.startswith("/api/") or (path == "/metrics" and ctx.config().admin.metrics_auth)
    name: str | None = None
    if needs:
        token = _bearer(request)
        name = None if token is None else await asyncio.to_thread(ctx.tokens.verify, token)
        if name is None:
            resp = _error(401, "a valid bearer token is required "
                               "(Authorization: Bearer TOKEN; create one with "
                               "`relay admin token add NAME`)")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="relay"'
            return resp
    if name is not None:
        request[TOKEN_NAME] = name
    try:
        return await handler(request)
    except BadInput as e:
        return _error(400, e.message, e.field)
    except web.HTTPException as e:
        if path.startswith("/api/") or path in ("/metrics", "/openapi.json"):
            return _error(e.status, e.reason)
        raise


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/api/queue", queue_list),
    ("GET", "/api/queue/{id}", queue_show),
    ("POST", "/api/queue/{id}/retry", queue_retry),
    ("POST", "/api/queue/{id}/bounce", queue_bounce),
    ("DELETE", "/api/queue/{id}", queue_delete),
    ("GET", "/api/suppression", suppression_list),
    ("POST", "/api/suppression", suppression_add),
    ("DELETE", "/api/suppression/{address}", suppression_remove),
    ("GET", "/api/identities", identities),
    ("GET", "/api/warmup", warmup),
    ("GET", "/api/users", users_list),
    ("POST", "/api/users", users_add),
    ("DELETE", "/api/users/{name}", users_remove),
    ("GET", "/api/tenants", tenants_list),
    ("POST", "/api/tenants", tenants_add),
    ("GET", "/api/tenants/{name}", tenants_show),
    ("DELETE", "/api/tenants/{name}", tenants_remove),
    ("POST", "/api/tenants/{name}/pause", tenants_pause),
    ("POST", "/api/tenants/{name}/resume", tenants_resume),
    ("POST", "/api/tenants/{name}/production", tenants_production),
    ("GET", "/api/events", events),
    ("GET", "/api/status", status),
    ("GET", "/api/dashboard", dashboard_data),
    ("GET", "/metrics", metrics),
    ("GET", "/openapi.json", openapi),
    ("GET", "/", dashboard),
    ("POST", "/unsubscribe/{token}", unsubscribe),
    ("GET", "/unsubscribe/{token}", unsubscribe_page),
]


# On every response, errors and 404s included: no page of the admin server may be framed
# (clickjacking the dashboard's buttons) or content-sniffed into another type.
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}
_FRAME_ANCESTORS = "frame-ancestors 'none'"


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    csp = response.headers.get("Content-Security-Policy", "")
    if "frame-ancestors" not in csp:
        response.headers["Content-Security-Policy"] = (
            f"{csp}; {_FRAME_ANCESTORS}" if csp else _FRAME_ANCESTORS)


def make_app(ctx: AdminContext) -> web.Application:
    app = web.Application(middlewares=[_guard], client_max_size=1 << 20)
    app.on_response_prepare.append(_security_headers)
    app[CTX] = ctx
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app
