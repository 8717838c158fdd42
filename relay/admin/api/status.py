"""/api/status and /api/dashboard: the instance's summary and the dashboard's data
(queue depth history, oldest deferred messages, per-provider rates, warm-up)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.admin.api.common import _json
from relay.admin.api.context import _ctx
from relay.events.model import iso
from relay.queue.records import State


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
