"""/api/stats: sending statistics over time (relay/history/stats.py), as series per value
of a dimension, their totals and SES GetSendStatistics' SendDataPoints.

since/until default to the last 24 hours; `bucket` is 900, 3600 or 86400 seconds; every
bucket of the range is a point (zeros included), so a chart needs no gap filling. Read in
a thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from aiohttp import web
from msgspec import UnsetType

from relay.admin.api.common import _json, _query
from relay.admin.api.context import _ctx
from relay.admin.historyview import send_data_points, stats_answer
from relay.admin.params import STATS_BUCKETS, BadInput, StatsQuery, instant

DAY = 86400.0
MAX_POINTS = 5000   # buckets per series: a range this long needs a coarser bucket


def _counts(point: Any) -> dict[str, int]:
    counts: dict[str, int] = msgspec.structs.asdict(point)
    counts.pop("t", None)
    return counts


def stats_of(stats: Any, since: float, until: float, by: str, tenant: str,
             configuration_set: str, bucket: int) -> dict[str, Any]:
    """The answer of GET /api/stats (and `relay stats --json`) from a StatsStore."""
    try:
        series = stats.query(since, until, by=by, tenant=tenant,
                             configuration_set=configuration_set, bucket=bucket)
        # Totals and SendDataPoints count every recipient once: from the whole traffic
        # (or the tenant / configuration set asked for), not from a sum over the series
        # (a recipient's Send has no provider yet).
        if by and not (tenant or configuration_set):
            whole = stats.query(since, until, bucket=bucket)
        else:
            whole = stats.query(since, until, tenant=tenant,
                                configuration_set=configuration_set, bucket=bucket)
    except ValueError as e:
        raise BadInput("by" if by else "bucket", str(e)) from None
    answer = stats_answer(((p.t, s.key, _counts(p)) for s in series for p in s.points),
                          since, until, bucket,
                          keys=[tenant or configuration_set] if not by else ())
    whole_points = [(p.t, _counts(p)) for s in whole for p in s.points]
    totals = stats_answer(((t, "", c) for t, c in whole_points), since, until, bucket)
    answer["totals"] = totals["totals"]
    answer["SendDataPoints"] = send_data_points(whole_points)
    return answer


def stats_range(p: StatsQuery, now: float) -> tuple[float, float]:
    since, until = instant("since", p.since), instant("until", p.until)
    until = now if until is None else until
    since = until - DAY if since is None else since
    if until <= since:
        raise BadInput("until", f"until: expected a time after since, got {p.until!r}")
    if p.bucket not in STATS_BUCKETS:
        raise BadInput("bucket", f"bucket: expected one of "
                                 f"{', '.join(map(str, STATS_BUCKETS))}, got {p.bucket}")
    by = "" if isinstance(p.by, UnsetType) else p.by
    # Counts are kept per dimension, not per pair of them.
    if p.tenant and p.configuration_set:
        raise BadInput("configuration_set", "configuration_set: cannot be combined with "
                                            "tenant (statistics are kept per dimension)")
    for name, value in (("tenant", p.tenant), ("configuration_set", p.configuration_set)):
        if value and by and by != name:
            raise BadInput(name, f"{name}: only with by={name} or without by (statistics "
                                 f"are kept per dimension)")
    if (until - since) / p.bucket > MAX_POINTS:
        raise BadInput("since", f"since: at most {MAX_POINTS} buckets of {p.bucket} s "
                                "(ask for a larger bucket or a shorter range)")
    return since, until


async def stats(request: web.Request) -> web.Response:
    p = _query(request, StatsQuery)
    ctx = _ctx(request)
    since, until = stats_range(p, ctx.clock.now())
    by = "" if isinstance(p.by, UnsetType) else p.by
    answer = await asyncio.to_thread(stats_of, ctx.stats_store(), since, until, by,
                                     p.tenant.strip(), p.configuration_set.strip(),
                                     p.bucket)
    return _json(answer)
