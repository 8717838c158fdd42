"""Smoke run of bench/soak.py: ~12 s of mixed load with at least one kill -9, lost == 0.

The full soak (`python bench/soak.py`, 5 minutes; `--minutes 30`) is run by hand and its
figures go to RESULTS.md; this keeps the harness itself working under `make test`.
Set RELAY_SOAK_SEED to replay a schedule.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest
import soak  # bench/ is on sys.path (bench/conftest.py)

pytestmark = pytest.mark.slow


def test_soak_smoke_loses_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("RELAY_SOAK_SEED", str(random.randrange(1 << 30))))
    log = io.StringIO()
    summary = soak.soak(soak.Options(
        seconds=12.0, seed=seed, clients=4, rate=20.0, kill_every=(4.0, 7.0),
        fault_period=(2.0, 4.0), drain_timeout=60.0, workdir=tmp_path / "soak", keep=True),
        log=log)
    print(log.getvalue())
    print(soak.markdown(summary, "12 s"))
    context = f"seed {seed}: {summary}"
    assert summary["kills"] >= 1, context
    assert summary["messages_accepted"] > 20, context
    assert summary["lost"] == 0, context
    assert summary["misbounced"] == 0, context
    assert summary["refused_but_delivered"] == 0, context
    assert summary["bounced"] == summary["bounce_expected"], context
    assert summary["ok"], context
