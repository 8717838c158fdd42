"""`relay stats`: sending statistics from the spool (what GET /api/stats answers): per
bucket, sent, delivered, deferred, bounced, complained, rejected, attempts and
suppressed, for all traffic or per tenant, configuration set, identity or provider.

The table shows the buckets with traffic and a total line; `--json` prints the API's
answer (every bucket, zeros included, and SES SendDataPoints).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from relay.admin.historyview import METRICS, stats_of
from relay.admin.params import STATS_DIMENSIONS, BadInput
from relay.cli import CliError, load_config
from relay.cli.history import choice, when
from relay.cli.output import table
from relay.cli.queue import _open
from relay.clock import SystemClock
from relay.history.stats import StatsStore

BUCKETS = {"15m": 900, "1h": 3600, "1d": 86400}
DAY = 86400.0
MAX_POINTS = 5000


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "stats", help="sending statistics: sent, delivered, bounced... per bucket")
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="config file (default: $RELAY_CONFIG or the embedded dev config)")
    p.add_argument("--since", metavar="TIME", default="24h",
                   help="from: 24h (ago, the default), ISO 8601 or epoch seconds")
    p.add_argument("--until", metavar="TIME", help="to (default: now; same forms)")
    p.add_argument("--by", metavar="DIMENSION",
                   help="one series per tenant, configuration-set, identity or provider")
    p.add_argument("--tenant", metavar="NAME", default="", help="only this tenant")
    p.add_argument("--configuration-set", metavar="NAME", default="",
                   help="only this configuration set")
    p.add_argument("--bucket", metavar="SIZE", default="15m",
                   help=f"points of {', '.join(BUCKETS)} (default 15m)")
    p.add_argument("--json", action="store_true", help="JSON as GET /api/stats answers")
    p.set_defaults(func=cmd_stats)


def cmd_stats(args: argparse.Namespace) -> int:
    now = SystemClock().now()
    until = when("--until", args.until, now)
    until = now if until is None else until
    since = when("--since", args.since, now)
    since = until - DAY if since is None else since
    if until <= since:
        raise CliError(f"--until: expected a time after --since, got {args.until!r}")
    dims = [d.replace("_", "-") for d in STATS_DIMENSIONS]
    by = choice("--by", args.by, dims).replace("-", "_")
    size = BUCKETS.get(args.bucket.strip().lower())
    if size is None:
        raise CliError(f"--bucket: expected one of {', '.join(BUCKETS)}, got {args.bucket!r}")
    if (until - since) / size > MAX_POINTS:
        raise CliError(f"--since: at most {MAX_POINTS} buckets of {args.bucket} (ask for a "
                       "larger --bucket or a shorter range)")
    store = _open(load_config(args))
    try:
        answer = stats_of(StatsStore(store), since, until, by, args.tenant.strip(),
                          args.configuration_set.strip(), size)
    except BadInput as e:
        raise CliError(f"--{e.message.replace('_', '-')}") from None
    finally:
        store.close_sync()
    if args.json:
        print(json.dumps(answer))
        return 0
    rows: list[dict[str, Any]] = []
    for series in answer["series"]:
        for point in series["points"]:
            if any(point[m] for m in METRICS):
                rows.append({"bucket": point["t"], "key": series["key"] or "-", **point})
    rows.sort(key=lambda r: (r["bucket"], r["key"]))
    columns: list[str | tuple[str, str]] = ["bucket"]
    if by:
        columns.append(("key", by.replace("_", " ")))
    columns += list(METRICS)
    rows.append({"bucket": "total", "key": "", **answer["totals"]})
    table(rows, columns)
    return 0
