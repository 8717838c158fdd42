"""The shape of /api/stats: every bucket a point, and at most MAX_SERIES series (the
busiest ones, the rest summed under "(other)") so a breakdown over thousands of tenants
stays a bounded answer."""

from __future__ import annotations

from relay.admin.historyview import MAX_SERIES, OTHER, stats_answer

T0 = 1_800_000_000.0 // 900 * 900


def test_buckets_without_traffic_are_zero_points() -> None:
    answer = stats_answer([(T0 + 900, "gmail", {"sent": 2})], T0, T0 + 3 * 900, 900)
    (series,) = answer["series"]
    assert [p["sent"] for p in series["points"]] == [0, 2, 0]
    assert answer["totals"]["sent"] == 2


def test_the_busiest_series_keep_their_own_the_rest_are_summed() -> None:
    points = [(T0, f"tenant{n:02d}", {"sent": n + 1, "delivered": n}) for n in range(30)]
    answer = stats_answer(points, T0, T0 + 900, 900)
    keys = [s["key"] for s in answer["series"]]
    assert len(keys) == MAX_SERIES and OTHER in keys
    kept = {f"tenant{n:02d}" for n in range(30 - (MAX_SERIES - 1), 30)}
    assert set(keys) - {OTHER} == kept
    other = next(s for s in answer["series"] if s["key"] == OTHER)
    assert other["points"][0]["sent"] == sum(n + 1 for n in range(30 - (MAX_SERIES - 1)))
    total = sum(s["points"][0]["sent"] for s in answer["series"])
    assert total == answer["totals"]["sent"] == sum(n + 1 for n in range(30))
