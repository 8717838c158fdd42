"""/api/warmup: each sending IP's warm-up plan, day, cap and count (AdminContext.warmup_status)."""

from __future__ import annotations

from aiohttp import web

from relay.admin.api.common import _json
from relay.admin.api.context import _ctx


async def warmup(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    return _json({"enabled": ctx.warmup_gate is not None, "ips": ctx.warmup_status()})
