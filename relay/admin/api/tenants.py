"""/api/tenants: the account's tenants in SES's names: list, add, show, remove, pause,
resume and move to production.

Reads and writes relay/tenants/store.py (in the queue's LMDB environment) through the
process's tenant store, whose cache is the SMTP hot path's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from msgspec import UnsetType

from relay.admin.api.common import TOKEN_NAME, _body, _error, _json
from relay.admin.api.context import AdminContext, _ctx
from relay.admin.params import BadInput, StatusChange, TenantAdd
from relay.events.model import iso
from relay.tenants.model import StatusRecord, Tenant, tenant_scope
from relay.tenants.quota import effective_limits
from relay.tenants.store import (
    NoSuchTenant,
    TenantError,
    TenantExists,
    check_quota,
)


# SES's SendingStatus of a tenant: DISABLED while paused, REINSTATED once resumed.
def _sending_status(st: StatusRecord) -> str:
    if st.paused:
        return "DISABLED"
    return "REINSTATED" if st.last_fresh_start else "ENABLED"


def _when(t: float | None) -> str | None:
    return iso(t) if t else None


async def _sent_last_24h(ctx: AdminContext, names: list[str]) -> dict[str, int]:
    """SentLast24Hours of each tenant: with [cluster], every node's (the tenant's rolling
    window in Redis, as the SES API's GetAccount answers it); while Redis is unreachable,
    this node's figure (what Redis last said plus what this node accepted since, or its
    own count if larger); without [cluster], this node's (`ctx.sent_last_24_hours`)."""
    local = await asyncio.to_thread(
        lambda: {n: ctx.sent_last_24_hours(ctx.store, n) for n in names})
    if ctx.cluster is None or not names:
        return local
    answers = await asyncio.gather(*(ctx.cluster.quota.sent_last_24h(n) for n in names))
    return {n: int(count) if from_redis else max(int(count), local[n])
            for n, (count, from_redis) in zip(names, answers, strict=True)}


def _tenant_json(ctx: AdminContext, t: Tenant, *, sent: int | None) -> dict[str, Any]:
    """A tenant in SES's names (GetTenant, GetAccount's SendQuota and
    ProductionAccessEnabled) with relay's reputation status record; `sent`: its
    SentLast24Hours (None: left out)."""
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
    if sent is not None:
        body["SendQuota"]["SentLast24Hours"] = sent
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
    sent = await _sent_last_24h(ctx, list(tenants))
    return _json({
        "Tenants": [_tenant_json(ctx, t, sent=sent[n]) for n, t in tenants.items()],
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
    sent = (await _sent_last_24h(ctx, [tenant.name]))[tenant.name]
    return _json({"Tenant": _tenant_json(ctx, tenant, sent=sent)}, 201)


async def tenants_show(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    name = _tenant_name(request)
    tenant = ctx.tenant_store().get(name)
    if tenant is None:
        return _error(404, f"no tenant {name!r}", "name")
    sent = (await _sent_last_24h(ctx, [name]))[name]
    return _json({"Tenant": _tenant_json(ctx, tenant, sent=sent)})


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
        record = await ts.write(op)
    except TenantError as e:
        return _tenant_error(e)
    # [cluster]: to every node (the newest operator change wins on each).
    if what != "production" and ctx.cluster is not None and \
            not await ctx.cluster.publish_status(tenant_scope(name), record):
        return _error(503, f"tenant {name!r}: changed on this node only: redis is "
                           "unreachable, the other nodes do not see it; try again",
                      "cluster")
    tenant = ts.get(name)
    if tenant is None:  # removed meanwhile
        return _error(404, f"no tenant {name!r}", "name")
    return _json({"Tenant": _tenant_json(ctx, tenant, sent=None)})
