"""/api/status and /api/dashboard: the instance's summary and the dashboard's data
(queue depth history, oldest deferred messages, per-provider rates, warm-up, the
reputation lines).

The per-provider panel counts the last 24 hours of every worker's attempts, the mailbox
simulator's included, from the sending statistics in the spool (relay/history/stats.py),
so it survives restarts; with [history] enabled = false nothing writes them, and the
panel falls back to this process's tally since it started."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from relay.admin.api.common import _json
from relay.admin.api.context import AdminContext, _ctx
from relay.events.model import iso
from relay.history.stats import StatsStore
from relay.history.store import HistoryStore
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
        "history": await _history_usage(ctx),
    })


async def _history_usage(ctx: AdminContext) -> dict[str, Any] | None:
    """{"messages", "bytes", "oldest" (ISO, null when empty)} of the message history, read
    at most every 30 s and never on the event loop; None when [history] is off."""
    if not ctx.config().history.enabled:
        return None
    cache = ctx.metrics.history_usage
    figures = cache.cached() if cache is not None else None
    if figures is None:
        read = cache.read if cache is not None else HistoryStore(ctx.store).usage
        figures = await asyncio.to_thread(read)
    oldest = figures.get("oldest", 0)
    return {"messages": figures.get("messages", 0), "bytes": figures.get("bytes", 0),
            "oldest": iso(oldest) if oldest else None}


def _rates(delivered: int, bounced: int, deferred: int, complained: int,
           attempts: int) -> dict[str, Any]:
    return {"delivered": delivered, "bounced": bounced, "deferred": deferred,
            "complained": complained, "attempts": attempts,
            "delivery_rate": delivered / attempts if attempts else 0.0,
            "bounce_rate": bounced / attempts if attempts else 0.0,
            "complaint_rate": complained / delivered if delivered else 0.0}


# The per-provider panel's window.
PROVIDER_WINDOW = 86400.0


def _providers_from_stats(store: Any, now: float) -> dict[str, dict[str, Any]]:
    """The last 24 hours (15-minute buckets) per provider, every worker's attempts."""
    out: dict[str, dict[str, Any]] = {}
    for series in StatsStore(store).query(now - PROVIDER_WINDOW, now + 1, by="provider"):
        if not series.key:
            continue  # before any attempt (suppressed, rejected): no provider
        t = {m: sum(getattr(p, m) for p in series.points)
             for m in ("delivered", "bounced", "deferred", "complained", "attempts")}
        out[series.key] = _rates(t["delivered"], t["bounced"], t["deferred"],
                                 t["complained"], t["attempts"])
    return out


def _providers_since_start(ctx: AdminContext) -> dict[str, dict[str, Any]]:
    """This process's tally since it started ([history] off)."""
    providers: dict[str, dict[str, Any]] = {}
    for name, tally in sorted(ctx.metrics.by_provider.items()):
        delivered, bounced = tally.get("delivered", 0), tally.get("bounced", 0)
        deferred_n, complained = tally.get("deferred", 0), tally.get("complained", 0)
        providers[name] = _rates(delivered, bounced, deferred_n, complained,
                                 delivered + bounced + deferred_n)
    return providers


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
    cfg = ctx.config()
    if cfg.history.enabled:
        providers = await asyncio.to_thread(_providers_from_stats, ctx.store,
                                            ctx.clock.now())
    else:
        providers = _providers_since_start(ctx)
    rep = cfg.reputation
    return _json({
        "now": iso(ctx.clock.now()),
        "history": [*ctx.history, now_point],
        "depth": {k: v for k, v in now_point.items() if k != "t"},
        "oldest_age_seconds": ctx.oldest_age(),
        "providers": providers,
        "warmup": ctx.warmup_status(),
        "oldest_deferred": oldest,
        # The [reputation] lines, for the rate charts' thresholds.
        "reputation": {"bounce_review": rep.bounce_review, "bounce_pause": rep.bounce_pause,
                       "complaint_review": rep.complaint_review,
                       "complaint_pause": rep.complaint_pause},
    })
