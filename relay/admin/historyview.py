"""The message history and sending statistics as the admin API and the CLI show them.

Pure shaping of relay/history's records into JSON-able dicts: a message's row (the list
of GET /api/messages), its detail (GET /api/messages/{id}: the row, its timeline, and the
SES GetMessageInsights shape per recipient), and a statistics answer (series per value of
a dimension, totals, SES GetSendStatistics' SendDataPoints). The same functions serve
`relay message` and `relay stats --json`, so the CLI and the API cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from relay.admin.params import BadInput
from relay.events.model import iso
from relay.history import keys as K
from relay.history.entries import insight_type
from relay.history.model import (
    HistoryMessage,
    RecipientHistory,
    TimelineEntry,
    summary_status,
)

# The metrics of a statistics point, in the order tables show them.
METRICS: tuple[str, ...] = tuple(K.METRICS)

_json_dec = msgspec.json.Decoder()


def recipient_row(r: RecipientHistory) -> dict[str, Any]:
    return {"address": r.address, "status": r.status, "attempts": r.attempts,
            "provider": r.provider, "last_response": r.last_response,
            "updated_at": iso(r.updated_at) if r.updated_at else None}


def message_row(msg: HistoryMessage) -> dict[str, Any]:
    """A message in a list: who, what, and where each recipient stands."""
    return {"id": msg.id, "received_at": iso(msg.received_at) if msg.received_at else None,
            "sender": msg.sender, "from": list(msg.from_), "to": list(msg.to),
            "subject": msg.subject, "message_id": msg.message_id, "tenant": msg.tenant,
            "configuration_set": msg.configuration_set, "size": msg.size,
            "status": summary_status(msg), "partial": msg.partial,
            "recipients": [recipient_row(r) for r in msg.recipients]}


def _event(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return _json_dec.decode(raw)
    except msgspec.DecodeError:
        return None


ATTEMPT_FIELDS = ("result", "source_ip", "mx_host", "remote_ip", "tls", "reused", "response",
                  "delay_ms", "duration_ms", "provider", "dkim")


def timeline_row(e: TimelineEntry) -> dict[str, Any]:
    """An entry with its time in ISO 8601 and its SES event decoded (fields at their
    defaults left out, as the record keeps them)."""
    row: dict[str, Any] = msgspec.to_builtins(msgspec.structs.replace(e, event=b""))
    if e.kind == "attempt":
        # An attempt shows every detail, false and zero included ("was it over TLS?").
        row = {f: getattr(e, f) for f in ATTEMPT_FIELDS} | row
    row["ts"] = iso(e.ts)
    event = _event(e.event)
    if event is not None:
        row["event"] = event
    return row


def insight_event(e: TimelineEntry) -> dict[str, Any] | None:
    """One InsightsEvent {Timestamp, Type, Details} for a timeline entry, or None (a
    delivery attempt: relay's own detail, no SES event)."""
    etype = insight_type(e)
    if not etype:
        return None
    details: dict[str, Any] = {}
    if etype.endswith("_BOUNCE"):
        sub = e.detail.partition("/")[2]
        if e.kind == "suppressed":
            sub = sub or "OnAccountSuppressionList"
        bounce: dict[str, Any] = {"BounceType": etype.removesuffix("_BOUNCE")}
        if sub:
            bounce["BounceSubType"] = sub
        if e.response:
            bounce["DiagnosticCode"] = e.response
        details["Bounce"] = bounce
    elif e.kind == "complained":
        complaint: dict[str, Any] = {}
        if e.detail:
            complaint["ComplaintFeedbackType"] = e.detail
        details["Complaint"] = complaint
    return {"Timestamp": iso(e.ts), "Type": etype, "Details": details}


def insights(msg: HistoryMessage, by_recipient: dict[str, list[TimelineEntry]]
             ) -> dict[str, Any]:
    """SES GetMessageInsights' answer for the message."""
    providers = {r.address: r.provider for r in msg.recipients}
    per: list[dict[str, Any]] = []
    for address, entries in by_recipient.items():
        events = [ev for ev in (insight_event(e) for e in entries) if ev is not None]
        per.append({"Destination": address, "Isp": providers.get(address, ""),
                    "Events": events})
    return {"MessageId": msg.id, "FromEmailAddress": msg.from_[0] if msg.from_ else msg.sender,
            "Subject": msg.subject,
            "EmailTags": [{"Name": k, "Value": v} for k, vs in sorted(msg.tags.items())
                          for v in vs],
            "Insights": per}


def message_detail(msg: HistoryMessage, timeline: Sequence[TimelineEntry],
                   by_recipient: dict[str, list[TimelineEntry]]) -> dict[str, Any]:
    """GET /api/messages/{id}: the row, what was sent and from where, the timeline, and
    the SES GetMessageInsights fields."""
    return {**message_row(msg), "tags": msg.tags, "dkim": list(msg.dkim),
            "client_ip": msg.client_ip, "auth_user": msg.auth_user,
            "identity": msg.identity, "source": msg.source,
            "timeline": [timeline_row(e) for e in timeline],
            **insights(msg, by_recipient)}


# ---------------------------------------------------------------------- statistics


def zero() -> dict[str, int]:
    return dict.fromkeys(METRICS, 0)


def stats_answer(points: Iterable[tuple[float, str, dict[str, int]]], since: float,
                 until: float, bucket: int, keys: Iterable[str] = ()) -> dict[str, Any]:
    """Series (one per key, every bucket of [since, until) present, zeros included),
    totals, and SendDataPoints (SES GetSendStatistics) from (bucket start, key, counts)
    points. `keys`: series to show even without a count."""
    first = int(since) // bucket * bucket
    starts = list(range(first, int(until), bucket)) or [first]
    series: dict[str, dict[int, dict[str, int]]] = {k: {} for k in keys}
    totals = zero()
    for t, key, counts in points:
        start = int(t) // bucket * bucket
        if start < first or start >= int(until):
            continue
        cell = series.setdefault(key, {}).setdefault(start, zero())
        for m, n in counts.items():
            if m in cell:
                cell[m] += n
                totals[m] += n
    series = _top_series(series)
    out_series = [{"key": key, "points": [{"t": iso(s), **cells.get(s, zero())}
                                          for s in starts]}
                  for key, cells in sorted(series.items())]
    return {"bucket_seconds": bucket, "since": iso(first), "until": iso(until),
            "series": out_series, "totals": totals}


# Series in one answer: every bucket of a series is a point, so a platform with thousands
# of tenants (or a breakdown by provider over 14 days of 15-minute buckets) would answer
# megabytes. The busiest MAX_SERIES - 1 keep their own series, the rest are summed.
MAX_SERIES = 20
OTHER = "(other)"


def _top_series(series: dict[str, dict[int, dict[str, int]]]
                ) -> dict[str, dict[int, dict[str, int]]]:
    if len(series) <= MAX_SERIES:
        return series
    volume = {k: sum(sum(c.values()) for c in cells.values()) for k, cells in series.items()}
    ranked = sorted(series, key=lambda k: (-volume[k], k))
    kept = {k: series[k] for k in ranked[:MAX_SERIES - 1]}
    other: dict[int, dict[str, int]] = {}
    for k in ranked[MAX_SERIES - 1:]:
        for start, counts in series[k].items():
            cell = other.setdefault(start, zero())
            for m, n in counts.items():
                cell[m] += n
    kept[OTHER] = other
    return kept


def send_data_points(points: Iterable[tuple[float, dict[str, int]]]) -> list[dict[str, Any]]:
    """SES GetSendStatistics' SendDataPoints from (bucket start, counts of every
    recipient), oldest first; buckets without a count are left out, as SES does."""
    out = []
    for t, c in sorted(points, key=lambda p: p[0]):
        row = {"Timestamp": iso(t), "DeliveryAttempts": c.get("sent", 0),
               "Bounces": c.get("bounced", 0), "Complaints": c.get("complained", 0),
               "Rejects": c.get("rejected", 0)}
        if any(v for k, v in row.items() if k != "Timestamp"):
            out.append(row)
    return out


def _counts(point: Any) -> dict[str, int]:
    counts: dict[str, int] = msgspec.structs.asdict(point)
    counts.pop("t", None)
    return counts


def stats_of(stats: Any, since: float, until: float, by: str, tenant: str,
             configuration_set: str, bucket: int) -> dict[str, Any]:
    """The answer of GET /api/stats (and `relay stats --json`) from a StatsStore."""
    # Counts are kept per dimension, not per pair of them.
    if tenant and configuration_set:
        raise BadInput("configuration_set", "configuration_set: cannot be combined with "
                                            "tenant (statistics are kept per dimension)")
    for name, value in (("tenant", tenant), ("configuration_set", configuration_set)):
        if value and by and by != name:
            raise BadInput(name, f"{name}: only with by={name} or without by (statistics "
                                 f"are kept per dimension)")
    try:
        series = stats.query(since, until, by=by, tenant=tenant,
                             configuration_set=configuration_set, bucket=bucket)
        # Totals and SendDataPoints count every recipient once: from the whole traffic
        # (or the tenant / configuration set asked for), not from a sum over the series
        # (a recipient's Send has no provider yet).
        if not by:
            whole = series
        elif not (tenant or configuration_set):
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
