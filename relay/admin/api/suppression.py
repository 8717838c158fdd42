"""/api/suppression: page through, add to and remove from the account's suppression list
(or, with `tenant`, a tenant's own list).

Reads and writes relay/suppression's list in the queue's LMDB environment.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from msgspec import UnsetType

from relay.admin.api.common import _body, _error, _json, _query
from relay.admin.api.context import _ctx
from relay.admin.params import (
    BadInput,
    SuppressionAdd,
    SuppressionQuery,
    SuppressionRemoveQuery,
)
from relay.events.model import iso
from relay.suppression.policy import SUPPRESSION_REASONS, normalize, valid_address
from relay.suppression.store import Entry, SuppressionList


def _entry_row(e: Entry) -> dict[str, Any]:
    """An entry with what put it there: the message (queue id), the Bounce or Complaint
    event's feedbackId and the diagnostic (empty when added by hand or not kept)."""
    return {"address": e.address, "reason": e.reason, "created_at": iso(e.created_at),
            "message_id": e.message_id, "feedback_id": e.feedback_id,
            "diagnostic": e.diagnostic}


def _address(raw: str, field_name: str = "address") -> str:
    address = normalize(raw)
    if not valid_address(address):
        raise BadInput(field_name, f"{field_name}: expected an email address, got {raw!r}")
    return address


async def suppression_list(request: web.Request) -> web.Response:
    """Paged by offset (the list is in address order); filter by reason, prefix and `q`
    (a part of the address)."""
    query = _query(request, SuppressionQuery)
    ctx = _ctx(request)
    reason = None if isinstance(query.reason, UnsetType) else query.reason
    limit, offset, prefix = query.limit, query.offset, query.prefix

    def page() -> tuple[list[dict[str, Any]], int]:
        rows: list[dict[str, Any]] = []
        matched = 0
        for e in SuppressionList(ctx.store, query.tenant).entries(
                reason=reason, prefix=prefix, contains=query.q.strip()):
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
    lst = SuppressionList(ctx.store, data.tenant)
    entry = Entry(address, reason, ctx.clock.now(), "", "added through the admin API")
    added = await ctx.store.write(lst.add_op([entry]))
    if ctx.cluster is not None:  # [cluster]: to every node's copy
        ctx.cluster.suppression.added(data.tenant, [entry])
    return _json({"address": address, "reason": reason, "added": bool(added)},
                 201 if added else 200)


async def suppression_remove(request: web.Request) -> web.Response:
    """No syntax check (unlike add): whatever is on the list can be taken off it, an
    entry that is no valid address included."""
    ctx = _ctx(request)
    raw = request.match_info["address"]
    tenant = _query(request, SuppressionRemoveQuery).tenant
    removed = await ctx.store.write(SuppressionList(ctx.store, tenant).remove_one_op(raw))
    if removed is None:
        return _error(404, f"{normalize(raw) or raw!r} is not on the suppression list",
                      "address")
    if ctx.cluster is not None:  # [cluster]: from every node's copy
        ctx.cluster.suppression.removed(tenant, [removed])
    return _json({"address": removed, "removed": True})
