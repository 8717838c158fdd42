"""Smoke run of bench/startup_scale.py: `relay serve` on a 1k-recipient spool, ~6 s.

The full figure (`python bench/startup_scale.py --queued 1000000`, a ~465 MiB spool) is
run by hand and goes to RESULTS.md; this keeps the harness itself working under
`make test`: relay serves on the spool (EHLO answered), recovers what the fixture left in
flight, delivers to the loopback sink and answers a probe submission meanwhile. No timing
assertions (the machine is shared).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import startup_scale  # bench/ is on sys.path (bench/conftest.py)

pytestmark = pytest.mark.slow


def test_startup_smoke_serves_and_delivers(tmp_path: Path) -> None:
    r = startup_scale.run(startup_scale.Options(
        queued=1000, domains=1000, inflight=200, window=3.0, probe_every=1.0,
        workdir=tmp_path / "run"))
    print("\n" + startup_scale.table([r]))
    context = json.dumps(r, default=str)
    assert r["serving_s"] > 0, context
    assert r["recovered"] == 200, context
    assert r["delivered"] > 0, context
    assert r["probes"] >= 1 and not r["probe_failures"], context
    assert r["rss_serving_mib"] > 0, context
    assert r["memory_by_delivered"] and r["memory_by_delivered"][0]["rss"] > 0, context
    assert r["exit_code"] == 0, context   # drained on SIGTERM
