"""/api/events: the newest events of the event log, filtered by type, message and recipient.

Reads only the log's tail (_EVENT_TAIL_BYTES), in a thread.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web
from msgspec import UnsetType

from relay.admin.api.common import _json, _query
from relay.admin.api.context import _ctx
from relay.admin.params import BadInput, EventsQuery
from relay.events.log import tail

_EVENT_TAIL_BYTES = 8 << 20   # /api/events reads at most the last 8 MiB of the log


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
