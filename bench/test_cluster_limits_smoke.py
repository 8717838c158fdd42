"""Smoke run of bench/cluster_limits.py: every mode once on a real redis-server, a few
messages. It checks the counts the table reports (Redis round trips and EVALSHA calls
per message: one per recipient, one per SES API request, four per recipient the former
way, none locally), never a time (the machine is shared)."""

from __future__ import annotations

from pathlib import Path

import cluster_limits  # bench/ is on sys.path (bench/conftest.py)

from relay.testing.require import require_program


def test_cluster_limits_smoke_counts_round_trips(tmp_path: Path) -> None:
    require_program("redis-server")
    opts = cluster_limits.Options(messages=10, recipients=3, repeat=1, workdir=tmp_path)
    figures = cluster_limits.run(opts)
    print("\n" + cluster_limits.table(figures, opts))
    trips = {mode: (f["round_trips_per_msg"], f["evalsha_per_msg"])
             for mode, f in figures.items()}
    assert trips == {"local": (0, 0), "redis": (3, 3), "redis, a call per window": (12, 12),
                     "redis, SES API": (1, 1)}
    assert all(f["wall_us"] > 0 and f["cpu_us"] >= 0 for f in figures.values())
