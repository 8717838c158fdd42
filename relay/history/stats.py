"""Sending statistics: the counts relay/history/store.py's record_op adds per 15-minute
bucket, read per dimension (all, tenant, configuration set, identity, provider).

Keys: relay/history/keys.py ("stats"). A query seeks, bucket by bucket, straight to the
dimension (and value) asked for, so it reads the keys of that dimension only, and jumps
over buckets without traffic. Buckets with no traffic are left out of a series (a
series' points are the buckets where at least one of its metrics counted). Coarser
buckets (3600, 86400 seconds: any multiple of 900) are sums of the 15-minute ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from relay.events.model import iso
from relay.history import keys as K
from relay.queue.store import QueueStore

PRUNE_KEYS = 50_000


class StatsPoint(msgspec.Struct):
    t: int                      # bucket start, epoch seconds
    sent: int = 0               # recipients accepted (SES DeliveryAttempts)
    delivered: int = 0
    deferred: int = 0           # deferred attempts
    bounced: int = 0            # final bounces, expired and suppressed included
    complained: int = 0
    rejected: int = 0
    attempts: int = 0           # delivery attempts (network or simulator)
    suppressed: int = 0
    opened: int = 0             # opens and clicks by people (automated hits not counted)
    clicked: int = 0


class StatsSeries(msgspec.Struct):
    key: str                    # the dimension's value ("" for by="")
    points: list[StatsPoint]    # time order; buckets without traffic left out


def totals(series: list[StatsSeries]) -> dict[str, int]:
    """Every metric summed over the series' points."""
    out = dict.fromkeys(K.METRICS, 0)
    for s in series:
        for p in s.points:
            for m in K.METRICS:
                out[m] += getattr(p, m)
    return out


class StatsStore:
    """The statistics of the queue spool `store`."""

    def __init__(self, store: QueueStore) -> None:
        self.store = store
        self._db = store.named_db(K.STATS_DB)

    def query(self, since: float, until: float, *, by: str = "", tenant: str = "",
              configuration_set: str = "", bucket: int = K.BUCKET) -> list[StatsSeries]:
        """Series per value of dimension `by` ("" = all traffic as one series, key "")
        for the buckets starting in [since, until). `tenant` / `configuration_set`
        narrow to that value of their own dimension: with `by` they must be of the same
        dimension (counts are kept per dimension, not per pair): ValueError otherwise,
        as for an unknown `by` or a bucket that is not a multiple of 900 seconds."""
        if by not in K.DIMENSIONS:
            raise ValueError(f"by={by!r}: expected one of tenant, configuration_set, "
                             "identity, provider (or nothing)")
        if bucket <= 0 or bucket % K.BUCKET:
            raise ValueError(f"bucket={bucket!r}: expected a multiple of {K.BUCKET} seconds")
        narrow = [(d, v) for d, v in (("tenant", tenant),
                                      ("configuration_set", configuration_set)) if v]
        if len(narrow) > 1 or (narrow and by and narrow[0][0] != by):
            raise ValueError("statistics are kept per dimension: tenant= and "
                             "configuration_set= can be given alone or with by= of the same "
                             "dimension")
        dim_name, value = (narrow[0] if narrow else (by, None))
        if not dim_name:
            value = ""
        dim = K.DIMENSIONS[dim_name]
        first, end = K.bucket_of(since), int(until)
        if end <= first:
            return []
        db = self._db

        def read(txn: Any) -> dict[str, dict[int, dict[str, int]]]:
            out: dict[str, dict[int, dict[str, int]]] = {}
            with txn.cursor(db=db) as cur:
                b = first
                while b < end:
                    prefix = K.stats_prefix(b, dim, value)
                    if not cur.set_range(prefix):
                        break
                    k = bytes(cur.key())
                    kb = K.parse_stats_key(k)[0]
                    if kb != b or not k.startswith(prefix):
                        # nothing of this dimension in bucket b: on to the next bucket
                        # with traffic (kb > b), or the one after b
                        b = kb if kb > b else b + K.BUCKET
                        continue
                    for kk, v in cur.iternext():
                        key = bytes(kk)
                        if not key.startswith(prefix):
                            break
                        _, _, val, metric = K.parse_stats_key(key)
                        name = K.METRIC_NAMES.get(metric)
                        if name is None:
                            continue
                        slot = out.setdefault(val, {}).setdefault(b // bucket * bucket, {})
                        slot[name] = slot.get(name, 0) + K.COUNT.unpack(bytes(v))[0]
                    b += K.BUCKET
            return out

        raw = self.store.read(read)
        return [StatsSeries(key, [StatsPoint(t, **counts)
                                  for t, counts in sorted(points.items())])
                for key, points in sorted(raw.items())]

    def send_statistics(self, since: float, until: float) -> list[dict[str, object]]:
        """SES GetSendStatistics' SendDataPoints: one per 15-minute bucket with traffic."""
        out: list[dict[str, object]] = []
        for s in self.query(since, until):
            for p in s.points:
                out.append({"Timestamp": iso(p.t), "DeliveryAttempts": p.sent,
                            "Bounces": p.bounced, "Complaints": p.complained,
                            "Rejects": p.rejected})
        return out

    def prune_op(self, before_ts: float,
                 max_keys: int = PRUNE_KEYS) -> Callable[[Any], int]:
        """An op deleting up to `max_keys` counts of the buckets that start before
        `before_ts`'s bucket; returns how many."""
        bound = K.bucket_prefix(K.bucket_of(before_ts))
        db = self._db

        def op(txn: Any) -> int:
            n = 0
            with txn.cursor(db=db) as cur:
                if not cur.first():
                    return 0
                while n < max_keys:
                    k = bytes(cur.key())
                    if not k or k >= bound or not cur.delete():
                        break
                    n += 1
            return n
        return op
