"""/api/stats: sending statistics over time (relay/history/stats.py), as series per value
of a dimension, their totals and SES GetSendStatistics' SendDataPoints.

since/until default to the last 24 hours; `bucket` is 900, 3600 or 86400 seconds; every
bucket of the range is a point (zeros included), so a chart needs no gap filling; at most
MAX_SERIES series (the busiest; the rest summed under "(other)"). Read in
a thread.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from msgspec import UnsetType

from relay.admin.api.common import _json, _query
from relay.admin.api.context import _ctx
from relay.admin.historyview import stats_of
from relay.admin.params import STATS_BUCKETS, BadInput, StatsQuery, instant

DAY = 86400.0
MAX_POINTS = 5000   # buckets per series: a range this long needs a coarser bucket


def stats_range(p: StatsQuery, now: float) -> tuple[float, float]:
    since, until = instant("since", p.since), instant("until", p.until)
    until = now if until is None else until
    since = until - DAY if since is None else since
    if until <= since:
        raise BadInput("until", f"until: expected a time after since, got {p.until!r}")
    if p.bucket not in STATS_BUCKETS:
        raise BadInput("bucket", f"bucket: expected one of "
                                 f"{', '.join(map(str, STATS_BUCKETS))}, got {p.bucket}")
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
